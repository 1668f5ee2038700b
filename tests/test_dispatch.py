"""Dispatcher: order, error isolation, manual mode, draining on close."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Iterator

import pytest

from crust.dispatch import Dispatcher
from crust.errors import ServiceClosed
from crust.events import Event

from tests.helpers import WAIT


@dataclass(frozen=True, slots=True)
class Tick(Event):
    n: int


@dataclass(frozen=True, slots=True)
class Tock(Event):
    n: int


def tick_args(event: Event) -> tuple[object, ...]:
    assert isinstance(event, (Tick, Tock))
    return (event.n,)


@pytest.fixture
def threaded() -> Iterator[Dispatcher]:
    d = Dispatcher()
    d.start()
    yield d
    d.close()


def test_order_is_preserved_across_post_and_post_many(threaded: Dispatcher) -> None:
    seen: list[tuple[str, int]] = []
    threaded.add_handler(Tick, lambda n: seen.append(("tick", n)), tick_args)
    threaded.add_handler(Tock, lambda n: seen.append(("tock", n)), tick_args)
    expected: list[tuple[str, int]] = []
    n = 0
    for round_ in range(200):
        threaded.post(Tick(n))
        expected.append(("tick", n))
        n += 1
        batch: list[Event] = []
        for _ in range(round_ % 7):
            batch.append(Tock(n) if n % 2 else Tick(n))
            expected.append(("tock" if n % 2 else "tick", n))
            n += 1
        threaded.post_many(batch)
    threaded.close()  # drains everything posted before it
    assert seen == expected
    assert threaded.pending == 0


def test_handlers_run_in_registration_order_on_the_dispatch_thread(threaded: Dispatcher) -> None:
    calls: list[str] = []
    threads: list[bool] = []
    done = threading.Event()
    threaded.add_handler(Tick, lambda n: calls.append(f"first {n}"), tick_args)
    threaded.add_handler(Tick, lambda a, b: calls.append(f"second {a} {b}"), lambda e: (1, 2))
    threaded.add_handler(Tick, lambda: threads.append(threaded.in_dispatch_thread()), lambda e: ())
    threaded.add_handler(Tock, lambda n: done.set(), tick_args)
    threaded.post(Tick(7))
    threaded.post(Tock(0))
    assert done.wait(WAIT)
    assert calls == ["first 7", "second 1 2"]
    assert threads == [True]
    assert not threaded.in_dispatch_thread()


def test_a_raising_handler_is_logged_and_delivery_goes_on(
    threaded: Dispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="crust.dispatch")
    seen: list[int] = []

    def bad(n: int) -> None:
        raise ValueError(f"bad handler {n}")

    threaded.add_handler(Tick, bad, tick_args)
    threaded.add_handler(Tick, seen.append, tick_args)
    threaded.post_many([Tick(1), Tick(2), Tick(3)])
    threaded.close()
    assert seen == [1, 2, 3]
    errors = [r for r in caplog.records if r.exc_info]
    assert len(errors) == 3
    assert "Tick" in errors[0].getMessage() and "bad" in errors[0].getMessage()
    assert isinstance(errors[0].exc_info[1], ValueError)  # type: ignore[index]


def test_on_delivered_runs_after_all_handlers_and_is_guarded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="crust.dispatch")
    log: list[str] = []

    def delivered(events: list[Event]) -> None:
        assert all(isinstance(event, Tick) for event in events)
        log.append(f"delivered {[event.n for event in events]}")  # type: ignore[attr-defined]
        if events[0].n == 1:  # type: ignore[attr-defined]
            raise RuntimeError("hook boom")

    d = Dispatcher(on_delivered=delivered)
    d.add_handler(Tick, lambda n: log.append(f"a {n}"), tick_args)
    d.add_handler(Tick, lambda n: log.append(f"b {n}"), tick_args)
    d.start()
    d.post_many([Tick(1), Tick(2)])
    d.post_many([Tick(3)])
    d.close()
    # Once per batch (a slice of it, for long ones), after every handler of every event in it.
    assert log == ["a 1", "b 1", "a 2", "b 2", "delivered [1, 2]", "a 3", "b 3", "delivered [3]"]
    assert any("on_delivered" in r.getMessage() for r in caplog.records)


def test_on_delivered_hears_of_a_long_batch_in_slices_each_event_once() -> None:
    sliced: list[list[int]] = []
    seen: list[int] = []
    d = Dispatcher(manual=True, on_delivered=lambda events: sliced.append([e.n for e in events]))  # type: ignore[attr-defined]
    d.add_handler(Tick, seen.append, tick_args)
    d.start()
    d.post_many([Tick(i) for i in range(150)])
    assert d.run_callbacks() == 150
    assert seen == list(range(150))
    assert [n for part in sliced for n in part] == seen  # each event once, in order
    assert max(len(part) for part in sliced) < 150  # handed back while the batch is still being delivered


def test_manual_mode_runs_on_the_calling_thread_and_counts() -> None:
    d = Dispatcher(manual=True)
    d.start()  # no thread in manual mode
    assert not [t for t in threading.enumerate() if t.name == "crust-dispatch"]
    where: list[int] = []
    inside: list[bool] = []
    def handler() -> None:
        where.append(threading.get_ident())
        inside.append(d.in_dispatch_thread())

    d.add_handler(Tick, handler, lambda e: ())
    assert d.run_callbacks() == 0
    d.post_many([Tick(1), Tick(2), Tick(3)])
    assert d.pending == 3
    assert d.run_callbacks() == 3
    assert d.pending == 0
    assert where == [threading.get_ident()] * 3
    assert inside == [True] * 3
    assert not d.in_dispatch_thread()

    # Waits for the first event when asked to.
    poster = threading.Thread(target=lambda: d.post(Tick(4)))
    poster.start()
    try:
        assert d.run_callbacks(timeout=WAIT) == 1
    finally:
        poster.join(WAIT)
    d.close()
    assert d.run_callbacks(timeout=WAIT) == 0  # closed: returns at once


def test_manual_mode_only_delivers_what_was_queued_when_it_started() -> None:
    d = Dispatcher(manual=True)
    seen: list[int] = []

    def handler(n: int) -> None:
        seen.append(n)
        if n < 5:
            d.post(Tick(n + 1))  # posted during delivery: next call's work

    d.add_handler(Tick, handler, tick_args)
    d.post(Tick(0))
    assert d.run_callbacks() == 1
    assert d.run_callbacks() == 1
    assert seen == [0, 1]
    d.close()


def test_manual_mode_refuses_nested_calls(caplog: pytest.LogCaptureFixture) -> None:
    d = Dispatcher(manual=True)
    errors: list[BaseException] = []

    def nested() -> None:
        try:
            d.run_callbacks()
        except RuntimeError as exc:
            errors.append(exc)

    d.add_handler(Tick, nested, lambda e: ())
    d.post(Tick(0))
    assert d.run_callbacks() == 1
    assert len(errors) == 1
    d.close()


def test_run_callbacks_is_refused_in_thread_mode(threaded: Dispatcher) -> None:
    with pytest.raises(RuntimeError):
        threaded.run_callbacks()


def test_a_handler_may_close_the_dispatcher(caplog: pytest.LogCaptureFixture) -> None:
    d = Dispatcher()
    seen: list[int] = []

    def handler(n: int) -> None:
        seen.append(n)
        if n == 0:
            d.close()  # from the dispatch thread: must not join itself

    d.add_handler(Tick, handler, tick_args)
    d.start()
    d.post_many([Tick(0), Tick(1)])  # Tick(1) was posted before close(): still delivered
    thread = next(t for t in threading.enumerate() if t.name == "crust-dispatch")
    thread.join(WAIT)
    assert not thread.is_alive()
    assert seen == [0, 1]
    d.post(Tick(2))  # after close: dropped
    d.close()
    assert seen == [0, 1]


def test_close_is_idempotent_and_start_after_close_fails() -> None:
    d = Dispatcher()
    d.start()
    d.close()
    d.close()
    with pytest.raises(ServiceClosed):
        d.start()


def test_manual_close_discards_undelivered_events() -> None:
    d = Dispatcher(manual=True)
    seen: list[int] = []
    d.add_handler(Tick, seen.append, tick_args)
    d.post(Tick(1))
    d.close()
    assert d.pending == 0
    assert d.run_callbacks() == 0
    assert seen == []


def test_close_wakes_a_waiting_run_callbacks() -> None:
    d = Dispatcher(manual=True)
    result: list[int] = []
    waiter = threading.Thread(target=lambda: result.append(d.run_callbacks(timeout=WAIT)))
    waiter.start()
    d.close()
    waiter.join(WAIT)
    assert not waiter.is_alive()
    assert result == [0]
