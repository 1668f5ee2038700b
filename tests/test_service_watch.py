"""remove_handler(), wait_for_peer(), stats(), and what bootstrap()/connect() guarantee about on_new_peer.

Real Services over loopback; every wait is bounded.
"""

from __future__ import annotations

import dataclasses
import struct
import threading
import time
from typing import Any, Callable

import pytest

import crust

from .livenet import WAIT, Net, RawPeer


# -- remove_handler ------------------------------------------------------------------


def test_a_removed_handler_is_not_called_again(net: Net) -> None:
    p = net.pair()
    calls: list[tuple[str, bytes]] = []

    def kept(pid: crust.PeerId, data: bytes) -> None:
        calls.append(("kept", data))

    def removed(pid: crust.PeerId, data: bytes) -> None:
        calls.append(("removed", data))

    p.a.on_message(removed)
    p.a.on_message(kept)
    p.a.on_lost(removed)  # registered twice, for two callbacks: both registrations go
    p.b.send(p.a.id, b"1")
    p.ra.wait(lambda: p.ra.count() == 1)
    assert p.a.remove_handler(removed) is True
    assert p.a.remove_handler(removed) is False
    p.b.send(p.a.id, b"2")
    p.ra.wait(lambda: p.ra.count() == 2)
    p.b.disconnect(p.a.id)
    p.ra.wait(lambda: len(p.ra.lost) == 1)
    assert calls == [("removed", b"1"), ("kept", b"1"), ("kept", b"2")]


def test_a_handler_removed_by_an_earlier_one_misses_the_event_being_delivered(net: Net) -> None:
    p = net.pair()
    calls: list[str] = []

    def victim(pid: crust.PeerId, data: bytes) -> None:
        calls.append("victim")

    @p.a.on_message
    def remover(pid: crust.PeerId, data: bytes) -> None:
        calls.append("remover")
        p.a.remove_handler(victim)

    p.a.on_message(victim)
    p.b.send(p.a.id, b"x")
    p.ra.wait(lambda: p.ra.count() == 1)
    assert calls == ["remover"]


def test_remove_handler_after_close_raises(net: Net) -> None:
    svc = net.service()
    handler = svc.on_lost(lambda pid: None)
    svc.close()
    with pytest.raises(crust.ServiceClosed):
        svc.remove_handler(handler)


# -- wait_for_peer --------------------------------------------------------------------


@pytest.mark.parametrize("dispatch", ["thread", "manual"])
def test_wait_for_peer_returns_the_peer_that_connects(net: Net, dispatch: str) -> None:
    a, _, a_ep = net.listener()
    b = net.service(dispatch=dispatch, hard_coded_contacts=[str(a_ep)])
    with pytest.raises(crust.PeerWaitTimeout):
        b.wait_for_peer(timeout=0.2)
    got: list[crust.PeerId] = []
    waiter = threading.Thread(target=lambda: got.append(a.wait_for_peer(b.id, timeout=WAIT)))
    waiter.start()
    b.start_bootstrap()  # the async form: nothing but wait_for_peer tells us it is done
    assert b.wait_for_peer(timeout=WAIT) == a.id
    assert b.wait_for_peer(a.id, timeout=WAIT) == a.id  # already connected: at once
    waiter.join(WAIT)
    assert got == [b.id]
    if dispatch == "manual":  # on_new_peer was queued before wait_for_peer returned
        seen: list[crust.PeerInfo] = []
        b.on_new_peer(seen.append)
        assert b.run_callbacks() >= 1 and [i.id for i in seen] == [a.id]


def test_wait_for_peer_rejects_bad_arguments_and_ends_on_close(net: Net) -> None:
    svc = net.service()
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            svc.wait_for_peer(timeout=bad)
    with pytest.raises(TypeError):
        svc.wait_for_peer("someone")  # type: ignore[arg-type]
    ended: list[BaseException] = []

    def wait() -> None:
        try:
            svc.wait_for_peer(timeout=WAIT)
        except BaseException as exc:
            ended.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    deadline = time.monotonic() + WAIT
    while not svc._peer_waiters and time.monotonic() < deadline:  # registered on the I/O thread
        time.sleep(0.01)
    svc.close()
    waiter.join(WAIT)
    assert len(ended) == 1 and isinstance(ended[0], crust.ServiceClosed)


# -- stats ---------------------------------------------------------------------------


def test_stats_count_what_happened(net: Net) -> None:
    p = net.pair()
    empty = p.a.stats()
    assert dataclasses.is_dataclass(empty)
    with pytest.raises(dataclasses.FrozenInstanceError):
        empty.peers = 5  # type: ignore[misc]
    for i in range(10):
        p.b.send(p.a.id, b"m%d" % i)
    p.ra.wait(lambda: p.ra.count() == 10)

    a_stats, b_stats = p.a.stats(), p.b.stats()
    assert (a_stats.peers, dict(a_stats.peers_by_transport)) == (1, {"tcp": 1})
    assert a_stats.messages_received == 10 and a_stats.message_bytes_received == 20
    assert a_stats.bytes_received > 20 and b_stats.bytes_sent > 20  # on the wire: framed and sealed
    assert (a_stats.peers_connected, b_stats.peers_connected) == (1, 1)
    assert (b_stats.bootstraps_succeeded, b_stats.bootstraps_failed) == (1, 0)

    # A client of another network is refused in the handshake; a peer that sends garbage misbehaves.
    other, _ = net.client(str(p.a_ep), network_name="elsewhere")
    with pytest.raises(crust.BootstrapFailed):
        other.bootstrap(timeout=WAIT)
    assert other.stats().bootstraps_failed == 1
    raw = RawPeer(net.raw_connect(p.a_ep))
    raw.bootstrap()
    raw.sock.sendall(struct.pack(">I", 1 << 31))  # a frame "of 2 GiB" after the grant
    p.ra.wait(lambda: len(p.ra.misbehaviour) == 1, what="the raw peer's misbehaviour")
    p.ra.wait(lambda: len(p.ra.lost) == 1)
    p.b.disconnect(p.a.id)
    p.ra.wait(lambda: len(p.ra.lost) == 2)

    final = p.a.stats()
    assert final.handshakes_refused >= 1
    assert final.misbehaviours == 1 and sum(final.misbehaviour_kinds.values()) == 1
    assert (final.peers, final.peers_connected, final.peers_lost) == (0, 2, 2)
    assert final.peers_by_transport == {} and final.bytes_sent == 0


