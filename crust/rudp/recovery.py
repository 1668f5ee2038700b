"""rUDP loss recovery: RTT estimation, the SACK scoreboard, NewReno congestion control, the RTO.

``Recovery`` is the sender's view of what is in the network.  The stream
cuts its bytes into :class:`Segment` s, tells ``Recovery`` each time one
leaves (:meth:`Recovery.on_sent`) and hands it every acknowledgement
(:meth:`Recovery.on_ack`) and retransmission timeout
(:meth:`Recovery.on_timeout`); ``Recovery`` answers with ``cwnd``, the
``lost`` queue and ``rto_deadline``.  Offsets count bytes from the ISN
(the stream's sequence space); nothing here reads a clock.

Theory of operation
-------------------
*Scoreboard.*  ``segs`` holds every segment sent and not cumulatively acked,
in order, keyed by start offset.  A segment is SACKed (the receiver holds
it above a hole), lost (declared so, queued in ``lost`` for resending), or
in the network; ``in_flight`` is RFC 6675's pipe: bytes sent and not since
acked, SACKed or lost.

*RTT samples* (RFC 6298, :class:`RttEstimator`) come only from segments sent
once (Karn), and only where the sample is unambiguous.  Without timestamps
that is known only of the first SACK block (the receiver puts the newest
arrival there) and of a cumulative ACK with no holes, retransmissions or
suspected losses around (Linux's FLAG_RETRANS_DATA_ACKED): otherwise the
segment may have arrived long ago and its ACKs been lost.  An ACK of new
data also ends the backoff (RFC 9002), lest it compound over loss episodes.

*Time-based loss detection* (``rack.py``, RFC 8985): a segment, sent once
or again, is lost when one sent after it was delivered and its own round
trip plus a reordering window has passed; a timer looks again when a
candidate's time is not yet up.  This finds lost retransmissions, which
the counting rules below never judge.  *Tail-loss probe*: when no ACK came
for ~2 SRTT with data outstanding, the newest unSACKed segment is sent
again (``probe``, outside cwnd); the ACK it draws lets RACK find the lost
tail instead of the RTO.  Probes back off (each waits twice as long) while
nothing is delivered, and stop at the RTO until data is delivered again
(RFC 9002's PTO, without its window collapse).

*Retransmission.*  The RTO stays the last resort.  On expiry every unSACKed segment is marked lost, cwnd drops
to one segment and the RTO doubles (max 60 s).  The stream ends itself after
``MAX_RTO_RETRIES`` expiries in a row (see ``stream.py``).

*Congestion control*: NewReno (RFC 5681, 6582) driven by SACK (RFC 6675).
cwnd counts bytes; slow start adds what each ACK covers up to two segments
(RFC 3465), congestion avoidance a segment per cwnd acked.  A segment sent
once is lost when three SACKed segments lie above it, or it is first and
three duplicate ACKs (ACKs that SACK new data) came.  The first loss of data
sent since the last reduction starts recovery: ssthresh = cwnd =
max(FlightSize/2, 2 segments) until ``recover`` (highest seq sent) is acked;
a partial ACK resends the next hole if data above it was SACKed.  Lost
segments go first, and nothing leaves while ``in_flight`` plus its length
would exceed cwnd (the stream's sender loop enforces both).
"""

from __future__ import annotations

import heapq
from collections import OrderedDict

from .packet import MAX_PAYLOAD
from .rack import Rack, probe_timeout

__all__ = [
    "INITIAL_RTO",
    "MIN_RTO",
    "MAX_RTO",
    "MAX_RTO_RETRIES",
    "RttEstimator",
    "Segment",
    "Recovery",
]

INITIAL_RTO = 1.0  # seconds, RFC 6298 (2.1): before any RTT sample, incl. SYNs
MIN_RTO = 0.2  # seconds: RFC 6298 asks 1 s, a user-space stack on a LAN does better with Linux's 200 ms
MAX_RTO = 60.0  # seconds, RFC 6298 (2.5)
MAX_RTO_RETRIES = 8  # consecutive timeouts before the peer is dead (~100 s from the 200 ms floor, so a
#                      silent peer usually meets idle_timeout first; this catches one that answers but never acks)
_INITIAL_CWND = 10 * MAX_PAYLOAD  # bytes, RFC 6928's initial window of ten segments
_MAX_CWND = 64 * 1024 * 1024  # bytes: the receive window limits anyway; this bounds the arithmetic
_DUPTHRESH = 3  # duplicate ACKs (or SACKed segments above a hole) that mean "lost", RFC 5681


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


class Segment:
    """One sent segment: data (or a FIN) between offsets ``start`` and ``end``; resent whole."""

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


