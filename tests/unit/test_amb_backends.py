"""Pool ordering for new connections: least connections, round-robin ties,
cooldown with an injected clock, set updates. Pure: no sockets, no sleeping."""

from portlink.ambassador.backends import Backend, Pool

A, B, C = Backend("10.0.0.1", 80), Backend("10.0.0.2", 80), Backend("10.0.0.3", 80)


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def test_backend_identity_is_where_we_connect():
    assert Backend("10.0.0.1", 80, "id-1") == Backend("10.0.0.1", 80, "id-2")
    assert len({Backend("10.0.0.1", 80, "a"), Backend("10.0.0.1", 80, "b")}) == 1
    assert Backend("10.0.0.1", 80) != Backend("10.0.0.1", 81)
    assert A.label == "10.0.0.1:80"
    assert Backend("fd00::1", 443).label == "[fd00::1]:443"
    # label and hash are made once; a copy with another port gets its own
    import dataclasses
    moved = dataclasses.replace(A, port=81)
    assert moved.label == "10.0.0.1:81" and moved == Backend("10.0.0.1", 81) and hash(moved) != hash(A)
    assert repr(A) == "Backend(address='10.0.0.1', port=80, id='')"


def test_one_backend_is_the_whole_order_and_the_turn_still_moves():
    pool = Pool([A])
    assert [pool.order(now=0) for _ in range(3)] == [[A]] * 3
    pool.update([A, B])
    assert pool.order(now=0) == [B, A]      # the turn moved on while A was alone (3 turns)
    assert Pool().order(now=0) == []


def test_ties_rotate_round_robin():
    pool = Pool([A, B, C])
    firsts = [pool.order(now=0)[0] for _ in range(6)]
    assert firsts == [A, B, C, A, B, C]
    assert pool.order(now=0) == [A, B, C]      # the whole order rotates, not only the head
    assert pool.order(now=0) == [B, C, A]


def test_least_connections_first():
    pool = Pool([A, B, C])
    pool.connected(A)
    pool.connected(A)
    pool.connected(B)
    for _ in range(4):                         # whatever the round-robin turn
        assert pool.order(now=0) == [C, B, A]
    pool.released(A)
    pool.released(A)                           # A: 0, B: 1, C: 0 -> A and C tie, B last
    orders = {tuple(pool.order(now=0)) for _ in range(3)}
    assert orders == {(A, C, B), (C, A, B)}


def test_released_never_goes_negative():
    pool = Pool([A, B])
    pool.released(A)
    assert pool.active == {}
    pool.connected(B)
    assert pool.order(now=0)[0] == A and pool.order(now=0)[0] == A


def test_cooldown_puts_failed_last_then_expires():
    clock = Clock()
    pool = Pool([A, B, C], cooldown=5.0, clock=clock)
    pool.failed(A)
    for _ in range(3):
        assert pool.order()[-1] == A
    assert pool.cooling(A)
    clock.t += 4.9
    assert pool.order()[-1] == A
    clock.t += 0.2                              # 5.1 s after the failure: back in the rotation
    assert not pool.cooling(A)
    firsts = {pool.order()[0] for _ in range(3)}
    assert firsts == {A, B, C}
    assert pool.failed_at == {}                 # an expired cooldown is forgotten


def test_cooldown_beats_fewer_connections_and_all_cooling_still_tried():
    clock = Clock()
    pool = Pool([A, B], cooldown=5.0, clock=clock)
    pool.connected(B)
    pool.connected(B)
    pool.failed(A)                              # fewer connections, but it just refused
    assert pool.order() == [B, A]
    clock.t += 1
    pool.failed(B)                              # both cooling: longest cooling first
    assert pool.order() == [A, B]
    assert pool.order() == [A, B]


def test_connected_clears_cooldown():
    pool = Pool([A, B], clock=Clock())
    pool.failed(A)
    pool.connected(A)                           # e.g. an attempt made while it was last
    assert not pool.cooling(A)


def test_injected_now_argument():
    pool = Pool([A, B], cooldown=5.0, clock=Clock(0.0))
    pool.failed(A, now=100.0)
    assert pool.order(now=101.0)[-1] == A
    assert pool.order(now=106.0) in ([A, B], [B, A]) and not pool.cooling(A, now=106.0)


def test_update_added_removed_and_only_current_backends():
    pool = Pool([A, B])
    v = pool.version
    added, removed = pool.update([B, C, C])
    assert (added, removed) == ((C,), (A,))
    assert pool.backends == (B, C) and pool.version == v + 1
    assert A not in pool and C in pool
    assert all(A not in pool.order(now=0) for _ in range(4))
    assert pool.update([C, B]) == ((), ())      # same set, other order: no change
    assert pool.version == v + 1
    assert pool.update([]) == ((), (C, B))
    assert pool.order(now=0) == []


def test_active_survives_removal_and_return():
    pool = Pool([A, B])
    pool.connected(A)
    pool.update([B])                            # A's connection is kept (policy keep)
    pool.update([A, B])
    assert pool.order(now=0) == [B, A]          # A still has its connection
    pool.released(A)
    assert pool.active == {}
