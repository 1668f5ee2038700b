"""rUDP time-based loss detection: RACK (RFC 8985) and the tail-loss probe's timeout.

``Rack`` remembers the most recently *sent* segment known to have arrived
(acked or SACKed) and when; :meth:`Rack.detect` then calls lost every
segment sent before it that has waited longer than that segment's round
trip plus a reordering window.  Nothing here reads a clock.

Theory of operation
-------------------
*Why time, not counts.*  The SACK rules in ``recovery.py`` count segments
above a hole, which says nothing about a *retransmission* lost again (the
segments above it were sent before it) nor about the last few segments of
a burst (nothing lies above them).  Both used to wait for the RTO, at least
200 ms on a path with a round trip of a millisecond.  RACK asks instead:
was a segment sent *later* delivered, and has ours had that long and a bit
more?  That covers first transmissions and retransmissions alike.

*Order of sending.*  Many segments leave in one call with the same ``now``,
so "sent before" is (send time, end offset) in lexicographic order: within
one call the sender emits retransmissions first, then new data in offset
order.  A retransmission that is delivered may be the old copy's arrival
(Karn's ambiguity): it counts only if it came at least ``min_rtt`` after it
left (RFC 8985 §6.2 step 2).

*Reordering window* (RFC 8985 §6.2 step 4): a quarter of the minimum RTT,
so a datagram overtaken by a little is not called lost at once; when a
candidate's time is not yet up, :attr:`Rack.deadline` says when to look
again (the stream's timer calls :meth:`Recovery.on_loss_timer`).

*Tail-loss probe* (RFC 8985 §7, RFC 9002's PTO): :func:`probe_timeout` is
how long the sender waits for *any* ACK before it resends its newest
unacked segment; the ACK that probe draws gives RACK a delivered segment
sent after the tail, so the tail is found lost within a round trip.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .recovery import Segment

__all__ = ["PTO_SLACK", "Rack", "probe_timeout"]

PTO_SLACK = 0.002  # seconds added to 2 x SRTT: the peer acks once per turn of its reactor, not at once


def probe_timeout(srtt: float | None, rto: float) -> float:
    """How long to wait for an ACK before a tail-loss probe: 2 SRTT plus slack, never beyond the RTO.

    Args:
        srtt: the smoothed RTT in seconds, or None before the first sample.
        rto: the current retransmission timeout in seconds.

    Returns:
        The probe timeout in seconds (the RTO itself while no RTT is known).
    """
    if srtt is None:
        return rto
    return min(2 * srtt + PTO_SLACK, rto)


class Rack:
    """RACK's state: the newest-sent delivered segment, its RTT, the minimum RTT, the reorder timer.

    Attributes:
        xmit_ts: when the newest-sent delivered segment left (-inf before any).
        end: that segment's end offset (the tie-break among equal send times).
        rtt: that segment's round trip in seconds.
        min_rtt: the smallest RTT sample seen (inf before any).
        deadline: when a segment sent before it runs out of reordering window, or None.
    """

    __slots__ = ("xmit_ts", "end", "rtt", "min_rtt", "deadline")

    def __init__(self) -> None:
        self.xmit_ts = -math.inf
        self.end = 0
        self.rtt = 0.0
        self.min_rtt = math.inf
        self.deadline: float | None = None

    def on_rtt_sample(self, rtt: float) -> None:
        """An unambiguous RTT measurement (seconds): keep the minimum."""
        if rtt < self.min_rtt:
            self.min_rtt = max(rtt, 0.0)

    def on_delivered(self, seg: Segment, now: float) -> None:
        """``seg`` was acked or SACKed at ``now``: it may be the newest-sent delivered segment."""
        elapsed = now - seg.sent_at
        if seg.xmits > 1 and elapsed < self.min_rtt:
            return  # too soon to be the retransmission's arrival: the original's
        if seg.sent_at > self.xmit_ts or (seg.sent_at == self.xmit_ts and seg.end > self.end):
            self.xmit_ts, self.end, self.rtt = seg.sent_at, seg.end, elapsed

    def _sent_before(self, seg: Segment) -> bool:
        return seg.sent_at < self.xmit_ts or (seg.sent_at == self.xmit_ts and seg.end < self.end)

    def detect(self, segs: OrderedDict[int, Segment], now: float) -> list[Segment]:
        """Segments in the network sent before the newest delivered one and past its RTT plus the window.

        Sets :attr:`deadline` to the earliest time another one would be due.

        Args:
            segs: the scoreboard, in offset order.
            now: the current time in seconds.

        Returns:
            The segments now known lost, in offset order (not yet marked).
        """
        lost: list[Segment] = []
        deadline: float | None = None
        if self.xmit_ts == -math.inf:
            self.deadline = None
            return lost
        wait = self.rtt + (self.min_rtt / 4 if self.min_rtt != math.inf else 0.0)
        for seg in segs.values():
            before = self._sent_before(seg)
            if not before and seg.xmits == 1:
                break  # first transmissions left in offset order: every later one was sent later still
            if seg.sacked or seg.lost or not before:
                continue
            due = seg.sent_at + wait
            if due <= now:
                lost.append(seg)
            elif deadline is None or due < deadline:
                deadline = due
        self.deadline = deadline
        return lost
