#!/usr/bin/env python3
"""Python function calls per 100 B round trip through the sans-IO engine and its pump, in process.

Usage::

    python bench/engine_calls.py                                   # this tree
    python bench/engine_calls.py --tree . --tree /work/wt/base-4ad6327   # side by side

Two engines are connected on the tree's own ``tests/simnet.py``; then the
bench takes them over and runs ``--count`` round trips by hand, on one
thread, with no sockets: A sends 100 B, the frame goes to B, B echoes it,
the echo goes back to A.  Each side does what its reactor thread does per
round trip in the real shell: ``Engine.send`` and a pump (whose ``Write``
is reported sent at once, as a TCP socket with room does, so
``handle_sent`` and its pump run inside it), then ``receive_data`` and a
pump.  The pump is the tree's :class:`crust.runtime.driver.Driver` when it
has one, else a copy of 4ad6327's ``Service._pump`` (take effects, write,
take events, ``_arm_timer()``: ``get_timer()``).

Two outputs, per round trip and per side:

* calls: Python function calls and C calls (``sys.setprofile``), grouped by
  the module that runs (Python) or makes (C) them: ``engine``, ``pump``
  (driver / the copy of ``_pump``), ``channel+outbox+wire``, ``cipher``
  (crust.crypto, Crypto, cffi), ``other``, and ``bench`` (the stand-in
  shell's own frames: its clock, transport and events callback).  A count, not a time: it does not
  depend on the machine's load.
* µs: wall time per round trip (both sides), the best of ``--repeat``
  batches without the profiler.

The round trip here leaves out the sockets, the reactor and the
dispatcher thread; it is the engine's share of ``bench/rtt_timeline.py``'s
``crust-io`` CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from typing import Any, Callable

PAYLOAD = b"x" * 100


def _category(filename: str) -> str:
    path = filename.replace(os.sep, "/")
    if "/crust/crypto/" in path or "/Crypto/" in path or "/cffi/" in path:
        return "cipher"
    if "/crust/engine/" in path:
        return "engine"
    if "/crust/runtime/driver" in path:
        return "pump"
    if path.endswith("engine_calls.py"):
        return "bench"
    if path.endswith(("/crust/channel.py", "/crust/outbox.py")) or "/crust/wire/" in path:
        return "channel+outbox+wire"
    return "other"


class _Side:
    """One engine with the pump its tree's shell runs, and a transport that reports writes sent at once."""

    def __init__(self, engine: Any, conn: int, peer: Any, clock: Callable[[], float]) -> None:
        self.engine, self.conn, self.peer, self.clock = engine, conn, peer, clock
        self.wire: list[bytes] = []  # frames written, for the other side
        self.received = 0
        self._timer_at = float("inf")
        self.driver: Any = None
        try:
            from crust.runtime.driver import Driver
        except ImportError:
            return
        loop = _Loop(clock)
        driver = self.driver = Driver(engine, loop)
        driver.attach(self, on_events=self._on_events, on_credit=lambda peer_id, released: None)
        self.pump, self.receive = driver.pump, driver.receive_data  # type: ignore[method-assign]

    # -- the Transport protocol (new trees) -------------------------------------------------------
    def write(self, conn: Any, data: bytes) -> None:
        self.wire.append(data)
        self.driver.handle_sent(conn, len(data))

    def dial(self, *args: Any) -> None:  # pragma: no cover - not on this path
        raise AssertionError("dial")

    def close(self, *args: Any) -> None:  # pragma: no cover
        raise AssertionError("close")

    def send_datagram(self, *args: Any) -> None:  # pragma: no cover
        raise AssertionError("send_datagram")

    def _on_events(self, events: list[Any]) -> None:
        self.received += len(events)

    # -- the round trip's steps -------------------------------------------------------------------
    def send(self) -> None:
        self.engine.send(self.peer, 0, PAYLOAD, self.clock())
        self.pump()

    def receive(self, conn: Any, data: bytes) -> None:
        self.engine.receive_data(conn, data, self.clock())
        self.pump()

    def pump(self) -> None:
        # 4ad6327's Service._pump, re-entrant as it was (on_sent pumped inside the write).
        from crust.effects import Write
        engine = self.engine
        for effect in engine.take_effects():
            if isinstance(effect, Write):
                self.wire.append(effect.data)
                engine.handle_sent(effect.conn, len(effect.data), self.clock())
                self.pump()
        events = engine.take_events()
        if events:
            self._on_events(events)
        self._arm_timer()

    def _arm_timer(self) -> None:
        # 4ad6327's Service._arm_timer: a wakeup is re-armed only when the engine's time is earlier.
        when = self.engine.get_timer()
        if when is None or when >= self._timer_at:
            return
        self._timer_at = when


