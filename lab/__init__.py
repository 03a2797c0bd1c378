"""Lab and test tooling, not the product: the multi-host lab (lab), simulated
hosts for tests (sandbox), portlinkd processes started and waited for
(daemon_proc), Consul agents (consul_agent) and the DNS fuzzer (dns_fuzz).

The product packages (netns, runtime, dns, catalog, ambassador) never import
from here; only the `portlink lab` subcommand loads the lab, lazily."""
