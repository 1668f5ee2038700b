"""Engine scenarios that take time, on SimNet's virtual clock: contact order and staggering, timeouts,
liveness over a slow and lossy link, reachability through a NAT.

The real-socket suites keep one wiring check of each behaviour (test_service.py,
test_bootstrap_e2e.py, test_hostile.py); the behaviour itself is pinned here, to the
exact virtual second, without waiting for it.
"""

from __future__ import annotations

import dataclasses

from crust.config import Config
from crust.crypto.keys import KeyPair
from crust.effects import Close, Write
from crust.engine import Engine
from crust.events import BootstrapFinished, PeerConnected, PeerLost
from crust.handshake.secure import SecureHandshake
from crust.ids import Contact, CrustUser, Endpoint, name_hash
from tests.simnet import Node, SimNet

FAST = Config(bootstrap_cache_path=None, disable_external_reachability_requirement=True, heartbeat_interval=1.0,
              inactivity_timeout=5.0, handshake_timeout=2.0, bootstrap_timeout=3.0)


def finished(node: Node) -> tuple[float, BootstrapFinished]:
    """The (only) end of ``node``'s bootstrap run, and when it came."""
    (done,) = [(t, e) for t, e in node.timeline if isinstance(e, BootstrapFinished)]
    return done


def connected_at(node: Node) -> float | None:
    return next((t for t, e in node.timeline if isinstance(e, PeerConnected)), None)


# -- contact order and staggering ------------------------------------------------------------


def test_contacts_are_dialled_in_order_one_stagger_apart() -> None:
    net = SimNet()
    cfg = dataclasses.replace(FAST, bootstrap_stagger=0.25)
    seeds = [net.add(f"s{i}", cfg) for i in range(3)]
    b = net.add("b", cfg)
    deaf1, deaf2 = net.deaf(), net.deaf()
    start = net.now
    b.engine.start_bootstrap([Contact(deaf1), Contact(deaf2), Contact(net.listen("s0")), Contact(net.listen("s1"))],
                             now=net.now)
    net.advance(1.0)
    t, done = finished(b)
    assert done.peer_id == seeds[0].engine.id
    assert t - start == 0.5  # two deaf contacts cost one stagger each, and the third answered at once
    assert connected_at(seeds[1]) is None  # never dialled: the run was over before its turn
    assert net.links_of("b") and len(net.links_of("b")) == 1  # the deaf dials were closed


def test_a_near_second_contact_overtakes_a_far_first_one() -> None:
    net = SimNet(latency=0.01)
    cfg = dataclasses.replace(FAST, bootstrap_stagger=0.25)
    far, near, b = net.add("far", cfg), net.add("near", cfg), net.add("b", cfg)
    net.link("b", "far", latency=0.3)  # 3 round trips: 1.8 s
    start = net.now
    b.engine.start_bootstrap([Contact(net.listen("far")), Contact(net.listen("near"))], now=net.now)
    net.advance(3.0)
    t, done = finished(b)
    assert done.peer_id == near.engine.id
    assert abs((t - start) - (0.25 + 0.06)) < 1e-6  # dialled one stagger later, 3 round trips of 20 ms
    assert not far.engine.is_connected(b.engine.id)


def test_a_refused_contact_lets_the_next_one_start_at_once() -> None:
    net = SimNet(latency=0.05)
    cfg = dataclasses.replace(FAST, bootstrap_stagger=5.0)
    a, b = net.add("a", cfg), net.add("b", cfg)
    start = net.now
    b.engine.start_bootstrap([Contact(net.endpoint("a", 1)), Contact(net.listen("a"))], now=net.now)
    net.advance(1.0)
    t, done = finished(b)
    assert done.peer_id == a.engine.id
    assert abs((t - start) - 0.4) < 1e-6  # the refusal's round trip, then 3 for the bootstrap: not 5 s


# -- timeouts ---------------------------------------------------------------------------------


