"""Reliable UDP (crust.rudp) in virtual time: two RudpStreams, one simulated link, no sockets.

``Pair`` owns two streams ``a`` and ``b``, a float clock and a ``Link`` that
delivers datagrams after a delay, losing, duplicating or delaying some at
random from a seeded ``random.Random`` (so every run is the same run).  It
drives the streams as ``crust.transport.udp.RudpConnection`` does: after each
datagram or timer it collects ``datagrams_to_send`` and the events.  Every
loop is bounded by a step count.
"""

from __future__ import annotations

import heapq
import random
import struct
from typing import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crust.rudp import (
    COOKIE_PERIOD,
    COOKIE_SIZE,
    HEADER_SIZE,
    MAGIC,
    MAX_DATAGRAM,
    MAX_PAYLOAD,
    MAX_RTO,
    MIN_RTO,
    RttEstimator,
    RudpClosed,
    RudpConnected,
    RudpData,
    RudpEvent,
    RudpSent,
    Heard,
    RudpStream,
    SYN_SIZE,
    CookieJar,
    Pmtu,
    TimeWait,
    peek_ids,
)
from crust.rudp.packet import COOKIE, MAX_WIRE_DATAGRAM, PATH, PROBE, pack_cookie, pack_probe
from crust.rudp.rack import PTO_SLACK

pytestmark = pytest.mark.timeout(30)

HEADER = struct.Struct(">BBIIIIIB")
SYN, ACK, FIN, RST, PING = 0x01, 0x02, 0x04, 0x08, 0x10
ID_A, ID_B = 0xA1A1A1A1, 0xB2B2B2B2
ISN_A, ISN_B = 0xFFFFF000, 0x7FFFFFF0  # both wrap, or cross 2**31, during a 1 MB transfer
MB = 1024 * 1024
DELAY = 0.01  # seconds, one way


