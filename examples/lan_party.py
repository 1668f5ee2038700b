"""A LAN party: every guest finds the others by crust's LAN beacon, with no addresses typed in.

Run it on a few machines of one LAN (or in a few terminals of one machine)::

    python examples/lan_party.py --name alice
    python examples/lan_party.py --name bob

Each guest listens, answers the beacon, and bootstraps off whoever answers
it, again and again (skipping those it already met) until nobody new is
left; every pair that connects says hello, and each guest prints whom it
met.  Ctrl-D (end of input) or ``--duration`` ends the party for that
guest.

The beacon goes to every interface's broadcast address on UDP port 5484;
``--targets`` and ``--port`` change that (the tests use ``--targets
127.255.255.255``, loopback only, and a port of their own).
"""

from __future__ import annotations

import argparse
import sys
import threading

import crust

NETWORK = "crust-lan-party"
MAX_ROUNDS = 16  # bootstrap rounds per look around: a bound, one new peer each


def main() -> int:
    parser = argparse.ArgumentParser(description="Find the other guests on the LAN and say hello.")
    parser.add_argument("--name", default=None, help="what the others see (default: your peer id)")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default: every interface)")
    parser.add_argument("--targets", nargs="+", default=None, metavar="IP",
                        help="where beacons go (default: every interface's broadcast address)")
    parser.add_argument("--port", type=int, default=5484, help="the beacon's UDP port (default 5484)")
    parser.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                        help="leave after this long (default: at the end of input)")
    args = parser.parse_args()

    config = crust.Config(network_name=NETWORK, listen_host=args.host, bootstrap_cache_path=None,
                          service_discovery_targets=args.targets, service_discovery_port=args.port,
                          service_discovery_window=0.5)
    with crust.Service(config) as svc:
        name = args.name or str(svc.id)[:8]
        met: dict[crust.PeerId, str] = {}
        lock = threading.Lock()

        @svc.on_new_peer
        def hello(info: crust.PeerInfo) -> None:
            svc.send(info.id, f"hello from {name}".encode())

        @svc.on_message
        def greeted(peer_id: crust.PeerId, data: bytes) -> None:
            text = data.decode("utf-8", errors="replace")
            if text.startswith("hello from ") and peer_id not in met:
                with lock:
                    met[peer_id] = "".join(c for c in text[len("hello from "):] if c.isprintable())
                print(f"met {met[peer_id]} ({str(peer_id)[:8]}); {len(met)} so far", flush=True)

        @svc.on_lost
        def left(peer_id: crust.PeerId) -> None:
            print(f"{met.get(peer_id, str(peer_id)[:8])} left", flush=True)

        endpoints = svc.start_listening()
        svc.set_service_discovery_listen(True)  # answer the others' beacons
        print(f"{name} is at the party, listening on {', '.join(map(str, endpoints))}", flush=True)
        look_around(svc)

        leave = threading.Event()
        if args.duration is None:
            threading.Thread(target=lambda: (sys.stdin.read(), leave.set()), daemon=True).start()
        leave.wait(args.duration)
        print(f"{name} leaves, having met {', '.join(sorted(met.values())) or 'nobody'}", flush=True)
    return 0


def look_around(svc: crust.Service) -> None:
    """Bootstrap off LAN peers until a round brings nobody new (guests who arrive later find us instead)."""
    skip: list[crust.Endpoint] = []
    for _ in range(MAX_ROUNDS):
        try:
            peer = svc.bootstrap(blacklist=skip, user=crust.CrustUser.CLIENT)
        except crust.BootstrapFailed:
            return  # nobody (new) answered
        info = svc.peer_info(peer)
        if info.addr in skip:
            return
        skip.append(info.addr)  # the listener we dialled: next round, someone else


if __name__ == "__main__":
    sys.exit(main())
