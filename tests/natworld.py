"""Crust peers in a NAT lab, driven from the test process: the harness of the NAT lab tests and bench/nat.py.

:class:`Peer` runs tests/nat_peer.py in a lab host and speaks its JSON lines;
:class:`World` builds the standard lab (an internet with a seed and a second
observer; routers of each NAT type with a host behind each) and starts
peers in it; :func:`connect` swaps two peers' connection info and has both
call ``connect()`` at once (:func:`attempt` does the same and returns what
came of it, failure or not, and how long it took).
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import pytest

from tests.natlab import NatLab
from tests.netlab import LineReader

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.path.join(REPO, "tests", "nat_peer.py")
START = 10.0  # seconds a peer gets to start (interpreter, import crust, Service)
STEP = 20.0  # seconds a bootstrap, an info or a connect may take in the lab
IDLE = 4  # seconds an idle mapping lives on the port-restricted routers
HEARTBEAT = 1.5  # seconds between the peers' heartbeats: under IDLE
LIFETIME = 100.0  # seconds a peer process lives unless its arguments say otherwise (a later --lifetime wins)
TYPES = {"fc": "full-cone", "rc": "restricted", "pr": "port-restricted", "sy": "symmetric", "no": "none"}
DEBUG = ["--debug"] if os.environ.get("CRUST_LAB_DEBUG") else []  # crust debug logs in failure messages


class Peer:
    """A crust peer in a lab host, driven by JSON lines."""

    def __init__(self, lab: NatLab, host: str, *args: str) -> None:
        argv = [sys.executable, PEER, "--heartbeat", str(HEARTBEAT), "--lifetime", str(LIFETIME), *DEBUG, *args]
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

    def outcome(self, event: str, timeout: float = STEP) -> dict[str, Any] | None:
        """The first ``event`` or ``error`` line seen or yet to come within ``timeout`` (``None``: neither); never fails."""
        deadline = time.monotonic() + timeout
        for _ in range(10_000):
            for i, seen in enumerate(self.events):
                if seen["event"] in (event, "error"):
                    return self.events.pop(i)
            message = self.reader.next_json(max(0.0, deadline - time.monotonic()))
            if message is None:
                return None
            self.events.append(message)
        return None

    def call(self, cmd: str, event: str, timeout: float = STEP, **fields: Any) -> dict[str, Any]:
        self.send(cmd, **fields)
        return self.expect(event, timeout)

    def log(self) -> str:
        return f"events: {self.events}\nlines: {self.reader.lines[-20:]}\nstderr:\n{self.lab.log_of(self.reader.proc)}"


class World:
    """The module's lab, its seed and observer (living ``lifetime`` seconds), and the peers each test starts.

    ``seed_args`` are extra nat_peer.py arguments for the seed (``("--relay",)``: it relays).
    """

    def __init__(self, lab: NatLab, lifetime: float = LIFETIME, seed_args: tuple[str, ...] = ()) -> None:
        self.lab = lab
        seed_host, obs_host = lab.public("seed"), lab.public("obs")
        self.seed_ip, self.obs_ip = seed_host.ip, obs_host.ip
        for short in TYPES:
            for n in ((1, 2) if short != "no" else (1,)):
                self.add_router(short, n)
        self.peers: list[Peer] = []
        self.seed = self.start("seed", "--lifetime", str(lifetime), *seed_args)
        seed_eps = self.seed.call("listen", "listening")["endpoints"]
        self.contact = next(ep for ep in seed_eps if ep.startswith(self.seed_ip + ":"))
        self.udp_contact = next(ep for ep in seed_eps if ep.startswith(f"udp://{self.seed_ip}:"))
        observer = self.start("obs", "--contact", self.contact, "--lifetime", str(lifetime))
        obs_eps = observer.call("listen", "listening")["endpoints"]
        self.obs_contact = next(ep for ep in obs_eps if ep.startswith(self.obs_ip + ":"))
        observer.call("bootstrap", "bootstrapped", user="node")
        self.fixed = list(self.peers)

    def add_router(self, short: str, n: int) -> str:
        """Router ``f"{short}{n}"`` of type ``TYPES[short]`` with host ``f"h{short}{n}"``, set up like the standard ones.

        Returns:
            The router's name (what :meth:`client` takes).
        """
        name = f"{short}{n}"
        idle = IDLE if short == "pr" else None
        self.lab.router(name, TYPES[short], idle_timeout=idle, tcp_idle_timeout=idle)
        self.lab.host_behind(name, f"h{name}")
        return name

    def start(self, host: str, *args: str) -> Peer:
        peer = Peer(self.lab, host, *args)
        self.peers.append(peer)
        return peer

    def client(self, router: str, *args: str, observers: int = 1) -> Peer:
        """A peer behind ``router``, bootstrapped off the seed (and the observer too with ``observers=2``)."""
        contact = self.udp_contact if "--no-tcp" in args else self.contact
        second = ("--contact", self.obs_contact) if observers == 2 else ()
        peer = self.start(f"h{router}", "--contact", contact, *second, *args)
        first = peer.call("bootstrap", "bootstrapped")["peer"]
        if observers == 2:  # a second bootstrap, blacklisting the first one's IP, reaches the other public node
            peer.call("bootstrap", "bootstrapped", blacklist=[self.seed_ip if first == self.seed.id else self.obs_ip])
        return peer

    def stop(self, *peers: Peer) -> None:
        """End these peers' processes now (they leave :attr:`peers`; their output pipes are closed)."""
        for peer in peers:
            self.lab.stop(peer.reader.proc)
            if peer.reader.proc.stdout is not None:
                peer.reader.proc.stdout.close()  # a long run starts hundreds of peers: do not keep their fds
            if peer in self.peers:
                self.peers.remove(peer)

    def stop_clients(self) -> None:
        self.stop(*self.peers[len(self.fixed):])


