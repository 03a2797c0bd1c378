"""Which mounts the launch namespace leaves out (runtime.launch_ns.mounts_to_detach)."""

from portlink.runtime.launch_ns import mounts_to_detach

INFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
45 27 0:4 net:[4026532001] /var/lib/pl/netns/plns-aaaa rw - nsfs nsfs rw
46 27 0:50 / /var/lib/pl/containers/c1/rootfs rw - overlay overlay rw,lowerdir=/l
47 27 0:51 / /var/lib/pl rw - tmpfs tmpfs rw
48 46 0:52 / /var/lib/pl/containers/c1/rootfs/proc rw - proc proc rw
49 27 0:4 net:[4026532002] /var/lib/pl/netns/with\\040space rw - nsfs nsfs rw
50 27 0:53 / /var/lib/plother/containers/x/rootfs rw - overlay overlay rw
51 27 0:4 net:[4026532003] /run/netns/theirs rw - nsfs nsfs rw
52 27 0:54 / /var/lib/pl/volumes/v/_data rw - ext4 /dev/vdb rw
53 27 254:0 /var/lib/pl/netns /var/lib/pl/netns rw - ext4 /dev/vda rw
54 27 254:0 /var/lib/pl/netnsx /var/lib/pl/netnsx rw - ext4 /dev/vda rw
broken line
"""


def test_only_our_kinds_strictly_below_the_state_dir_deepest_first():
    got = mounts_to_detach(INFO, "/var/lib/pl/")
    assert got == ["/var/lib/pl/containers/c1/rootfs",
                   "/var/lib/pl/netns/plns-aaaa", "/var/lib/pl/netns/with space", "/var/lib/pl/netns"]
    # The netns files' dir is a mount of its own (kernel_ns.own_mount): it goes too. The
    # state dir itself (a disk of its own), a volume on another disk, proc inside a root,
    # a sibling dir with the same prefix and someone else's netns are all kept.
    assert mounts_to_detach(INFO, "/nowhere") == []
