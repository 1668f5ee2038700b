"""Floods from one hostile peer: what it can make a node spend stays bounded (docs/security.md).

One test per defect of issue 17's red-team run.  Each attacks a listening
Service A over real sockets with :class:`~tests.livenet.RawPeer` (crust's
own sans-IO classes speaking the protocol by hand, with a throwaway key)
and measures the bound it asserts: the process's resident memory, A's own
byte counters, the bytes A sends back, and the round trip of an honest
peer B to A while the attack runs.

The attack bytes are sealed *before* the clock starts and sent with
``sendall`` (which releases the GIL), so the attacker's own Python work
does not slow A or B down in these measurements.
"""

from __future__ import annotations

import gc
import math
import os
import socket
import threading
import time
from typing import Callable

import pytest

import crust
from crust.channel import MAX_FRAME_PLAINTEXT, data_record_header
from crust.engine.peers import WRITE_WINDOW
from crust.wire.messages import EchoAddrReq, Heartbeat, encode_record

from .livenet import KIB, MIB, WAIT, Net, RawPeer, Recorder, wait_closed_by_peer

HANDSHAKE_TIMEOUT = 5.0  # long enough that a flood before the grant is not cut short by it
RTT_BOUND = 1.0  # seconds: B's worst round trip to A during an attack (about 2 ms when idle)
SMALL_RCVBUF = 4 * KIB  # an attacker that stops reading lets the kernel hold only this much