def pattern(n: int, salt: int = 0) -> bytes:
    """n bytes that differ at every offset a misordering could swap."""
    block = bytes((i * 7 + salt) & 0xFF for i in range(251))  # 251 is prime: no alignment with 1200
    return (block * (n // 251 + 1))[:n]


def header(datagram: bytes) -> tuple[int, ...]:
    """(magic, flags, dst, src, seq, ack, window, nsack)"""
    return HEADER.unpack_from(datagram)


def payload_len(datagram: bytes) -> int:
    return len(datagram) - HEADER_SIZE - 8 * datagram[22]


# -- the harness ---------------------------------------------------------------------------

class Link:
    """Delivers datagrams after ``delay`` seconds, with seeded loss, duplication and reordering.

    ``drop(direction, datagram)`` (direction 0 is a→b) may veto single datagrams;
    ``cut`` drops everything while True.
    """

    def __init__(self, rng: random.Random, *, delay: float = DELAY, loss: float = 0.0, dup: float = 0.0,
                 reorder: float = 0.0, max_len: float = MAX_DATAGRAM) -> None:
        self.rng = rng
        self.max_len = max_len  # what the streams may send at most (more with path MTU discovery)
        self.delay = delay
        self.loss = loss
        self.dup = dup
        self.reorder = reorder
        self.drop: Callable[[int, bytes], bool] | None = None
        self.cut = False
        self.queue: list[tuple[float, int, int, bytes]] = []  # (arrival, tiebreak, direction, datagram)
        self.counter = 0
        self.sent = [0, 0]
        self.lost = [0, 0]

    def transmit(self, direction: int, datagram: bytes, now: float) -> None:
        assert len(datagram) <= self.max_len
        self.sent[direction] += 1
        if self.cut or (self.drop is not None and self.drop(direction, datagram)) or self.rng.random() < self.loss:
            self.lost[direction] += 1
            return
        copies = 2 if self.rng.random() < self.dup else 1
        for _ in range(copies):
            extra = self.rng.uniform(0, 4 * self.delay) if self.rng.random() < self.reorder else 0.0
            self.counter += 1
            heapq.heappush(self.queue, (now + self.delay + extra, self.counter, direction, datagram))


class Pair:
    """Two streams joined by a Link, and what each one surfaced."""

    def __init__(self, seed: int = 1, *, link: dict[str, float] | None = None, connect: str = "a",
                 **options: float) -> None:
        self.now = 100.0
        self.link = Link(random.Random(seed), **(link or {}))
        self.a = RudpStream(ID_A, ISN_A, self.now, **options)
        self.b = RudpStream(ID_B, ISN_B, self.now, **options)
        self.streams = (self.a, self.b)
        self.events: tuple[list[RudpEvent], list[RudpEvent]] = ([], [])
        self.data = (bytearray(), bytearray())
        self.acked = [0, 0]
        self.steps = 0
        if connect in ("a", "both"):
            self.a.connect(self.now)
        if connect in ("b", "both"):
            self.b.connect(self.now)
        self.service(0)
        self.service(1)

    def service(self, i: int) -> None:
        stream = self.streams[i]
        for datagram in stream.datagrams_to_send(self.now):
            self.link.transmit(i, datagram, self.now)
        for event in stream.take_events():
            self.events[i].append(event)
            if isinstance(event, RudpData):
                self.data[i].extend(event.data)
            elif isinstance(event, RudpSent):
                self.acked[i] += event.nbytes

    def step(self) -> bool:
        """Advance to the next arrival or timer and handle it; False if nothing is left to happen."""
        self.steps += 1
        timers = [t for t in (s.get_timer() for s in self.streams) if t is not None]
        when = min(timers + ([self.link.queue[0][0]] if self.link.queue else []), default=None)
        if when is None:
            return False
        self.now = max(self.now, when)
        while self.link.queue and self.link.queue[0][0] <= self.now:
            _, _, direction, datagram = heapq.heappop(self.link.queue)
            receiver = 1 - direction
            self.streams[receiver].receive_datagram(datagram, self.now)
            self.service(receiver)
        for i, stream in enumerate(self.streams):
            timer = stream.get_timer()
            if timer is not None and timer <= self.now:
                stream.handle_timer(self.now)
                self.service(i)
                # Every deadline handled moves on: the owner's timer would spin otherwise.
                after = stream.get_timer()
                assert after is None or after > self.now, (timer, after, self.now)
        return True

    def run(self, until: Callable[[], bool], *, max_steps: int = 200_000, max_time: float = 1e9) -> None:
        """Step until ``until()``; fail if it needs more than ``max_steps`` steps or virtual ``max_time``."""
        start = self.now
        for _ in range(max_steps):
            if until():
                return
            if self.now - start > max_time:
                break
            if not self.step():
                break
        assert until(), f"condition not reached after {self.steps} steps, {self.now - start:.3f} s virtual"

    def run_for(self, seconds: float, *, max_steps: int = 200_000) -> None:
        end = self.now + seconds
        for _ in range(max_steps):
            timers = [t for t in (s.get_timer() for s in self.streams) if t is not None]
            when = min(timers + ([self.link.queue[0][0]] if self.link.queue else []), default=None)
            if when is None or when > end:
                self.now = end
                return
            self.step()
        raise AssertionError("run_for: too many steps")

    def connected(self) -> bool:
        return self.a.connected and self.b.connected

    def closed_with(self, i: int) -> list[str | None]:
        return [e.error for e in self.events[i] if isinstance(e, RudpClosed)]

    def transfer(self, size_a: int, size_b: int = 0, **run: float) -> tuple[bytes, bytes]:
        """Write ``size_a`` bytes a→b and ``size_b`` b→a; return them once both arrived whole."""
        out_a, out_b = pattern(size_a, 1), pattern(size_b, 2)
        self.a.write(out_a)
        self.b.write(out_b)
        self.service(0)
        self.service(1)
        self.run(lambda: len(self.data[1]) >= size_a and len(self.data[0]) >= size_b, **run)  # type: ignore[arg-type]
        return out_a, out_b


def connected_pair(seed: int = 1, **kwargs: object) -> Pair:
    pair = Pair(seed, **kwargs)  # type: ignore[arg-type]
    pair.run(pair.connected, max_steps=1000)
    return pair


# -- wire format ---------------------------------------------------------------------------

def test_syn_layout_and_peek_ids() -> None:
    s = RudpStream(ID_A, 0x01020304, 0.0, receive_window=65536)
    s.connect(0.0)
    [syn] = s.datagrams_to_send(0.0)
    # A first SYN carries a zeroed cookie field: the listener's COOKIE answer is then no larger.
    assert syn == bytes([MAGIC, SYN]) + struct.pack(">IIIIIB", 0, ID_A, 0x01020304, 0, 65536, 0) + bytes(16)
    assert HEADER_SIZE == 23 and len(syn) == SYN_SIZE == HEADER_SIZE + COOKIE_SIZE == 39
    assert peek_ids(syn) == (0, ID_A, True)
    assert MAX_DATAGRAM == 23 + 3 * 8 + MAX_PAYLOAD <= 1250


def test_peek_ids_rejects_what_is_not_rudp() -> None:
    assert peek_ids(b"") is None
    assert peek_ids(b"\xc3CRDS" + bytes(40)) is None  # a LAN beacon
    assert peek_ids(bytes([MAGIC, SYN]) + bytes(20)) is None  # one byte short
    assert peek_ids(bytes([MAGIC, 0x81]) + bytes(21)) is None  # no such flag set
    assert peek_ids(bytes([MAGIC, SYN | FIN]) + bytes(21)) is None  # impossible flag set
    ack = bytes([MAGIC, ACK]) + struct.pack(">IIIIIB", ID_B, ID_A, 5, 6, 7, 0)
    assert peek_ids(ack) == (ID_B, ID_A, False)


def test_constructor_checks_its_arguments() -> None:
    for bad in ({"local_id": 0}, {"local_id": 1 << 32}, {"initial_seq": -1}, {"initial_seq": 1 << 32}):
        args = {"local_id": 1, "initial_seq": 0} | bad
        with pytest.raises(ValueError):
            RudpStream(args["local_id"], args["initial_seq"], 0.0)
    with pytest.raises(ValueError):
        RudpStream(1, 0, 0.0, receive_window=100)
    with pytest.raises(ValueError):
        RudpStream(1, 0, 0.0, idle_timeout=0)


# -- handshake and transfer ----------------------------------------------------------------

def test_handshake_then_one_megabyte_each_way() -> None:
    pair = connected_pair()
    assert pair.a.remote_id == ID_B and pair.b.remote_id == ID_A
    assert [type(e) for e in pair.events[0]] == [RudpConnected]
    out_a, out_b = pair.transfer(MB, MB)
    assert bytes(pair.data[1]) == out_a and bytes(pair.data[0]) == out_b
    pair.run(lambda: pair.a.pending_bytes == 0 and pair.b.pending_bytes == 0, max_steps=1000)
    assert pair.acked == [MB, MB]
    assert pair.a.retransmits == pair.b.retransmits == 0
    assert pair.a.malformed == pair.b.malformed == pair.a.dropped == pair.b.dropped == 0
    assert pair.a.srtt == pytest.approx(2 * DELAY, abs=0.005)


def test_simultaneous_open_connects_each_side_once() -> None:
    pair = Pair(connect="both")
    syns = [d for _, _, _, d in pair.link.queue]
    assert len(syns) == 2 and all(peek_ids(d) is not None and peek_ids(d)[2] for d in syns)  # type: ignore[index]
    pair.run(pair.connected, max_steps=100)
    pair.run_for(1.0)
    assert [e for e in pair.events[0] if isinstance(e, RudpConnected)] == [RudpConnected()]
    assert [e for e in pair.events[1] if isinstance(e, RudpConnected)] == [RudpConnected()]
    out_a, out_b = pair.transfer(100_000, 100_000)
    assert bytes(pair.data[1]) == out_a and bytes(pair.data[0]) == out_b


@pytest.mark.parametrize("seed", range(4))
def test_simultaneous_open_under_loss(seed: int) -> None:
    pair = Pair(seed, connect="both", link={"loss": 0.3})
    pair.run(pair.connected, max_steps=2000)
    out_a, out_b = pair.transfer(50_000, 50_000)
    assert bytes(pair.data[1]) == out_a and bytes(pair.data[0]) == out_b
    assert sum(isinstance(e, RudpConnected) for e in pair.events[0] + pair.events[1]) == 2


def test_lost_syn_ack_is_retransmitted() -> None:
    pair = Pair()
    pair.link.drop = lambda direction, d: direction == 1 and d[1] == SYN | ACK and pair.link.sent[1] == 1
    pair.run(pair.connected, max_steps=100)
    assert pair.now - 100.0 >= 1.0  # waited for the initial 1 s RTO
    assert pair.a.srtt is None  # Karn: the SYN was sent twice, no sample


def test_data_written_before_the_handshake_is_sent_after_it() -> None:
    pair = Pair()
    pair.a.write(b"early")
    pair.run(lambda: bytes(pair.data[1]) == b"early", max_steps=100)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(("name", "link"), [
    ("10% loss", {"loss": 0.10}),
    ("20% loss", {"loss": 0.20}),
    ("duplication", {"dup": 0.2}),
    ("reordering", {"reorder": 0.2}),
    ("everything", {"loss": 0.05, "dup": 0.05, "reorder": 0.1}),
])
def test_transfer_on_a_bad_link_is_byte_exact(name: str, link: dict[str, float], seed: int) -> None:
    pair = connected_pair(seed, link=link)
    out_a, out_b = pair.transfer(MB, MB // 4)
    assert bytes(pair.data[1]) == out_a and bytes(pair.data[0]) == out_b
    if "loss" in link or "reorder" in link:
        assert pair.a.retransmits > 0
    else:  # a duplicated datagram is not a duplicate ACK (RFC 6675): nothing is resent
        assert pair.a.retransmits == pair.b.retransmits == 0
    assert pair.a.srtt is not None and pair.a.srtt < 4 * 2 * DELAY  # Karn kept the estimate clean
    pair.a.close(pair.now)
    pair.service(0)
    pair.run(lambda: pair.a.closed and pair.b.closed)
    assert pair.closed_with(0) == pair.closed_with(1) == [None]


# -- loss recovery and RTT ------------------------------------------------------------------

def test_one_lost_datagram_is_fast_retransmitted_before_the_rto() -> None:
    pair = connected_pair()
    lost_at: list[float] = []
    resent_at: list[float] = []
    target = (ISN_A + 1 + 30 * MAX_PAYLOAD) & 0xFFFFFFFF  # the 31st data datagram

    def drop(direction: int, d: bytes) -> bool:
        if direction == 0 and payload_len(d) and header(d)[4] == target:
            if lost_at:
                resent_at.append(pair.now)
                return False
            lost_at.append(pair.now)
            return True
        return False

    pair.link.drop = drop
    rto = pair.a.rto
    out, _ = pair.transfer(300_000)
    assert bytes(pair.data[1]) == out
    assert pair.a.retransmits == 1 and pair.a.timeouts == 0 and len(resent_at) == 1
    # SACKs for the datagrams behind it arrive one round trip after the loss; the RTO is 10 RTTs.
    assert resent_at[0] - lost_at[0] <= 2 * 2 * DELAY < rto
    assert pair.a.cwnd >= 2 * MAX_PAYLOAD and pair.b.buffered_bytes == 0


def _data_seq(k: int) -> int:
    """The sequence number of a's k-th data datagram (from 0), all of MAX_PAYLOAD bytes."""
    return (ISN_A + 1 + k * MAX_PAYLOAD) & 0xFFFFFFFF


def test_a_lost_retransmission_is_found_lost_again_without_an_rto() -> None:
    pair = connected_pair()
    sent_at: list[float] = []

    def drop(direction: int, d: bytes) -> bool:
        if direction == 0 and payload_len(d) and header(d)[4] == _data_seq(30):
            sent_at.append(pair.now)
            return len(sent_at) <= 2  # the original and its first retransmission
        return False

    pair.link.drop = drop
    out, _ = pair.transfer(300_000)
    assert bytes(pair.data[1]) == out
    # RACK: data sent after the retransmission was SACKed, so it is lost too; counting rules never say so.
    assert pair.a.timeouts == 0 and len(sent_at) == 3
    assert sent_at[2] - sent_at[1] < 3 * 2 * DELAY < MIN_RTO


def test_a_lost_tail_is_recovered_by_a_probe_before_the_rto() -> None:
    pair = connected_pair()
    sent_at: dict[int, list[float]] = {18: [], 19: []}

    def drop(direction: int, d: bytes) -> bool:
        for k, times in sent_at.items():
            if direction == 0 and payload_len(d) and header(d)[4] == _data_seq(k):
                times.append(pair.now)
                return len(times) == 1  # the last two datagrams, the first time
        return False

    pair.link.drop = drop
    out, _ = pair.transfer(20 * MAX_PAYLOAD)
    assert bytes(pair.data[1]) == out
    assert pair.a.timeouts == 0
    # The probe resends the newest segment ~2 SRTT after the last ACK; its SACK shows the other one lost (RACK).
    assert sent_at[19][1] - sent_at[19][0] <= 2 * DELAY + 2 * pair.a.srtt + PTO_SLACK + 1e-9
    assert max(sent_at[18][1], sent_at[19][1]) - sent_at[19][0] < 5 * 2 * DELAY <= MIN_RTO / 2


def test_reordering_within_the_window_is_not_called_a_loss() -> None:
    pair = connected_pair()
    late = 2 * DELAY / 4 * 0.6  # behind its successors by 60 % of RACK's window (min RTT / 4)
    held: list[bytes] = []

    def delay(direction: int, d: bytes) -> bool:
        if direction == 0 and payload_len(d) and header(d)[4] == _data_seq(18) and not held:
            held.append(d)
            pair.link.counter += 1
            heapq.heappush(pair.link.queue, (pair.now + DELAY + late, pair.link.counter, 0, d))
            return True
        return False

    pair.link.drop = delay
    out, _ = pair.transfer(20 * MAX_PAYLOAD)
    pair.run(lambda: pair.a.pending_bytes == 0, max_steps=1000)  # the ACKs, SACKs first, reach the sender
    assert bytes(pair.data[1]) == out and held
    assert pair.a.retransmits == 0 and pair.a.timeouts == 0


def test_rtt_estimator_follows_rfc_6298() -> None:
    est = RttEstimator()
    assert est.srtt is None and est.rto == 1.0  # (2.1)
    est.sample(0.5)  # (2.2): first sample
    assert est.srtt == 0.5 and est.rttvar == 0.25 and est.rto == pytest.approx(0.5 + 4 * 0.25)
    est.sample(0.1)  # (2.3): RTTVAR first, with the old SRTT
    assert est.rttvar == pytest.approx(0.75 * 0.25 + 0.25 * 0.4)
    assert est.srtt == pytest.approx(0.875 * 0.5 + 0.125 * 0.1)
    assert est.rto == pytest.approx(0.875 * 0.5 + 0.125 * 0.1 + 4 * est.rttvar)
    small = RttEstimator()
    small.sample(0.001)
    assert small.rto == MIN_RTO  # (2.4), with crust's 200 ms floor
    rtos = []
    for _ in range(12):  # (5.5): double on every timeout, up to the maximum
        small.back_off()
        rtos.append(small.rto)
    assert rtos[:4] == [2 * MIN_RTO, 4 * MIN_RTO, 8 * MIN_RTO, 16 * MIN_RTO] and rtos[-1] == MAX_RTO == 60.0
    small.sample(0.001)  # a fresh sample ends the backoff
    assert small.rto == MIN_RTO
    huge = RttEstimator()
    huge.sample(100.0)
    assert huge.rto == MAX_RTO


def test_rto_backs_off_exponentially_while_the_peer_is_unreachable() -> None:
    pair = connected_pair()
    times: list[float] = []

    def drop_all(direction: int, d: bytes) -> bool:
        if direction == 0 and payload_len(d):
            times.append(pair.now)
        return True

    pair.link.drop = drop_all
    pair.a.write(b"x" * 10)
    pair.service(0)
    pair.run(lambda: len(times) >= 8, max_steps=1000)
    # Tail-loss probes after ~2 SRTT and twice that again (the next would be after the RTO), then only the RTO.
    pto = 2 * pair.a.srtt + PTO_SLACK
    assert [times[1] - times[0], times[2] - times[0]] == pytest.approx([pto, 3 * pto], rel=0.01)
    assert 7 * pto > MIN_RTO
    gaps = [b - a for a, b in zip(times[:1] + times[3:], times[3:])]
    assert gaps[0] == pytest.approx(MIN_RTO, rel=0.01)
    for shorter, longer in zip(gaps, gaps[1:]):
        assert longer == pytest.approx(2 * shorter, rel=0.01)
    assert pair.a.timeouts == 5 and pair.a.cwnd == MAX_PAYLOAD


def test_too_many_timeouts_kill_the_stream() -> None:
    pair = connected_pair(idle_timeout=1e6, keepalive_interval=1e6)
    pair.a.write(b"x" * 10)
    pair.service(0)
    pair.link.cut = True
    pair.run(lambda: pair.a.closed, max_steps=1000)
    assert pair.closed_with(0) == ["timed out"] and pair.a.timeouts == 9


def test_cwnd_grows_in_slow_start_and_halves_on_loss() -> None:
    pair = connected_pair()
    initial = pair.a.cwnd
    assert initial == 10 * MAX_PAYLOAD
    drop_after = 150  # a data datagram well into slow start
    dropped: list[int] = []

    def drop(direction: int, d: bytes) -> bool:
        if direction == 0 and payload_len(d) and pair.link.sent[0] == drop_after and not dropped:
            dropped.append(pair.a.cwnd)
            return True
        return False

    pair.link.drop = drop
    pair.a.write(pattern(2 * MB))
    pair.service(0)
    peak = 0
    for _ in range(20_000):
        if pair.a.retransmits:
            break
        peak = max(peak, pair.a.cwnd)
        pair.step()
    assert initial < dropped[0] <= peak  # slow start grew it
    assert MAX_PAYLOAD * 2 <= pair.a.cwnd <= peak // 2 + MAX_PAYLOAD  # fast recovery halved it
    pair.run(lambda: len(pair.data[1]) == 2 * MB)
    assert pair.a.timeouts == 0


# -- flow control --------------------------------------------------------------------------

def test_a_paused_reader_stops_the_sender_and_resuming_drains_it() -> None:
    window = 64 * 1024
    pair = connected_pair(receive_window=window)
    pair.b.pause_reading()
    out = pattern(1 * MB)
    pair.a.write(out)
    pair.service(0)
    pair.run_for(5.0)
    assert len(pair.data[1]) == 0
    assert pair.b.buffered_bytes == window  # filled exactly, and no further
    assert pair.a.pending_bytes == MB - window
    sent_before = pair.link.sent[0]
    pair.run_for(30.0)
    probes = pair.link.sent[0] - sent_before
    assert 1 <= probes <= 10  # persist probes, backed off; no data
    assert pair.b.buffered_bytes == window
    pair.b.resume_reading()
    pair.service(1)
    pair.run(lambda: len(pair.data[1]) == MB, max_steps=20_000)
    assert bytes(pair.data[1]) == out


def test_a_lost_window_update_is_found_by_the_persist_probe() -> None:
    window = 32 * 1024
    pair = connected_pair(receive_window=window)
    pair.b.pause_reading()
    pair.a.write(pattern(200_000))
    pair.service(0)
    pair.run_for(2.0)
    assert pair.b.buffered_bytes == window
    pair.link.cut = True  # the window update after resume is lost
    pair.b.resume_reading()
    pair.service(1)
    pair.link.cut = False
    t0 = pair.now
    pair.run(lambda: len(pair.data[1]) == 200_000, max_steps=20_000)
    assert pair.now - t0 < 65.0  # a probe found the open window (backoff is capped at 60 s)
    assert pair.a.timeouts == 0


def test_out_of_order_data_is_bounded_by_the_window() -> None:
    window = 16 * 1024
    pair = connected_pair(receive_window=window)
    pair.link.drop = lambda direction, d: direction == 0 and header(d)[4] == (ISN_A + 1) & 0xFFFFFFFF \
        and pair.a.retransmits == 0
    pair.a.write(pattern(100_000))
    pair.service(0)
    high = 0
    for _ in range(5000):
        high = max(high, pair.b.buffered_bytes)
        if len(pair.data[1]) == 100_000:
            break
        pair.step()
    assert 0 < high <= window
    assert bytes(pair.data[1]) == pattern(100_000)


# -- closing -------------------------------------------------------------------------------

def test_orderly_close_after_all_data_is_delivered() -> None:
    pair = connected_pair(3, link={"loss": 0.1})
    out = pattern(300_000)
    pair.a.write(out)
    pair.a.close(pair.now)
    pair.a.write(b"ignored")  # after close(): dropped, like TcpStream
    pair.service(0)
    pair.run(lambda: pair.a.closed and pair.b.closed, max_steps=50_000)
    assert bytes(pair.data[1]) == out
    assert pair.closed_with(0) == pair.closed_with(1) == [None]
    assert isinstance(pair.events[1][-1], RudpClosed) and pair.acked[0] == len(out)
    assert pair.a.get_timer() is None and pair.b.get_timer() is None


def test_both_sides_close_at_once() -> None:
    pair = connected_pair()
    pair.a.write(b"from a")
    pair.b.write(b"from b")
    pair.a.close(pair.now)
    pair.b.close(pair.now)
    pair.service(0)
    pair.service(1)
    pair.run(lambda: pair.a.closed and pair.b.closed, max_steps=1000)
    assert (bytes(pair.data[0]), bytes(pair.data[1])) == (b"from b", b"from a")
    assert pair.closed_with(0) == pair.closed_with(1) == [None]


def test_a_lost_last_ack_still_closes_in_order() -> None:
    pair = connected_pair()
    pair.a.close(pair.now)
    pair.service(0)
    finals: list[bytes] = []

    def drop(direction: int, d: bytes) -> bool:
        if direction == 0 and pair.a.closed:
            finals.append(d)
            return True
        return False

    # a's final ACK (of b's FIN) is lost; a is gone by then, so b's FIN retransmissions go unanswered.
    pair.link.drop = drop
    start = pair.now
    pair.run(lambda: pair.a.closed and pair.b.closed, max_steps=1000)
    assert len(finals) == 2 and finals[0] == finals[1]  # sent twice: nothing would repeat it
    assert pair.closed_with(0) == pair.closed_with(1) == [None]
    assert pair.now - start < 5.0  # not the idle timeout: only b's FIN was outstanding


def test_close_waits_for_a_paused_reader() -> None:
    pair = connected_pair()
    pair.b.pause_reading()
    pair.a.write(b"held")
    pair.a.close(pair.now)
    pair.service(0)
    pair.run_for(5.0)
    assert not pair.b.closed and pair.data[1] == b""
    assert pair.b.get_timer() is None  # both FINs done: no keepalive, no idle timeout, just waiting
    pair.run_for(600.0)
    pair.b.resume_reading()
    pair.service(1)
    pair.run(lambda: pair.a.closed and pair.b.closed, max_steps=1000)
    assert pair.data[1] == b"held"
    assert [type(e) for e in pair.events[1]] == [RudpConnected, RudpData, RudpClosed]


def test_reset_closes_the_peer_with_an_error() -> None:
    pair = connected_pair()
    pair.a.write(pattern(50_000))
    pair.service(0)
    pair.run_for(0.05)
    pair.a.abort(pair.now)
    assert pair.a.closed
    [rst] = pair.a.datagrams_to_send(pair.now)
    assert header(rst)[1] == RST | ACK
    assert pair.a.take_events() == [] and pair.a.get_timer() is None
    pair.link.transmit(0, rst, pair.now)
    pair.run(lambda: pair.b.closed, max_steps=1000)
    assert pair.closed_with(1) == ["connection reset by peer"]
    assert pair.closed_with(0) == []


def test_abort_drops_what_was_not_yet_taken() -> None:
    pair = connected_pair()
    pair.b.write(b"unread")
    pair.service(1)
    pair.run(lambda: pair.link.queue == [], max_steps=100)
    pair.a.receive_datagram(forge(ACK, ID_A, ID_B, ISN_B + 7, ISN_A + 1, b"more"), pair.now)
    pair.a.abort(pair.now)
    assert pair.a.take_events() == []  # the owner closed: no data after that


def test_a_reset_answering_our_syn_is_a_refusal() -> None:
    pair = Pair()
    pair.link.queue.clear()  # the SYN never arrives; some peer answers it with an RST
    pair.a.receive_datagram(forge(RST | ACK, ID_A, ID_B, 0, ISN_A + 2), pair.now)
    assert not pair.a.closed and pair.a.dropped == 1  # acks something we never sent
    pair.a.receive_datagram(forge(RST | ACK, ID_A, ID_B, 0, ISN_A + 1), pair.now)
    pair.service(0)
    assert pair.closed_with(0) == ["connection refused"]


def test_the_peers_fin_is_answered_and_later_writes_are_ignored() -> None:
    pair = connected_pair()
    pair.a.close(pair.now)
    [fin] = pair.a.datagrams_to_send(pair.now)
    assert header(fin)[1] == ACK | FIN
    pair.b.receive_datagram(fin, pair.now)
    pair.b.write(b"too late")  # closing now: no half-close
    assert pair.b.pending_bytes == 0 and not pair.b.closed
    [answer] = pair.b.datagrams_to_send(pair.now)
    assert header(answer)[1] == ACK | FIN  # acks a's FIN and carries b's own
    pair.link.transmit(1, answer, pair.now)
    pair.run(lambda: pair.a.closed and pair.b.closed, max_steps=100)
    assert pair.closed_with(0) == pair.closed_with(1) == [None]


def test_a_handshake_that_times_out_half_open_resets_the_peer() -> None:
    pair = Pair()
    # b's SYN-ACKs reach a, but a's ACKs never reach b: a is connected, b is not.
    pair.link.drop = lambda direction, d: direction == 0 and d[1] == ACK
    pair.run(lambda: pair.a.connected, max_steps=100)
    pair.run(lambda: pair.b.closed, max_steps=1000)
    assert pair.closed_with(1) == ["connect timed out"]
    pair.run(lambda: pair.a.closed, max_steps=100)
    assert pair.closed_with(0) == ["connection reset by peer"]  # at once, not after idle_timeout
    assert pair.now - 100.0 == pytest.approx(DELAY + 10.0 + DELAY)  # b's clock starts at the SYN


def test_connecting_to_a_silent_peer_times_out() -> None:
    pair = Pair(connect_timeout=10.0)
    pair.link.cut = True
    start = pair.now
    pair.run(lambda: pair.a.closed, max_steps=100)
    assert pair.closed_with(0) == ["connect timed out"]
    assert pair.now - start == pytest.approx(10.0)
    assert pair.link.sent[0] == 4  # SYN at 0, 1, 3 and 7 s


# -- liveness ------------------------------------------------------------------------------

def test_a_dead_peer_times_out_after_idle_timeout() -> None:
    pair = connected_pair()
    pair.link.cut = True
    start = pair.now
    pair.run(lambda: pair.a.closed and pair.b.closed, max_steps=1000)
    assert pair.closed_with(0) == pair.closed_with(1) == ["timed out"]
    assert pair.now - start == pytest.approx(60.0, abs=0.1)


def test_a_quiet_live_connection_survives_on_keepalives() -> None:
    pair = connected_pair()
    pair.run_for(200.0)
    assert pair.connected() and not pair.a.closed and not pair.b.closed
    assert 200 / 15 - 2 <= pair.link.sent[0] + pair.link.sent[1] <= 2 * (200 / 15 + 2)
    pair.transfer(10_000, 10_000)


def test_unanswered_keepalives_are_retried_sooner() -> None:
    pair = connected_pair()
    pings: list[float] = []

    def drop(direction: int, d: bytes) -> bool:
        if not d[1] & PING:
            return False
        if direction == 0:
            return True  # a's own PINGs never count: b must hear a only through answers
        pings.append(pair.now)
        return len(pings) <= 3  # b's first three PINGs are lost

    pair.link.drop = drop
    pair.run_for(60.0)
    assert pair.connected()
    gaps = [round(b - a, 3) for a, b in zip(pings, pings[1:])]
    rto = pair.b.rto
    assert gaps[:3] == [rto, 2 * rto, 4 * rto]  # retried, backing off; then answered:
    assert len(gaps) > 3 and all(gap == pytest.approx(15.0, abs=0.05) for gap in gaps[3:])  # every 15 s again


def test_keepalive_is_a_ping_answered_by_an_ack() -> None:
    pair = connected_pair(keepalive_interval=5.0, idle_timeout=12.0)
    sent: list[tuple[int, int]] = []

    def record(direction: int, d: bytes) -> bool:
        sent.append((direction, header(d)[1]))
        return False

    pair.link.drop = record
    pair.run_for(30.0)
    # Whichever side sent last waits longest; the other pings and gets an ACK back.
    assert (sent[0], sent[1]) in (((0, ACK | PING), (1, ACK)), ((1, ACK | PING), (0, ACK)))
    assert 2 * 5 <= len(sent) <= 2 * 7 and all(flags in (ACK, ACK | PING) for _, flags in sent)
    assert pair.connected()


# -- hostile input -------------------------------------------------------------------------

def state_of(s: RudpStream) -> tuple[int, ...]:
    return (s.buffered_bytes, s.pending_bytes, s.cwnd, s.retransmits, len(s.take_events()),
            len(s.datagrams_to_send(0.0)))


def forge(flags: int, dst: int, src: int, seq: int, ack: int, payload: bytes = b"", window: int = 65536) -> bytes:
    return HEADER.pack(MAGIC, flags, dst, src, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, window, 0) + payload


def test_spoofed_and_out_of_window_datagrams_are_dropped_without_growing_state() -> None:
    pair = connected_pair(receive_window=16 * 1024)
    a, b = pair.a, pair.b
    a.write(pattern(5000))
    pair.service(0)
    pair.run(lambda: a.pending_bytes == 0, max_steps=100)
    before = state_of(b)
    rcv_nxt = ISN_A + 1 + 5000
    snd_nxt = ISN_B + 1
    spoofed = [
        forge(ACK, 0x12345678, ID_A, rcv_nxt, snd_nxt, b"x" * 100),  # wrong dst id
        forge(ACK, ID_B, 0x12345678, rcv_nxt, snd_nxt, b"x" * 100),  # wrong src id
        forge(ACK, 0, ID_A, rcv_nxt, snd_nxt, b"x" * 100),  # dst 0 outside a SYN
        forge(ACK, ID_B, ID_A, rcv_nxt + 16 * 1024, snd_nxt, b"x" * 100),  # past the window
        forge(ACK, ID_B, ID_A, rcv_nxt + (1 << 30), snd_nxt, b"x" * 100),  # far ahead
        forge(ACK, ID_B, ID_A, rcv_nxt, snd_nxt + 5000, b"x" * 100),  # acks data never sent
        forge(RST | ACK, ID_B, ID_A, rcv_nxt + 1_000_000, snd_nxt),  # blind reset, wrong seq
        forge(SYN, 0, 0x99999999, 1234, 0, bytes(COOKIE_SIZE)),  # another connection's SYN
    ]
    for d in spoofed:
        b.receive_datagram(d, pair.now)
    assert b.dropped == len(spoofed) and b.malformed == 0
    after = state_of(b)
    assert after[:5] == before[:5]
    assert b.connected
    # Old data (a duplicate, or a seq half the space away) is no threat either: acked once, forgotten.
    b.receive_datagram(forge(ACK, ID_B, ID_A, ISN_A + 1, snd_nxt, b"y" * 100), pair.now)
    b.receive_datagram(forge(ACK, ID_B, ID_A, rcv_nxt + (1 << 31), snd_nxt, b"y" * 100), pair.now)
    assert b.buffered_bytes == 0 and len(b.datagrams_to_send(pair.now)) == 1 and not b.take_events()
    pair.transfer(5000, 5000)


def test_garbage_is_counted_as_malformed() -> None:
    pair = connected_pair()
    b = pair.b
    good = forge(ACK, ID_B, ID_A, ISN_A + 1, ISN_B + 1)
    garbage = [
        b"",
        b"\xc5",
        good[:-1],  # short header
        bytes([0x45]) + good[1:],  # wrong magic
        good[:1] + bytes([0x81]) + good[2:],  # no such flag set
        good[:1] + bytes([SYN | FIN]) + good[2:],  # impossible flags
        good[:-1] + b"\x04",  # 4 SACK blocks
        good[:-1] + b"\x02" + bytes(8),  # SACK blocks run past the end
        good + b"x" * (MAX_WIRE_DATAGRAM + 1 - len(good)),  # more than one UDP datagram holds
        forge(RST | ACK, ID_B, ID_A, ISN_A + 1, ISN_B + 1, b"x"),  # RST with payload
        forge(ACK, ID_B, 0, ISN_A + 1, ISN_B + 1),  # src id 0
    ]
    for d in garbage:
        b.receive_datagram(d, pair.now)
    assert b.malformed == len(garbage) and b.dropped == 0 and b.connected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=1300), max_size=5))
