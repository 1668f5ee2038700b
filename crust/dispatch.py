"""The dispatcher: runs user callbacks for events, one at a time, in the order posted.

The reactor thread must never run user code (a slow or blocking callback
would stall every socket), so it only posts events here; the dispatcher runs
the user's handlers on its own thread (``crust-dispatch``), or on whichever
thread calls :meth:`Dispatcher.run_callbacks` in manual mode.

Theory of operation
-------------------
One ``queue.SimpleQueue`` of batches (a list of events per post).  Its
``put`` and ``get`` are C: the consumer blocks in ``get()`` with the GIL
released, and a put wakes it without Python-level ``Condition`` code on
either side.  Under the GIL that matters for latency: a woken thread runs
only once the running one lets go of the GIL, so the less Python each side
runs around the handoff, the sooner the other side starts (the reactor's
call back to ``select()``, the consumer's return to ``get()``).  A post
costs one put per batch, not per event.

A small lock, taken by producers and :meth:`Dispatcher.close` only, makes
"closed" and the close marker (``None``) one step: a batch is either put
before the marker, and delivered, or dropped with a debug line.  Counts of
events posted and delivered (each written by one side) give :attr:`pending`.
Events are delivered in the order they were posted; one event's handlers
finish before the next event's start.  ``on_delivered`` (the Service's
receive back-pressure) hears of delivered events per slice of a batch, not
per event: the hook then costs one call per slice.

A handler that raises is logged with its traceback, naming the handler and
the event type (``socketserver.handle_error``'s policy), and delivery goes
on: one broken callback must not silence every later event.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable

from .errors import ServiceClosed
from .events import Event

__all__ = ["Dispatcher"]

logger = logging.getLogger("crust.dispatch")

# Events per on_delivered call.  One call per slice instead of per event; a short slice keeps
# what the hook has not heard of yet small: 16 messages of 64 KiB are 1 MiB, an eighth of the
# default receive backlog (what DeliveryTally may itself hold back), so the reactor hears of
# deliveries, and reads a paused peer again, while the rest of a long batch is delivered.
_SLICE = 16


class _Handler:
    """One registration: the user's function, its arguments from the event, and whether it still counts."""

    __slots__ = ("fn", "args", "active")

    def __init__(self, fn: Callable[..., object], args: Callable[[Event], tuple[object, ...]]) -> None:
        self.fn = fn
        self.args = args
        self.active = True  # cleared by remove_handler: delivery checks it before each call


