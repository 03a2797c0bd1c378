"""The rtnetlink requests of a container's attach, as bytes, and a plain blocking
socket that sends them and reads each one's acknowledgement.

Why not pyroute2's IPRoute here: since 0.9 every call runs through an asyncio
loop of its own, ~140 us of Python a request on this machine against ~2 us
for a struct and a send; an attach makes ten of them (2.8 ms of the daemon's
CPU per container start, the largest Python step of a `run`). The other
kernel_link calls (bridges, deletes, drift repair's lookups) stay on pyroute2;
its decoders check these encoders in the unit tests. The formats are the
kernel's ABI (linux/rtnetlink.h, if_link.h, veth.h, if_addr.h)."""

from __future__ import annotations

import os
import socket
import struct
from ipaddress import IPv4Address

from pyroute2.netlink.exceptions import NetlinkError

# linux/netlink.h, rtnetlink.h
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
NLA_F_NESTED = 0x8000
RTM_NEWLINK, RTM_SETLINK, RTM_NEWADDR, RTM_NEWROUTE = 16, 19, 20, 24
# linux/if_link.h, veth.h, if_addr.h, rtnetlink.h
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MASTER, IFLA_PROTINFO, IFLA_LINKINFO, IFLA_AF_SPEC, IFLA_NET_NS_FD = 1, 3, 10, 12, 18, 26, 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFLA_INET6_ADDR_GEN_MODE, IN6_ADDR_GEN_MODE_NONE = 8, 1
IFLA_BRPORT_MODE = 4            # hairpin
IFA_ADDRESS, IFA_LOCAL = 1, 2
RTA_OIF, RTA_GATEWAY = 4, 5
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1
IFF_UP = 0x1
AF_BRIDGE = 7

_IFINFO = struct.Struct("=BxHiII")      # family, type, index, flags, change
_HEADER = struct.Struct("=IHHII")       # length, type, flags, sequence, port id


def _attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return struct.pack("=HH", size, kind) + payload + b"\0" * (-size % 4)


def _nested(kind: int, *attrs: bytes, flagged: bool = False) -> bytes:
    # Flagged NLA_F_NESTED only where iproute2 does it (the bridge reads an
    # unflagged IFLA_PROTINFO as the old one-byte port state).
    return _attr(kind | (NLA_F_NESTED if flagged else 0), b"".join(attrs))


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, struct.pack("=I", value))


def _name(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode() + b"\0")


def _mac(text: str) -> bytes:
    return bytes(int(x, 16) for x in text.split(":"))


def message(kind: int, flags: int, body: bytes) -> bytes:
    """A request asking for its acknowledgement; Rtnl.request stamps its sequence number."""
    return _HEADER.pack(_HEADER.size + len(body), kind, flags | NLM_F_REQUEST | NLM_F_ACK, 0, 0) + body


def new_veth(host: str, master: int, peer: str, peer_netns_fd: int, peer_index: int, peer_mac: str) -> bytes:
    """A veth pair: `host` on bridge `master` here, `peer` made directly in the
    namespace of `peer_netns_fd` with ifindex `peer_index` and MAC `peer_mac`."""
    peer_info = _IFINFO.pack(0, 0, peer_index, 0, 0) + _name(IFLA_IFNAME, peer) \
        + _u32(IFLA_NET_NS_FD, peer_netns_fd) + _attr(IFLA_ADDRESS, _mac(peer_mac))
    body = _IFINFO.pack(0, 0, 0, 0, 0) + _name(IFLA_IFNAME, host) + _u32(IFLA_MASTER, master) \
        + _nested(IFLA_LINKINFO, _name(IFLA_INFO_KIND, "veth"),
                  _nested(IFLA_INFO_DATA, _nested(VETH_INFO_PEER, peer_info)))
    return message(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body)


def no_ipv6_addresses(index: int) -> bytes:
    """Link `index` makes no IPv6 address of its own (no link-local, so no DAD,
    router solicitation or MLD); sent before the link is up."""
    gen_mode = _nested(IFLA_AF_SPEC, _nested(socket.AF_INET6, _attr(IFLA_INET6_ADDR_GEN_MODE,
                                                                    bytes([IN6_ADDR_GEN_MODE_NONE]))))
    return message(RTM_NEWLINK, 0, _IFINFO.pack(0, 0, index, 0, 0) + gen_mode)


def link_up(index: int) -> bytes:
    return message(RTM_NEWLINK, 0, _IFINFO.pack(0, 0, index, IFF_UP, IFF_UP))


def hairpin(index: int) -> bytes:
    """Bridge port `index` sends frames back out the port they came in on."""
    body = _IFINFO.pack(AF_BRIDGE, 0, index, 0, 0) + _nested(IFLA_PROTINFO, _attr(IFLA_BRPORT_MODE, b"\1"), flagged=True)
    return message(RTM_SETLINK, 0, body)


def add_address(index: int, address: IPv4Address, prefixlen: int) -> bytes:
    body = struct.pack("=BBBBI", socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, index) \
        + _attr(IFA_LOCAL, address.packed) + _attr(IFA_ADDRESS, address.packed)
    return message(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)


def add_default_route(gateway: IPv4Address, oif: int) -> bytes:
    body = struct.pack("=BBBBBBBBI", socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE,
                       RTN_UNICAST, 0) + _attr(RTA_GATEWAY, gateway.packed) + _u32(RTA_OIF, oif)
    return message(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body)


def ack_error(reply: bytes, seq: int) -> int | None:
    """The errno of the acknowledgement of request `seq` in `reply` (0: done);
    None: `reply` has no acknowledgement of it."""
    at = 0
    while at + _HEADER.size <= len(reply):
        length, kind, _, got_seq, _ = _HEADER.unpack_from(reply, at)
        if length < _HEADER.size:
            break
        if kind == NLMSG_ERROR and got_seq == seq:
            return -struct.unpack_from("=i", reply, at + _HEADER.size)[0]
        at += (length + 3) & ~3
    return None


class Rtnl:
    """A NETLINK_ROUTE socket of the namespace it is opened in: one request at a
    time, each answered by its acknowledgement (a failure raises NetlinkError,
    as pyroute2 does, with the errno)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        self.seq = 0

    def request(self, msg: bytes) -> None:
        self.seq += 1
        seq = self.seq
        self.sock.send(msg[:8] + struct.pack("=I", seq) + msg[12:])
        while True:
            code = ack_error(self.sock.recv(65536), seq)
            if code is not None:
                break
        if code:
            raise NetlinkError(code, os.strerror(code))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Rtnl":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
