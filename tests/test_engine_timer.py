"""Engine.get_timer's kept value (the concerns' earliest timer) always equals asking every concern afresh."""

from __future__ import annotations

from typing import Iterator

import pytest

from crust.engine import Engine
from crust.events import MessageReceived
from tests.simnet import SimNet
from tests.test_engine import pair
from tests.test_relay_sim import relayed

pytestmark = pytest.mark.sim


@pytest.fixture
def checked() -> Iterator[list[int]]:
    """Every get_timer() compares its answer with a fresh one; yields [calls, calls that used the kept value]."""
    counts = [0, 0]
    original = Engine.get_timer

    def get_timer(self: Engine) -> float | None:
        kept = self._cold_timer
        got = original(self)
        left = self._cold_timer
        self._cold_timer = None
        fresh = original(self)
        self._cold_timer = left  # as the unchecked call left it
        counts[0] += 1
        counts[1] += kept is not None
        assert got == fresh, (got, fresh)
        return got

    Engine.get_timer = get_timer  # type: ignore[method-assign]
    try:
        yield counts
    finally:
        Engine.get_timer = original  # type: ignore[method-assign]


def _traffic(net: SimNet, sender: object, receiver: object, seconds: float) -> None:
    for i in range(200):
        sender.engine.send(receiver.engine.id, i % 4, b"m%d" % i, net.now)  # type: ignore[attr-defined]
        net.advance(seconds / 200)


def test_a_direct_pair_with_traffic_heartbeats_and_a_goodbye(checked: list[int]) -> None:
    net, a, b = pair()
    for node in (a, b):  # a socket to observe: the nodes ask each other where they see it, and votes age
        node.engine.set_sockets(tcp_port=4000, udp_port=None, local_ips=[net.endpoint(node.name).host],
                                now=net.now)
    _traffic(net, b, a, 12.0)  # past several heartbeat intervals
    assert sum(isinstance(e, MessageReceived) for e in a.events) == 200
    b.engine.disconnect(a.engine.id, net.now)
    net.advance(3.0)
    assert checked[1] > 100, checked  # the kept value was used, and agreed every time


def test_a_relayed_pair_with_traffic(checked: list[int]) -> None:
    net, r, a, b = relayed(rate=50_000)
    for i in range(8):
        a.engine.send(b.engine.id, 0, bytes([i]) * 20_000, net.now)  # past the relay's bucket: legs wait
    _traffic(net, b, a, 4.0)
    net.advance(4.0)
    assert sum(isinstance(e, MessageReceived) and e.peer_id == a.engine.id for e in b.events) == 8
    assert checked[1] > 100, checked