class _Loop:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.time = clock

    def call_at(self, when: float, fn: Callable[[], object]) -> Any:
        return _Cancel()


class _Cancel:
    def cancel(self) -> None:
        pass


_OLD_PUMP = (_Side.pump.__code__, _Side._arm_timer.__code__)


def _pair() -> tuple[_Side, _Side]:
    sys.path.insert(0, os.getcwd())
    from crust.config import Config
    from crust.ids import Contact
    from tests.simnet import SimNet
    cfg = Config(bootstrap_cache_path=None, disable_external_reachability_requirement=True)
    net = SimNet()
    a, b = net.add("a", cfg), net.add("b", cfg)
    b.engine.start_bootstrap([Contact(net.listen("a"))], now=net.now)
    net.run()
    ea, eb = a.engine, b.engine
    assert ea.is_connected(eb.id) and eb.is_connected(ea.id), "the pair did not connect"
    tick = [net.now]

    def clock() -> float:
        tick[0] += 1e-6
        return tick[0]
    ea.take_events(), eb.take_events()
    return _Side(ea, ea.conn_of(eb.id), eb.id, clock), _Side(eb, eb.conn_of(ea.id), ea.id, clock)


def _round_trip(a: _Side, b: _Side) -> None:
    a.send()
    for frame in a.wire:
        b.receive(b.conn, frame)
    a.wire.clear()
    b.send()
    for frame in b.wire:
        a.receive(a.conn, frame)
    b.wire.clear()


def measure(count: int, repeat: int, functions: Counter[str] | None = None) -> dict[str, Any]:
    """Run in the tree's directory: calls and µs per round trip."""
    a, b = _pair()
    for _ in range(200):
        _round_trip(a, b)
    calls: Counter[str] = Counter()
    c_calls: Counter[str] = Counter()

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            calls["pump" if code in _OLD_PUMP else _category(code.co_filename)] += 1
            if functions is not None:
                functions[f"{os.path.basename(code.co_filename)}:{code.co_name}"] += 1
        elif event == "c_call":
            code = frame.f_code
            c_calls["pump" if code in _OLD_PUMP else _category(code.co_filename)] += 1
    sys.setprofile(profile)
    for _ in range(count):
        _round_trip(a, b)
    sys.setprofile(None)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(count):
            _round_trip(a, b)
        best = min(best, (time.perf_counter() - t0) / count)
    assert a.received and b.received
    per_side = 2 * count
    if functions is not None:
        for name, n in functions.most_common():
            if n >= count and not name.startswith(("_raw_api", "api.py", "ChaCha", "Poly", "_threads")):
                print(f"{n / per_side:6.1f} {name}", file=sys.stderr)
    return {"calls": {k: v / per_side for k, v in calls.items()},
            "c_calls": {k: v / per_side for k, v in c_calls.items()}, "us": best * 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", default=[], help="a crust checkout (repeatable; default .)")
    parser.add_argument("--count", type=int, default=2000, help="round trips per batch (default 2000)")
    parser.add_argument("--repeat", type=int, default=5, help="timed batches per tree, best taken (default 5)")
    parser.add_argument("--functions", action="store_true",
                        help="also list each function called at least once a round trip (calls per side)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.count, args.repeat, Counter() if args.functions else None)))
        return
    trees = [os.path.abspath(t) for t in (args.tree or ["."])]
    results = {}
    for tree in trees:
        command = [sys.executable, os.path.abspath(__file__), "--child", "--count", str(args.count),
                   "--repeat", str(args.repeat)] + (["--functions"] if args.functions else [])
        if args.functions:
            print(f"== {tree}: calls per round trip per side", flush=True)
        out = subprocess.run(command, cwd=tree, env={**os.environ, "PYTHONPATH": tree}, check=True,
                             stdout=subprocess.PIPE, text=True).stdout
        results[tree] = json.loads(out)
    names = [os.path.basename(t) or t for t in trees]
    cats = ["engine", "pump", "channel+outbox+wire", "cipher", "other", "bench"]
    print("per round trip, per side (A and B alike)" + "".join(f" | {n[:18]:>18s}" for n in names))
    for kind, label in (("calls", "Python calls"), ("c_calls", "C calls")):
        for cat in cats:
            print(f"  {label:12s} {cat:27s}" + "".join(f" | {results[t][kind].get(cat, 0.0):18.1f}" for t in trees))
        print(f"  {label:12s} {'total':27s}" + "".join(f" | {sum(results[t][kind].values()):18.1f}" for t in trees))
    print(f"  {'µs per round trip, both sides (best of batches)':40s}" + "".join(f" | {results[t]['us']:18.1f}" for t in trees))


if __name__ == "__main__":
    main()
