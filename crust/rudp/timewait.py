"""TIME_WAIT for rUDP: closed connections remembered briefly, so their late datagrams do no harm.

Theory of operation
-------------------
When a connection ends, its socket forgets it, and without a memory a late
datagram of it would find nothing -- or worse, something new: a resent SYN
(its cookie still valid for up to two cookie periods) would open a second,
ghost connection from the same peer, and a resent FIN (our last ACK lost)
would go unanswered.  So, as TCP's TIME_WAIT does, the socket keeps each
closed connection's ``(peer address, our id, peer's id)`` for ``TIME_WAIT``
seconds (twice the longest RTO: a peer still retransmitting has given up
by then), together with the last ACK of an orderly close:

* a SYN from that address naming that peer id is dropped, unanswered;
* a FIN of it gets the last ACK again; any other datagram of a connection
  that did not end in order (a reset, a timeout) gets an RST whose seq is
  that datagram's ack -- exactly what the stream's RST check asks for, so a
  peer that missed our reset, or challenged an inexact one, learns of it.
  An answer is never larger than what it answers, and goes only to a
  datagram naming both ids from the peer's address: only the peer, or
  someone on its path, can ask.  Of a connection that was keyed (auth.py)
  the entry keeps the key and tags the RST, so the peer's keyed stream
  takes it; a tagged RST is 39 bytes, so only a datagram at least that
  long gets one (a peer resending data does; one that only PINGs times
  out instead).  An RST without a tag (a peer that crashed and lost its
  key, or any stateless one) no longer ends a keyed connection: that peer
  notices the silence instead (idle and inactivity timeouts);
* our old id is not handed to a new connection while it is remembered.

At most ``MAX_ENTRIES`` are kept (the oldest go first), so a churn of
connections cannot grow it without bound; expiry is lazy, checked on use.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

from .auth import PathAuth
from .packet import ACK, FIN, HEADER, HEADER_SIZE, MAGIC, PATH, RST
from .recovery import MAX_RTO

__all__ = ["TIME_WAIT", "MAX_ENTRIES", "TimeWait"]

TIME_WAIT = 2 * MAX_RTO  # seconds
MAX_ENTRIES = 4096  # closed connections remembered per socket: ~0.8 MiB, +1.2 MiB if all were keyed (PathAuth)

Address = tuple[str, int]


class _Entry(NamedTuple):
    expires: float
    addr: Address
    remote_id: int
    last_ack: bytes | None
    auth: PathAuth | None


class TimeWait:
    """Recently closed connections of one socket, keyed by our id (sans-IO: ``now`` from the caller)."""

    __slots__ = ("_entries", "_syns", "duration", "limit")

    def __init__(self, duration: float = TIME_WAIT, limit: int = MAX_ENTRIES) -> None:
        """An empty table.

        Args:
            duration: seconds a closed connection is remembered.
            limit: how many are remembered at most (the oldest are forgotten first).

        Raises:
            ValueError: ``duration`` or ``limit`` is not positive.
        """
        if duration <= 0 or limit <= 0:
            raise ValueError(f"duration and limit must be positive, got {duration} and {limit}")
        self.duration = duration
        self.limit = limit
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # our id -> entry, oldest first
        self._syns: dict[tuple[Address, int], int] = {}  # (peer address, peer id) -> our id

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, local_id: int, addr: Address, remote_id: int, last_ack: bytes | None, now: float,
            auth: PathAuth | None = None) -> None:
        """Remember a connection that just closed.

        Args:
            local_id: our id in it.
            addr: the peer's last address.
            remote_id: the peer's id (0 if it never sent one: then only our id is kept).
            last_ack: what to answer a resent FIN with, or None.
            now: the current time in seconds.
            auth: the connection's tagging state if it was keyed: its RSTs are tagged.
        """
        self._expire(now)
        self._drop(local_id)
        while len(self._entries) >= self.limit:
            self._drop(next(iter(self._entries)))
        self._entries[local_id] = _Entry(now + self.duration, addr, remote_id, last_ack, auth)
        if remote_id:
            self._syns[(addr, remote_id)] = local_id

    def holds_id(self, local_id: int, now: float) -> bool:
        """True if ``local_id`` belongs to a remembered connection (do not reuse it yet)."""
        self._expire(now)
        return local_id in self._entries

    def holds_syn(self, addr: Address, src: int, now: float) -> bool:
        """True if a SYN from ``addr`` with id ``src`` belongs to a remembered connection."""
        self._expire(now)
        return (addr, src) in self._syns

    def answer(self, addr: Address, dst: int, src: int, flags: int, ack: int, now: float,
               size: int = HEADER_SIZE) -> bytes | None:
        """What to send back for a datagram for no open connection, or None.

        Args:
            addr: where it came from.
            dst, src: its ids (ours, the peer's).
            flags: its flags.
            ack: its ack field.
            now: the current time in seconds.
            size: its length in bytes: no answer is longer.

        Returns:
            The last ACK again for a FIN of an orderly closed connection; an
            RST for a datagram (with ACK, no RST) of one that ended otherwise;
            None for everything else, for whatever names no remembered
            connection from that address, and when the answer would be
            longer than the datagram.
        """
        self._expire(now)
        entry = self._entries.get(dst)
        if entry is None or entry.addr != addr or entry.remote_id != src or flags & (RST | PATH) \
                or not flags & ACK:
            return None
        if entry.last_ack is not None:
            answer = entry.last_ack if flags & FIN else None
        else:
            answer = HEADER.pack(MAGIC, RST, src, dst, ack, 0, 0, 0)
            if entry.auth is not None:
                answer = entry.auth.seal(answer)
        return answer if answer is not None and len(answer) <= size else None

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries:
            local_id, entry = next(iter(entries.items()))
            if entry.expires > now:
                return
            self._drop(local_id)

    def _drop(self, local_id: int) -> None:
        entry = self._entries.pop(local_id, None)
        if entry is not None and self._syns.get((entry.addr, entry.remote_id)) == local_id:
            del self._syns[(entry.addr, entry.remote_id)]
