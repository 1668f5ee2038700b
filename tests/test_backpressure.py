"""Receive back-pressure decisions (crust/engine/backpressure.py), without threads or sockets."""

from __future__ import annotations

import random

import pytest

from crust.engine.backpressure import DeliveryTally, ReceiveBacklog
from crust.ids import ConnId, PeerId

P, Q = PeerId(b"\x01" * 32), PeerId(b"\x02" * 32)
CONN = ConnId(7)


def test_pauses_above_the_limit_and_resumes_at_half() -> None:
    backlog = ReceiveBacklog(100)
    backlog.track(P)
    assert backlog.posted(P, 100) is False  # at the limit: still reading
    assert backlog.posted(P, 1) is True  # over it: pause
    backlog.paused(P, CONN)
    assert backlog.is_paused(P) and backlog.posted(P, 50) is False  # already paused: asked once
    assert backlog.delivered(P, 100) is None  # 51 waiting: above half
    assert backlog.delivered(P, 1) == CONN  # 50 = half: resume that connection
    assert not backlog.is_paused(P) and backlog.waiting(P) == 50
    assert backlog.delivered(P, 50) is None  # resumed once only


def test_a_pause_the_caller_could_not_make_is_asked_for_again() -> None:
    backlog = ReceiveBacklog(10)
    backlog.track(P)
    assert backlog.posted(P, 11) is True  # the caller found no connection to pause ...
    assert backlog.posted(P, 1) is True  # ... so the next message asks again
    assert backlog.delivered(P, 12) is None  # nothing was paused: nothing to resume


def test_peers_are_independent_and_untracked_ones_ignored() -> None:
    backlog = ReceiveBacklog(10)
    backlog.track(P)
    backlog.track(Q)
    assert backlog.posted(P, 11) is True
    assert backlog.posted(Q, 5) is False
    assert backlog.posted(PeerId(b"\x03" * 32), 99) is False
    backlog.forget(P)
    assert backlog.waiting(P) == 0 and backlog.delivered(P, 5) is None
    backlog.track(P)  # reconnected: starts afresh, and stale reports cannot push it below zero
    assert backlog.delivered(P, 1000) is None and backlog.waiting(P) == 0


@pytest.mark.parametrize("limit", [0, -1, 1.5, True])
def test_bad_limits_are_refused(limit: object) -> None:
    with pytest.raises(ValueError, match="limit"):
        ReceiveBacklog(limit)  # type: ignore[arg-type]


def test_tally_reports_in_batches_of_report_every_bytes() -> None:
    assert ReceiveBacklog(64 * 1024).report_every == 8 * 1024
    assert ReceiveBacklog(3).report_every == 1
    tally = DeliveryTally(100)
    assert tally.delivered(P, 60) is None
    assert tally.delivered(Q, 30) is None
    assert tally.delivered(P, 10) == {P: 70, Q: 30}  # one report for both peers
    assert tally.delivered(P, 99) is None  # a fresh batch


def test_a_paused_peer_always_gets_its_resume_however_deliveries_are_batched() -> None:
    """Model the two threads in one: seeded interleavings of posts, deliveries and reports."""
    for seed in range(200):
        rng = random.Random(seed)
        limit = rng.choice([1, 7, 64, 1000])
        backlog = ReceiveBacklog(limit)
        tally = DeliveryTally(backlog.report_every)
        backlog.track(P)
        queue: list[int] = []  # message sizes handed over, not yet delivered
        in_flight: list[dict[PeerId, int]] = []  # reports on their way to the producer
        paused = False
        for _ in range(300):
            action = rng.random()
            if action < 0.4 and not paused:
                size = rng.randint(1, 2 * limit)
                queue.append(size)
                if backlog.posted(P, size):
                    backlog.paused(P, CONN)
                    paused = True
                # the view is never below the truth: we never pause late
                assert backlog.waiting(P) >= sum(queue)
            elif action < 0.8 and queue:
                report = tally.delivered(P, queue.pop(0))
                if report is not None:
                    in_flight.append(report)
            elif in_flight:
                if backlog.delivered(P, in_flight.pop(0)[P]) == CONN:
                    paused = False
        # Drain: deliver everything and process every report.
        while queue:
            report = tally.delivered(P, queue.pop(0))
            if report is not None:
                in_flight.append(report)
        for report in in_flight:
            if backlog.delivered(P, report[P]) == CONN:
                paused = False
        assert not paused, f"seed {seed}: paused for ever (waiting {backlog.waiting(P)}, limit {limit})"
        assert backlog.waiting(P) < backlog.report_every
