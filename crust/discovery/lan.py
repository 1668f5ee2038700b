"""LanBeacon: one node's LAN discovery as a sans-IO machine (seeks in progress, rate-limited answers).

Theory of operation
-------------------
A node's beacon does two things, each decided here and carried out by the
shell (``crust/runtime/``: the driver pumps it, ``lan.py`` moves its datagrams):

* **Seeking.**  :meth:`LanBeacon.seek` starts a :class:`~crust.discovery.beacon.BeaconSeeker`
  (its own nonce, rounds of Seeks over the first half of the window).  A
  seek ends when its window is over, or, if it was started ``until_first``,
  at the first new peer that answers.  An ended seek is reported once by
  :meth:`LanBeacon.next_finished` with every Reply it kept, in arrival order.
  A bootstrap seeks for one window so that everything the LAN offers joins
  the run, except when the node knows no other contact at all: then the
  first answer is worth dialling at once (:meth:`LanBeacon.seek_for_bootstrap`).
* **Answering.**  A Seek of our network gets a Reply naming us and our TCP
  listeners.  A Reply is up to ~8x a Seek and UDP sources can be forged, so
  each source IP is answered at most once per ``reply_interval``: the beacon
  cannot be used to amplify a flood.  The memory of whom we answered is
  bounded (``max_sources``; forgotten wholesale when full).

Inputs: :meth:`receive_seek`, :meth:`receive_reply`, :meth:`handle_timer`,
:meth:`close`.  Outputs: the Reply returned by :meth:`receive_seek`,
:meth:`datagrams_to_send`, :meth:`next_finished`, :meth:`get_timer`.
``now`` is always a parameter; nothing here reads a clock or opens a socket.
"""

from __future__ import annotations

from collections import deque
from typing import Sequence

from ..ids import Endpoint, PeerId
from .beacon import MAX_LISTENERS, Address, BeaconResponder, BeaconSeeker, Reply

__all__ = ["LanBeacon", "REPLY_INTERVAL", "MAX_TRACKED_SOURCES"]

REPLY_INTERVAL = 0.1  # seconds between two Replies to one source IP (a seeker retries every window/4)
MAX_TRACKED_SOURCES = 4096  # source IPs remembered for the rate limit before the memory is cleared


class _Seek:
    __slots__ = ("seeker", "until_first")

    def __init__(self, seeker: BeaconSeeker, until_first: bool) -> None:
        self.seeker = seeker
        self.until_first = until_first


class LanBeacon:
    """Our seeks in progress and our (rate-limited) answers to other seekers.

    Args:
        name_hash: our network's 32-byte name hash.
        peer_id: our PeerId (named in our Replies; our own Replies are ignored by our seeks).
        reply_interval: seconds between two Replies to the same source IP.
        max_sources: source IPs remembered for the rate limit.

    Raises:
        ValueError / TypeError: a bad name hash or PeerId.
    """

    def __init__(self, name_hash: bytes, peer_id: PeerId, *, reply_interval: float = REPLY_INTERVAL,
                 max_sources: int = MAX_TRACKED_SOURCES) -> None:
        self._name_hash = name_hash
        self._peer_id = peer_id
        self._responder = BeaconResponder(name_hash, peer_id)
        self._reply_interval = reply_interval
        self._max_sources = max_sources
        self._replied: dict[str, float] = {}  # source IP -> when we last answered it
        self._seeks: dict[int, _Seek] = {}  # in start order
        self._finished: deque[tuple[int, list[Reply]]] = deque()
        self._next_id = 0

    # -- answering ----------------------------------------------------------------------

    @property
    def listeners(self) -> tuple[Endpoint, ...]:
        """What our Replies announce."""
        return self._responder.listeners

    def set_listeners(self, listeners: Sequence[Endpoint]) -> None:
        """Announce these listeners: the TCP ones, at most the beacon's limit."""
        self._responder.listeners = [ep for ep in listeners if ep.transport == "tcp"][:MAX_LISTENERS]

    def receive_seek(self, data: bytes, addr: Address, now: float) -> bytes | None:
        """A datagram on the discovery port; returns the Reply to send back to ``addr``, if any."""
        if now - self._replied.get(addr[0], float("-inf")) < self._reply_interval:
            return None
        if len(self._replied) >= self._max_sources:
            self._replied.clear()
        reply = self._responder.receive_datagram(data, addr)
        if reply is not None:
            self._replied[addr[0]] = now
        return reply

    # -- seeking ------------------------------------------------------------------------

    def seek(self, targets: Sequence[Address], nonce: bytes, now: float, window: float, *,
             until_first: bool = False) -> int:
        """Start seeking on ``targets`` for ``window`` seconds; returns the seek's id.

        With ``until_first``, the seek ends at the first new peer's answer instead.

        Raises:
            ValueError: ``window`` is not positive, or ``nonce`` is not 16 bytes.
        """
        seeker = BeaconSeeker(self._name_hash, targets, nonce, now, window, self_id=self._peer_id)
        self._next_id += 1
        self._seeks[self._next_id] = _Seek(seeker, until_first)
        return self._next_id

    def seek_for_bootstrap(self, targets: Sequence[Address], nonce: bytes, now: float, window: float, *,
                           others_known: bool) -> int:
        """The seek in front of a bootstrap run: one window, or until the first answer when we know nobody else.

        Args:
            others_known: True when the run has other contacts (hard-coded or cached).
        """
        return self.seek(targets, nonce, now, window, until_first=not others_known)

    def receive_reply(self, data: bytes, addr: Address, now: float) -> None:
        """A datagram on the seeking socket: a Reply to one of our seeks, or noise (counted by the seekers)."""
        for seek_id, seek in list(self._seeks.items()):
            if seek.seeker.receive_datagram(data, addr, now) is not None and seek.until_first:
                self._finish(seek_id)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """The Seeks due by ``now``, of every seek in progress."""
        out: list[tuple[bytes, Address]] = []
        for seek in self._seeks.values():
            out += seek.seeker.datagrams_to_send(now)
        return out

    def handle_timer(self, now: float) -> None:
        """End the seeks whose window is over."""
        for seek_id, seek in list(self._seeks.items()):
            if seek.seeker.done(now):
                self._finish(seek_id)

    def get_timer(self) -> float | None:
        """When the next round of Seeks or the end of a window is due (None: no seek in progress)."""
        return min((seek.seeker.get_timer() for seek in self._seeks.values()), default=None)

    def next_finished(self) -> tuple[int, list[Reply]] | None:
        """A seek that ended: its id and the Replies it kept (in arrival order), or None."""
        return self._finished.popleft() if self._finished else None

    def close(self) -> None:
        """End every seek now with what it found."""
        for seek_id in list(self._seeks):
            self._finish(seek_id)

    def _finish(self, seek_id: int) -> None:
        seek = self._seeks.pop(seek_id)
        self._finished.append((seek_id, list(seek.seeker.found.values())))
