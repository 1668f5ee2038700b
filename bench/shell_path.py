#!/usr/bin/env python3
"""What the Service shell costs per 100-byte message, in one thread, without sockets or an engine.

Usage::

    python bench/shell_path.py                              # this tree
    python bench/shell_path.py --against /tmp/before --alternate 5

The per-message Python around the engine, on each side of the 100 B rate
run (``bench/messaging.py``'s phase (b)), each step timed on its own with
the real code and stand-ins for the reactor and the engine:

* ``send``: ``Service.send(peer, 100 B)`` with the peer's send gate open
  (argument checks, ``Flow.send``, ``SendGate.admit``, ``Inbox.put``); the
  reactor is a stand-in whose call queue swallows the posted drain;
* ``event``: building one ``MessageReceived`` (the engine builds one per message);
* ``account``: ``Service._account`` over a reactor turn of 600 such events
  (the receive backlog, the stats, the hand-over list);
* ``deliver``: the dispatcher delivering batches of 600 to a counting
  ``on_message`` (``dispatch="manual"``), with the Service's delivery hook
  (``Flow.delivered``) counting the bytes handed back.

Each figure is the best of several rounds (ns per message).  With
``--against TREE`` the same script runs under ``PYTHONPATH=TREE`` too,
alternating with this tree, and the minimum and median over the runs of
both are printed.  The numbers are CPU-bound and single-threaded, but on a
shared machine a core's other hardware thread can slow a whole run by a
third: the minimum over many runs is the steadier reading.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, ROOT)  # this tree's crust, not an installed one

BATCH = 600  # 100 B messages per 64 KiB frame, about: what one reactor turn hands over
PAYLOAD = b"x" * 100


def _best(run: Callable[[], None], per_run: int, rounds: int = 200) -> float:
    """ns per message: the fastest of ``rounds`` calls of ``run`` (each ``per_run`` messages)."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best / per_run * 1e9


class _Reactor:
    """The reactor's surface the shell touches on these paths: a call queue that swallows, the clock."""

    def call_soon_threadsafe(self, *args: Any) -> None:
        pass

    def call_soon(self, *args: Any) -> None:
        pass

    def in_reactor_thread(self) -> bool:
        return False

    @staticmethod
    def time() -> float:
        return 0.0


def measure() -> dict[str, float]:
    """Time every step once (this process's ``crust``, whichever tree ``PYTHONPATH`` names)."""
    from crust.config import Config
    from crust.dispatch import Dispatcher
    from crust.events import MessageReceived
    from crust.identity import Identity
    from crust.runtime.flow import Flow, SendGate
    from crust.service import Service
    from crust.stats import Tally

    peer = Identity.generate().peer_id
    reactor = _Reactor()
    # A Service with only what send() and _account() read: no threads, no sockets.
    svc: Any = Service.__new__(Service)
    svc._config, svc._closed, svc._reactor = Config(), False, reactor
    flow: Any = Flow(reactor, None, None, send_queue_limit=1 << 62, receive_backlog_limit=8 << 20)  # type: ignore[arg-type]
    flow._gates[peer] = SendGate(peer, 1 << 62)
    svc._flow = flow
    svc._tally, svc._handover, svc._handover_answers, svc._handover_due = Tally(), [], [], True
    flow.received = lambda added: None  # the reactor's pause decision: not on this path's per-message cost

    def sends() -> None:
        flow._sends._items.clear()
        send = svc.send
        for _ in range(BATCH):
            send(peer, PAYLOAD)

    def events() -> None:
        for _ in range(BATCH):
            MessageReceived(peer, PAYLOAD)

    batch = [MessageReceived(peer, PAYLOAD) for _ in range(BATCH)]

    def account() -> None:
        svc._handover = []
        svc._account(batch)

    counted = [0]

    def on_message(peer_id: object, data: bytes) -> None:
        counted[0] += 1

    dispatcher = Dispatcher(manual=True, on_delivered=flow.delivered)
    svc._dispatcher = dispatcher
    svc.on_message(on_message)
    dispatcher.start()

    def deliver() -> None:
        dispatcher.post_many(list(batch))
        dispatcher.run_callbacks()

    return {
        "send": _best(sends, BATCH),
        "event": _best(events, BATCH),
        "account": _best(account, BATCH),
        "deliver": _best(deliver, BATCH),
    }


def _child(tree: str | None) -> dict[str, float]:
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = tree
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--json"], env=env, check=True,
                         capture_output=True, text=True, timeout=300).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--against", metavar="TREE", help="another checkout to compare with, alternating")
    ap.add_argument("--alternate", type=int, default=5, help="runs per tree with --against")
    ap.add_argument("--json", action="store_true", help="print one JSON line (used by --against)")
    args = ap.parse_args()
    if args.json:
        print(json.dumps(measure()))
        return 0
    if not args.against:
        for step, ns in measure().items():
            print(f"{step:8s} {ns:7.0f} ns/msg")
        return 0
    runs: dict[str, list[dict[str, float]]] = {"this": [], "against": []}
    for _ in range(args.alternate):
        runs["this"].append(_child(ROOT))
        runs["against"].append(_child(args.against))
    print(f"ns per 100 B message over {args.alternate} alternating runs per tree (each the best of 200 "
          f"rounds); loadavg {os.getloadavg()[0]:.1f}")
    print(f"{'step':8s} {'this min':>9s} {'against':>8s} {'ratio':>6s}   {'this med':>9s} {'against':>8s} {'ratio':>6s}")
    for step in runs["this"][0]:
        mine, theirs = [r[step] for r in runs["this"]], [r[step] for r in runs["against"]]
        lo, their_lo = min(mine), min(theirs)
        mid, their_mid = statistics.median(mine), statistics.median(theirs)
        print(f"{step:8s} {lo:9.0f} {their_lo:8.0f} {lo / their_lo:6.2f}   {mid:9.0f} {their_mid:8.0f} {mid / their_mid:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
