"""``python -m crust``: the command line.

``python -m crust demo`` runs a real multi-peer session on this machine,
loopback only: a seed node, N peers that bootstrap off it (over TCP and
over crust's reliable UDP, alternately), and M messages
from each peer that the seed echoes back.  It then prints what the seed saw
of each peer.  Everything here uses only the public API (``import crust``),
so it doubles as a worked example.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from contextlib import ExitStack
from typing import Callable, Sequence

import crust

DEMO_NETWORK = "crust-demo"
HEARTBEAT = 0.2  # seconds: short, so every peer has a measured RTT by the time we print


class DemoFailed(Exception):
    """The demo could not finish; the message says what went wrong."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m crust",
        description=f"crust {crust.__version__}: encrypted peer-to-peer networking.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run a multi-peer session on 127.0.0.1 and print what the seed saw",
        description="Start a seed node and N peers that bootstrap off it, all on 127.0.0.1. "
        "Each peer sends M messages to the seed, which echoes every one back; then print what "
        "the seed saw of each peer. Exits 0 when every echo arrived, 1 otherwise.",
    )
    demo.add_argument("--peers", type=_count(1), default=4, metavar="N", help="peers besides the seed (default 4)")
    demo.add_argument("--messages", type=_count(0), default=100, metavar="M",
                      help="messages each peer sends (default 100)")
    demo.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                      help="give up after this long (default 30)")
    demo.set_defaults(run=_run_demo)
    return parser


def _count(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value
    return parse


# -- demo -------------------------------------------------------------------------


def _config(**overrides: object) -> crust.Config:
    """A node that stays on loopback and leaves no files behind."""
    return crust.Config(
        listen_host="127.0.0.1",
        bootstrap_cache_path=None,
        network_name=DEMO_NETWORK,
        heartbeat_interval=HEARTBEAT,
        enable_upnp=False,  # never ask the router for anything
        **overrides,  # type: ignore[arg-type]
    )


def _run_demo(args: argparse.Namespace) -> int:
    try:
        _demo(args.peers, args.messages, args.timeout)
    except (DemoFailed, crust.CrustError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    return 0


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


def _demo(n_peers: int, n_messages: int, timeout: float) -> None:
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
            seed.send(peer_id, data)

        seed_endpoints = seed.start_listening()
        print(f"seed {_short(seed.id)} listening on {', '.join(map(str, seed_endpoints))}")

        # The peers: each bootstraps off the seed (its only hard-coded contact), odd
        # ones over TCP and even ones over crust's reliable UDP, the seed's two endpoints.
        peers: list[_Peer] = []
        for number in range(1, n_peers + 1):
            contact = seed_endpoints[(number - 1) % len(seed_endpoints)]
            service = stack.enter_context(crust.Service(_config(hard_coded_contacts=[str(contact)])))
            peers.append(_Peer(number, service, n_messages))
        for peer in peers:
            peer.service.start_listening()  # a Node is reachable: it listens too
            seed_id = peer.service.bootstrap(timeout=_left(deadline))
            if seed_id != seed.id:
                raise DemoFailed(f"peer {peer.number} bootstrapped off {seed_id!r}, not the seed")
        if not joined.wait(_left(deadline)):
            raise DemoFailed(f"the seed saw {len(seen)} of {n_peers} peers connect within {timeout} s")
        print(f"{_plural(n_peers, 'peer')} connected; each sends {_plural(n_messages, 'message')}, "
              "the seed echoes them back")

        # Messages flow both ways at once: every peer sends while echoes come back.
        for k in range(n_messages):
            for peer in peers:
                peer.service.send(seed.id, peer.expected[k])
        for peer in peers:
            if not peer.done.wait(_left(deadline)):
                raise DemoFailed(f"peer {peer.number} got {len(peer.echoes)} of {n_messages} echoes within {timeout} s")
            if peer.echoes != peer.expected:
                raise DemoFailed(f"peer {peer.number}'s echoes differ from what it sent (order or content)")
        elapsed = time.monotonic() - started

        _wait_for_rtts(seed, until=min(deadline, time.monotonic() + 5 * HEARTBEAT))
        numbers = {peer.service.id: peer.number for peer in peers}
        infos = sorted(seed.peers(), key=lambda info: numbers.get(info.id, 0))
        print()
        print(_table(infos))
        print()
        echoes = n_peers * n_messages
        print(f"{_plural(n_peers, 'peer')} sent {_plural(n_messages, 'message')} each; "
              f"{_plural(echoes, 'echo', 'echoes')} came back; total time {elapsed:.2f} s")


def _wait_for_rtts(seed: crust.Service, until: float) -> None:
    """Give the heartbeats a moment if some RTT is not measured yet (bounded; '-' if still not)."""
    while any(info.rtt is None for info in seed.peers()) and time.monotonic() < until:
        time.sleep(HEARTBEAT / 4)


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _short(peer_id: crust.PeerId) -> str:
    return str(peer_id)[:8]


def _table(infos: list[crust.PeerInfo]) -> str:
    rows = [("peer", "addr", "transport", "origin", "rtt ms", "bytes sent", "bytes recv")]
    for info in infos:
        rtt = "-" if info.rtt is None else f"{info.rtt * 1000:.2f}"
        rows.append((_short(info.id), f"{info.addr.host}:{info.addr.port}", info.transport, info.origin, rtt,
                     f"{info.bytes_sent:,}", f"{info.bytes_received:,}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {4, 5, 6}  # numbers line up on the right
    lines = []
    for row in rows:
        cells = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
