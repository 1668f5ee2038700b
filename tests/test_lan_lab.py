"""LAN discovery over real interface broadcast, inside a namespace lab (tests/netlab.py).

The loopback tests cover discovery with ``service_discovery_targets=["127.255.255.255"]``;
these cover the default (``None`` = every IPv4 interface's broadcast address) on a
3-host bridged LAN, 10.77.0.1-3/24, that exists only inside network namespaces:

* ``test_lab_*`` check the lab itself with plain sockets (no crust), so a broken lab
  is told apart from a crust failure;
* ``test_default_discovery_*`` run crust peers (tests/lan_peer.py) in the hosts.

Skipped unless root with ``CAP_SYS_ADMIN``; with ``CI=true`` they fail instead.
"""

from __future__ import annotations

import os
import sys
import textwrap
from typing import Any, Iterator

import pytest

from tests.netlab import (Lab, LabError, LineReader, check_no_overlap, expect_event, lab_or_skip, list_netns,
                          root_networks)

pytestmark = pytest.mark.timeout(30)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.path.join(REPO, "tests", "lan_peer.py")
SUBNET = "10.77.0.0/24"
BROADCAST = "10.77.0.255"
PORT = 40000 + os.getpid() % 1000  # the discovery port every host shares (labs are isolated anyway)
START = 8.0  # seconds a peer gets to start (interpreter + import crust + Service)


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from lab_or_skip("crustlan")


# -- the lab alone -----------------------------------------------------------------

# Plain sockets, no crust: wait for one datagram on 0.0.0.0:PORT, print it; or send one.
RECV = textwrap.dedent("""
    import json, select, socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[1])))
    print("ready", flush=True)
    got = []
    if select.select([s], [], [], float(sys.argv[2]))[0]:
        data, addr = s.recvfrom(2048)
        got = [data.decode(), addr[0]]
    print(json.dumps(got), flush=True)
    s.close()
""")
SEND = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.sendto(b"beacon", (sys.argv[1], int(sys.argv[2])))
    s.close()
