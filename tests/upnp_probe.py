"""Real-miniupnpc probes for tests/test_upnp_client.py, run INSIDE a lab namespace (never on the host).

SSDP is multicast: these must only ever run under ``ip netns exec`` in a
namespace the test made.  Each prints JSON lines on stdout:

    python tests/upnp_probe.py discover --delay-ms 500 [--multicast-if 10.78.0.1]
        {"event": "discover", "ok": false, "type": "IgdNotFound", "message": "...", "elapsed": 0.51}
    python tests/upnp_probe.py portmapper --delay-ms 500
        {"event": "result", "status": [...], "logs": [[20, "upnp: no IGD found"]], "endpoints": [],
         "state": "failed", "timer": null, "busy": false, "elapsed": 0.52, "stopped": true}
    python tests/upnp_probe.py listen-ssdp --ip 10.78.0.2 --timeout 5
        {"event": "ready"} then {"event": "ssdp", "line": "M-SEARCH * HTTP/1.1", "from": "10.78.0.1"} or
        {"event": "ssdp", "line": null}
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import os
import select
import socket
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from crust.ids import Endpoint, PeerId  # noqa: E402
from crust.nat.upnp import UpnpMapper  # noqa: E402
from crust.transport.reactor import Reactor  # noqa: E402
from crust.runtime.upnp import MiniupnpcIgd, PortMapper  # noqa: E402

SSDP_GROUP, SSDP_PORT = "239.255.255.250", 1900


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def discover(args: argparse.Namespace) -> None:
    igd = MiniupnpcIgd(args.delay_ms, multicast_if=args.multicast_if)
    t0 = time.monotonic()
    try:
        lan = igd.discover()
    except Exception as exc:
        emit("discover", ok=False, type=type(exc).__name__, message=str(exc), elapsed=time.monotonic() - t0)
    else:
        emit("discover", ok=True, lan=lan, elapsed=time.monotonic() - t0)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[tuple[int, str]] = []
        self.first = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.levelno, record.getMessage()))
        if record.levelno >= logging.INFO and record.getMessage().startswith("upnp:"):
            self.first.set()


def portmapper(args: argparse.Namespace) -> None:
    handler = _Records()
    logger = logging.getLogger("crust")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    reactor = Reactor()
    reactor.start()
    pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="crust-worker")
    try:
        mapper = UpnpMapper(PeerId(bytes(32)))
        pm = PortMapper(mapper, MiniupnpcIgd(args.delay_ms), submit=pool.submit,
                        call_soon_threadsafe=reactor.call_soon_threadsafe, call_at=reactor.call_at,
                        clock=reactor.time)
        t0 = time.monotonic()
        reactor.call(lambda: pm.start([Endpoint("0.0.0.0", 40000), Endpoint("0.0.0.0", 40001, "udp")]))
        handler.first.wait(4 * args.delay_ms / 1000 + 10)  # the outcome's report, or give up
        elapsed = time.monotonic() - t0
        state = reactor.call(lambda: (mapper.state.value, mapper.get_timer(), mapper.busy, pm.status,
                                      pm.endpoints), 5.0)
        stopped = threading.Event()
        reactor.call(lambda: pm.stop(stopped.set), 5.0)
        emit("result", status=list(state[3]), logs=handler.records, endpoints=[str(e) for e in state[4]],
             state=state[0], timer=state[1], busy=state[2], elapsed=elapsed, stopped=stopped.wait(10.0))
    finally:
        reactor.stop()
        pool.shutdown(wait=True)


def listen_ssdp(args: argparse.Namespace) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("", SSDP_PORT))
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                     socket.inet_aton(SSDP_GROUP) + socket.inet_aton(args.ip))
        emit("ready")
        if select.select([s], [], [], args.timeout)[0]:
            data, addr = s.recvfrom(4096)
            emit("ssdp", line=data.split(b"\r\n", 1)[0].decode(errors="replace"), **{"from": addr[0]})
        else:
            emit("ssdp", line=None)
    finally:
        s.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("discover")
    p.add_argument("--delay-ms", type=int, default=500)
    p.add_argument("--multicast-if")
    p = sub.add_parser("portmapper")
    p.add_argument("--delay-ms", type=int, default=500)
    p = sub.add_parser("listen-ssdp")
    p.add_argument("--ip", required=True)
    p.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    try:
        {"discover": discover, "portmapper": portmapper, "listen-ssdp": listen_ssdp}[args.mode](args)
    except Exception as exc:
        emit("error", type=type(exc).__name__, message=str(exc))
        sys.exit(1)


if __name__ == "__main__":
    main()
