"""Hostile peers against a listening Service: garbage, floods of idle sockets, stalls, oversize frames.

Each test attacks Service A over raw sockets on 127.0.0.1 and then checks
that A is unharmed: the attacking socket was closed by A in bounded time,
A's per-connection state returned to nothing (read from the private
``A._engine`` on the I/O thread, deliberately: that is the memory these
attacks try to grow), and an honest Service still bootstraps off A and
exchanges messages with it.  How the engine's handshake deadline treats a
slow drip of bytes or a secured connection that never says why it came is
pinned in virtual time (test_engine_network.py); here one real stall checks
that the deadline closes a real socket.
"""

from __future__ import annotations

import os
import struct

import pytest

import crust
from crust.handshake.secure import MAGIC, PREAMBLE
from crust.wire.messages import BootstrapRequest, Data, Heartbeat

from .livenet import KIB, WAIT, Net, RawPeer, Recorder, still_open, wait_closed_by_peer

HANDSHAKE_TIMEOUT = 2.0
PER_IP = 4




@pytest.fixture
def target(net: Net) -> tuple[crust.Service, Recorder, crust.Endpoint]:
    """Service A under attack; it echoes every message so honest peers can check it still works."""
    a, ra, a_ep = net.listener(handshake_timeout=HANDSHAKE_TIMEOUT, max_pending_handshakes_per_ip=PER_IP,
                               max_pending_handshakes=16)
    a.on_message(lambda pid, data: a.send(pid, b"echo:" + data))
    return a, ra, a_ep


def _conn_count(svc: crust.Service) -> int:
    """Connections A's engine still keeps (private state, read on the I/O thread on purpose)."""
    return svc._call(lambda: svc._engine.connection_count())


def _pending_count(svc: crust.Service) -> int:
    return svc._call(lambda: svc._engine.pending_handshakes())


def _honest_peer_still_works(net: Net, a: crust.Service, ra: Recorder, a_ep: crust.Endpoint) -> None:
    """A fresh honest Service bootstraps off A and gets an echo back."""
    b, rb = net.client(str(a_ep))
    assert b.bootstrap(timeout=WAIT) == a.id
    b.send(a.id, b"are you well?")
    rb.wait(lambda: rb.data_from(a.id) == [b"echo:are you well?"], what="A's echo to the honest peer")
    assert a.is_connected(b.id)


GARBAGE = {
    "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    "zeros": b"\x00" * 64,
    "random": os.urandom(4096),
    "tls_client_hello": bytes.fromhex("160301020001") + os.urandom(512),
    "wrong_version": MAGIC + struct.pack(">H", 999),
    "preamble_then_2pow31_length": PREAMBLE + struct.pack(">I", 1 << 31),
    "preamble_then_oversize_hello": PREAMBLE + struct.pack(">BH", 1, 0xFFFF) + b"\x00" * 100,
    "preamble_then_unknown_type": PREAMBLE + struct.pack(">BH", 77, 4) + b"abcd",
    "preamble_then_short_hello": PREAMBLE + struct.pack(">BH", 1, 5) + b"short",
    "preamble_then_noise_before_hello": PREAMBLE + struct.pack(">BH", 3, 48) + os.urandom(48),
}


@pytest.mark.parametrize("payload", list(GARBAGE.values()), ids=list(GARBAGE))
def test_garbage_is_refused_at_once(net: Net, target: tuple[crust.Service, Recorder, crust.Endpoint],
                                    payload: bytes) -> None:
    a, ra, a_ep = target
    sock = net.raw_connect(a_ep)
    sock.sendall(payload)
    # Refused on sight, not after the handshake timeout.
    took = wait_closed_by_peer(sock, HANDSHAKE_TIMEOUT + 1.0)
    assert took < HANDSHAKE_TIMEOUT * 0.75, took
    assert _conn_count(a) == 0
    assert ra.new_peers == [] and ra.misbehaviour == []
    _honest_peer_still_works(net, a, ra, a_ep)


def test_garbage_on_many_sockets_at_once(net: Net, target: tuple[crust.Service, Recorder, crust.Endpoint]) -> None:
    a, ra, a_ep = target
    socks = [net.raw_connect(a_ep) for _ in range(40)]
    for i, sock in enumerate(socks):
        sock.sendall(list(GARBAGE.values())[i % len(GARBAGE)])
    for sock in socks:
        wait_closed_by_peer(sock, HANDSHAKE_TIMEOUT + 1.0)
    assert _conn_count(a) == 0
    _honest_peer_still_works(net, a, ra, a_ep)


