"""Packetization-layer path MTU discovery for rUDP (RFC 8899, simplified): larger datagrams where the path allows.

Theory of operation
-------------------
Every path carries ``BASE_DATAGRAM`` bytes (a 1200-byte payload and a full
header: no IP fragmentation anywhere sane), so a stream starts there.  Once
connected, a stream whose owner allows more (``max_datagram``) searches
upward through ``LADDER``: it sends a PROBE -- a datagram of exactly the
size under test, padding after the header, never stream data -- and the
peer answers PROBE | ACK naming the probe's id and the size that arrived.
An answered size becomes the stream's datagram size and the next rung is
tried; a size unanswered ``MAX_PROBES`` times in a row (each waits an RTO)
ends the search, which starts again from the confirmed size after
``RAISE_INTERVAL`` (the path may have grown).  The owner's socket sets
"don't fragment" so that a probe too large for some link is dropped (or
refused locally) rather than fragmented: a lost probe is the signal.

A probe is not stream data: losing it costs nothing and it is never
resent as such.  One probe is out at a time, so probing adds at most one
datagram per RTO, and only while a search is on.

*Black holes.*  A path can shrink after a size was confirmed (a route
change, a NAT rebinding onto another link).  Two retransmission timeouts in
a row with a datagram size above the base fall back to the base at once
(the stream re-cuts its unacknowledged data to fit) and search again after
``BLACK_HOLE_RETRY``.
"""

from __future__ import annotations

from .packet import ACK, HEADER_SIZE, MAX_DATAGRAM, MAX_SACK_BLOCKS, MAX_WIRE_DATAGRAM, pack_probe, pack_probe_answer

__all__ = ["BASE_DATAGRAM", "LADDER", "MAX_PROBES", "RAISE_INTERVAL", "Pmtu", "payload_for"]

BASE_DATAGRAM = MAX_DATAGRAM  # 1247 bytes: the size every path is assumed to carry
# Datagram sizes tried, in order: Ethernet (IPv6 headers, the smaller), jumbo frames, then
# loopback-class links.  Each is the whole UDP payload, crust's header included.
LADDER = (1452, 8952, 16384, 32768, MAX_WIRE_DATAGRAM)
MAX_PROBES = 3  # unanswered probes of one size before it counts as too large (RFC 8899's MAX_PROBES)
RAISE_INTERVAL = 600.0  # seconds before a finished search starts again (RFC 8899's PMTU_RAISE_TIMER)
BLACK_HOLE_RETRY = 60.0  # seconds after a fall back to the base before searching again
_SACK_ROOM = 8 * MAX_SACK_BLOCKS  # a data datagram may carry every SACK block on top of its payload


def payload_for(datagram: int) -> int:
    """The stream bytes a datagram of ``datagram`` bytes carries, with room for every SACK block."""
    return datagram - HEADER_SIZE - _SACK_ROOM