def test_arbitrary_bytes_never_raise(datagrams: list[bytes]) -> None:
    s = RudpStream(ID_B, ISN_B, 0.0)
    for d in datagrams:
        s.receive_datagram(d, 0.0)
        s.datagrams_to_send(0.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([SYN, SYN | ACK, ACK, ACK | FIN, ACK | PING, RST, RST | ACK, PATH,
                                           PATH | ACK]),
                          st.integers(-3000, 70000), st.integers(-3000, 70000), st.integers(0, (1 << 32) - 1),
                          st.lists(st.tuples(st.integers(-100, 70000), st.integers(-100, 70000)), max_size=3),
                          st.binary(max_size=1200)), max_size=6))
def test_well_addressed_nonsense_never_raises(packets: list[tuple[int, int, int, int, list[tuple[int, int]],
                                                                 bytes]]) -> None:
    """Correct ids, arbitrary everything else: reaches the deep paths, never raises or outgrows the window."""
    pair = connected_pair(receive_window=32 * 1024)
    pair.a.write(pattern(20_000))
    pair.service(0)
    pair.step()
    b = pair.b
    for flags, seq, ack, window, sacks, payload in packets:
        if flags & (SYN | RST | PATH):
            payload = b""
        blocks = b"".join(struct.pack(">II", (ISN_B + s) & 0xFFFFFFFF, (ISN_B + e) & 0xFFFFFFFF) for s, e in sacks)
        d = HEADER.pack(MAGIC, flags, ID_B, ID_A, (ISN_A + seq) & 0xFFFFFFFF, (ISN_B + ack) & 0xFFFFFFFF,
                        window, len(sacks)) + blocks + payload
        b.receive_datagram(d, pair.now)
        b.datagrams_to_send(pair.now)
        b.take_events()
        assert b.buffered_bytes <= 32 * 1024
        pair.now += 0.01
        if b.get_timer() is not None and b.get_timer() <= pair.now:  # type: ignore[operator]
            b.handle_timer(pair.now)


