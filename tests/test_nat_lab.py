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

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import pytest

from tests.natlab import NatLab, natlab_or_skip
from tests.netlab import LineReader

pytestmark = pytest.mark.timeout(120)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.path.join(REPO, "tests", "nat_peer.py")
START = 10.0  # seconds a peer gets to start (interpreter, import crust, Service)
STEP = 20.0  # seconds a bootstrap, an info or a connect may take in the lab
IDLE = 4  # seconds an idle mapping lives on the port-restricted routers
HEARTBEAT = 1.5  # seconds between the peers' heartbeats: under IDLE
TYPES = {"fc": "full-cone", "rc": "restricted", "pr": "port-restricted", "sy": "symmetric", "no": "none"}
CONE = ("fc", "rc", "pr")
DEBUG = ["--debug"] if os.environ.get("CRUST_LAB_DEBUG") else []  # crust debug logs in failure messages


class Peer:
    """A crust peer in a lab host, driven by JSON lines."""

    def __init__(self, lab: NatLab, host: str, *args: str) -> None:
        argv = [sys.executable, PEER, "--heartbeat", str(HEARTBEAT), "--lifetime", "100", *DEBUG, *args]
        self.lab = lab
        self.reader = LineReader(lab.run(host, argv, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}), name=host)
        self.events: list[dict[str, Any]] = []
        self.id = self.expect("ready", START)["peer"]

    def send(self, cmd: str, **fields: Any) -> None:
        stdin = self.reader.proc.stdin
        assert stdin is not None
        stdin.write((json.dumps({"cmd": cmd, **fields}) + "\n").encode())
        stdin.flush()

    def expect(self, event: str, timeout: float = STEP, where: Callable[[dict[str, Any]], bool] = lambda e: True,
               ) -> dict[str, Any]:
        """The first ``event`` (matching ``where``) seen or yet to come within ``timeout``; an error line fails."""
        deadline = time.monotonic() + timeout
        for _ in range(10_000):
            for i, seen in enumerate(self.events):
                if seen["event"] == event and where(seen):
                    return self.events.pop(i)
                if seen["event"] == "error":
                    pytest.fail(f"{self.reader.name} failed: {seen}\n{self.log()}", pytrace=False)
            message = self.reader.next_json(max(0.0, deadline - time.monotonic()))
            if message is None:
                pytest.fail(f"no {event!r} from {self.reader.name} within {timeout} s\n{self.log()}", pytrace=False)
            self.events.append(message)
        raise AssertionError("unreachable")

    def call(self, cmd: str, event: str, timeout: float = STEP, **fields: Any) -> dict[str, Any]:
        self.send(cmd, **fields)
        return self.expect(event, timeout)

    def log(self) -> str:
        return f"events: {self.events}\nlines: {self.reader.lines[-20:]}\nstderr:\n{self.lab.log_of(self.reader.proc)}"


class World:
    """The module's lab, its seed and observer, and the peers each test starts (stopped after it)."""

    def __init__(self, lab: NatLab) -> None:
        self.lab = lab
        seed_host, obs_host = lab.public("seed"), lab.public("obs")
        self.seed_ip, self.obs_ip = seed_host.ip, obs_host.ip
        for short, kind in TYPES.items():
            for n in ((1, 2) if short != "no" else (1,)):
                lab.router(f"{short}{n}", kind, idle_timeout=IDLE if short == "pr" else None,
                           tcp_idle_timeout=IDLE if short == "pr" else None)
                lab.host_behind(f"{short}{n}", f"h{short}{n}")
        self.peers: list[Peer] = []
        self.seed = self.start("seed")
        seed_eps = self.seed.call("listen", "listening")["endpoints"]
        self.contact = next(ep for ep in seed_eps if ep.startswith(self.seed_ip + ":"))
        self.udp_contact = next(ep for ep in seed_eps if ep.startswith(f"udp://{self.seed_ip}:"))
        observer = self.start("obs", "--contact", self.contact)
        observer.call("listen", "listening")
        observer.call("bootstrap", "bootstrapped", user="node")
        self.fixed = list(self.peers)

    def start(self, host: str, *args: str) -> Peer:
        peer = Peer(self.lab, host, *args)
        self.peers.append(peer)
        return peer

    def client(self, router: str, *args: str, observers: int = 1) -> Peer:
        """A peer behind ``router``, bootstrapped off the seed (and the observer too with ``observers=2``)."""
        contact = self.udp_contact if "--no-tcp" in args else self.contact
        peer = self.start(f"h{router}", "--contact", contact, *args)
        peer.call("bootstrap", "bootstrapped")
        if observers == 2:  # a second bootstrap, blacklisting the first, reaches the other public node
            peer.call("bootstrap", "bootstrapped", blacklist=[self.seed_ip])
        return peer

    def stop_clients(self) -> None:
        for peer in self.peers[len(self.fixed):]:
            self.lab.stop(peer.reader.proc)
        del self.peers[len(self.fixed):]


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


def wait_nat(peer: Peer, ready: Callable[[dict[str, Any]], bool], timeout: float = STEP) -> dict[str, Any]:
    """Ask for nat_info until ``ready`` holds (bounded by count and time)."""
    deadline = time.monotonic() + timeout
    for _ in range(200):
        nat = peer.call("nat", "nat")
        if ready(nat) or time.monotonic() > deadline:
            return nat
        time.sleep(0.1)
    return nat


def connect(a: Peer, b: Peer, timeout: float = 15.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Swap connection info between ``a`` and ``b`` and connect both at once; returns both outcomes."""
    info_a, info_b = a.call("info", "info")["info"], b.call("info", "info")["info"]
    a.send("connect", info=info_b, timeout=timeout)
    b.send("connect", info=info_a, timeout=timeout)
    with ThreadPoolExecutor(2) as pool:
        outcomes = [pool.submit(p.expect, "connected", timeout + 5) for p in (a, b)]
        return outcomes[0].result(), outcomes[1].result()


def pair(net: World, ra: str, rb: str, *args: str) -> tuple[Peer, Peer, dict[str, Any], dict[str, Any]]:
    a, b = net.client(ra, *args), net.client(rb, *args)
    ca, cb = connect(a, b)
    assert ca["peer"] == b.id and cb["peer"] == a.id
    # Through the NAT: each side reached the other's router, not its private address.
    assert ca["addr"].split("//")[-1].startswith(net.lab.routers[rb].wan_ip + ":"), ca
    assert cb["addr"].split("//")[-1].startswith(net.lab.routers[ra].wan_ip + ":"), cb
    return a, b, ca, cb


def exchange(a: Peer, b: Peer, size: int = 1000) -> None:
    """A message each way must arrive intact."""
    for src, dst in ((a, b), (b, a)):
        sent = src.call("send", "sent", peer=dst.id, size=size)
        got = dst.expect("message", STEP, lambda e, src=src: e["peer"] == src.id)
        assert (got["bytes"], got["sha256"]) == (sent["bytes"], sent["sha256"])


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
