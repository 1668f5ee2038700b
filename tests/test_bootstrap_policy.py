"""crust.bootstrap.policy.Bootstrapper: contact schedule under a virtual clock."""

from __future__ import annotations

import pytest

from crust.bootstrap.policy import Bootstrapper, is_blacklisted
from crust.ids import Contact, Endpoint, PeerId


def contacts(n: int, port: int = 5483) -> list[Contact]:
    return [Contact((f"10.0.0.{i}", port)) for i in range(n)]


def make(cs: list[Contact], *, stagger: float = 0.25, max_in_flight: int = 8, deadline: float = 10.0,
         now: float = 0.0, blacklist: list[Endpoint | str] | None = None) -> Bootstrapper:
    return Bootstrapper(cs, blacklist=blacklist or (), stagger=stagger, max_in_flight=max_in_flight,
                        deadline=deadline, now=now)


# -- staggering and limits -----------------------------------------------------------

def test_attempts_are_staggered() -> None:
    cs = contacts(3)
    b = make(cs, stagger=0.25)
    assert b.get_timer() == 0.0
    assert b.due(0.0) == [cs[0]]
    assert b.due(0.1) == []
    assert b.get_timer() == 0.25
    assert b.due(0.25) == [cs[1]]
    assert b.get_timer() == 0.5
    assert b.due(0.6) == [cs[2]]
    assert b.in_flight == set(cs)
    assert b.due(100.0) == []
    assert b.get_timer() == 10.0  # nothing left to start: only the deadline matters
    assert not b.finished


def test_start_time_counts_from_the_actual_start() -> None:
    cs = contacts(2)
    b = make(cs, stagger=1.0, now=5.0)
    assert b.due(4.9) == []  # the first may start at `now`, not before
    assert b.due(7.0) == [cs[0]]
    assert b.get_timer() == 8.0


def test_zero_stagger_starts_up_to_max_in_flight_at_once() -> None:
    cs = contacts(5)
    b = make(cs, stagger=0.0, max_in_flight=3)
    assert b.due(0.0) == cs[:3]
    assert b.due(1.0) == []
    assert b.get_timer() == 10.0  # full: the next start waits for a report (or the deadline)


def test_max_in_flight_holds_back_even_after_the_stagger() -> None:
    cs = contacts(4)
    b = make(cs, stagger=0.5, max_in_flight=2)
    assert b.due(0.0) == [cs[0]]
    assert b.due(0.5) == [cs[1]]
    assert b.due(1.0) == [] and b.due(5.0) == []
    assert len(b.in_flight) == 2


def test_failure_starts_the_next_at_once() -> None:
    cs = contacts(3)
    b = make(cs, stagger=1.0)
    assert b.due(0.0) == [cs[0]]
    assert b.get_timer() == 1.0
    b.failed(cs[0], "connection refused")
    assert b.get_timer() == 0.0  # due at once (any time already passed)
    assert b.due(0.3) == [cs[1]]
    assert b.get_timer() == 1.3  # and the stagger restarts from there
    assert b.failures == {"10.0.0.0:5483": "connection refused"}
    assert b.in_flight == {cs[1]}


def test_failure_frees_a_slot_when_full() -> None:
    cs = contacts(3)
    b = make(cs, stagger=0.0, max_in_flight=2)
    assert b.due(0.0) == cs[:2]
    b.failed(cs[1], "timeout")
    assert b.due(2.0) == [cs[2]]
    assert b.in_flight == {cs[0], cs[2]}


def test_every_contact_failing_finishes_the_run() -> None:
    cs = contacts(2)
    b = make(cs, stagger=0.0)
    assert b.due(0.0) == cs
    b.failed(cs[0], "refused")
    assert not b.finished
    b.failed(cs[1], "denied: banned")
    assert b.finished
    assert b.winner is None
    assert b.get_timer() is None
    assert b.failures == {"10.0.0.0:5483": "refused", "10.0.0.1:5483": "denied: banned"}


