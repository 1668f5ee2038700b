"""The sending half of an rUDP stream: the write buffer, segmentation, the peer's window, persist.

Theory of operation
-------------------
*Sequence space.*  Offsets count from our ISN: 0 is our SYN, stream byte
``k`` is ``1 + k``, and the FIN takes the offset after the last byte.  Data
is cut into segments of at most ``mss`` bytes once, when it first leaves,
and resent whole.

*What leaves.*  A tail-loss probe (``recovery.py``) goes first, outside
cwnd; then lost segments, oldest first, then new data and the FIN, all
within the congestion window (``recovery.py``: nothing leaves while
``in_flight`` plus its length would exceed cwnd, and new data must not
overtake the holes); new data also within the peer's receive window.  The
FIN takes no buffer at the peer, so it ignores that window.

*The peer's window.*  We keep the largest right edge (ack + window) the peer
advertised, robust to reordered ACKs.  A sender with a closed window and
nothing in flight gets no ACK to reopen it, so it PINGs on a persist timer
that starts at one RTO and doubles up to ``MAX_RTO``; the answering ACK
carries the window (and the peer's ``resume_reading`` sends one at once).
"""

from __future__ import annotations

import heapq
from typing import Callable

from .packet import MAX_PAYLOAD
from .recovery import MAX_RTO, Recovery, Segment

__all__ = ["SendBuffer"]


class SendBuffer:
    """Our bytes on their way to the peer, from ``write`` until acknowledged.

    Attributes:
        snd_una: the lowest offset not yet acknowledged.
        snd_nxt: the next offset to send.
        fin_queued: a FIN follows the data (``close()``, or the peer's FIN).
        fin_off: the FIN's offset once it was sent, else None.
        fin_acked: the peer acknowledged our FIN.
        newly_acked: stream bytes acked since the owner last took the count.
        persist_deadline: when the next window probe is due, or None.
    """

    __slots__ = ("snd_una", "snd_nxt", "fin_queued", "fin_off", "fin_acked", "newly_acked", "persist_deadline",
                 "mss", "_buf", "_snd_right", "_written", "_acked", "_persist_interval")

    def __init__(self) -> None:
        self.snd_una = 0
        self.snd_nxt = 0
        self.fin_queued = False
        self.fin_off: int | None = None
        self.fin_acked = False
        self.newly_acked = 0
        self.persist_deadline: float | None = None
        self.mss = MAX_PAYLOAD  # bytes per new segment: the stream raises it as the path allows (pmtu.py)
        self._buf = bytearray()  # written, not yet cut into segments
        self._snd_right = 1  # the largest right edge (ack + window) the peer advertised
        self._written = 0
        self._acked = 0
        self._persist_interval = 0.0

    @property
    def pending_bytes(self) -> int:
        """Bytes written but not yet acknowledged by the peer."""
        return self._written - self._acked

    def write(self, data: bytes) -> None:
        """Queue stream bytes."""
        self._buf += data
        self._written += len(data)

    def start(self, peer_window: int | None = None) -> None:
        """Our SYN took offset 0: data starts at 1.  ``peer_window`` is what the peer's SYN advertised."""
        self.snd_nxt = 1
        if peer_window is not None:
            self._snd_right = max(self._snd_right, 1 + peer_window)

    def on_ack(self, ack_off: int, window: int) -> None:
        """The peer acked up to ``ack_off`` (>= ``snd_una``) and advertised ``window`` from there."""
        if ack_off + window > self._snd_right:
            self._snd_right = ack_off + window
            self.persist_deadline = None
        if ack_off > self.snd_una:
            self.snd_una = ack_off
            fin_off = self.fin_off
            acked_total = min(ack_off, fin_off if fin_off is not None else ack_off) - 1  # SYN, FIN: no bytes
            self.newly_acked += acked_total - self._acked
            self._acked = acked_total
            if fin_off is not None and ack_off > fin_off:
                self.fin_acked = True

    def send_segments(self, rec: Recovery, emit: Callable[[Segment], None], now: float) -> None:
        """Hand ``emit`` every segment that may leave now: lost ones, then new data and the FIN.

        ``emit`` packs and queues the datagram and tells ``rec`` it left.
        Also sets ``rec.cwnd_limited`` and starts or stops the persist timer.
        """
        segs, lost, cwnd = rec.segs, rec.lost, rec.cwnd
        cwnd_limited = False
        # 0. A tail-loss probe leaves whatever cwnd says: it is one segment, once per ACK.
        probe = rec.probe
        if probe is not None:
            rec.probe = None
            if segs.get(probe.start) is probe and not probe.sacked and not probe.lost:
                rec.retransmits += 1
                emit(probe)
        # 1. Lost segments first, oldest first, as the pipe allows.
        while lost:
            seg = segs.get(lost[0])
            if seg is None or not seg.lost:
                heapq.heappop(lost)  # acked, SACKed or resent since
                continue
            if rec.in_flight and rec.in_flight + (seg.end - seg.start) > cwnd:
                cwnd_limited = True  # and new data must not overtake the holes
                break
            heapq.heappop(lost)
            seg.lost = False
            rec.retransmits += 1
            emit(seg)
        # 2. New data (then the FIN), within both windows.
        buf = self._buf
        window_blocked = False
        while self.fin_off is None and not cwnd_limited:
            size = min(len(buf), self.mss)
            if size == 0:
                if not self.fin_queued:
                    break
                if rec.in_flight and rec.in_flight + 1 > cwnd:
                    cwnd_limited = True
                    break
                seg = Segment(self.snd_nxt, b"", True)
                self.fin_off = seg.start
            else:
                room = self._snd_right - self.snd_nxt
                if room <= 0:
                    window_blocked = True
                    break
                size = min(size, room)
                if rec.in_flight and rec.in_flight + size > cwnd:
                    cwnd_limited = True
                    break
                seg = Segment(self.snd_nxt, bytes(buf[:size]), False)
                del buf[:size]  # O(1) at the front of a bytearray in CPython
            segs[seg.start] = seg
            self.snd_nxt = seg.end
            emit(seg)
        rec.cwnd_limited = cwnd_limited
        # 3. A closed window with nothing in flight gets no ACK to reopen it: probe.
        if window_blocked and not segs:
            if self.persist_deadline is None:
                self._persist_interval = rec.rtt.rto
                self.persist_deadline = now + self._persist_interval
        elif not window_blocked:
            self.persist_deadline = None

    def on_persist_timer(self, now: float) -> None:
        """A window probe is due: back the next one off."""
        self._persist_interval = min(self._persist_interval * 2, MAX_RTO)
        self.persist_deadline = now + self._persist_interval

    def clear(self) -> None:
        """The stream closed: drop what was never sent and stop probing."""
        self._buf = bytearray()
        self.persist_deadline = None