class Pmtu:
    """One stream's search for its largest datagram (sans-IO: ``now`` and ``rto`` come from the stream).

    Attributes:
        datagram: the confirmed datagram size in bytes (``BASE_DATAGRAM`` until a probe says more).
        probes_sent: probes sent so far (for tests and statistics).
    """

    __slots__ = ("datagram", "probes_sent", "_ladder", "_next", "_probe_id", "_tries", "_due", "_waiting", "_send",
                 "_answer")

    def __init__(self, max_datagram: int) -> None:
        """Allow datagrams up to ``max_datagram`` bytes (the base or less: never probe).

        Raises:
            ValueError: ``max_datagram`` is below the base or above what UDP carries.
        """
        if not BASE_DATAGRAM <= max_datagram <= MAX_WIRE_DATAGRAM:
            raise ValueError(f"max_datagram must be in {BASE_DATAGRAM}..{MAX_WIRE_DATAGRAM}, got {max_datagram}")
        self.datagram = BASE_DATAGRAM
        self.probes_sent = 0
        self._ladder = tuple(size for size in LADDER if size <= max_datagram)
        self._next = 0  # index in the ladder of the size to try
        self._probe_id = 0
        self._tries = 0
        self._due: float | None = None  # when the next probe (or a repeat) may leave; None: not searching
        self._waiting = False  # a probe is out and unanswered
        self._send: tuple[int, int] | None = None  # (id, size) of our probe, due to leave
        self._answer: tuple[int, int] | None = None  # (id, size) of the peer's probe, to answer

    @property
    def payload(self) -> int:
        """Stream bytes per datagram at the confirmed size."""
        return payload_for(self.datagram)

    def start(self, now: float) -> None:
        """The stream is connected: search from the confirmed size, now."""
        if self._next < len(self._ladder):
            self._due = now

    def deadline(self) -> float | None:
        """When :meth:`probe` has something to do, or None."""
        return self._due

    def probe(self, now: float, rto: float) -> tuple[int, int] | None:
        """``(probe_id, size)`` of a probe to send now, or None; call when the deadline has passed.

        An unanswered probe that waited an RTO counts as lost; after
        ``MAX_PROBES`` of one size the search ends at the confirmed size.
        """
        due = self._due
        if due is None or now < due:
            return None
        if self._waiting:
            self._waiting = False
            if self._tries >= MAX_PROBES:  # this size does not get through: the search is over
                self._next = len(self._ladder)
                self._due = now + RAISE_INTERVAL
                return None
        if self._next >= len(self._ladder):  # the raise timer: try the sizes above once more
            self._next = next((i for i, size in enumerate(self._ladder) if size > self.datagram), len(self._ladder))
            self._tries = 0
            if self._next >= len(self._ladder):
                self._due = None
                return None
        self._probe_id = (self._probe_id + 1) & 0xFFFFFFFF
        self._tries += 1
        self._waiting = True
        self._due = now + rto
        self.probes_sent += 1
        return self._probe_id, self._ladder[self._next]

    def on_timer(self, now: float, rto: float) -> None:
        """The stream's timer fired: queue a probe if one is due (see :meth:`probe`)."""
        if self._due is not None and now >= self._due:
            self._send = self.probe(now, rto)

    def receive(self, flags: int, probe_id: int, size: int, arrived: int, now: float) -> bool:
        """Take the peer's PROBE (to answer) or PROBE | ACK; True if that confirmed a larger size.

        Args:
            flags: the datagram's flags.
            probe_id, size: its seq and ack fields.
            arrived: its length as received.
            now: the current time in seconds.
        """
        if not flags & ACK:
            self._answer = (probe_id, arrived)  # answered once, by take_datagrams(); the newest only
            return False
        return self.on_answer(probe_id, size, now)

    def take_datagrams(self, dst: int, src: int, out: list[bytes]) -> None:
        """Append our probe and our answer to the peer's, if due, to ``out`` (each leaves once)."""
        if self._send is not None:
            out.append(pack_probe(dst, src, *self._send))
            self._send = None
        if self._answer is not None:
            out.append(pack_probe_answer(dst, src, *self._answer))
            self._answer = None

    def on_answer(self, probe_id: int, size: int, now: float) -> bool:
        """The peer answered a probe; True if that confirmed a larger datagram size."""
        if not self._waiting or probe_id != self._probe_id or size != self._ladder[self._next]:
            return False  # an old probe's answer, or a forged one: sizes only grow by the current probe
        self.datagram = size
        self._waiting = False
        self._tries = 0
        self._next += 1
        self._due = now if self._next < len(self._ladder) else now + RAISE_INTERVAL
        return True

    def black_hole(self, now: float) -> bool:
        """Datagrams of the confirmed size stopped getting through: back to the base; True if that changed it."""
        if self.datagram == BASE_DATAGRAM:
            return False
        self.datagram = BASE_DATAGRAM
        self._next = len(self._ladder)
        self._waiting = False
        self._due = now + BLACK_HOLE_RETRY
        return True