def test_preamble_then_stall_is_closed_after_handshake_timeout(
        net: Net, target: tuple[crust.Service, Recorder, crust.Endpoint]) -> None:
    a, ra, a_ep = target
    sock = net.raw_connect(a_ep)
    sock.sendall(PREAMBLE)
    took = wait_closed_by_peer(sock, HANDSHAKE_TIMEOUT + 2.0)
    assert HANDSHAKE_TIMEOUT - 0.5 < took < HANDSHAKE_TIMEOUT + 1.5, took
    assert _conn_count(a) == 0
    _honest_peer_still_works(net, a, ra, a_ep)


def test_idle_connections_over_the_per_ip_cap_drop_the_oldest(
        net: Net, target: tuple[crust.Service, Recorder, crust.Endpoint]) -> None:
    a, ra, a_ep = target
    idle = []
    for _ in range(PER_IP + 2):
        sock = net.raw_connect(a_ep)
        # A answers every accepted connection with its preamble: reading it proves the accept (and its order).
        got = b""
        while len(got) < len(PREAMBLE):
            chunk = sock.recv(len(PREAMBLE) - len(got))
            assert chunk, "A closed a fresh connection"
            got += chunk
        assert got == PREAMBLE
        idle.append(sock)
    # The two oldest made room for the two newest, at once.
    for sock in idle[:2]:
        assert wait_closed_by_peer(sock, 1.0) < 1.0
    # Proving an absence: the newer ones are still pending (well inside the handshake timeout).
    assert still_open(idle[2], 0.2)
    assert _pending_count(a) == PER_IP
    # An honest peer from the very same IP still gets in (evicting the oldest idle one).
    _honest_peer_still_works(net, a, ra, a_ep)
    # And every idle connection ends by the handshake timeout; nothing is left behind.
    for sock in idle[2:]:
        wait_closed_by_peer(sock, HANDSHAKE_TIMEOUT + 1.5)
    assert _pending_count(a) == 0
    assert _conn_count(a) == 1  # the honest peer


def test_an_idle_flood_from_another_ip_does_not_lock_out_an_honest_peer(
        net: Net, target: tuple[crust.Service, Recorder, crust.Endpoint]) -> None:
    a, ra, a_ep = target
    flood = [net.raw_connect(a_ep, source_ip="127.0.0.2") for _ in range(30)]
    # The per-IP cap holds the flood's footprint at PER_IP pending handshakes: the older ones are
    # dropped as the newer ones are accepted, long before the handshake timeout.
    for sock in flood[:-PER_IP]:
        assert wait_closed_by_peer(sock, 1.0) < 1.0
    assert _pending_count(a) <= PER_IP
    _honest_peer_still_works(net, a, ra, a_ep)


def test_an_idle_flood_from_many_ips_is_capped_in_total(
        net: Net, target: tuple[crust.Service, Recorder, crust.Endpoint]) -> None:
    a, ra, a_ep = target  # max_pending_handshakes=16
    flood = [net.raw_connect(a_ep, source_ip=f"127.0.1.{i}") for i in range(1, 25)]
    for sock in flood:  # wait for every accept: A greets each accepted connection with its preamble
        got = b""
        while len(got) < len(PREAMBLE):
            chunk = sock.recv(len(PREAMBLE) - len(got))
            if not chunk:
                break  # already evicted
            got += chunk
    for sock in flood[:-16]:
        assert wait_closed_by_peer(sock, 1.0) < 1.0
    assert _pending_count(a) == 16
    _honest_peer_still_works(net, a, ra, a_ep)
    assert _pending_count(a) == 15  # the honest peer evicted the oldest idle one, then finished


def test_frame_length_of_2_pow_31_after_the_handshake_is_misbehaviour(
        net: Net, target: tuple[crust.Service, Recorder, crust.Endpoint]) -> None:
    a, ra, a_ep = target
    raw = RawPeer(net.raw_connect(a_ep))
    raw.bootstrap()
    ra.wait(lambda: [p.id for p in ra.new_peers] == [raw.peer_id], what="A's on_new_peer for the raw peer")
    raw.sock.sendall(struct.pack(">I", 1 << 31))  # a frame "of 2 GiB"; A must not try to buffer it
    wait_closed_by_peer(raw.sock, WAIT)
    ra.wait(lambda: ra.lost == [raw.peer_id], what="A's on_lost for the hostile peer")
    ra.wait(lambda: len(ra.misbehaviour) == 1, what="A's on_misbehaviour")
    assert ra.misbehaviour[0][0] == raw.peer_id
    assert _conn_count(a) == 0
    _honest_peer_still_works(net, a, ra, a_ep)


