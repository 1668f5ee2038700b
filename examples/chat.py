"""A stdin chat between crust peers.

One node is the seed; everyone else bootstraps off it and the seed relays
each line to all the others (until crust can connect peers directly, the
seed is the hub)::

    python examples/chat.py --listen                # the seed, on 127.0.0.1:5483
    python examples/chat.py 127.0.0.1:5483          # in other terminals
    python examples/chat.py --name bob 127.0.0.1:5483

Type a line and press Enter to send it; Ctrl-D or Ctrl-C leaves.  Use
``--host 0.0.0.0`` on the seed to chat across machines.
"""

from __future__ import annotations

import argparse
import sys

import crust

NETWORK = "crust-chat"


def main() -> int:
    parser = argparse.ArgumentParser(description="A stdin chat between crust peers.")
    parser.add_argument("contact", nargs="?", help="the seed's host:port to bootstrap off")
    parser.add_argument("--listen", action="store_true", help="be the seed: listen and relay lines to all peers")
    parser.add_argument("--host", default="127.0.0.1", help="address the seed listens on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5483, help="port the seed listens on (default 5483)")
    parser.add_argument("--name", help="what others see before your lines (default: your peer id)")
    args = parser.parse_args()
    if args.listen == bool(args.contact):
        parser.error("give either --listen or the seed's host:port")

    config = crust.Config(
        network_name=NETWORK,
        bootstrap_cache_path=None,
        listen_host=args.host,
        tcp_port=args.port if args.listen else 0,
        hard_coded_contacts=[] if args.listen else [args.contact],
    )
    with crust.Service(config) as svc:
        name = args.name or str(svc.id)[:8]

        @svc.on_new_peer
        def joined(info: crust.PeerInfo) -> None:
            print(f"* {str(info.id)[:8]} joined from {info.addr}")

        @svc.on_lost
        def left(peer_id: crust.PeerId) -> None:
            print(f"* {str(peer_id)[:8]} left")

        @svc.on_message
        def got(peer_id: crust.PeerId, data: bytes) -> None:
            print(data.decode("utf-8", errors="replace"))
            if args.listen:  # the seed passes every line on to everyone else
                broadcast(svc, data, skip=peer_id)

        if args.listen:
            endpoints = svc.start_listening()
            print(f"* seed {name} listening on {', '.join(map(str, endpoints))}")
        else:
            try:
                svc.bootstrap(user=crust.CrustUser.CLIENT)
            except crust.BootstrapFailed as exc:
                print(f"cannot join: {exc}", file=sys.stderr)
                return 1
            print(f"* joined as {name}; type a line and press Enter")

        try:
            for line in sys.stdin:
                broadcast(svc, f"{name}: {line.rstrip()}".encode())
        except KeyboardInterrupt:
            pass
    return 0


def broadcast(svc: crust.Service, data: bytes, skip: crust.PeerId | None = None) -> None:
    """Send ``data`` to every connected peer but ``skip``."""
    for info in svc.peers():
        if info.id != skip:
            try:
                svc.send(info.id, data)
            except crust.PeerNotFound:
                pass  # it left meanwhile; on_lost says so
            except crust.CrustError as exc:
                print(f"* not sent to {str(info.id)[:8]}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
