"""How networks and images look in API answers."""

from __future__ import annotations


def net_json(s) -> dict:
    return {"id": s.id, "name": s.name, "subnet": str(s.subnet), "gateway": str(s.gateway),
            "bridge": s.bridge, "internal": s.internal, "icc": s.icc}


def img_json(i) -> dict:
    return {"name": i.name, "id": i.id, "rootfs": str(i.rootfs), "entrypoint": i.config.entrypoint,
            "cmd": i.config.cmd, "created": i.created, "size": i.size}


def img_inspect(i) -> dict:
    """`image inspect`: the image and its whole config."""
    c = i.config
    return {**img_json(i), "source": i.source,
            "config": {"entrypoint": c.entrypoint, "cmd": c.cmd, "env": c.env, "workdir": c.workdir,
                       "user": c.user, "exposed": c.exposed, "volumes": c.volumes, "labels": c.labels,
                       "stop_signal": c.stop_signal or "SIGTERM", "healthcheck": c.healthcheck}}
