"""SimNet's own model (tests/simnet.py): latency, loss, reordering and NAT, deterministic under a seed."""

from __future__ import annotations

import dataclasses

import pytest

from crust.config import Config
from crust.events import BootstrapFinished, MessageReceived, PeerConnected
from crust.ids import Contact
from tests.simnet import Node, SimNet

FAST = Config(bootstrap_cache_path=None, disable_external_reachability_requirement=True, heartbeat_interval=1.0,
              inactivity_timeout=5.0, handshake_timeout=2.0, bootstrap_timeout=3.0)


def joined_at(node: Node) -> float:
    """When ``node`` saw its first PeerConnected."""
    return next(t for t, e in node.timeline if isinstance(e, PeerConnected))


def bootstrap(net: SimNet, client: str, seed: str) -> None:
    net.nodes[client].engine.start_bootstrap([Contact(net.endpoint(seed))], now=net.now)


def test_latency_delays_the_bootstrap_by_its_round_trips() -> None:
    net = SimNet(latency=0.05)
    a, b = net.add("a", FAST), net.add("b", FAST)
    net.listen("a")
    start = net.now
    bootstrap(net, "b", "a")
    net.run()
    assert not b.events  # nothing arrives without time passing
    net.advance(1.0)
    took = joined_at(b) - start
    # TCP connect (1 RTT), the Noise handshake whose last flight carries the request, the grant: 3 RTTs of 0.1 s
    assert took == pytest.approx(0.3, abs=1e-6), took
    assert joined_at(a) < joined_at(b)


def test_per_link_latency_lets_the_near_client_in_first() -> None:
    net = SimNet(latency=0.01)
    net.add("a", FAST)
    near, far = net.add("near", FAST), net.add("far", FAST)
    net.link("a", "far", latency=0.2)
    net.listen("a")
    bootstrap(net, "far", "a")
    bootstrap(net, "near", "a")
    net.advance(3.0)
    assert joined_at(near) < joined_at(far)
    assert joined_at(far) - joined_at(near) > 1.0  # 3 round trips of 0.4 s against 3 of 0.02 s


def lossy_transfer(seed: int, loss: float) -> list[tuple[float, bytes]]:
    net = SimNet(seed=seed, latency=0.01, loss=loss, rto=0.2)
    a, b = net.add("a", FAST), net.add("b", FAST)
    net.listen("a")
    bootstrap(net, "b", "a")
    net.advance(5.0)
    assert b.engine.is_connected(a.engine.id)
    for i in range(50):
        b.engine.send(a.engine.id, 0, b"%d" % i, net.now)
        net.advance(0.01)
    net.advance(20.0)
    return [(t, e.data) for t, e in a.timeline if isinstance(e, MessageReceived)]


def test_loss_slows_a_stream_but_never_reorders_or_loses_it_and_follows_the_seed() -> None:
    clean = lossy_transfer(seed=1, loss=0.0)
    lossy = lossy_transfer(seed=1, loss=0.3)
    assert [d for _, d in lossy] == [d for _, d in clean] == [b"%d" % i for i in range(50)]
    assert lossy[-1][0] > clean[-1][0] + 0.2  # retransmissions took time
    assert lossy_transfer(seed=1, loss=0.3) == lossy  # the same seed: the same run, to the microsecond
    assert lossy_transfer(seed=2, loss=0.3) != lossy


def test_reordering_interleaves_connections_but_keeps_each_in_order() -> None:
    orders = set()
    for seed in range(8):
        net = SimNet(seed=seed, reorder=True, jitter=0.05)
        a = net.add("a", FAST)
        senders = [net.add(name, FAST) for name in ("b", "c")]
        net.listen("a")
        for s in senders:
            bootstrap(net, s.name, "a")
        net.advance(2.0)
        for i in range(20):
            for s in senders:
                s.engine.send(a.engine.id, 0, b"%s%d" % (s.name.encode(), i), net.now)
            net.run()
        net.advance(2.0)
        got = [e.data for e in a.events if isinstance(e, MessageReceived)]
        for s in senders:
            assert [d for d in got if d.startswith(s.name.encode())] == [b"%s%d" % (s.name.encode(), i)
                                                                          for i in range(20)]
        orders.add(tuple(got))
    assert len(orders) > 1  # different seeds interleave the two connections differently


def nat_net(kind: str) -> tuple[SimNet, Node, Node, Node]:
    net = SimNet()
    net.add_nat("home", kind)
    a, c = net.add("a", FAST), net.add("c", FAST)
    b = net.add("b", FAST, nat="home")
    net.listen("a"), net.listen("c")
    bootstrap(net, "b", "a")
    bootstrap(net, "b", "c")
    net.advance(1.0)
    return net, a, b, c


@pytest.mark.parametrize("kind", ["cone", "symmetric"])
def test_a_node_behind_a_nat_appears_with_the_nats_public_address(kind: str) -> None:
    net, a, b, c = nat_net(kind)
    seen = [n.engine.peer_info(b.engine.id).addr for n in (a, c)]
    assert b.ip.startswith("192.168.") and {ep.host for ep in seen} == {net.nats["home"].public_ip}
    # A cone NAT maps the node to one public port for everyone; a symmetric one, one per destination.
    assert (seen[0].port == seen[1].port) is (kind == "cone")


def test_dials_into_a_nat_fail_unless_the_port_is_forwarded() -> None:
    net = SimNet()
    net.add_nat("home")
    a = net.add("a", FAST)
    b = net.add("b", FAST, nat="home")
    d = net.add("d", FAST, nat="home")
    private = net.listen("b")
    outside = net.nats["home"].public_ip
    a.engine.start_bootstrap([Contact(private), Contact((outside, 5483))], now=net.now)
    net.advance(FAST.bootstrap_stagger + FAST.handshake_timeout + 0.1)
    (done,) = [e for e in a.events if isinstance(e, BootstrapFinished)]
    # Nothing routes to a private address from outside, and the NAT drops what nobody forwards:
    # both dials hang until the handshake timeout (no refusal comes back).
    assert dict(done.failures) == {str(private): "handshake timed out", f"{outside}:5483": "handshake timed out"}
    d.engine.start_bootstrap([Contact(private)], now=net.now)  # from inside the same NAT: reachable
    net.advance(1.0)
    assert d.engine.is_connected(b.engine.id)

    forwarded = net.listen("b", 7000, public=True)
    assert forwarded.host == outside
    a.engine.start_bootstrap([Contact(forwarded)], now=net.now)
    net.advance(1.0)
    assert a.engine.is_connected(b.engine.id)
    assert a.engine.peer_info(b.engine.id).addr == forwarded


def test_a_deaf_endpoint_accepts_and_then_says_nothing() -> None:
    net = SimNet(latency=0.01)
    b = net.add("b", dataclasses.replace(FAST, handshake_timeout=4.0, bootstrap_timeout=10.0))
    deaf = net.deaf()
    b.engine.start_bootstrap([Contact(deaf)], now=net.now)
    net.advance(3.9)
    assert not b.events and len(net.links_of("b")) == 1  # connected, waiting for an answer
    net.advance(0.2)
    (done,) = b.events
    assert isinstance(done, BootstrapFinished) and dict(done.failures) == {str(deaf): "handshake timed out"}
