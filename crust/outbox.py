"""Outbox: one peer's outbound queues, one per priority, drained into frames.

Theory of operation.  ``send()`` appends a message to the queue of its
priority.  Whenever the connection can take another frame, :meth:`fill`
builds one: queued control records first, then chunks of data messages
from the highest priority (0) down, until the frame is full.  Because
every frame starts again from the top priority, a priority-0 message waits
for at most one frame (≤ 64 KiB) behind a half-sent 2 MiB message of a
lower priority — the original crust made it wait for the whole message.

Messages with ``priority >= DROP_PRIORITY`` may be discarded: when they
have waited longer than ``drop_after`` seconds, or when their queue would
exceed ``queue_limit`` bytes.  A message whose first chunk has been sent is
never dropped (the peer would be left with half a message).  Lower
priorities are never dropped; the Service blocks ``send()`` instead.

What the queues hold is counted as it costs (docs/security.md): each
message is its bytes plus ``message_overhead``, so ``queue_limit`` and the
``(priority, bytes)`` released to the sender's gate cover empty messages
too (the overhead is released with a message's last chunk).

Two bounds protect the receiver.  Control records are kept one per *key*
(our probe, our echo of the peer's probe, an answer): a newer record
replaces the queued one, so a peer that asks and never reads leaves us at
most one answer of each kind.  And a message is cut into chunks only if
the messages begun and not finished, each counted whole, stay within
``unfinished_limit``, the bound the receiving channel enforces
(:func:`crust.config.unfinished_limit`); a message that would exceed it
waits, as does every less urgent message that would need cutting, until
begun ones finish.  Messages that fit in one frame are never cut, so they
pass as before; and since a begun message always finishes, nothing waits
for ever.
"""

from __future__ import annotations

import bisect
from collections import deque
from typing import Callable, Hashable

from .channel import data_record_header
from .config import MESSAGE_OVERHEAD

__all__ = ["Outbox", "DROP_PRIORITY"]

DROP_PRIORITY = 2  # the original's MSG_DROP_PRIORITY
_DATA_HEADER_SIZE = 7  # bytes: record type, length, priority, flags


class _Queued:
    __slots__ = ("data", "offset", "queued_at")

    def __init__(self, data: bytes, queued_at: float) -> None:
        self.data = data
        self.offset = 0
        self.queued_at = queued_at


