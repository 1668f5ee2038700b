"""Receive back-pressure: when to stop reading a peer whose messages the application has not taken yet.

Theory of operation.  Messages the engine decodes are handed to the
application's callbacks on another thread; a slow ``on_message`` must bound
memory, not grow it.  So each peer has a *backlog*: the bytes of its
messages handed over and not yet delivered.

Each message counts as its bytes plus ``MESSAGE_OVERHEAD``
(:func:`message_costs` sums them): what it really costs while it waits, so a flood of
empty messages fills a backlog as surely as a flood of big ones.

* :class:`ReceiveBacklog` (the producer's side, the one place the decision
  lives): above ``limit`` waiting bytes it says "pause reading this peer";
  once the backlog is back to ``limit // 2`` it says "resume" and names the
  connection it had paused.  The gap between the two thresholds keeps a
  busy peer from flapping between paused and reading.
* :class:`DeliveryTally` (the consumer's side): counts delivered bytes and
  hands them back in batches, at least every :attr:`ReceiveBacklog.report_every`
  bytes, so the producer learns of deliveries with one handoff per batch
  rather than one per message.

Each class has one owner, so neither needs a lock: the producer owns the
backlog, the consumer owns the tally, and only a finished report (a plain
dict) crosses between them.  Unreported deliveries make the producer's view
of a backlog too high by less than ``report_every`` (an eighth of the
limit): it may pause that much early, never late.  Since ``report_every``
is at most half the limit, a paused backlog always gets the report that
resumes it: the consumer must deliver more than ``limit // 2`` bytes of it,
and every ``report_every`` of those is reported.

Nothing here reads a clock or touches a socket; it only counts.
"""

from __future__ import annotations

from ..config import MESSAGE_OVERHEAD
from ..events import Event, MessageReceived
from ..ids import ConnId, PeerId

__all__ = ["ReceiveBacklog", "DeliveryTally", "message_costs"]

_REPORT_FRACTION = 8  # report deliveries every limit/8 bytes: early pauses stay small, handoffs few


def message_costs(events: list[Event]) -> tuple[dict[PeerId, int], int, int]:
    """What the ``MessageReceived`` among ``events`` add to their peers' backlogs, how many there are, their bytes.

    Each message counts its bytes plus ``MESSAGE_OVERHEAD`` (module docstring).  This is
    the receive path's per-message bookkeeping on both sides of the handoff (the reactor
    posting, the dispatcher delivering), so it is kept to a few operations a message: the
    per-peer sum stays in a local across a run of one peer's messages (the engine hands
    them over in runs) rather than in the dict.

    Returns:
        ``(cost per peer, messages, payload bytes)``.
    """
    costs: dict[PeerId, int] = {}
    count = nbytes = run = 0
    peer_id: PeerId | None = None
    for event in events:
        if type(event) is MessageReceived:
            if event.peer_id is not peer_id:
                if peer_id is not None:
                    costs[peer_id] = costs.get(peer_id, 0) + run
                peer_id, run = event.peer_id, 0
            size = len(event.data)
            run += size + MESSAGE_OVERHEAD
            nbytes += size
            count += 1
    if peer_id is not None:
        costs[peer_id] = costs.get(peer_id, 0) + run
    return costs, count, nbytes


class _Backlog:
    """One peer's waiting bytes and the connection we paused for it (if any)."""

    __slots__ = ("waiting", "paused")

    def __init__(self) -> None:
        self.waiting = 0
        self.paused: ConnId | None = None


class ReceiveBacklog:
    """Per peer, bytes handed to the application but not yet delivered; decides pause and resume.

    Args:
        limit: bytes a peer's backlog may reach before its reading is paused (> 0).

    Raises:
        ValueError: ``limit`` is not a positive int.
    """

    def __init__(self, limit: int) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive int of bytes, not {limit!r}")
        self.limit = limit
        self._peers: dict[PeerId, _Backlog] = {}

    @property
    def report_every(self) -> int:
        """Bytes a :class:`DeliveryTally` may hold back before it must report (at most ``limit // 2``)."""
        return max(1, self.limit // _REPORT_FRACTION)

    def track(self, peer_id: PeerId) -> None:
        """``peer_id`` connected: start its backlog at zero (a reconnected peer starts afresh)."""
        self._peers[peer_id] = _Backlog()

    def forget(self, peer_id: PeerId) -> None:
        """``peer_id`` is gone: drop its backlog (later reports about it are ignored)."""
        self._peers.pop(peer_id, None)

    def waiting(self, peer_id: PeerId) -> int:
        """Bytes of ``peer_id``'s messages not yet reported delivered (0 for an untracked peer)."""
        backlog = self._peers.get(peer_id)
        return backlog.waiting if backlog is not None else 0

    def is_paused(self, peer_id: PeerId) -> bool:
        """True while reading ``peer_id`` is paused on our say-so."""
        backlog = self._peers.get(peer_id)
        return backlog is not None and backlog.paused is not None

    def posted(self, peer_id: PeerId, nbytes: int) -> bool:
        """``nbytes`` of ``peer_id``'s messages were handed over; True: pause reading it now.

        True each time the backlog is over the limit and no pause is recorded,
        so a pause the caller could not carry out is asked for again.
        """
        backlog = self._peers.get(peer_id)
        if backlog is None:
            return False
        backlog.waiting += nbytes
        return backlog.waiting > self.limit and backlog.paused is None

    def paused(self, peer_id: PeerId, conn: ConnId) -> None:
        """The caller paused reading ``conn``, which carries ``peer_id`` (after :meth:`posted` said so)."""
        backlog = self._peers.get(peer_id)
        if backlog is not None:
            backlog.paused = conn

    def delivered(self, peer_id: PeerId, nbytes: int) -> ConnId | None:
        """``nbytes`` of ``peer_id``'s messages were delivered; returns the connection to resume, if any."""
        backlog = self._peers.get(peer_id)
        if backlog is None:
            return None
        # Never below zero: a report may still count a previous connection's messages.
        backlog.waiting = max(0, backlog.waiting - nbytes)
        conn = backlog.paused
        if conn is None or backlog.waiting > self.limit // 2:
            return None
        backlog.paused = None
        return conn


class DeliveryTally:
    """Delivered bytes per peer on the consumer's side, handed back in batches.

    Args:
        report_every: bytes to gather before a report is due
            (:attr:`ReceiveBacklog.report_every`).
    """

    __slots__ = ("_report_every", "_pending", "_total")

    def __init__(self, report_every: int) -> None:
        if report_every < 1:
            raise ValueError(f"report_every must be >= 1, not {report_every}")
        self._report_every = report_every
        self._pending: dict[PeerId, int] = {}
        self._total = 0

    def delivered(self, peer_id: PeerId, nbytes: int) -> dict[PeerId, int] | None:
        """Count one delivered message; returns the report to hand back when one is due, else None."""
        pending = self._pending
        pending[peer_id] = pending.get(peer_id, 0) + nbytes
        self._total += nbytes
        if self._total < self._report_every:
            return None
        report, self._pending, self._total = pending, {}, 0
        return report
