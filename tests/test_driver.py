"""The Driver (crust/runtime/driver.py): the one interpreter of the engine's effects, on virtual time.

The driver the real shell runs is the one SimNet runs (tests/simnet.py); these
tests pin down what both rely on: pumps never nest, effects are carried out
in order, one timer serves the engine and the LAN beacon, and an effect the
driver does not know is a bug, not a silent drop.
"""

from __future__ import annotations

import random

import pytest

from crust.config import Config
from crust.crypto.keys import KeyPair
from crust.discovery.beacon import Reply
from crust.discovery.lan import LanBeacon
from crust.effects import Effect
from crust.engine import Engine
from crust.events import Event, MessageReceived, PeerConnected
from crust.ids import ConnId, Contact, Endpoint, PeerId, name_hash
from crust.runtime.driver import Driver
from tests.simnet import SimNet, VirtualLoop

CONFIG = Config(bootstrap_cache_path=None, disable_external_reachability_requirement=True)


class Side:
    """One engine and its driver, wired to another side by a transport that completes at once."""

    def __init__(self, clock: SimNet, name: str, wire: Wire) -> None:
        self.engine = Engine(static=KeyPair(bytes([len(name)]) * 32), config=CONFIG, rng=random.Random(1))
        self.loop = VirtualLoop(clock)
        self.driver = Driver(self.engine, self.loop)
        self.events: list[Event] = []
        self.driver.attach(wire.end(self), on_events=self.events.extend, on_credit=lambda peer, released: None)


class Wire:
    """Two sides joined so that every dial, write and close completes inside the call that made it.

    That is the worst case for re-entrancy: a write on one side runs the other
    side's engine, whose answer arrives while the first side is still pumping.
    ``depth`` counts nested deliveries; ``max_depth`` is the deepest seen.
    """

    def __init__(self) -> None:
        self.sides: list[Side] = []
        self.links: dict[tuple[int, ConnId], tuple[Side, ConnId]] = {}
        self.depth = self.max_depth = 0

    def end(self, side: Side) -> _End:
        self.sides.append(side)
        return _End(self, side)

    def deliver(self, to: Side, conn: ConnId, data: bytes) -> None:
        self.depth += 1
        self.max_depth = max(self.max_depth, self.depth)
        try:
            to.driver.receive_data(conn, data)
        finally:
            self.depth -= 1


class _End:
    def __init__(self, wire: Wire, side: Side) -> None:
        self.wire, self.side = wire, side

    def _other(self) -> Side:
        return next(s for s in self.wire.sides if s is not self.side)

    def dial(self, conn: ConnId, endpoint: Endpoint, local_port: int | None) -> None:
        other = self._other()
        accepted = other.driver.handle_accepted(Endpoint("192.0.2.2", 40000))
        assert accepted is not None
        self.wire.links[(id(self.side), conn)] = (other, accepted)
        self.wire.links[(id(other), accepted)] = (self.side, conn)
        other.driver.pump()
        self.side.driver.handle_connected(conn)

    def write(self, conn: ConnId, data: bytes) -> None:
        to, their_conn = self.wire.links[(id(self.side), conn)]
        self.wire.deliver(to, their_conn, data)
        self.side.driver.handle_sent(conn, len(data))

    def close(self, conn: ConnId, flush: bool) -> None:
        self.wire.links.pop((id(self.side), conn), None)

    def send_datagram(self, data: bytes, endpoint: Endpoint) -> None:
        pass


def test_pumps_never_nest_even_when_every_completion_is_immediate() -> None:
    clock, wire = SimNet(), Wire()
    a, b = Side(clock, "a", wire), Side(clock, "bb", wire)
    b.engine.start_bootstrap([Contact(Endpoint("192.0.2.1", 5483))], now=clock.now)
    b.driver.pump()
    assert [type(e) for e in a.events] == [PeerConnected] and [type(e) for e in b.events][:1] == [PeerConnected]
    # The whole handshake ran inside b's first pump, yet each side was entered at most once at a
    # time (b's write runs a's pump, whose answer waits for b's pump to finish its batch).
    assert wire.max_depth == 2
    for i in range(50):
        b.engine.send(a.engine.id, 0, b"m%d" % i, clock.now)
    b.driver.pump()
    assert [e.data for e in a.events if isinstance(e, MessageReceived)] == [b"m%d" % i for i in range(50)]


def test_an_effect_the_driver_does_not_know_is_a_type_error() -> None:
    clock, wire = SimNet(), Wire()
    side = Side(clock, "a", wire)
    side.engine._core.effects.append(Effect())  # a new effect type the shell was not taught
    with pytest.raises(TypeError, match="does not know the effect"):
        side.driver.pump()


def test_without_a_transport_the_first_input_says_what_is_missing() -> None:
    driver = Driver(Engine(static=KeyPair.generate(), config=CONFIG), VirtualLoop(SimNet()))
    with pytest.raises(RuntimeError, match=r"attach\(\) the outputs"):
        driver.pump()


class Port:
    """Records the beacon's outputs as LanDiscovery's sockets would carry them."""

    def __init__(self, clock: SimNet) -> None:
        self.clock = clock
        self.seeks: list[float] = []
        self.done: list[tuple[float, int, list[Reply]]] = []

    def send_seek(self, datagram: bytes, addr: tuple[str, int]) -> None:
        self.seeks.append(self.clock.now)

    def seek_done(self, seek_id: int, replies: list[Reply]) -> None:
        self.done.append((self.clock.now, seek_id, replies))


def test_one_timer_drives_the_engine_and_the_lan_beacon() -> None:
    clock, wire = SimNet(), Wire()
    side = Side(clock, "a", wire)
    port = Port(clock)
    beacon = LanBeacon(name_hash(None), PeerId(bytes(32)))
    side.driver.attach_beacon(beacon, port)
    start = clock.now
    seek = beacon.seek([("192.0.2.255", 5484)], bytes(16), start, 1.0)
    side.driver.pump()
    for _ in range(100):  # the virtual clock jumps from timer to timer
        when = side.loop.next_timer()
        live = sum(1 for _, _, timer in side.loop._timers if timer.fn is not None)
        assert live <= 1, "the driver keeps one timer for both machines"
        if when is None:
            break
        clock.now = when
        side.loop.run_due(clock.now)
    assert port.done == [(start + 1.0, seek, [])]
    assert len(port.seeks) >= 2 and port.seeks[0] == start and all(t < start + 1.0 for t in port.seeks)
    side.driver.attach_beacon(None)
    assert side.loop.next_timer() is None or side.loop.next_timer() == side.engine.get_timer()