# -- under attack and change: cookies, the ids as a token, exact resets, TIME_WAIT -----------------

ADDR = ("192.0.2.7", 40000)


def _cookie_handshake(jar: CookieJar, now: float) -> tuple[RudpStream, RudpStream, list[bytes]]:
    """A dials; a listener that only has ``jar`` answers statelessly, then makes B from the proven SYN.

    Returns the two streams and every datagram the listener side sent, in order.
    """
    a = RudpStream(ID_A, ISN_A, now)
    a.connect(now)
    [syn] = a.datagrams_to_send(now)
    _, _, src, isn, *_ = header(syn)[1:]
    assert not jar.check(syn[HEADER_SIZE:], ADDR, src, isn, now)  # a first SYN has no cookie
    reply = pack_cookie(src, isn, jar.make(ADDR, src, isn, now))
    assert len(reply) == len(syn) == SYN_SIZE  # no amplification: the answer is the SYN's size
    assert a.receive_datagram(reply, now) is Heard.NOTHING
    [syn2] = a.datagrams_to_send(now)  # at once, not after an RTO
    assert syn2[:HEADER_SIZE] == syn[:HEADER_SIZE] and syn2[HEADER_SIZE:] == reply[HEADER_SIZE:]
    assert jar.check(syn2[HEADER_SIZE:], ADDR, src, isn, now)
    b = RudpStream(ID_B, ISN_B, now)  # only now does the listener keep anything
    b.receive_datagram(syn2, now)
    sent = [reply, *b.datagrams_to_send(now)]
    for d in sent[1:]:
        a.receive_datagram(d, now)
    for d in a.datagrams_to_send(now):
        b.receive_datagram(d, now)
    return a, b, sent


