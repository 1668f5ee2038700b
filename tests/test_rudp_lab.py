"""crust over reliable UDP across a lossy link, inside a namespace lab (tests/netlab.py).

Two hosts on a bridge, 10.78.0.1 and .2; an nftables ``netdev`` ingress rule
on each host drops a share of every IPv4 packet it receives (TESTLAB.md: these
kernels have no netem).  A UDP-only crust peer on h2 bootstraps off one on h1
and sends messages that h1 echoes: every byte must come back, in order.

Skipped unless root with ``CAP_SYS_ADMIN`` and ``nft``; with ``CI=true`` they fail instead.
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from typing import Any, Iterator

import pytest

from tests.netlab import NFT, Lab, LineReader, expect_event, in_ci, lab_or_skip

pytestmark = pytest.mark.timeout(60)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEER = os.path.join(REPO, "tests", "rudp_peer.py")
SUBNET = "10.78.0.0/24"
START = 8.0  # seconds a peer gets to start (interpreter + import crust + Service)


@pytest.fixture
def lab() -> Iterator[Lab]:
    if shutil.which(NFT) is None:
        if in_ci():
            pytest.fail("CI=true but nftables `nft` is not installed (.ci/run installs it)", pytrace=False)
        pytest.skip("nftables `nft` is not installed")
    yield from lab_or_skip("crustrudp")


def _peer(lab: Lab, host: str, *args: str) -> LineReader:
    argv = [sys.executable, PEER, "--lifetime", "40", *args]
    return LineReader(lab.run(host, argv, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}), name=host)


def _echo_over(lab: Lab, loss_per_10000: int, count: int, size: int) -> dict[str, Any]:
    h1, h2 = lab.build_lan(2, SUBNET)
    for host in (h1, h2):
        lab.drop_randomly(host.name, loss_per_10000)
    server = _peer(lab, h1.name, "--listen", h1.ip or "")
    endpoint = expect_event(lab, server, "listening", START)["endpoint"]
    assert endpoint.startswith(f"udp://{h1.ip}:")
    client = _peer(lab, h2.name, "--send", endpoint, "--count", str(count), "--size", str(size))
    connected = expect_event(lab, client, "connected", START + 20)
    assert connected["transport"] == "udp"
    return expect_event(lab, client, "echoed", 35)


# Plain sockets, no crust: count datagrams arriving on PORT within a window; or send N of them.
COUNT = textwrap.dedent("""
    import select, socket, sys, time
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", int(sys.argv[1])))
    print("ready", flush=True)
    got, end = 0, time.monotonic() + float(sys.argv[2])
    while (left := end - time.monotonic()) > 0 and select.select([s], [], [], left)[0]:
        s.recv(2048)
        got += 1
    print(got, flush=True)
""")
BLAST = "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); " \
        "[s.sendto(b'x', (sys.argv[1], int(sys.argv[2]))) for _ in range(int(sys.argv[3]))]"
PROBE_PORT = 40999


def test_the_lab_link_really_loses_packets(lab: Lab) -> None:
    # Without this, a transfer that "survives 10% loss" might have crossed a lossless link.
    h1, h2 = lab.build_lan(2, SUBNET)
    lab.drop_randomly(h2.name, 5000)  # half of what reaches h2
    counter = LineReader(lab.run(h2.name, [sys.executable, "-c", COUNT, str(PROBE_PORT), "1.5"]))
    assert counter.next_line(START) == "ready", lab.log_of(counter.proc)
    sent = lab.exec(h1.name, [sys.executable, "-c", BLAST, h2.ip or "", str(PROBE_PORT), "400"])
    assert sent.returncode == 0, sent.stderr
    received = int(counter.next_line(5) or "-1")
    assert 100 <= received <= 300, received  # ~200 of 400: some lost, not all


@pytest.mark.parametrize("loss_percent", [2, 10])
def test_rudp_delivers_every_byte_in_order_across_a_lossy_link(lab: Lab, loss_percent: int) -> None:
    echoed = _echo_over(lab, loss_percent * 100, count=64, size=16 * 1024)  # 1 MiB each way
    assert echoed["count"] == 64 and echoed["bytes"] == 64 * 16 * 1024
    assert echoed["match"] is True
