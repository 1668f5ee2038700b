"""crust.nat.punch: UdpPunch in virtual time through a model of TESTLAB.md's four NAT types.

The model follows TESTLAB.md's nftables NATs: *port-restricted* keeps the
source port and filters by remote address and port; *symmetric* picks a new
random port per remote endpoint and filters the same way; *full-cone* maps
per source and lets anyone in; *restricted* maps per source and lets in
remote IPs it has sent to.  "none" is a host on a public address.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field
from typing import Any

import pytest

from crust.crypto.mac import punch_key
from crust.ids import Endpoint, PeerId
from crust.nat.probe import EchoRequest, PunchProbe, decode, encode
from crust.nat.punch import Punched, PunchEvent, PunchFailed, UdpPunch, retry_schedule

KEY = punch_key(bytes(range(16)), bytes(range(16, 32)))
ID_A = PeerId(b"\xaa" * 32)  # the greater id: A controls
ID_B = PeerId(b"\x11" * 32)
OBSERVER = Endpoint("203.0.113.1", 3478, "udp")  # the peer-STUN observer both sides asked
LATENCY = 0.02  # seconds one way


def udp(host: str, port: int) -> Endpoint:
    return Endpoint(host, port, "udp")


class Nat:
    """One NAT box with a public IP, mapping and filtering like TESTLAB.md's nftables rules."""

    def __init__(self, kind: str, public_ip: str, rng: random.Random) -> None:
        assert kind in ("full-cone", "restricted", "port-restricted", "symmetric")
        self.kind, self.public_ip, self.rng = kind, public_ip, rng
        self.maps: dict[Any, int] = {}
        self.back: dict[int, Endpoint] = {}
        self.contacted: set[tuple[int, str, int]] = set()  # (our port, remote ip, remote port)

    def out(self, src: Endpoint, dst: Endpoint) -> Endpoint:
        key = (src, dst) if self.kind == "symmetric" else src
        port = self.maps.get(key)
        if port is None:
            port = src.port if self.kind != "symmetric" else self.rng.randrange(20000, 60000)
            while port in self.back:
                port = self.rng.randrange(20000, 60000)
            self.maps[key], self.back[port] = port, src
        self.contacted.add((port, dst.host, dst.port))
        return udp(self.public_ip, port)

    def into(self, src: Endpoint, port: int) -> Endpoint | None:
        internal = self.back.get(port)
        if internal is None:
            return None
        if self.kind == "full-cone":
            return internal
        if self.kind == "restricted":
            return internal if any(p == port and ip == src.host for p, ip, _ in self.contacted) else None
        return internal if (port, src.host, src.port) in self.contacted else None


@dataclass
class Host:
    name: str
    local: Endpoint
    nat: Nat | None
    punch: UdpPunch | None = None
    events: list[tuple[float, PunchEvent]] = field(default_factory=list)
    sent: int = 0


