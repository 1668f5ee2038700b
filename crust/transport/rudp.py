"""Reliable UDP (PROTOCOL.md §10): a sans-IO machine that turns datagrams into a TCP-like stream.

``RudpStream`` is one connection.  It reads no clock and touches no socket:
the owner (``transport.udp.RudpConnection``) feeds it datagrams and ``now``
(seconds), sends what ``datagrams_to_send`` returns, drains ``take_events``
and calls ``handle_timer`` at ``get_timer``.  After *every* call that can
change state the owner collects ``datagrams_to_send``, even if the stream
has just closed: the last ACK of a close and the RST of an abort leave so.

Theory of operation
-------------------
*Sequence space.*  As in TCP, sequence numbers count bytes and the SYN and
FIN take one each (ISN ``i``: SYN ``i``, stream byte ``k`` at ``i + 1 + k``).
The wire carries 32 bits; inside, offsets from the ISN are unbounded ints,
each received value unwrapped to the offset nearest ``rcv_nxt`` (seq) or
``snd_una`` (ack, SACK), exact while windows stay below 2**31.  Data is cut
into segments of at most ``MAX_PAYLOAD`` once and resent whole.

*Handshake and identity.*  SYN, SYN-ACK, ACK.  A stream that sent a SYN and
receives a plain SYN answers with a SYN-ACK, and a side is connected once its
SYN is acked, so crossing SYNs (simultaneous open) give each side one
``RudpConnected`` and one pair of ISNs.  SYNs are resent with RTO backoff
until ``connect_timeout``.  Each side picks a random nonzero 32-bit id; a
datagram whose ``dst`` is not ours (only a first SYN may say 0) or whose
``src`` is not the peer's is dropped, so a blind spoofer must guess 32 bits.

*Acknowledgements.*  Every datagram carries the cumulative ack, the window
and up to ``MAX_SACK_BLOCKS`` SACK ranges (the newest arrival's first, then
the lowest, RFC 2018).  What arrives between two ``datagrams_to_send`` calls
is acked once by that call, on data if any is sent; no delayed-ack timer.

*Retransmission.*  RFC 6298 (``RttEstimator``), sampling only segments sent
once (Karn) and only where the sample is unambiguous (see ``_on_ack``); an
ACK of new data also ends the backoff (RFC 9002), lest it compound over loss
episodes.  On expiry every unSACKed segment is marked lost, cwnd drops to
one segment and the RTO doubles (max 60 s).  ``MAX_RTO_RETRIES`` expiries in
a row, or ``idle_timeout`` with nothing heard, end the stream ("timed out").

*Congestion control*: NewReno (RFC 5681, 6582) driven by SACK (RFC 6675).
cwnd counts bytes; slow start adds what each ACK covers up to two segments
(RFC 3465), congestion avoidance a segment per cwnd acked.  A segment sent
once is lost when three SACKed segments lie above it, or it is first and
three duplicate ACKs (ACKs that SACK new data) came.  The first loss of data
sent since the last reduction starts recovery: ssthresh = cwnd =
max(FlightSize/2, 2 segments) until ``recover`` (highest seq sent) is acked;
a partial ACK resends the next hole if data above it was SACKed.  Lost
segments go first, and nothing leaves while ``in_flight`` (RFC 6675's pipe:
sent, not acked, SACKed or lost) plus its length would exceed cwnd.

*Receive window* = ``receive_window`` minus bytes held by ``pause_reading``.
Out-of-order data is kept only inside it, so held plus out-of-order bytes
never exceed ``receive_window``.  Held bytes grow only as ``rcv_nxt`` does,
so the right edge (ack + window) never moves left, and the sender keeps the
largest one seen (robust to reordered ACKs).  A sender with a closed window
and nothing in flight PINGs on a backed-off persist timer; the answering ACK
carries the window, and ``resume_reading`` sends one at once.

*Keep-alive.*  A connected stream that sent nothing for ``keepalive_interval``
sends a PING, which the peer answers with an ACK: both directions of the NAT
mapping see traffic and each side hears the other.  An unanswered PING is
repeated after an RTO, doubling up to ``keepalive_interval``.

*Closing.*  ``close()`` queues a FIN after the data; the peer's FIN, once
every byte before it is in, makes us queue ours (no half-close).  Our FIN
acked, theirs in and nothing held back: ``RudpClosed(None)``, after which
nothing but ``resume_reading`` is awaited.  There is no TIME_WAIT (the owner
forgets a closed stream), so the last ACK is sent twice, and a side whose
peer's FIN is in and whose only unacked segment is its FIN calls the close
orderly after ``_FIN_RETRIES`` timeouts with the peer silent.  ``abort()`` sends an RST and closes with no
event; a received RST gives ``RudpClosed("connection reset by peer")`` (or
"connection refused" in answer to our SYN).

*Hostile input* that does not parse is counted in ``malformed``; well-formed
datagrams failing a check (ids, acks for data never sent, data past the
window) in ``dropped``.  Neither raises nor grows state.

Wire format (big-endian; header 23 bytes, datagram at most ``MAX_DATAGRAM``)::

    offset size  field
    0      1     magic: 0xC5 = rudp version 1 (other first bytes belong to others
                 on the socket: 0xC3 beacons, ASCII for SSDP, probes)
    1      1     flags: 0x01 SYN, 0x02 ACK, 0x04 FIN, 0x08 RST, 0x10 PING
                 (answer with an ACK); the others must be 0
    2      4     dst: receiver's connection id (0 only in a SYN without ACK)
    6      4     src: sender's connection id (never 0)
    10     4     seq: sequence number of the first payload byte (or of the
                 SYN / FIN; in a bare ACK, PING or RST the sender's next seq)
    14     4     ack: next sequence number expected (meaningful with ACK, else 0)
    18     4     window: receive window in bytes, counted from ack
    22     1     n: number of SACK blocks, 0..3
    23     8*n   SACK blocks: u32 start, u32 end (end exclusive) of data
                 received above ack
    23+8n  rest  payload, 0..1200 bytes

Valid flag sets: SYN, SYN|ACK, ACK (+FIN, +PING), RST (+ACK).  SYN and RST
carry no payload.  Anything else -- short, wrong magic, unknown flags, n > 3,
SACK blocks past the end, payload over 1200 bytes, src 0 -- is malformed.
"""