class Outbox:
    """Per-priority FIFO queues with strict-priority, chunked frame filling."""

    __slots__ = ("_queues", "_active", "_control", "_bytes", "_limit", "_drop_after", "_dropped_bytes",
                 "_overhead", "_unfinished", "_unfinished_limit")

    def __init__(self, *, queue_limit: int, drop_after: float, unfinished_limit: int,
                 message_overhead: int = MESSAGE_OVERHEAD) -> None:
        self._queues: dict[int, deque[_Queued]] = {}
        self._active: list[int] = []  # sorted priorities with queued messages
        self._control: dict[Hashable, bytes] = {}  # key -> the latest record, oldest key first
        self._bytes: dict[int, int] = {}  # priority -> what its unsent messages count for
        self._limit = queue_limit
        self._drop_after = drop_after
        self._dropped_bytes: dict[int, int] = {}  # priority -> bytes discarded since the last take
        self._overhead = message_overhead
        self._unfinished = 0  # begun, unfinished messages, each counted whole (bytes + overhead)
        self._unfinished_limit = unfinished_limit

    def __bool__(self) -> bool:
        return bool(self._active or self._control)

    def queued_bytes(self, priority: int) -> int:
        """What the unsent messages at ``priority`` count for: their unsent bytes plus the overhead each."""
        return self._bytes.get(priority, 0)

    @property
    def queued_control(self) -> int:
        """Control records waiting to go out (at most one per key)."""
        return len(self._control)

    @property
    def unfinished(self) -> int:
        """What the messages begun and not finished count for (the receiver holds their first chunks)."""
        return self._unfinished

    def push_control(self, key: Hashable, record: bytes) -> None:
        """Queue an encoded control record under ``key``, replacing one still queued there.

        It goes out ahead of all data.  One record per key is what bounds the
        answers a peer that never reads can make us queue.
        """
        self._control[key] = record

    def push(self, priority: int, data: bytes, now: float) -> int:
        """Queue one message; returns how many droppable messages were discarded to make room."""
        queue = self._queues.get(priority)
        if queue is None:
            queue = self._queues[priority] = deque()
            bisect.insort(self._active, priority)
        queue.append(_Queued(data, now))
        total = self._bytes[priority] = self._bytes.get(priority, 0) + len(data) + self._overhead
        if priority < DROP_PRIORITY or total <= self._limit:
            return 0
        return self._drop(priority, lambda item: self._bytes[priority] > self._limit)

    def _drop(self, priority: int, should_drop: Callable[[_Queued], bool]) -> int:
        queue = self._queues[priority]
        kept: deque[_Queued] = deque()
        dropped = 0
        for item in queue:
            if item.offset == 0 and should_drop(item):
                cost = len(item.data) + self._overhead
                self._bytes[priority] -= cost
                self._dropped_bytes[priority] = self._dropped_bytes.get(priority, 0) + cost
                dropped += 1
            else:
                kept.append(item)
        self._queues[priority] = kept
        if not kept:
            self._forget(priority)
        return dropped

    def take_dropped_bytes(self) -> list[tuple[int, int]]:
        """``(priority, bytes)`` discarded since the last call: room the sender may use again."""
        dropped, self._dropped_bytes = self._dropped_bytes, {}
        return list(dropped.items())

    def _forget(self, priority: int) -> None:
        del self._queues[priority]
        self._active.remove(priority)
        self._bytes.pop(priority, None)

    def expire(self, now: float) -> list[tuple[int, int]]:
        """Discard droppable messages older than ``drop_after``: ``[(priority, count), ...]``."""
        cutoff = now - self._drop_after
        report = []
        for priority in [p for p in self._active if p >= DROP_PRIORITY]:
            count = self._drop(priority, lambda item: item.queued_at <= cutoff)
            if count:
                report.append((priority, count))
        return report

    def next_expiry(self) -> float | None:
        """When the oldest unsent droppable message expires, if any."""
        soonest: float | None = None
        for priority in self._active:
            if priority < DROP_PRIORITY:
                continue
            for item in self._queues[priority]:
                if item.offset == 0:  # queues are FIFO: the first unsent one is the oldest
                    deadline = item.queued_at + self._drop_after
                    if soonest is None or deadline < soonest:
                        soonest = deadline
                    break
        return soonest

    def restart_partial(self) -> None:
        """Send half-sent messages again from their first byte (the peer moved to a new connection).

        The receiver's reassembly state died with the old connection's
        channel, so a message cut in the middle must start over.
        """
        self._unfinished = 0
        for priority, queue in self._queues.items():
            if queue and queue[0].offset:
                self._bytes[priority] += queue[0].offset
                queue[0].offset = 0

    def fill(self, capacity: int) -> tuple[list[bytes | memoryview], list[tuple[int, int]]]:
        """Record pieces for one frame of at most ``capacity`` bytes, and ``(priority, bytes)`` released.

        Control records always go first; at least one is taken even if it is
        larger than ``capacity`` (they are tiny; this only guards liveness).
        """
        pieces: list[bytes | memoryview] = []
        used = 0
        control = self._control
        while control:
            key = next(iter(control))
            record = control[key]
            if pieces and used + len(record) > capacity:
                break
            del control[key]
            pieces.append(record)
            used += len(record)
        released: list[tuple[int, int]] = []
        full = blocked = False
        overhead = self._overhead
        for priority in list(self._active):
            if full or used + _DATA_HEADER_SIZE >= capacity:
                break
            queue = self._queues[priority]
            sent = 0
            while queue and used + _DATA_HEADER_SIZE < capacity:
                item = queue[0]
                remaining = len(item.data) - item.offset
                n = min(capacity - used - _DATA_HEADER_SIZE, remaining)
                last = n == remaining
                if not last and pieces and remaining <= capacity - _DATA_HEADER_SIZE:
                    full = True  # it fits whole in the next frame: cutting it would only cost copies
                    break
                if not last and item.offset == 0 and not self._begin(len(item.data) + overhead, blocked):
                    blocked = True  # it waits for begun messages to finish, and so do less urgent big ones
                    break
                pieces.append(data_record_header(priority, n, last))
                pieces.append(item.data if (item.offset == 0 and last) else memoryview(item.data)[item.offset:item.offset + n])
                used += _DATA_HEADER_SIZE + n
                sent += n
                if last:
                    if item.offset:
                        self._unfinished -= len(item.data) + overhead
                    sent += overhead
                    queue.popleft()
                else:
                    item.offset += n
            if sent:
                released.append((priority, sent))
                self._bytes[priority] -= sent
            if not queue:
                self._forget(priority)
        return pieces, released

    def _begin(self, cost: int, blocked: bool) -> bool:
        """Whether a message counting ``cost`` may be cut into chunks now (then it counts as begun)."""
        if blocked or (self._unfinished and self._unfinished + cost > self._unfinished_limit):
            return False
        self._unfinished += cost
        return True
