"""End-to-end tests of ``crust.Service``: real Services, real sockets, 127.0.0.1 only.

Every wait is bounded (a Recorder condition, an Event or a Future with a
timeout).  The few fixed waits prove that something does *not* happen within
a window and say so where they appear.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import socket
import threading
import time
from typing import Any, Callable

import pytest

import crust
from crust.wire.messages import Heartbeat

from .livenet import KIB, MIB, WAIT, Net, RawPeer, Recorder, block_on_message, refused_address, wait_closed_by_peer




def _crust_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("crust-") and t.is_alive()]


# -- bootstrap and peer information --------------------------------------------------


def test_bootstrap_connects_both_sides_once_with_peer_info(net: Net) -> None:
    fast = dict(heartbeat_interval=0.05, inactivity_timeout=5.0)
    a, ra, a_ep = net.listener(**fast)
    b, rb = net.client(str(a_ep), **fast)
    assert a.id != b.id

    assert b.bootstrap(timeout=WAIT) == a.id
    ra.wait(lambda: len(ra.new_peers) == 1, what="A's on_new_peer")
    rb.wait(lambda: len(rb.new_peers) == 1, what="B's on_new_peer")
    (a_saw,), (b_saw,) = ra.new_peers, rb.new_peers
    node = crust.CrustUser.NODE
    assert (a_saw.id, a_saw.origin, a_saw.transport, a_saw.user) == (b.id, "bootstrap_accept", "tcp", node)
    assert (b_saw.id, b_saw.origin, b_saw.transport, b_saw.user) == (a.id, "bootstrap_connect", "tcp", node)
    assert b_saw.addr == a_ep
    assert a_saw.addr.host == "127.0.0.1"

    # A echoes; each echo round trip lets heartbeats (every 50 ms) and their echoes flow too.
    a.on_message(lambda pid, data: a.send(pid, b"echo:" + data))
    for i in range(200):
        b.send(a.id, b"ping %d" % i)
        rb.wait(lambda: rb.count() == i + 1, what=f"echo {i}")
        if a.peer_info(b.id).rtt is not None and b.peer_info(a.id).rtt is not None:
            break
    assert rb.data_from(a.id)[0] == b"echo:ping 0"

    for svc, other in ((a, b), (b, a)):
        (info,) = svc.peers()
        assert info.id == other.id
        info = svc.peer_info(other.id)
        assert info.rtt is not None and 0 < info.rtt < 1.0, info
        assert info.bytes_sent > 0 and info.bytes_received > 0, info
        assert svc.is_connected(other.id)
        assert svc.get_peer_ip_addr(other.id) == "127.0.0.1"
    assert b.is_peer_hard_coded(a.id) is True  # A's address is B's hard-coded contact
    assert a.is_peer_hard_coded(b.id) is False  # A has no contacts at all
    assert len(ra.new_peers) == 1 and len(rb.new_peers) == 1


def test_is_peer_whitelisted_follows_the_whitelist_of_the_peers_role(net: Net) -> None:
    p = net.pair(dict(whitelisted_node_ips=["127.0.0.1"], whitelisted_client_ips=["127.0.0.9"]))
    assert p.a.is_peer_whitelisted(p.b.id) is True  # B bootstrapped as a Node from 127.0.0.1
    assert p.b.is_peer_whitelisted(p.a.id) is True  # B has no whitelist at all
    # The node list judges the nodes we bootstrap off too: C may not dial A at all.
    c, rc = net.client(str(p.a_ep), whitelisted_node_ips=["127.0.0.9"])
    with pytest.raises(crust.BootstrapFailed) as failed:
        c.bootstrap(timeout=WAIT)
    assert failed.value.reasons == {str(p.a_ep): "not whitelisted"}


def test_start_bootstrap_reports_the_new_peer(net: Net) -> None:
    a, ra, a_ep = net.listener()
    b, rb = net.client(str(a_ep))
    b.start_bootstrap()
    rb.wait(lambda: len(rb.new_peers) == 1, what="on_new_peer after start_bootstrap")
    assert rb.new_peers[0].id == a.id and rb.new_peers[0].origin == "bootstrap_connect"
    assert rb.bootstrap_failed == 0


def test_peer_queries_reject_unknown_and_bad_peers(net: Net) -> None:
    p = net.pair()
    stranger = crust.Identity.generate().peer_id
    assert p.a.is_connected(stranger) is False
    for call in (p.a.peer_info, p.a.get_peer_ip_addr, p.a.is_peer_hard_coded):
        with pytest.raises(crust.PeerNotFound):
            call(stranger)
    for call in (p.a.peer_info, p.a.is_connected, p.a.disconnect):
        with pytest.raises(TypeError, match="peer_id"):
            call(str(p.b.id))  # type: ignore[arg-type]


# -- messages -------------------------------------------------------------------------


def test_messages_flow_both_ways(net: Net) -> None:
    p = net.pair()
    p.b.send(p.a.id, b"hello A")
    p.a.send(p.b.id, b"hello B")
    p.ra.wait(lambda: p.ra.count() == 1, what="A's message")
    p.rb.wait(lambda: p.rb.count() == 1, what="B's message")
    assert p.ra.messages == [(p.b.id, b"hello A")]
    assert p.rb.messages == [(p.a.id, b"hello B")]
    assert all(type(data) is bytes for _, data in p.ra.messages + p.rb.messages)


def test_thousand_messages_each_way_arrive_in_order_exactly_once(net: Net) -> None:
    p = net.pair()
    n = 1000
    for i in range(n):
        p.b.send(p.a.id, b"b%d" % i)
        p.a.send(p.b.id, b"a%d" % i)
    # A last marker each way: whatever was sent before it has arrived when it does.
    p.b.send(p.a.id, b"end")
    p.a.send(p.b.id, b"end")
    p.ra.wait(lambda: p.ra.count() >= n + 1, what="B's messages")
    p.rb.wait(lambda: p.rb.count() >= n + 1, what="A's messages")
    assert p.ra.data_from(p.b.id) == [b"b%d" % i for i in range(n)] + [b"end"]
    assert p.rb.data_from(p.a.id) == [b"a%d" % i for i in range(n)] + [b"end"]


def test_a_burst_of_sends_wakes_the_io_thread_per_batch_not_per_message(net: Net) -> None:
    # send() hands each message to the I/O thread through its send inbox, whose first message
    # of a burst posts one drain on the call queue, which writes a wakeup byte only when the
    # loop sleeps: a burst must not cost a syscall (and a loop turn) each.
    p = net.pair()
    n = 20_000
    reactor = p.b._reactor  # private on purpose: the wakeup count is the property under test
    before = reactor.wakeups
    for i in range(n):
        p.b.send(p.a.id, b"%d" % i)
    p.ra.wait(lambda: p.ra.count() >= n, what="the burst")
    wakeups = reactor.wakeups - before
    assert p.ra.data_from(p.b.id) == [b"%d" % i for i in range(n)]
    assert wakeups < n // 20, f"{wakeups} wakeups for {n} sends"


def test_a_burst_of_sends_shares_frames(net: Net) -> None:
    # One drain per burst, one pump per drain: the burst's messages are sealed together, many
    # to a frame (a frame costs 20 bytes on the wire: its length and the AEAD tag).
    p = net.pair()
    n, size = 5_000, 10
    sent_before = p.b.peer_info(p.a.id).bytes_sent
    for _ in range(n):
        p.b.send(p.a.id, b"x" * size)
    p.ra.wait(lambda: p.ra.count() >= n, what="the burst")
    wire = p.b.peer_info(p.a.id).bytes_sent - sent_before
    frames = (wire - n * (size + 7)) / 20  # 7: a Data record's header
    assert frames < n / 10, f"{frames:.0f} frames for {n} messages"


def test_max_size_and_empty_messages_arrive_whole(net: Net) -> None:
    p = net.pair()
    big = os.urandom(2 * MIB)  # Config.max_message_size's default
    p.b.send(p.a.id, big)
    p.b.send(p.a.id, b"")
    p.b.send(p.a.id, big[:64 * KIB + 1])  # one byte more than a frame's worth
    p.ra.wait(lambda: p.ra.count() == 3, what="the big messages")
    assert p.ra.data_from(p.b.id) == [big, b"", big[:64 * KIB + 1]]

    with pytest.raises(crust.MessageTooLarge) as info:
        p.b.send(p.a.id, big + b"x")
    assert isinstance(info.value, ValueError) and isinstance(info.value, crust.CrustError)
    assert str(2 * MIB) in str(info.value)


def test_max_message_size_is_configurable(net: Net) -> None:
    p = net.pair(b_cfg=dict(max_message_size=1000))
    p.b.send(p.a.id, b"x" * 1000)
    with pytest.raises(crust.MessageTooLarge):
        p.b.send(p.a.id, b"x" * 1001)
    p.ra.wait(lambda: p.ra.count() == 1)


def test_priority_0_overtakes_queued_big_priority_5_messages(net: Net) -> None:
    # send_queue_limit is raised so that the priority-5 backlog (droppable) is not dropped.
    p = net.pair(b_cfg=dict(send_queue_limit=64 * MIB))
    big = [bytes([i]) * (2 * MIB) for i in range(8)]
    for data in big:
        p.b.send(p.a.id, data, priority=5)
    p.b.send(p.a.id, b"urgent", priority=0)
    p.ra.wait(lambda: p.ra.count() == len(big) + 1, timeout=20.0, what="all messages")
    received = p.ra.data_from(p.b.id)
    urgent_at = received.index(b"urgent")
    bulk = [d for d in received if d != b"urgent"]
    assert bulk == big  # whole and in order within their priority
    assert urgent_at < len(big), "the priority-0 message waited behind every priority-5 message"
    assert p.rb.dropped == []


def test_bytearray_and_memoryview_are_accepted_and_copied(net: Net) -> None:
    p = net.pair()
    buf = bytearray(b"from a bytearray")
    p.b.send(p.a.id, buf)
    buf[:4] = b"XXXX"  # send() took a copy: reusing the buffer at once is safe
    p.b.send(p.a.id, memoryview(b"from a memoryview"))
    backing = bytearray(b"--slice--")
    p.b.send(p.a.id, memoryview(backing)[2:7])
    p.ra.wait(lambda: p.ra.count() == 3)
    assert p.ra.data_from(p.b.id) == [b"from a bytearray", b"from a memoryview", b"slice"]
    assert all(type(d) is bytes for d in p.ra.data_from(p.b.id))


def test_send_from_inside_on_message_echoes(net: Net) -> None:
    p = net.pair()

    @p.a.on_message
    def echo(peer_id: crust.PeerId, data: bytes) -> None:
        p.a.send(peer_id, data[::-1], priority=1)

    for i in range(100):
        p.b.send(p.a.id, b"msg-%03d" % i)
    p.rb.wait(lambda: p.rb.count() == 100, what="100 echoes")
    assert p.rb.data_from(p.a.id) == [(b"msg-%03d" % i)[::-1] for i in range(100)]


# -- bad arguments and closed services ---------------------------------------------------


def test_send_rejects_bad_arguments(net: Net) -> None:
    p = net.pair()
    a, b = p.a, p.b
    with pytest.raises(TypeError, match="data"):
        b.send(a.id, "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="data"):
        b.send(a.id, 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="priority"):
        b.send(a.id, b"x", priority="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="priority"):
        b.send(a.id, b"x", priority=1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="priority"):
        b.send(a.id, b"x", priority=True)  # a bool is not a priority
    for bad in (256, -1):
        with pytest.raises(ValueError, match="priority"):
            b.send(a.id, b"x", priority=bad)
    with pytest.raises(TypeError, match="peer_id"):
        b.send(str(a.id), b"x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="timeout"):
        b.send(a.id, b"x", timeout="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout"):
        b.send(a.id, b"x", timeout=-1)
    with pytest.raises(crust.PeerNotFound) as info:
        b.send(crust.Identity.generate().peer_id, b"x")
    assert isinstance(info.value, crust.CrustError)
    # None of the rejected calls sent anything.
    b.send(a.id, b"ok", priority=255)
    b.send(a.id, b"ok0", priority=0)
    p.ra.wait(lambda: p.ra.count() == 2)
    assert sorted(p.ra.data_from(b.id)) == [b"ok", b"ok0"]


def test_bad_bootstrap_arguments(net: Net) -> None:
    b = net.service(hard_coded_contacts=[refused_address()])
    with pytest.raises(TypeError, match="blacklist"):
        b.bootstrap(blacklist="127.0.0.1")  # a single entry, not an iterable of entries
    with pytest.raises(TypeError, match="user"):
        b.bootstrap(user="node")  # type: ignore[arg-type]
    with pytest.raises((TypeError, ValueError), match="timeout"):
        b.bootstrap(timeout=-1)
    with pytest.raises(TypeError, match="accept"):
        b.set_accept_bootstrap(1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        b.ban("not-an-ip")
    with pytest.raises(TypeError, match="callable"):
        b.on_message(None)  # type: ignore[type-var]


def test_constructor_rejects_bad_arguments() -> None:
    with pytest.raises(TypeError, match="config"):
        crust.Service(config="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="identity"):
        crust.Service(identity="x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dispatch"):
        crust.Service(dispatch="greenlet")
    with pytest.raises(crust.ConfigError, match="inactivity_timeout"):
        crust.Config(heartbeat_interval=2.0, inactivity_timeout=1.0)
    # None of these started a thread.
    assert _crust_threads() == []


def test_every_method_raises_service_closed_after_close(net: Net) -> None:
    a, ra, a_ep = net.listener()
    b, rb = net.client(str(a_ep))
    b.bootstrap(timeout=WAIT)
    pid = a.id
    b.close()
    b.close()  # idempotent
    b.close(timeout=0.1)
    calls: dict[str, Callable[[], object]] = {
        "start_listening": lambda: b.start_listening(),
        "stop_listening": lambda: b.stop_listening(),
        "set_accept_bootstrap": lambda: b.set_accept_bootstrap(False),
        "bootstrap": lambda: b.bootstrap(timeout=1.0),
        "start_bootstrap": lambda: b.start_bootstrap(),
        "stop_bootstrap": lambda: b.stop_bootstrap(),
        "send": lambda: b.send(pid, b"x"),
        "send timeout": lambda: b.send(pid, b"x", timeout=1.0),
        "disconnect": lambda: b.disconnect(pid),
        "ban": lambda: b.ban(pid),
        "is_connected": lambda: b.is_connected(pid),
        "peers": lambda: b.peers(),
        "peer_info": lambda: b.peer_info(pid),
        "get_peer_ip_addr": lambda: b.get_peer_ip_addr(pid),
        "is_peer_hard_coded": lambda: b.is_peer_hard_coded(pid),
        "on_lost": lambda: b.on_lost(lambda peer_id: None),
    }
    for name, call in calls.items():
        with pytest.raises(crust.ServiceClosed):
            call()
            pytest.fail(f"{name}() did not raise ServiceClosed")
    assert b.id != pid  # the id stays readable
    assert "closed" in repr(b)
    ra.wait(lambda: ra.lost == [b.id], what="A's on_lost after B closed")


def test_manual_service_methods_raise_service_closed_after_close(net: Net) -> None:
    svc = net.service(dispatch="manual")
    svc.close()
    with pytest.raises(crust.ServiceClosed):
        svc.run_callbacks(timeout=0.1)
    with pytest.raises(crust.ServiceClosed):
        svc.on_message(lambda pid, data: None)


def test_context_manager_closes(net: Net) -> None:
    with crust.Service(net.config()) as svc:
        net.services.append(svc)  # teardown closes it again if the block fails: close() is idempotent
        svc.start_listening()
        assert svc.peers() == []
    with pytest.raises(crust.ServiceClosed):
        svc.peers()


def test_close_from_inside_a_callback(net: Net) -> None:
    p = net.pair()
    closed = net.event()

    @p.a.on_message
    def close_now(peer_id: crust.PeerId, data: bytes) -> None:
        p.a.close()
        closed.set()

    p.b.send(p.a.id, b"please close")
    assert closed.wait(WAIT), "close() inside a callback did not return"
    p.rb.wait(lambda: p.rb.lost == [p.a.id], what="B's on_lost after A closed")
    with pytest.raises(crust.ServiceClosed):
        p.a.peers()


# -- losing peers ----------------------------------------------------------------------


def test_disconnect_returns_true_then_false_and_both_sides_see_lost(net: Net) -> None:
    slow = dict(heartbeat_interval=20.0, inactivity_timeout=60.0)
    p = net.pair(slow, slow)
    assert p.b.disconnect(p.a.id) is True
    assert p.b.disconnect(p.a.id) is False
    took = p.ra.wait(lambda: p.ra.lost == [p.b.id], what="A's on_lost")
    assert took < 2.0
    p.rb.wait(lambda: p.rb.lost == [p.a.id], what="B's own on_lost")
    for svc, other in ((p.a, p.b), (p.b, p.a)):
        assert svc.is_connected(other.id) is False
        assert svc.peers() == []
        with pytest.raises(crust.PeerNotFound):
            svc.send(other.id, b"x")
    assert p.a.disconnect(p.b.id) is False


def test_closing_one_side_is_seen_long_before_inactivity_timeout(net: Net) -> None:
    slow = dict(heartbeat_interval=20.0, inactivity_timeout=60.0)
    p = net.pair(slow, slow)
    p.b.send(p.a.id, b"last words")
    p.b.close()
    took = p.ra.wait(lambda: p.ra.lost == [p.b.id], timeout=5.0, what="A's on_lost after B closed")
    assert took < 5.0
    # Messages sent before close() still arrive, before the loss.
    assert p.ra.data_from(p.b.id) == [b"last words"]
    assert p.a.peers() == []


def test_a_silent_peer_is_lost_after_inactivity_timeout(net: Net) -> None:
    a, ra, a_ep = net.listener(heartbeat_interval=0.1, inactivity_timeout=1.0)
    raw = RawPeer(net.raw_connect(a_ep))
    raw.bootstrap()  # A now has the raw peer as a connected peer ...
    ra.wait(lambda: len(ra.new_peers) == 1, what="A's on_new_peer for the raw peer")
    assert ra.new_peers[0].id == raw.peer_id
    raw.expect(Heartbeat)  # ... and probes it; the raw peer never answers or sends anything
    start = time.monotonic()
    ra.wait(lambda: ra.lost == [raw.peer_id], timeout=4.0, what="A losing the silent peer")
    assert time.monotonic() - start > 0.5  # not before (most of) the inactivity timeout
    wait_closed_by_peer(raw.sock, 2.0)


# -- bootstrap failures -----------------------------------------------------------------


def test_bootstrap_failure_names_each_contacts_reason(net: Net) -> None:
    # Wiring: real socket errors and a real handshake refusal become reasons.  A silent contact's
    # handshake timeout and its timing are pinned in virtual time (test_engine_network.py).
    other, _, other_ep = net.listener(network_name="some-other-network")
    refused = refused_address()
    b = net.service(hard_coded_contacts=[str(other_ep), refused])
    with pytest.raises(crust.BootstrapFailed) as info:
        b.bootstrap(timeout=WAIT)
    reasons = info.value.reasons
    assert set(reasons) == {str(other_ep), refused}, reasons
    assert reasons[str(other_ep)] == "network_mismatch"
    assert reasons[refused].startswith("connect failed"), reasons
    assert "network_mismatch" in str(info.value)
    assert isinstance(info.value, crust.CrustError)
    assert other.peers() == [] and b.peers() == []


def test_bootstrap_with_no_contacts_fails_at_once(net: Net) -> None:
    b = net.service()
    start = time.monotonic()
    with pytest.raises(crust.BootstrapFailed) as info:
        b.bootstrap(timeout=5.0)
    assert time.monotonic() - start < 1.0
    assert info.value.reasons == {}


def test_blacklisted_contacts_are_skipped(net: Net) -> None:
    a, ra, a_ep = net.listener()
    b, rb = net.client(str(a_ep))
    for blacklist in ([str(a_ep)], [a_ep], [(a_ep.host, a_ep.port)], ["127.0.0.1"]):
        with pytest.raises(crust.BootstrapFailed) as info:
            b.bootstrap(blacklist=blacklist, timeout=2.0)
        assert info.value.reasons == {str(a_ep): "blacklisted"}, blacklist
    # Another port of the same IP is not blacklisted by an ip:port entry.
    assert b.bootstrap(blacklist=[f"127.0.0.1:{a_ep.port + 1 if a_ep.port < 65535 else 1}"], timeout=WAIT) == a.id
    ra.wait(lambda: len(ra.new_peers) == 1)
    assert len(ra.new_peers) == 1  # the blacklisted runs never reached A


def test_start_bootstrap_failure_fires_on_bootstrap_failed(net: Net) -> None:
    b = net.service(hard_coded_contacts=[refused_address()])
    failed = threading.Event()

    @b.on_bootstrap_failed
    def bootstrap_failed() -> None:
        failed.set()

    b.start_bootstrap()
    assert failed.wait(WAIT), "on_bootstrap_failed was not called"
    assert b.peers() == []


def test_stop_bootstrap_ends_a_run_with_on_bootstrap_failed(net: Net) -> None:
    _, deaf = net.deaf_server()
    b = net.service(hard_coded_contacts=[deaf], handshake_timeout=30.0, bootstrap_timeout=30.0)
    rb = Recorder(b)
    b.start_bootstrap()
    b.stop_bootstrap()
    rb.wait(lambda: rb.bootstrap_failed == 1, what="on_bootstrap_failed after stop_bootstrap")


def test_contact_with_the_wrong_peer_id_is_refused(net: Net) -> None:
    a, ra, a_ep = net.listener()
    impostor_id = crust.Identity.generate().peer_id
    b = net.service(hard_coded_contacts=[crust.Contact(a_ep, peer_id=impostor_id)])
    with pytest.raises(crust.BootstrapFailed) as info:
        b.bootstrap(timeout=WAIT)
    assert info.value.reasons == {str(a_ep): "peer_id_mismatch"}
    assert a.peers() == []

    c = net.service(hard_coded_contacts=[crust.Contact(a_ep, peer_id=a.id)])
    assert c.bootstrap(timeout=WAIT) == a.id


def test_set_accept_bootstrap_false_denies(net: Net) -> None:
    a, ra, a_ep = net.listener()
    b, rb = net.client(str(a_ep))
    a.set_accept_bootstrap(False)
    with pytest.raises(crust.BootstrapFailed) as info:
        b.bootstrap(timeout=WAIT)
    assert "not_accepting" in info.value.reasons[str(a_ep)], info.value.reasons
    assert a.peers() == []
    a.set_accept_bootstrap(True)
    assert b.bootstrap(timeout=WAIT) == a.id


def test_a_node_must_be_reachable_unless_the_check_is_disabled(net: Net) -> None:
    checked = dict(disable_external_reachability_requirement=False)
    a, ra, a_ep = net.listener(**checked)
    b, rb = net.client(str(a_ep), **checked)
    with pytest.raises(crust.BootstrapFailed) as info:
        b.bootstrap(timeout=WAIT)  # B does not listen: A cannot connect back
    assert info.value.reasons == {str(a_ep): "denied: failed_external_reachability"}
    assert "start_listening()" in str(info.value) and "CrustUser.CLIENT" in str(info.value)  # what to do
    assert b.bootstrap(user=crust.CrustUser.CLIENT, timeout=WAIT) == a.id  # a Client is not checked
    ra.wait(lambda: len(ra.new_peers) == 1, what="A's on_new_peer for the Client")
    assert ra.new_peers[0].user is crust.CrustUser.CLIENT
    c, rc = net.client(str(a_ep), **checked)
    c.start_listening()
    assert c.bootstrap(timeout=WAIT) == a.id  # A dialled C back at its listener and got C's identity
    assert {p.id for p in a.peers()} == {b.id, c.id}


def test_whitelist_denies_other_ips(net: Net) -> None:
    a, ra, a_ep = net.listener(whitelisted_node_ips=["127.0.0.9"])
    b, rb = net.client(str(a_ep))
    with pytest.raises(crust.BootstrapFailed) as info:
        b.bootstrap(timeout=WAIT)
    assert "not_whitelisted" in info.value.reasons[str(a_ep)], info.value.reasons


# -- callbacks ---------------------------------------------------------------------------


def test_handlers_run_in_registration_order_and_decorators_return_them(net: Net) -> None:
    p = net.pair()
    calls: list[tuple[str, bytes]] = []

    def first(pid: crust.PeerId, data: bytes) -> None:
        calls.append(("first", data))

    assert p.a.on_message(first) is first

    @p.a.on_message
    def second(pid: crust.PeerId, data: bytes) -> None:
        calls.append(("second", data))

    @p.a.on_message
    def third(pid: crust.PeerId, data: bytes) -> None:
        calls.append(("third", data))
        p.ra.notify()  # wake p.ra.wait(), whose predicate looks at `calls`

    assert callable(second) and second.__name__ == "second"

    def anything(*args: object) -> None:
        pass

    for decorator in (p.a.on_new_peer, p.a.on_lost, p.a.on_bootstrap_failed, p.a.on_connect_failure,
                      p.a.on_misbehaviour, p.a.on_send_dropped):
        assert decorator(anything) is anything
    p.b.send(p.a.id, b"1")
    p.b.send(p.a.id, b"2")
    p.ra.wait(lambda: len(calls) == 6 and p.ra.count() == 2)
    assert calls == [("first", b"1"), ("second", b"1"), ("third", b"1"),
                     ("first", b"2"), ("second", b"2"), ("third", b"2")]


def test_a_raising_callback_is_logged_and_delivery_goes_on(net: Net, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="crust")
    p = net.pair()

    @p.a.on_message
    def broken(pid: crust.PeerId, data: bytes) -> None:
        raise RuntimeError(f"boom on {data!r}")

    after: list[bytes] = []

    @p.a.on_message
    def later(pid: crust.PeerId, data: bytes) -> None:
        after.append(data)
        p.ra.notify()  # wake p.ra.wait(), whose predicate looks at `after`
    for i in range(3):
        p.b.send(p.a.id, b"m%d" % i)
    p.ra.wait(lambda: len(after) == 3, what="handlers after the broken one")
    p.b.disconnect(p.a.id)
    p.ra.wait(lambda: p.ra.lost == [p.b.id], what="on_lost after a broken on_message")
    assert after == [b"m0", b"m1", b"m2"]
    records = [r for r in caplog.records if r.name.split(".")[0] == "crust" and r.levelno >= logging.ERROR
               and r.exc_info is not None and isinstance(r.exc_info[1], RuntimeError)]
    assert [str(r.exc_info[1]) for r in records if r.exc_info] == [f"boom on {b'm%d' % i!r}" for i in range(3)], caplog.text
    assert "broken" in records[0].getMessage()


def test_manual_dispatch_runs_callbacks_on_the_calling_thread(net: Net) -> None:
    threaded = net.service()
    with pytest.raises(RuntimeError):
        threaded.run_callbacks(0.0)  # a threaded Service delivers on its own thread
    threaded.close()
    a = net.service(dispatch="manual")
    a_ep = a.start_listening()[0]
    b = net.service(dispatch="manual", hard_coded_contacts=[str(a_ep)])
    assert not [t for t in _crust_threads() if t.name.startswith("crust-dispatch")]

    seen: list[tuple[str, object, threading.Thread]] = []
    a.on_new_peer(lambda info: seen.append(("new", info.id, threading.current_thread())))
    a.on_message(lambda pid, data: seen.append(("msg", data, threading.current_thread())))
    assert a.run_callbacks(timeout=0.0) == 0  # nothing queued: returns at once

    assert b.bootstrap(timeout=WAIT) == a.id
    b.send(a.id, b"one")
    b.send(a.id, b"two")
    deadline = time.monotonic() + WAIT
    delivered = 0
    while len(seen) < 3 and time.monotonic() < deadline:
        delivered += a.run_callbacks(timeout=0.5)  # blocks (bounded) until something is queued
    assert [(kind, what) for kind, what, _ in seen] == [("new", b.id), ("msg", b"one"), ("msg", b"two")]
    assert delivered == 3
    assert all(thread is threading.current_thread() for _, _, thread in seen)
    assert not [t for t in _crust_threads() if t.name.startswith("crust-dispatch")]


# -- flow control ---------------------------------------------------------------------------


def _stalled_pair(net: Net) -> tuple[Any, threading.Event]:
    """A pair whose A stopped reading (its callback blocks on ``hold``) and B's send queue is full."""
    chunk = 64 * KIB
    p = net.pair(dict(max_message_size=chunk, receive_backlog_limit=chunk),
                 dict(max_message_size=chunk, send_queue_limit=chunk))
    hold = net.event()
    block_on_message(p.a, hold)
    with pytest.raises(crust.SendTimeout):
        for _ in range(1024):
            p.b.send(p.a.id, bytes(64 * KIB), timeout=0.5)
    return p, hold


