"""Relayed connections against the kernel's real NAT (issue 14): peers no punch can join meet through a relay.

One lab for the module (tests/natlab.py, tests/natworld.py): the standard
routers, plus two public relay nodes (``relay`` and ``small``, the latter
limited to one circuit).  Peers behind symmetric and port-restricted NATs
bootstrap off a relay as Clients; symmetric ports are random, so neither TCP
simultaneous open nor UDP punching can join symmetric↔symmetric or
symmetric↔port-restricted (TESTLAB.md); their ``connect()`` falls back to a
circuit through the relay after the grace.  The relay's tap counts every
forwarded chunk that holds the plaintext the ends sent: it must stay 0.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest

from crust.engine.rendezvous import RELAY_GRACE
from tests.natlab import natlab_or_skip
from tests.natworld import STEP, Peer, World, attempt

pytestmark = [pytest.mark.timeout(180), pytest.mark.lab]

MARKER = b"crust relay plaintext marker 01!"  # what the ends send, repeated: a relay that saw it would say so
MIB = 1024 * 1024


class RelayWorld:
    """The standard lab world plus relay nodes on the internet."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.relay, self.relay_contact = self.add_relay("relay")
        self.small, self.small_contact = self.add_relay("small", "--relay-max-circuits", "1")

    def add_relay(self, name: str, *args: str) -> tuple[Peer, str]:
        host = self.world.lab.public(name)
        relay = self.world.start(name, "--relay", "--tap", MARKER.hex(), "--lifetime", "170", *args)
        endpoints = relay.call("listen", "listening")["endpoints"]
        return relay, next(ep for ep in endpoints if ep.startswith(host.ip + ":"))

    def client(self, router: str, contact: str) -> Peer:
        """A peer behind ``router`` bootstrapped off the relay at ``contact`` (its only contact)."""
        peer = self.world.start(f"h{router}", "--contact", contact)
        peer.call("bootstrap", "bootstrapped")
        return peer


@pytest.fixture(scope="module")
def world() -> Iterator[RelayWorld]:
    for lab in natlab_or_skip("crustrly"):
        yield RelayWorld(World(lab, lifetime=170))


@pytest.fixture
def net(world: RelayWorld) -> Iterator[RelayWorld]:
    try:
        yield world
    finally:
        world.world.stop(*world.world.peers[len(world.world.fixed) + 2:])  # the clients, not the relays


def relayed_pair(net: RelayWorld, ra: str, rb: str, contact: str) -> tuple[Peer, Peer]:
    a, b = net.client(ra, contact), net.client(rb, contact)
    result = attempt(a, b, timeout=15)
    assert result.connected, result
    assert result.a is not None and result.b is not None
    assert result.a["transport"] == result.b["transport"] == "relay", result
    # Every direct and punched candidate had its grace first.
    assert RELAY_GRACE <= result.seconds < RELAY_GRACE + 8, result
    return a, b


def transfer(src: Peer, dst: Peer, total: int, piece: int = MIB) -> None:
    """``total`` bytes of marker-filled messages from ``src`` to ``dst``, each checked by its hash."""
    sent = [src.call("send", "sent", peer=dst.id, size=piece, fill=MARKER.hex()) for _ in range(total // piece)]
    for expected in sent:
        got = dst.expect("message", STEP, lambda e, src=src: e["peer"] == src.id)
        assert (got["bytes"], got["sha256"]) == (expected["bytes"], expected["sha256"])


def stats(relay: Peer) -> dict[str, Any]:
    return relay.call("relay_stats", "relay_stats")


@pytest.mark.parametrize("ra, rb", [("sy1", "sy2"), ("sy1", "pr1")])
def test_unpunchable_pairs_meet_through_the_relay_and_move_5_mb_each_way(net: RelayWorld, ra: str, rb: str) -> None:
    before = stats(net.relay)
    a, b = relayed_pair(net, ra, rb, net.relay_contact)
    transfer(a, b, 5 * MIB)
    transfer(b, a, 5 * MIB)
    after = stats(net.relay)
    assert after["opened"] == before["opened"] + 1
    assert after["bytes_relayed"] - before["bytes_relayed"] >= 10 * MIB  # every byte went through it...
    assert after["tap_hits"] == 0  # ...and none of it was plaintext it could read


def test_a_relay_at_its_circuit_limit_refuses_the_next_with_the_reason(net: RelayWorld) -> None:
    relayed_pair(net, "sy1", "sy2", net.small_contact)
    c, d = net.client("sy1", net.small_contact), net.client("pr2", net.small_contact)
    result = attempt(c, d, timeout=6)
    assert not result.connected
    failures = [side for side in (result.a, result.b) if side is not None and side["event"] == "error"]
    reasons = {key: why for side in failures for key, why in side["reasons"].items()}
    assert any("circuit limit (relay_max_circuits)" in why for why in reasons.values()), result
    assert stats(net.small)["refused"].get("too_many_circuits", 0) >= 1


def test_killing_the_relay_loses_the_relayed_peer_on_both_ends(net: RelayWorld) -> None:
    spare, spare_contact = net.add_relay("spare")
    a, b = relayed_pair(net, "sy2", "pr2", spare_contact)
    net.world.stop(spare)
    for peer, other in ((a, b), (b, a)):
        peer.expect("lost", STEP, lambda e, other=other: e["peer"] == other.id)