POST_HANDSHAKE_GARBAGE = {
    "bad_mac": struct.pack(">I", 100) + os.urandom(100),
    "truncated_then_eof": struct.pack(">I", 1000) + os.urandom(10),
}


@pytest.mark.parametrize("payload", list(POST_HANDSHAKE_GARBAGE.values()), ids=list(POST_HANDSHAKE_GARBAGE))
def test_garbage_frames_after_the_handshake(net: Net, target: tuple[crust.Service, Recorder, crust.Endpoint],
                                            payload: bytes) -> None:
    a, ra, a_ep = target
    raw = RawPeer(net.raw_connect(a_ep))
    raw.bootstrap()
    ra.wait(lambda: len(ra.new_peers) == 1)
    raw.sock.sendall(payload)
    if payload.startswith(struct.pack(">I", 1000)):
        raw.sock.shutdown(1)  # half a frame and then EOF: the peer is simply gone
    else:
        ra.wait(lambda: len(ra.misbehaviour) == 1, what="A's on_misbehaviour")
    wait_closed_by_peer(raw.sock, WAIT)
    ra.wait(lambda: ra.lost == [raw.peer_id], what="A's on_lost")
    assert _conn_count(a) == 0
    _honest_peer_still_works(net, a, ra, a_ep)


def test_protocol_violations_inside_the_channel_are_refused(
        net: Net, target: tuple[crust.Service, Recorder, crust.Endpoint]) -> None:
    a, ra, a_ep = target
    # Data before any bootstrap grant: not a peer yet, so the connection is just dropped.
    raw = RawPeer(net.raw_connect(a_ep))
    raw.secure()
    raw.send(Data(0, b"sneaky"))
    wait_closed_by_peer(raw.sock, WAIT)
    # A second BootstrapRequest on an established link: misbehaviour.
    raw2 = RawPeer(net.raw_connect(a_ep))
    raw2.bootstrap()
    ra.wait(lambda: len(ra.new_peers) == 1)
    raw2.send(BootstrapRequest(crust.CrustUser.NODE, ()))
    wait_closed_by_peer(raw2.sock, WAIT)
    ra.wait(lambda: ra.lost == [raw2.peer_id] and len(ra.misbehaviour) == 1, what="A dropping the violator")
    assert ra.messages == []
    assert _conn_count(a) == 0
    _honest_peer_still_works(net, a, ra, a_ep)


def test_an_oversize_message_in_chunks_is_misbehaviour(
        net: Net, target: tuple[crust.Service, Recorder, crust.Endpoint]) -> None:
    a, ra, a_ep = target
    raw = RawPeer(net.raw_connect(a_ep))
    raw.bootstrap()
    ra.wait(lambda: len(ra.new_peers) == 1)
    # Unfinished chunks of one priority-3 message, past max_message_size (2 MiB), 60 KiB a frame.
    chunk = b"\x00" * (60 * KIB)
    try:
        for _ in range(40):
            raw.send(Data(3, chunk, last=False))
    except (BrokenPipeError, ConnectionResetError):
        pass  # A dropped us mid-way: that is the point
    wait_closed_by_peer(raw.sock, WAIT)
    ra.wait(lambda: ra.lost == [raw.peer_id] and len(ra.misbehaviour) == 1, what="A dropping the peer")
    assert ra.messages == []
    _honest_peer_still_works(net, a, ra, a_ep)


def test_a_raw_peer_that_answers_heartbeats_stays_connected(
        net: Net, target: tuple[crust.Service, Recorder, crust.Endpoint]) -> None:
    """Control for the hostile tests: a hand-driven peer that follows the protocol is served normally."""
    a, ra, a_ep = target
    raw = RawPeer(net.raw_connect(a_ep))
    raw.bootstrap()
    ra.wait(lambda: len(ra.new_peers) == 1)
    beat = raw.expect(Heartbeat)
    raw.send(Heartbeat(beat.seq, echo=True), Data(0, b"hi"))
    echo = raw.expect(Data)
    assert echo.chunk == b"echo:hi"
    assert a.peer_info(raw.peer_id).rtt is not None