def test_success_cancels_the_others_and_stops() -> None:
    cs = contacts(5)
    b = make(cs, stagger=0.0, max_in_flight=3)
    assert b.due(0.0) == cs[:3]
    assert b.succeeded(cs[1]) == {cs[0], cs[2]}
    assert b.winner == cs[1]
    assert b.finished
    assert b.in_flight == set()
    assert b.due(1.0) == []  # the queue (cs[3], cs[4]) was dropped
    assert b.get_timer() is None
    assert b.failures == {}


def test_no_contacts_is_finished_at_once() -> None:
    b = make([])
    assert b.finished
    assert b.due(0.0) == []
    assert b.get_timer() is None


# -- order, duplicates, blacklist -------------------------------------------------------

def test_order_is_kept_and_duplicates_removed() -> None:
    pid = PeerId(bytes(range(32)))
    given = [
        Contact("10.0.0.2:1"),
        Contact("10.0.0.1:1"),
        Contact(("10.0.0.2", 1), pid),  # same endpoint with a PeerId: still a duplicate
        Contact("10.0.0.2:2"),  # another port is another contact
        Contact("10.0.0.1:1"),
    ]
    b = make(given, stagger=0.0, max_in_flight=10)
    assert b.due(0.0) == [given[0], given[1], given[3]]
    assert b.skipped == []


def test_first_of_duplicates_wins() -> None:
    pid = PeerId(bytes(32))
    first = Contact("10.0.0.9:9", pid)
    b = make([first, Contact("10.0.0.9:9")], stagger=0.0)
    assert b.due(0.0) == [first]


def test_blacklist_by_endpoint() -> None:
    cs = [Contact("10.0.0.1:5000"), Contact("10.0.0.1:5001"), Contact("10.0.0.2:5000")]
    b = make(cs, stagger=0.0, blacklist=[Endpoint("10.0.0.1", 5000)])
    assert b.due(0.0) == [cs[1], cs[2]]
    assert b.skipped == [cs[0]]


def test_blacklist_by_endpoint_string() -> None:
    cs = [Contact("10.0.0.1:5000"), Contact("10.0.0.1:5001")]
    b = make(cs, stagger=0.0, blacklist=["10.0.0.1:5001"])
    assert b.due(0.0) == [cs[0]]
    assert b.skipped == [cs[1]]


def test_blacklist_by_bare_ip_covers_every_port() -> None:
    cs = [Contact("10.0.0.1:5000"), Contact("10.0.0.2:5000"), Contact("10.0.0.2:6000"), Contact("[::1]:7")]
    b = make(cs, stagger=0.0, blacklist=["10.0.0.2", "0:0::1"])  # IPv6 in a non-canonical spelling
    assert b.due(0.0) == [cs[0]]
    assert b.skipped == cs[1:]


def test_blacklisted_contacts_are_not_failures() -> None:
    cs = contacts(1)
    b = make(cs, blacklist=["10.0.0.0"])
    assert b.finished
    assert b.failures == {}
    assert b.skipped == cs


BLACKLIST_CASES: list[tuple[Endpoint, list[Endpoint | str], bool]] = [
    (Endpoint("10.0.0.1", 80), [Endpoint("10.0.0.1", 80)], True),
    (Endpoint("10.0.0.1", 80), [Endpoint("10.0.0.1", 81)], False),
    (Endpoint("10.0.0.1", 80), ["10.0.0.1"], True),
    (Endpoint("10.0.0.1", 80), ["10.0.0.10"], False),
    (Endpoint("10.0.0.1", 80, "udp"), [Endpoint("10.0.0.1", 80)], True),  # transport is not compared
    (Endpoint("::1", 80), ["::1"], True),
    (Endpoint("10.0.0.1", 80), [], False),
]


def test_is_blacklisted() -> None:
    for endpoint, blacklist, expected in BLACKLIST_CASES:
        assert is_blacklisted(endpoint, blacklist) is expected, (endpoint, blacklist)


def test_malformed_blacklist_entry_is_refused() -> None:
    with pytest.raises(ValueError):
        make(contacts(1), blacklist=["not an address"])


# -- the deadline --------------------------------------------------------------------------