class World:
    """Two hosts, their NATs and a lossy, jittery internet, run in virtual time."""

    def __init__(self, kind_a: str, kind_b: str, *, loss: float = 0.0, seed: int = 0, same_lan: bool = False) -> None:
        self.rng = random.Random(seed)
        self.loss = loss
        nat_a = None if kind_a == "none" else Nat(kind_a, "198.51.100.1", self.rng)
        nat_b = nat_a if same_lan else None if kind_b == "none" else Nat(kind_b, "198.51.100.2", self.rng)
        self.a = Host("a", udp("10.1.0.2" if nat_a else "198.51.100.11", 4000), nat_a)
        self.b = Host("b", udp(("10.1.0.3" if same_lan else "10.2.0.2") if nat_b else "198.51.100.12", 4000), nat_b)
        self.queue: list[tuple[float, int, Any]] = []
        self.seq = itertools.count()
        self.now = 0.0

    def candidates(self, host: Host) -> list[Endpoint]:
        """What host's connection info offers: its mapping as the observer saw it, then its local address."""
        observed = host.nat.out(host.local, OBSERVER) if host.nat else host.local
        return list(dict.fromkeys([observed, host.local]))

    def other(self, host: Host) -> Host:
        return self.b if host is self.a else self.a

    def send(self, host: Host, data: bytes, dst: Endpoint) -> None:
        host.sent += 1
        peer = self.other(host)
        if host.nat is not None and host.nat is peer.nat and dst == peer.local:
            source = host.local  # on the same LAN: no NAT in between
        elif dst.host.startswith("10."):
            return  # a private address across the internet: unroutable
        else:
            source = host.nat.out(host.local, dst) if host.nat else host.local
        if self.rng.random() < self.loss:
            return
        arrival = self.now + LATENCY + self.rng.uniform(0, 0.01)  # jitter reorders a little
        heapq.heappush(self.queue, (arrival, next(self.seq), ("arrive", source, dst, data)))

    def _arrive(self, source: Endpoint, dst: Endpoint, data: bytes) -> None:
        for host in (self.a, self.b):
            if host.nat is None and host.local == dst or host.local == dst and source.host.startswith("10."):
                break
            if host.nat is not None and host.nat.public_ip == dst.host and host.nat.into(source, dst.port) == host.local:
                break
        else:
            return  # filtered or nobody there
        assert host.punch is not None
        host.punch.receive_probe(data, source, self.now)
        self._flush(host)

    def _flush(self, host: Host) -> None:
        assert host.punch is not None
        for data, dst in host.punch.datagrams_to_send(self.now):
            self.send(host, data, dst)
        host.events += [(self.now, event) for event in host.punch.take_events()]

    def run(self, *, b_delay: float = 0.0, until: float = 12.0, **options: Any) -> None:
        self.a.punch = UdpPunch(KEY, ID_A, ID_B, self.candidates(self.b), **options)
        self.b.punch = UdpPunch(KEY, ID_B, ID_A, self.candidates(self.a), **options)
        heapq.heappush(self.queue, (0.0, next(self.seq), ("start", self.a)))
        heapq.heappush(self.queue, (b_delay, next(self.seq), ("start", self.b)))
        for _ in range(20_000):
            timers = [(t, h) for h in (self.a, self.b) if h.punch and (t := h.punch.get_timer()) is not None]
            next_timer = min(timers, key=lambda th: th[0], default=None)
            next_packet = self.queue[0][0] if self.queue else None
            if next_timer is None and next_packet is None:
                return
            if next_packet is None or next_timer is not None and next_timer[0] < next_packet:
                assert next_timer is not None
                self.now = max(self.now, next_timer[0])
                if self.now > until:
                    return
                host = next_timer[1]
                assert host.punch is not None
                host.punch.handle_timer(self.now)
                self._flush(host)
                continue
            self.now, _, action = heapq.heappop(self.queue)
            if self.now > until:
                return
            if action[0] == "start":
                host = action[1]
                host.punch.start(self.now)
                self._flush(host)
            else:
                self._arrive(*action[1:])
        raise AssertionError("the simulation did not settle in 20000 steps")

    def path_from(self, host: Host, dst: Endpoint) -> Endpoint | None:
        """Where a datagram from ``host`` to ``dst`` shows up at the other host (None: it doesn't)."""
        peer = self.other(host)
        if host.nat is not None and host.nat is peer.nat:
            return host.local if dst == peer.local else None
        source = host.nat.out(host.local, dst) if host.nat else host.local
        if peer.nat is None:
            return source if dst == peer.local else None
        return source if dst.host == peer.nat.public_ip and peer.nat.into(source, dst.port) == peer.local else None


def punched(host: Host) -> tuple[float, Endpoint] | None:
    got = [(t, e.endpoint) for t, e in host.events if isinstance(e, Punched)]
    assert len(host.events) <= 1, host.events
    return got[0] if got else None


def failed(host: Host) -> tuple[float, str] | None:
    got = [(t, e.reason) for t, e in host.events if isinstance(e, PunchFailed)]
    return got[0] if got else None


def assert_punched_one_path(world: World) -> None:
    """Both sides punched, onto the same path: each one's datagrams reach the other from its punched address."""
    a, b = punched(world.a), punched(world.b)
    assert a is not None and b is not None, (world.a.events, world.b.events)
    assert world.path_from(world.a, a[1]) == b[1]
    assert world.path_from(world.b, b[1]) == a[1]


# -- TESTLAB.md's UDP matrix -----------------------------------------------------------------

KINDS = ["none", "full-cone", "restricted", "port-restricted", "symmetric"]
MUST_FAIL = {frozenset({"port-restricted", "symmetric"}), frozenset({"symmetric"})}
PAIRS = [(a, b) for a in KINDS for b in KINDS]  # both orders: either side may control
PUNCHING = [pair for pair in PAIRS if frozenset(pair) not in MUST_FAIL]
FAILING = [pair for pair in PAIRS if frozenset(pair) in MUST_FAIL]


