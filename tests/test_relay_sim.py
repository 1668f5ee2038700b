"""The relay's rules in virtual time (tests/simnet.py): its rate, its windows, and what it does to a cheat.

Three engines, each run by the real Driver: R relays and listens; A and B
bootstrap off it and connect through it (their connection infos name only R).
A cheat is an end that writes relay records itself, as a hostile peer running
crust's own classes would.
"""

from __future__ import annotations

import dataclasses

import pytest

from crust.config import Config
from crust.engine.circuits import RELAY_CHUNK, RELAY_WINDOW
from crust.events import ConnectFinished, MessageReceived, PeerLost
from crust.ids import Contact
from crust.wire.messages import RelayAck, encode_relay_data
from tests.simnet import Node, SimNet

pytestmark = pytest.mark.sim

FAST = Config(bootstrap_cache_path=None, disable_external_reachability_requirement=True, heartbeat_interval=1.0,
              inactivity_timeout=5.0, handshake_timeout=2.0, bootstrap_timeout=3.0, connect_timeout=5.0)
TOKEN_A, TOKEN_B = bytes(range(16)), bytes(range(16, 32))


def relayed(rate: int = 1 << 20) -> tuple[SimNet, Node, Node, Node]:
    net = SimNet(latency=0.005)
    r = net.add("r", dataclasses.replace(FAST, relay=True, relay_max_bytes_per_s=rate))
    a, b = net.add("a", FAST), net.add("b", FAST)
    seed = net.listen("r")
    r.engine.set_listeners([seed])
    for node in (a, b):
        node.engine.start_bootstrap([Contact(seed)], now=net.now)
    net.advance(1.0)
    assert a.engine.relays() == b.engine.relays() == [r.engine.id]
    for me, other, ours, theirs in ((a, b, TOKEN_A, TOKEN_B), (b, a, TOKEN_B, TOKEN_A)):
        me.engine.start_connect(other.engine.id, (), their_token=theirs, our_token=ours, timeout=5.0,
                                their_relays=[r.engine.id], our_relays=[r.engine.id], now=net.now)
    net.advance(2.0)
    for me, other in ((a, b), (b, a)):
        assert ConnectFinished(other.engine.id, True) in me.events
        assert me.engine.peer_info(other.engine.id).transport == "relay"
    return net, r, a, b


def received(node: Node, sender: Node) -> list[tuple[float, bytes]]:
    return [(t, e.data) for t, e in node.timeline if isinstance(e, MessageReceived) and e.peer_id == sender.engine.id]


def test_a_circuit_is_held_to_the_relays_rate() -> None:
    rate = 200_000
    net, r, a, b = relayed(rate)
    start = net.now
    for i in range(16):
        a.engine.send(b.engine.id, 0, bytes([i]) * 64_000, net.now)
    net.advance(20.0)
    got = received(b, a)
    assert [data[0] for _, data in got] == list(range(16))
    took = got[-1][0] - start
    # 1,024,000 bytes (plus framing) at 200 kB/s: about 5 s, less the bucket's 0.1 s of burst and the last
    # chunk, which may go on credit (the bucket only has to be positive when a chunk starts).
    assert (1_024_000 - 0.1 * rate - RELAY_CHUNK) / rate <= took <= 1_024_000 / rate * 1.2, took
    assert r.engine.relay_stats().bytes_relayed >= 1_024_000


def _circuit(node: Node) -> tuple[object, int]:
    """The carrier connection and circuit number of ``node``'s relayed connection (engine internals)."""
    core = node.engine._core
    conn = next(c for c in core.conns.values() if c.circuit is not None)
    return conn.circuit.carrier, conn.circuit.number


def _lost(node: Node, other: Node) -> list[str]:
    return [e.reason for e in node.events if isinstance(e, PeerLost) and e.peer_id == other.engine.id]


def test_an_end_that_acknowledges_bytes_it_never_got_ends_the_circuit() -> None:
    net, r, a, b = relayed()
    carrier, number = _circuit(a)
    a.engine._core.send_control(carrier, RelayAck(number, 1_000_000))  # nothing was sent to A on it
    net.run()
    net.advance(0.5)
    assert r.engine.relay_stats().circuits == 0
    for me, other in ((a, b), (b, a)):
        assert _lost(me, other) == ["relay closed the circuit: the circuit broke its flow-control window"]
    assert r.engine.is_connected(a.engine.id) and r.engine.is_connected(b.engine.id)  # only the circuit ends


def test_an_end_that_sends_past_its_window_ends_the_circuit_before_the_relay_holds_more() -> None:
    net, r, a, b = relayed(rate=1_000)  # a trickle: what A pushes must wait at the relay
    carrier, number = _circuit(a)
    core = a.engine._core
    chunk = bytes(RELAY_CHUNK)
    for _ in range(RELAY_WINDOW // RELAY_CHUNK + 2):  # past the window by two chunks, unacknowledged
        core.write(carrier, carrier.channel.seal([encode_relay_data(number, chunk)]))
    net.run()
    net.advance(0.5)
    assert r.engine.relay_stats().circuits == 0
    assert _lost(a, b) == ["relay closed the circuit: the circuit broke its flow-control window"]
    # B got the first of those chunks (the relay passed them on until the window broke); they are not
    # A's ciphertext, so B's own end-to-end channel refused them: a relay cannot slip bytes in either.
    assert len(_lost(b, a)) == 1