def test_a_listener_answers_a_syn_statelessly_with_a_cookie_no_larger_than_the_syn() -> None:
    jar = CookieJar(bytes(range(32)))
    a, b, sent = _cookie_handshake(jar, 100.0)
    assert a.connected and b.connected
    assert [header(d)[1] for d in sent] == [COOKIE, SYN | ACK]
    assert max(map(len, sent)) <= SYN_SIZE


def test_a_cookie_is_bound_to_its_source_id_isn_and_secret_and_lives_two_periods() -> None:
    jar = CookieJar(bytes(32))
    now = 1000.0 * COOKIE_PERIOD  # the start of a bucket
    cookie = jar.make(ADDR, ID_A, ISN_A, now)
    assert len(cookie) == COOKIE_SIZE
    assert jar.check(cookie, ADDR, ID_A, ISN_A, now)
    assert jar.check(cookie, ADDR, ID_A, ISN_A, now + 2 * COOKIE_PERIOD - 0.001)  # the next bucket too
    assert not jar.check(cookie, ADDR, ID_A, ISN_A, now + 2 * COOKIE_PERIOD)  # then it has expired
    assert not jar.check(cookie, ADDR, ID_A, ISN_A, now - 0.001)  # and one from "the future" is no good
    for addr, src, isn in (((ADDR[0], ADDR[1] + 1), ID_A, ISN_A), (("192.0.2.8", ADDR[1]), ID_A, ISN_A),
                           (ADDR, ID_A ^ 1, ISN_A), (ADDR, ID_A, ISN_A ^ 1)):
        assert not jar.check(cookie, addr, src, isn, now)
    assert not CookieJar(b"\x01" * 32).check(cookie, ADDR, ID_A, ISN_A, now)  # another socket's secret
    assert not jar.check(cookie[:-1], ADDR, ID_A, ISN_A, now) and not jar.check(bytes(16), ADDR, ID_A, ISN_A, now)
    with pytest.raises(ValueError):
        CookieJar(bytes(16))
    with pytest.raises(TypeError):
        CookieJar("x" * 32)  # type: ignore[arg-type]