def rss() -> int:
    """This process's resident memory in bytes (A, B and the attacker all live in it)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def baseline_rss() -> int:
    gc.collect()
    return rss()


class Pinger:
    """B pings A (which echoes) every ``every`` seconds on a thread; ``worst`` is the longest round trip."""

    def __init__(self, b: crust.Service, rb: Recorder, a_id: crust.PeerId, every: float = 0.02) -> None:
        self._b, self._rb, self._a_id, self._every = b, rb, a_id, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-pinger", daemon=True)
        self.rtts: list[float] = []

    def __enter__(self) -> Pinger:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(WAIT + 1.0)

    @property
    def worst(self) -> float:
        return max(self.rtts, default=0.0)

    def _run(self) -> None:
        for i in range(10_000):  # bounded: __exit__ stops it long before
            if self._stop.is_set():
                return
            want = b"echo:ping%d" % i
            start = time.monotonic()
            self._b.send(self._a_id, b"ping%d" % i)
            ok = self._rb.poll(lambda: want in self._rb.data_from(self._a_id), WAIT)
            self.rtts.append(time.monotonic() - start if ok else math.inf)
            self._stop.wait(self._every)


class Arena:
    """Service A under attack (echoing B's pings) and the honest Service B connected to it."""

    def __init__(self, net: Net, **a_config: object) -> None:
        self.net = net
        self.a, self.ra, self.a_ep = net.listener(keep_messages=False, handshake_timeout=HANDSHAKE_TIMEOUT,
                                                  **a_config)
        self.b, self.rb = net.client(str(self.a_ep))
        b_id = self.b.id
        self.a.on_message(lambda pid, data: self.a.send(pid, b"echo:" + data) if pid == b_id else None)
        assert self.b.bootstrap(timeout=WAIT) == self.a.id
        self.ra.wait(lambda: len(self.ra.new_peers) == 1, what="A's on_new_peer for B")

    def attacker(self, *, granted: bool, rcvbuf: int | None = None) -> RawPeer:
        """A raw peer with a fresh key: secured, and bootstrapped as a Client when ``granted``."""
        raw = RawPeer(self.net.raw_connect(self.a_ep, rcvbuf=rcvbuf))
        if granted:
            raw.bootstrap(crust.CrustUser.CLIENT)
            self.ra.wait(lambda: any(p.id == raw.peer_id for p in self.ra.new_peers), what="A granting the attacker")
        else:
            raw.secure()
        return raw

    def pinger(self) -> Pinger:
        return Pinger(self.b, self.rb, self.a.id)

    def bytes_from(self, peer_id: crust.PeerId) -> int | None:
        """What A's engine counted in from ``peer_id`` (None once it is no peer of A's)."""
        try:
            return self.a.peer_info(peer_id).bytes_received
        except crust.PeerNotFound:
            return None

    def settled_bytes_from(self, peer_id: crust.PeerId, quiet: float = 0.5) -> int | None:
        """``bytes_from`` once it stopped growing for ``quiet`` seconds (proving an absence: waits it out)."""
        last, since = self.bytes_from(peer_id), time.monotonic()
        deadline = since + 4 * WAIT
        while time.monotonic() < deadline:
            threading.Event().wait(0.05)
            now = self.bytes_from(peer_id)
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return now
        raise AssertionError("A kept reading the attacker for 40 s")


@pytest.fixture
def arena(net: Net) -> Arena:
    return Arena(net)


def frames(raw: RawPeer, plaintext: bytes, count: int) -> bytes:
    """``count`` sealed frames, each holding ``plaintext`` (records), for one ``sendall``."""
    assert raw.channel is not None
    return b"".join(raw.channel.seal([plaintext]) for _ in range(count))


def send_until_refused(sock: socket.socket, data: bytes, timeout: float = 4 * WAIT) -> bool:
    """Send ``data``; False if the peer closed on us (or stopped reading for ``timeout`` s) first."""
    sock.settimeout(timeout)
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        return False
    return True


def bytes_until_closed(sock: socket.socket, timeout: float) -> int:
    """Read until the peer closes; the byte count (fails the test if it stays open ``timeout`` s)."""
    got, deadline = 0, time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"A did not close the attacker within {timeout} s"
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(1 << 20)
        except (ConnectionResetError, BrokenPipeError):
            return got
        except socket.timeout:
            continue
        if not chunk:
            return got
        got += len(chunk)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 4 * WAIT) -> None:
    """Poll ``condition()`` (bounded) until it holds: for state no callback announces."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        threading.Event().wait(0.05)


def flood_reports(rec: Recorder, peer_id: crust.PeerId) -> list[str]:
    return [why for pid, why in rec.misbehaviour if pid == peer_id and why.startswith("flood")]


# -- defect 1: EchoAddrReq answered one frame each, outside the write window --------------

@pytest.mark.parametrize("granted", [False, True], ids=["before_the_grant", "from_a_peer"])
def test_echo_addr_requests_cost_a_bounded_answer(arena: Arena, granted: bool) -> None:
    raw = arena.attacker(granted=granted)
    requests = encode_record(EchoAddrReq()) * 800  # 4000 bytes: a frame small enough for a pre-grant link
    attack = frames(raw, requests, 250)  # 200 000 requests, 1 MB
    with arena.pinger() as pinger:
        send_until_refused(raw.sock, attack)
        back = bytes_until_closed(raw.sock, HANDSHAKE_TIMEOUT + WAIT)
    print(f"EchoAddrReq flood ({'granted' if granted else 'pre-grant'}): {len(attack)} bytes in, "
          f"{back} bytes back, B's worst round trip {pinger.worst:.3f} s")
    # One answer before the grant (an observer connection asks once); a peer's answers are
    # coalesced and rate-limited, then it is dropped.  Today: one sealed frame per request.
    assert back <= (200 if not granted else 2 * KIB), back
    assert pinger.worst < RTT_BOUND, pinger.rtts
    if granted:
        arena.ra.wait(lambda: raw.peer_id in arena.ra.lost, what="A dropping the flooding peer")
        assert len(flood_reports(arena.ra, raw.peer_id)) == 1, arena.ra.misbehaviour
    else:
        assert arena.ra.misbehaviour == []  # not a peer yet: nothing to report, the link just closes
    assert arena.a.is_connected(arena.b.id)


# -- defect 2: unfinished messages are not counted ---------------------------------------

def test_unfinished_messages_on_many_priorities_are_bounded(arena: Arena) -> None:
    raw = arena.attacker(granted=True)
    chunk = MAX_FRAME_PLAINTEXT - 256 - 7  # bytes of message per frame
    body = b"\x00" * chunk
    per_priority = 16  # 1 MiB unfinished on each priority
    attack = b"".join(frames(raw, data_record_header(p, chunk, False) + body, per_priority) for p in range(48))
    before = baseline_rss()
    sent = send_until_refused(raw.sock, attack)
    wait_for(lambda: raw.peer_id in arena.ra.lost or (arena.bytes_from(raw.peer_id) or 0) >= len(attack),
             "A to drop the attacker or read all of it")
    grown = rss() - before
    print(f"unfinished messages: {len(attack) / MIB:.0f} MiB offered (all sent: {sent}), RSS +{grown / MIB:.1f} MiB")
    assert grown < 16 * MIB, f"A's process grew by {grown / MIB:.1f} MiB"
    arena.ra.wait(lambda: raw.peer_id in arena.ra.lost, what="A dropping the attacker")
    assert len(flood_reports(arena.ra, raw.peer_id)) == 1, arena.ra.misbehaviour
    assert arena.a.is_connected(arena.b.id)


def test_an_unfinished_message_before_the_grant_closes_the_link(arena: Arena) -> None:
    raw = arena.attacker(granted=False)
    raw.sock.sendall(frames(raw, data_record_header(0, 1000, False) + b"\x00" * 1000, 1))
    took = wait_closed_by_peer(raw.sock, HANDSHAKE_TIMEOUT + 1.0)
    # Today it is held until the handshake timeout; a link not granted may hold no message at all.
    assert took < HANDSHAKE_TIMEOUT / 2, took


def test_honest_max_size_messages_on_many_priorities_interleave_and_arrive(net: Net) -> None:
    """The sender keeps within the receiver's unfinished-message bound, so honest bulk is never a flood."""
    pair = net.pair()
    size = pair.a._config.max_message_size
    messages = {p: bytes([p]) * size for p in range(8)}
    senders = [threading.Thread(target=pair.b.send, args=(pair.a.id, messages[p], p), name=f"test-send-{p}")
               for p in reversed(range(8))]  # the least urgent first: each newcomer overtakes the others
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join(WAIT)
    pair.ra.wait(lambda: pair.ra.count() == len(messages), what="every big message at A")
    assert sorted(pair.ra.data_from(pair.b.id)) == sorted(messages.values())
    assert pair.ra.misbehaviour == [] and pair.a.is_connected(pair.b.id)