@pytest.mark.parametrize("kind_a, kind_b", PUNCHING)
def test_pairs_testlab_punches_do_punch_quickly(kind_a: str, kind_b: str) -> None:
    world = World(kind_a, kind_b)
    world.run()
    assert_punched_one_path(world)
    a, b = punched(world.a), punched(world.b)
    assert a is not None and b is not None
    assert max(a[0], b[0]) < 1.0  # a few round trips, not the deadline
    assert world.a.sent + world.b.sent < 60


@pytest.mark.parametrize("kind_a, kind_b", FAILING)
def test_pairs_testlab_cannot_punch_fail_at_the_deadline(kind_a: str, kind_b: str) -> None:
    world = World(kind_a, kind_b)
    world.run(b_delay=1.5)
    for host, start in ((world.a, 0.0), (world.b, 1.5)):
        got = failed(host)
        assert got is not None and punched(host) is None, host.events
        assert got[0] == pytest.approx(start + 8.0)
        assert got[1].startswith("udp-punch: ")
        assert host.punch is not None and host.punch.get_timer() is None and host.punch.done
    assert world.a.sent + world.b.sent <= 2 * 300


@pytest.mark.parametrize("kind_a, kind_b", PUNCHING)
def test_a_side_starting_1_5_s_later_still_punches(kind_a: str, kind_b: str) -> None:
    world = World(kind_a, kind_b)
    world.run(b_delay=1.5)
    assert_punched_one_path(world)
    a, b = punched(world.a), punched(world.b)
    assert a is not None and b is not None and max(a[0], b[0]) < 1.5 + 1.0


@pytest.mark.parametrize("kind_a, kind_b", [("port-restricted", "port-restricted"), ("restricted", "symmetric"),
                                            ("symmetric", "full-cone"), ("none", "port-restricted")])
def test_punching_survives_30_percent_loss(kind_a: str, kind_b: str) -> None:
    outcomes = []
    for seed in range(25):
        world = World(kind_a, kind_b, loss=0.3, seed=seed)
        world.run(b_delay=0.7 * (seed % 3))
        assert_punched_one_path(world)
        outcomes.append(world.a.sent + world.b.sent)
    assert max(outcomes) <= 2 * 300


def test_hosts_on_one_lan_punch_through_their_local_addresses() -> None:
    world = World("symmetric", "symmetric", same_lan=True)
    world.run()
    assert_punched_one_path(world)
    a = punched(world.a)
    assert a is not None and a[1] == world.b.local


def test_the_failure_reason_says_how_far_it_got() -> None:
    world = World("symmetric", "symmetric")
    world.run()
    got = failed(world.a)
    assert got is not None and got[1] == "udp-punch: no answer from 2 candidates in 8 s"
    # Heard but never heard back: B hears A, A never hears B.
    lonely = UdpPunch(KEY, ID_B, ID_A, [udp("192.0.2.1", 1)])
    lonely.start(0.0)
    lonely.receive_probe(encode(PunchProbe.sign(KEY, *lonely.route, 1)), udp("192.0.2.9", 9), 0.1)
    lonely.handle_timer(8.0)
    assert lonely.take_events() == [PunchFailed(
        "udp-punch: heard the peer from udp://192.0.2.9:9 but it never heard us in 8 s")]


# -- hostile input ----------------------------------------------------------------------------

def _machine(ours: PeerId = ID_A, theirs: PeerId = ID_B, **options: Any) -> UdpPunch:
    punch = UdpPunch(KEY, ours, theirs, [udp("198.51.100.2", 4000)], **options)
    punch.start(0.0)
    return punch


def _their_probe(punch: UdpPunch, counter: int, ack: int = 0, nominate: bool = False) -> bytes:
    return encode(PunchProbe.sign(KEY, punch.route[0], punch.route[1], counter, ack, nominate))


@pytest.mark.parametrize("controlling", [True, False])
def test_a_replayed_probe_cannot_punch_to_where_it_was_replayed_from(controlling: bool) -> None:
    punch = _machine(*((ID_A, ID_B) if controlling else (ID_B, ID_A)))
    real = udp("198.51.100.2", 4000)
    sent = punch.datagrams_to_send(0.0)  # our counter 1 goes to the real peer
    assert [dst for _, dst in sent] == [real]
    captured = _their_probe(punch, 7, ack=1, nominate=True)  # the real peer's answer, seen on the path
    attacker = udp("203.0.113.66", 6666)
    for i in range(50):
        assert punch.receive_probe(captured, attacker, 0.01 * i)  # authentic, so accepted...
        punch.datagrams_to_send(0.01 * i)
    assert punch.take_events() == [] and punch.endpoint is None  # ...but it proves no path to the attacker
    assert punch.receive_probe(captured, real, 0.6)  # from where our counter 1 went, it does
    assert punch.take_events() == [Punched(real)]


