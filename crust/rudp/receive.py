"""The receiving half of an rUDP stream: reassembly, flow control and the SACK blocks we send.

Theory of operation
-------------------
*Reassembly.*  Offsets count from the peer's ISN (0 is its SYN).  Data at
``rcv_nxt`` is delivered at once, with whatever out-of-order data it makes
contiguous (a heap of starts over a dict of payloads); data above it is kept
until then.  The peer's FIN takes one offset; once every byte before it is
in, ``fin_in`` is set and ``rcv_nxt`` steps over it.

*Receive window* = ``capacity`` minus bytes held by :meth:`ReceiveBuffer.pause`.
Out-of-order data is kept only inside it, so held plus out-of-order bytes
never exceed ``capacity``.  Held bytes grow only as ``rcv_nxt`` does, so the
right edge (ack + window) never moves left.

*SACK blocks.*  Up to ``MAX_SACK_BLOCKS`` ranges above ``rcv_nxt``: the one
holding the newest arrival first, then the lowest (RFC 2018), so the sender
learns of every hole in turn and can time the newest arrival.
"""

from __future__ import annotations

import heapq

from .packet import MAX_SACK_BLOCKS, pack_sack_blocks

__all__ = ["ReceiveBuffer"]


class ReceiveBuffer:
    """The peer's bytes on their way to the owner: in order, bounded by the window.

    Attributes:
        rcv_nxt: the next offset expected (what we ack).
        fin_off: where the peer's FIN lies, once a FIN arrived.
        fin_in: the FIN is in, after every byte before it.
        chunks: in-order data not yet taken (see :meth:`take`).
    """

    __slots__ = ("rcv_nxt", "capacity", "fin_off", "fin_in", "paused", "chunks", "_held", "_held_bytes", "_ooo",
                 "_ooo_heap", "_ooo_bytes", "_last_ooo")

    def __init__(self, capacity: int) -> None:
        self.rcv_nxt = 0
        self.capacity = capacity
        self.fin_off: int | None = None
        self.fin_in = False
        self.paused = False
        self.chunks: list[bytes] = []
        self._held: list[bytes] = []  # delivered while paused
        self._held_bytes = 0
        self._ooo: dict[int, bytes] = {}  # start -> out-of-order data above rcv_nxt
        self._ooo_heap: list[int] = []
        self._ooo_bytes = 0
        self._last_ooo = 0  # start of the newest out-of-order segment: its SACK block goes first

    @property
    def buffered_bytes(self) -> int:
        """Bytes we hold: held back while paused plus out of order."""
        return self._held_bytes + self._ooo_bytes

    @property
    def has_held(self) -> bool:
        """True while paused with data held back."""
        return bool(self._held)

    def window(self) -> int:
        """The receive window to advertise, in bytes from ``rcv_nxt``."""
        return self.capacity - self._held_bytes

    def receive(self, seq_off: int, payload: bytes, fin: bool) -> bool:
        """Take a segment's payload (and FIN) at ``seq_off``; False if it must be counted as dropped.

        Dropped: past the window, past the peer's FIN, or moving it.  Old
        data is accepted and ignored (the owner acks it again regardless).
        """
        rcv_nxt = self.rcv_nxt
        end = seq_off + len(payload)
        window = self.capacity - self._held_bytes
        fin_off = self.fin_off
        if end > rcv_nxt + window or (fin_off is not None and end > fin_off) or (fin and fin_off not in (None, end)):
            return False
        if self.fin_in or end < rcv_nxt or (end == rcv_nxt and not fin):
            return True  # old news
        if fin:
            self.fin_off = end
        if seq_off <= rcv_nxt:
            if end > rcv_nxt:
                self._deliver(payload[rcv_nxt - seq_off:] if seq_off < rcv_nxt else payload)
                self.rcv_nxt = end
            if self._ooo_heap:
                self._drain_out_of_order()
        elif payload and seq_off not in self._ooo and self._ooo_bytes + len(payload) <= window:
            self._ooo[seq_off] = payload
            heapq.heappush(self._ooo_heap, seq_off)
            self._ooo_bytes += len(payload)
            self._last_ooo = seq_off
        if self.fin_off == self.rcv_nxt:
            self.rcv_nxt += 1
            self.fin_in = True
        return True

    def _drain_out_of_order(self) -> None:
        heap, ooo = self._ooo_heap, self._ooo
        while heap and heap[0] <= self.rcv_nxt:
            start = heapq.heappop(heap)
            data = ooo.pop(start)
            self._ooo_bytes -= len(data)
            end = start + len(data)
            if end > self.rcv_nxt:
                self._deliver(data[self.rcv_nxt - start:])
                self.rcv_nxt = end

    def _deliver(self, data: bytes) -> None:
        if self.paused:
            self._held.append(data)
            self._held_bytes += len(data)
        else:
            self.chunks.append(data)

    def pause(self) -> None:
        """Hold back what arrives from now on; the window shrinks as it grows."""
        self.paused = True

    def resume(self) -> bool:
        """Release what was held back; True if there was any (the window reopened)."""
        self.paused = False
        if not self._held:
            return False
        self.chunks.extend(self._held)
        self._held.clear()
        self._held_bytes = 0
        return True

    def take(self) -> bytes:
        """The in-order data not yet taken, joined (``b""`` if none)."""
        chunks = self.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        return data

    def sack_blocks(self, base: int) -> tuple[bytes, int]:
        """The SACK blocks to send (wire bytes, with ``base`` the peer's ISN) and how many."""
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
        return pack_sack_blocks([(s, e) for s, e in chosen], base), len(chosen)

    def drop_out_of_order(self) -> None:
        """Forget the data above ``rcv_nxt`` (the stream closed)."""
        self._ooo.clear()
        self._ooo_heap.clear()
        self._ooo_bytes = 0
