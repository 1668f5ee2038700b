"""The dispatcher: runs user callbacks for events, one at a time, in the order posted.

The reactor thread must never run user code (a slow or blocking callback
would stall every socket), so it only posts events here; the dispatcher runs
the user's handlers on its own thread (``crust-dispatch``), or on whichever
thread calls :meth:`Dispatcher.run_callbacks` in manual mode.

Theory of operation
-------------------
One queue, one lock.  Producers append under the lock and notify only when
the consumer is actually asleep, so a post costs a lock round and a deque
append.  The consumer swaps the whole deque out under the lock and delivers
the batch without it, so lock traffic is one round per batch, not per event.
Events are delivered in the order they were posted; one event's handlers
finish (and ``on_delivered`` runs) before the next event's start.

A handler that raises is logged with its traceback, naming the handler and
the event type (``socketserver.handle_error``'s policy), and delivery goes
on: one broken callback must not silence every later event.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Callable

from .errors import ServiceClosed
from .events import Event

__all__ = ["Dispatcher"]

logger = logging.getLogger("crust.dispatch")

_Handler = tuple[Callable[..., object], Callable[[Event], tuple[object, ...]]]


class Dispatcher:
    """Runs user callbacks for events, one at a time, in the order posted, on its own thread (or in run_callbacks for manual dispatch).

    Methods for any thread: :meth:`add_handler`, :meth:`post`, :meth:`post_many`,
    :meth:`close`, :meth:`in_dispatch_thread`, :attr:`pending`.
    Manual mode only: :meth:`run_callbacks`.
    """

    def __init__(
        self,
        *,
        manual: bool = False,
        name: str = "crust-dispatch",
        on_delivered: Callable[[Event], None] | None = None,
    ) -> None:
        """Create a dispatcher; nothing runs until :meth:`start`.

        Args:
            manual: True means no thread: the application calls :meth:`run_callbacks`.
            name: the thread's name (keep the ``crust-`` prefix for the test guards).
            on_delivered: called with each event after all its handlers ran.
        """
        self._manual = manual
        self._name = name
        self._on_delivered = on_delivered
        # Guards _queue, _waiting and _closed: the one handoff between the
        # reactor (producer) and the consumer thread.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: deque[Event] = deque()
        self._batch: deque[Event] = deque()  # taken from _queue, being delivered (consumer only)
        self._waiting = False  # the consumer sleeps on _cond and needs a notify
        self._closed = False
        # Copy-on-write: add_handler replaces the dict under _handlers_lock, and
        # delivery reads the current dict without a lock (a reference read is atomic).
        self._handlers: dict[type[Event], tuple[_Handler, ...]] = {}
        self._handlers_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._delivering_ident: int | None = None  # thread inside run_callbacks (manual mode)

    # -- configuration and lifecycle ------------------------------------------------------

    def add_handler(
        self,
        event_type: type[Event],
        handler: Callable[..., object],
        args: Callable[[Event], tuple[object, ...]],
    ) -> None:
        """Call ``handler(*args(event))`` for every event of exactly ``event_type``.

        Handlers of one type run in the order they were added.  Thread-safe.
        """
        with self._handlers_lock:
            handlers = dict(self._handlers)
            handlers[event_type] = handlers.get(event_type, ()) + ((handler, args),)
            self._handlers = handlers

    def start(self) -> None:
        """Start the delivery thread (thread mode); does nothing in manual mode.

        Raises:
            ServiceClosed: :meth:`close` was called.
            RuntimeError: already started.
        """
        if self._closed:
            raise ServiceClosed("dispatcher is closed")
        if self._manual:
            return
        if self._thread is not None:
            raise RuntimeError("dispatcher already started")
        # Daemon, so a forgotten dispatcher cannot hang interpreter exit.
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what was posted, then stop.  Idempotent; later posts are dropped.

        Thread mode: the thread delivers every event posted before this call,
        then exits; ``close`` joins it (unless called from a callback, which runs
        on that very thread).  Manual mode, or a thread never started: queued
        events are discarded.

        Args:
            timeout: seconds to wait for the thread to finish delivering.
        """
        with self._cond:
            self._closed = True
            self._cond.notify_all()  # wake the thread, or a run_callbacks() waiting for events
        thread = self._thread
        if thread is None:
            with self._lock:
                dropped = len(self._queue)
                self._queue.clear()
            if dropped:
                logger.debug("dispatcher %s closed with %d undelivered events", self._name, dropped)
            return
        if thread is threading.current_thread():
            return  # a callback closed us: the loop exits once this callback returns
        thread.join(timeout)
        if thread.is_alive():
            logger.warning("dispatcher thread %s still delivering after %.1f s", self._name, timeout)

    def in_dispatch_thread(self) -> bool:
        """True on the dispatcher thread, or (manual mode) inside :meth:`run_callbacks`."""
        ident = threading.get_ident()
        if self._thread is not None:
            return self._thread.ident == ident
        return self._delivering_ident == ident

    @property
    def pending(self) -> int:
        """Events posted but not yet delivered (a snapshot)."""
        return len(self._queue) + len(self._batch)

    # -- producers -------------------------------------------------------------------------

    def post(self, event: Event) -> None:
        """Queue one event for delivery.  Any thread; cheap; dropped after :meth:`close`."""
        with self._lock:
            if self._closed:
                logger.debug("dispatcher %s closed: dropping %r", self._name, event)
                return
            self._queue.append(event)
            if self._waiting:
                self._cond.notify()

    def post_many(self, events: list[Event]) -> None:
        """Queue several events, in order, with one lock round.  Any thread."""
        if not events:
            return
        with self._lock:
            if self._closed:
                logger.debug("dispatcher %s closed: dropping %d events", self._name, len(events))
                return
            self._queue.extend(events)
            if self._waiting:
                self._cond.notify()

    # -- consumers -------------------------------------------------------------------------

    def run_callbacks(self, timeout: float = 0.0) -> int:
        """Deliver queued events on the calling thread (manual mode).

        Waits up to ``timeout`` seconds for a first event, then delivers every
        event queued at that moment (not ones posted meanwhile, so a busy
        producer cannot keep the caller here forever).

        Args:
            timeout: seconds to wait when nothing is queued; 0 does not wait.

        Returns:
            How many events were delivered (0 after :meth:`close`).

        Raises:
            RuntimeError: the dispatcher runs its own thread, or this is a
                nested or concurrent call (either would break the event order).
        """
        if not self._manual:
            raise RuntimeError("run_callbacks() is for manual mode; this dispatcher has its own thread")
        with self._cond:
            if self._delivering_ident is not None:
                raise RuntimeError("run_callbacks() is already running (nested or on another thread)")
            if not self._queue and timeout > 0 and not self._closed:
                self._waiting = True
                self._cond.wait_for(lambda: bool(self._queue) or self._closed, timeout)
                self._waiting = False
            if self._closed:
                return 0
            self._batch, self._queue = self._queue, self._batch
            self._delivering_ident = threading.get_ident()
        try:
            return self._deliver_batch()
        finally:
            self._delivering_ident = None

    def _run(self) -> None:
        cond = self._cond
        while True:
            with cond:
                while not self._queue and not self._closed:
                    self._waiting = True
                    cond.wait()
                    self._waiting = False
                if not self._queue:
                    return  # closed, and everything posted before close() was delivered
                # Swap rather than copy: _batch is empty here, and becomes the next _queue.
                self._batch, self._queue = self._queue, self._batch
            self._deliver_batch()

    def _deliver_batch(self) -> int:
        batch = self._batch
        popleft = batch.popleft
        count = 0
        # popleft one by one (not iteration) so `pending` stays true mid-batch.
        while batch:
            self._deliver(popleft())
            count += 1
        return count

    def _deliver(self, event: Event) -> None:
        for handler, args in self._handlers.get(type(event), ()):
            try:
                handler(*args(event))
            except Exception:
                logger.exception("dispatcher: handler %r for %s raised", handler, type(event).__name__)
        if self._on_delivered is not None:
            try:
                self._on_delivered(event)
            except Exception:
                logger.exception("dispatcher: on_delivered hook raised for %s", type(event).__name__)