def test_forged_foreign_and_malformed_datagrams_are_counted_and_dropped() -> None:
    punch = _machine()
    src = udp("198.51.100.2", 4000)
    other_key = punch_key(bytes(16), bytes(16))
    forged = encode(PunchProbe.sign(other_key, punch.route[0], punch.route[1], 1))
    reflected = encode(PunchProbe.sign(KEY, punch.route[1], punch.route[0], 1))  # our own probe bounced back
    assert not punch.receive_probe(forged, src, 0.1)
    assert not punch.receive_probe(reflected, src, 0.1)
    assert not punch.receive_probe(b"\xc3CRNP garbage", src, 0.1)
    assert not punch.receive_probe(encode(EchoRequest(bytes(12))), src, 0.1)
    assert not punch.receive_probe(decode(forged), src, 0.1)  # type: ignore[arg-type]
    assert (punch.rejected, punch.ignored, punch.malformed) == (2, 2, 1)
    assert punch.take_events() == []


def test_probes_before_start_and_after_the_end_are_ignored() -> None:
    punch = UdpPunch(KEY, ID_A, ID_B, [])
    src = udp("198.51.100.2", 4000)
    assert not punch.receive_probe(_their_probe(punch, 1), src, 0.0)
    assert punch.datagrams_to_send(0.0) == [] and punch.get_timer() is None
    punch.start(0.0)
    assert punch.get_timer() == 0.0
    assert punch.receive_probe(_their_probe(punch, 1), src, 0.0)  # peer-reflexive: no candidates needed
    assert not punch.receive_probe(_their_probe(punch, 2), src, 8.0)  # the deadline passed first
    assert [type(e) for e in punch.take_events()] == [PunchFailed]
    assert punch.datagrams_to_send(9.0) == [] and punch.get_timer() is None


def test_a_flood_of_authentic_replays_sends_a_bounded_number_of_probes() -> None:
    punch = _machine(max_learned=2, max_datagrams=100)
    probe = _their_probe(punch, 5)
    total = 0
    for i in range(5000):  # 5000 replays from 50 addresses within the 8 s
        punch.receive_probe(probe, udp("203.0.113.5", 1000 + i % 50), i * 0.0016)
        total += len(punch.datagrams_to_send(i * 0.0016))
    assert total <= 100
    assert len({dst for dst in punch._targets}) <= 1 + 2


def test_the_controlling_side_nominates_and_answers_late_probes() -> None:
    punch = _machine(tail=3, tail_interval=0.1)
    real = udp("198.51.100.2", 4000)
    punch.datagrams_to_send(0.0)  # counter 1 to the peer
    assert punch.receive_probe(_their_probe(punch, 3, ack=1), real, 0.05)
    assert punch.take_events() == [Punched(real)] and punch.done
    tail = punch.datagrams_to_send(0.05)
    for t in (0.15, 0.25, 0.35):
        punch.handle_timer(t)
        tail += punch.datagrams_to_send(t)
    probes = [decode(data) for data, _ in tail]
    assert len(probes) == 3 and all(isinstance(p, PunchProbe) and p.nominate and p.ack == 3 for p in probes)
    assert punch.get_timer() is None
    # The controlled side missed every nomination and probes again: it gets another one.
    assert punch.receive_probe(_their_probe(punch, 9, ack=2), real, 2.0)
    [(data, dst)] = punch.datagrams_to_send(2.0)
    again = decode(data)
    assert dst == real and isinstance(again, PunchProbe) and again.nominate and again.ack == 9