def test_a_slow_callback_pauses_reading_and_blocks_the_sender(net: Net) -> None:
    chunk = 64 * KIB
    receiver_cfg = dict(max_message_size=chunk, receive_backlog_limit=64 * KIB,
                        heartbeat_interval=0.1, inactivity_timeout=1.0)
    sender_cfg = dict(max_message_size=chunk, send_queue_limit=256 * KIB,
                      heartbeat_interval=0.1, inactivity_timeout=1.0)
    p = net.pair(receiver_cfg, sender_cfg)
    a, b = p.a, p.b  # a receives, b sends
    hold = net.event()
    blocked = block_on_message(a, hold)
    lost = threading.Event()
    a.on_lost(lambda pid: lost.set())
    b.on_lost(lambda pid: lost.set())

    sent = 0
    limit = 1024  # 64 MiB: far more than socket buffers + write window + queue limit
    with pytest.raises(crust.SendTimeout):
        while sent < limit:
            b.send(a.id, sent.to_bytes(4, "big") + bytes(chunk - 4), priority=1, timeout=0.5)
            sent += 1
    assert blocked.is_set()
    assert 4 <= sent < limit, sent
    # The receiver's undelivered backlog is bounded by receive_backlog_limit plus one read (256 KiB),
    # however much the sender pushed: the rest waits in kernel buffers (private state read on purpose).
    assert p.ra.count() == 1
    assert a._dispatcher.pending <= (64 * KIB + 256 * KIB) // chunk + 2, a._dispatcher.pending
    # A full priority-1 queue never blocks priority 0.
    b.send(a.id, b"priority zero", priority=0, timeout=0.5)
    # Proving an absence: a paused peer is not "inactive"; both stay connected past inactivity_timeout.
    assert not lost.wait(1.5), "a peer was lost while the receiver's callback was slow"

    hold.set()
    p.ra.wait(lambda: p.ra.count() == sent + 1, timeout=20.0, what="every queued message")
    bulk = [d for d in p.ra.data_from(b.id) if d != b"priority zero"]
    assert [int.from_bytes(d[:4], "big") for d in bulk] == list(range(sent))
    assert all(len(d) == chunk for d in bulk)
    # Flowing again: a send with a short timeout gets through.
    b.send(a.id, b"after", priority=1, timeout=2.0)
    p.ra.wait(lambda: p.ra.data_from(b.id)[-1:] == [b"after"])
    assert p.rb.dropped == []