def test_nothing_starts_at_or_after_the_deadline() -> None:
    cs = contacts(3)
    b = make(cs, stagger=1.0, deadline=2.0)
    assert b.due(0.0) == [cs[0]]
    assert b.due(1.0) == [cs[1]]
    assert b.get_timer() == 2.0  # next start (2.0) capped at the deadline (2.0)
    assert b.due(2.0) == []


def test_timer_is_capped_by_the_deadline() -> None:
    cs = contacts(2)
    b = make(cs, stagger=5.0, deadline=3.0)
    b.due(0.0)
    assert b.get_timer() == 3.0


def test_time_out_fails_everything_left() -> None:
    cs = contacts(4)
    b = make(cs, stagger=1.0, max_in_flight=2, deadline=1.5)
    b.due(0.0)
    b.due(1.0)
    b.failed(cs[0], "refused")
    b.time_out()
    assert b.finished
    assert b.winner is None
    assert b.in_flight == set()
    assert b.get_timer() is None
    assert b.due(0.0) == []
    assert b.failures == {
        "10.0.0.0:5483": "refused",
        "10.0.0.1:5483": "timed out",
        "10.0.0.2:5483": "not tried before the timeout",
        "10.0.0.3:5483": "not tried before the timeout",
    }


# -- a whole run on a virtual clock -----------------------------------------------------

def simulate(b: Bootstrapper, outcome: dict[Contact, tuple[float, bool]]) -> tuple[list[tuple[float, Contact]], float]:
    """Drive ``b`` as an engine would: each contact answers after its delay, granted or not.

    Returns the (time, contact) start log and the time the run ended.
    """
    now = 0.0
    starts: list[tuple[float, Contact]] = []
    pending: dict[Contact, float] = {}
    for _ in range(1000):
        for contact in b.due(now):
            starts.append((now, contact))
            delay, _ = outcome[contact]
            pending[contact] = now + delay
        if b.finished:
            return starts, now
        timer = b.get_timer()
        assert timer is not None
        # the next thing to happen: a timer, or an answer
        candidates = [max(timer, now)] + list(pending.values())
        now = min(candidates)
        for contact, at in sorted(pending.items(), key=lambda kv: kv[1]):
            if at <= now and not b.finished:
                del pending[contact]
                if outcome[contact][1]:
                    for other in b.succeeded(contact):
                        pending.pop(other, None)
                else:
                    b.failed(contact, "refused")
        if now >= b.deadline and not b.finished:
            b.time_out()
            return starts, now
    raise AssertionError("run never finished")


def test_simulated_run_deaf_contacts_then_a_winner() -> None:
    cs = contacts(6)
    deaf = (1000.0, False)
    outcome = {cs[0]: deaf, cs[1]: (0.1, False), cs[2]: deaf, cs[3]: (0.2, True), cs[4]: deaf, cs[5]: deaf}
    b = make(cs, stagger=0.25, max_in_flight=3, deadline=10.0)
    starts, end = simulate(b, outcome)
    assert [(round(t, 6), c) for t, c in starts] == [
        (0.0, cs[0]),
        (0.25, cs[1]),
        (0.35, cs[2]),  # cs[1] refused at 0.35: the next starts at once
        (0.6, cs[3]),
    ]
    assert b.winner == cs[3]
    assert round(end, 6) == 0.8
    assert b.failures == {"10.0.0.1:5483": "refused"}


def test_simulated_run_all_deaf_times_out() -> None:
    cs = contacts(5)
    b = make(cs, stagger=0.25, max_in_flight=2, deadline=3.0)
    starts, end = simulate(b, {c: (1000.0, False) for c in cs})
    assert [t for t, _ in starts] == [0.0, 0.25]
    assert end == 3.0
    assert b.failures == {
        "10.0.0.0:5483": "timed out",
        "10.0.0.1:5483": "timed out",
        "10.0.0.2:5483": "not tried before the timeout",
        "10.0.0.3:5483": "not tried before the timeout",
        "10.0.0.4:5483": "not tried before the timeout",
    }