from __future__ import annotations

import enum
import heapq
import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Union

__all__ = [
    "MAGIC",
    "MAX_PAYLOAD",
    "MAX_SACK_BLOCKS",
    "HEADER_SIZE",
    "MAX_DATAGRAM",
    "peek_ids",
    "RudpConnected",
    "RudpData",
    "RudpSent",
    "RudpClosed",
    "RudpEvent",
    "INITIAL_RTO",
    "MIN_RTO",
    "MAX_RTO",
    "MAX_RTO_RETRIES",
    "RttEstimator",
    "RudpStream",
]

MAGIC = 0xC5  # first byte of every rudp datagram, version 1 included: a new version takes a new byte
MAX_PAYLOAD = 1200  # bytes per datagram: stays below every sane path MTU, so no IP fragmentation
MAX_SACK_BLOCKS = 3  # per datagram, as TCP fits with timestamps; the sender remembers older ones
_HEADER = struct.Struct(">BBIIIIIB")  # magic, flags, dst, src, seq, ack, window, SACK count
_SACK = struct.Struct(">II")
HEADER_SIZE = _HEADER.size  # 23 bytes
MAX_DATAGRAM = HEADER_SIZE + MAX_SACK_BLOCKS * _SACK.size + MAX_PAYLOAD  # 1247 bytes

_SYN, _ACK, _FIN, _RST, _PING = 0x01, 0x02, 0x04, 0x08, 0x10
_VALID_FLAGS = frozenset({_SYN, _SYN | _ACK, _ACK, _ACK | _FIN, _ACK | _PING, _ACK | _FIN | _PING, _RST, _RST | _ACK})
_MASK = 0xFFFFFFFF
_HALF = 1 << 31

INITIAL_RTO = 1.0  # seconds, RFC 6298 (2.1): before any RTT sample, incl. SYNs
MIN_RTO = 0.2  # seconds: RFC 6298 asks 1 s, a user-space stack on a LAN does better with Linux's 200 ms
MAX_RTO = 60.0  # seconds, RFC 6298 (2.5)
_INITIAL_CWND = 10 * MAX_PAYLOAD  # bytes, RFC 6928's initial window of ten segments
_MIN_SSTHRESH = 2 * MAX_PAYLOAD  # bytes, RFC 5681
_MAX_CWND = 64 * 1024 * 1024  # bytes: the receive window limits anyway; this bounds the arithmetic
_ABC_LIMIT = 2 * MAX_PAYLOAD  # bytes slow start may add per ACK (RFC 3465's L = 2 segments)
_DUPTHRESH = 3  # duplicate ACKs (or SACKed segments above a hole) that mean "lost", RFC 5681
MAX_RTO_RETRIES = 8  # consecutive timeouts before the peer is dead (~100 s from the 200 ms floor, so a
#                      silent peer usually meets idle_timeout first; this catches one that answers but never acks)
_FIN_RETRIES = 3  # timeouts on a last FIN whose peer has closed too before calling the close orderly


def peek_ids(datagram: bytes) -> tuple[int, int, bool] | None:
    """``(dst_id, src_id, is_syn_without_ack)`` if this looks like an rudp datagram, else None.

    Cheap (checks the magic, the length and the flags only): the socket
    demultiplexer calls it on every datagram.
    """
    if len(datagram) < HEADER_SIZE or datagram[0] != MAGIC or datagram[1] not in _VALID_FLAGS:
        return None
    _, flags, dst, src, _, _, _, _ = _HEADER.unpack_from(datagram)
    return dst, src, flags == _SYN


@dataclass(frozen=True, slots=True)
class RudpConnected:
    """The handshake finished: the stream is connected."""


@dataclass(frozen=True, slots=True)
class RudpData:
    """In-order stream bytes from the peer."""

    data: bytes


@dataclass(frozen=True, slots=True)
class RudpSent:
    """The peer acknowledged ``nbytes`` more of the bytes we wrote."""

    nbytes: int


@dataclass(frozen=True, slots=True)
class RudpClosed:
    """The stream is closed: ``error`` None for an orderly close, else why ("timed out"...)."""

    error: str | None


RudpEvent = Union[RudpConnected, RudpData, RudpSent, RudpClosed]


class RttEstimator:
    """Smoothed RTT and retransmission timeout, exactly as RFC 6298 computes them.

    The first sample R gives SRTT = R, RTTVAR = R/2; later ones RTTVAR =
    3/4 RTTVAR + 1/4 |SRTT - R|, then SRTT = 7/8 SRTT + 1/8 R.  RTO = SRTT +
    4 RTTVAR, clamped to [MIN_RTO, MAX_RTO] (the clock is a float, so the
    granularity term G is 0).  Backoff doubles the RTO until a new sample.
    """

    __slots__ = ("srtt", "rttvar", "_base", "_backoff")

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self._base = INITIAL_RTO
        self._backoff = 1

    @property
    def rto(self) -> float:
        """The current retransmission timeout in seconds, backoff included."""
        return min(self._base * self._backoff, MAX_RTO)

    def sample(self, rtt: float) -> None:
        """Take one RTT measurement (seconds) of a segment that was sent once."""
        rtt = max(rtt, 0.0)
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self._base = min(max(self.srtt + 4 * self.rttvar, MIN_RTO), MAX_RTO)
        self._backoff = 1

    def back_off(self) -> None:
        """Double the RTO (a timeout fired), up to MAX_RTO."""
        if self._base * self._backoff < MAX_RTO:
            self._backoff *= 2

    def reset_backoff(self) -> None:
        """Forget the backoff without a sample: the path delivered something after all."""
        self._backoff = 1