class Dispatcher:
    """Runs user callbacks for events, one at a time, in the order posted, on its own thread (or in run_callbacks for manual dispatch).

    Methods for any thread: :meth:`add_handler`, :meth:`remove_handler`, :meth:`post`, :meth:`post_many`,
    :meth:`close`, :meth:`in_dispatch_thread`, :attr:`pending`.
    Manual mode only: :meth:`run_callbacks`.
    """

    def __init__(
        self,
        *,
        manual: bool = False,
        name: str = "crust-dispatch",
        on_delivered: Callable[[list[Event]], None] | None = None,
    ) -> None:
        """Create a dispatcher; nothing runs until :meth:`start`.

        Args:
            manual: True means no thread: the application calls :meth:`run_callbacks`.
            name: the thread's name (keep the ``crust-`` prefix for the test guards).
            on_delivered: called with consecutive delivered events (a slice of a batch, in
                order) once all their handlers ran; every event is in exactly one call.
        """
        self._manual = manual
        self._name = name
        self._on_delivered = on_delivered
        # The one handoff between producers (the reactor) and the consumer: batches, then
        # None once closed.  _lock makes the closed check and the put one step for producers.
        self._queue: queue.SimpleQueue[list[Event] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._posted = 0  # events put (written under _lock)
        self._delivered = 0  # events taken for delivery (written by the consumer only)
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
            handlers[event_type] = handlers.get(event_type, ()) + (_Handler(handler, args),)
            self._handlers = handlers

    def remove_handler(self, handler: Callable[..., object]) -> bool:
        """Remove every registration of ``handler`` (compared with ``==``), for every event type.

        No call of it begins once this returns, not even within an event whose
        delivery has started (delivery checks each registration before its call).
        Thread-safe.

        Returns:
            Whether ``handler`` was registered.
        """
        with self._handlers_lock:
            found = False
            handlers: dict[type[Event], tuple[_Handler, ...]] = {}
            for event_type, entries in self._handlers.items():
                kept = []
                for entry in entries:
                    if entry.fn == handler:
                        entry.active = False
                        found = True
                    else:
                        kept.append(entry)
                if kept:
                    handlers[event_type] = tuple(kept)
            self._handlers = handlers
            return found

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
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(None)  # wakes the thread, or a run_callbacks() waiting for events
        thread = self._thread
        if thread is None:
            dropped = self._discard_queued()
            if dropped:
                logger.debug("dispatcher %s closed with %d undelivered events", self._name, dropped)
            return
        if thread is threading.current_thread():
            return  # a callback closed us: the loop exits once this callback returns
        thread.join(timeout)
        if thread.is_alive():
            logger.warning("dispatcher thread %s still delivering after %.1f s", self._name, timeout)

    def _discard_queued(self) -> int:
        """Drop every queued batch (manual mode's close); the close marker goes back for a waiting caller."""
        dropped = 0
        while True:
            try:
                batch = self._queue.get_nowait()
            except queue.Empty:
                break
            dropped += len(batch or ())
        self._delivered += dropped
        self._queue.put(None)
        return dropped

    def in_dispatch_thread(self) -> bool:
        """True on the dispatcher thread, or (manual mode) inside :meth:`run_callbacks`."""
        ident = threading.get_ident()
        if self._thread is not None:
            return self._thread.ident == ident
        return self._delivering_ident == ident

    @property
    def pending(self) -> int:
        """Events posted but not yet delivered (a snapshot)."""
        return self._posted - self._delivered

    # -- producers -------------------------------------------------------------------------

    def post(self, event: Event) -> None:
        """Queue one event for delivery.  Any thread; cheap; dropped after :meth:`close`."""
        self.post_many([event])

    def post_many(self, events: list[Event]) -> None:
        """Queue several events, in order, as one batch (the list is the dispatcher's from now on).  Any thread."""
        if not events:
            return
        with self._lock:
            if self._closed:
                logger.debug("dispatcher %s closed: dropping %d events", self._name, len(events))
                return
            self._posted += len(events)
            self._queue.put(events)

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
        with self._lock:
            if self._delivering_ident is not None:
                raise RuntimeError("run_callbacks() is already running (nested or on another thread)")
            self._delivering_ident = threading.get_ident()
        try:
            if self._closed:
                return 0
            try:
                first = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                return 0
            # The batches queued now; ones posted during delivery wait for the next call.
            batches = [first] + [self._queue.get_nowait() for _ in range(self._queue.qsize())]
            count = 0
            for batch in batches:
                if batch is None:
                    self._queue.put(None)  # closed meanwhile: leave the marker for the next caller
                    return count
                if self._closed:  # closed by a callback: the rest is discarded, as close() does
                    self._delivered += len(batch)
                    continue
                count += self._deliver_batch(batch)
            return count
        finally:
            self._delivering_ident = None

    def _run(self) -> None:
        get, deliver_batch = self._queue.get, self._deliver_batch
        while True:
            batch = get()  # blocks in C, GIL released (module docstring)
            if batch is None:
                return  # closed, and everything posted before close() was delivered
            deliver_batch(batch)

    def _deliver_batch(self, batch: list[Event]) -> int:
        """Deliver ``batch`` in slices of up to ``_SLICE`` events, telling ``on_delivered`` after each slice.

        The hot loop of the receive path (one pass per message), so it
        inlines what used to be a call per event: the handler lookup (the
        table is read afresh for every event, so a handler added or removed
        by a callback applies from the next event on) and each handler's
        ``active`` check.  ``on_delivered`` hears of each slice once every
        handler of every event in it has run; a slice stays short so that
        delivered bytes are handed back (and a paused peer read again)
        while the rest of a long batch is still being delivered.
        """
        on_delivered = self._on_delivered
        size = len(batch)
        for start in range(0, size, _SLICE):
            part = batch if size <= _SLICE else batch[start:start + _SLICE]
            for event in part:
                # Counted before the handlers run, so `pending` excludes the event being delivered.
                self._delivered += 1
                for entry in self._handlers.get(type(event), ()):
                    if not entry.active:
                        continue
                    try:
                        entry.fn(*entry.args(event))
                    except Exception:
                        logger.exception("dispatcher: handler %s for %s raised", _name(entry.fn),
                                         type(event).__name__)
            if on_delivered is not None:
                try:
                    on_delivered(part)
                except Exception:
                    logger.exception("dispatcher: on_delivered hook raised for %d events", len(part))
        return size


def _name(fn: Callable[..., object]) -> str:
    """How a log line names a handler: ``module.qualname``, not its repr."""
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    module = getattr(fn, "__module__", None)
    return f"{module}.{qualname}" if module else str(qualname)
