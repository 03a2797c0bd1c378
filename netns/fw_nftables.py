"""The nftables firewall driver (default); touches the kernel.

Talks to libnftables in-process through ctypes: one call per change, each an
atomic batch, with no fork/exec (an `nft` exec costs a millisecond or more)."""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from typing import Sequence

from portlink.errors import RuntimeFailure
from portlink.netns import rules_nft
from portlink.netns.firewall import FirewallDriver, already_gone
from portlink.netns.model import DNS_PORT, NetworkSpec, PortMapping, Flow
from portlink.netns.names import NFT_TABLE


class Nft:
    """A libnftables context. The netlink socket belongs to the namespace of the
    thread that made the context, so make it in the namespace it must change."""

    def __init__(self) -> None:
        name = ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            lib = ctypes.CDLL(name)
        except OSError as e:
            raise RuntimeFailure(f"cannot load libnftables ({e}); install the apt package nftables") from None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        for f in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, f).argtypes = [ctypes.c_void_p]
        for f in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, f).argtypes = [ctypes.c_void_p]
            getattr(lib, f).restype = ctypes.c_char_p
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        self._lib = lib
        self._ctx = lib.nft_ctx_new(0)
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)
        self._lock = threading.Lock()   # a context is not thread-safe

    def run(self, script: str) -> str:
        with self._lock:
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode())
            out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode()
            err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode()
        if rc != 0:
            raise RuntimeFailure(f"nftables rejected the change: {err.strip() or 'error ' + str(rc)}")
        return out

    def remove_each(self, items: Sequence, render, what: str) -> list[str]:
        """Delete elements one by one: a missing one must not keep the rest in
        place, and is no error (netns.firewall.already_gone). Returns the errors."""
        errors = []
        for x in items:
            try:
                self.run(render([x]))
            except RuntimeFailure as e:
                if not already_gone(str(e)):
                    errors.append(f"{what} {x}: {e}")
        return errors

    def teardown(self, script: str) -> list[str]:
        try:
            self.run(script)
            return []
        except RuntimeFailure as e:
            return [str(e)]

    def list_table(self, family: str) -> str:
        """portlink's table of that family as nft prints it; "" when there is none."""
        try:
            return self.run(f"list table {family} {NFT_TABLE}")
        except RuntimeFailure:
            return ""

    def close(self) -> None:
        if self._ctx:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None


class NftablesDriver(FirewallDriver):
    name = "nftables"

    def __init__(self, dns_port: int = DNS_PORT) -> None:
        self.dns_port = dns_port
        self._nft = Nft()

    def apply_all(self, networks: Sequence[NetworkSpec], ports: Sequence[PortMapping],
                  flows: Sequence[Flow] = ()) -> None:
        self._nft.run(rules_nft.render_ruleset(networks, ports, flows, self.dns_port))

    def add_flows(self, flows: Sequence[Flow]) -> None:
        if flows:
            self._nft.run(rules_nft.render_add_flows(flows))

    def remove_flows(self, flows: Sequence[Flow]) -> list[str]:
        return self._nft.remove_each(flows, rules_nft.render_remove_flows, "withdraw")

    def add_ports(self, ports: Sequence[PortMapping]) -> None:
        if ports:
            self._nft.run(rules_nft.render_add_ports(ports))

    def remove_ports(self, ports: Sequence[PortMapping]) -> list[str]:
        return self._nft.remove_each(ports, rules_nft.render_remove_ports, "unpublish")

    def teardown(self) -> list[str]:
        return self._nft.teardown(rules_nft.render_teardown())

    def dump(self) -> str:
        return self._nft.list_table("ip")
