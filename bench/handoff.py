#!/usr/bin/env python3
"""What one thread handoff costs here: the floor under crust's round trip.

crust's threading (ARCHITECTURE.md) moves every message across two threads on
each side: the caller's ``send()`` wakes the I/O thread (a byte on a socket
pair, seen by ``epoll``), and the I/O thread hands received messages to the
dispatcher thread (a ``threading.Condition``).  A 100 B round trip therefore
pays four handoffs on top of raw TCP and four AEAD calls.  This script
measures both kinds of handoff in isolation, as ping-pong between two threads
of one process (2000 round trips each, bounded), so docs/performance.md can
say how much of crust's round trip is architecture and how much is crust.

    python bench/handoff.py [--rounds N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import statistics
import threading
import time
from typing import Callable

_TIMEOUT = 10.0  # seconds any one wait may take: the script always ends


def _socket_wakeups(rounds: int) -> list[float]:
    """Round trips where each side wakes the other with a byte that ``epoll`` reports (the reactor's way)."""
    a_in, b_out = socket.socketpair()
    b_in, a_out = socket.socketpair()
    times: list[float] = []

    def echo() -> None:
        sel = selectors.DefaultSelector()
        sel.register(b_in, selectors.EVENT_READ)
        for _ in range(rounds):
            if not sel.select(_TIMEOUT):
                break
            b_in.recv(1)
            b_out.send(b"x")
        sel.close()

    thread = threading.Thread(target=echo)
    thread.start()
    sel = selectors.DefaultSelector()
    sel.register(a_in, selectors.EVENT_READ)
    for _ in range(rounds):
        start = time.perf_counter()
        a_out.send(b"x")
        if not sel.select(_TIMEOUT):
            break
        a_in.recv(1)
        times.append(time.perf_counter() - start)
    thread.join(_TIMEOUT)
    sel.close()
    for sock in (a_in, b_out, b_in, a_out):
        sock.close()
    return times


def _condition_wakeups(rounds: int) -> list[float]:
    """Round trips where each side wakes the other with ``Condition.notify`` (the dispatcher's way)."""
    cond = threading.Condition()
    state = {"ball": 0}
    times: list[float] = []

    def echo() -> None:
        for i in range(rounds):
            with cond:
                if not cond.wait_for(lambda i=i: state["ball"] == 2 * i + 1, _TIMEOUT):
                    return
                state["ball"] += 1
                cond.notify_all()

    thread = threading.Thread(target=echo)
    thread.start()
    for i in range(rounds):
        start = time.perf_counter()
        with cond:
            state["ball"] += 1
            cond.notify_all()
            if not cond.wait_for(lambda i=i: state["ball"] == 2 * i + 2, _TIMEOUT):
                break
        times.append(time.perf_counter() - start)
    thread.join(_TIMEOUT)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args(argv)
    kinds: dict[str, Callable[[int], list[float]]] = {"socket+epoll": _socket_wakeups, "condition": _condition_wakeups}
    results = {}
    for name, run in kinds.items():
        run(100)  # warm-up
        rtts = sorted(run(args.rounds))
        one_way = statistics.median(rtts) / 2 * 1e6
        results[name] = {"median_one_way_us": round(one_way, 1),
                         "p99_one_way_us": round(rtts[int(len(rtts) * 0.99) - 1] / 2 * 1e6, 1), "rounds": len(rtts)}
        print(f"{name:<14} one handoff: median {one_way:6.1f} us, p99 {results[name]['p99_one_way_us']:6.1f} us")
    floor = 2 * (results["socket+epoll"]["median_one_way_us"] + results["condition"]["median_one_way_us"])
    print(f"four handoffs (one round trip through crust's threads): ~{floor:.0f} us")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bench": "handoff", "results": results, "round_trip_floor_us": round(floor, 1)}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