class _Segment:
    """One sent segment: data (or a FIN) between offsets ``start`` and ``end``."""

    __slots__ = ("start", "end", "data", "fin", "sent_at", "xmits", "in_net", "sacked", "lost")

    def __init__(self, start: int, data: bytes, fin: bool) -> None:
        self.start = start
        self.end = start + (1 if fin else len(data))
        self.data = data
        self.fin = fin
        self.sent_at = 0.0
        self.xmits = 0
        self.in_net = False  # counted in in_flight: sent and not since acked, SACKed or lost
        self.sacked = False
        self.lost = False


class _State(enum.Enum):
    LISTEN = "listen"  # created; waits for connect() or a SYN
    SYN_SENT = "syn-sent"
    SYN_RCVD = "syn-received"
    ESTABLISHED = "established"  # also while closing: the FIN flags tell
    CLOSED = "closed"


def _unwrap(wire: int, ref: int, base: int) -> int:
    """The offset (from ``base``) nearest ``ref`` whose 32-bit wire value is ``wire``."""
    diff = (wire - base - ref) & _MASK
    return ref + diff - (1 << 32) if diff >= _HALF else ref + diff


class RudpStream:
    """One reliable-UDP connection as a sans-IO machine (see the module docstring)."""

    __slots__ = (
        "_local_id", "_remote_id", "_isn", "_irs", "_state", "_keepalive", "_idle_timeout",
        "_connect_timeout", "_capacity", "_events", "_rx_chunks", "_sent_acc",
        # sender
        "_send_buf", "_segs", "_lost", "_snd_una", "_snd_nxt", "_snd_right", "_in_flight", "_sacked_count",
        "_written", "_acked", "_fin_queued", "_fin_off", "_fin_acked", "_syn_pending", "_syn_sent_at",
        "_syn_xmits", "_rtt", "_cwnd", "_ssthresh", "_ca_acc", "_cwnd_limited", "_in_recovery", "_recover",
        "_high_sacked", "_dupacks", "_rto_deadline", "_consecutive_rtos", "_first_rto_at", "_persist_deadline",
        "_persist_interval",
        # receiver
        "_rcv_nxt", "_ooo", "_ooo_heap", "_ooo_bytes", "_last_ooo", "_peer_fin_off", "_peer_fin",
        "_paused", "_held", "_held_bytes", "_ack_pending", "_ping_pending", "_rst_pending",
        "_ping_at", "_ping_retry",
        # timers and counters
        "_handshake_deadline", "_last_heard", "_last_sent", "_retransmits", "_timeouts", "_malformed", "_dropped",
    )

    def __init__(
        self,
        local_id: int,
        initial_seq: int,
        now: float,
        *,
        keepalive_interval: float = 15.0,
        idle_timeout: float = 60.0,
        connect_timeout: float = 10.0,
        receive_window: float = 256 * 1024,
    ) -> None:
        """Create a stream in the listening state: call :meth:`connect`, or feed it a SYN.

        Args:
            local_id: our connection id, random, 1..2**32-1 (the caller's CSPRNG).
            initial_seq: our ISN, random, 0..2**32-1.
            now: the current time in seconds.
            keepalive_interval: seconds without sending after which a connected
                stream sends a PING (NAT mappings commonly expire after 30 s+).
            idle_timeout: seconds without hearing the peer after which the
                stream closes with "timed out".
            connect_timeout: seconds the handshake may take.
            receive_window: bytes the peer may have in flight to us; bounds our
                receive buffers (held while paused, plus out of order).  Typed
                float so an owner's ``dict[str, float]`` of options fits; the
                value is truncated to an int.

        Raises:
            ValueError: an id, ISN, duration or window is out of range.
        """
        window = int(receive_window)
        if not 0 < local_id <= _MASK:
            raise ValueError(f"local_id must be in 1..2**32-1, got {local_id}")
        if not 0 <= initial_seq <= _MASK:
            raise ValueError(f"initial_seq must be in 0..2**32-1, got {initial_seq}")
        if not MAX_PAYLOAD <= window < _HALF:  # below 2**31 keeps the 32-bit unwrapping exact
            raise ValueError(f"receive_window must be in {MAX_PAYLOAD}..2**31-1 bytes, got {receive_window}")
        if min(keepalive_interval, idle_timeout, connect_timeout) <= 0:
            raise ValueError("keepalive_interval, idle_timeout and connect_timeout must be positive")
        self._local_id = local_id
        self._remote_id = 0
        self._isn = initial_seq
        self._irs = 0
        self._state = _State.LISTEN
        self._keepalive = keepalive_interval
        self._idle_timeout = idle_timeout
        self._connect_timeout = connect_timeout
        self._capacity = window
        self._events: list[RudpEvent] = []
        self._rx_chunks: list[bytes] = []  # in-order data not yet in an RudpData event
        self._sent_acc = 0  # acked bytes not yet in an RudpSent event
        # Sender.  Offsets: 0 is our SYN, stream byte k is 1 + k.
        self._send_buf = bytearray()  # written, not yet cut into segments
        self._segs: OrderedDict[int, _Segment] = OrderedDict()  # start -> segment, unacked, in order
        self._lost: list[int] = []  # heap of starts of segments marked lost (may hold stale entries)
        self._snd_una = 0
        self._snd_nxt = 0
        self._snd_right = 1  # the largest right edge (ack + window) the peer advertised
        self._in_flight = 0  # bytes of segments with in_net set (RFC 6675's pipe)
        self._sacked_count = 0
        self._written = 0
        self._acked = 0
        self._fin_queued = False
        self._fin_off: int | None = None
        self._fin_acked = False
        self._syn_pending = False
        self._syn_sent_at = 0.0
        self._syn_xmits = 0
        self._rtt = RttEstimator()
        self._cwnd = _INITIAL_CWND
        self._ssthresh = _MAX_CWND
        self._ca_acc = 0  # bytes acked towards the next congestion-avoidance increase
        self._cwnd_limited = False
        self._in_recovery = False
        self._recover = 0
        self._high_sacked = 0  # the highest offset ever SACKed
        self._dupacks = 0
        self._rto_deadline: float | None = None
        self._consecutive_rtos = 0
        self._first_rto_at = 0.0  # when the current run of consecutive timeouts began
        self._persist_deadline: float | None = None
        self._persist_interval = 0.0
        # Receiver.  Offsets: 0 is the peer's SYN.
        self._rcv_nxt = 0
        self._ooo: dict[int, bytes] = {}  # start -> out-of-order data above rcv_nxt
        self._ooo_heap: list[int] = []
        self._ooo_bytes = 0
        self._last_ooo = 0  # start of the newest out-of-order segment: its SACK block goes first
        self._peer_fin_off: int | None = None
        self._peer_fin = False  # the peer's FIN is in, after all its data
        self._paused = False
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._ack_pending = False
        self._ping_pending = False
        self._rst_pending = False
        self._ping_at = now  # when the last PING left
        self._ping_retry = 0.0  # seconds before an unanswered PING is repeated
        self._handshake_deadline = now + connect_timeout
        self._last_heard = now
        self._last_sent = now
        self._retransmits = 0
        self._timeouts = 0
        self._malformed = 0
        self._dropped = 0

    # -- properties ------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True from the handshake's end until the stream closes (closing included)."""
        return self._state is _State.ESTABLISHED

    @property
    def closed(self) -> bool:
        """True once closed: ``RudpClosed`` was queued, or :meth:`abort` was called."""
        return self._state is _State.CLOSED

    @property
    def local_id(self) -> int:
        """Our connection id."""
        return self._local_id

    @property
    def remote_id(self) -> int:
        """The peer's connection id; 0 until its first datagram."""
        return self._remote_id

    @property
    def pending_bytes(self) -> int:
        """Bytes written but not yet acknowledged by the peer."""
        return self._written - self._acked

    @property
    def buffered_bytes(self) -> int:
        """Received bytes we hold: held back by :meth:`pause_reading` plus out of order."""
        return self._held_bytes + self._ooo_bytes

    @property
    def srtt(self) -> float | None:
        """Smoothed round-trip time in seconds; None before the first sample."""
        return self._rtt.srtt

    @property
    def rto(self) -> float:
        """Current retransmission timeout in seconds, backoff included."""
        return self._rtt.rto

    @property
    def cwnd(self) -> int:
        """Congestion window in bytes."""
        return self._cwnd

    @property
    def retransmits(self) -> int:
        """Segments sent again (fast retransmit, recovery and timeouts)."""
        return self._retransmits

    @property
    def timeouts(self) -> int:
        """Retransmission timer expiries with data outstanding."""
        return self._timeouts

    @property
    def malformed(self) -> int:
        """Datagrams dropped because they did not parse."""
        return self._malformed

    @property
    def dropped(self) -> int:
        """Well-formed datagrams (or their data) dropped: wrong ids, out of window, bogus acks."""
        return self._dropped

    # -- commands --------------------------------------------------------------

    def connect(self, now: float) -> None:
        """Active open: send a SYN.  A no-op unless the stream is fresh (a SYN may have come first)."""
        if self._state is not _State.LISTEN:
            return
        self._state = _State.SYN_SENT
        self._snd_nxt = 1
        self._syn_pending = True
        self._handshake_deadline = now + self._connect_timeout

    def write(self, data: bytes) -> None:
        """Queue stream bytes (without limit: the owner paces itself by ``RudpSent``).

        Writes after :meth:`close`, after the peer's FIN or once closed are
        ignored, as ``TcpStream.write`` ignores them: the owner closed, or
        will learn through ``RudpClosed``.  Writes before the handshake ends
        are sent once it does.
        """
        if self._fin_queued or self._state is _State.CLOSED or not data:
            return
        self._send_buf += data
        self._written += len(data)

    def close(self, now: float) -> None:
        """Close in order: FIN after the queued data; ``RudpClosed(None)`` when both FINs are acked."""
        if self._state is _State.CLOSED:
            return
        if self._state is _State.LISTEN:
            self._finish(None)
            return
        self._fin_queued = True

    def abort(self, now: float) -> None:
        """Reset: send an RST (if the peer is known) and close at once; no event follows, not even queued ones."""
        if self._state is _State.CLOSED:
            return
        self._rst_pending = self._remote_id != 0
        self._finish(None, event=False)
        self._events.clear()
        self._rx_chunks.clear()
        self._sent_acc = 0

    def pause_reading(self) -> None:
        """Hold back ``RudpData``; the advertised window shrinks as the held bytes grow."""
        self._paused = True

    def resume_reading(self) -> None:
        """Deliver what was held back and advertise the reopened window at once."""
        if not self._paused:
            return
        self._paused = False
        if self._held:
            self._rx_chunks.extend(self._held)
            self._held.clear()
            self._held_bytes = 0
            if self._state is _State.ESTABLISHED:
                self._ack_pending = True  # window update; the peer's persist probes are the fallback
        self._maybe_finish()

    def take_events(self) -> list[RudpEvent]:
        """Every event since the last call, in order."""
        self._flush_stream_events()
        events, self._events = self._events, []
        return events

    # -- timers ----------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The absolute time of the next deadline, or None."""
        state = self._state
        if state is _State.ESTABLISHED:
            if self._fin_acked and self._peer_fin:
                return None  # the network part is over: only resume_reading() is awaited
            when = self._last_heard + self._idle_timeout
            if not self._ping_pending:
                when = min(when, self._keepalive_deadline())
            if self._rto_deadline is not None:
                when = min(when, self._rto_deadline)
            if self._persist_deadline is not None:
                when = min(when, self._persist_deadline)
            return when
        if state is _State.SYN_SENT or state is _State.SYN_RCVD:
            if self._rto_deadline is not None:
                return min(self._handshake_deadline, self._rto_deadline)
            return self._handshake_deadline
        return None

    def handle_timer(self, now: float) -> None:
        """Act on every deadline that has passed (early calls are harmless)."""
        state = self._state
        if state is _State.SYN_SENT or state is _State.SYN_RCVD:
            if now >= self._handshake_deadline:
                # A peer that got our SYN-ACK may think it is connected: tell it (best effort).
                self._rst_pending = state is _State.SYN_RCVD
                self._finish("connect timed out")
            elif self._rto_deadline is not None and now >= self._rto_deadline:
                self._rtt.back_off()
                self._syn_pending = True
                self._rto_deadline = None  # re-armed when the SYN leaves
            return
        if state is not _State.ESTABLISHED or (self._fin_acked and self._peer_fin):
            return
        if now >= self._last_heard + self._idle_timeout:
            self._finish("timed out")
            return
        if self._rto_deadline is not None and now >= self._rto_deadline:
            self._on_rto(now)
            if self._state is _State.CLOSED:
                return
        if self._persist_deadline is not None and now >= self._persist_deadline:
            self._ping_pending = True
            self._persist_interval = min(self._persist_interval * 2, MAX_RTO)
            self._persist_deadline = now + self._persist_interval
        if now >= self._keepalive_deadline():
            self._ping_pending = True

    def _keepalive_deadline(self) -> float:
        if self._ping_at <= self._last_heard:  # our last PING was answered (or the peer spoke since)
            return self._last_sent + self._keepalive
        # Unanswered: retry sooner, as TCP's keepalive probes do, so that a few lost
        # datagrams in a row cannot starve a live peer into the idle timeout.
        return self._ping_at + self._ping_retry

    def _on_rto(self, now: float) -> None:
        self._timeouts += 1
        self._consecutive_rtos += 1
        if self._consecutive_rtos == 1:
            self._first_rto_at = now
        if self._peer_fin and self._snd_una == self._fin_off and self._consecutive_rtos > _FIN_RETRIES \
                and self._last_heard < self._first_rto_at:
            # All was delivered both ways and only our FIN is unacked; the peer has been
            # silent since we began resending it, so it most likely finished and its last
            # ACK was lost (there is no TIME_WAIT).  Unacked *data* never ends this way:
            # a peer with nothing to send is silent too, and data must not be given up on.
            self._finish(None)
            return
        if self._consecutive_rtos > MAX_RTO_RETRIES:
            self._finish("timed out")
            return
        if self._consecutive_rtos == 1:  # RFC 5681 (4): halve only for the first timeout in a row
            self._ssthresh = max((self._snd_nxt - self._snd_una) // 2, _MIN_SSTHRESH)
        self._cwnd = MAX_PAYLOAD
        self._ca_acc = 0
        self._in_recovery = False
        self._recover = self._snd_nxt  # losses of data sent before now must not reduce cwnd again
        self._dupacks = 0
        self._rtt.back_off()
        lost = []
        for seg in self._segs.values():
            if not seg.sacked:
                seg.in_net = False
                seg.lost = True
                lost.append(seg.start)
        self._lost = lost  # ascending, hence a valid heap
        self._in_flight = 0  # SACKed and lost segments are not in the pipe
        self._rto_deadline = now + self._rtt.rto

    # -- receiving ---------------------------------------------------------------

    def receive_datagram(self, datagram: bytes, now: float) -> None:
        """Take one datagram addressed to this stream (a SYN included).  Never raises."""
        if self._state is _State.CLOSED:
            return
        size = len(datagram)
        if size < HEADER_SIZE or datagram[0] != MAGIC:
            self._malformed += 1
            return
        _, flags, dst, src, seq, ack, window, nsack = _HEADER.unpack_from(datagram)
        payload_at = HEADER_SIZE + nsack * _SACK.size
        if (flags not in _VALID_FLAGS or nsack > MAX_SACK_BLOCKS or payload_at > size
                or size - payload_at > MAX_PAYLOAD or src == 0
                or (flags & (_SYN | _RST) and size > payload_at)):
            self._malformed += 1
            return
        if (dst != self._local_id and not (dst == 0 and flags == _SYN)) \
                or (self._remote_id and src != self._remote_id):
            self._dropped += 1
            return
        if flags & _RST:
            self._on_rst(flags, seq, ack)
            return
        if flags & _SYN:
            self._on_syn(flags, src, seq, ack, window, now)
            return
        state = self._state
        if state is _State.SYN_RCVD:
            if ack != (self._isn + 1) & _MASK:
                self._dropped += 1
                return
            self._establish(now)
        elif state is not _State.ESTABLISHED:
            self._dropped += 1  # LISTEN and SYN_SENT only take SYNs
            return
        sacks = [_SACK.unpack_from(datagram, HEADER_SIZE + i * _SACK.size) for i in range(nsack)]
        self._on_segment(flags, seq, ack, window, sacks, datagram[payload_at:] if size > payload_at else b"", now)

    def _on_syn(self, flags: int, src: int, seq: int, ack: int, window: int, now: float) -> None:
        state = self._state
        if flags & _ACK and ack != (self._isn + 1) & _MASK:
            self._dropped += 1  # acks a SYN we never sent
            return
        if state is _State.LISTEN or state is _State.SYN_SENT:
            if state is _State.LISTEN and flags & _ACK:
                self._dropped += 1
                return
            self._remote_id = src
            self._irs = seq
            self._rcv_nxt = 1
            self._snd_nxt = 1
            self._snd_right = 1 + window
            self._last_heard = now
            if flags & _ACK:  # our SYN answered
                self._establish(now)
                self._ack_pending = True
            else:  # passive open, or the SYNs crossed: answer with a SYN-ACK
                if state is _State.LISTEN:
                    self._handshake_deadline = now + self._connect_timeout
                self._state = _State.SYN_RCVD
                self._syn_pending = True
            return
        if seq != self._irs:
            self._dropped += 1  # a SYN of some other connection attempt
            return
        self._last_heard = now
        if state is _State.SYN_RCVD:
            if flags & _ACK:  # crossing SYN-ACK in a simultaneous open
                self._snd_right = max(self._snd_right, 1 + window)
                self._establish(now)
                self._ack_pending = True
            else:
                self._syn_pending = True  # our SYN-ACK was lost: resend it
        else:
            # A late SYN or SYN-ACK.  The peer got our SYN (it acked it), so it is at
            # least in SYN_RCVD, and a bare ACK is all it can still be waiting for.
            self._ack_pending = True

    def _establish(self, now: float) -> None:
        self._state = _State.ESTABLISHED
        self._snd_una = 1
        if self._syn_xmits == 1:
            self._rtt.sample(now - self._syn_sent_at)
        else:
            self._rtt.reset_backoff()
        self._syn_pending = False
        self._rto_deadline = None
        self._recover = 1
        self._last_heard = now
        self._events.append(RudpConnected())

    def _on_rst(self, flags: int, seq: int, ack: int) -> None:
        state = self._state
        if state is _State.LISTEN:
            accept = False
        elif state is _State.SYN_SENT:  # the peer's id is unknown: the RST must ack our SYN
            accept = bool(flags & _ACK) and ack == (self._isn + 1) & _MASK
        else:  # seq must be where the peer's data ends, inside our window
            off = _unwrap(seq, self._rcv_nxt, self._irs)
            accept = self._rcv_nxt <= off <= self._rcv_nxt + self._window() + 1
        if not accept:
            self._dropped += 1
            return
        self._ack_pending = False
        self._finish("connection refused" if state is _State.SYN_SENT else "connection reset by peer")

    def _on_segment(self, flags: int, seq: int, ack: int, window: int, sacks: list[tuple[int, int]],
                    payload: bytes, now: float) -> None:
        ack_off = _unwrap(ack, self._snd_una, self._isn)
        if ack_off > self._snd_nxt:
            self._dropped += 1  # acks data never sent: spoofed or broken
            return
        self._last_heard = now
        if ack_off >= self._snd_una:
            self._on_ack(ack_off, window, sacks, now)
        if payload or flags & _FIN:
            self._on_data(_unwrap(seq, self._rcv_nxt, self._irs), payload, bool(flags & _FIN))
        if flags & _PING:
            self._ack_pending = True
        self._maybe_finish()

    def _on_ack(self, ack_off: int, window: int, sacks: list[tuple[int, int]], now: float) -> None:
        opened = ack_off + window > self._snd_right
        if opened:
            self._snd_right = ack_off + window
            self._persist_deadline = None
        segs = self._segs
        # RTT samples need a segment sent once (Karn) that arrived just before this ACK
        # was sent.  Without timestamps that is known only of the first SACK block (the
        # receiver puts the newest arrival there) and of a cumulative ACK with no holes,
        # retransmissions or suspected losses around (Linux's FLAG_RETRANS_DATA_ACKED):
        # otherwise the segment may have arrived long ago and its ACKs been lost.
        sample_at = -1.0
        cumulative_sample = not sacks and not self._sacked_count
        newly_sacked = False
        una, nxt = self._snd_una, self._snd_nxt
        for i, (start_wire, end_wire) in enumerate(sacks):
            start = _unwrap(start_wire, una, self._isn)
            end = _unwrap(end_wire, una, self._isn)
            if not una < start < end <= nxt:
                continue  # stale or bogus: ignore the block
            seg = segs.get(start)
            while seg is not None and seg.end <= end:
                if not seg.sacked:
                    if i == 0 and seg.xmits == 1 and not seg.lost and seg.sent_at > sample_at:
                        sample_at = seg.sent_at
                    seg.sacked = newly_sacked = True
                    seg.lost = False
                    self._sacked_count += 1
                    if seg.in_net:
                        seg.in_net = False
                        self._in_flight -= seg.end - seg.start
                    if seg.end > self._high_sacked:
                        self._high_sacked = seg.end
                seg = segs.get(seg.end)
        if ack_off > una:
            cum_sample_at = -1.0
            while segs:
                seg = next(iter(segs.values()))
                if seg.end > ack_off:
                    break
                segs.popitem(last=False)
                if seg.in_net:
                    self._in_flight -= seg.end - seg.start
                if seg.sacked:
                    self._sacked_count -= 1
                elif seg.xmits > 1 or seg.lost:
                    cumulative_sample = False
                elif seg.sent_at > cum_sample_at:
                    cum_sample_at = seg.sent_at
            if cumulative_sample:
                sample_at = max(sample_at, cum_sample_at)
            self._snd_una = ack_off
            data_end = self._fin_off if self._fin_off is not None else ack_off
            acked_total = min(ack_off, data_end) - 1
            self._sent_acc += acked_total - self._acked
            self._acked = acked_total
            if self._fin_off is not None and ack_off > self._fin_off:
                self._fin_acked = True
            self._consecutive_rtos = 0
            self._dupacks = 0
            if self._in_recovery:
                if ack_off >= self._recover:
                    self._in_recovery = False
                    self._cwnd = self._ssthresh
                elif segs:  # NewReno partial ACK: the next hole, if data above it arrived, was lost too
                    first = next(iter(segs.values()))
                    if first.xmits == 1 and not first.sacked and not first.lost and first.end <= self._high_sacked:
                        self._mark_lost(first)
            elif self._cwnd_limited:
                acked = ack_off - una
                if self._cwnd < self._ssthresh:  # RFC 3465: a hole-filling ACK may cover much more
                    self._cwnd = min(self._cwnd + min(acked, _ABC_LIMIT), _MAX_CWND)
                else:
                    self._ca_acc += acked
                    if self._ca_acc >= self._cwnd:
                        self._ca_acc -= self._cwnd
                        self._cwnd = min(self._cwnd + MAX_PAYLOAD, _MAX_CWND)
        elif newly_sacked:
            self._dupacks += 1  # RFC 6675: a duplicate ACK SACKs new data (a duplicated datagram does not)
        if sample_at >= 0:
            self._rtt.sample(now - sample_at)
        elif ack_off > una:
            # New data acked proves the path works.  Karn forbids a sample from a
            # retransmission, but keeping the backoff would compound it over every
            # loss episode in a row; RFC 9002 (6.2.1) resets it here too.
            self._rtt.reset_backoff()
        if ack_off > una:
            self._rto_deadline = now + self._rtt.rto if segs else None  # RFC 6298 (5.2), (5.3)
        if segs and newly_sacked:
            self._detect_losses()

    def _detect_losses(self) -> None:
        """Mark lost what SACKs prove lost; reduce cwnd once per window of data (RFC 6675, 6582).

        A segment sent once is lost when DupThresh SACKed segments lie above it
        (IsLost), or when it is the first one and DupThresh duplicate ACKs came.
        Retransmissions are never judged this way: one that is lost again waits
        for the RTO, as in RFC 6675.
        """
        newest = -1
        above = 0
        for seg in reversed(self._segs.values()):
            if seg.sacked:
                above += 1
            elif above >= _DUPTHRESH and seg.xmits == 1 and not seg.lost:
                self._mark_lost(seg)
                newest = max(newest, seg.start)
        first = next(iter(self._segs.values()))
        if self._dupacks >= _DUPTHRESH and first.xmits == 1 and not first.sacked and not first.lost:
            self._mark_lost(first)
            newest = max(newest, first.start)
        if newest >= self._recover and not self._in_recovery:  # data sent after the last reduction
            self._ssthresh = max((self._snd_nxt - self._snd_una) // 2, _MIN_SSTHRESH)
            self._cwnd = self._ssthresh
            self._ca_acc = 0
            self._in_recovery = True
            self._recover = self._snd_nxt

    def _mark_lost(self, seg: _Segment) -> None:
        if seg.in_net:
            seg.in_net = False
            self._in_flight -= seg.end - seg.start
        seg.lost = True
        heapq.heappush(self._lost, seg.start)

    def _window(self) -> int:
        return self._capacity - self._held_bytes

    def _on_data(self, seq_off: int, payload: bytes, fin: bool) -> None:
        self._ack_pending = True  # even duplicates: our ACK may be what was lost
        rcv_nxt = self._rcv_nxt
        end = seq_off + len(payload)
        window = self._window()
        if end > rcv_nxt + window or (self._peer_fin_off is not None and end > self._peer_fin_off) \
                or (fin and self._peer_fin_off not in (None, end)):
            self._dropped += 1  # past the window, or past / moving the peer's FIN
            return
        if self._peer_fin or end < rcv_nxt or (end == rcv_nxt and not fin):
            return  # old news
        if fin:
            self._peer_fin_off = end
        if seq_off <= rcv_nxt:
            if end > rcv_nxt:
                self._deliver(payload[rcv_nxt - seq_off:] if seq_off < rcv_nxt else payload)
                self._rcv_nxt = end
            self._drain_out_of_order()
        elif payload and seq_off not in self._ooo and self._ooo_bytes + len(payload) <= window:
            self._ooo[seq_off] = payload
            heapq.heappush(self._ooo_heap, seq_off)
            self._ooo_bytes += len(payload)
            self._last_ooo = seq_off
        if self._peer_fin_off == self._rcv_nxt:
            self._rcv_nxt += 1
            self._peer_fin = True
            self._fin_queued = True  # no half-close: answer the FIN with ours

    def _drain_out_of_order(self) -> None:
        heap, ooo = self._ooo_heap, self._ooo
        while heap and heap[0] <= self._rcv_nxt:
            start = heapq.heappop(heap)
            data = ooo.pop(start)
            self._ooo_bytes -= len(data)
            end = start + len(data)
            if end > self._rcv_nxt:
                self._deliver(data[self._rcv_nxt - start:])
                self._rcv_nxt = end

    def _deliver(self, data: bytes) -> None:
        if self._paused:
            self._held.append(data)
            self._held_bytes += len(data)
        else:
            self._rx_chunks.append(data)

    def _maybe_finish(self) -> None:
        if self._fin_acked and self._peer_fin and not self._held and self._state is _State.ESTABLISHED:
            self._finish(None)

    def _finish(self, error: str | None, *, event: bool = True) -> None:
        self._state = _State.CLOSED
        if error is not None:
            self._ack_pending = False
        if event:
            self._flush_stream_events()
            self._events.append(RudpClosed(error))
        self._send_buf = bytearray()
        self._segs.clear()
        self._lost.clear()
        self._ooo.clear()
        self._ooo_heap.clear()
        self._ooo_bytes = 0
        self._rto_deadline = self._persist_deadline = None
        self._syn_pending = self._ping_pending = False

    def _flush_stream_events(self) -> None:
        if self._sent_acc:
            self._events.append(RudpSent(self._sent_acc))
            self._sent_acc = 0
        if self._rx_chunks:
            chunks = self._rx_chunks
            self._events.append(RudpData(chunks[0] if len(chunks) == 1 else b"".join(chunks)))
            chunks.clear()

    # -- sending -----------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """Everything to transmit now: SYNs, data within min(cwnd, window), ACKs, PINGs, FIN, RST."""
        out: list[bytes] = []
        state = self._state
        if state is _State.ESTABLISHED:
            self._send_established(now, out)
        elif state is _State.SYN_SENT or state is _State.SYN_RCVD:
            if self._syn_pending:
                self._syn_pending = False
                if state is _State.SYN_SENT:
                    out.append(_HEADER.pack(MAGIC, _SYN, 0, self._local_id, self._isn, 0, self._window(), 0))
                else:
                    out.append(self._bare(_SYN | _ACK, self._isn, b"", 0))
                self._syn_sent_at = now
                self._syn_xmits += 1
                self._rto_deadline = now + self._rtt.rto
        elif state is _State.CLOSED and self._remote_id:
            if self._rst_pending:
                out.append(self._bare(_RST | _ACK, (self._isn + self._snd_nxt) & _MASK, b"", 0))
            elif self._ack_pending:  # the last ACK of a close: nothing will repeat it, so send it twice
                out += [self._bare(_ACK, (self._isn + self._snd_nxt) & _MASK, b"", 0)] * 2
            self._rst_pending = self._ack_pending = False
        if out:
            self._last_sent = now
        return out

    def _bare(self, flags: int, seq: int, sack: bytes, nsack: int) -> bytes:
        """A datagram without payload, acking what we have."""
        ack = (self._irs + self._rcv_nxt) & _MASK
        return _HEADER.pack(MAGIC, flags, self._remote_id, self._local_id, seq, ack, self._window(), nsack) + sack

    def _sack_blocks(self) -> tuple[bytes, int]:
        """Up to MAX_SACK_BLOCKS ranges above rcv_nxt: the newest first, then the lowest."""
        if not self._ooo:
            return b"", 0
        ranges: list[list[int]] = []
        for start in sorted(self._ooo):
            end = start + len(self._ooo[start])
            if ranges and start <= ranges[-1][1]:
                ranges[-1][1] = max(ranges[-1][1], end)
            else:
                ranges.append([start, end])
        newest = next((r for r in ranges if r[0] <= self._last_ooo < r[1]), ranges[0])
        chosen = [newest] + [r for r in ranges if r is not newest][: MAX_SACK_BLOCKS - 1]
        irs = self._irs
        return b"".join(_SACK.pack((irs + s) & _MASK, (irs + e) & _MASK) for s, e in chosen), len(chosen)

    def _send_established(self, now: float, out: list[bytes]) -> None:
        sack, nsack = self._sack_blocks()
        pack = _HEADER.pack
        ack = (self._irs + self._rcv_nxt) & _MASK
        window = self._window()
        remote, local, isn = self._remote_id, self._local_id, self._isn
        segs, lost, cwnd = self._segs, self._lost, self._cwnd

        def emit(seg: _Segment) -> None:
            flags = _ACK | _FIN if seg.fin else _ACK
            out.append(pack(MAGIC, flags, remote, local, (isn + seg.start) & _MASK, ack, window, nsack)
                       + sack + seg.data)
            seg.sent_at = now
            seg.xmits += 1
            if not seg.in_net:
                seg.in_net = True
                self._in_flight += seg.end - seg.start
            if self._rto_deadline is None:  # RFC 6298 (5.1)
                self._rto_deadline = now + self._rtt.rto

        # 1. Lost segments first, oldest first, as the pipe allows.
        self._cwnd_limited = False
        while lost:
            seg = segs.get(lost[0])
            if seg is None or not seg.lost:
                heapq.heappop(lost)  # acked, SACKed or resent since
                continue
            if self._in_flight and self._in_flight + (seg.end - seg.start) > cwnd:
                self._cwnd_limited = True  # and new data must not overtake the holes
                break
            heapq.heappop(lost)
            seg.lost = False
            self._retransmits += 1
            emit(seg)
        # 2. New data (then the FIN), within both windows.
        buf = self._send_buf
        window_blocked = False
        while self._fin_off is None and not self._cwnd_limited:
            size = min(len(buf), MAX_PAYLOAD)
            if size == 0:
                if not self._fin_queued:
                    break
                # The FIN takes no buffer at the peer, so it ignores the receive window.
                if self._in_flight and self._in_flight + 1 > cwnd:
                    self._cwnd_limited = True
                    break
                seg = _Segment(self._snd_nxt, b"", True)
                self._fin_off = seg.start
            else:
                room = self._snd_right - self._snd_nxt
                if room <= 0:
                    window_blocked = True
                    break
                size = min(size, room)
                if self._in_flight and self._in_flight + size > cwnd:
                    self._cwnd_limited = True
                    break
                seg = _Segment(self._snd_nxt, bytes(buf[:size]), False)
                del buf[:size]  # O(1) at the front of a bytearray in CPython
            segs[seg.start] = seg
            self._snd_nxt = seg.end
            emit(seg)
        # 3. A closed window with nothing in flight gets no ACK to reopen it: probe.
        if window_blocked and not segs:
            if self._persist_deadline is None:
                self._persist_interval = self._rtt.rto
                self._persist_deadline = now + self._persist_interval
        elif not window_blocked:
            self._persist_deadline = None
        # 4. A bare ACK if nothing above carried one; a PING asks the peer to answer.
        if out:
            self._ping_pending = False
        elif self._ack_pending or self._ping_pending:
            flags = _ACK
            if self._ping_pending:
                flags |= _PING
                unanswered = self._ping_at > self._last_heard
                self._ping_retry = min(self._ping_retry * 2, self._keepalive) if unanswered else self._rtt.rto
                self._ping_at = now
            out.append(pack(MAGIC, flags, remote, local, (isn + self._snd_nxt) & _MASK, ack, window, nsack) + sack)
            self._ping_pending = False
        self._ack_pending = False