""")
IFADDRS = "import json, netifaces as n; print(json.dumps(n.ifaddresses('eth0').get(n.AF_INET)))"


def test_lab_hosts_have_broadcast_addresses(lab: Lab) -> None:
    hosts = lab.build_lan(3, SUBNET)
    assert [h.ip for h in hosts] == ["10.77.0.1", "10.77.0.2", "10.77.0.3"]
    for h in hosts:  # what crust's default targets are made of
        done = lab.exec(h.name, [sys.executable, "-c", IFADDRS])
        assert done.returncode == 0, done.stderr
        assert f'"broadcast": "{BROADCAST}"' in done.stdout, done.stdout


def test_lab_broadcast_reaches_every_other_host(lab: Lab) -> None:
    h1, h2, h3 = lab.build_lan(3, SUBNET)
    readers = {}
    for h in (h2, h3):
        proc = lab.run(h.name, [sys.executable, "-c", RECV, str(PORT), "5"])
        readers[h.name] = LineReader(proc)
        assert readers[h.name].next_line(START) == "ready", lab.log_of(proc)
    sent = lab.exec(h1.name, [sys.executable, "-c", SEND, BROADCAST, str(PORT)])
    assert sent.returncode == 0, sent.stderr
    for name, reader in readers.items():
        assert reader.next_line(6) == f'["beacon", "{h1.ip}"]', (name, reader.lines, lab.log_of(reader.proc))


def test_lab_unicast_between_hosts_and_teardown(lab: Lab) -> None:
    h1, h2, _ = lab.build_lan(3, SUBNET)
    reader = LineReader(lab.run(h2.name, [sys.executable, "-c", RECV, str(PORT), "5"]))
    assert reader.next_line(START) == "ready"
    assert lab.exec(h1.name, [sys.executable, "-c", SEND, h2.ip or "", str(PORT)]).returncode == 0
    assert reader.next_line(6) == f'["beacon", "{h1.ip}"]', reader.lines
    namespaces = [n for n in list_netns() if n.startswith(lab.tag)]
    assert len(namespaces) == 4  # switch + 3 hosts
    lab.close()
    assert not [n for n in list_netns() if n.startswith(lab.tag)]
    assert reader.proc.returncode is not None


def test_lab_refuses_the_machines_own_networks() -> None:
    own = [n for n in root_networks() if n.version == 4 and not n.is_loopback and n.prefixlen > 0]
    if not own:
        pytest.skip("this machine has no IPv4 network besides loopback")
    with pytest.raises(LabError, match="overlaps"):  # e.g. eth0's 192.0.2.0/24
        check_no_overlap(str(own[0]))
    assert str(check_no_overlap(SUBNET)) == SUBNET


# -- crust on the lab LAN --------------------------------------------------------------

def start_peer(lab: Lab, host: str, *args: str, lifetime: float = 12.0) -> LineReader:
    argv = [sys.executable, PEER, "--discovery-port", str(PORT), "--lifetime", str(lifetime), *args]
    return LineReader(lab.run(host, argv, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}),
                      name=f"{host} ({' '.join(args)})")


def expect(lab: Lab, peer: LineReader, event: str, timeout: float = START) -> dict[str, Any]:
    return expect_event(lab, peer, event, timeout)


def test_crust_over_the_lab_with_a_hard_coded_contact(lab: Lab) -> None:
    """No discovery: crust itself works between lab hosts (so a discovery failure is discovery's)."""
    lab.build_lan(2, SUBNET)
    node = start_peer(lab, "h1", "--network", "lab-A", "--listen", "--no-discovery")
    node_id = expect(lab, node, "id")["peer_id"]
    endpoint = next(ep for ep in expect(lab, node, "listening")["endpoints"] if ep.startswith("10.77.0.1:"))
    client = start_peer(lab, "h2", "--network", "lab-A", "--no-discovery", "--bootstrap", "--contact", endpoint)
    assert expect(lab, client, "bootstrap")["peer_id"] == node_id
    assert expect(lab, client, "exit")["status"] == 0, client.lines
    assert lab.stop(node.proc) == 0, (node.drain(1.0), lab.log_of(node.proc))


def test_default_discovery_bootstraps_a_contactless_client_to_a_lan_peer(lab: Lab) -> None:
    lab.build_lan(3, SUBNET)
    # host1: network A, listening; host3: network B, listening — both answer beacons.
    node_a = start_peer(lab, "h1", "--network", "lab-A", "--listen")
    node_b = start_peer(lab, "h3", "--network", "lab-B", "--listen")
    id_a = expect(lab, node_a, "id")["peer_id"]
    id_b = expect(lab, node_b, "id")["peer_id"]
    assert any(ep.startswith("10.77.0.1:") for ep in expect(lab, node_a, "listening")["endpoints"])
    expect(lab, node_a, "ready")
    expect(lab, node_b, "ready")

    # host2: network A, no contacts at all, default targets (interface broadcast).
    client = start_peer(lab, "h2", "--network", "lab-A", "--bootstrap", "--has-peers")
    id_client = expect(lab, client, "id")["peer_id"]
    result = expect(lab, client, "bootstrap")
    assert result["peer_id"] == id_a
    assert id_b not in result["peers"]
    assert expect(lab, client, "has_peers_on_lan", timeout=4.0)["value"] is True
    assert expect(lab, client, "exit")["status"] == 0, client.lines
    assert id_client not in (id_a, id_b)

    # Control: host3 was up and answering — a network-B client on host2 bootstraps to it, not to A.
    control = start_peer(lab, "h2", "--network", "lab-B", "--bootstrap")
    assert expect(lab, control, "bootstrap")["peer_id"] == id_b
    assert expect(lab, control, "exit")["status"] == 0, control.lines

    print("timings:", client.lines, control.lines, sep="\n")  # shown with -s / on failure
    for node in (node_a, node_b):
        assert lab.stop(node.proc) == 0, (node.drain(1.0), lab.log_of(node.proc))
