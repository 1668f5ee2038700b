"""Crust peers in a NAT lab, driven from the test process: the harness of the NAT lab tests and bench/nat.py.

:class:`Peer` runs tests/nat_peer.py in a lab host and speaks its JSON lines;
:class:`World` builds the standard lab (an internet with a seed and a second
observer; routers of each NAT type with a host behind each) and starts
peers in it; :func:`connect` swaps two peers' connection info and has both
call ``connect()`` at once.
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
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
TYPES = {"fc": "full-cone", "rc": "restricted", "pr": "port-restricted", "sy": "symmetric", "no": "none"}
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
        obs_eps = observer.call("listen", "listening")["endpoints"]
        self.obs_contact = next(ep for ep in obs_eps if ep.startswith(self.obs_ip + ":"))
        observer.call("bootstrap", "bootstrapped", user="node")
        self.fixed = list(self.peers)

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

    def stop_clients(self) -> None:
        for peer in self.peers[len(self.fixed):]:
            self.lab.stop(peer.reader.proc)
        del self.peers[len(self.fixed):]


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


def exchange(a: Peer, b: Peer, size: int = 1000) -> None:
    """A message each way must arrive intact."""
    for src, dst in ((a, b), (b, a)):
        sent = src.call("send", "sent", peer=dst.id, size=size)
        got = dst.expect("message", STEP, lambda e, src=src: e["peer"] == src.id)
        assert (got["bytes"], got["sha256"]) == (sent["bytes"], sent["sha256"])
