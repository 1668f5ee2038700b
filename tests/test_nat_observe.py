"""crust.nat.observe: external address and mapping behaviour by voting among observers."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crust.ids import Endpoint, PeerId
from crust.nat.observe import MappingBehaviour, NatInfo, NatObserver, TransportNat

LOCAL = Endpoint("10.1.0.2", 4000, "udp")
EXT = Endpoint("198.51.100.1", 4000, "udp")
LIE = Endpoint("203.0.113.66", 666, "udp")


def pid(n: int) -> PeerId:
    return PeerId(bytes([n]) * 32)


def vote(obs: NatObserver, n: int, observed: Endpoint = EXT, now: float = 0.0, *, ip: str | None = None,
         local: Endpoint = LOCAL, kind: str = "udp") -> bool:
    return obs.observe(kind, pid(n), ip or f"192.0.2.{n}", local, observed, now)


# -- verdicts ---------------------------------------------------------------------------------

def test_nobody_asked_yet() -> None:
    info = NatObserver().nat_info(0.0)
    assert info == NatInfo(TransportNat(), TransportNat(), ())
    assert info.udp.mapping is MappingBehaviour.UNKNOWN and info.udp.external is None


def test_one_observer_is_believed_but_unconfirmed() -> None:
    obs = NatObserver()
    assert vote(obs, 1, now=5.0)
    assert obs.transport("udp", 6.0) == TransportNat(EXT, LOCAL, MappingBehaviour.UNKNOWN, False, 1, 5.0)


def test_observed_equal_to_local_means_no_nat() -> None:
    obs = NatObserver()
    vote(obs, 1, LOCAL)
    assert obs.transport("udp", 0.0).mapping is MappingBehaviour.NONE
    assert not obs.transport("udp", 0.0).confirmed
    vote(obs, 2, LOCAL)
    got = obs.transport("udp", 0.0)
    assert (got.mapping, got.confirmed, got.external) == (MappingBehaviour.NONE, True, LOCAL)


def test_two_observer_ips_agreeing_mean_endpoint_independent() -> None:
    obs = NatObserver()
    vote(obs, 1, now=1.0)
    vote(obs, 2, now=2.0)
    assert obs.transport("udp", 3.0) == TransportNat(EXT, LOCAL, MappingBehaviour.ENDPOINT_INDEPENDENT, True, 2, 1.0)


def test_observers_seeing_different_ports_mean_a_dependent_mapping() -> None:
    obs = NatObserver()
    vote(obs, 1, EXT, now=1.0)
    vote(obs, 2, dataclasses.replace(EXT, port=51234), now=2.0)
    got = obs.transport("udp", 3.0)
    assert got.mapping is MappingBehaviour.DEPENDENT and not got.confirmed
    assert got.external == dataclasses.replace(EXT, port=51234)  # a tie goes to the freshest
    vote(obs, 3, Endpoint("198.51.100.1", 61000, "udp"))
    assert obs.transport("udp", 3.0).mapping is MappingBehaviour.DEPENDENT  # three different: still dependent


def test_one_liar_among_three_cannot_plant_an_address() -> None:
    obs = NatObserver()
    vote(obs, 1, now=1.0)
    vote(obs, 2, now=2.0)
    vote(obs, 3, LIE, now=3.0)  # the liar answers last, so it would win a tie
    got = obs.transport("udp", 4.0)
    assert (got.external, got.confirmed, got.mapping, got.observers) == (
        EXT, True, MappingBehaviour.ENDPOINT_INDEPENDENT, 3)


def test_many_identities_on_one_ip_are_one_vote() -> None:
    obs = NatObserver(max_observers=32)
    vote(obs, 1, now=1.0)
    vote(obs, 2, now=1.0)
    for n in range(10, 20):
        vote(obs, n, LIE, ip="203.0.113.9", now=2.0)
    got = obs.transport("udp", 3.0)
    assert (got.external, got.confirmed, got.observers) == (EXT, True, 3)
    # ...and alone, a sybil host is one unconfirmed observer.
    solo = NatObserver()
    for n in range(10, 20):
        vote(solo, n, LIE, ip="203.0.113.9")
    assert solo.transport("udp", 0.0).observers == 1 and not solo.transport("udp", 0.0).confirmed


def test_a_tie_between_two_camps_is_not_confirmed() -> None:
    obs = NatObserver()
    for n, ep in [(1, EXT), (2, EXT), (3, LIE), (4, LIE)]:
        vote(obs, n, ep)
    got = obs.transport("udp", 0.0)
    assert not got.confirmed and got.mapping is MappingBehaviour.DEPENDENT


def test_the_local_socket_seen_by_most_observers_is_judged() -> None:
    # TCP observations from ephemeral-port connections say nothing about the punch port's mapping.
    obs = NatObserver()
    punch = Endpoint("10.1.0.2", 5000)
    for n in (1, 2):
        vote(obs, n, Endpoint("198.51.100.1", 5000), local=punch, kind="tcp", now=n)
    vote(obs, 3, Endpoint("198.51.100.1", 40001), local=Endpoint("10.1.0.2", 40001), kind="tcp", now=9)
    got = obs.transport("tcp", 10.0)
    assert (got.local, got.external, got.mapping) == (punch, Endpoint("198.51.100.1", 5000),
                                                      MappingBehaviour.ENDPOINT_INDEPENDENT)
    assert obs.transport("udp", 10.0) == TransportNat()  # kinds are independent


def test_since_is_when_the_current_mapping_was_first_seen() -> None:
    obs = NatObserver()
    vote(obs, 1, now=10.0)
    vote(obs, 1, now=20.0)  # the same observer, the same mapping: still known since 10
    vote(obs, 2, now=30.0)
    assert obs.transport("udp", 31.0).since == 10.0
    moved = dataclasses.replace(EXT, port=4001)
    vote(obs, 1, moved, now=40.0)
    vote(obs, 2, moved, now=41.0)  # the NAT rebooted and remapped us
    got = obs.transport("udp", 42.0)
    assert (got.external, got.since, got.confirmed) == (moved, 40.0, True)


def test_votes_expire_after_ttl() -> None:
    obs = NatObserver(ttl=100.0)
    vote(obs, 1, now=0.0)
    vote(obs, 2, now=50.0)
    assert obs.transport("udp", 99.0).confirmed
    got = obs.transport("udp", 100.0)
    assert (got.observers, got.confirmed, got.since) == (1, False, 50.0)
    assert obs.transport("udp", 150.0) == TransportNat()


def test_reset_forgets_everything() -> None:
    obs = NatObserver()
    vote(obs, 1)
    obs.pick("udp", [(pid(5), "192.0.2.5")], 0.0)
    obs.reset()
    assert obs.nat_info(0.0) == NatInfo()
    assert obs.pick("udp", [(pid(5), "192.0.2.5")], 0.0) == [pid(5)]  # no longer in flight


def test_addresses_are_canonical_and_bad_ones_ignored() -> None:
    obs = NatObserver()
    assert vote(obs, 1, Endpoint("::ffff:198.51.100.1", 4000, "udp"), ip="::ffff:192.0.2.9")
    assert vote(obs, 2, Endpoint("198.51.100.1", 4000))  # a TCP-tagged echo of a UDP socket: the kind decides
    assert obs.transport("udp", 0.0).external == EXT and obs.transport("udp", 0.0).confirmed
    assert not vote(obs, 3, Endpoint("198.51.100.1", 0, "udp"))
    assert not vote(obs, 4, Endpoint("example.com", 1, "udp"))
    assert not vote(obs, 5, ip="not an ip")
    assert obs.ignored == 3 and obs.transport("udp", 0.0).observers == 2


def test_notes_are_carried() -> None:
    info = NatObserver().nat_info(0.0, ["upnp: no IGD found"])
    assert info.notes == ("upnp: no IGD found",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.notes = ()  # type: ignore[misc]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(1, 65535)), max_size=300))
def test_memory_is_bounded(observations: list[tuple[int, int, int]]) -> None:
    obs = NatObserver(max_observers=8)
    for i, (a, b, port) in enumerate(observations):
        obs.observe("udp", pid(a), f"192.0.{a}.{b}", Endpoint("10.0.0.1", port % 3 + 1, "udp"),
                    Endpoint("198.51.100.1", port, "udp"), float(i))
        obs.pick("udp", [(pid(b), f"10.9.{a}.{b}")], float(i))
    assert len(obs._votes["udp"]) <= 8 and len(obs._asked["udp"]) <= 8
    assert obs.transport("udp", float(len(observations))).observers <= 8


# -- whom to ask ------------------------------------------------------------------------------

def test_pick_asks_distinct_ips_up_to_the_target() -> None:
    obs = NatObserver(target=3)
    peers = [(pid(1), "192.0.2.1"), (pid(2), "192.0.2.1"), (pid(3), "192.0.2.3"),
             (pid(4), "192.0.2.4"), (pid(5), "192.0.2.5")]
    assert obs.wanted("udp", 0.0)
    assert obs.pick("udp", peers, 0.0) == [pid(1), pid(3), pid(4)]
    assert not obs.wanted("udp", 0.0)
    assert obs.pick("udp", peers, 1.0) == []  # all three still in flight
    vote(obs, 1, ip="192.0.2.1", now=2.0)
    assert obs.pick("udp", peers, 2.0) == []  # answered: covered by its vote now
    assert obs.pick("tcp", peers, 2.0) == [pid(1), pid(3), pid(4)]  # tcp is asked separately


def test_unanswered_requests_and_ageing_votes_are_asked_again() -> None:
    obs = NatObserver(target=2, ttl=100.0, ask_timeout=10.0)
    peers = [(pid(1), "192.0.2.1"), (pid(2), "192.0.2.2")]
    assert obs.pick("udp", peers, 0.0) == [pid(1), pid(2)]
    vote(obs, 1, now=1.0)
    assert obs.next_check(1.0) == 10.0  # peer 2's request times out
    assert obs.pick("udp", peers, 10.0) == [pid(2)]
    vote(obs, 2, now=12.0)
    assert obs.next_check(12.0) == 51.0  # peer 1's vote is half its ttl old
    assert obs.pick("udp", peers, 50.0) == []
    assert obs.pick("udp", peers, 51.0) == [pid(1)]  # refresh before the vote expires
    assert obs.transport("udp", 51.0).confirmed  # the old vote still counts meanwhile


def test_next_check_never_returns_the_past() -> None:
    obs = NatObserver(ttl=100.0)
    assert obs.next_check(0.0) is None
    vote(obs, 1, now=0.0)
    assert obs.next_check(0.0) == 50.0
    assert obs.next_check(60.0) == 100.0  # nobody to ask at 50: the next event is the expiry
    assert obs.next_check(100.0) is None


@pytest.mark.parametrize("call, error, match", [
    (lambda o: o.observe("sctp", pid(1), "192.0.2.1", LOCAL, EXT, 0.0), ValueError, "socket kind"),
    (lambda o: o.observe("udp", b"x" * 32, "192.0.2.1", LOCAL, EXT, 0.0), TypeError, "observer_id"),
    (lambda o: o.observe("udp", pid(1), "192.0.2.1", "10.0.0.1:1", EXT, 0.0), TypeError, "Endpoints"),
    (lambda o: o.transport("ipx", 0.0), ValueError, "socket kind"),
    (lambda o: o.pick(None, [], 0.0), ValueError, "socket kind"),
])
def test_bad_arguments_are_refused(call: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call(NatObserver())  # type: ignore[operator]


@pytest.mark.parametrize("kwargs", [{"ttl": 0}, {"ask_timeout": -1}, {"target": 0}, {"target": 5, "max_observers": 4}])
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        NatObserver(**kwargs)  # type: ignore[arg-type]