def test_a_blocked_send_raises_peer_lost_when_the_peer_goes(net: Net) -> None:
    p, hold = _stalled_pair(net)
    outcome: list[BaseException] = []
    done = threading.Event()

    def blocked_sender() -> None:
        try:
            p.b.send(p.a.id, bytes(64 * KIB))  # no timeout: blocks until the queue has room or the peer goes
        except BaseException as exc:
            outcome.append(exc)
        done.set()

    thread = threading.Thread(target=blocked_sender)
    thread.start()
    try:
        # Proving an absence: the sender really is blocked.
        assert not done.wait(0.3)
        assert p.a.disconnect(p.b.id) is True
        assert done.wait(WAIT), "the blocked send() did not end when the peer went away"
    finally:
        hold.set()
        thread.join(WAIT)
    assert len(outcome) == 1 and isinstance(outcome[0], crust.PeerLostError), outcome


def test_droppable_messages_to_a_stalled_peer_are_dropped_and_reported(net: Net) -> None:
    chunk = 64 * KIB
    p = net.pair(dict(max_message_size=chunk, receive_backlog_limit=64 * KIB),
                 dict(max_message_size=chunk, send_queue_limit=256 * KIB))
    a, b = p.a, p.b
    hold = net.event()
    blocked = block_on_message(a, hold)
    b.send(a.id, b"\x00stall", priority=0)
    assert blocked.wait(WAIT)

    sent: dict[int, int] = {1: 0, 2: 0, 7: 0}
    limit = 1024  # 64 MiB of each droppable priority: far more than every buffer on the way

    def dropped_total() -> int:
        return sum(count for _, _, count in p.rb.dropped)

    # Droppable sends never block, so send in batches and give the drop report a moment (an
    # event-driven wait, over as soon as it comes) rather than outrunning the I/O thread.
    while sent[2] < limit:
        for _ in range(8):
            for prio in (2, 7):
                b.send(a.id, bytes([prio]) + sent[prio].to_bytes(4, "big") + bytes(chunk - 5), priority=prio)
                sent[prio] += 1
        b.send(a.id, bytes([1]) + sent[1].to_bytes(4, "big"), priority=1, timeout=5.0)  # never droppable
        sent[1] += 1
        if p.rb.poll(lambda: dropped_total() > 0, timeout=0.05):
            break
    assert dropped_total() > 0, "nothing was dropped"
    for prio in (2, 7):  # a last small one of each droppable priority: nothing newer can push it out
        b.send(a.id, bytes([prio]) + b"last", priority=prio)

    hold.set()
    p.ra.wait(lambda: any(d == bytes([2]) + b"last" for d in p.ra.data_from(b.id))
              and any(d == bytes([7]) + b"last" for d in p.ra.data_from(b.id)), timeout=20.0,
              what="the last droppable messages")
    received = [d for d in p.ra.data_from(b.id) if d != b"\x00stall"]
    by_prio: dict[int, list[int]] = {1: [], 2: [], 7: []}
    for d in received:
        if d[1:] != b"last":
            by_prio[d[0]].append(int.from_bytes(d[1:5], "big"))
    assert by_prio[1] == list(range(sent[1])), "a priority-1 message was lost"
    for prio in (2, 7):
        assert by_prio[prio] == sorted(by_prio[prio]), "droppable messages arrived out of order"
        assert len(set(by_prio[prio])) == len(by_prio[prio])
    # Drops are never silent: what did not arrive was reported, and only for droppable priorities.
    for prio in (2, 7):
        missing = sent[prio] - len(by_prio[prio])
        p.rb.wait(lambda: sum(c for _, pr, c in p.rb.dropped if pr == prio) == missing,
                  what=f"on_send_dropped reports for priority {prio}")
    assert all(pid == a.id and prio >= crust.MSG_DROP_PRIORITY and count > 0 for pid, prio, count in p.rb.dropped)
    assert b.is_connected(a.id)


