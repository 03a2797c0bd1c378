"""How networks and images look in API answers."""

from __future__ import annotations


def net_json(s) -> dict:
    return {"id": s.id, "name": s.name, "subnet": str(s.subnet), "gateway": str(s.gateway),
            "bridge": s.bridge, "internal": s.internal, "icc": s.icc}


def img_json(i) -> dict:
    return {"name": i.name, "rootfs": str(i.rootfs), "cmd": i.config.cmd, "created": i.created, "size": i.size}