def test_stats_count_dropped_messages(net: Net) -> None:
    p = net.pair(b_cfg=dict(send_queue_limit=64 * 1024, max_message_size=16 * 1024, drop_after=0.05))
    gate = net.event()
    p.a.on_message(lambda pid, data: gate.wait(WAIT))  # A stops reading: B's queue fills
    for _ in range(400):
        p.b.send(p.a.id, b"x" * 16 * 1024, priority=crust.MSG_DROP_PRIORITY)
    p.rb.wait(lambda: bool(p.rb.dropped), what="a SendDropped report")
    gate.set()
    p.rb.wait(lambda: p.b.stats().messages_dropped == sum(c for _, _, c in p.rb.dropped) > 0)


# -- on_new_peer is queued before bootstrap() / connect() return ----------------------


def _slow_posts(svc: crust.Service, delay: float) -> None:
    """Make the I/O thread pause before it queues each batch of events for the callbacks.

    Widens the window in which an answer given before the events were queued would
    let bootstrap() return first (the order this test forbids).
    """
    dispatcher = svc._dispatcher
    post_many: Callable[[list[Any]], None] = dispatcher.post_many

    def slow(events: list[Any]) -> None:
        if events:
            time.sleep(delay)
        post_many(events)

    dispatcher.post_many = slow  # type: ignore[method-assign]


def test_on_new_peer_is_queued_before_bootstrap_returns(net: Net) -> None:
    a, _, a_ep = net.listener()
    b = net.service(dispatch="manual", hard_coded_contacts=[str(a_ep)])
    seen: list[crust.PeerInfo] = []
    b.on_new_peer(seen.append)
    _slow_posts(b, 0.2)
    assert b.bootstrap(timeout=WAIT) == a.id
    assert b.run_callbacks(0.0) >= 1  # no wait: it must be queued already
    assert [info.id for info in seen] == [a.id]


def test_on_new_peer_is_queued_before_connect_returns(net: Net) -> None:
    a = net.service(dispatch="manual")
    b = net.service(dispatch="manual")
    for svc in (a, b):
        svc.start_listening()
    seen: dict[crust.PeerId, list[crust.PeerInfo]] = {a.id: [], b.id: []}
    for svc in (a, b):
        svc.on_new_peer(seen[svc.id].append)
        _slow_posts(svc, 0.2)
    a_info, b_info = a.prepare_connection_info(timeout=WAIT), b.prepare_connection_info(timeout=WAIT)
    result: list[crust.PeerId] = []
    other = threading.Thread(target=lambda: result.append(b.connect(b_info, a_info.to_pub(), timeout=WAIT)))
    other.start()
    assert a.connect(a_info, b_info.to_pub(), timeout=WAIT) == b.id
    assert a.run_callbacks(0.0) >= 1
    other.join(WAIT)
    assert result == [a.id]
    assert b.run_callbacks(0.0) >= 1
    assert [i.id for i in seen[a.id]] == [b.id] and [i.id for i in seen[b.id]] == [a.id]


# -- close(timeout) is a total limit --------------------------------------------------


def test_close_returns_within_its_timeout_whatever_peers_and_callbacks_do(net: Net) -> None:
    svc, rec, ep = net.listener(max_message_size=64 * 1024, send_queue_limit=256 * 1024,
                                receive_backlog_limit=256 * 1024)
    gate, stuck = net.event(), threading.Event()

    @svc.on_message
    def blocked(pid: crust.PeerId, data: bytes) -> None:
        stuck.set()
        gate.wait(WAIT)  # a callback that does not return until the test lets it

    deaf = RawPeer(net.raw_connect(ep, rcvbuf=4096))  # a peer that never reads
    deaf.bootstrap()
    rec.wait(lambda: deaf.peer_id in [info.id for info in rec.new_peers])
    with pytest.raises(crust.SendTimeout):
        for _ in range(200):  # bounded: the queue fills long before
            svc.send(deaf.peer_id, b"x" * 64 * 1024, timeout=0.5)
    talker, _ = net.client(str(ep))
    talker.bootstrap(timeout=WAIT)
    talker.send(svc.id, b"hello")
    assert stuck.wait(WAIT)

    started = time.monotonic()
    svc.close(1.0)
    took = time.monotonic() - started
    assert took < 1.5, f"close(1.0) took {took:.2f} s"

    gate.set()  # let the callback return: the dispatcher thread then ends
    dispatcher = svc._dispatcher._thread
    assert dispatcher is not None
    dispatcher.join(WAIT)
    assert not dispatcher.is_alive()
