"""The reactor: crust's only ``selector.select()``, on one thread.

Theory of operation
-------------------
One thread (``crust-io``) owns every socket and the engine.  Each turn of its
loop does, in this order:

1. compute the select timeout: 0 if work is already queued, else the time to
   the earliest live timer, else block;
2. ``select()``, then call ``key.data(mask)`` for every ready socket (the
   callback lives in the selector key, as CPython's ``selectors`` suggests);
3. run the closures other threads posted with ``call_soon_threadsafe``;
4. drain the wakeup socket if it was ready;
5. run the timers that are due;
6. run the ``call_soon`` closures queued so far.  Ones queued while this
   phase runs wait for the next turn (with timeout 0), so a closure that keeps
   re-queueing itself cannot starve sockets, timers or other threads.

The order puts the latency-bound work first: a ``send()`` posted by another
thread reaches its socket before the turn reads the wakeup byte or looks at
the timers (a round trip waits on this; timers seldom have anything due),
and the ``call_soon`` phase, where the shell hands the turn's events to
the dispatcher, comes last, just before the GIL is let go in ``select()``.

Every callback is guarded: an exception is logged with its traceback and the
loop goes on (``socketserver.handle_error``'s policy; trio's "never swallow
silently").

Waking the loop from another thread
-----------------------------------
A blocked ``select()`` is woken by writing a byte to one end of a socketpair
whose other end is registered for reading (trio's ``WakeupSocketpair``; the
alternative, polling, is what ``socketserver.serve_forever`` flags as its own
bug).  A syscall per post would cap crust at a few hundred thousand posts per
second and waste the loop's time draining bytes, so writes are batched with
one flag, ``_awake``, meaning "the loop will look at the post queue before it
next blocks":

* the loop sets it just after ``select()`` returns and clears it just before
  it decides the next timeout (and that decision looks at the queue);
* a poster appends first, then writes a byte only if the flag is clear (and
  sets it, so the posters after it do not write too).

A post either lands before the loop clears the flag, and then the loop sees
it when choosing the timeout, or it sees the flag clear and writes the byte
that wakes ``select()``.  While the loop is busy, posts cost a deque append
and nothing else.  The GIL makes each of these steps atomic; no lock is used.

Batches for one function (:class:`Inbox`)
-----------------------------------------
A call per item is what a message-per-call producer cannot afford (a tuple
of arguments, a call and its frame per message on the loop), so an
:class:`Inbox` rides on the same call queue: items go into the inbox's own
deque, and only the first item of a burst posts the inbox's drain, which
hands the loop function every item present in one call.  Its flag,
``_posted``, means "a drain is posted and has not started": a putter appends
first and posts only if the flag is clear; the drain clears it before it
looks at the deque, so an item is either seen by a drain already posted or
posts one itself.  Two putters racing past a clear flag post two drains, and
the second finds fewer items (or none): harmless, so no lock.  The inbox adds
no way into the loop thread: its drain is one call on the call queue.  An
item is drained before any call its thread posts after putting it; it may
be drained before a call that thread posted earlier, when a drain another
thread posted even earlier carries it (crust's user-facing commands wait for
their answer, so a ``send()`` never overtakes one).
"""

from __future__ import annotations

import concurrent.futures
import heapq
import logging
import selectors
import socket
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Generic, Protocol, TypeVar

from ..errors import CrustTimeoutError, ServiceClosed

if TYPE_CHECKING:  # typing has them from 3.11; crust runs on 3.10 too
    from typing import TypeVarTuple, Unpack

    Ts = TypeVarTuple("Ts")

__all__ = ["Cancellable", "Deadline", "Inbox", "Reactor", "TimerHandle"]

logger = logging.getLogger("crust.transport")

_WAKEUP_RECV_SIZE = 4096  # bytes drained per recv from the wakeup socket
_COMPACT_MIN_CANCELLED = 256  # cancelled timers tolerated before the heap is rebuilt
_EVENT_READ = selectors.EVENT_READ

T = TypeVar("T")
_Call = tuple[Callable[..., object], tuple[Any, ...]]  # a queued call: the function and its arguments


