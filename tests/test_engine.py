"""Engine scenarios on SimNet: virtual time, no sockets."""

from __future__ import annotations

import dataclasses
import random

import pytest

from crust.config import Config
from crust.events import BootstrapFinished, ConnectFinished, ContactsLearned, MessageReceived, Misbehaved, PeerConnected, PeerLost, SendDropped
from crust.ids import Contact, CrustUser, Endpoint
from crust.wire.messages import MessageType, PeerExchangeResponse, encode_record
from tests.simnet import Node, SimNet

FAST = Config(bootstrap_cache_path=None, disable_external_reachability_requirement=True, heartbeat_interval=1.0, inactivity_timeout=5.0, handshake_timeout=2.0,
              bootstrap_timeout=3.0)


def of(node: Node, kind: type) -> list:
    return [e for e in node.events if isinstance(e, kind)]


def pair(chunk: int | None = None, config: Config = FAST, **b_overrides: object) -> tuple[SimNet, Node, Node]:
    net = SimNet(chunk=chunk)
    a = net.add("a", config)
    b = net.add("b", dataclasses.replace(config, **b_overrides))
    seed = net.listen("a")
    b.engine.start_bootstrap([Contact(seed)], now=net.now)
    net.run()
    return net, a, b


@pytest.mark.parametrize("chunk", [None, 1])
def test_bootstrap_connects_both_sides(chunk: int | None) -> None:
    net, a, b = pair(chunk)
    (joined,) = of(a, PeerConnected)
    (reached,) = of(b, PeerConnected)
    assert joined.info.id == b.engine.id and joined.info.origin == "bootstrap_accept"
    assert reached.info.id == a.engine.id and reached.info.origin == "bootstrap_connect"
    assert of(b, BootstrapFinished) == [BootstrapFinished(1, a.engine.id, ())]


def test_messages_arrive_in_order_per_priority_and_whole() -> None:
    net, a, b = pair()
    big = bytes(range(256)) * 4096  # 1 MiB: chunked into many frames
    b.engine.send(a.engine.id, 5, big, net.now)
    for i in range(100):
        b.engine.send(a.engine.id, 0, b"small %d" % i, net.now)
    net.run()
    got = [e.data for e in of(a, MessageReceived)]
    assert got.count(big) == 1
    assert [m for m in got if m != big] == [b"small %d" % i for i in range(100)]
    # priority 0 overtook the big priority-5 message
    assert got.index(big) > 0


def test_wrong_network_is_named_in_bootstrap_failure() -> None:
    net = SimNet()
    a = net.add("a", dataclasses.replace(FAST, network_name="one"))
    b = net.add("b", dataclasses.replace(FAST, network_name="two"))
    b.engine.start_bootstrap([Contact(net.listen("a"))], now=net.now)
    net.run()
    (done,) = of(b, BootstrapFinished)
    assert done.peer_id is None
    assert dict(done.failures) == {str(net.endpoint("a")): "network_mismatch"}
    assert not of(a, PeerConnected)


def test_first_granted_wins_and_unreachable_contacts_fail() -> None:
    net = SimNet()
    a = net.add("a", FAST)
    c = net.add("c", FAST)
    b = net.add("b", FAST)
    net.listen("a"), net.listen("c")
    contacts = [Contact(("10.9.9.9", 1)), Contact(net.endpoint("a")), Contact(net.endpoint("c"))]
    b.engine.start_bootstrap(contacts, now=net.now)
    net.run()
    net.advance(1.0)
    (done,) = of(b, BootstrapFinished)
    assert done.peer_id in (a.engine.id, c.engine.id)
    assert len(of(b, PeerConnected)) == 1


def test_expected_peer_id_mismatch_aborts() -> None:
    net = SimNet()
    net.add("a", FAST)
    impostor = net.add("x", FAST)
    b = net.add("b", FAST)
    net.listen("a")
    b.engine.start_bootstrap([Contact(net.endpoint("a"), impostor.engine.id)], now=net.now)
    net.run()
    (done,) = of(b, BootstrapFinished)
    assert dict(done.failures) == {str(net.endpoint("a")): "peer_id_mismatch"}


