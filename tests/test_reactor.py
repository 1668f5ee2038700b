"""Reactor: posting from threads, timers, error handling, stop, batched wakeups."""

from __future__ import annotations

import collections
import functools
import logging
import selectors
import socket
import threading
import time
from typing import Callable, TypeVar

import pytest

from crust.errors import ServiceClosed
from crust.transport.reactor import Deadline, Inbox, Reactor

from tests.helpers import WAIT

T = TypeVar("T")


def run_on(reactor: Reactor, fn: Callable[[], T]) -> T:
    """Run ``fn`` on the reactor thread and return its result (or raise its exception)."""
    return reactor.call(fn, WAIT)


def test_posts_from_many_threads_run_in_order_per_thread(reactor: Reactor) -> None:
    threads_n, per_thread = 8, 2000
    seen: list[tuple[int, int]] = []
    off_thread: list[int] = []
    start = threading.Barrier(threads_n)

    def record(tid: int, i: int) -> None:
        if not reactor.in_reactor_thread():
            off_thread.append(tid)
        seen.append((tid, i))

    def poster(tid: int) -> None:
        start.wait(WAIT)
        for i in range(per_thread):
            reactor.call_soon_threadsafe(functools.partial(record, tid, i))

    threads = [threading.Thread(target=poster, args=(t,)) for t in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    run_on(reactor, lambda: None)  # posted after every poster finished: runs after all of them

    assert len(seen) == threads_n * per_thread
    assert not off_thread
    for tid in range(threads_n):
        assert [i for t, i in seen if t == tid] == list(range(per_thread))


def test_a_turn_runs_posted_calls_then_timers_then_call_soon(reactor: Reactor) -> None:
    """The latency-bound work first: a post from another thread runs before a due timer of the same turn."""
    order: list[str] = []
    done = threading.Event()

    def arrange() -> None:
        # All three are pending when this turn ends; the next turn runs them in its own order.
        reactor.call_soon(lambda: (order.append("soon"), done.set()))
        reactor.call_at(reactor.time() - 1.0, lambda: order.append("timer"))
        reactor.call_soon_threadsafe(lambda: order.append("posted"))

    # call_soon from a posted call would run in this very turn's soon phase: arrange it one turn ahead.
    reactor.call_soon_threadsafe(lambda: reactor.call_soon(arrange))
    assert done.wait(WAIT)
    assert order == ["posted", "timer", "soon"]


def test_call_at_runs_in_deadline_order_and_cancel_works(reactor: Reactor) -> None:
    ran: list[tuple[str, float, float]] = []
    done = threading.Event()

    def schedule() -> None:
        now = reactor.time()

        def mark(name: str, when: float) -> Callable[[], None]:
            return lambda: ran.append((name, when, reactor.time()))

        reactor.call_at(now + 0.03, mark("c", now + 0.03))
        reactor.call_at(now + 0.01, mark("a", now + 0.01))
        reactor.call_at(now + 0.02, mark("b1", now + 0.02))
        reactor.call_at(now + 0.02, mark("b2", now + 0.02))  # same deadline: call order
        reactor.call_at(now + 0.015, mark("cancelled", now + 0.015)).cancel()
        later = reactor.call_later(0.025, mark("cancelled-late", 0.0))
        reactor.call_at(now + 0.02, later.cancel)  # cancelled by an earlier timer
        reactor.call_at(now + 0.05, done.set)

    run_on(reactor, schedule)
    assert done.wait(WAIT)
    assert [name for name, _, _ in ran] == ["a", "b1", "b2", "c"]
    assert all(at >= when for _, when, at in ran)


def test_cancelled_timers_do_not_accumulate(reactor: Reactor) -> None:
    def churn() -> int:
        for _ in range(5000):
            reactor.call_later(3600.0, lambda: None).cancel()
        return len(reactor._timers)

    assert run_on(reactor, churn) < 1000


def test_callback_exceptions_are_logged_and_the_loop_goes_on(
    reactor: Reactor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="crust.transport")
    a, b = socket.socketpair()
    try:
        fired = threading.Event()

        def bad_socket_callback(mask: int) -> None:
            a.recv(10)
            raise RuntimeError("socket boom")

        def bad_timer() -> None:
            raise RuntimeError("timer boom")

        def bad_call() -> None:
            raise RuntimeError("call boom")

        def setup() -> None:
            a.setblocking(False)
            reactor.register(a, selectors.EVENT_READ, bad_socket_callback)
            reactor.call_later(0.0, bad_timer)
            reactor.call_soon(bad_call)

        run_on(reactor, setup)
        b.send(b"x")
        reactor.call_soon_threadsafe(bad_call)
        # The loop must still be alive to run this after three failures.
        reactor.call_soon_threadsafe(lambda: reactor.call_later(0.01, fired.set))
        assert fired.wait(WAIT)
        run_on(reactor, lambda: reactor.unregister(a))
    finally:
        a.close()
        b.close()
    messages = [r.getMessage() + str(r.exc_info[1]) for r in caplog.records if r.exc_info]
    for boom in ("socket boom", "timer boom", "call boom"):
        assert any(boom in m for m in messages), (boom, messages)


def test_stop_runs_posted_calls_joins_and_refuses_new_posts() -> None:
    reactor = Reactor(name="crust-io-stoptest")
    reactor.start()
    assert reactor.running
    ran: list[int] = []
    for i in range(1000):
        reactor.call_soon_threadsafe(functools.partial(ran.append, i))
    reactor.stop()
    assert ran == list(range(1000))
    assert not reactor.running
    assert not any(t.name == "crust-io-stoptest" for t in threading.enumerate())
    with pytest.raises(ServiceClosed):
        reactor.call_soon_threadsafe(lambda: None)
    reactor.stop()  # idempotent


def test_stop_without_start_closes_resources() -> None:
    reactor = Reactor()
    reactor.stop()
    with pytest.raises(ServiceClosed):
        reactor.call_soon_threadsafe(lambda: None)
    with pytest.raises(ServiceClosed):
        reactor.start()


def test_stop_from_the_reactor_thread_is_refused(reactor: Reactor) -> None:
    with pytest.raises(RuntimeError):
        run_on(reactor, reactor.stop)


def test_register_modify_unregister(reactor: Reactor) -> None:
    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        readable = threading.Event()
        writable = threading.Event()

        def on_read(mask: int) -> None:
            assert mask & selectors.EVENT_READ
            a.recv(100)
            readable.set()

        def on_write(mask: int) -> None:
            assert mask & selectors.EVENT_WRITE
            reactor.unregister(a)  # level-triggered: stop before it fires every turn
            reactor.unregister(a)  # no error the second time
            writable.set()

        run_on(reactor, lambda: reactor.register(a, selectors.EVENT_READ, on_read))
        b.send(b"ping")
        assert readable.wait(WAIT)
        run_on(reactor, lambda: reactor.modify(a, selectors.EVENT_WRITE, on_write))
        assert writable.wait(WAIT)
    finally:
        a.close()
        b.close()


def test_stop_unregisters_leftover_sockets_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="crust.transport")
    reactor = Reactor()
    reactor.start()
    a, b = socket.socketpair()
    try:
        run_on(reactor, lambda: reactor.register(a, selectors.EVENT_READ, lambda mask: None))
        reactor.stop()
        assert any("still registered" in r.getMessage() for r in caplog.records)
        assert a.fileno() != -1  # not closed by the reactor: its owner does that
    finally:
        a.close()
        b.close()


