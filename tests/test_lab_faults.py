"""Faults in the namespace lab: a cut link, a router that reboots, a lossy link (issue 17).

One lab for the module (tests/natlab.py): an internet with a seed node and two
public hosts, and two port-restricted home routers with one host behind each.
Each test starts fresh crust peers (tests/nat_peer.py) with a short
``heartbeat_interval`` (``HEARTBEAT``) and ``inactivity_timeout``
(``INACTIVITY``), so a dead path shows within seconds:

* a link cut somewhere on the path (:meth:`NatLab.cut_link`: every frame
  vanishes, carrier stays) is noticed by ``on_lost`` on both sides within
  ``inactivity_timeout``, over TCP and over rUDP;
* a home router that reboots (:meth:`NatLab.router_down` / ``router_up``: its
  WAN silent, then every mapping and tracked connection forgotten) costs the
  peer behind it all its connections; it bootstraps again from its bootstrap
  cache (it has no other contact) and reconnects to its partner with fresh
  connection info;
* with 5 % of the packets lost in each direction of one link
  (:meth:`NatLab.set_loss`; these kernels have no netem), ``MESSAGES``
  sequence-numbered messages of random sizes up to 64 KiB each way arrive
  complete, once each and in order (checked by the receiving peer), over TCP
  and over rUDP.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import pytest

from crust.bootstrap.cache import BootstrapCache
from crust.ids import Contact, Endpoint, PeerId
from tests.natlab import NatLab, natlab_or_skip
from tests.natworld import Peer, connect, exchange

pytestmark = pytest.mark.timeout(60)

HEARTBEAT = 0.5  # seconds of outbound silence before a heartbeat
INACTIVITY = 2.0  # seconds of inbound silence before a peer is lost
MARGIN = 1.0  # seconds on top of INACTIVITY: callback dispatch, the pipe, a loaded 2-core machine
LOSS = 5.0  # percent, each direction
# A lossy link delivers in bursts: the receiver waits out retransmission timeouts (up to ~1.2 s
# here over rUDP, unloaded), and inactivity counts only bytes delivered in order.  The loss tests
# are not about inactivity: keep it well clear of a slow moment on a loaded machine.
LOSSY_INACTIVITY = 20.0
MESSAGES = 2000  # each way
MAX_SIZE = 64 * 1024
ONLY = {"tcp": "--no-udp", "udp": "--no-tcp"}  # run one transport only


@pytest.fixture(scope="module")
def lab() -> Iterator[NatLab]:
    for built in natlab_or_skip("crustfault"):
        for name in ("seed", "p1", "p2"):
            built.public(name)
        for router, host in (("r1", "ha"), ("r2", "hb")):
            built.router(router, "port-restricted")
            built.host_behind(router, host)
        yield built


@pytest.fixture
def peers(lab: NatLab) -> Iterator[list[Peer]]:
    """The peers a test starts (append them); stopped when it ends."""
    started: list[Peer] = []
    try:
        yield started
    finally:
        for peer in started:
            lab.stop(peer.reader.proc)


def start(lab: NatLab, peers: list[Peer], host: str, *args: str) -> Peer:
    peer = Peer(lab, host, "--heartbeat", str(HEARTBEAT), "--inactivity", str(INACTIVITY), *args)
    peers.append(peer)
    return peer


def endpoint(peer: Peer, transport: str) -> str:
    """The listening peer's endpoint on its public address for ``transport``."""
    endpoints = peer.call("listen", "listening")["endpoints"]
    return next(ep for ep in endpoints if ep.startswith("udp://") == (transport == "udp") and "198.51.100." in ep)


def public_pair(lab: NatLab, peers: list[Peer], transport: str, *args: str) -> tuple[Peer, Peer]:
    """A listening peer on p1 and one on p2 bootstrapped off it, over ``transport`` only."""
    x = start(lab, peers, "p1", ONLY[transport], *args)
    y = start(lab, peers, "p2", ONLY[transport], "--contact", endpoint(x, transport), *args)
    assert y.call("bootstrap", "bootstrapped")["peer"] == x.id
    for a, b in ((x, y), (y, x)):
        assert a.expect("new_peer", where=lambda e, b=b: e["peer"] == b.id)["transport"] == transport
    return x, y


def lost_times(watch: list[tuple[Peer, list[str]]], since: float, timeout: float) -> list[float]:
    """Seconds from ``since`` until each peer reported each of its ids lost (peers waited for in parallel)."""
    def one(item: tuple[Peer, list[str]]) -> list[float]:
        peer, gone = item
        times = []
        for lost in gone:  # one thread per peer: Peer.expect is not for two readers at once
            peer.expect("lost", max(0.0, since + timeout - time.monotonic()), lambda e, lost=lost: e["peer"] == lost)
            times.append(time.monotonic() - since)
        return times

    with ThreadPoolExecutor(len(watch)) as pool:
        return [t for times in pool.map(one, watch) for t in times]


# -- a cut link -------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_a_cut_link_is_noticed_on_both_sides_within_the_inactivity_timeout(
        lab: NatLab, peers: list[Peer], transport: str) -> None:
    x, y = public_pair(lab, peers, transport)
    exchange(x, y)
    cut = time.monotonic()  # before the cut: the time the rules take to load counts against crust
    lab.cut_link("p2")
    try:
        times = lost_times([(x, [y.id]), (y, [x.id])], cut, INACTIVITY + MARGIN + 5)
    finally:
        lab.restore_link("p2")
    # Heartbeats every HEARTBEAT s kept traffic flowing until the cut, so neither side can be
    # lost before INACTIVITY - HEARTBEAT of silence: that it is inactivity that noticed.
    print(f"{transport}: lost after {times} s")
    assert all(INACTIVITY - HEARTBEAT - 0.1 <= t <= INACTIVITY + MARGIN for t in times), times