def test_goodbye_reports_loss_at_once_on_both_sides() -> None:
    net, a, b = pair()
    assert b.engine.disconnect(a.engine.id, net.now)
    net.run()
    assert of(a, PeerLost)[0].peer_id == b.engine.id
    assert of(b, PeerLost)[0].reason == "disconnected"
    assert not a.engine.is_connected(b.engine.id)


def test_heartbeats_keep_an_idle_link_alive_and_measure_rtt() -> None:
    net, a, b = pair()
    net.advance(30.0)
    assert not of(a, PeerLost) and not of(b, PeerLost)
    assert b.engine.peer_info(a.engine.id).rtt is not None


def test_silent_peer_is_lost_after_inactivity_timeout() -> None:
    net, a, b = pair()
    for conn in net.links_of("a"):
        net.kill_link("a", conn)
    net.advance(4.0)
    assert not of(a, PeerLost)
    net.advance(2.0)
    assert of(a, PeerLost)[0].reason == "timed out"


def test_handshake_times_out() -> None:
    net = SimNet()
    a = net.add("a", FAST)
    conn = a.engine.handle_accepted(net.endpoint("a", 1), net.now)
    assert conn is not None
    net.run()
    net.advance(2.5)
    assert a.engine.get_timer() is None


def test_pending_handshake_cap_drops_the_oldest() -> None:
    net = SimNet()
    a = net.add("a", dataclasses.replace(FAST, max_pending_handshakes_per_ip=2))
    first = a.engine.handle_accepted(Endpoint("10.0.0.9", 1), net.now)
    a.engine.handle_accepted(Endpoint("10.0.0.9", 2), net.now)
    a.engine.take_effects()
    a.engine.handle_accepted(Endpoint("10.0.0.9", 3), net.now)
    closes = [e for e in a.engine.take_effects() if type(e).__name__ == "Close"]
    assert [e.conn for e in closes] == [first]


def test_not_accepting_and_whitelist_denials() -> None:
    net = SimNet()
    a = net.add("a", dataclasses.replace(FAST, whitelisted_client_ips=frozenset({"10.9.9.9"})))
    b = net.add("b", FAST)
    net.listen("a")
    b.engine.start_bootstrap([Contact(net.endpoint("a"))], user=CrustUser.CLIENT, now=net.now)
    net.run()
    assert dict(of(b, BootstrapFinished)[0].failures) == {str(net.endpoint("a")): "denied: client_not_whitelisted"}
    a.engine.accept_bootstrap = False
    b.engine.start_bootstrap([Contact(net.endpoint("a"))], now=net.now)
    net.run()
    assert dict(of(b, BootstrapFinished)[1].failures) == {str(net.endpoint("a")): "denied: not_accepting"}


def test_simultaneous_bootstrap_both_ways_leaves_one_connection() -> None:
    net = SimNet()
    a = net.add("a", FAST)
    b = net.add("b", FAST)
    net.listen("a"), net.listen("b")
    a.engine.start_bootstrap([Contact(net.endpoint("b"))], now=net.now)
    b.engine.start_bootstrap([Contact(net.endpoint("a"))], now=net.now)
    net.run()
    net.advance(3.0)
    assert len(of(a, PeerConnected)) == 1 and len(of(b, PeerConnected)) == 1
    assert not of(a, PeerLost) and not of(b, PeerLost)
    assert of(a, BootstrapFinished)[0].peer_id == b.engine.id
    assert of(b, BootstrapFinished)[0].peer_id == a.engine.id
    for i in range(10):
        a.engine.send(b.engine.id, 0, b"%d" % i, net.now)
    net.run()
    assert [e.data for e in of(b, MessageReceived)] == [b"%d" % i for i in range(10)]
    assert len(net.links_of("a")) == 1