def test_self_requeueing_call_soon_does_not_starve_the_loop(reactor: Reactor) -> None:
    spins = [0]
    spinning = [True]

    def spin() -> None:
        spins[0] += 1
        if spinning[0]:
            reactor.call_soon(spin)

    timer_fired = threading.Event()

    def start() -> None:
        reactor.call_soon(spin)
        reactor.call_later(0.01, timer_fired.set)

    run_on(reactor, start)
    assert timer_fired.wait(WAIT)
    run_on(reactor, lambda: None)  # posted calls still get their turn
    run_on(reactor, lambda: spinning.__setitem__(0, False))
    assert spins[0] > 1


def test_posts_are_batched_into_few_wakeups(reactor: Reactor) -> None:
    posts = 100_000
    counter = [0]
    done = threading.Event()

    def bump() -> None:
        counter[0] += 1

    def poster() -> None:
        post = reactor.call_soon_threadsafe
        for _ in range(posts - 1):
            post(bump)
        post(done.set)

    before = reactor.wakeups
    thread = threading.Thread(target=poster)
    started = time.perf_counter()
    thread.start()
    thread.join(WAIT)
    assert done.wait(WAIT)
    elapsed = time.perf_counter() - started
    wakeups = reactor.wakeups - before
    assert counter[0] == posts - 1
    # Each byte written is one read here; a syscall per post would give ~100k.
    assert wakeups < posts // 20, f"{wakeups} wakeup bytes for {posts} posts"
    print(f"\n{posts} posts in {elapsed * 1e3:.0f} ms ({elapsed / posts * 1e6:.2f} us/post), {wakeups} wakeups")


def test_in_reactor_thread(reactor: Reactor) -> None:
    assert not reactor.in_reactor_thread()
    assert run_on(reactor, reactor.in_reactor_thread)


