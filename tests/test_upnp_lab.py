"""UPnP port mapping against a real IGD: crust Services behind a miniupnpd router (tests/natlab.py).

One lab for the module: an internet with a seed and a public peer, a
symmetric router running miniupnpd (``up``) with two hosts behind it, and a
symmetric router without one (``pl``) with one host.  Every test starts
fresh crust peers (tests/nat_peer.py, ``--upnp`` turns ``enable_upnp`` on)
and ends them with a clean close.  A symmetric NAT is the case UPnP is for:
nothing from outside reaches a host behind it except through a mapping.

What miniupnpd holds is read from the router itself: its nftables DNAT chain
(:meth:`NatLab.upnp_mappings`) and its lease file (:func:`leases`); that a
connection came in through a mapping is read from the router's conntrack.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Iterator, TypeVar

import pytest

from tests.natlab import NatLab, natlab_or_skip
from tests.natworld import STEP, Peer, connect, exchange, wait_nat

pytestmark = pytest.mark.timeout(120)

UPNP, PLAIN = "up", "pl"  # the routers: with miniupnpd, without
SHORT_LEASE = 4  # seconds, for the renewal test: renewed every 2 s
NO_IGD_BOUND = 7.0  # seconds from listening to "no IGD found" (4 s nominal: miniupnpc searches 4 types x 1 s)
MAPPED_BOUND = 10.0  # seconds from listening to both ports mapped (about 1.2 s here)
STOP_BOUND = 10.0  # seconds a peer gets to close its Service (deleting its mappings) and exit
LOOKING = ["upnp: looking for an IGD"]

T = TypeVar("T")


class Net:
    """The module's lab, its seed, and the peers the running test started (closed after it)."""

    def __init__(self, lab: NatLab) -> None:
        self.lab = lab
        self.seed_ip = lab.public("seed").ip
        lab.public("pub")
        lab.router(UPNP, "symmetric", upnp=True)
        lab.host_behind(UPNP, "hup")
        lab.host_behind(UPNP, "hup2")
        lab.router(PLAIN, "symmetric")
        lab.host_behind(PLAIN, "hpl")
        self.wan = lab.routers[UPNP].wan_ip
        self.peers: list[Peer] = []
        self.seed = Peer(lab, "seed")
        eps = self.seed.call("listen", "listening")["endpoints"]
        self.contact = next(ep for ep in eps if ep.startswith(self.seed_ip + ":"))

    def start(self, host: str, *args: str) -> Peer:
        peer = Peer(self.lab, host, *args)
        self.peers.append(peer)
        return peer

    def stop_peers(self) -> None:
        # Closing stdin lets the peer close its Service, which deletes its mappings: a
        # test that failed half-way leaves none behind for the next one.
        for peer in self.peers:
            self.lab.stop(peer.reader.proc, grace=STOP_BOUND)
        self.peers.clear()


@pytest.fixture(scope="module")
def world() -> Iterator[Net]:
    for lab in natlab_or_skip("crustupnp", upnp=True):
        yield Net(lab)


@pytest.fixture
def net(world: Net) -> Iterator[Net]:
    try:
        yield world
    finally:
        world.stop_peers()


# -- reading the router ------------------------------------------------------------------------

def leases(lab: NatLab, router: str) -> list[dict[str, Any]]:
    """miniupnpd's lease file on ``router`` (natlab writes it as ``upnp-<router>.leases`` in the lab's dir).

    Each line is ``PROTO:EXT_PORT:INT_IP:INT_PORT:EXPIRY:DESCRIPTION`` (EXPIRY in seconds).
    """
    try:
        with open(os.path.join(lab.tmpdir, f"upnp-{router}.leases")) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:  # miniupnpd writes it with the first mapping
        return []
    out = []
    for line in lines:
        proto, ext, ip, port, expiry, desc = line.split(":", 5)
        out.append({"proto": proto.lower(), "ext_port": int(ext), "int_ip": ip, "int_port": int(port),
                    "expiry": int(expiry), "desc": desc})
    return out


def wait_until(what: str, probe: Callable[[], T], ready: Callable[[T], bool], timeout: float) -> T:
    """Poll ``probe()`` until ``ready`` holds (bounded by count and time); fails naming ``what``."""
    deadline = time.monotonic() + timeout
    for _ in range(1000):
        got = probe()
        if ready(got):
            return got
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)  # polling the router's tables: nothing announces a change
    pytest.fail(f"{what}: not within {timeout} s; last: {got}", pytrace=False)


def ports(endpoints: list[str], host: str) -> tuple[int, int]:
    """Our TCP and UDP listener ports on ``host``, from a ``listening`` event's endpoints."""
    tcp = next(int(ep.rsplit(":", 1)[1]) for ep in endpoints if ep.startswith(host + ":"))
    udp = next(int(ep.rsplit(":", 1)[1]) for ep in endpoints if ep.startswith(f"udp://{host}:"))
    return tcp, udp


def mapping(proto: str, ext_port: int, int_ip: str, int_port: int) -> dict[str, Any]:
    return {"proto": proto, "ext_port": ext_port, "int_ip": int_ip, "int_port": int_port}


def by_port(mappings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(mappings, key=lambda m: (m["proto"], m["ext_port"]))


def mapped_notes(peer: Peer) -> list[str]:
    """The peer's nat_info() notes once every port is mapped or refused."""
    nat = wait_nat(peer, lambda n: n["notes"] != LOOKING and all(" mapped " in line or " not mapped: " in line
                                                                 for line in n["notes"]), MAPPED_BOUND)
    return list(nat["notes"])


# -- the tests ------------------------------------------------------------------------------------

def test_a_node_behind_a_upnp_router_passes_the_reachability_check_and_is_reached_through_the_mapping(
        net: Net) -> None:
    lab, wan = net.lab, net.wan
    host = lab.hosts["hup"].ip
    node = net.start("hup", "--upnp", "--contact", net.contact)
    tcp, udp = ports(node.call("listen", "listening")["endpoints"], host)
    # At once, as a Node: the request waits for the mapping, which the seed must dial back.
    booted = node.call("bootstrap", "bootstrapped", user="node")
    assert booted["peer"] == net.seed.id, booted
    assert by_port(lab.upnp_mappings(UPNP)) == [mapping("tcp", tcp, host, tcp), mapping("udp", udp, host, udp)], \
        lab.upnp_log(UPNP)
    # The dial-back came from the seed to the router's WAN port and was forwarded to our listener.
    inbound = [line for line in lab.conntrack(UPNP) if " tcp " in line and
               f"src={net.seed_ip} dst={wan} " in line and f" dport={tcp} src={host} dst={net.seed_ip} sport={tcp} "
               in line]
    assert inbound, lab.conntrack(UPNP)

    notes = node.call("nat", "nat")["notes"]
    assert [line.split(", lease")[0] for line in notes] == [
        f"upnp: mapped tcp {host}:{tcp} -> {wan}:{tcp}", f"upnp: mapped udp {host}:{udp} -> {wan}:{udp}"], notes
    assert all("lease 3600 s (renewed every 1800 s)" in line for line in notes), notes
    # start_listening()'s later calls and our connection info announce the mapping.
    again = node.call("listen", "listening")["endpoints"]
    assert f"{wan}:{tcp}" in again and f"udp://{wan}:{udp}" in again, again
    info = json.loads(node.call("info", "info")["info"])
    assert f"{wan}:{tcp}" in info["listeners"] and f"udp://{wan}:{udp}" in info["listeners"], info

    # A public peer reaches the node through the mapping: it bootstraps off it.
    pub = net.start("pub", "--contact", f"{wan}:{tcp}")
    assert pub.call("bootstrap", "bootstrapped")["peer"] == node.id
    came = node.expect("new_peer", STEP, lambda e: e["peer"] == pub.id)
    assert came["origin"] == "bootstrap_accept", came
    exchange(node, pub)

    closed = node.call("close", "closed")
    assert lab.upnp_mappings(UPNP) == [] and leases(lab, UPNP) == [], (closed, lab.upnp_log(UPNP))
    pub.expect("lost", STEP, lambda e: e["peer"] == node.id)


def test_without_an_igd_no_igd_found_is_one_quiet_line_and_everything_else_works(net: Net) -> None:
    peer = net.start("hpl", "--upnp", "--log-info", "--contact", net.contact)
    started = time.monotonic()
    peer.call("listen", "listening")
    # A Client's bootstrap has no reachability check to wait for: it does not wait for UPnP.
    booted = peer.call("bootstrap", "bootstrapped")
    assert booted["peer"] == net.seed.id
    nat = wait_nat(peer, lambda n: n["notes"] != LOOKING, NO_IGD_BOUND + 5)
    took = time.monotonic() - started
    assert nat["notes"] == ["upnp: no IGD found"], nat
    assert took < NO_IGD_BOUND, f"'no IGD found' took {took:.1f} s"

    pub = net.start("pub", "--contact", net.contact)
    pub.call("listen", "listening")
    pub.call("bootstrap", "bootstrapped")
    ours, theirs = connect(peer, pub)
    assert ours["peer"] == pub.id and theirs["peer"] == peer.id
    exchange(peer, pub)
    peer.call("close", "closed")

    lines = net.lab.log_of(peer.reader.proc).splitlines()
    assert [line for line in lines if "upnp" in line] == ["INFO crust: upnp: no IGD found"], lines
    assert not [line for line in lines if line.startswith(("WARNING", "ERROR", "CRITICAL", "Traceback"))], lines


def test_a_short_lease_is_renewed_at_half_life_and_outlives_itself(net: Net) -> None:
    lab = net.lab
    node = net.start("hup", "--upnp", "--upnp-lease", str(SHORT_LEASE))
    node.call("listen", "listening")
    first = wait_until("both ports leased", lambda: leases(lab, UPNP), lambda got: len(got) == 2, MAPPED_BOUND)
    since = time.monotonic()
    expiries: dict[tuple[str, int], set[int]] = {(m["proto"], m["ext_port"]): {m["expiry"]} for m in first}

    def seen() -> dict[tuple[str, int], set[int]]:
        for m in leases(lab, UPNP):
            expiries.setdefault((m["proto"], m["ext_port"]), set()).add(m["expiry"])
        return expiries

    # Three renewals of each mapping, every one pushing its expiry on: 1.5 leases in all.
    wait_until("three renewals of each lease", seen,
               lambda got: len(got) == 2 and all(len(times) >= 4 for times in got.values()), 4 * SHORT_LEASE)
    assert time.monotonic() - since > SHORT_LEASE  # longer than one lease: the renewals kept it
    assert len(lab.upnp_mappings(UPNP)) == 2, lab.upnp_log(UPNP)
    assert sorted(expiries) == sorted((m["proto"], m["ext_port"]) for m in first)  # the same ports throughout
    notes = node.call("nat", "nat")["notes"]
    assert len(notes) == 2 and all(f"lease {SHORT_LEASE} s (renewed every {SHORT_LEASE / 2:g} s)" in n
                                   for n in notes), notes
    node.call("close", "closed")
    assert lab.upnp_mappings(UPNP) == [] and leases(lab, UPNP) == []


def test_a_port_another_host_holds_is_mapped_elsewhere_and_stop_listening_deletes_only_ours(net: Net) -> None:
    lab, wan = net.lab, net.wan
    fixed = ("--upnp", "--tcp-port", "45000", "--udp-port", "45001")
    a, b = net.start("hup", *fixed), net.start("hup2", *fixed)
    ip_a, ip_b = lab.hosts["hup"].ip, lab.hosts["hup2"].ip
    a.call("listen", "listening")
    mapped_notes(a)
    held_by_a = [mapping("tcp", 45000, ip_a, 45000), mapping("udp", 45001, ip_a, 45001)]
    assert by_port(lab.upnp_mappings(UPNP)) == held_by_a

    b.call("listen", "listening")  # the same ports, on the next host: miniupnpd says 718 ConflictInMappingEntry
    notes = mapped_notes(b)
    held = by_port(lab.upnp_mappings(UPNP))
    held_by_b = [m for m in held if m["int_ip"] == ip_b]
    assert [m for m in held if m["int_ip"] == ip_a] == held_by_a, held
    assert sorted((m["proto"], m["int_port"]) for m in held_by_b) == [("tcp", 45000), ("udp", 45001)], held
    assert all(m["ext_port"] not in (45000, 45001) for m in held_by_b), held
    assert sorted(notes) == sorted(f"upnp: mapped {m['proto']} {ip_b}:{m['int_port']} -> {wan}:{m['ext_port']}, "
                                   f"lease 3600 s (renewed every 1800 s)" for m in held_by_b), notes

    b.call("stop_listening", "stopped")  # the deletions run on b's worker thread
    wait_until("b's mappings deleted", lambda: by_port(lab.upnp_mappings(UPNP)), lambda got: got == held_by_a,
               STEP)
    assert [m for m in leases(lab, UPNP) if m["int_ip"] == ip_b] == []
    a.call("close", "closed")
    assert lab.upnp_mappings(UPNP) == [] and leases(lab, UPNP) == []
