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
_HEADER_CACHE = 64  # whole-message headers an outbox keeps (distinct message sizes per peer)


class _Queue:
    """One priority's unsent messages, oldest first: no object per message.

    Only the head may be half sent (``offset`` of its bytes went out); only
    droppable priorities keep when each message was queued (``times``, in
    step with ``items``).
    """

    __slots__ = ("items", "times", "offset", "nbytes")

    def __init__(self, droppable: bool) -> None:
        self.items: deque[bytes] = deque()
        self.times: deque[float] | None = deque() if droppable else None
        self.offset = 0  # bytes of items[0] already in frames
        self.nbytes = 0  # what the unsent messages count for: unsent bytes plus the overhead each


class Outbox:
    """Per-priority FIFO queues with strict-priority, chunked frame filling."""

    __slots__ = ("_queues", "_active", "_control", "_limit", "_drop_after", "_dropped_bytes", "_overhead",
                 "_unfinished", "_unfinished_limit", "_headers")

    def __init__(self, *, queue_limit: int, drop_after: float, unfinished_limit: int,
                 message_overhead: int = MESSAGE_OVERHEAD) -> None:
        self._queues: dict[int, _Queue] = {}
        self._active: list[int] = []  # sorted priorities with queued messages
        self._control: dict[Hashable, bytes] = {}  # key -> the latest record, oldest key first
        self._limit = queue_limit
        self._drop_after = drop_after
        self._dropped_bytes: dict[int, int] = {}  # priority -> bytes discarded since the last take
        self._overhead = message_overhead
        self._unfinished = 0  # begun, unfinished messages, each counted whole (bytes + overhead)
        self._unfinished_limit = unfinished_limit
        # Headers of whole messages by (length, priority): a peer's messages mostly repeat a
        # few sizes, and a lookup costs a third of packing one.  Bounded by _HEADER_CACHE.
        self._headers: dict[tuple[int, int], bytes] = {}

    def __bool__(self) -> bool:
        return bool(self._active or self._control)

    def queued_bytes(self, priority: int) -> int:
        """What the unsent messages at ``priority`` count for: their unsent bytes plus the overhead each."""
        queue = self._queues.get(priority)
        return 0 if queue is None else queue.nbytes

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
            queue = self._queues[priority] = _Queue(priority >= DROP_PRIORITY)
            bisect.insort(self._active, priority)
        queue.items.append(data)
        queue.nbytes += len(data) + self._overhead
        times = queue.times
        if times is None:  # below DROP_PRIORITY: never dropped
            return 0
        times.append(now)
        if queue.nbytes <= self._limit:
            return 0
        return self._drop(priority, lambda when: queue.nbytes > self._limit)

    def _drop(self, priority: int, should_drop: Callable[[float], bool]) -> int:
        """Discard the unsent messages of droppable ``priority`` that ``should_drop(queued_at)``, oldest first."""
        queue = self._queues[priority]
        assert queue.times is not None
        items, times = queue.items, queue.times
        kept: deque[bytes] = deque()
        kept_times: deque[float] = deque()
        if queue.offset:  # a half-sent head is never dropped (the peer holds its first chunks)
            kept.append(items.popleft())
            kept_times.append(times.popleft())
        dropped = 0
        while items:
            data, when = items.popleft(), times.popleft()
            if should_drop(when):
                cost = len(data) + self._overhead
                queue.nbytes -= cost
                self._dropped_bytes[priority] = self._dropped_bytes.get(priority, 0) + cost
                dropped += 1
            else:
                kept.append(data)
                kept_times.append(when)
        queue.items, queue.times = kept, kept_times
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

    def expire(self, now: float) -> list[tuple[int, int]]:
        """Discard droppable messages older than ``drop_after``: ``[(priority, count), ...]``."""
        cutoff = now - self._drop_after
        report = []
        for priority in [p for p in self._active if p >= DROP_PRIORITY]:
            count = self._drop(priority, lambda when: when <= cutoff)
            if count:
                report.append((priority, count))
        return report

    def next_expiry(self) -> float | None:
        """When the oldest unsent droppable message expires, if any."""
        soonest: float | None = None
        for priority in self._active:
            queue = self._queues[priority]
            times = queue.times
            if times is None:
                continue
            # FIFO: the first message not yet begun is the oldest droppable one.
            first = 1 if queue.offset else 0
            if len(times) > first:
                deadline = times[first] + self._drop_after
                if soonest is None or deadline < soonest:
                    soonest = deadline
        return soonest

    def restart_partial(self) -> None:
        """Send half-sent messages again from their first byte (the peer moved to a new connection).

        The receiver's reassembly state died with the old connection's
        channel, so a message cut in the middle must start over.
        """
        self._unfinished = 0
        for queue in self._queues.values():
            if queue.offset:
                queue.nbytes += queue.offset
                queue.offset = 0

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
        overhead, headers, append = self._overhead, self._headers, pieces.append
        for priority in list(self._active):
            if full or used + _DATA_HEADER_SIZE >= capacity:
                break
            queue = self._queues[priority]
            items, times = queue.items, queue.times
            sent = 0
            while items and used + _DATA_HEADER_SIZE < capacity:
                data = items[0]
                offset = queue.offset
                remaining = len(data) - offset
                if not offset and remaining <= capacity - used - _DATA_HEADER_SIZE:
                    # The common case: a whole message that fits, its header from the cache.
                    header = headers.get((remaining, priority))
                    if header is None:
                        if len(headers) >= _HEADER_CACHE:
                            headers.clear()
                        header = headers[(remaining, priority)] = data_record_header(priority, remaining, True)
                    append(header)
                    append(data)
                    used += _DATA_HEADER_SIZE + remaining
                    sent += remaining + overhead
                    items.popleft()
                    if times is not None:
                        times.popleft()
                    continue
                n = min(capacity - used - _DATA_HEADER_SIZE, remaining)
                last = n == remaining
                if not last and pieces and remaining <= capacity - _DATA_HEADER_SIZE:
                    full = True  # it fits whole in the next frame: cutting it would only cost copies
                    break
                if not last and not offset and not self._begin(len(data) + overhead, blocked):
                    blocked = True  # it waits for begun messages to finish, and so do less urgent big ones
                    break
                append(data_record_header(priority, n, last))
                append(memoryview(data)[offset:offset + n])
                used += _DATA_HEADER_SIZE + n
                sent += n
                if last:
                    self._unfinished -= len(data) + overhead
                    sent += overhead
                    queue.offset = 0
                    items.popleft()
                    if times is not None:
                        times.popleft()
                else:
                    queue.offset = offset + n
            if sent:
                released.append((priority, sent))
                queue.nbytes -= sent
            if not items:
                self._forget(priority)
        return pieces, released

    def _begin(self, cost: int, blocked: bool) -> bool:
        """Whether a message counting ``cost`` may be cut into chunks now (then it counts as begun)."""
        if blocked or (self._unfinished and self._unfinished + cost > self._unfinished_limit):
            return False
        self._unfinished += cost
        return True