def test_droppable_messages_expire_and_are_reported() -> None:
    net, a, b = pair(config=dataclasses.replace(FAST, drop_after=2.0, inactivity_timeout=100.0))
    for conn in net.links_of("b"):
        net.kill_link("b", conn)
    for i in range(2000):  # far more than the write window: most stay queued
        b.engine.send(a.engine.id, 3, bytes(1000), net.now)
    net.run()
    net.advance(3.0)
    dropped = of(b, SendDropped)
    assert dropped and all(d.priority == 3 for d in dropped)
    assert sum(d.count for d in dropped) > 1000


def test_garbage_after_handshake_is_misbehaviour() -> None:
    net, a, b = pair()
    (conn,) = net.links_of("a")
    a.engine.receive_data(conn, bytes(4) + b"\x00" * 4, net.now)  # a 0-length frame: fails the AEAD
    net.run()
    assert of(a, Misbehaved)[0].peer_id == b.engine.id
    assert of(a, PeerLost)[0].peer_id == b.engine.id
    assert of(b, PeerLost)


CHECKED = dataclasses.replace(FAST, disable_external_reachability_requirement=False)


def reachability_run(b_listens_as: str | None, user: CrustUser = CrustUser.NODE) -> tuple[SimNet, Node, Node]:
    """A (checking) is bootstrapped off by B, whose announced listener is served by ``b_listens_as``."""
    net = SimNet()
    a = net.add("a", CHECKED)
    b = net.add("b", CHECKED)
    net.add("x", CHECKED)  # an impostor that may sit at B's announced address
    net.listen("a")
    if b_listens_as is not None:
        net.listen(b_listens_as, 7000)
        b.engine.set_listeners([net.endpoint(b_listens_as, 7000)])
    b.engine.start_bootstrap([Contact(net.endpoint("a"))], user=user, now=net.now)
    net.run()
    net.advance(2.0)
    return net, a, b


def test_a_node_that_answers_at_its_listener_is_granted() -> None:
    net, a, b = reachability_run("b")
    assert of(b, BootstrapFinished)[0].peer_id == a.engine.id
    assert [e.info.id for e in of(a, PeerConnected)] == [b.engine.id]
    assert net.links_of("a") and len(net.links_of("b")) == 1  # the dial-back closed again


def test_a_node_nobody_can_reach_is_denied() -> None:
    net, a, b = reachability_run(None)
    (done,) = of(b, BootstrapFinished)
    assert dict(done.failures) == {str(net.endpoint("a")): "denied: failed_external_reachability"}
    assert not of(a, PeerConnected)


def test_another_identity_at_the_nodes_listener_fails_the_check() -> None:
    net, a, b = reachability_run("x")
    assert dict(of(b, BootstrapFinished)[0].failures) == {
        str(net.endpoint("a")): "denied: failed_external_reachability"}


def test_a_client_is_never_checked() -> None:
    net, a, b = reachability_run(None, user=CrustUser.CLIENT)
    assert of(b, BootstrapFinished)[0].peer_id == a.engine.id
    assert of(a, PeerConnected)[0].info.user is CrustUser.CLIENT


def test_a_node_whose_announced_listener_is_closed_is_denied() -> None:
    net = SimNet()
    a = net.add("a", CHECKED)
    b = net.add("b", CHECKED)
    net.listen("a")
    b.engine.set_listeners([net.endpoint("b", 7000)])  # announced, but nobody listens there
    b.engine.start_bootstrap([Contact(net.endpoint("a"))], now=net.now)
    net.run()
    assert dict(of(b, BootstrapFinished)[0].failures) == {
        str(net.endpoint("a")): "denied: failed_external_reachability"}


def test_banned_ips_are_never_dialled() -> None:
    net = SimNet()
    net.add("a", FAST)
    b = net.add("b", FAST)
    net.listen("a")
    b.engine.ban([], [net.nodes["a"].ip], net.now)
    b.engine.start_bootstrap([Contact(net.endpoint("a"))], now=net.now)
    assert not [e for e in b.engine.take_effects() if type(e).__name__ == "Dial"]
    net.run()
    assert dict(of(b, BootstrapFinished)[0].failures) == {str(net.endpoint("a")): "blacklisted"}


