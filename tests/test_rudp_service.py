"""crust over reliable UDP end to end: real Services, one UDP socket each, 127.0.0.1 only.

The rUDP machine itself is tested in virtual time (tests/test_rudp.py) and
under real packet loss in the namespace lab (tests/test_rudp_lab.py); these
tests prove the Service carries crust's channel over it exactly as over TCP.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
import socket
import struct
import subprocess
import sys
import threading
from typing import Any

import pytest

import crust
from crust import rudp

from .livenet import KIB, MIB, WAIT, Net, Recorder

UDP_ONLY: dict[str, Any] = dict(enable_tcp=False, enable_udp=True)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.path.join(REPO, "tests", "rudp_peer.py")


def _udp_listener(net: Net, **overrides: Any) -> tuple[crust.Service, Recorder, crust.Endpoint]:
    svc, rec, endpoint = net.listener("udp", **{**UDP_ONLY, **overrides})
    assert svc.start_listening() == [endpoint]  # that one endpoint only: no TCP listener
    return svc, rec, endpoint


def _udp_pair(net: Net, **overrides: Any) -> tuple[crust.Service, Recorder, crust.Service, Recorder]:
    a, ra, a_ep = _udp_listener(net, **overrides)
    b = net.service(hard_coded_contacts=[str(a_ep)], **{**UDP_ONLY, **overrides})
    rb = Recorder(b)
    assert b.bootstrap(timeout=WAIT) == a.id
    ra.wait(lambda: len(ra.new_peers) == 1, what="A's on_new_peer")
    rb.wait(lambda: len(rb.new_peers) == 1, what="B's on_new_peer")
    return a, ra, b, rb


def test_bootstrap_over_rudp_reports_the_udp_transport(net: Net) -> None:
    a, ra, b, rb = _udp_pair(net)
    assert rb.new_peers[0].id == a.id and ra.new_peers[0].id == b.id
    for svc, other in ((a, b), (b, a)):
        info = svc.peer_info(other.id)
        assert info.transport == "udp" and info.addr.transport == "udp"
    assert str(b.peer_info(a.id).addr).startswith("udp://127.0.0.1:")


def test_messages_arrive_whole_and_in_order_both_ways_over_rudp(net: Net) -> None:
    a, ra, b, rb = _udp_pair(net)
    sizes = [1, 100, 1199, 1200, 1201, 64 * KIB, MIB, 3]
    outgoing = [os.urandom(size) for size in sizes]
    for data in outgoing:
        b.send(a.id, data)
        a.send(b.id, data[::-1])
    ra.wait(lambda: len(ra.data_from(b.id)) == len(sizes), timeout=3 * WAIT, what="B's messages at A")
    rb.wait(lambda: len(rb.data_from(a.id)) == len(sizes), timeout=3 * WAIT, what="A's messages at B")
    assert ra.data_from(b.id) == outgoing
    assert rb.data_from(a.id) == [data[::-1] for data in outgoing]
    # Framing and AEAD tags come on top of the payload.  (bytes_sent over rUDP
    # counts what the peer acknowledged, which may still be on its way here.)
    assert a.peer_info(b.id).bytes_received > sum(sizes)
    assert b.peer_info(a.id).bytes_received > sum(sizes)


def test_disconnect_over_rudp_is_seen_by_both_sides(net: Net) -> None:
    a, ra, b, rb = _udp_pair(net)
    b.disconnect(a.id)
    ra.wait(lambda: ra.lost == [b.id], what="A's on_lost")
    rb.wait(lambda: rb.lost == [a.id], what="B's on_lost")
    assert a.peers() == [] and b.peers() == []


def test_closing_a_service_frees_its_udp_port(net: Net) -> None:
    a, ra, b, rb = _udp_pair(net)
    port = a.start_listening()[0].port
    a.close()
    rb.wait(lambda: rb.lost == [a.id], what="B's on_lost after A closed")
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind(("127.0.0.1", port))  # raises if A still held the port
    finally:
        probe.close()


def test_a_service_with_both_transports_announces_tcp_first_and_is_reached_over_either(net: Net) -> None:
    a = net.service(enable_udp=True)
    ra = Recorder(a)
    endpoints = a.start_listening()
    assert [ep.transport for ep in endpoints] == ["tcp", "udp"]
    for endpoint in endpoints:
        client = net.service(hard_coded_contacts=[str(endpoint)], enable_udp=True)
        assert client.bootstrap(timeout=WAIT) == a.id
        assert client.peer_info(a.id).transport == endpoint.transport
        client.close()
    ra.wait(lambda: len(ra.new_peers) == 2, what="both clients at A")


def test_a_udp_contact_with_udp_disabled_fails_with_a_reason(net: Net) -> None:
    a, ra, a_ep = _udp_listener(net)
    b = net.service(hard_coded_contacts=[str(a_ep)], enable_udp=False)
    with pytest.raises(crust.BootstrapFailed) as failed:
        b.bootstrap(timeout=WAIT)
    assert failed.value.reasons == {str(a_ep): "connect failed: UDP is disabled (enable_udp=False)"}
    assert ra.new_peers == []


def test_another_network_over_rudp_is_refused(net: Net) -> None:
    a, ra, a_ep = _udp_listener(net, network_name="one")
    b = net.service(hard_coded_contacts=[str(a_ep)], network_name="two", **UDP_ONLY)
    with pytest.raises(crust.BootstrapFailed) as failed:
        b.bootstrap(timeout=WAIT)
    assert failed.value.reasons == {str(a_ep): "network_mismatch"}
    assert ra.new_peers == []


def test_a_silent_udp_contact_times_out(net: Net) -> None:
    silent = net.track(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    silent.bind(("127.0.0.1", 0))
    contact = f"udp://127.0.0.1:{silent.getsockname()[1]}"
    b = net.service(hard_coded_contacts=[contact], handshake_timeout=0.5, **UDP_ONLY)
    with pytest.raises(crust.BootstrapFailed) as failed:
        b.bootstrap(timeout=WAIT)
    assert "timed out" in failed.value.reasons[contact]
    silent.settimeout(0)
    assert silent.recv(2048)  # the SYNs did reach it


def test_garbage_and_spoofed_datagrams_do_not_disturb_a_rudp_peer(net: Net) -> None:
    a, ra, b, rb = _udp_pair(net)
    a_port = a.start_listening()[0].port
    attacker = net.track(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    attacker.bind(("127.0.0.2", 0))
    garbage = [os.urandom(n) for n in (0, 1, 5, 13, 40, 1300)]

    def forged(flags: int, dst: int) -> bytes:  # a well-formed rUDP header (crust/rudp/packet.py)
        return struct.pack(">BBIIIIIB", rudp.MAGIC, flags, dst, 1 + int.from_bytes(os.urandom(3), "big"),
                           int.from_bytes(os.urandom(4), "big"), 0, 65535, 0) + os.urandom(16)

    syn, ack, rst = 0x01, 0x02, 0x08
    for _round in range(50):
        guessed = int.from_bytes(os.urandom(4), "big") | 1
        for datagram in [*garbage, forged(syn, 0)[:23], forged(ack, guessed), forged(rst, guessed)]:
            attacker.sendto(datagram, ("127.0.0.1", a_port))
    for i in range(50):
        b.send(a.id, i.to_bytes(4, "big") * 100)
    ra.wait(lambda: len(ra.data_from(b.id)) == 50, what="B's messages at A despite the noise")
    assert [int.from_bytes(m[:4], "big") for m in ra.data_from(b.id)] == list(range(50))
    assert [info.id for info in a.peers()] == [b.id] and ra.lost == [] and rb.lost == []


def test_a_udp_only_node_passes_the_reachability_check_over_its_own_socket(net: Net) -> None:
    # The dial-back comes from A's rUDP socket to the very socket B bootstraps from:
    # a second connection between the same two sockets, told apart by connection ids.
    a, ra, a_ep = _udp_listener(net, disable_external_reachability_requirement=False)
    b = net.service(hard_coded_contacts=[str(a_ep)], **UDP_ONLY)
    b_endpoints = b.start_listening()
    assert b.bootstrap(timeout=WAIT) == a.id
    ra.wait(lambda: len(ra.new_peers) == 1, what="A's on_new_peer")
    assert ra.new_peers[0].id == b.id and b_endpoints[0].transport == "udp"


def test_a_udp_only_node_that_does_not_listen_is_denied_by_the_reachability_check(net: Net) -> None:
    a, ra, a_ep = _udp_listener(net, disable_external_reachability_requirement=False)
    b = net.service(hard_coded_contacts=[str(a_ep)], **UDP_ONLY)
    with pytest.raises(crust.BootstrapFailed) as failed:
        b.bootstrap(timeout=WAIT)
    assert failed.value.reasons == {str(a_ep): "denied: failed_external_reachability"}


def test_connect_over_rudp_when_both_sides_dial_at_once(net: Net) -> None:
    # Both sides dial each other's rUDP endpoint from their one UDP socket at the
    # same moment: the two dials must stay two connections (each with one
    # initiator), and the connect exchange keeps exactly one of them.
    a, ra, _ = _udp_listener(net)
    b, rb, _ = _udp_listener(net)
    a_info, b_info = a.prepare_connection_info(), b.prepare_connection_info()
    with ThreadPoolExecutor(2) as pool:
        at_a = pool.submit(a.connect, a_info, b_info.to_pub(), WAIT)
        at_b = pool.submit(b.connect, b_info, a_info.to_pub(), WAIT)
        assert (at_a.result(WAIT + 5), at_b.result(WAIT + 5)) == (b.id, a.id)
    for rec, other in ((ra, b), (rb, a)):
        rec.wait(lambda: len(rec.new_peers) == 1, what="on_new_peer")
        assert [(p.id, p.origin, p.transport) for p in rec.new_peers] == [(other.id, "connect", "udp")]
    a.send(b.id, b"over rudp")
    rb.wait(lambda: rb.data_from(a.id) == [b"over rudp"], what="A's message at B")


def test_a_slow_callback_over_rudp_closes_the_window_and_blocks_the_sender(net: Net) -> None:
    # Over rUDP the receive backlog pauses the stream, whose receive window then
    # shrinks to nothing: the sender's queue fills and send() times out, memory stays
    # bounded, and nobody is declared lost; released, every message arrives in order.
    chunk = 64 * KIB
    fast = dict(heartbeat_interval=0.1, inactivity_timeout=1.0, max_message_size=chunk)
    a, _, a_ep = _udp_listener(net, **fast)
    b = net.service(hard_coded_contacts=[str(a_ep)], send_queue_limit=256 * KIB, **{**UDP_ONLY, **fast})
    assert b.bootstrap(timeout=WAIT) == a.id
    hold = net.event()
    arrived = threading.Condition()
    got: list[bytes] = []
    lost = net.event()
    a.on_lost(lambda pid: lost.set())
    b.on_lost(lambda pid: lost.set())

    @a.on_message
    def slow(pid: crust.PeerId, data: bytes) -> None:
        with arrived:
            got.append(data)
            arrived.notify_all()
        assert hold.wait(30.0), "test never released the slow callback"

    sent = 0
    limit = 1024  # 64 MiB: far more than the window, the backlog and the queue together
    with pytest.raises(crust.SendTimeout):
        while sent < limit:
            b.send(a.id, sent.to_bytes(4, "big") + bytes(chunk - 4), priority=1, timeout=0.5)
            sent += 1
    assert 4 <= sent < limit, sent
    # Undelivered at the receiver: at most its backlog limit plus one rUDP window
    # (256 KiB) and a delivery batch, whatever the sender pushed (private state read on purpose).
    assert a._dispatcher.pending * chunk <= a._config.receive_backlog_limit + 256 * KIB + 2 * chunk
    # Proving an absence: a paused rUDP peer still answers keep-alives and heartbeats.
    assert not lost.wait(1.5), "a peer was lost while the receiver's callback was slow"
    hold.set()
    with arrived:
        assert arrived.wait_for(lambda: len(got) >= sent, 4 * WAIT), f"{len(got)} of {sent} arrived"
    assert [int.from_bytes(d[:4], "big") for d in got] == list(range(sent))


def test_a_rudp_peer_that_crashes_is_lost_after_the_inactivity_timeout(net: Net) -> None:
    # A real crash: the peer's process is killed, so no Goodbye, FIN or reset is sent.
    peer = subprocess.Popen([sys.executable, PEER, "--listen", "127.0.0.1", "--lifetime", "30"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": REPO})
    try:
        assert peer.stdout is not None
        line = peer.stdout.readline()  # bounded: the peer prints this within its start-up or exits
        endpoint = json.loads(line)["endpoint"]
        a = net.service(hard_coded_contacts=[endpoint], heartbeat_interval=0.1, inactivity_timeout=1.0,
                        **UDP_ONLY)
        ra = Recorder(a)
        other = a.bootstrap(timeout=WAIT)
        peer.kill()
        peer.wait(WAIT)
        ra.wait(lambda: ra.lost == [other], what="on_lost for the crashed peer")
        assert a.peers() == []
    finally:
        if peer.poll() is None:
            peer.kill()
            peer.wait(WAIT)
        for stream in (peer.stdin, peer.stdout):
            if stream is not None:
                stream.close()


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_rudp_over_ipv6_loopback(net: Net) -> None:
    a = net.service(listen_host="::1", **UDP_ONLY)
    ra = Recorder(a)
    (endpoint,) = a.start_listening()
    assert str(endpoint).startswith("udp://[::1]:")
    b = net.service(listen_host="::1", hard_coded_contacts=[str(endpoint)], **UDP_ONLY)
    assert b.bootstrap(timeout=WAIT) == a.id
    b.send(a.id, b"over rUDP on ::1")
    ra.wait(lambda: ra.data_from(b.id) == [b"over rUDP on ::1"], what="B's message at A")
    assert b.peer_info(a.id).addr == endpoint