def test_a_cookie_is_taken_only_by_a_dialling_stream_and_only_for_its_own_syn() -> None:
    a = RudpStream(ID_A, ISN_A, 0.0)
    a.connect(0.0)
    a.datagrams_to_send(0.0)
    cookie = b"\x42" * COOKIE_SIZE
    a.receive_datagram(pack_cookie(ID_A, ISN_A + 1, cookie), 0.0)  # names another SYN
    a.receive_datagram(pack_cookie(ID_A ^ 1, ISN_A, cookie), 0.0)  # another stream's
    assert a.dropped == 2 and a.datagrams_to_send(0.0) == []
    a.receive_datagram(pack_cookie(ID_A, ISN_A, cookie), 0.0)
    [syn] = a.datagrams_to_send(0.0)
    assert syn.endswith(cookie)
    a.receive_datagram(pack_cookie(ID_A, ISN_A, cookie), 0.0)  # a duplicate: no second SYN at once
    assert a.datagrams_to_send(0.0) == []
    a.handle_timer(a.get_timer() or 0.0)  # the retransmitted SYN keeps carrying the cookie
    assert a.datagrams_to_send(0.0)[0].endswith(cookie)
    pair = connected_pair()  # a connected stream takes no cookie
    pair.a.receive_datagram(pack_cookie(ID_A, ISN_A, cookie), pair.now)
    assert pair.a.dropped == 1 and pair.a.connected
    # Sizes are exact: a SYN or COOKIE of any other length, or a COOKIE with a src id, is malformed.
    s = RudpStream(ID_B, ISN_B, 0.0)
    for bad in (forge(SYN, 0, ID_A, 1, 0), forge(SYN, 0, ID_A, 1, 0, bytes(COOKIE_SIZE + 1)),
                forge(COOKIE, ID_B, 7, 0, 1, cookie), forge(COOKIE, ID_B, 0, 0, 1, cookie[1:])):
        s.receive_datagram(bad, 0.0)
    assert s.malformed == 4 and s.datagrams_to_send(0.0) == []