def test_each_failed_contact_is_named_and_a_silent_one_costs_one_handshake_timeout() -> None:
    net = SimNet()
    cfg = dataclasses.replace(FAST, handshake_timeout=1.0, bootstrap_timeout=4.0)
    net.add("other", dataclasses.replace(cfg, network_name="some-other-network"))
    b = net.add("b", cfg)
    other, refused, deaf = net.listen("other"), net.endpoint("other", 1), net.deaf()
    start = net.now
    b.engine.start_bootstrap([Contact(other), Contact(refused), Contact(deaf)], now=net.now)
    net.advance(0.999)
    assert not b.events
    net.advance(0.002)
    t, done = finished(b)
    assert t - start == 1.0  # the first two failed at once, so the deaf one was dialled at once too
    assert dict(done.failures) == {str(other): "network_mismatch", str(refused): "connect failed: refused",
                                   str(deaf): "handshake timed out"}


def test_the_runs_own_timeout_ends_a_run_stuck_on_silent_contacts() -> None:
    net = SimNet()
    cfg = dataclasses.replace(FAST, handshake_timeout=30.0, bootstrap_max_in_flight=1)
    b = net.add("b", cfg)
    deaf1, deaf2 = net.deaf(), net.deaf()
    start = net.now
    b.engine.start_bootstrap([Contact(deaf1), Contact(deaf2)], timeout=1.0, now=net.now)
    net.advance(5.0)
    t, done = finished(b)
    assert t - start == 1.0
    assert dict(done.failures) == {str(deaf1): "timed out", str(deaf2): "not tried before the timeout"}
    assert net.links_of("b") == []


def test_a_slow_drip_of_valid_bytes_does_not_extend_the_handshake_timeout() -> None:
    engine = Engine(static=KeyPair.generate(), config=FAST)
    start = 50.0
    conn = engine.handle_accepted(Endpoint("10.0.0.9", 1), start)
    assert conn is not None
    hello = SecureHandshake(initiator=True, static=KeyPair.generate(), name_hash=name_hash(None),
                            max_message_size=FAST.max_message_size).data_to_send()
    now = start
    for i in range(len(hello)):  # one byte every 50 ms, far longer than the handshake timeout in all
        now = start + i * 0.05
        if engine.get_timer() is not None and engine.get_timer() <= now:  # type: ignore[operator]
            engine.handle_timer(now)
        if engine.connection_count() == 0:
            break
        engine.receive_data(conn, hello[i:i + 1], now)
    assert engine.connection_count() == 0
    assert now - start <= FAST.handshake_timeout + 0.05
    assert any(isinstance(e, Close) for e in engine.take_effects())


def test_a_secured_connection_that_never_says_why_it_came_is_closed_at_the_handshake_timeout() -> None:
    engine = Engine(static=KeyPair.generate(), config=FAST)
    start = 50.0
    conn = engine.handle_accepted(Endpoint("10.0.0.9", 1), start)
    assert conn is not None
    raw = SecureHandshake(initiator=True, static=KeyPair.generate(), name_hash=name_hash(None),
                          max_message_size=FAST.max_message_size)
    for _ in range(10):  # a real Noise handshake, then never a BootstrapRequest
        engine.receive_data(conn, raw.data_to_send(), start)
        for effect in engine.take_effects():
            if isinstance(effect, Write):
                raw.receive_data(effect.data)
        if raw.complete:
            break
    engine.receive_data(conn, raw.data_to_send(), start)
    assert raw.complete and engine.connection_count() == 1
    assert engine.get_timer() == start + FAST.handshake_timeout
    engine.handle_timer(start + FAST.handshake_timeout - 0.001)
    assert engine.connection_count() == 1
    engine.handle_timer(start + FAST.handshake_timeout)
    assert engine.connection_count() == 0 and not engine.take_events()
    assert [type(e) for e in engine.take_effects()][-1] is Close


# -- liveness -----------------------------------------------------------------------------------


LIVE = dataclasses.replace(FAST, heartbeat_interval=0.5, inactivity_timeout=3.0)


def live_pair(settle: float) -> tuple[SimNet, Node, Node]:
    """B bootstrapped off A over a 20 ms link, ``settle`` seconds ago."""
    net = SimNet(latency=0.02)
    a, b = net.add("a", LIVE), net.add("b", LIVE)
    b.engine.start_bootstrap([Contact(net.listen("a"))], now=net.now)
    net.advance(settle)
    return net, a, b


