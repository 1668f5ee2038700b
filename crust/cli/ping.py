"""``python -m crust ping ENDPOINT``: reach a crust node and time its round trips.

Bootstraps off ENDPOINT alone, as a Client (no bootstrap cache, no LAN, so
it is that node or nothing), prints how long connecting took, then one line
per heartbeat round trip: crust's smoothed RTT of the connection
(``PeerInfo.rtt``), which heartbeats update every ``--interval`` seconds.
Every wait is bounded by ``--timeout``.  Exit status 0 when at least one
round trip was timed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import crust

from .common import CommandFailed, add_node_options, count, endpoint, identity_from, left, node_config, seconds, short, timeout

__all__ = ["add_parser"]

MIN_INTERVAL = 0.05  # seconds: heartbeats faster than this would only measure the scheduler


def add_parser(commands: Any) -> None:
    """Register ``ping`` with ``commands``."""
    parser = commands.add_parser(
        "ping", help="connect to a node and print its round-trip time",
        description="Bootstrap (as a Client) off ENDPOINT only and print the connection's round-trip time "
                    "as crust's heartbeats measure it (smoothed, like TCP's SRTT). The node must be on the "
                    "same network name (--network).")
    parser.add_argument("endpoint", type=endpoint, metavar="ENDPOINT",
                        help="the node: host:port (TCP) or udp://host:port (crust's reliable UDP)")
    parser.add_argument("--peer-id", metavar="HEX", help="the node's PeerId: refuse any other node there")
    parser.add_argument("-c", "--count", type=count(1), default=4, metavar="N",
                        help="round trips to time (default 4)")
    parser.add_argument("-i", "--interval", type=seconds, default=1.0, metavar="SECONDS",
                        help=f"seconds between heartbeats (default 1, at least {MIN_INTERVAL})")
    parser.add_argument("--timeout", type=timeout, default=15.0, metavar="SECONDS",
                        help="give up after this long in all (default 15)")
    add_node_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Connect, then print ``count`` RTT samples; raises CommandFailed when none could be timed."""
    interval = max(args.interval, MIN_INTERVAL)
    try:
        contact = crust.Contact(args.endpoint, args.peer_id)
    except (TypeError, ValueError) as exc:
        raise CommandFailed(f"--peer-id: {exc}") from None
    base = node_config(args)
    config = dataclasses.replace(
        base, hard_coded_contacts=[contact], bootstrap_cache_path=None, enable_upnp=False,
        heartbeat_interval=interval, inactivity_timeout=max(base.inactivity_timeout, 4 * interval),
        bootstrap_timeout=max(args.timeout, 0.1))
    deadline = time.monotonic() + args.timeout
    with crust.Service(config, identity_from(args)) as svc:
        started = time.monotonic()
        try:
            peer_id = svc.bootstrap(user=crust.CrustUser.CLIENT, timeout=max(left(deadline), 0.1))
        except crust.BootstrapFailed as exc:
            raise CommandFailed(f"cannot reach {args.endpoint}: {exc}") from None
        setup = time.monotonic() - started
        info = svc.peer_info(peer_id)
        print(f"connected to {short(peer_id)} at {info.addr} over {info.transport} in {setup * 1000:.1f} ms "
              "(handshakes included)", flush=True)
        samples: list[float] = []
        last = info.rtt
        while len(samples) < args.count and left(deadline) > 0:
            rtt = _next_rtt(svc, peer_id, last, deadline, interval)
            if rtt is None:
                break
            samples.append(rtt)
            last = rtt
            print(f"rtt {rtt * 1000:.3f} ms (seq {len(samples)})", flush=True)
    if not samples:
        raise CommandFailed(f"no round trip timed within {args.timeout} s")
    ms = [s * 1000 for s in samples]
    print(f"{len(ms)} round trips to {short(peer_id)}: min {min(ms):.3f} / avg {sum(ms) / len(ms):.3f} / "
          f"max {max(ms):.3f} ms", flush=True)
    return 0


def _next_rtt(svc: crust.Service, peer_id: crust.PeerId, last: float | None, deadline: float,
              interval: float) -> float | None:
    """The RTT once a heartbeat has updated it past ``last`` (None: the deadline passed or the peer left)."""
    poll = min(interval / 10, 0.05)
    while left(deadline) > 0:
        try:
            rtt = svc.peer_info(peer_id).rtt
        except crust.PeerNotFound:
            raise CommandFailed(f"{short(peer_id)} closed the connection") from None
        if rtt is not None and rtt != last:
            return rtt
        time.sleep(min(poll, left(deadline)))
    return None
