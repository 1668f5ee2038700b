"""UpnpMapper in virtual time against an in-memory IGD: leases, renewal, conflicts, cleanup."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crust.errors import LocalProtocolError
from crust.ids import Endpoint, PeerId
from crust.nat.igd import AddMapping, DeleteMapping, Discover, IgdError, IgdNotFound, IgdRefused, MappingConflict, ReadExternalIp
from crust.nat.upnp import LEASE, MAX_PORT_TRIES, RENEW_RETRY, MapperState, UpnpMapper
from tests.fake_igd import EXTERNAL_IP, LAN_IP, OTHER_HOST, FakeIgd, drive, reports

PEER = PeerId(bytes(range(32)))
LABEL = "00010203"
TCP = Endpoint("0.0.0.0", 40000)
UDP = Endpoint("0.0.0.0", 40001, "udp")
HALF = LEASE / 2


def mapped(seed: int = 1, **kwargs: object) -> tuple[UpnpMapper, FakeIgd]:
    """A mapper that mapped TCP and UDP at t=0."""
    mapper, igd = UpnpMapper(PEER, rng=random.Random(seed), **kwargs), FakeIgd()  # type: ignore[arg-type]
    mapper.start([TCP, UDP])
    drive(mapper, igd, 0.0)
    assert mapper.state is MapperState.ACTIVE
    return mapper, igd


def adds(actions: list[object]) -> list[tuple[str, int]]:
    return [(a.transport, a.external_port) for a in actions if isinstance(a, AddMapping)]


# -- the happy path ----------------------------------------------------------------------

def test_discover_read_ip_then_one_leased_add_per_port() -> None:
    mapper, igd = UpnpMapper(PEER), FakeIgd()
    mapper.start([TCP, UDP])
    assert mapper.status == ("upnp: looking for an IGD",)
    actions = drive(mapper, igd, 5.0)
    assert actions == [
        Discover(), ReadExternalIp(),
        AddMapping("tcp", 40000, LAN_IP, 40000, f"crust {LABEL} tcp", LEASE),
        AddMapping("udp", 40001, LAN_IP, 40001, f"crust {LABEL} udp", LEASE),
    ]
    assert mapper.endpoints == (Endpoint(EXTERNAL_IP, 40000), Endpoint(EXTERNAL_IP, 40001, "udp"))
    assert mapper.status == (
        f"upnp: mapped tcp {LAN_IP}:40000 -> {EXTERNAL_IP}:40000, lease 3600 s (renewed every 1800 s)",
        f"upnp: mapped udp {LAN_IP}:40001 -> {EXTERNAL_IP}:40001, lease 3600 s (renewed every 1800 s)",
    )
    assert reports(mapper) == list(mapper.status)
    assert mapper.cleanup == (("tcp", 40000), ("udp", 40001))
    assert mapper.get_timer() == 5.0 + HALF
    assert set(igd.live()) == {("tcp", 40000), ("udp", 40001)}


def test_listener_hosts_decide_what_is_mapped_and_from_where() -> None:
    mapper, igd = UpnpMapper(PEER), FakeIgd()
    mapper.start([Endpoint("10.1.0.7", 5000), Endpoint("127.0.0.1", 5001), Endpoint("::", 5002),
                  Endpoint("10.1.0.7", 5000), Endpoint("0.0.0.0", 5003, "udp")])
    actions = drive(mapper, igd, 0.0)
    assert [(a.internal_host, a.internal_port) for a in actions if isinstance(a, AddMapping)] == [
        ("10.1.0.7", 5000), (LAN_IP, 5003)]


def test_public_address_listeners_need_no_router() -> None:
    mapper, igd = UpnpMapper(PEER), FakeIgd()
    mapper.start([Endpoint("203.0.114.5", 5000), Endpoint("127.0.0.1", 5000), Endpoint("203.0.114.5", 5001, "udp")])
    assert mapper.state is MapperState.FAILED and not mapper.settling
    assert mapper.failure == "not needed (we listen on a public address)"
    assert drive(mapper, igd, 0.0) == [] and igd.count("discover") == 0  # not one SSDP packet
    mapper.refresh()
    assert mapper.failure == "not needed (we listen on a public address)" and drive(mapper, igd, 1.0) == []
    mapper.start([Endpoint("203.0.114.5", 5000), Endpoint("192.168.1.9", 5000)])  # and a LAN: map that one
    assert adds(drive(mapper, igd, 2.0)) == [("tcp", 5000)] and set(igd.live("192.168.1.9")) == {("tcp", 5000)}


def test_settling_lasts_until_every_port_is_mapped_or_refused() -> None:
    mapper, igd = UpnpMapper(PEER), FakeIgd()
    assert not mapper.settling  # idle: nothing under way
    mapper.start([TCP, UDP])
    igd.take("udp", 40001)  # udp needs a second try
    igd.fail_next("add", IgdRefused("Not authorized"))  # tcp is refused
    seen = [mapper.settling]
    for _ in range(10):
        action = mapper.next_action(0.0)
        if action is None:
            break
        try:
            mapper.action_done(action.perform(igd), 0.0)
        except IgdError as err:
            mapper.action_failed(err, 0.0)
        seen.append(mapper.settling)
    assert seen == [True, True, True, True, True, False]  # discover, ip, tcp refused, udp conflict, udp mapped
    assert mapper.endpoints == (Endpoint(EXTERNAL_IP, mapper.endpoints[0].port, "udp"),)
    drive(mapper, igd, HALF)  # a renewal is no first attempt
    assert not mapper.settling
    mapper.stop()
    mapper.start([TCP])  # while stopping: the restart waits for the cleanup, and is under way
    assert mapper.state is MapperState.STOPPING and mapper.settling
    drive(mapper, igd, HALF + 1)
    assert mapper.state is MapperState.ACTIVE and not mapper.settling
    igd_missing = UpnpMapper(PEER)
    igd_missing.start([TCP])
    drive(igd_missing, FakeIgd(found=False), 0.0)
    assert not igd_missing.settling  # no IGD ends the attempt too


def test_nothing_to_map_sends_nothing_at_all() -> None:
    # Loopback-only listeners (every test Service): not one SSDP packet.
    mapper = UpnpMapper(PEER)
    mapper.start([Endpoint("127.0.0.1", 5000), Endpoint("::1", 5001, "udp")])
    assert mapper.state is MapperState.FAILED
    assert mapper.failure == "nothing to map (no IPv4 listener)"
    assert mapper.next_action(0.0) is None and mapper.get_timer() is None


# -- renewal ----------------------------------------------------------------------------

def test_renewal_at_half_the_lease_keeps_the_router_entry_alive() -> None:
    mapper, igd = mapped()
    renewals = 0
    for step in range(1, 5 * 60 + 1):  # five leases, one virtual minute at a time
        now = step * 60.0
        actions = drive(mapper, igd, now)
        renewals += len(adds(actions))
        if actions:
            assert now % HALF == 0, f"renewed at {now}"
            assert adds(actions) == [("tcp", 40000), ("udp", 40001)]
        assert set(igd.live()) == {("tcp", 40000), ("udp", 40001)}, f"a lease lapsed at {now}"
    assert renewals == 2 * (5 * 60 * 60 // int(HALF))
    assert reports(mapper)[2:] == []  # renewals are not news


def test_nothing_happens_before_the_timer() -> None:
    mapper, igd = mapped()
    assert drive(mapper, igd, HALF - 0.001) == []
    assert adds(drive(mapper, igd, HALF)) == [("tcp", 40000), ("udp", 40001)]
    assert mapper.get_timer() == LEASE


def test_no_timer_while_an_action_is_in_flight() -> None:
    mapper, igd = mapped()
    action = mapper.next_action(HALF)
    assert isinstance(action, AddMapping) and mapper.busy
    assert mapper.get_timer() is None and mapper.next_action(HALF) is None
    mapper.action_done(action.perform(igd), HALF)
    assert mapper.get_timer() == HALF  # the UDP renewal is still due


def test_failed_renewal_is_retried_until_it_works() -> None:
    mapper, igd = mapped()
    igd.fail_next("add", IgdRefused("Miniupnpc HTTP error"))
    assert adds(drive(mapper, igd, HALF)) == [("tcp", 40000), ("udp", 40001)]
    assert reports(mapper)[2:] == [f"upnp: renewing tcp {EXTERNAL_IP}:40000 failed "
                                   f"(IGD refused: Miniupnpc HTTP error); retrying"]
    assert mapper.get_timer() == HALF + RENEW_RETRY
    assert adds(drive(mapper, igd, HALF + RENEW_RETRY)) == [("tcp", 40000)]
    assert mapper.endpoints == (Endpoint(EXTERNAL_IP, 40000), Endpoint(EXTERNAL_IP, 40001, "udp"))
    assert mapper.get_timer() == LEASE  # udp renews next; tcp at HALF + RETRY + HALF
    assert adds(drive(mapper, igd, LEASE)) == [("udp", 40001)]
    assert mapper.get_timer() == HALF + RENEW_RETRY + HALF


def test_a_lease_that_could_not_be_renewed_is_lost_quietly_but_still_cleaned_up() -> None:
    mapper, igd = mapped()
    igd.fail_next("add", IgdRefused("Action Failed"), times=1000)
    attempts = 0
    for step in range(1, 200):
        attempts += len(adds(drive(mapper, igd, step * 30.0)))
    tries = 1 + int((LEASE - HALF) // RENEW_RETRY - 1)  # at HALF, then every RETRY while before expiry
    assert attempts == 2 * tries
    assert mapper.endpoints == ()
    assert mapper.status == tuple(f"upnp: {t} {LAN_IP}:{p} not mapped: lease ran out (IGD refused: Action Failed)"
                                  for t, p in (("tcp", 40000), ("udp", 40001)))
    assert mapper.get_timer() is None and drive(mapper, igd, 10 * LEASE) == []
    # The router may still hold them (a renewal can fail on the way back): delete anyway.
    assert mapper.cleanup == (("tcp", 40000), ("udp", 40001))
    mapper.stop()
    assert [(a.transport, a.external_port) for a in drive(mapper, igd, 10 * LEASE)] == [("tcp", 40000), ("udp", 40001)]
    assert mapper.state is MapperState.STOPPED and mapper.cleanup == ()


# -- conflicts --------------------------------------------------------------------------

def test_a_conflict_tries_our_port_then_random_ones_reproducibly() -> None:
    def run(seed: int) -> tuple[list[tuple[str, int]], UpnpMapper, FakeIgd]:
        mapper, igd = UpnpMapper(PEER, rng=random.Random(seed)), FakeIgd()
        igd.take("tcp", 40000)
        mapper.start([TCP])
        return adds(drive(mapper, igd, 0.0)), mapper, igd

    tried, mapper, igd = run(7)
    assert tried[0] == ("tcp", 40000) and len(tried) == 2
    other = tried[1][1]
    assert 1024 <= other <= 65535 and other != 40000
    assert mapper.endpoints == (Endpoint(EXTERNAL_IP, other),)
    assert igd.live(OTHER_HOST) == {("tcp", 40000): igd.table["tcp", 40000]}  # untouched
    assert run(7)[0] == tried and run(8)[0] != tried
    mapper.stop()
    assert drive(mapper, igd, 1.0) == [DeleteMapping("tcp", other, LAN_IP, 40000)]  # never the other host's port


def test_conflict_tries_are_bounded_and_the_other_ports_still_map() -> None:
    mapper, igd = UpnpMapper(PEER), FakeIgd()
    igd.conflict_all = True
    mapper.start([TCP])
    tried = adds(drive(mapper, igd, 0.0))
    assert len(tried) == MAX_PORT_TRIES == len(set(tried))
    ports = ", ".join(str(p) for _, p in tried)
    assert mapper.status == (f"upnp: tcp {LAN_IP}:40000 not mapped: external port(s) {ports} taken by other hosts",)
    assert mapper.get_timer() is None and mapper.cleanup == ()
    igd.conflict_all = False
    mapper.start([TCP, UDP])  # a new start searches afresh
    drive(mapper, igd, 1.0)
    assert len(mapper.endpoints) == 2


def test_a_refusal_ends_that_mapping_without_retry() -> None:
    mapper, igd = UpnpMapper(PEER), FakeIgd()
    igd.fail_next("add", IgdRefused("Action not authorized"))
    mapper.start([TCP, UDP])
    assert adds(drive(mapper, igd, 0.0)) == [("tcp", 40000), ("udp", 40001)]
    assert mapper.status[0] == f"upnp: tcp {LAN_IP}:40000 not mapped: IGD refused: Action not authorized"
    assert mapper.endpoints == (Endpoint(EXTERNAL_IP, 40001, "udp"),)
    assert mapper.cleanup == (("udp", 40001),)
    assert adds(drive(mapper, igd, HALF)) == [("udp", 40001)]


def test_another_host_taking_our_port_on_renewal_starts_a_new_search() -> None:
    mapper, igd = mapped(seed=3)
    igd.take("tcp", 40000)  # e.g. the router rebooted and gave it away
    tried = adds(drive(mapper, igd, HALF))
    # The renewal conflicts; the new search skips the taken port and maps a random one at once.
    assert tried[0] == ("tcp", 40000) and tried[2] == ("udp", 40001) and len(tried) == 3
    new_port = tried[1][1]
    assert tried[1][0] == "tcp" and new_port != 40000
    assert mapper.endpoints == (Endpoint(EXTERNAL_IP, new_port), Endpoint(EXTERNAL_IP, 40001, "udp"))
    assert ("tcp", 40000) in mapper.cleanup  # we cannot know for sure it is gone: delete names us
    mapper.stop()
    assert drive(mapper, igd, HALF + 1)[0] == DeleteMapping("tcp", 40000, LAN_IP, 40000)
    assert igd.live() == {} and ("tcp", 40000) in igd.live(OTHER_HOST)  # the other host's survives


# -- discovery ----------------------------------------------------------------------------

def test_no_igd_is_one_quiet_outcome_and_never_a_rediscovery_loop() -> None:
    mapper, igd = UpnpMapper(PEER), FakeIgd(found=False)
    mapper.start([TCP, UDP])
    assert drive(mapper, igd, 0.0) == [Discover()]
    assert mapper.state is MapperState.FAILED and mapper.failure == "no IGD found"
    assert mapper.status == ("upnp: no IGD found",)
    assert reports(mapper) == ["upnp: no IGD found"]
    assert mapper.get_timer() is None
    for now in (1.0, HALF, LEASE, 1e6):
        assert drive(mapper, igd, now) == []
    assert igd.count("discover") == 1 and mapper.endpoints == ()
    mapper.refresh()  # explicit: exactly one more discovery
    assert drive(mapper, igd, 2e6) == [Discover()] and igd.count("discover") == 2


@pytest.mark.parametrize("answer", ["", "0.0.0.0", "garbage", "::1", IgdRefused("Miniupnpc HTTP error")])
def test_no_usable_external_ip_fails_quietly(answer: str | IgdError) -> None:
    mapper, igd = UpnpMapper(PEER), FakeIgd()
    if isinstance(answer, IgdError):
        igd.fail_next("external_ip", answer)
    else:
        igd.external_ip_value = answer
    mapper.start([TCP])
    assert drive(mapper, igd, 0.0) == [Discover(), ReadExternalIp()]
    assert mapper.state is MapperState.FAILED
    expected = "no external IP" + (" (IGD refused: Miniupnpc HTTP error)" if isinstance(answer, IgdError) else "")
    assert mapper.failure == expected and reports(mapper) == [f"upnp: {expected}"]
    assert mapper.get_timer() is None and drive(mapper, igd, 1e6) == []


def test_an_unknown_lan_address_fails_only_the_wildcard_listeners() -> None:
    mapper, igd = UpnpMapper(PEER), FakeIgd(lan_ip="")
    mapper.start([TCP, Endpoint("10.1.0.7", 5000, "udp")])
    assert adds(drive(mapper, igd, 0.0)) == [("udp", 5000)]
    assert mapper.status[0] == "upnp: tcp ?:40000 not mapped: the IGD did not say which LAN address it sees"


# -- stop and cleanup ------------------------------------------------------------------------

def test_stop_deletes_every_mapping_then_rests() -> None:
    mapper, igd = mapped()
    mapper.stop()
    assert mapper.endpoints == () and mapper.status == ("upnp: removing 2 mapping(s)",)
    assert drive(mapper, igd, 10.0) == [DeleteMapping("tcp", 40000, LAN_IP, 40000), DeleteMapping("udp", 40001, LAN_IP, 40001)]
    assert mapper.state is MapperState.STOPPED and mapper.status == ("upnp: stopped",)
    assert igd.live() == {} and mapper.cleanup == ()
    assert reports(mapper)[2:] == [f"upnp: removed tcp {EXTERNAL_IP}:40000", f"upnp: removed udp {EXTERNAL_IP}:40001"]
    mapper.stop()  # idempotent
    assert drive(mapper, igd, 1e6) == [] and mapper.get_timer() is None


def test_stop_includes_mappings_whose_renewal_failed() -> None:
    mapper, igd = mapped()
    igd.fail_next("add", IgdRefused("Miniupnpc HTTP error"))
    drive(mapper, igd, HALF)
    assert mapper.cleanup == (("tcp", 40000), ("udp", 40001))
    mapper.stop()
    assert drive(mapper, igd, HALF + 1) == [DeleteMapping("tcp", 40000, LAN_IP, 40000), DeleteMapping("udp", 40001, LAN_IP, 40001)]
    assert igd.live() == {}


def test_a_failed_delete_is_reported_once_and_left_to_its_lease() -> None:
    mapper, igd = mapped()
    igd.fail_next("delete", IgdRefused("Miniupnpc HTTP error"))
    mapper.stop()
    assert len(drive(mapper, igd, 1.0)) == 2 and mapper.state is MapperState.STOPPED
    assert reports(mapper)[2] == (f"upnp: could not remove tcp {EXTERNAL_IP}:40000 "
                                  f"(IGD refused: Miniupnpc HTTP error); it lapses with its lease")
    assert set(igd.live()) == {("tcp", 40000)}
    igd.now = LEASE + 0.1
    assert igd.live() == {}  # a leased mapping: gone by itself


def test_stop_with_an_add_in_flight_deletes_what_it_added() -> None:
    mapper, igd = UpnpMapper(PEER), FakeIgd()
    mapper.start([TCP])
    for expected in (Discover, ReadExternalIp):
        action = mapper.next_action(0.0)
        assert isinstance(action, expected)
        mapper.action_done(action.perform(igd), 0.0)
    add = mapper.next_action(0.0)
    assert isinstance(add, AddMapping)
    mapper.stop()  # while the router is still working on the add
    assert mapper.state is MapperState.STOPPING
    mapper.action_done(add.perform(igd), 0.5)
    assert mapper.endpoints == () and drive(mapper, igd, 1.0) == [DeleteMapping("tcp", 40000, LAN_IP, 40000)]
    assert mapper.state is MapperState.STOPPED and igd.live() == {}


def test_stop_while_discovering_ignores_the_late_answer() -> None:
    mapper, igd = UpnpMapper(PEER), FakeIgd()
    mapper.start([TCP])
    action = mapper.next_action(0.0)
    mapper.stop()
    assert mapper.state is MapperState.STOPPING
    assert action is not None
    mapper.action_done(action.perform(igd), 2.0)
    assert mapper.state is MapperState.STOPPED and drive(mapper, igd, 3.0) == []


def test_start_while_mapped_removes_the_old_mappings_first() -> None:
    mapper, igd = mapped()
    mapper.start([Endpoint("0.0.0.0", 50000)])
    assert drive(mapper, igd, 1.0) == [
        DeleteMapping("tcp", 40000, LAN_IP, 40000), DeleteMapping("udp", 40001, LAN_IP, 40001), Discover(), ReadExternalIp(),
        AddMapping("tcp", 50000, LAN_IP, 50000, f"crust {LABEL} tcp", LEASE)]
    assert set(igd.live()) == {("tcp", 50000)} and igd.count("discover") == 2
    mapper.stop()
    mapper.start([TCP])  # while stopping: after the cleanup
    assert drive(mapper, igd, 2.0)[0] == DeleteMapping("tcp", 50000, LAN_IP, 50000)
    assert mapper.endpoints == (Endpoint(EXTERNAL_IP, 40000),)


# -- misuse --------------------------------------------------------------------------------

def test_misuse_is_refused_clearly() -> None:
    with pytest.raises(TypeError, match="PeerId"):
        UpnpMapper(b"x" * 32)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lease must be 1"):
        UpnpMapper(PEER, lease=0)  # 0 would be a permanent mapping
    with pytest.raises(TypeError, match="lease must be an int"):
        UpnpMapper(PEER, lease=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_port_tries"):
        UpnpMapper(PEER, max_port_tries=0)
    mapper = UpnpMapper(PEER)
    with pytest.raises(LocalProtocolError, match="before start"):
        mapper.refresh()
    with pytest.raises(TypeError, match="Endpoints"):
        mapper.start(["1.2.3.4:5"])  # type: ignore[list-item]
    with pytest.raises(LocalProtocolError, match="no action is in flight"):
        mapper.action_done(None, 0.0)
    mapper.start([TCP])
    mapper.next_action(0.0)
    with pytest.raises(TypeError, match="IgdError"):
        mapper.action_failed(OSError("x"), 0.0)  # type: ignore[arg-type]


# -- the invariant, under any sequence of router trouble -------------------------------------

_STEP = st.one_of(
    st.tuples(st.just("wait"), st.floats(1.0, LEASE)),
    st.tuples(st.just("fail"), st.sampled_from(["add", "delete", "external_ip"])),
    st.tuples(st.just("conflict"), st.sampled_from(["add"])),
    st.tuples(st.just("steal"), st.sampled_from([("tcp", 40000), ("udp", 40001)])),
    st.tuples(st.just("restart"), st.just(None)),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_STEP, max_size=25), st.integers(0, 2**16))
def test_the_cleanup_list_covers_everything_the_router_holds_for_us(steps: list[tuple[str, object]], seed: int) -> None:
    mapper, igd = UpnpMapper(PEER, rng=random.Random(seed)), FakeIgd()
    mapper.start([TCP, UDP])
    now = 0.0
    stolen: set[tuple[str, int]] = set()

    def failed_deletes() -> set[tuple[str, int]]:
        return {(str(c[1]), int(c[2])) for c in igd.failed if c[0] == "delete"}  # type: ignore[call-overload]

    for kind, arg in steps:
        if kind == "wait":
            now += float(arg)  # type: ignore[arg-type]
        elif kind == "fail":
            igd.fail_next(str(arg), IgdRefused("Action Failed"))
        elif kind == "conflict":
            igd.fail_next("add", MappingConflict("ConflictInMappingEntry"))
        elif kind == "steal":
            igd.take(*arg)  # type: ignore[misc]
            stolen.add(arg)  # type: ignore[arg-type]
        else:
            mapper.refresh()
        drive(mapper, igd, now)
        # Whatever the router forwards to us is on the cleanup list, unless its one delete failed.
        assert set(igd.live()) <= set(mapper.cleanup) | failed_deletes()
        # We advertise only ports the router forwards to us (or that another host took behind our back).
        held = {(ep.transport, ep.port) for ep in mapper.endpoints}
        assert held <= set(igd.live()) | stolen
    others = igd.live(OTHER_HOST)
    for queued in igd.failures.values():
        queued.clear()
    mapper.stop()
    drive(mapper, igd, now)
    assert mapper.state is MapperState.STOPPED and mapper.cleanup == ()
    assert set(igd.live()) <= failed_deletes()
    assert igd.live(OTHER_HOST) == others  # never removed another host's mapping