def test_heartbeats_keep_an_idle_pair_alive_over_a_slow_lossy_link() -> None:
    net = SimNet(seed=3, latency=0.1, loss=0.1, rto=0.3)
    a, b = net.add("a", LIVE), net.add("b", LIVE)
    b.engine.start_bootstrap([Contact(net.listen("a"))], now=net.now)
    net.advance(60.0)  # 20 inactivity timeouts of idleness
    assert connected_at(a) is not None and connected_at(b) is not None
    assert not [e for e in a.events + b.events if isinstance(e, PeerLost)]
    rtt = b.engine.peer_info(a.engine.id).rtt
    assert rtt is not None and rtt >= 0.2


def test_a_peer_cut_off_is_lost_one_inactivity_timeout_after_its_last_word() -> None:
    live = LIVE
    net, a, b = live_pair(5.0)
    (conn,) = net.links_of("a")
    net.kill_link("a", conn)
    cut = net.now
    net.advance(10.0)
    (lost_at, lost), = [(t, e) for t, e in a.timeline if isinstance(e, PeerLost)]
    assert lost.reason == "timed out"
    # B's last heartbeat or echo reached A at most one heartbeat interval (plus a trip) before the cut.
    assert live.inactivity_timeout - live.heartbeat_interval - 0.1 <= lost_at - cut <= live.inactivity_timeout + 0.5


def test_a_peer_we_stopped_reading_is_never_lost_for_its_silence() -> None:
    live = LIVE
    net, a, b = live_pair(2.0)
    (conn,) = net.links_of("a")
    a.engine.reading_paused(conn, True, net.now)  # our callbacks are slow: the silence is ours
    net.kill_link("a", conn)
    net.advance(10 * live.inactivity_timeout)
    assert not [e for e in a.events if isinstance(e, PeerLost)]
    resumed = net.now
    a.engine.reading_paused(conn, False, net.now)  # reading again: now silence counts, from the resume on
    net.advance(10.0)
    (lost_at, lost), = [(t, e) for t, e in a.timeline if isinstance(e, PeerLost)]
    assert lost.reason == "timed out" and lost_at - resumed == live.inactivity_timeout


# -- reachability through a NAT ---------------------------------------------------------------


CHECKED = dataclasses.replace(FAST, disable_external_reachability_requirement=False)


def nat_bootstrap(forwarded: bool, user: CrustUser = CrustUser.NODE) -> tuple[SimNet, Node, Node, float]:
    net = SimNet(latency=0.01)
    net.add_nat("home", "cone")
    a = net.add("a", CHECKED)
    b = net.add("b", CHECKED, nat="home")
    b.engine.set_listeners([net.listen("b", 7000, public=forwarded)])
    start = net.now
    b.engine.start_bootstrap([Contact(net.listen("a"))], user=user, now=net.now)
    net.advance(CHECKED.handshake_timeout * 2)
    return net, a, b, start


def test_a_node_behind_a_nat_that_announces_its_private_listener_is_denied_when_the_dial_back_times_out() -> None:
    net, a, b, start = nat_bootstrap(forwarded=False)
    t, done = finished(b)
    assert dict(done.failures) == {str(net.endpoint("a")): "denied: failed_external_reachability"}
    # The dial-back hangs (nothing routes to a private address); A gives up after half its handshake
    # timeout, so B hears the denial before its own handshake deadline.
    assert CHECKED.handshake_timeout / 2 <= t - start < CHECKED.handshake_timeout
    assert not [e for e in a.events if isinstance(e, PeerConnected)]


def test_a_node_behind_a_nat_with_a_forwarded_listener_is_granted() -> None:
    net, a, b, start = nat_bootstrap(forwarded=True)
    t, done = finished(b)
    assert done.peer_id == a.engine.id and t - start < 0.2
    assert a.engine.peer_info(b.engine.id).addr.host == net.nats["home"].public_ip


def test_a_client_behind_a_nat_is_never_dialled_back() -> None:
    net, a, b, start = nat_bootstrap(forwarded=False, user=CrustUser.CLIENT)
    t, done = finished(b)
    assert done.peer_id == a.engine.id and t - start < 0.1