# -- banning ------------------------------------------------------------------------------


def test_ban_disconnects_and_refuses_the_peer(net: Net) -> None:
    p = net.pair()
    p.a.ban(p.b.id)
    p.ra.wait(lambda: p.ra.lost == [p.b.id], what="A's on_lost after ban")
    p.rb.wait(lambda: p.rb.lost == [p.a.id], what="B's on_lost after being banned")
    with pytest.raises(crust.BootstrapFailed) as failed:
        p.b.bootstrap(timeout=WAIT)
    assert list(failed.value.reasons.values()) == ["denied: banned"]
    assert p.a.peers() == [] and len(p.ra.new_peers) == 1
    # Another peer from the same IP is still welcome.
    c, rc = net.client(str(p.a_ep))
    assert c.bootstrap(timeout=WAIT) == p.a.id


def test_ban_by_ip_refuses_every_peer_from_it(net: Net) -> None:
    p = net.pair()
    p.a.ban("127.0.0.1")
    p.rb.wait(lambda: p.rb.lost == [p.a.id], what="B's on_lost after its IP was banned")
    c, rc = net.client(str(p.a_ep))
    with pytest.raises(crust.BootstrapFailed):
        c.bootstrap(timeout=WAIT)
    assert p.a.peers() == []


# -- resources -----------------------------------------------------------------------------