def test_the_controlled_side_waits_for_a_nomination() -> None:
    punch = _machine(ID_B, ID_A)
    real = udp("198.51.100.2", 4000)
    punch.datagrams_to_send(0.0)
    assert punch.receive_probe(_their_probe(punch, 3, ack=1), real, 0.05)
    assert punch.take_events() == []  # a proven path, but the controlling side decides
    [(data, _)] = punch.datagrams_to_send(0.05)  # answered at once, so it can nominate
    answer = decode(data)
    assert isinstance(answer, PunchProbe) and answer.ack == 3 and not answer.nominate
    assert punch.receive_probe(_their_probe(punch, 4, ack=2, nominate=True), real, 0.1)
    assert punch.take_events() == [Punched(real)]
    assert punch.datagrams_to_send(0.1) == [] and punch.get_timer() is None
    punch.receive_probe(_their_probe(punch, 5, ack=2, nominate=True), real, 0.2)
    assert punch.datagrams_to_send(0.2) == []  # done: no ping-pong with the tail


def test_the_schedule_backs_off_and_stops_at_the_deadline() -> None:
    punch = _machine()
    times = []
    while (when := punch.get_timer()) is not None and len(times) < 100:
        punch.handle_timer(when)
        if punch.datagrams_to_send(when):
            times.append(round(when, 3))
    assert times[:6] == [0.0, 0.1, 0.25, 0.475, 0.812, 1.319]
    assert all(b - a <= 1.0 + 1e-9 for a, b in zip(times, times[1:])) and times[-1] < 8.0
    assert len(times) == 12  # 0 .. 1.32, then 2.08, 3.08, ..., 7.08
    assert [type(e) for e in punch.take_events()] == [PunchFailed]


# -- construction -----------------------------------------------------------------------------

def test_candidates_are_deduplicated_capped_and_canonical() -> None:
    cands = [udp("::ffff:198.51.100.2", 4000), udp("198.51.100.2", 4000)] + [udp("10.0.0.1", p) for p in range(1, 20)]
    punch = UdpPunch(KEY, ID_A, ID_B, cands, max_candidates=4)
    punch.start(0.0)
    assert [dst for _, dst in punch.datagrams_to_send(0.0)] == [
        udp("198.51.100.2", 4000), udp("10.0.0.1", 1), udp("10.0.0.1", 2), udp("10.0.0.1", 3)]


def test_both_sides_agree_on_route_and_roles() -> None:
    a, b = UdpPunch(KEY, ID_A, ID_B, []), UdpPunch(KEY, ID_B, ID_A, [])
    assert a.route == b.route[::-1] and a.controlling and not b.controlling


@pytest.mark.parametrize("args, kwargs, error, match", [
    ((KEY, ID_A, ID_A, []), {}, ValueError, "ourselves"),
    ((KEY, str(ID_A), ID_B, []), {}, TypeError, "PeerIds"),
    ((KEY, ID_A, ID_B, ["1.2.3.4:5"]), {}, TypeError, "Endpoints"),
    ((KEY, ID_A, ID_B, [Endpoint("1.2.3.4", 5)]), {}, ValueError, "not a UDP"),
    ((KEY, ID_A, ID_B, [udp("1.2.3.4", 0)]), {}, ValueError, "not a UDP"),
    ((KEY, ID_A, ID_B, []), {"timeout": 0}, ValueError, "positive"),
    ((KEY, ID_A, ID_B, []), {"tail": -1}, ValueError, "negative"),
    ((bytes(3), ID_A, ID_B, []), {}, ValueError, "key must be 32 bytes"),
])
def test_bad_arguments_are_refused(args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception],
                                   match: str) -> None:
    with pytest.raises(error, match=match):
        UdpPunch(*args, **kwargs)


def test_misuse_is_refused() -> None:
    punch = _machine()
    with pytest.raises(Exception, match="twice"):
        punch.start(1.0)
    with pytest.raises(TypeError, match="source must be an Endpoint"):
        punch.receive_probe(b"", ("1.2.3.4", 5), 0.0)  # type: ignore[arg-type]


# -- TCP simultaneous-open re-dials -------------------------------------------------------------

def test_retry_schedule() -> None:
    assert retry_schedule(10.0, 20.0) == [10.0, 10.5, 11.5, 13.5, 17.5]
    times = retry_schedule(0.0, 30.0)
    assert times[:5] == [0.0, 0.5, 1.5, 3.5, 7.5] and all(b - a <= 4.0 for a, b in zip(times, times[1:]))
    assert times[-1] < 30.0
    assert retry_schedule(5.0, 5.0) == []
    assert retry_schedule(0.0, 1.0, first_gap=0.2, backoff=1.0) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
    with pytest.raises(ValueError):
        retry_schedule(0.0, 1.0, first_gap=0.0)