class Recovery:
    """The sender's scoreboard, RTT estimate, congestion window and retransmission timer.

    Attributes (read, and where noted written, by the stream's sender loop):
        rtt: the RFC 6298 estimator.
        segs: unacked segments in order, start offset -> :class:`Segment`.
        lost: a heap of starts of segments marked lost (may hold stale entries).
        in_flight: bytes in the network (RFC 6675's pipe).
        cwnd: the congestion window in bytes.
        cwnd_limited: set by the sender when cwnd (not the data) stopped it;
            only then may an ACK grow cwnd.
        rto_deadline: when the retransmission timer fires, or None.
        consecutive_rtos: timeouts since new data was last acked.
        retransmits, timeouts: counters for the stream's properties.
        mss: the largest segment in bytes (written by the stream, see pmtu.py).
        rack: RACK's state (``rack.py``).
        probe: a tail-loss probe the sender must send now (outside cwnd), or None.
        probe_deadline: when the next probe is due if no ACK comes, or None.
        probes, probing: probes since data was last delivered; False from an RTO until then.
    """

    __slots__ = (
        "rtt", "segs", "lost", "in_flight", "sacked_count", "cwnd", "ssthresh", "ca_acc", "cwnd_limited",
        "in_recovery", "recover", "high_sacked", "dupacks", "rto_deadline", "consecutive_rtos", "first_rto_at",
        "retransmits", "timeouts", "mss", "rack", "probe", "probe_deadline", "probes", "probing",
    )

    def __init__(self) -> None:
        self.rtt = RttEstimator()
        self.segs: OrderedDict[int, Segment] = OrderedDict()
        self.lost: list[int] = []
        self.in_flight = 0
        self.sacked_count = 0
        self.cwnd = _INITIAL_CWND
        self.ssthresh = _MAX_CWND
        self.ca_acc = 0  # bytes acked towards the next congestion-avoidance increase
        self.cwnd_limited = False
        self.in_recovery = False
        self.recover = 0  # losses below this offset do not reduce cwnd again
        self.high_sacked = 0  # the highest offset ever SACKed
        self.dupacks = 0
        self.rto_deadline: float | None = None
        self.consecutive_rtos = 0
        self.first_rto_at = 0.0  # when the current run of consecutive timeouts began
        self.retransmits = 0
        self.timeouts = 0
        self.mss = MAX_PAYLOAD  # bytes per segment: the stream raises it as the path allows (pmtu.py)
        self.rack = Rack()
        self.probe: Segment | None = None  # the tail-loss probe to send now, outside cwnd
        self.probe_deadline: float | None = None  # when to probe if no ACK came
        self.probes = 0  # probes sent since data was last delivered: each waits twice as long
        self.probing = True  # off from an RTO until data is delivered again

    # -- sending ---------------------------------------------------------------------

    def on_sent(self, seg: Segment, now: float) -> None:
        """``seg`` left (first time or again): it is in the network, and the RTO runs."""
        seg.sent_at = now
        seg.xmits += 1
        if not seg.in_net:
            seg.in_net = True
            self.in_flight += seg.end - seg.start
        if self.rto_deadline is None:  # RFC 6298 (5.1)
            self.rto_deadline = now + self.rtt.rto
        if self.probing:
            self._arm_probe(now)

    def _arm_probe(self, now: float) -> None:
        if self.segs:
            self.probe_deadline = now + probe_timeout(self.rtt.srtt, self.rtt.rto) * (1 << self.probes)
        else:
            self.probe_deadline = None

    @property
    def loss_deadline(self) -> float | None:
        """When :meth:`on_loss_timer` has work (RACK's reordering window or the probe), or None."""
        rack, probe = self.rack.deadline, self.probe_deadline
        if probe is not None and (self.rto_deadline is None or probe < self.rto_deadline):
            return probe if rack is None else min(rack, probe)
        return rack

    def on_established(self, now: float, syn_sent_at: float, syn_xmits: int) -> None:
        """Our SYN was acked: sample its RTT if it was sent once, and start the data's sequence space."""
        if syn_xmits == 1:
            self.rtt.sample(now - syn_sent_at)
        else:
            self.rtt.reset_backoff()
        self.rto_deadline = None
        self.recover = 1

    # -- acknowledgements --------------------------------------------------------------

    def on_ack(self, una: int, ack_off: int, sacks: list[tuple[int, int]], snd_nxt: int, now: float) -> None:
        """Take one ACK: cumulative ``ack_off`` (>= ``una``) and SACK blocks (offsets, wire order).

        The steps: the SACK blocks update the scoreboard; segments below
        ``ack_off`` leave it; new data acked moves the window (or recovery
        on); an RTT sample, else the end of the backoff; the RTO re-armed;
        and, if something new was SACKed, loss detection.
        """
        cumulative_sample = not sacks and not self.sacked_count  # decided before the blocks change it
        sacked_before = self.sacked_count
        sample_at = self._on_sack_blocks(sacks, una, snd_nxt, now) if sacks else -1.0
        newly_sacked = self.sacked_count > sacked_before
        advanced = ack_off > una
        if advanced:
            cum_sample_at = self._remove_acked(ack_off, now)
            if cumulative_sample and cum_sample_at > sample_at:
                sample_at = cum_sample_at
            self._on_new_data_acked(una, ack_off)
        elif newly_sacked:
            self.dupacks += 1  # RFC 6675: a duplicate ACK SACKs new data (a duplicated datagram does not)
        self._update_rtt(sample_at, advanced, now)
        if advanced:
            self.rto_deadline = now + self.rtt.rto if self.segs else None  # RFC 6298 (5.2), (5.3)
        if advanced or newly_sacked:
            self.probes = 0
            self.probing = True
            self._arm_probe(now)
            if self.segs:
                self._detect_losses(ack_off, snd_nxt, now, newly_sacked)
            else:
                self.rack.deadline = None

    def on_loss_timer(self, now: float, snd_una: int, snd_nxt: int) -> None:
        """RACK's reordering window ran out, or the tail-loss probe is due (see :attr:`loss_deadline`)."""
        rack_deadline = self.rack.deadline
        if rack_deadline is not None and now >= rack_deadline:
            self._detect_losses(snd_una, snd_nxt, now, False)
        probe_deadline = self.probe_deadline
        if probe_deadline is not None and now >= probe_deadline:
            self.probe_deadline = None
            self.probes += 1  # sending it re-arms the timer, backed off
            for seg in reversed(self.segs.values()):
                if not seg.sacked:
                    if not seg.lost:
                        self.probe = seg
                    break

    def _on_sack_blocks(self, sacks: list[tuple[int, int]], una: int, snd_nxt: int, now: float) -> float:
        """Mark the segments the blocks cover SACKed; return the send time of an RTT sample, or -1."""
        segs = self.segs
        sample_at = -1.0
        for i, (start, end) in enumerate(sacks):
            if not una < start < end <= snd_nxt:
                continue  # stale or bogus: ignore the block
            seg = segs.get(start)
            while seg is not None and seg.end <= end:
                if not seg.sacked:
                    # Only the first block is the newest arrival: the one segment timed by this ACK.
                    if i == 0 and seg.xmits == 1 and not seg.lost and seg.sent_at > sample_at:
                        sample_at = seg.sent_at
                    self.rack.on_delivered(seg, now)
                    seg.sacked = True
                    seg.lost = False
                    self.sacked_count += 1
                    if seg.in_net:
                        seg.in_net = False
                        self.in_flight -= seg.end - seg.start
                    if seg.end > self.high_sacked:
                        self.high_sacked = seg.end
                seg = segs.get(seg.end)
        return sample_at

    def _remove_acked(self, ack_off: int, now: float) -> float:
        """Drop the segments below ``ack_off``; the send time of an RTT sample, or -1 if none qualifies.

        Only a segment sent once qualifies, and only if no retransmitted or
        lost one is acked with it (the ACK may then answer the old copy).
        """
        segs = self.segs
        sample_at = -1.0
        clean = True
        while segs:
            seg = next(iter(segs.values()))
            if seg.end > ack_off:
                break
            segs.popitem(last=False)
            if not seg.sacked:
                self.rack.on_delivered(seg, now)
            if seg.in_net:
                self.in_flight -= seg.end - seg.start
            if seg.sacked:
                self.sacked_count -= 1
            elif seg.xmits > 1 or seg.lost:
                clean = False
            elif seg.sent_at > sample_at:
                sample_at = seg.sent_at
        return sample_at if clean else -1.0

    def _on_new_data_acked(self, una: int, ack_off: int) -> None:
        """The cumulative ACK moved from ``una`` to ``ack_off``: NewReno's recovery exit or window growth."""
        self.consecutive_rtos = 0
        self.dupacks = 0
        if self.in_recovery:
            if ack_off >= self.recover:
                self.in_recovery = False
                self.cwnd = self.ssthresh
            elif self.segs:  # NewReno partial ACK: the next hole, if data above it arrived, was lost too
                first = next(iter(self.segs.values()))
                if first.xmits == 1 and not first.sacked and not first.lost and first.end <= self.high_sacked:
                    self._mark_lost(first)
        elif self.cwnd_limited:
            acked = ack_off - una
            if self.cwnd < self.ssthresh:  # RFC 3465: a hole-filling ACK may cover much more
                self.cwnd = min(self.cwnd + min(acked, 2 * self.mss), _MAX_CWND)  # RFC 3465's L = 2
            else:
                self.ca_acc += acked
                if self.ca_acc >= self.cwnd:
                    self.ca_acc -= self.cwnd
                    self.cwnd = min(self.cwnd + self.mss, _MAX_CWND)

    def _update_rtt(self, sample_at: float, advanced: bool, now: float) -> None:
        if sample_at >= 0:
            self.rtt.sample(now - sample_at)
            self.rack.on_rtt_sample(now - sample_at)
        elif advanced:
            # New data acked proves the path works.  Karn forbids a sample from a
            # retransmission, but keeping the backoff would compound it over every
            # loss episode in a row; RFC 9002 (6.2.1) resets it here too.
            self.rtt.reset_backoff()

    # -- loss ----------------------------------------------------------------------------

    def _detect_losses(self, snd_una: int, snd_nxt: int, now: float, newly_sacked: bool) -> None:
        """Mark lost what SACKs and RACK prove lost; reduce cwnd once per window of data (RFC 6675, 6582).

        With new SACKs: a segment sent once is lost when DupThresh SACKed
        segments lie above it (IsLost), or when it is the first one and
        DupThresh duplicate ACKs came.  Always: RACK (``rack.py``), which also
        judges retransmissions.
        """
        newest = -1
        if newly_sacked:
            above = 0
            for seg in reversed(self.segs.values()):
                if seg.sacked:
                    above += 1
                elif above >= _DUPTHRESH and seg.xmits == 1 and not seg.lost:
                    self._mark_lost(seg)
                    newest = max(newest, seg.start)
            first = next(iter(self.segs.values()))
            if self.dupacks >= _DUPTHRESH and first.xmits == 1 and not first.sacked and not first.lost:
                self._mark_lost(first)
                newest = max(newest, first.start)
        for seg in self.rack.detect(self.segs, now):
            self._mark_lost(seg)
            if seg.xmits == 1:
                newest = max(newest, seg.start)
        if newest >= self.recover and not self.in_recovery:  # data sent after the last reduction
            self.ssthresh = max((snd_nxt - snd_una) // 2, 2 * self.mss)  # FlightSize / 2
            self.cwnd = self.ssthresh
            self.ca_acc = 0
            self.in_recovery = True
            self.recover = snd_nxt

    def _mark_lost(self, seg: Segment) -> None:
        if seg.in_net:
            seg.in_net = False
            self.in_flight -= seg.end - seg.start
        seg.lost = True
        heapq.heappush(self.lost, seg.start)

    def count_timeout(self, now: float) -> None:
        """The RTO fired with data outstanding: count it (the stream decides whether to go on)."""
        self.timeouts += 1
        self.consecutive_rtos += 1
        if self.consecutive_rtos == 1:
            self.first_rto_at = now

    def on_timeout(self, now: float, snd_una: int, snd_nxt: int) -> None:
        """Go back to one segment: every unSACKed segment is lost, the RTO doubles and re-arms."""
        if self.consecutive_rtos == 1:  # RFC 5681 (4): halve only for the first timeout in a row
            self.ssthresh = max((snd_nxt - snd_una) // 2, 2 * self.mss)
        self.cwnd = self.mss
        self.ca_acc = 0
        self.in_recovery = False
        self.recover = snd_nxt  # losses of data sent before now must not reduce cwnd again
        self.dupacks = 0
        self.rtt.back_off()
        self.rack.deadline = self.probe_deadline = self.probe = None
        self.probing = False
        lost = []
        for seg in self.segs.values():
            if not seg.sacked:
                seg.in_net = False
                seg.lost = True
                lost.append(seg.start)
        self.lost = lost  # ascending, hence a valid heap
        self.in_flight = 0  # SACKed and lost segments are not in the pipe
        self.rto_deadline = now + self.rtt.rto

    def resegment(self, mss: int) -> None:
        """Cut every segment longer than ``mss`` into pieces that fit: the path shrank (a black hole).

        Call right after :meth:`on_timeout`, which left nothing in flight;
        each piece inherits its segment's marks (lost, SACKed, transmissions).
        """
        self.mss = mss
        if all(len(seg.data) <= mss for seg in self.segs.values()):
            return
        segs: OrderedDict[int, Segment] = OrderedDict()
        for seg in self.segs.values():
            if len(seg.data) <= mss:
                segs[seg.start] = seg
                continue
            for off in range(0, len(seg.data), mss):
                piece = Segment(seg.start + off, seg.data[off:off + mss], False)
                piece.sent_at, piece.xmits, piece.sacked, piece.lost = seg.sent_at, seg.xmits, seg.sacked, seg.lost
                segs[piece.start] = piece
        self.segs = segs
        self.lost = [start for start, seg in segs.items() if seg.lost]  # ascending, hence a valid heap
        self.sacked_count = sum(1 for seg in segs.values() if seg.sacked)

    def clear(self) -> None:
        """The stream closed: forget every segment and the timer."""
        self.segs.clear()
        self.lost.clear()
        self.rto_deadline = self.rack.deadline = self.probe_deadline = self.probe = None