class TimerHandle:
    """A timer made by :meth:`Reactor.call_at` / :meth:`Reactor.call_later`.

    Attributes:
        when: the ``Reactor.time()`` at which the callback is due.
    """

    __slots__ = ("when", "_callback", "_reactor")

    def __init__(self, reactor: Reactor, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        # None once the timer ran or was cancelled: the heap entry is then dead.
        self._callback: Callable[[], object] | None = callback
        self._reactor = reactor

    def cancel(self) -> None:
        """Stop the callback from running.  Safe to call twice or after it ran.

        Call it on the reactor thread, like ``call_at``.
        """
        if self._callback is not None:
            self._callback = None
            self._reactor._timer_cancelled()

    @property
    def cancelled(self) -> bool:
        """True once the timer was cancelled or has run."""
        return self._callback is None

    def __repr__(self) -> str:
        state = "done" if self._callback is None else repr(self._callback)
        return f"<TimerHandle when={self.when:.3f} {state}>"


class Cancellable(Protocol):
    """A timer that can be stopped (:class:`TimerHandle`, or a simulator's)."""

    def cancel(self) -> None:
        """Stop the timer; safe after it ran."""


class Deadline:
    """A sans-IO machine's one timer: ``arm(machine.get_timer())`` after every pump.

    Every machine the shell runs (the engine, each rUDP stream) reports its
    next deadline with ``get_timer()``; this keeps exactly one timer at that
    time and calls ``fire()`` when it is due.  Re-arming for the deadline
    already set costs nothing.

    ``lazy=True`` keeps an armed timer when the deadline moves *later*: it
    fires early, the machine finds nothing due, and the pump re-arms.  That
    suits a machine whose deadline moves on every input (the engine's
    heartbeats) better than a cancel and a new heap entry per input.

    Args:
        call_at: ``Reactor.call_at``, or a simulator's.
        fire: called once the armed time is reached.
        lazy: see above.
    """

    __slots__ = ("when", "_call_at", "_fire", "_lazy", "_handle")

    def __init__(self, call_at: Callable[[float, Callable[[], object]], Cancellable], fire: Callable[[], object],
                 *, lazy: bool = False) -> None:
        self.when: float | None = None  # the armed time, None when no timer is armed
        self._call_at = call_at
        self._fire = fire
        self._lazy = lazy
        self._handle: Cancellable | None = None

    def arm(self, when: float | None) -> None:
        """Fire at ``when`` (None: never), replacing the armed time (if ``lazy``: only by an earlier one)."""
        current = self.when
        if when == current or (self._lazy and current is not None and (when is None or when > current)):
            return
        if self._handle is not None:
            self._handle.cancel()
        self.when = when
        self._handle = None if when is None else self._call_at(when, self._run)

    def cancel(self) -> None:
        """Disarm, lazy or not."""
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self.when = None

    def _run(self) -> None:
        self._handle = self.when = None
        self._fire()


class Inbox(Generic[T]):
    """Items from any thread, handed to one reactor-thread function in batches (module docstring).

    Args:
        post: ``Reactor.call_soon_threadsafe`` (or a test's stand-in).
        drain: runs on the reactor with the deque and how many items to take
            from its left (those present when the drain began); it must
            ``popleft()`` exactly that many.  Later items wait for the next drain.
    """

    __slots__ = ("_items", "_posted", "_post", "_drain", "_run_cb")

    def __init__(self, post: Callable[[Callable[[], object]], None],
                 drain: Callable[[deque[T], int], None]) -> None:
        self._items: deque[T] = deque()  # any thread appends, only the drain pops
        self._posted = False  # a drain is posted and has not started (module docstring)
        self._post = post
        self._drain = drain
        self._run_cb = self._run  # bound once: posted once per burst

    def put(self, item: T) -> None:
        """Queue ``item`` for the drain; the first item of a burst posts it.  Any thread.

        Raises:
            ServiceClosed: the reactor is stopping (``item`` may never be drained).
        """
        self._items.append(item)
        if not self._posted:
            self._posted = True
            try:
                self._post(self._run_cb)
            except BaseException:
                self._posted = False
                raise

    def __len__(self) -> int:
        return len(self._items)

    def _run(self) -> None:
        self._posted = False  # before reading the deque: see the module docstring
        items = self._items
        self._drain(items, len(items))


class Reactor:
    """The only ``selector.select()`` in crust: one thread runs socket callbacks, timers and posted calls.

    Methods for any thread: :meth:`start`, :meth:`stop`,
    :meth:`call_soon_threadsafe`, :meth:`time`, :meth:`in_reactor_thread`.

    Methods for the reactor thread only (or any thread before :meth:`start`):
    :meth:`call_soon`, :meth:`call_at`, :meth:`call_later`, :meth:`register`,
    :meth:`modify`, :meth:`unregister`.  They take no lock, which is what
    makes them cheap; calling them from elsewhere corrupts the loop's state.
    """

    def __init__(self, name: str = "crust-io") -> None:
        """Create the selector and the wakeup socketpair; no thread runs until :meth:`start`.

        Args:
            name: the thread's name (keep the ``crust-`` prefix: the test guards look for it).
        """
        self._name = name
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        # Non-blocking writer: if the pair's buffer were ever full, the loop
        # already has bytes to wake on, so a poster must not block on it.
        self._wake_w.setblocking(False)
        # The wakeup socket's key carries no callback: the loop drains it itself, later in the turn.
        self._selector.register(self._wake_r, _EVENT_READ, None)

        # Cross-thread handoff: any thread appends, only the loop pops.
        # deque.append/popleft are atomic under the GIL, so no lock is needed.
        self._posted: deque[_Call] = deque()
        # Reactor-thread-only queues: no synchronisation needed.
        self._soon: deque[_Call] = deque()
        self._timers: list[tuple[float, int, TimerHandle]] = []
        self._timer_seq = 0  # breaks ties so equal deadlines run in call order
        self._cancelled_timers = 0

        # See the module docstring: True means "the loop will check _posted before blocking".
        self._awake = False
        self._closing = False  # stop() began: posting is refused
        self._stop_requested = False  # the loop exits at the end of its current turn
        self._resources_closed = False
        self._wakeups = 0
        # Which turn of the loop runs now (reactor thread; others may read a stale value).
        # A stream sends its first write of a turn at once and gathers the rest (transport.tcp).
        self.turn = 0
        self._thread: threading.Thread | None = None
        self._thread_ident: int | None = None
        self._stop_lock = threading.Lock()  # serialises concurrent stop() callers

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Start the loop thread (a daemon, so a forgotten reactor cannot hang interpreter exit).

        Raises:
            RuntimeError: it was already started.
            ServiceClosed: :meth:`stop` was called.
        """
        if self._closing:
            raise ServiceClosed("reactor is stopped")
        if self._thread is not None:
            raise RuntimeError("reactor already started")
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop, join its thread and close the selector and wakeup sockets.

        The loop first runs every call already posted.  Sockets that others
        registered are not closed (their owners do that); any still registered
        are unregistered here with a warning.  Idempotent.

        Args:
            timeout: seconds to wait for the thread to exit.

        Raises:
            RuntimeError: called from the reactor thread (it cannot join itself).
        """
        if self.in_reactor_thread():
            raise RuntimeError("Reactor.stop() called from the reactor thread; post it elsewhere")
        with self._stop_lock:
            self._closing = True
            self._stop_requested = True
            thread = self._thread
            if thread is not None and thread.is_alive():
                self._send_wakeup()
                thread.join(timeout)
                if thread.is_alive():
                    # Closing the selector under a running select() would crash the loop
                    # somewhere random; leaking it is the lesser evil.
                    logger.warning("reactor thread %s did not exit within %.1f s", self._name, timeout)
                    return
            self._close_resources()

    def _close_resources(self) -> None:
        if self._resources_closed:
            return
        self._resources_closed = True
        dropped = len(self._posted) + len(self._soon)
        if dropped:
            # Only posts that raced with stop() itself can be here.
            logger.debug("reactor %s dropped %d calls queued while stopping", self._name, dropped)
        self._posted.clear()
        self._soon.clear()
        self._timers.clear()
        leftovers = [key.fileobj for key in self._selector.get_map().values() if key.fileobj is not self._wake_r]
        if leftovers:
            logger.warning("reactor %s stopped with %d sockets still registered (fds %s)", self._name, len(leftovers),
                           ", ".join(str(_fd(sock)) for sock in leftovers))
            for fileobj in leftovers:
                self._selector.unregister(fileobj)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    @property
    def running(self) -> bool:
        """True from :meth:`start` until :meth:`stop` is called."""
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._stop_requested

    @property
    def wakeups(self) -> int:
        """How many wakeup bytes the loop has drained so far (a statistic for tests and benchmarks)."""
        return self._wakeups

    def in_reactor_thread(self) -> bool:
        """True if the caller runs on the reactor thread."""
        return self._thread_ident == threading.get_ident()

    # The reactor's clock, in seconds: ``time.monotonic`` itself rather than a method calling it,
    # since the hot paths read it once per message.
    time = staticmethod(time.monotonic)

    # -- posting work --------------------------------------------------------------

    def call_soon_threadsafe(self, fn: Callable[[Unpack[Ts]], object], *args: Unpack[Ts]) -> None:
        """Run ``fn(*args)`` on the reactor thread soon.  Any thread; calls run in the order posted.

        This is the one way into the reactor thread (ARCHITECTURE.md §6).  A
        burst of posts costs one wakeup (see the module docstring), and the
        arguments ride along without a closure.  A producer of one item per
        message posts through an :class:`Inbox` instead: one call per burst.
        A call that races with :meth:`stop` (posted while ``stop()`` is being
        called) may be dropped; it is logged at debug level.

        Raises:
            ServiceClosed: :meth:`stop` has begun.
        """
        if self._closing:
            raise ServiceClosed("reactor is stopped")
        self._posted.append((fn, args))
        if not self._awake:
            self._awake = True
            self._send_wakeup()

    def call(self, fn: Callable[[], T], timeout: float | None = None) -> T:
        """Run ``fn()`` on the reactor thread and wait for its result.  Any thread.

        On the reactor thread itself ``fn`` runs at once (waiting would deadlock).

        Raises:
            whatever ``fn`` raised, on the calling thread;
            CrustTimeoutError: no result within ``timeout`` seconds (``fn`` may still run);
            ServiceClosed: :meth:`stop` has begun.
        """
        if self.in_reactor_thread():
            return fn()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed over to the waiting thread
                future.set_exception(exc)

        self.call_soon_threadsafe(run)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise CrustTimeoutError(f"the reactor did not run the call within {timeout} s") from None

    def _send_wakeup(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except BlockingIOError:
            pass  # the pair is full of unread wakeups: the loop will wake anyway
        except OSError as err:
            # The wakeup socket is closed only after stop() began.
            raise ServiceClosed("reactor is stopped") from err

    def call_soon(self, fn: Callable[[Unpack[Ts]], object], *args: Unpack[Ts]) -> None:
        """Run ``fn(*args)`` in this turn's "soon" phase, before the next ``select()``.  Reactor thread only."""
        self._soon.append((fn, args))

    def call_at(self, when: float, fn: Callable[[], object]) -> TimerHandle:
        """Run ``fn()`` once ``Reactor.time() >= when``.  Reactor thread only.

        Returns:
            A handle whose ``cancel()`` stops the call.
        """
        handle = TimerHandle(self, when, fn)
        self._timer_seq += 1
        heapq.heappush(self._timers, (when, self._timer_seq, handle))
        return handle

    def call_later(self, delay: float, fn: Callable[[], object]) -> TimerHandle:
        """Run ``fn()`` after ``delay`` seconds.  Reactor thread only.

        Returns:
            A handle whose ``cancel()`` stops the call.
        """
        return self.call_at(time.monotonic() + delay, fn)

    def _timer_cancelled(self) -> None:
        # Cancellation is lazy (the heap entry stays until popped), but a program
        # that cancels nearly every timer it sets (idle timeouts) would grow the
        # heap without bound, so rebuild it once most entries are dead.
        self._cancelled_timers += 1
        if self._cancelled_timers > _COMPACT_MIN_CANCELLED and self._cancelled_timers * 2 > len(self._timers):
            # In place: _run_timers may be iterating this very list (a timer cancelling others).
            self._timers[:] = [entry for entry in self._timers if entry[2]._callback is not None]
            heapq.heapify(self._timers)
            self._cancelled_timers = 0

    # -- sockets ---------------------------------------------------------------------

    def register(self, sock: socket.socket, events: int, callback: Callable[[int], None]) -> None:
        """Call ``callback(mask)`` whenever ``sock`` is ready for ``events``.  Reactor thread only.

        Args:
            sock: the socket (the reactor never closes it).
            events: ``selectors.EVENT_READ`` and/or ``selectors.EVENT_WRITE``.
            callback: called with the ready mask; stored as the selector key's data.
        """
        self._selector.register(sock, events, callback)

    def modify(self, sock: socket.socket, events: int, callback: Callable[[int], None]) -> None:
        """Change what a registered socket waits for and its callback.  Reactor thread only."""
        self._selector.modify(sock, events, callback)

    def unregister(self, sock: socket.socket) -> None:
        """Stop watching ``sock``; no error if it was not registered.  Reactor thread only."""
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass

    # -- the loop ----------------------------------------------------------------------

    def _drain_wakeup(self) -> None:
        # Drain fully: bytes left behind would make every select() return at once.
        recv = self._wake_r.recv
        try:
            while True:
                data = recv(_WAKEUP_RECV_SIZE)
                self._wakeups += len(data)
                if len(data) < _WAKEUP_RECV_SIZE:
                    return
        except BlockingIOError:
            return

    def _run(self) -> None:
        self._thread_ident = threading.get_ident()
        select = self._selector.select
        posted = self._posted
        soon = self._soon
        monotonic = time.monotonic
        try:
            while not self._stop_requested:
                self.turn += 1
                self._awake = False
                # Decide the timeout only after clearing _awake (module docstring).
                if posted or soon:
                    timeout: float | None = 0.0
                else:
                    timeout = self._timer_timeout(monotonic)
                ready = select(timeout)
                self._awake = True
                woken = False
                for key, mask in ready:
                    callback = key.data
                    if callback is None:  # the wakeup socket
                        woken = True
                        continue
                    try:
                        callback(mask)
                    except Exception:
                        logger.exception("reactor: socket callback %s raised", callable_name(callback))
                if posted:
                    self._run_queue(posted)
                if woken:
                    self._drain_wakeup()
                if self._timers:
                    self._run_timers(monotonic())
                if soon:
                    self._run_queue(soon)
            # stop(): finish what was posted before it, and what those calls queued.
            self._run_queue(posted)
            for _ in range(16):  # bounded: a self-requeueing closure must not block stop()
                if not soon:
                    break
                self._run_queue(soon)
        finally:
            # Also reached if a BaseException killed the loop: refuse posts from
            # then on rather than let their callers wait forever.
            self._closing = True
            self._thread_ident = None

    def _timer_timeout(self, monotonic: Callable[[], float]) -> float | None:
        timers = self._timers
        # Pop dead heads so a cancelled timer does not cause an early wakeup.
        while timers and timers[0][2]._callback is None:
            heapq.heappop(timers)
            self._cancelled_timers -= 1
        if not timers:
            return None
        return max(0.0, timers[0][0] - monotonic())

    def _run_timers(self, now: float) -> None:
        timers = self._timers
        # Bounded by the heap size at the start, so timers set to fire "now"
        # from inside a timer wait for the next turn.
        budget = len(timers)
        while timers and budget and timers[0][0] <= now:
            budget -= 1
            handle = heapq.heappop(timers)[2]
            callback = handle._callback
            if callback is None:
                self._cancelled_timers -= 1
                continue
            handle._callback = None
            try:
                callback()
            except Exception:
                logger.exception("reactor: timer callback %s raised", callable_name(callback))

    @staticmethod
    def _run_queue(queue: deque[_Call]) -> None:
        # Only the calls present now: ones added meanwhile run next turn.
        popleft = queue.popleft
        for _ in range(len(queue)):
            fn, args = popleft()
            try:
                fn(*args)
            except Exception:
                logger.exception("reactor: call %s raised", callable_name(fn))


def callable_name(fn: object) -> str:
    """How a log line names a callback: ``module.qualname``, never its repr (which shows internals)."""
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    module = getattr(fn, "__module__", None)
    return f"{module}.{qualname}" if module else str(qualname)


def _fd(sock: object) -> object:
    fileno = getattr(sock, "fileno", None)
    return fileno() if callable(fileno) else "?"