def test_peer_exchange_tells_a_newcomer_about_reachable_peers_only() -> None:
    net = SimNet()
    c = net.add("c", FAST)
    b = net.add("b", FAST)
    client = net.add("client", FAST)
    a = net.add("a", FAST)
    net.listen("c"), net.listen("b")
    b.engine.start_bootstrap([Contact(net.endpoint("c"))], now=net.now)  # B dialled C: C is reachable
    client.engine.start_bootstrap([Contact(net.endpoint("b"))], user=CrustUser.CLIENT, now=net.now)
    net.run()
    a.engine.start_bootstrap([Contact(net.endpoint("b"))], now=net.now)
    net.run()
    learned = of(a, ContactsLearned)
    assert [(e.peer_id, e.contacts) for e in learned] == [
        (b.engine.id, (Contact(net.endpoint("c"), c.engine.id),))]  # never the Client, never A itself


def test_peer_exchange_can_be_turned_off() -> None:
    net = SimNet()
    b = net.add("b", dataclasses.replace(FAST, peer_exchange=False))
    c = net.add("c", FAST)
    a = net.add("a", FAST)
    net.listen("b"), net.listen("c")
    c.engine.start_bootstrap([Contact(net.endpoint("b"))], now=net.now)
    a.engine.start_bootstrap([Contact(net.endpoint("b"))], now=net.now)
    net.run()
    assert not of(a, ContactsLearned)  # B does not share


def test_an_unsolicited_peer_exchange_answer_is_misbehaviour() -> None:
    net, a, b = pair()
    (conn,) = net.links_of("b")
    peer = b.engine._peers.table[a.engine.id]  # reaching into the engine: no public way to fake a reply
    peer.exchange_asked = False
    a_peer = a.engine._peers.table[b.engine.id]
    a_peer.outbox.push_control("exchange_answer", encode_record(PeerExchangeResponse()))
    a.engine._peers.dirty[a_peer.conn.id] = a_peer.conn
    net.run()
    assert of(b, Misbehaved)[0].reason == "unsolicited PeerExchangeResponse"


def test_a_peer_exchange_answer_over_the_cap_is_misbehaviour() -> None:
    net = SimNet()
    c = net.add("c", FAST)
    b = net.add("b", FAST)
    a = net.add("a", FAST)
    net.listen("c"), net.listen("b")
    b.engine.start_bootstrap([Contact(net.endpoint("c"))], now=net.now)
    net.run()
    # Hold B's answer back, then let B "answer" A's request with 200 entries (the cap is 32).
    a.engine.start_bootstrap([Contact(net.endpoint("b"))], now=net.now)
    net.run()
    a.events.clear()
    a.engine._peers.table[b.engine.id].exchange_asked = True  # as if A had just asked again
    b_peer = b.engine._peers.table[a.engine.id]
    shared = bytes(32) + b"\x01" + bytes([0, 4, 10, 0, 0, 1, 0, 1])  # one entry: a PeerId and one endpoint
    body = bytes([200]) + shared * 200
    b_peer.outbox.push_control("exchange_answer", bytes([MessageType.PEER_EXCHANGE_RESPONSE]) + len(body).to_bytes(4, "big") + body)
    b.engine._peers.dirty[b_peer.conn.id] = b_peer.conn
    net.run()
    assert "at most 32" in of(a, Misbehaved)[0].reason
    assert of(a, PeerLost)[0].peer_id == b.engine.id


TOKEN_A, TOKEN_B = b"A" * 16, b"B" * 16


def connect_both(net: SimNet, a: Node, b: Node, a_eps: list, b_eps: list, timeout: float = 3.0) -> None:
    a.engine.start_connect(b.engine.id, b_eps, their_token=TOKEN_B, our_token=TOKEN_A, timeout=timeout, now=net.now)
    b.engine.start_connect(a.engine.id, a_eps, their_token=TOKEN_A, our_token=TOKEN_B, timeout=timeout, now=net.now)
    net.run()


