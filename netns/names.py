"""Every object portlink creates on a host carries one of these prefixes, so a
sweep after a crash can find it by name alone (as mininet's clean.py does)."""

BRIDGE_PREFIX = "plb-"       # bridge of a portlink network: plb-<network id[:11]>
VETH_PREFIX = "plv-"         # host side of a container's veth: plv-<container id[:11]>
NETNS_PREFIX = "plc-"        # /run/netns/plc-<container id[:12]>
NETNS_DIR = "netns"          # <state dir>/netns: the netns files, a mount of its own (kernel_ns.own_mount)
NFT_TABLE = "portlink"       # nftables: table ip portlink, table bridge portlink
IPT_CHAIN_PREFIX = "PORTLINK-"
VOLUME_PREFIX = "plvol-"     # a volume's directory: <state dir>/volumes/plvol-<name> (runtime.volumes)
IFNAMSIZ = 15                # kernel limit on interface names (without NUL)


def bridge_name(network_id: str) -> str:
    return (BRIDGE_PREFIX + network_id)[:IFNAMSIZ]


def veth_name(container_id: str) -> str:
    return (VETH_PREFIX + container_id)[:IFNAMSIZ]


def is_ours(ifname: str) -> bool:
    return ifname.startswith((BRIDGE_PREFIX, VETH_PREFIX))
