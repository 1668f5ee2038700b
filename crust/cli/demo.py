"""``python -m crust demo``: a real multi-peer session on 127.0.0.1.

A seed node, N peers that bootstrap off it (over TCP and over crust's
reliable UDP, alternately), and M messages from each peer that the seed
echoes back; then a table of what the seed saw of each peer.  It uses only
the public API (``import crust``), so it doubles as a worked example.
"""

from __future__ import annotations

import argparse
import threading
import time
from contextlib import ExitStack
from typing import Any, Callable

import crust

from .common import CommandFailed, Progress, count, left, plural, short, table, timeout

__all__ = ["add_parser"]

NETWORK = "crust-demo"
HEARTBEAT = 0.2  # seconds: short, so every peer has a measured RTT by the time we print


def add_parser(commands: Any) -> None:
    """Register ``demo`` with the subcommand table ``commands``."""
    demo = commands.add_parser(
        "demo",
        help="run a multi-peer session on 127.0.0.1 and print what the seed saw",
        description="Start a seed node and N peers that bootstrap off it, all on 127.0.0.1. "
        "Each peer sends M messages to the seed, which echoes every one back; then print what "
        "the seed saw of each peer. Exits 0 when every echo arrived, 1 otherwise.",
    )
    demo.add_argument("--peers", type=count(1), default=4, metavar="N", help="peers besides the seed (default 4)")
    demo.add_argument("--messages", type=count(0), default=100, metavar="M",
                      help="messages each peer sends (default 100)")
    demo.add_argument("--timeout", type=timeout, default=30.0, metavar="SECONDS",
                      help="give up after this long (default 30)")
    demo.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                      help="show a progress line on stderr (default: when stderr is a terminal)")
    demo.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo; raises CommandFailed when it could not finish."""
    progress = Progress(args.progress)
    try:
        _demo(args.peers, args.messages, args.timeout, progress)
    finally:
        progress.done()
    return 0


def _config(**overrides: Any) -> crust.Config:
    """A node that stays on loopback and leaves no files behind."""
    return crust.Config(
        listen_host="127.0.0.1",
        bootstrap_cache_path=None,
        network_name=NETWORK,
        heartbeat_interval=HEARTBEAT,
        enable_upnp=False,  # never ask the router for anything
        **overrides,
    )


class _Peer:
    """One demo peer: its Service and the echoes it is waiting for."""

    def __init__(self, number: int, service: crust.Service, messages: int) -> None:
        self.number = number
        self.service = service
        self.expected = [f"peer {number} message {k}".encode() for k in range(messages)]
        self.echoes: list[bytes] = []
        self.done = threading.Event()
        if not self.expected:
            self.done.set()
        service.on_message(self._on_echo)

    def _on_echo(self, peer_id: crust.PeerId, data: bytes) -> None:
        self.echoes.append(data)
        if len(self.echoes) == len(self.expected):
            self.done.set()


def _demo(n_peers: int, n_messages: int, timeout: float, progress: Progress) -> None:
    started = time.monotonic()
    deadline = started + timeout
    with ExitStack() as stack:
        # The seed: listens, and echoes every message back to its sender.
        seed = stack.enter_context(crust.Service(_config()))
        joined = threading.Event()
        seen: set[crust.PeerId] = set()

        @seed.on_new_peer
        def arrived(info: crust.PeerInfo) -> None:
            seen.add(info.id)
            if len(seen) == n_peers:
                joined.set()

        @seed.on_message
        def echo(peer_id: crust.PeerId, data: bytes) -> None:
            try:
                seed.send(peer_id, data)
            except (crust.PeerNotFound, crust.PeerLostError, crust.ServiceClosed):
                pass  # the run is over (timed out or failed): the peers, or the seed, are going away

        seed_endpoints = seed.start_listening()
        print(f"seed {short(seed.id)} listening on {', '.join(map(str, seed_endpoints))}", flush=True)

        # The peers: each bootstraps off the seed (its only hard-coded contact), odd
        # ones over TCP and even ones over crust's reliable UDP, the seed's two endpoints.
        peers: list[_Peer] = []
        for number in range(1, n_peers + 1):
            contact = seed_endpoints[(number - 1) % len(seed_endpoints)]
            service = stack.enter_context(crust.Service(_config(hard_coded_contacts=[str(contact)])))
            peers.append(_Peer(number, service, n_messages))
        for peer in peers:
            progress.update(f"bootstrapping: {peer.number - 1}/{n_peers} peers connected")
            peer.service.start_listening()  # a Node is reachable: it listens too
            seed_id = peer.service.bootstrap(timeout=max(left(deadline), 0.01))
            if seed_id != seed.id:
                raise CommandFailed(f"peer {peer.number} bootstrapped off {seed_id!r}, not the seed")
        if not joined.wait(left(deadline)):
            raise CommandFailed(f"the seed saw {len(seen)} of {n_peers} peers connect within {timeout} s")
        progress.done()
        print(f"{plural(n_peers, 'peer')} connected; each sends {plural(n_messages, 'message')}, "
              "the seed echoes them back", flush=True)

        # Messages flow both ways at once: every peer sends while echoes come back.
        total = n_peers * n_messages

        def echoed() -> int:
            return sum(len(peer.echoes) for peer in peers)

        for k in range(n_messages):
            for peer in peers:
                peer.service.send(seed.id, peer.expected[k])
            progress.update(f"sent {(k + 1) * n_peers}/{total}, echoed {echoed()}/{total}")
        for peer in peers:
            if not _wait(peer.done, deadline, lambda: progress.update(f"echoed {echoed()}/{total}")):
                raise CommandFailed(f"peer {peer.number} got {len(peer.echoes)} of {n_messages} echoes "
                                    f"within {timeout} s")
            if peer.echoes != peer.expected:
                raise CommandFailed(f"peer {peer.number}'s echoes differ from what it sent (order or content)")
        progress.update(f"echoed {total}/{total}", force=True)
        progress.done()
        elapsed = time.monotonic() - started

        _wait_for_rtts(seed, until=min(deadline, time.monotonic() + 5 * HEARTBEAT))
        numbers = {peer.service.id: peer.number for peer in peers}
        infos = sorted(seed.peers(), key=lambda info: numbers.get(info.id, 0))
        print()
        print(_table(infos))
        print()
        print(f"{plural(n_peers, 'peer')} sent {plural(n_messages, 'message')} each; "
              f"{plural(total, 'echo', 'echoes')} came back; total time {elapsed:.2f} s", flush=True)


def _wait(event: threading.Event, deadline: float, tick: Callable[[], None]) -> bool:
    """Wait for ``event`` until ``deadline``, calling ``tick`` about every Progress.INTERVAL."""
    while not event.wait(min(Progress.INTERVAL, left(deadline))):
        if left(deadline) == 0:
            return False
        tick()
    return True


def _wait_for_rtts(seed: crust.Service, until: float) -> None:
    """Give the heartbeats a moment if some RTT is not measured yet (bounded; '-' if still not)."""
    while any(info.rtt is None for info in seed.peers()) and time.monotonic() < until:
        time.sleep(HEARTBEAT / 4)


def _table(infos: list[crust.PeerInfo]) -> str:
    rows = [("peer", "addr", "transport", "origin", "rtt ms", "bytes sent", "bytes recv")]
    for info in infos:
        rtt = "-" if info.rtt is None else f"{info.rtt * 1000:.2f}"
        rows.append((short(info.id), f"{info.addr.host}:{info.addr.port}", info.transport, info.origin, rtt,
                     f"{info.bytes_sent:,}", f"{info.bytes_received:,}"))
    return table(rows, right={4, 5, 6})

