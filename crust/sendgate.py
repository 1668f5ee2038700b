"""SendGate: where ``Service.send()`` blocks while one peer's queue is full.

The engine's outbox lives on the reactor thread; user threads must not
touch it.  So each peer gets a gate holding, per priority, the bytes that
``send()`` admitted and the engine has not yet released into frames
(``SendCredit``).  A sender waits only on its own priority's count, which
is why a full queue of bulk data never blocks a priority-0 ``send()``.
Droppable priorities wait only while twice the limit is in flight: the
outbox keeps at most one limit (dropping the oldest to make room, which
gives the bytes back), so the other limit bounds what ``send()`` may pile
up before the I/O thread has even seen it.

A message counts as its bytes plus ``MESSAGE_OVERHEAD``, as in the outbox
(whose releases return both), so a flood of empty messages blocks
``send()`` as a flood of big ones does.
"""

from __future__ import annotations

import threading
import time

from .config import MESSAGE_OVERHEAD
from .errors import PeerLostError, SendTimeout, ServiceClosed
from .ids import PeerId
from .outbox import DROP_PRIORITY

__all__ = ["SendGate"]


class SendGate:
    """Admission control for one peer's outbound queue.  Thread-safe."""

    __slots__ = ("peer_id", "_limit", "_queued", "_cond", "_closed_by")

    def __init__(self, peer_id: PeerId, limit: int) -> None:
        self.peer_id = peer_id
        self._limit = limit
        self._queued: dict[int, int] = {}
        # Guards _queued and _closed_by: senders (user threads) wait here,
        # the reactor releases credit and closes.
        self._cond = threading.Condition(threading.Lock())
        self._closed_by: type[Exception] | None = None

    def admit(self, priority: int, nbytes: int, timeout: float | None) -> None:
        """Block until ``priority``'s queue is under the limit, then count a message of ``nbytes`` in.

        It counts ``nbytes + MESSAGE_OVERHEAD``, what the outbox releases for it.

        A message larger than the limit is admitted once the queue is empty
        below it, so any message up to ``max_message_size`` can be sent.

        Raises:
            SendTimeout: still full after ``timeout`` seconds.
            PeerLostError: the peer went away while we waited.
            ServiceClosed: the service closed while we waited.
        """
        limit = self._limit if priority < DROP_PRIORITY else 2 * self._limit
        nbytes += MESSAGE_OVERHEAD
        with self._cond:
            queued = self._queued.get(priority, 0)
            if queued < limit and self._closed_by is None:  # the fast path: no clock, no wait
                self._queued[priority] = queued + nbytes
                return
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                self._raise_if_closed()
                queued = self._queued.get(priority, 0)
                if queued < limit:
                    self._queued[priority] = queued + nbytes
                    return
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise SendTimeout(
                        f"send queue to {self.peer_id!r} at priority {priority} stayed full "
                        f"({queued} bytes queued) for {timeout} s"
                    )
                self._cond.wait(remaining)

    def release(self, released: tuple[tuple[int, int], ...]) -> None:
        """The engine moved these ``(priority, bytes)`` into frames: wake waiting senders."""
        with self._cond:
            wake = False
            for priority, nbytes in released:
                # max(): a message restarted on a new connection is released twice.
                queued = self._queued[priority] = max(0, self._queued.get(priority, 0) - nbytes)
                # Hysteresis: waking a blocked sender for every 64 KiB frame costs a
                # thread switch per frame; wake it once half the queue has drained.
                wake = wake or queued <= self._limit // 2
            if wake:
                self._cond.notify_all()

    def close(self, error: type[Exception] = PeerLostError) -> None:
        """The peer is gone (or the service closed): every waiting sender raises ``error``."""
        with self._cond:
            self._closed_by = error
            self._cond.notify_all()

    def _raise_if_closed(self) -> None:
        if self._closed_by is ServiceClosed:
            raise ServiceClosed("the service is closed")
        if self._closed_by is not None:
            raise PeerLostError(f"lost {self.peer_id!r} while sending to it")