def test_only_an_exact_reset_closes_a_stream_an_inexact_one_is_challenged() -> None:
    pair = connected_pair()
    b = pair.b
    rcv_nxt = ISN_A + 1
    for seq in (rcv_nxt + 1, rcv_nxt + 5000, rcv_nxt - 1, rcv_nxt + (1 << 31)):
        b.receive_datagram(forge(RST | ACK, ID_B, ID_A, seq, ISN_B + 1), pair.now)
    assert b.connected and b.dropped == 4
    challenges = b.datagrams_to_send(pair.now)  # one ACK, for the two in the window
    assert [header(d)[1] for d in challenges] == [ACK] and header(challenges[0])[5] == rcv_nxt
    b.receive_datagram(forge(RST, ID_B, ID_A, rcv_nxt, 0), pair.now)
    assert b.closed and b.take_events() == [RudpClosed("connection reset by peer")]


def test_receive_datagram_says_what_may_move_the_connection() -> None:
    pair = connected_pair()
    a, b = pair.a, pair.b
    a.write(pattern(3000))
    pair.service(0)
    pair.run(lambda: a.pending_bytes == 0, max_steps=100)
    fresh = forge(ACK | PING, ID_B, ID_A, ISN_A + 3001, ISN_B + 1)
    assert b.receive_datagram(fresh, pair.now) is Heard.PEER
    assert b.receive_datagram(forge(ACK, ID_B, ID_A ^ 1, ISN_A + 3001, ISN_B + 1), pair.now) is Heard.NOTHING  # src
    assert b.receive_datagram(forge(ACK, ID_B, ID_A, ISN_A + 3001, ISN_B + 9), pair.now) is Heard.NOTHING  # unsent
    b.write(b"x" * 10)
    pair.service(1)
    pair.run(lambda: b.pending_bytes == 0, max_steps=100)
    assert b.receive_datagram(fresh, pair.now) is Heard.NOTHING  # its ack is behind what A acked since: stale
    assert b.connected and not b.take_events()


def test_time_wait_answers_a_resent_fin_and_blocks_late_syns_then_forgets() -> None:
    pair = connected_pair()
    pair.a.close(pair.now)
    pair.service(0)
    pair.run(lambda: pair.a.closed and pair.b.closed, max_steps=1000)
    last_ack = pair.a.final_ack()  # A closed second? either way both saw both FINs
    assert last_ack is not None and header(last_ack)[1] == ACK and pair.b.final_ack() is not None
    assert RudpStream(1, 0, 0.0).final_ack() is None
    tw = TimeWait(duration=10.0, limit=3)
    tw.add(ID_A, ADDR, ID_B, last_ack, 0.0)
    fin_ack = ACK | FIN
    assert tw.answer(ADDR, ID_A, ID_B, fin_ack, 0, 1.0) == last_ack
    assert tw.answer(ADDR, ID_A, ID_B, ACK, 0, 1.0) is None  # only a FIN is answered after an orderly close
    assert tw.answer(("192.0.2.9", 1), ID_A, ID_B, fin_ack, 0, 1.0) is None  # another address
    assert tw.answer(ADDR, ID_A, ID_B ^ 1, fin_ack, 0, 1.0) is None  # another peer id
    assert tw.holds_syn(ADDR, ID_B, 1.0) and not tw.holds_syn(ADDR, ID_B ^ 1, 1.0)
    assert tw.holds_id(ID_A, 1.0)
    assert not tw.holds_syn(ADDR, ID_B, 10.0) and not tw.holds_id(ID_A, 10.0) and len(tw) == 0
    for i in range(1, 6):  # bounded: the oldest go first
        tw.add(i, ADDR, 100 + i, None, 20.0)
    assert len(tw) == 3 and not tw.holds_id(2, 20.0) and tw.holds_id(5, 20.0) and not tw.holds_syn(ADDR, 102, 20.0)
    with pytest.raises(ValueError):
        TimeWait(duration=0)


def lost_reset(pair: Pair, data: bytes) -> tuple[TimeWait, bytes]:
    """A resets and its RST is lost; then B writes ``data``.  Returns A's TIME_WAIT and B's datagram."""
    a, b = pair.a, pair.b
    a.abort(pair.now)
    a.datagrams_to_send(pair.now)  # the RST is lost
    tw = TimeWait()
    tw.add(ID_A, ADDR, ID_B, a.final_ack(), pair.now, a.path_auth)
    b.write(data)
    [d] = b.datagrams_to_send(pair.now)
    return tw, d