# -- defect 3: queue limits counted payload bytes only ------------------------------------

def test_tiny_messages_fill_the_receive_backlog_and_reading_pauses(net: Net) -> None:
    arena = Arena(net, max_message_size=64 * KIB, receive_backlog_limit=1 * MIB)
    raw = arena.attacker(granted=True)
    release = net.event()
    arena.a.on_message(lambda pid, data: release.wait(4 * WAIT) if pid == raw.peer_id else None)
    empty = data_record_header(0, 0, True)
    attack = frames(raw, empty * ((MAX_FRAME_PLAINTEXT - 256) // len(empty)), 80)  # 750 000 empty messages
    before = baseline_rss()
    sent = send_until_refused(raw.sock, attack, timeout=1.0)  # A stops reading: the send stalls
    taken = arena.settled_bytes_from(raw.peer_id)
    grown = rss() - before
    print(f"empty messages: {len(attack)} bytes offered (all sent: {sent}), A read {taken} bytes, "
          f"RSS +{grown / MIB:.1f} MiB")
    # 1 MiB of backlog is 4096 empty messages (each counts MESSAGE_OVERHEAD); one 256 KiB read
    # may overshoot it.  Today the backlog counts them as 0 bytes and A reads everything.
    assert taken is not None and taken < 1 * MIB, taken
    assert grown < 24 * MIB, f"A's process grew by {grown / MIB:.1f} MiB"
    release.set()
    wait_for(lambda: (arena.bytes_from(raw.peer_id) or 0) > taken, "A to read on once its app caught up")


def test_tiny_messages_to_a_peer_that_does_not_read_block_send(net: Net) -> None:
    limit = 64 * KIB
    arena = Arena(net, max_message_size=limit, send_queue_limit=limit)
    raw = arena.attacker(granted=True, rcvbuf=SMALL_RCVBUF)  # and it never reads again
    before = baseline_rss()
    admitted = 0
    with pytest.raises(crust.SendTimeout):
        for admitted in range(1_000_000):  # past any bound: today send() never blocks
            arena.a.send(raw.peer_id, b"", timeout=1.0)
    grown = rss() - before
    in_kernel = arena.a.peer_info(raw.peer_id).bytes_sent
    held = admitted * len(data_record_header(0, 0, True)) - in_kernel  # record bytes A itself still holds
    print(f"empty messages to a peer that does not read: send() blocked after {admitted} "
          f"({in_kernel} bytes in the kernel, {held} held by A), RSS +{grown / MIB:.1f} MiB")
    # Beyond what the kernel took, A holds its write window (512 KiB of sealed frames) and
    # send_queue_limit / MESSAGE_OVERHEAD = 256 queued messages, nothing more.
    assert held < WRITE_WINDOW + limit, held
    assert grown < 24 * MIB, f"A's process grew by {grown / MIB:.1f} MiB"


# -- defect 4: control answers queued without limit ----------------------------------------

def test_heartbeat_probes_from_a_peer_that_does_not_read(arena: Arena) -> None:
    raw = arena.attacker(granted=True, rcvbuf=SMALL_RCVBUF)  # and it never reads again
    probes = encode_record(Heartbeat(7)) * ((MAX_FRAME_PLAINTEXT - 256) // 10)
    attack = frames(raw, probes, 120)  # 786 000 probes, 7.5 MiB
    before = baseline_rss()
    with arena.pinger() as pinger:
        sent = send_until_refused(raw.sock, attack)
        wait_for(lambda: raw.peer_id in arena.ra.lost or (arena.bytes_from(raw.peer_id) or 0) >= len(attack),
                 "A to drop the attacker or read all of it")
    grown = rss() - before
    print(f"heartbeat probes: {len(attack)} bytes offered (all sent: {sent}), RSS +{grown / MIB:.1f} MiB, "
          f"B's worst round trip {pinger.worst:.3f} s")
    assert grown < 8 * MIB, f"A's process grew by {grown / MIB:.1f} MiB"
    assert pinger.worst < RTT_BOUND, pinger.rtts
    arena.ra.wait(lambda: raw.peer_id in arena.ra.lost, what="A dropping the attacker")
    assert len(flood_reports(arena.ra, raw.peer_id)) == 1, arena.ra.misbehaviour
    assert arena.a.is_connected(arena.b.id)