class _Timers:
    """A call_at that only records: which timers are armed, and which were cancelled."""

    def __init__(self) -> None:
        self.armed: list[tuple[float, Callable[[], object]]] = []
        self.cancelled = 0

    def call_at(self, when: float, fn: Callable[[], object]) -> _Timers:
        self.armed.append((when, fn))
        return self

    def cancel(self) -> None:
        self.cancelled += 1


def test_a_deadline_rearms_only_when_it_moves() -> None:
    timers, fired = _Timers(), []
    deadline = Deadline(timers.call_at, lambda: fired.append(1))
    deadline.arm(5.0)
    deadline.arm(5.0)  # the same time: nothing to do
    deadline.arm(7.0)
    assert [when for when, _ in timers.armed] == [5.0, 7.0] and timers.cancelled == 1 and deadline.when == 7.0
    deadline.arm(None)
    assert timers.cancelled == 2 and deadline.when is None
    deadline.arm(3.0)
    timers.armed[-1][1]()  # it comes due
    assert fired == [1] and deadline.when is None
    deadline.arm(3.0)  # due again at the same time: a new timer, the old one ran
    assert len(timers.armed) == 4


def test_a_lazy_deadline_keeps_an_earlier_timer_and_moves_only_earlier() -> None:
    timers, fired = _Timers(), []
    deadline = Deadline(timers.call_at, lambda: fired.append(deadline.when), lazy=True)
    deadline.arm(5.0)
    deadline.arm(9.0)  # later: the timer at 5 stays; the machine re-checks then
    deadline.arm(None)
    assert [when for when, _ in timers.armed] == [5.0] and timers.cancelled == 0 and deadline.when == 5.0
    deadline.arm(2.0)  # earlier: re-armed
    assert [when for when, _ in timers.armed] == [5.0, 2.0] and timers.cancelled == 1
    timers.armed[-1][1]()
    assert fired == [None]  # disarmed before it fires, so fire() may arm again
    deadline.arm(4.0)
    deadline.cancel()
    assert deadline.when is None and timers.cancelled == 2


def test_inbox_hands_a_burst_to_one_drain_call() -> None:
    reactor = Reactor("crust-test-inbox")
    drains: list[list[int]] = []
    done = threading.Event()

    def drain(items: collections.deque[int], count: int) -> None:
        drains.append([items.popleft() for _ in range(count)])
        if drains[-1][-1] == 99:
            done.set()

    inbox: Inbox[int] = Inbox(reactor.call_soon_threadsafe, drain)
    for i in range(100):  # before the loop runs: one burst, so one posted call
        inbox.put(i)
    assert len(reactor._posted) == 1 and len(inbox) == 100
    reactor.start()
    try:
        assert done.wait(WAIT)
        assert drains == [list(range(100))]
        inbox.put(100)  # the flag was cleared by the drain: a new burst posts a new drain
        assert run_on(reactor, lambda: len(inbox)) == 0
        assert drains[-1] == [100]
    finally:
        reactor.stop()


def test_inbox_items_from_many_threads_all_arrive_in_order_per_thread(reactor: Reactor) -> None:
    threads_n, per_thread = 4, 5000
    got: list[tuple[int, int]] = []
    drains = [0]

    def drain(items: collections.deque[tuple[int, int]], count: int) -> None:
        assert reactor.in_reactor_thread()
        drains[0] += 1
        for _ in range(count):
            got.append(items.popleft())

    inbox: Inbox[tuple[int, int]] = Inbox(reactor.call_soon_threadsafe, drain)
    start = threading.Barrier(threads_n)

    def putter(tid: int) -> None:
        start.wait(WAIT)
        for i in range(per_thread):
            inbox.put((tid, i))

    threads = [threading.Thread(target=putter, args=(t,)) for t in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    # A call posted after every put runs after the drains that carry them (one queue, in order).
    assert run_on(reactor, lambda: len(got)) == threads_n * per_thread
    for tid in range(threads_n):
        assert [i for t, i in got if t == tid] == list(range(per_thread))
    assert drains[0] < threads_n * per_thread // 10  # batched, not one call per item


def test_inbox_put_after_stop_raises_and_stays_usable_for_the_error() -> None:
    reactor = Reactor("crust-test-inbox-stop")
    reactor.start()
    reactor.stop()
    inbox: Inbox[int] = Inbox(reactor.call_soon_threadsafe, lambda items, count: None)
    with pytest.raises(ServiceClosed):
        inbox.put(1)
    with pytest.raises(ServiceClosed):  # the flag was reset: the next put tries (and fails) again
        inbox.put(2)
