# The two commands a fresh machine needs (both install what they use first):
#   make demo   runs the demo scenario
#   make test   runs the whole test suite (unit + integration, as root)
.PHONY: setup demo demo-host demo-apps test unit bench bench-dns bench-consul bench-proxy bench-secure bench-reroute bench-fuzz bench-scale bench-scale-hosts bench-scale-links bench-soak bench-cli bench-runc-mounts clean bench-store bench-apps docker-py-suite

setup:
	./scripts/setup

demo: setup
	.venv/bin/python examples/lab_demo.py

demo-host: setup
	.venv/bin/python examples/demo.py

demo-apps: setup
	.venv/bin/python examples/lab_apps.py

test: setup
	.venv/bin/python -P -m pytest -q -p no:cacheprovider tests

unit: setup
	.venv/bin/python -P -m pytest -q -p no:cacheprovider tests/unit

bench: setup
	.venv/bin/python -P bench/attach.py

clean:
	.venv/bin/python -P -m portlink.lab.sandbox --clean

bench-dns: setup
	.venv/bin/python -P bench/dns.py

bench-consul: setup
	.venv/bin/python -P bench/consul_dns.py

bench-proxy: setup
	.venv/bin/python -P bench/proxy.py

bench-secure: setup
	.venv/bin/python -P bench/secure.py

bench-reroute: setup
	.venv/bin/python -P bench/reroute.py

# N containers on one host (N=500); soak: MINUTES=2 by default, longer by MINUTES=30
bench-scale: setup
	.venv/bin/python -P bench/scale.py --count $(or $(N),500)

# issue 18: a 10-host lab with 100 services moving; N cross-host links on one host (N=50)
bench-scale-hosts: setup
	.venv/bin/python -P bench/scale_hosts.py

bench-scale-links: setup
	.venv/bin/python -P bench/scale_links.py --count $(or $(N),50)

bench-soak: setup
	.venv/bin/python -P bench/soak.py --minutes $(or $(MINUTES),2)

bench-fuzz: setup
	.venv/bin/python -P bench/dns_fuzz.py

# `portlink ps` wall time and `run --rm` end to end, against podman run --rm
bench-cli: setup
	.venv/bin/python -P bench/cli.py

# bare runc run + delete with 0, 1,000 and 4,000 mounts in its namespace (a private one)
bench-runc-mounts: setup
	.venv/bin/python -P bench/runc_mounts.py

bench-store: setup
	.venv/bin/python -P bench/store_sync.py

bench-apps: setup
	.venv/bin/python -P bench/apps.py

# docker-py's own integration tests (containers, networks, volumes, images, exec,
# logs) against a sandbox host's Docker socket; DOCKER_PY_SRC: a git checkout (or
# bare git dir) of docker/docker-py, its tests taken at the installed docker's tag
docker-py-suite: setup
	.venv/bin/python -P bench/docker_py_suite.py --source "$(DOCKER_PY_SRC)"