# -- a router reboot ------------------------------------------------------------------------------

def write_cache(path: str, seed: Peer, contact: str) -> None:
    """A bootstrap cache file naming only the seed (as crust itself would have written it)."""
    cache = BootstrapCache()
    cache.record_success(Contact(Endpoint.parse(contact), PeerId.from_str(seed.id)), time.time())
    with open(path, "w") as f:
        f.write(cache.dumps())


def test_after_a_router_reboot_the_peer_behind_it_rebootstraps_from_its_cache_and_reconnects(
        lab: NatLab, peers: list[Peer]) -> None:
    seed = start(lab, peers, "seed")
    contact = endpoint(seed, "tcp")
    paths = [os.path.join(lab.tmpdir, f"cache-{name}.json") for name in ("a", "b")]
    for path in paths:
        write_cache(path, seed, contact)
    # No hard-coded contacts: the cache is all they know.
    a, b = (start(lab, peers, host, "--cache", path) for host, path in (("ha", paths[0]), ("hb", paths[1])))
    for peer in (a, b):
        assert peer.call("bootstrap", "bootstrapped")["peer"] == seed.id
    connect(a, b)
    exchange(a, b)

    down = time.monotonic()
    lab.router_down("r1")  # a's router
    try:
        times = lost_times([(a, [seed.id, b.id]), (b, [a.id]), (seed, [a.id])], down, INACTIVITY + MARGIN + 5)
        assert max(times) <= INACTIVITY + MARGIN, times
    finally:
        lab.router_up("r1")

    assert a.call("bootstrap", "bootstrapped")["peer"] == seed.id  # from the cache: a knows nobody else
    ca, cb = connect(a, b)  # fresh connection info, through r1's new mappings
    assert ca["peer"] == b.id and cb["peer"] == a.id
    assert ca["addr"].split("//")[-1].startswith(lab.routers["r2"].wan_ip + ":"), ca
    exchange(a, b)
    with open(paths[0]) as f:  # what a remembers: still the seed, and only it
        cached = [entry["peer_id"] for entry in json.load(f)["contacts"]]
    assert cached == [seed.id], cached


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_a_port_preserving_router_that_forgets_its_mappings_in_no_time_costs_no_connection(
        lab: NatLab, peers: list[Peer], transport: str) -> None:
    # The other side of a reboot: with no downtime, the peers' next heartbeats make the same
    # mapping again (masquerade keeps the source port when it is free; conntrack picks up a TCP
    # connection mid-stream), so nothing is lost.  (A symmetric NAT picks a new port: that is a
    # rebinding, which loses the connection today.)
    seed = start(lab, peers, "seed", ONLY[transport])
    contact = endpoint(seed, transport)
    a, b = (start(lab, peers, host, ONLY[transport], "--contact", contact) for host in ("ha", "hb"))
    for peer in (a, b):
        assert peer.call("bootstrap", "bootstrapped")["peer"] == seed.id
    ca, _ = connect(a, b)
    assert ca["transport"] == transport
    lab.restart_nat("r1")
    time.sleep(2 * INACTIVITY)  # the experiment: a peer would be lost by now
    exchange(a, b)
    for peer, others in ((a, {seed.id, b.id}), (b, {seed.id, a.id}), (seed, {a.id, b.id})):
        # The answer comes after every event the peer said before it: none of them is a loss.
        assert {p["peer"] for p in peer.call("peers", "peers")["peers"]} == others
        assert not [e for e in peer.events if e["event"] == "lost"], peer.events


# -- a lossy link ------------------------------------------------------------------------------

def seq_both_ways(x: Peer, y: Peer, count: int, timeout: float) -> list[dict[str, Any]]:
    """``count`` checked messages each way at once; the two receivers' reports."""
    for src, dst, seed in ((x, y, 1), (y, x, 2)):
        src.send("send_seq", peer=dst.id, count=count, max_size=MAX_SIZE, seed=seed)

    def complete(item: tuple[Peer, Peer]) -> dict[str, Any]:
        dst, src = item
        return dst.expect("seq_complete", timeout, lambda e: e["peer"] == src.id)

    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(complete, ((y, x), (x, y))))
    for src in (x, y):
        src.expect("sent_seq", 5)
    return reports


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_five_percent_loss_each_way_loses_duplicates_and_reorders_no_message(
        lab: NatLab, peers: list[Peer], transport: str) -> None:
    x, y = public_pair(lab, peers, transport, "--inactivity", str(LOSSY_INACTIVITY))
    lab.set_loss("p2", LOSS)
    try:
        started = time.monotonic()
        reports = seq_both_ways(x, y, MESSAGES, 40)
        seconds = time.monotonic() - started
        seen, dropped = lab.loss_counts("p2")
    finally:
        lab.clear_loss("p2")
    for report in reports:
        assert (report["received"], report["next"], report["duplicates"], report["gaps"], report["corrupt"]) == (
            MESSAGES, MESSAGES, 0, 0, 0), report
    # The loss was real, and per MTU-sized packet: about LOSS % of some 10,000s of packets.
    assert seen > 10_000 and abs(dropped / seen * 100 - LOSS) < 1.5, (seen, dropped)
    print(f"{transport}: {sum(r['bytes'] for r in reports) / 1e6:.1f} MB in {seconds:.1f} s; "
          f"{dropped} of {seen} packets dropped; longest wait {max(r['longest_wait'] for r in reports)} s")