@pytest.mark.parametrize("chunk", [None, 1])
def test_connect_both_ways_leaves_exactly_one_connection(chunk: int | None) -> None:
    net = SimNet(chunk=chunk)
    a, b = net.add("a", FAST), net.add("b", FAST)
    connect_both(net, a, b, [net.listen("a")], [net.listen("b")])
    net.advance(1.0)
    for node, other in ((a, b), (b, a)):
        assert [(e.info.id, e.info.origin) for e in of(node, PeerConnected)] == [(other.engine.id, "connect")]
        assert of(node, ConnectFinished) == [ConnectFinished(other.engine.id, True)]
    assert len(net.links_of("a")) == 1 and not of(a, PeerLost)
    a.engine.send(b.engine.id, 0, b"hi", net.now)
    net.run()
    assert [e.data for e in of(b, MessageReceived)] == [b"hi"]


def test_connect_works_when_only_one_side_listens() -> None:
    net = SimNet()
    a, b = net.add("a", FAST), net.add("b", FAST)
    connect_both(net, a, b, [], [net.listen("b")])
    assert of(a, ConnectFinished)[0].connected and of(b, ConnectFinished)[0].connected


def test_connect_to_an_impostor_fails_with_each_candidates_reason() -> None:
    net = SimNet()
    a, b, x = net.add("a", FAST), net.add("b", FAST), net.add("x", FAST)
    a.engine.start_connect(b.engine.id, [net.listen("x")], their_token=TOKEN_B, our_token=TOKEN_A, timeout=2.0,
                           now=net.now)
    net.run()
    net.advance(2.5)
    (done,) = of(a, ConnectFinished)
    assert not done.connected
    assert dict(done.failures)[str(net.endpoint("x"))] == "peer_id_mismatch"


def test_a_later_connect_call_adopts_the_peers_early_dial() -> None:
    net = SimNet()
    a, b = net.add("a", FAST), net.add("b", FAST)
    b_ep = net.listen("b")
    a.engine.start_connect(b.engine.id, [b_ep], their_token=TOKEN_B, our_token=TOKEN_A, timeout=3.0, now=net.now)
    net.run()  # B has not called connect() yet: A's candidate waits at B
    assert not of(a, PeerConnected)
    b.engine.start_connect(a.engine.id, [], their_token=TOKEN_A, our_token=TOKEN_B, timeout=3.0, now=net.now)
    net.run()
    assert of(a, PeerConnected) and of(b, PeerConnected)


def test_a_wrong_token_is_refused() -> None:
    net = SimNet()
    a, b = net.add("a", FAST), net.add("b", FAST)
    b_ep = net.listen("b")
    b.engine.start_connect(a.engine.id, [], their_token=TOKEN_A, our_token=TOKEN_B, timeout=2.0, now=net.now)
    a.engine.start_connect(b.engine.id, [b_ep], their_token=b"X" * 16, our_token=TOKEN_A, timeout=2.0, now=net.now)
    net.run()
    net.advance(2.5)
    assert not of(a, PeerConnected) and not of(b, PeerConnected)
    assert not of(a, ConnectFinished)[0].connected


def test_connect_and_bootstrap_racing_in_any_order_end_with_one_link_and_no_loss() -> None:
    """60 seeded interleavings: call order, delivery order across links and chunking vary."""
    from crust.crypto.keys import KeyPair

    for seed in range(60):
        rng = random.Random(seed)
        net = SimNet(chunk=rng.choice([None, 7, 50]))
        a = net.add("a", FAST, KeyPair(rng.randbytes(32)))
        b = net.add("b", FAST, KeyPair(rng.randbytes(32)))
        a_ep, b_ep = net.listen("a"), net.listen("b")
        calls = [
            lambda: b.engine.start_bootstrap([Contact(a_ep)], now=net.now),
            lambda: a.engine.start_connect(b.engine.id, [b_ep], their_token=TOKEN_B, our_token=TOKEN_A,
                                           timeout=3.0, now=net.now),
            lambda: b.engine.start_connect(a.engine.id, [a_ep], their_token=TOKEN_A, our_token=TOKEN_B,
                                           timeout=3.0, now=net.now),
        ]
        rng.shuffle(calls)
        for call in calls:
            call()
            net.run_shuffled(rng, steps=rng.randint(0, 6))
        net.run()
        net.advance(3.0)
        outcome = [len(of(n, PeerConnected)) for n in (a, b)] + [len(of(n, PeerLost)) for n in (a, b)]
        assert outcome == [1, 1, 0, 0], f"seed {seed}: {outcome}"
        assert len(net.links_of("a")) == 1, f"seed {seed}"