def test_thread_count_does_not_grow_with_peers(net: Net) -> None:
    assert _crust_threads() == []  # the conftest guard makes this true between tests
    seed, rseed, seed_ep = net.listener()
    seed_threads = len(_crust_threads())
    clients = []
    for i in range(6):
        before = len(_crust_threads())
        client, _ = net.client(str(seed_ep))
        per_client = len(_crust_threads()) - before
        assert client.bootstrap(timeout=WAIT) == seed.id
        clients.append(client)
        rseed.wait(lambda: len(rseed.new_peers) == i + 1)
        for c in clients:
            c.send(seed.id, b"hi")
        rseed.wait(lambda: rseed.count() == (i + 1) * (i + 2) // 2)
        # Every crust thread is accounted for by a Service's own fixed set: the seed grew none.
        assert len(_crust_threads()) == seed_threads + (i + 1) * per_client, [t.name for t in _crust_threads()]
    assert len(seed.peers()) == 6
    assert seed_threads == 2  # crust-io and crust-dispatch


def test_close_leaves_no_threads_or_sockets(net: Net) -> None:
    p = net.pair()
    p.b.send(p.a.id, b"x" * 100_000)
    p.ra.wait(lambda: p.ra.count() == 1)
    p.a.close()
    p.b.close()
    assert _crust_threads() == []
    # The listener's port is free again (its socket is closed).
    with socket.socket() as probe:
        assert probe.connect_ex((p.a_ep.host, p.a_ep.port)) != 0


# -- more bootstrap shapes ---------------------------------------------------------------


def test_simultaneous_bootstrap_both_ways_leaves_one_connection(net: Net) -> None:
    port_a = int(refused_address().rsplit(":", 1)[1])
    port_b = int(refused_address().rsplit(":", 1)[1])
    a = net.service(tcp_port=port_a, hard_coded_contacts=[f"127.0.0.1:{port_b}"])
    b = net.service(tcp_port=port_b, hard_coded_contacts=[f"127.0.0.1:{port_a}"])
    ra, rb = Recorder(a), Recorder(b)
    a.start_listening()
    b.start_listening()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        from_a = pool.submit(a.bootstrap, timeout=WAIT)
        from_b = pool.submit(b.bootstrap, timeout=WAIT)
        assert from_a.result(WAIT + 1) == b.id
        assert from_b.result(WAIT + 1) == a.id
    for k in range(50):
        a.send(b.id, b"a%d" % k)
        b.send(a.id, b"b%d" % k)
    ra.wait(lambda: ra.count() == 50)
    rb.wait(lambda: rb.count() == 50)
    assert ra.data_from(b.id) == [b"b%d" % k for k in range(50)]
    assert rb.data_from(a.id) == [b"a%d" % k for k in range(50)]
    assert [i.id for i in ra.new_peers] == [b.id] and [i.id for i in rb.new_peers] == [a.id]
    assert ra.lost == [] and rb.lost == []
    assert [i.id for i in a.peers()] == [b.id] and [i.id for i in b.peers()] == [a.id]


def test_bootstrapping_again_to_a_connected_peer_keeps_one_connection(net: Net) -> None:
    p = net.pair()
    assert p.b.bootstrap(timeout=WAIT) == p.a.id
    p.b.send(p.a.id, b"after the second bootstrap")
    p.ra.wait(lambda: p.ra.count() == 1)
    assert len(p.ra.new_peers) == 1 and len(p.rb.new_peers) == 1
    assert p.ra.lost == [] and p.rb.lost == []
    assert len(p.a.peers()) == 1 and len(p.b.peers()) == 1


def test_bootstrapping_off_ourselves_fails(net: Net) -> None:
    a, ra, a_ep = net.listener()
    twin = net.service(identity=a._identity, hard_coded_contacts=[str(a_ep)])  # same Identity, so same PeerId
    with pytest.raises(crust.BootstrapFailed) as info:
        twin.bootstrap(timeout=WAIT)
    assert info.value.reasons == {str(a_ep): "self_connect"}
    assert a.peers() == []


def test_stop_and_start_listening(net: Net) -> None:
    a, ra, a_ep = net.listener()
    p_b, rb = net.client(str(a_ep))
    assert p_b.bootstrap(timeout=WAIT) == a.id
    a.stop_listening()
    a.stop_listening()  # idempotent
    c, rc = net.client(str(a_ep))
    with pytest.raises(crust.BootstrapFailed) as info:
        c.bootstrap(timeout=WAIT)
    assert info.value.reasons[str(a_ep)].startswith("connect failed"), info.value.reasons
    assert a.is_connected(p_b.id)  # existing connections stay
    (new_ep,) = a.start_listening()
    assert a.start_listening() == [new_ep]  # already listening: the same endpoints
    d, rd = net.client(str(new_ep))
    assert d.bootstrap(timeout=WAIT) == a.id


def test_close_ends_a_blocking_bootstrap_with_service_closed(net: Net) -> None:
    _, deaf = net.deaf_server()
    b = net.service(hard_coded_contacts=[deaf], handshake_timeout=30.0)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(b.bootstrap, timeout=30.0)
        # Proving an absence: the bootstrap is really waiting on the deaf contact.
        with pytest.raises(concurrent.futures.TimeoutError):
            running.result(0.3)
        b.close()
        with pytest.raises(crust.ServiceClosed):
            running.result(WAIT)


def test_close_ends_a_blocked_send_with_service_closed(net: Net) -> None:
    p, hold = _stalled_pair(net)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        blocked = pool.submit(p.b.send, p.a.id, bytes(64 * KIB))  # no timeout
        with pytest.raises(concurrent.futures.TimeoutError):  # proving an absence: it is blocked
            blocked.result(0.3)
        p.b.close(timeout=1.0)  # A is not reading: B's last bytes cannot be flushed, so do not wait 5 s for them
        with pytest.raises(crust.ServiceClosed):
            blocked.result(WAIT)
    hold.set()


def test_concurrent_senders_keep_each_threads_order(net: Net) -> None:
    p = net.pair()
    n_threads, n = 4, 300

    def sender(t: int) -> None:
        for i in range(n):
            p.b.send(p.a.id, b"%d:%d" % (t, i))

    threads = [threading.Thread(target=sender, args=(t,)) for t in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    p.ra.wait(lambda: p.ra.count() == n_threads * n)
    got: dict[int, list[int]] = {t: [] for t in range(n_threads)}
    for data in p.ra.data_from(p.b.id):
        t, i = data.split(b":")
        got[int(t)].append(int(i))
    assert all(got[t] == list(range(n)) for t in range(n_threads))


def test_close_with_a_stalled_peer_still_closes_every_socket(net: Net) -> None:
    """close() must close connections whose last bytes cannot be flushed (the peer is not reading)."""
    p, hold = _stalled_pair(net)
    start = time.monotonic()
    p.b.close(timeout=1.0)  # B's kernel buffers are full: its flush cannot finish, so close gives up on it
    assert time.monotonic() - start < 3.0
    hold.set()  # A reads again: it must find B's socket closed (FIN or reset), not open forever
    p.ra.wait(lambda: p.ra.lost == [p.b.id], what="A's on_lost after B closed")


def test_messages_queued_before_close_are_delivered(net: Net) -> None:
    p = net.pair()
    for i in range(6):
        p.b.send(p.a.id, bytes([i]) * MIB)
    p.b.close()
    p.ra.wait(lambda: p.ra.lost == [p.b.id], what="A's on_lost after B closed")
    assert [d[0] for d in p.ra.data_from(p.b.id)] == list(range(6))
