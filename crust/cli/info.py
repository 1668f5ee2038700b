"""``python -m crust info``: who we are and how the world sees us.

Starts a node with the usual config (``--config``, or crust's default
file), listens, bootstraps as a Client off the configured contacts (or
``--contact``, or the LAN with ``--lan``) so that peers can say where they
see us, waits up to ``--wait`` seconds for their answers (and the router's,
with UPnP), then prints our PeerId, listeners, external endpoints per
transport, the NAT's mapping behaviour and crust's notes.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import crust

from .common import Progress, add_node_options, endpoint, identity_from, left, node_config, plural, seconds, short

__all__ = ["add_parser", "nat_type"]

POLL = 0.1  # seconds between two looks at nat_info() while waiting


def add_parser(commands: Any) -> None:
    """Register ``info`` with ``commands``."""
    parser = commands.add_parser(
        "info", help="print our identity, listeners, external addresses and NAT type",
        description="Start a node, listen, bootstrap (as a Client) off the configured contacts so they can "
                    "tell us where they see us, and print our PeerId, listeners, external endpoints and "
                    "NAT mapping behaviour. Without contacts only the local side is known.")
    parser.add_argument("--contact", action="append", type=endpoint, default=[], metavar="ENDPOINT",
                        help="ask this node (host:port; repeatable) instead of the configured contacts")
    parser.add_argument("--lan", action="store_true", help="also look for peers on the LAN (beacon)")
    parser.add_argument("--wait", type=seconds, default=5.0, metavar="SECONDS",
                        help="how long to wait for peers and the router to answer (default 5)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show a progress line on stderr while waiting (default: when stderr is a terminal)")
    add_node_options(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Start the node, ask around, print what we learned."""
    overrides: dict[str, Any] = {}
    if args.contact:
        overrides["hard_coded_contacts"] = args.contact
    config = node_config(args, **overrides)
    deadline = time.monotonic() + args.wait
    progress = Progress(args.progress)
    with crust.Service(config, identity_from(args)) as svc:
        listeners = svc.start_listening()
        if args.lan:
            svc.start_service_discovery()
        progress.update("bootstrapping...", force=True)
        try:
            svc.bootstrap(user=crust.CrustUser.CLIENT, timeout=max(left(deadline), 0.1))
            asked = None
        except crust.BootstrapFailed as exc:
            asked = str(exc)
        nat = _wait_for_answers(svc, config, deadline, progress)
        progress.done()
        peers = svc.peers()
        rows = [
            ("crust", f"{crust.__version__}, network {config.network_name or '(none)'}"),
            ("peer id", str(svc.id)),
            ("listening", ", ".join(map(str, listeners)) or "-"),
            ("peers", _peers(peers) if peers else f"none ({asked})"),
            ("tcp", _transport(nat.tcp) if config.enable_tcp else "disabled"),
            ("udp", _transport(nat.udp) if config.enable_udp else "disabled"),
            ("nat type", nat_type(nat, config)),
        ]
        rows += [("upnp", note) for note in nat.notes] or [
            ("upnp", "off (enable_upnp is false)" if not config.enable_upnp else "no answer from a router yet")]
    width = max(len(key) for key, _ in rows) + 2
    for key, value in rows:
        print(f"{key.ljust(width)}{value}")
    return 0


def _wait_for_answers(svc: crust.Service, config: crust.Config, deadline: float, progress: Progress) -> crust.NatInfo:
    """nat_info() once every enabled transport has an external endpoint (and UPnP spoke), or at the deadline."""
    while True:
        nat = svc.nat_info()
        kinds = [t for t, on in ((nat.tcp, config.enable_tcp), (nat.udp, config.enable_udp)) if on]
        peers_done = not svc.peers() or all(t.external is not None for t in kinds)
        upnp_done = not config.enable_upnp or bool(nat.notes)
        if (peers_done and upnp_done) or left(deadline) == 0:
            return nat
        progress.update(f"waiting for answers ({left(deadline):.1f} s left)")
        time.sleep(min(POLL, left(deadline)))


def _peers(peers: list[crust.PeerInfo]) -> str:
    shown = ", ".join(f"{short(p.id)} at {p.addr} over {p.transport}" for p in peers[:4])
    more = f", and {len(peers) - 4} more" if len(peers) > 4 else ""
    return f"{plural(len(peers), 'peer')}: {shown}{more}"


def _transport(nat: crust.TransportNat) -> str:
    if nat.external is None:
        return "external unknown (no peer has answered)"
    since = "" if nat.since is None else f", for {time.monotonic() - nat.since:.1f} s"
    return (f"external {nat.external} (local {nat.local}), mapping {nat.mapping.value}, "
            f"{'confirmed' if nat.confirmed else 'unconfirmed'} by {plural(nat.observers, 'observer')}{since}")


def nat_type(nat: crust.NatInfo, config: crust.Config) -> str:
    """One line on what the observed mappings mean for reaching us."""
    kinds = [t for t, on in ((nat.tcp, config.enable_tcp), (nat.udp, config.enable_udp)) if on]
    mappings = {t.mapping for t in kinds if t.external is not None}
    if not mappings:
        return "unknown: no peer has said where it sees us"
    if crust.MappingBehaviour.DEPENDENT in mappings:
        return "endpoint-dependent mapping (a symmetric NAT): hole punching will rarely work"
    if mappings == {crust.MappingBehaviour.NONE}:
        return "none: peers see our own address"
    if crust.MappingBehaviour.ENDPOINT_INDEPENDENT in mappings:
        return "endpoint-independent mapping: peers can reach us by hole punching"
    return "unknown: at least two observers at different IPs are needed to tell"