def test_a_duplicate_goodbye_before_the_survivors_grant_parks_the_peer_instead_of_losing_it() -> None:
    """B's second bootstrap connection outranks the first; A retires the first with
    Goodbye(duplicate), and B reads that Goodbye before the Granted of the second."""
    for _ in range(50):  # a first connection in the lower half of session ids (p of 50 misses: 2**-50)...
        net, a, b = pair()
        (first,) = net.links_of("b")
        if b.engine._core.conns[first].session_id < bytes([0x80]):
            break
    for _ in range(20):  # ...so a fresh one outranks it at least half of the time
        b.engine.start_bootstrap([Contact(net.endpoint("a"))], now=net.now)
        # Deliver everything, but always B's first connection before anything else to B.
        net.run(choose=lambda heads: next((d for d in heads if (d.to, d.conn) == ("b", first)), heads[0]))
        if first not in net.links_of("b"):
            break  # the second connection won: the first was retired
    else:
        raise AssertionError("the fresh connection never outranked the first in 20 tries (p = 2**-20)")
    net.advance(2.0)
    assert len(of(b, PeerConnected)) == 1 and not of(b, PeerLost)
    assert b.engine.is_connected(a.engine.id)


def test_the_node_whitelist_judges_connect_both_ways() -> None:
    net = SimNet()
    a = net.add("a", dataclasses.replace(FAST, whitelisted_node_ips=["10.9.9.9"]))  # b's IP is not on it
    b = net.add("b", FAST)
    connect_both(net, a, b, [net.listen("a")], [net.listen("b")])
    net.advance(3.5)
    (done,) = of(a, ConnectFinished)
    assert not done.connected
    reasons = dict(done.failures)
    assert reasons[str(net.endpoint("b"))] == "not whitelisted"  # A never dials B
    # B's dial reached A, which refused it: B fails too, and no connection survives anywhere.
    assert not of(b, ConnectFinished)[0].connected and not net.links_of("a")


def test_new_whitelists_drop_every_peer_whatever_its_origin() -> None:
    net = SimNet()
    a, b, seed = net.add("a", FAST), net.add("b", FAST), net.add("seed", FAST)
    a.engine.start_bootstrap([Contact(net.listen("seed"), seed.engine.id)], now=net.now)
    net.run()
    connect_both(net, a, b, [net.listen("a")], [net.listen("b")])
    assert a.engine.is_connected(b.engine.id) and a.engine.is_connected(seed.engine.id)
    a.engine.update_whitelists([seed.ip], None, net.now)
    net.run()
    assert not a.engine.is_connected(b.engine.id)  # let in by connect(): judged by the node list
    assert a.engine.is_connected(seed.engine.id)  # still on the list
    a.engine.update_whitelists(["10.9.9.9"], None, net.now)
    net.run()
    assert not a.engine.is_connected(seed.engine.id)  # we bootstrapped off it: judged all the same
    assert [e.reason for e in of(a, PeerLost)] == ["no longer whitelisted"] * 2


def test_the_node_whitelist_judges_our_own_bootstrap_dials() -> None:
    net = SimNet()
    a = net.add("a", dataclasses.replace(FAST, whitelisted_node_ips=["10.9.9.9"]))
    seed = net.add("seed", FAST)
    a.engine.start_bootstrap([Contact(net.listen("seed"), seed.engine.id)], now=net.now)
    net.advance(1.0)
    (done,) = of(a, BootstrapFinished)
    assert done.peer_id is None and dict(done.failures) == {str(net.endpoint("seed")): "not whitelisted"}
    assert not net.links_of("seed")  # never dialled