def wait_nat(peer: Peer, ready: Callable[[dict[str, Any]], bool], timeout: float = STEP) -> dict[str, Any]:
    """Ask for nat_info until ``ready`` holds (bounded by count and time)."""
    deadline = time.monotonic() + timeout
    for _ in range(200):
        nat = peer.call("nat", "nat")
        if ready(nat) or time.monotonic() > deadline:
            return nat
        time.sleep(0.1)
    return nat


def _issue(a: Peer, b: Peer, timeout: float, skew: float = 0.0) -> tuple[str, str]:
    """Swap ``a`` and ``b``'s connection info and have both call ``connect()`` (``b`` ``skew`` s later)."""
    info_a, info_b = a.call("info", "info")["info"], b.call("info", "info")["info"]
    a.send("connect", info=info_b, timeout=timeout)
    if skew > 0:
        time.sleep(skew)  # the experiment itself: the two sides' connect() calls this far apart
    b.send("connect", info=info_a, timeout=timeout)
    return info_a, info_b


def connect(a: Peer, b: Peer, timeout: float = 15.0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Swap connection info between ``a`` and ``b`` and connect both at once; returns both outcomes."""
    _issue(a, b, timeout)
    with ThreadPoolExecutor(2) as pool:
        outcomes = [pool.submit(p.expect, "connected", timeout + 5) for p in (a, b)]
        return outcomes[0].result(), outcomes[1].result()


@dataclass(frozen=True)
class Attempt:
    """One ``connect()`` between two peers, whatever came of it (:func:`attempt`)."""

    info_a: dict[str, Any]  # the connection info each side handed out (PubConnectionInfo JSON, parsed)
    info_b: dict[str, Any]
    a: dict[str, Any] | None  # each side's "connected" or "error" line; None if it said nothing in time
    b: dict[str, Any] | None
    seconds: float  # from both connect() calls issued (the later one) to both answers read

    @property
    def connected(self) -> bool:
        """Both sides connected, each to the other."""
        return (self.a is not None and self.b is not None and self.a["event"] == self.b["event"] == "connected"
                and self.a["peer"] == self.info_b["peer_id"] and self.b["peer"] == self.info_a["peer_id"])


def attempt(a: Peer, b: Peer, timeout: float = 15.0, skew: float = 0.0) -> Attempt:
    """Like :func:`connect`, but a failure is a result, and the time is measured from outside.

    ``b`` calls ``connect()`` ``skew`` seconds after ``a``; the time runs from the second call.
    """
    info_a, info_b = _issue(a, b, timeout, skew)
    issued = time.monotonic()

    def answer(peer: Peer) -> tuple[dict[str, Any] | None, float]:
        return peer.outcome("connected", timeout + 5), time.monotonic()

    with ThreadPoolExecutor(2) as pool:
        (out_a, at_a), (out_b, at_b) = pool.map(answer, (a, b))
    return Attempt(json.loads(info_a), json.loads(info_b), out_a, out_b, max(at_a, at_b) - issued)


def exchange(a: Peer, b: Peer, size: int = 1000) -> None:
    """A message each way must arrive intact."""
    for src, dst in ((a, b), (b, a)):
        sent = src.call("send", "sent", peer=dst.id, size=size)
        got = dst.expect("message", STEP, lambda e, src=src: e["peer"] == src.id)
        assert (got["bytes"], got["sha256"]) == (sent["bytes"], sent["sha256"])
