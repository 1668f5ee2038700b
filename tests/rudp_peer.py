"""One crust peer over reliable UDP only, for the lossy-link lab test (tests/test_rudp_lab.py).

Prints JSON lines on stdout, flushed at once:

    {"event": "listening", "endpoint": "udp://10.78.0.1:40001"}     (--listen HOST)
    {"event": "connected", "peer_id": "<hex>", "transport": "udp"}  (--send CONTACT)
    {"event": "echoed", "count": N, "bytes": B, "match": true, "seconds": S}
    {"event": "error", "type": "...", "message": "..."}

A listener echoes every message back to its sender.  A sender bootstraps off
CONTACT, sends --count messages of --size random bytes, and waits until all
come back.  Lifetime is bounded by --lifetime seconds and by stdin closing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import crust  # noqa: E402

T0 = time.monotonic()


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields, "t": round(time.monotonic() - T0, 3)}) + "\n")
    sys.stdout.flush()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", metavar="HOST")
    ap.add_argument("--send", metavar="CONTACT")
    ap.add_argument("--count", type=int, default=64)
    ap.add_argument("--size", type=int, default=16 * 1024)
    ap.add_argument("--lifetime", type=float, default=60.0)
    args = ap.parse_args()

    config = crust.Config(enable_tcp=False, enable_udp=True, enable_upnp=False, bootstrap_cache_path=None,
                          listen_host=args.listen or "0.0.0.0", disable_external_reachability_requirement=True,
                          hard_coded_contacts=[args.send] if args.send else [], bootstrap_timeout=20.0,
                          handshake_timeout=10.0)
    done = threading.Event()
    received: list[bytes] = []
    cond = threading.Condition()
    svc = crust.Service(config, crust.Identity.generate())
    try:
        if args.listen:
            svc.on_message(lambda peer, data: svc.send(peer, data))
            emit("listening", endpoint=str(svc.start_listening()[0]))
            threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
            done.wait(args.lifetime)
            return 0

        def on_message(peer: crust.PeerId, data: bytes) -> None:
            with cond:
                received.append(data)
                cond.notify_all()

        svc.on_message(on_message)
        peer = svc.bootstrap()
        emit("connected", peer_id=str(peer), transport=svc.peer_info(peer).transport)
        outgoing = [os.urandom(args.size) for _ in range(args.count)]
        start = time.monotonic()
        for data in outgoing:
            svc.send(peer, data)
        with cond:
            cond.wait_for(lambda: len(received) >= args.count, args.lifetime)
        emit("echoed", count=len(received), bytes=sum(map(len, received)), match=received == outgoing,
             seconds=round(time.monotonic() - start, 3))
        return 0
    except Exception as exc:  # reported as a line: the test reads stdout, not a traceback
        emit("error", type=type(exc).__name__, message=str(exc))
        return 1
    finally:
        svc.close()


if __name__ == "__main__":
    sys.exit(main())