def time_wait_answer(tw: TimeWait, datagram: bytes, now: float) -> bytes | None:
    """What ``tw`` answers ``datagram`` (from ``ADDR``) with, as the socket asks it."""
    _, flags, dst, src, _, ack, *_ = header(datagram)
    return tw.answer(ADDR, dst, src, flags, ack, now, len(datagram))


def test_time_wait_resets_a_peer_that_missed_our_reset_with_the_exact_seq_it_needs() -> None:
    pair = connected_pair()
    b = pair.b
    tw, d = lost_reset(pair, b"are you there?")
    _, flags, dst, src, _, ack, *_ = header(d)
    rst = time_wait_answer(tw, d, pair.now)
    assert rst is not None and len(rst) <= len(d)
    assert tw.answer(ADDR, dst, src, RST, ack, pair.now) is None  # never answer a reset
    b.receive_datagram(rst, pair.now)
    assert b.closed and b.take_events()[-1] == RudpClosed("connection reset by peer")


def test_a_path_challenge_is_answered_with_its_nonce_and_only_that_answer_proves_the_path() -> None:
    pair = connected_pair()
    a, b = pair.a, pair.b
    nonce = bytes(range(12))
    challenge = b.path_challenge(nonce)
    assert len(challenge) == HEADER_SIZE and header(challenge)[1] == PATH
    a.receive_datagram(challenge, pair.now)  # the peer answers with its next datagrams
    [answer] = a.datagrams_to_send(pair.now)
    assert header(answer)[1] == PATH | ACK and len(answer) == len(challenge)
    wrong = answer[:10] + bytes(12) + answer[22:]
    assert b.receive_datagram(wrong, pair.now) is Heard.NOTHING and b.dropped == 1
    assert b.receive_datagram(answer, pair.now) is Heard.PATH
    assert b.receive_datagram(answer, pair.now) is Heard.NOTHING  # used up: a replay proves nothing
    a.receive_datagram(b.path_challenge(b"\x01" * 12), pair.now)
    [older] = a.datagrams_to_send(pair.now)
    b.path_challenge(b"\x02" * 12)  # a newer challenge replaces it (the candidate address changed)
    assert b.receive_datagram(older, pair.now) is Heard.NOTHING
    with pytest.raises(ValueError):
        b.path_challenge(bytes(11))
    with pytest.raises(ValueError):
        RudpStream(1, 0, 0.0).path_challenge(nonce)
    assert a.connected and b.connected
    pair.transfer(2000, 2000)


# -- path MTU discovery ----------------------------------------------------------------------------

def _mtu_pair(mtu: list[int], max_datagram: int = 16384) -> Pair:
    """A pair allowed datagrams up to ``max_datagram`` over a link that drops any longer than ``mtu[0]``."""
    pair = Pair(link={"max_len": max_datagram}, max_datagram=max_datagram)
    pair.link.drop = lambda direction, datagram: len(datagram) > mtu[0]
    pair.run(pair.connected, max_steps=1000)
    return pair


def _data_sizes(pair: Pair, out: list[int]) -> None:
    """Record the size of every data datagram a sends (wrapping the link)."""
    transmit = pair.link.transmit

    def spy(direction: int, datagram: bytes, now: float) -> None:
        if direction == 0 and datagram[1] & ACK and not datagram[1] & (PING | PROBE | PATH) and payload_len(datagram):
            out.append(len(datagram))
        transmit(direction, datagram, now)

    pair.link.transmit = spy  # type: ignore[method-assign]


def test_path_mtu_discovery_finds_the_largest_size_the_link_carries_and_uses_it() -> None:
    pair = _mtu_pair([9000])
    pair.run_for(5.0)  # the search: 1452 and 8952 answered, 16384 lost three times
    sizes: list[int] = []
    _data_sizes(pair, sizes)
    pair.transfer(MB, 0)
    assert pair.data[1] == pattern(MB, 1)  # byte-exact
    # Nearly all at the big rung (8952 less the SACK room they did not need); a few are cut
    # shorter by the peer's window edge.  1 MB took ~120 datagrams, not ~870.
    assert 8952 - 24 <= max(sizes) <= 8952 and sizes.count(max(sizes)) >= 0.9 * len(sizes), sorted(set(sizes))
    assert pair.a.retransmits == 0  # no data was ever sent at an untested size
    assert pair.a.dropped == pair.b.dropped == pair.a.malformed == pair.b.malformed == 0  # probes are no noise
    assert pair.a._pmtu.probes_sent <= 2 + 3 and pair.b._pmtu.probes_sent <= 2 + 3  # two answered, three lost


def test_without_max_datagram_a_stream_never_probes_and_stays_at_the_base_size() -> None:
    pair = connected_pair()  # the Link asserts every datagram is at most 1247 bytes
    pair.run_for(30.0)
    pair.transfer(100_000, 100_000)
    assert pair.a._pmtu.probes_sent == pair.b._pmtu.probes_sent == 0


def test_a_path_that_shrinks_falls_back_to_the_base_size_and_recuts_what_was_unacked() -> None:
    mtu = [65535]
    pair = _mtu_pair(mtu)
    pair.run_for(5.0)
    assert pair.a._pmtu.datagram == 16384
    pair.a.write(pattern(300_000, 3))
    pair.service(0)
    mtu[0] = 1500  # a route change: the big datagrams in flight, and every one after, vanish
    pair.run(lambda: len(pair.data[1]) >= 300_000, max_steps=50_000)
    assert bytes(pair.data[1]) == pattern(300_000, 3)
    assert pair.a._pmtu.datagram == MAX_DATAGRAM and pair.a.timeouts >= 2 and pair.a.connected


def test_probe_answers_only_count_for_the_probe_in_flight() -> None:
    pmtu = Pmtu(16384)
    assert pmtu.probe(0.0, 1.0) is None  # not started: the stream is not connected yet
    pmtu.start(0.0)
    probe_id, size = pmtu.probe(0.0, 1.0) or (0, 0)
    assert size == 1452 and pmtu.payload == MAX_PAYLOAD
    assert not pmtu.on_answer(probe_id + 1, size, 0.1)  # another probe's id
    assert not pmtu.on_answer(probe_id, 16384, 0.1)  # a size nobody probed
    assert pmtu.on_answer(probe_id, size, 0.1) and pmtu.datagram == 1452 and pmtu.payload == 1452 - 23 - 24
    assert not pmtu.on_answer(probe_id, size, 0.1)  # once
    with pytest.raises(ValueError):
        Pmtu(100)
    a = RudpStream(ID_A, ISN_A, 0.0, max_datagram=16384)
    s = connected_pair().b  # a connected stream answers a probe with its id and the size that arrived
    s.receive_datagram(pack_probe(ID_B, ID_A, 77, 3000), 0.0)
    [answer] = [d for d in s.datagrams_to_send(0.0) if d[1] & PROBE]
    assert header(answer)[1:] == (PROBE | ACK, ID_A, ID_B, 77, 3000, 0, 0) and a.local_id == ID_A
