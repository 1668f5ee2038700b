"""One crust peer for the namespace LAN tests (tests/test_lan_lab.py), run inside a lab host.

Prints JSON lines on stdout, one per event, flushed at once:

    {"event": "id", "peer_id": "<hex>"}
    {"event": "listening", "endpoints": ["10.77.0.1:41234", ...]}          (--listen)
    {"event": "ready"}                  discovery started unless --no-discovery (and listening, if asked)
    {"event": "has_peers_on_lan", "value": true}                          (--has-peers)
    {"event": "bootstrap", "peer_id": "<hex>", "peers": ["<hex>", ...]}   (--bootstrap)
    {"event": "error", "where": "bootstrap", "type": "BootstrapFailed", "message": "..."}
    {"event": "exit"}

Lifetime is bounded: the peer exits after its steps when it has nothing to wait for
(no --listen), or when stdin closes, or after --lifetime seconds — whichever comes first.
Any exception is reported as an "error" line (exit status 1); the Service is always closed.

    python tests/lan_peer.py --network A --discovery-port 40123 --listen
    python tests/lan_peer.py --network A --discovery-port 40123 --bootstrap --has-peers
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import crust  # noqa: E402


T0 = time.monotonic()


def emit(event: str, **fields: Any) -> None:
    """One JSON line; ``t`` is seconds since this script started (for timing diagnostics)."""
    sys.stdout.write(json.dumps({"event": event, **fields, "t": round(time.monotonic() - T0, 3)}) + "\n")
    sys.stdout.flush()


def stdin_closed() -> threading.Event:
    """An Event set when stdin reaches EOF (the test closed our stdin: time to go)."""
    closed = threading.Event()

    def watch() -> None:
        try:  # os.read, not sys.stdin: a daemon thread blocked in a buffered read aborts shutdown
            for _ in range(1_000_000):  # bounded; the test never writes much
                if not os.read(0, 4096):
                    break
        except (OSError, ValueError):
            pass
        closed.set()

    threading.Thread(target=watch, name="stdin-watch", daemon=True).start()
    return closed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--network", default=None, help="network_name")
    ap.add_argument("--discovery-port", type=int, required=True, help="service_discovery_port")
    ap.add_argument("--targets", default=None,
                    help="comma-separated service_discovery_targets (default: None = interface broadcast)")
    ap.add_argument("--contact", action="append", default=[], help="a hard-coded contact host:port (repeatable)")
    ap.add_argument("--no-discovery", action="store_true", help="do not start service discovery at all")
    ap.add_argument("--listen", action="store_true",
                    help="start_listening() and set_service_discovery_listen(True), then stay up")
    ap.add_argument("--listen-host", default="0.0.0.0")
    ap.add_argument("--bootstrap", action="store_true", help="bootstrap(user=CrustUser.CLIENT), print the result")
    ap.add_argument("--has-peers", action="store_true", help="print has_peers_on_lan()")
    ap.add_argument("--has-peers-timeout", type=float, default=1.0, help="has_peers_on_lan(timeout=...)")
    ap.add_argument("--bootstrap-timeout", type=float, default=5.0)
    ap.add_argument("--lifetime", type=float, default=10.0, help="hard upper bound on our life, seconds")
    args = ap.parse_args(argv)

    closed = stdin_closed()
    end = time.monotonic() + args.lifetime
    # A watchdog: whatever happens (a hung call included), we are gone shortly after the lifetime.
    watchdog = threading.Timer(args.lifetime + 3.0, lambda: os._exit(3))
    watchdog.daemon = True
    watchdog.start()

    cfg = crust.Config(
        network_name=args.network,
        hard_coded_contacts=args.contact,
        listen_host=args.listen_host,
        service_discovery_port=args.discovery_port,
        service_discovery_targets=None if args.targets is None else tuple(args.targets.split(",")),
        bootstrap_cache_path=None,
        enable_upnp=False,
        enable_udp=False,
        disable_external_reachability_requirement=True,
        handshake_timeout=2.0,
        bootstrap_timeout=args.bootstrap_timeout,
        bootstrap_stagger=0.05,
    )
    status = 0
    svc = crust.Service(cfg)

    def step(where: str, fn: Any) -> bool:
        """Run one step; an exception becomes an "error" line (and exit status 1), not a crash."""
        nonlocal status
        try:
            fn()
            return True
        except Exception as exc:  # reported, not raised: the test reads the error line
            status = 1
            emit("error", where=where, type=type(exc).__name__, message=str(exc))
            traceback.print_exc()
            return False

    def bootstrap() -> None:
        first = svc.bootstrap(user=crust.CrustUser.CLIENT)
        emit("bootstrap", peer_id=str(first), peers=sorted(str(p.id) for p in svc.peers()))

    try:
        emit("id", peer_id=str(svc.id))
        ok = True
        if args.listen:
            ok = step("start_listening",
                      lambda: emit("listening", endpoints=[str(ep) for ep in svc.start_listening()]))
        if not args.no_discovery:
            ok = ok and step("start_service_discovery", lambda: svc.start_service_discovery())
        if args.listen and not args.no_discovery:
            ok = ok and step("set_service_discovery_listen", lambda: svc.set_service_discovery_listen(True))
        if ok:
            emit("ready")
        if ok and args.bootstrap:
            step("bootstrap", bootstrap)
        if ok and args.has_peers:
            step("has_peers_on_lan",
                 lambda: emit("has_peers_on_lan", value=bool(svc.has_peers_on_lan(timeout=args.has_peers_timeout))))
        if ok and args.listen:  # serve until told to stop (stdin closed) or the lifetime ends
            closed.wait(max(0.0, end - time.monotonic()))
    finally:
        step("close", svc.close)
        emit("exit", status=status)
        watchdog.cancel()
    return status


if __name__ == "__main__":
    sys.exit(main())
