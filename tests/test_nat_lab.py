"""NAT traversal against the kernel's real NAT: crust peers behind lab routers (tests/natlab.py).

One lab for the module: an internet with a seed and a second observer, and
two routers of each NAT type (full-cone, restricted, port-restricted,
symmetric) plus one without NAT, each with one host behind it.  Every test
starts fresh crust peers (tests/nat_peer.py) in those hosts: they bootstrap
off the seed as Clients (nothing can reach them from outside), learn their
external addresses from the observers, swap connection info through the
test and call ``connect()`` at the same time.  The peers do not listen, so
every connection that comes up was punched.

The port-restricted routers forget an idle mapping after ``IDLE`` seconds;
the peers send heartbeats every ``HEARTBEAT`` seconds, which keeps them.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import pytest

from crust.engine.rendezvous import TCP_GRACE
from tests.natlab import natlab_or_skip
from tests.natworld import IDLE, STEP, Peer, World, attempt, connect, exchange, wait_nat

pytestmark = pytest.mark.timeout(120)

CONE = ("fc", "rc", "pr")


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    for lab in natlab_or_skip("crustnatx"):
        yield World(lab)


@pytest.fixture
def net(world: World) -> Iterator[World]:
    try:
        yield world
    finally:
        world.stop_clients()


def pair(net: World, ra: str, rb: str, *args: str) -> tuple[Peer, Peer, dict[str, Any], dict[str, Any]]:
    a, b = net.client(ra, *args), net.client(rb, *args)
    ca, cb = connect(a, b)
    assert ca["peer"] == b.id and cb["peer"] == a.id
    # Through the NAT: each side reached the other's router, not its private address.
    assert ca["addr"].split("//")[-1].startswith(net.lab.routers[rb].wan_ip + ":"), ca
    assert cb["addr"].split("//")[-1].startswith(net.lab.routers[ra].wan_ip + ":"), cb
    return a, b, ca, cb


# -- external addresses ---------------------------------------------------------------

@pytest.mark.parametrize("router", ["fc1", "rc1", "pr1", "sy1", "no1"])
def test_each_router_type_is_classified(net: World, router: str) -> None:
    peer = net.client(router, observers=2)
    expected = {"no": "none", "sy": "dependent"}.get(router[:2], "endpoint-independent")
    nat = wait_nat(peer, lambda n: all(n[k]["observers"] == 2 for k in ("tcp", "udp")))
    for kind in ("tcp", "udp"):
        assert nat[kind]["mapping"] == expected, nat
        assert nat[kind]["external"] is not None
        wan = net.lab.routers[router].wan_ip if router != "no1" else net.lab.hosts[f"h{router}"].ip
        assert nat[kind]["external"].split("//")[-1].startswith(wan + ":"), nat
    assert nat["tcp"]["confirmed"] is (expected != "dependent")


# -- connect() through NATs --------------------------------------------------------------

CONE_PAIRS = [(x, y) for i, x in enumerate(CONE) for y in CONE[i:]]


@pytest.mark.parametrize(("ta", "tb"), CONE_PAIRS, ids=[f"{x}-{y}" for x, y in CONE_PAIRS])
def test_cone_pairs_connect_over_tcp_by_simultaneous_open(net: World, ta: str, tb: str) -> None:
    a, b, ca, cb = pair(net, f"{ta}1", f"{tb}2", "--no-udp")
    assert ca["transport"] == cb["transport"] == "tcp"
    exchange(a, b)


UDP_PAIRS = CONE_PAIRS + [("fc", "sy"), ("rc", "sy")]


@pytest.mark.parametrize(("ta", "tb"), UDP_PAIRS, ids=[f"{x}-{y}" for x, y in UDP_PAIRS])
def test_pairs_connect_over_rudp_by_udp_punching(net: World, ta: str, tb: str) -> None:
    a, b, ca, cb = pair(net, f"{ta}1", f"{tb}2", "--no-tcp")
    assert ca["transport"] == cb["transport"] == "udp"
    exchange(a, b)


@pytest.mark.parametrize(("ta", "tb", "transport"), [("pr", "pr", "tcp"), ("fc", "sy", "udp")])
def test_with_both_transports_whichever_punches_wins_tcp_first(net: World, ta: str, tb: str, transport: str) -> None:
    a, b, ca, cb = pair(net, f"{ta}1", f"{tb}2")
    assert ca["transport"] == cb["transport"] == transport
    if transport == "udp":  # SYNs a symmetric NAT drops are not worth the TCP grace (bench/nat.py: ~0.05 s)
        assert min(ca["seconds"], cb["seconds"]) < TCP_GRACE, (ca, cb)
    exchange(a, b)


def test_probes_that_come_before_our_connect_are_answered_when_it_starts(net: World) -> None:
    # The symmetric side calls connect() first: its probes reach the full-cone side before that
    # side punches, from a mapping its NAT made for this peer alone.  Kept and answered when the
    # punch starts, they make the connect wait for nothing, not for the next round (~0.9 s away).
    a, b = net.client("sy1", "--no-tcp"), net.client("fc2", "--no-tcp")
    result = attempt(a, b, timeout=10, skew=2.2)
    assert result.connected and result.b is not None, result
    assert result.b["seconds"] < 0.5, result
    exchange(a, b)


def test_a_peer_whose_connect_comes_much_later_still_meets_the_udp_punch(net: World) -> None:
    # The UDP punch of the first side lasts as long as its connect(), not a fixed 8 s.
    a, b = net.client("pr1", "--no-tcp"), net.client("pr2", "--no-tcp")
    result = attempt(a, b, timeout=12, skew=8.5)
    assert result.connected, result
    exchange(a, b)


def test_symmetric_to_symmetric_fails_naming_every_candidate(net: World) -> None:
    a, b = net.client("sy1"), net.client("sy2")
    info_a, info_b = a.call("info", "info")["info"], b.call("info", "info")["info"]
    a.send("connect", info=info_b, timeout=10)
    b.send("connect", info=info_a, timeout=10)
    started = time.monotonic()
    failure = a.reader.wait_for("connected", 20)
    assert failure is not None and failure["event"] == "error" and failure["type"] == "ConnectError", failure
    assert time.monotonic() - started < 15
    reasons = failure["reasons"]
    assert any(key.startswith("tcp-punch ") for key in reasons), reasons
    assert reasons.get("udp-punch", "").startswith("no answer") or "never" in reasons.get("udp-punch", ""), reasons


# -- living through the NAT ---------------------------------------------------------------

def test_an_idle_punched_pair_outlives_twice_the_nat_timeout(net: World) -> None:
    a, b, ca, _ = pair(net, "pr1", "pr2")
    time.sleep(2 * IDLE + 1)  # no application traffic: only crust's heartbeats cross the NATs
    exchange(a, b)
    assert not [e for p in (a, b) for e in p.events if e["event"] == "lost"]


def test_two_megabytes_cross_a_punched_rudp_path_with_ten_percent_loss(net: World) -> None:
    a, b, _, _ = pair(net, "pr1", "fc2", "--no-tcp")
    net.lab.drop_randomly("fc2", 1000)  # 10 % of what reaches b's router from the internet
    try:
        sent = a.call("send", "sent", peer=b.id, size=2_000_000)
        got = b.expect("message", 60, lambda e: e["peer"] == a.id)
        assert (got["bytes"], got["sha256"]) == (sent["bytes"], sent["sha256"])
    finally:
        net.lab.stop_dropping("fc2")
