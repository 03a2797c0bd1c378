"""portlink.followed_file: the daemon's atomic write, and the ambassador's
follower (a fake stat/read for the logic; a real file and a real SIGHUP for
the signal path)."""

import asyncio
import os
import signal
import stat

from portlink import followed_file
from portlink.followed_file import Follower


def test_write_replaces_atomically_readable_by_others_and_leaves_no_temporary(tmp_path):
    followed_file.write(tmp_path, "x.json", "one\n")
    first = os.stat(tmp_path / "x.json")
    followed_file.write(tmp_path, "x.json", "two\n", durable=False)
    assert (tmp_path / "x.json").read_text() == "two\n"
    assert stat.S_IMODE(os.stat(tmp_path / "x.json").st_mode) == 0o644
    assert os.stat(tmp_path / "x.json").st_ino != first.st_ino      # a rename, not a rewrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_stamp_is_none_without_a_file_and_changes_with_a_replacement(tmp_path):
    assert followed_file.stamp(tmp_path / "x.json") is None
    followed_file.write(tmp_path, "x.json", "a")
    a = followed_file.stamp(tmp_path / "x.json")
    followed_file.write(tmp_path, "x.json", "a")
    assert a is not None and followed_file.stamp(tmp_path / "x.json") != a


class FakeFile:
    def __init__(self):
        self.text, self.version, self.fail = None, 0, None
        self.reads = 0

    def set(self, text):
        self.text, self.version = text, self.version + 1

    def stat(self, path):
        return None if self.text is None else (self.version,)

    def read(self, path):
        self.reads += 1
        if self.fail:
            raise self.fail
        return self.text


def test_follower_reads_only_when_the_file_changed_and_retries_after_a_read_error(tmp_path):
    f, got = FakeFile(), []
    fol = Follower(tmp_path / "x", got.append, stat=f.stat, read=f.read)
    assert fol.check() and got == [None]         # no file yet: said once
    assert not fol.check() and got == [None]
    f.set("a")
    assert fol.check() and got == [None, "a"]
    assert not fol.check() and f.reads == 1       # unchanged: not read again
    f.set("b")
    f.fail = PermissionError(13, "Permission denied")
    assert not fol.check() and got == [None, "a"]
    f.fail = None
    assert fol.check() and got == [None, "a", "b"]   # the failed read is retried
    f.text = None
    assert fol.check() and got[-1] is None


def test_a_forced_check_reads_a_replacement_the_stamp_missed_and_says_only_changes(tmp_path):
    f, got = FakeFile(), []
    fol = Follower(tmp_path / "x", got.append, stat=lambda p: ("same",), read=f.read)
    f.text = "a"
    assert fol.check() and got == ["a"]
    f.text = "b"                                   # same inode, time and size: the stamp misses it
    assert not fol.check() and got == ["a"]
    assert fol.check(force=True) and got == ["a", "b"]
    assert not fol.check(force=True) and got == ["a", "b"]     # read, unchanged: not passed on


def test_sighup_reaches_every_follower_at_once_and_the_handler_goes_with_the_last(tmp_path):
    """Two files in one directory, polled once a minute: only the SIGHUP can make
    them seen within the test."""
    async def main():
        got = {"a": [], "b": []}
        followed_file.write(tmp_path, "a", "a1")
        followed_file.write(tmp_path, "b", "b1")
        tasks = [asyncio.ensure_future(Follower(tmp_path / n, got[n].append, poll=60).run()) for n in "ab"]
        while got["a"] != ["a1"] or got["b"] != ["b1"]:
            await asyncio.sleep(0.005)
        followed_file.write(tmp_path, "a", "a2")
        followed_file.write(tmp_path, "b", "b2")
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(400):
            if got["a"][-1] == "a2" and got["b"][-1] == "b2":
                break
            await asyncio.sleep(0.005)
        assert got == {"a": ["a1", "a2"], "b": ["b1", "b2"]}
        loop = asyncio.get_running_loop()
        assert len(followed_file._subscribers[loop]) == 2
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert loop not in followed_file._subscribers
    asyncio.run(asyncio.wait_for(main(), 10))
    assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL
