"""The NAT lab (tests/natlab.py) behaves like the NATs TESTLAB.md measured: plain sockets, no crust.

One lab for the module (the tests use separate hosts, ports or routers, so
they do not disturb each other):

    inet 198.51.100.0/24: STUN server (.1/.2 x 3478/3479), pub (echo :7000, UDP
        rendezvous :7001, TCP rendezvous :7002), third (sends unsolicited datagrams)
    routers: fc full-cone, rc restricted, pr + pr2 port-restricted, sym symmetric,
        open (no NAT), short (port-restricted, 2 s idle timeout), lossy (drops all its WAN
        receives), up (port-restricted + miniupnpd, built by the UPnP tests);
        one host behind each, "<router>h"

The probes are tests/nat_probe.py subcommands run inside the namespaces.
Skipped unless root with ``CAP_SYS_ADMIN``, ``nft`` (and ``miniupnpd`` for the
UPnP tests); with ``CI=true`` they fail instead.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterator

import pytest

from tests.natlab import NatLab, natlab_or_skip, natlab_unavailable_reason
from tests.netlab import LabError, LineReader, expect_event, root_networks, skip_or_fail
from tests.stun_server import binding_request, binding_response, parse_request, parse_response

pytestmark = pytest.mark.timeout(60)

PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nat_probe.py")
START = 5.0  # seconds a probe gets to start (interpreter start-up) and answer
ECHO, RENDEZVOUS, TCP_RENDEZVOUS = 7000, 7001, 7002
SHORT_IDLE = 2  # seconds: the idle timeout of router "short"
SHORT_TCP_IDLE = 30  # seconds: its idle timeout for established TCP
ROUTERS = {"fc": "full-cone", "rc": "restricted", "pr": "port-restricted", "pr2": "port-restricted",
           "sym": "symmetric", "open": "none", "short": "port-restricted", "lossy": "port-restricted"}
SERVICE_LIFETIME = 300.0  # seconds the module's public services live at most (the lab ends them sooner)
_names = itertools.count(1)


@dataclass
class World:
    """The module's lab and the long-running public services in it."""

    lab: NatLab
    pub: str  # the public host's IP
    echo: LineReader
    stun: str  # "ip:port" of the STUN server's primary address


def probe(lab: NatLab, host: str, *args: str, lifetime: float = 30.0) -> LineReader:
    """Start a nat_probe.py subcommand in ``host``; its JSON lines are read through the LineReader."""
    return LineReader(lab.run(host, [sys.executable, PROBE, *args, "--lifetime", str(lifetime)]), name=host)


def say(reader: LineReader, line: str) -> None:
    assert reader.proc.stdin is not None
    reader.proc.stdin.write(line.encode() + b"\n")
    reader.proc.stdin.flush()


@pytest.fixture(scope="module")
def lab() -> Iterator[NatLab]:
    yield from natlab_or_skip("crustnat")


@pytest.fixture(scope="module")
def world(lab: NatLab) -> World:
    t0 = time.monotonic()
    pub = lab.public("pub", ips=2)
    lab.public("third")
    for name, kind in ROUTERS.items():
        short = name == "short"
        lab.router(name, kind, idle_timeout=SHORT_IDLE if short else None,
                   tcp_idle_timeout=SHORT_TCP_IDLE if short else None)
        lab.host_behind(name, name + "h")
    lab.drop_randomly("lossy", 10000)  # everything arriving on its WAN
    stun, _ = lab.stun()
    echo = probe(lab, "pub", "echo", "--port", str(ECHO), lifetime=SERVICE_LIFETIME)
    expect_event(lab, echo, "ready", START)
    for cmd, port in (("rendezvous", RENDEZVOUS), ("tcp-rendezvous", TCP_RENDEZVOUS)):
        expect_event(lab, probe(lab, "pub", cmd, "--port", str(port), lifetime=SERVICE_LIFETIME), "ready", START)
    print(f"natlab: {len(lab.hosts) + 1} namespaces built in {time.monotonic() - t0:.2f} s")
    return World(lab, pub.ip or "", echo, f"{stun[0]}:{stun[1]}")


@pytest.fixture(scope="module")
def upnp_router(world: World) -> str:
    """Router "up": port-restricted with miniupnpd, and host "uph" behind it."""
    skip_or_fail(natlab_unavailable_reason(upnp=True))
    world.lab.router("up", "port-restricted", upnp=True)
    world.lab.host_behind("up", "uph")
    return "up"


def run_probe(lab: NatLab, host: str, *args: str) -> dict[str, Any]:
    """Run a short nat_probe.py subcommand in ``host`` to the end; its last JSON line."""
    done = lab.exec(host, [sys.executable, PROBE, *args], timeout=START + 10)
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and lines, (done.stdout, done.stderr)
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# -- the lab's own shape ---------------------------------------------------------------

def test_the_lab_is_wired_as_documented(world: World) -> None:
    lab = world.lab
    assert lab.public_ips["pub"] == ["198.51.100.10", "198.51.100.11"]
    fc, open_ = lab.routers["fc"], lab.routers["open"]
    assert fc.lan == "10.1.0.0/24" and fc.lan_ip == "10.1.0.1" and lab.hosts["fch"].ip == "10.1.0.2"
    for router in ROUTERS:  # forwarding on in routers only
        assert lab.exec(router, ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"
    for host in ("pub", "fch", "inet"):
        assert lab.exec(host, ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "0"
    assert "default via 10.1.0.1" in lab.exec("fch", ["ip", "route"]).stdout
    assert f"{open_.lan} via {open_.wan_ip}" in lab.exec("pub", ["ip", "route"]).stdout  # "none" is routed
    assert "masquerade fully-random" in lab.ruleset("sym") and "fully-random" not in lab.ruleset("pr")
    timeouts = [lab.exec(r, ["sysctl", "-n", f"net.netfilter.nf_conntrack_{k}"]).stdout.strip()
                for r in ("short", "pr") for k in ("udp_timeout", "udp_timeout_stream", "tcp_timeout_established")]
    assert timeouts == [str(SHORT_IDLE), str(SHORT_IDLE), str(SHORT_TCP_IDLE), "30", "120", "432000"]  # per netns


def test_an_internet_overlapping_this_machines_networks_is_refused() -> None:
    skip_or_fail(natlab_unavailable_reason())
    own = [n for n in root_networks() if n.version == 4 and n.prefixlen > 0 and not n.is_loopback]
    if not own:
        pytest.skip("this machine has no IPv4 network besides loopback")
    with pytest.raises(LabError, match="overlaps"):
        NatLab("crustnatx", internet=str(own[0]))


def test_a_lossy_router_wan_loses_what_arrives(world: World) -> None:
    classifier = probe(world.lab, "lossyh", "classify", "--server", world.stun)
    assert "no STUN answer" in expect_event(world.lab, classifier, "error", START + 5)["message"]


def test_the_stun_codec_round_trips_and_ignores_junk() -> None:
    request, txid = binding_request(change_ip=True, change_port=False)
    parsed = parse_request(request)
    assert parsed is not None and parsed[1:] == (txid, 0x04)
    answer = binding_response(parsed[0], txid, ("198.51.100.7", 40001), ("198.51.100.1", 3478),
                              ("198.51.100.2", 3479))
    assert parse_response(answer, txid) == {"mapped": ("198.51.100.7", 40001), "origin": ("198.51.100.1", 3478),
                                            "other": ("198.51.100.2", 3479)}
    assert parse_response(answer, b"x" * 12) is None  # another transaction
    for junk in (b"", b"\x00\x01", request[:-2], answer[:30], b"\xff" * 40):
        assert parse_request(junk) is None or junk == request
        assert parse_response(junk, txid) is None


# -- classification (RFC 5780 style, against the lab's STUN server) ----------------------

CLASSES = {  # TESTLAB.md's table; "none" is plain routing
    "fc": (True, "endpoint-independent", "endpoint-independent", 1),
    "rc": (True, "endpoint-independent", "address-dependent", 0),
    "pr": (True, "endpoint-independent", "address-and-port-dependent", 0),
    "sym": (True, "address-and-port-dependent", "address-and-port-dependent", 0),
    "open": (False, "endpoint-independent", "endpoint-independent", 1),
}


@pytest.mark.parametrize("router", list(CLASSES))
def test_each_nat_type_classifies_as_measured(world: World, router: str) -> None:
    nat, mapping, filtering, unsolicited = CLASSES[router]
    lab = world.lab
    classifier = probe(lab, router + "h", "classify", "--server", world.stun)
    got = expect_event(lab, classifier, "classified", START + 5)
    assert (got["nat"], got["mapping"], got["filtering"]) == (nat, mapping, filtering), got
    if nat:
        assert {m[0] for m in got["mapped"]} == {lab.routers[router].wan_ip}
    # A datagram from a public address the host never talked to (a full cone lets it in):
    target = expect_event(lab, classifier, "listening", START)["mapped"]
    assert run_probe(lab, "third", "send", "--to", f"{target[0]}:{target[1]}")["count"] == 3
    say(classifier, "done")
    assert expect_event(lab, classifier, "done", START)["unsolicited"] == 3 * unsolicited, classifier.lines


# -- UDP hole punching --------------------------------------------------------------------

@pytest.mark.parametrize("a, b, works", [
    ("pr", "pr2", True),  # port-restricted both sides
    ("sym", "pr", False),  # symmetric's new port is unpredictable and port-restricted filters it
    ("fc", "sym", True),  # full cone accepts the symmetric side's new port, which is then answered
    ("rc", "sym", True),  # restricted: the symmetric side's IP was contacted
])
def test_udp_hole_punching_matrix(world: World, a: str, b: str, works: bool) -> None:
    lab, n = world.lab, next(_names)
    me, peer = f"{a}-{n}", f"{b}-{n}"
    timeout = "6" if works else "3"
    sides = [probe(lab, a + "h", "punch", "--rendezvous", f"{world.pub}:{RENDEZVOUS}", "--me", me, "--peer", peer,
                   "--timeout", timeout),
             probe(lab, b + "h", "punch", "--rendezvous", f"{world.pub}:{RENDEZVOUS}", "--me", peer, "--peer", me,
                   "--timeout", timeout)]
    for side in sides:
        expect_event(lab, side, "peer", START)
    want = "punched" if works else "failed"
    results = [expect_event(lab, side, want, START + 6) for side in sides]
    if works:  # each side ends up talking to the other's real public endpoint
        assert results[0]["peer"][0] == lab.routers[b].wan_ip and results[1]["peer"][0] == lab.routers[a].wan_ip


# -- TCP ------------------------------------------------------------------------------------

def test_tcp_simultaneous_open_between_two_port_restricted_nats(world: World) -> None:
    lab, n = world.lab, next(_names)
    sides = [probe(lab, host, "tcp-punch", "--rendezvous", f"{world.pub}:{TCP_RENDEZVOUS}", "--me", f"{me}-{n}",
                   "--peer", f"{other}-{n}", "--port", "41000", "--timeout", "8")
             for host, me, other in (("prh", "a", "b"), ("pr2h", "b", "a"))]
    results = [expect_event(lab, side, "connected", START + 8) for side in sides]
    assert results[0]["got"] == f"hello from b-{n}" and results[1]["got"] == f"hello from a-{n}"
    assert results[0]["peer"] == [lab.routers["pr2"].wan_ip, 41000]  # masquerade kept the port


def test_unsolicited_tcp_from_outside_is_silently_dropped(world: World) -> None:
    lab = world.lab
    listener = probe(lab, "prh", "tcp-listen", "--port", "42000")
    expect_event(lab, listener, "ready", START)
    result = run_probe(lab, "pub", "tcp-connect", "--to", f"{lab.routers['pr'].wan_ip}:42000", "--timeout", "1.5")
    assert result["result"] == "timeout", result  # no RST, no ICMP: only silence
    assert result["seconds"] >= 1.4


# -- idle timeouts and a NAT restart ------------------------------------------------------

def _hold(world: World, host: str, *args: str) -> tuple[LineReader, dict[str, list[Any]]]:
    """Sockets in ``host`` that said hello to the echo server; socket name -> what the echo saw."""
    holder = probe(world.lab, host, "hold", "--to", f"{world.pub}:{ECHO}", *args)
    seen = {}
    for _ in args[args.index("--sockets") + 1].split(","):
        mapped = expect_event(world.lab, holder, "mapped", START)
        seen[mapped["socket"]] = [mapped["local"], mapped["seen"]]
    return holder, seen


def _push(world: World, holder: LineReader, to: list[Any], text: str) -> dict[str, Any] | None:
    """Have the echo server send ``text`` to ``to``; what the holder reports within a second."""
    say(world.echo, f"{to[0]} {to[1]} {text}")
    expect_event(world.lab, world.echo, "pushed", START)
    return holder.wait_for("got", 1.0)


def test_a_short_idle_timeout_ends_idle_mappings_and_keepalives_keep_them(world: World) -> None:
    lab, host = world.lab, "shorth"
    holder, seen = _hold(world, host, "--sockets", "K,I", "--keepalive", "K", "--every", str(SHORT_IDLE / 4))
    t_mapped = time.monotonic()
    idle_entry = f"src={lab.hosts[host].ip} dst={world.pub} sport={seen['I'][0]} dport={ECHO}"
    assert any(idle_entry in line for line in lab.conntrack("short"))
    gone_after = None
    for _ in range(200):  # the idle mapping's conntrack entry expires after about SHORT_IDLE s
        if not any(idle_entry in line for line in lab.conntrack("short")):
            gone_after = time.monotonic() - t_mapped
            break
        time.sleep(0.05)  # polling conntrack: the kernel sends no event we could wait on
    assert gone_after is not None and SHORT_IDLE - 1.0 <= gone_after <= SHORT_IDLE + 2.0, gone_after
    time.sleep(max(0.0, t_mapped + 2 * SHORT_IDLE + 0.5 - time.monotonic()))  # idle time is what is tested
    kept = _push(world, holder, seen["K"][1], "push-K")
    assert kept and kept["socket"] == "K", holder.lines  # kept alive across 2x the idle timeout
    assert _push(world, holder, seen["I"][1], "push-I") is None, holder.lines  # idle: mapping gone


def test_restart_nat_forgets_mappings_even_a_restricted_cone(world: World) -> None:
    lab = world.lab
    holder, seen = _hold(world, "rch", "--sockets", "S")
    assert _push(world, holder, seen["S"][1], "before") is not None  # the mapping works
    lab.restart_nat("rc")
    assert not [line for line in lab.conntrack("rc") if f"src={lab.hosts['rch'].ip}" in line]
    assert _push(world, holder, seen["S"][1], "after") is None, holder.lines  # forgotten, cone map too


# -- UPnP through miniupnpd ---------------------------------------------------------------

def test_upnp_maps_a_port_through_miniupnpd_and_deletes_it(world: World, upnp_router: str) -> None:
    lab, lab_router = world.lab, world.lab.routers[upnp_router]
    client = probe(lab, "uph", "upnp", "--ext-port", "40000", "--int-port", "40001")
    igd = client.wait_for("igd", START + 5)
    assert igd and igd["event"] == "igd", (igd, client.lines, lab.upnp_log(upnp_router))
    assert igd["external_ip"] == lab_router.wan_ip and igd["lan_addr"] == lab.hosts["uph"].ip
    assert expect_event(lab, client, "mapped", START)["ok"] is True
    assert lab.upnp_mappings(upnp_router) == [
        {"proto": "tcp", "ext_port": 40000, "int_ip": lab.hosts["uph"].ip, "int_port": 40001}]
    dial = run_probe(lab, "pub", "tcp-connect", "--to", f"{lab_router.wan_ip}:40000", "--timeout", "2")
    assert (dial["result"], dial.get("got")) == ("connected", "hello through the mapping"), dial
    say(client, "delete")
    assert expect_event(lab, client, "deleted", START)["ok"] is True
    assert lab.upnp_mappings(upnp_router) == []
    dial = run_probe(lab, "pub", "tcp-connect", "--to", f"{lab_router.wan_ip}:40000", "--timeout", "1")
    assert dial["result"] == "timeout", dial


def test_no_igd_behind_a_router_without_miniupnpd(world: World) -> None:
    # With no IGD, discover() waits its delay once per search target (4 of them): 1 s here.
    answer = expect_event(world.lab, probe(world.lab, "prh", "upnp", "--delay", "1000"), "no-igd", START + 5)
    assert answer["devices"] == 0, answer  # and selectigd() raised, typically with "Success"
