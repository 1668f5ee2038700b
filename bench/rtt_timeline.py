#!/usr/bin/env python3
"""Where one 100 B round trip spends its time: a per-stage timeline of crust's threaded shell.

Usage::

    python bench/rtt_timeline.py                       # this tree, 400 pings
    python bench/rtt_timeline.py --tree . --tree /tmp/before --repeat 3   # side by side, alternating
    python bench/rtt_timeline.py --bare                # no hooks: the plain RTT for reference

Two processes on loopback, each one ``crust.Service`` (TCP only): A pings, B
echoes from its ``on_message`` callback, and A sends the next ping from its
own callback (as ``bench/compare.py``'s rtt phase does).  Before either
Service exists, each process wraps a list of shell functions at run time
(:data:`HOOKS`; nothing in the library is changed) so that entering or
leaving them appends ``(time.perf_counter_ns(), label)`` to a list.
``perf_counter`` is ``CLOCK_MONOTONIC`` on Linux, one clock for both
processes, so the two lists merge into one timeline.

Each round trip is cut out of the merged timeline at A's ping marks; in it,
:data:`STAGES` is matched in order (each stage: its label's first occurrence
after the previous matched stage).  A stage marked *aside* happens on
another thread at the same time (the reactor going back to ``select()``
while the dispatcher wakes): it is matched but does not move the cursor.
The table gives, per stage, the median time since the ping and the median
step from the previous stage that is not aside.  Hooks missing in a tree (older names) are
skipped, and so are their stages.

The hooks cost time too (a Python frame and a clock read each, about
0.3-0.5 µs): compare the hooked total with ``--bare``.

Every run also reports each thread's on-CPU time per round trip (Linux
``/proc/self/task/<tid>/schedstat``); with several trees and ``--repeat``,
the run-by-run ratio of the first tree's median RTT to each other's (runs
next to each other in time share the machine's load).  ``--trace K`` prints
K round trips' raw events (with a few more hooks than the table uses),
``--profile PREFIX`` cProfiles every thread of one run per tree.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import multiprocessing as mp
import os
import selectors
import socket
import statistics
import sys
import threading
import time
from typing import Any, Callable

# (module, attribute path, label on entry or None, label on exit or None)
HOOKS: tuple[tuple[str, str, str | None, str | None], ...] = (
    ("crust.service", "Service.send", "send()", "send() returned"),
    ("crust.transport.reactor", "Inbox.put", "inbox put", None),
    ("crust.transport.reactor", "Reactor.call_soon_threadsafe", "post", None),
    ("crust.transport.reactor", "Reactor._send_wakeup", "wakeup write", None),
    ("crust.transport.reactor", "Reactor._on_wakeup", "wakeup drained", None),  # 4ad6327, 068b6e3
    ("crust.transport.reactor", "Reactor._drain_wakeup", "wakeup drained", None),
    ("crust.transport.reactor", "Reactor._run_timers", "timers", "timers done"),
    ("crust.runtime.flow", "Flow._drain_sends", "drain", "drain done"),
    ("crust.service", "Service._drain_sends", "drain", "drain done"),  # 4ad6327
    ("crust.engine", "Engine.send", None, "engine.send done"),
    ("crust.engine", "Engine.handle_sent", None, "engine.handle_sent done"),
    ("crust.engine", "Engine.receive_data", "engine.receive_data", "engine.receive_data done"),
    ("crust.dispatch", "Dispatcher.post_many", "post_many", "posted"),
    ("crust.dispatch", "Dispatcher._deliver_batch", "dispatcher batch", None),
    ("crust.runtime.driver", "Driver.pump", None, "pump done"),
    ("crust.service", "Service._account", "account", "account done"),  # --trace only
    ("crust.service", "Service._hand_over", "hand over", None),  # --trace only
    ("crust.engine", "Engine.get_timer", "get_timer", "get_timer done"),  # --trace only
    ("crust.engine", "Engine.take_effects", "take_effects", "take_effects done"),  # --trace only
    ("crust.service", "Service._pump", None, "pump done"),  # 4ad6327
)

# (side, label, aside): the round trip in order.
STAGES: tuple[tuple[str, str, bool], ...] = (
    ("A", "ping", False),
    ("A", "send()", False),
    ("A", "post", False),
    ("A", "wakeup write", False),
    ("A", "send() returned", True),
    ("A", "select returned", False),
    ("A", "drain", False),
    ("A", "engine.send done", False),
    ("A", "sock.send", False),
    ("A", "sock.send returned", True),
    ("A", "engine.handle_sent done", True),
    ("A", "drain done", True),
    ("A", "select entered", True),
    ("B", "select returned", False),
    ("B", "recv", False),
    ("B", "engine.receive_data done", False),
    ("B", "pump done", True),
    ("B", "post_many", False),
    ("B", "posted", False),
    ("B", "select entered", True),
    ("B", "cond.wait returned", False),
    ("B", "dispatcher batch", False),
    ("B", "callback", False),
    ("B", "send()", False),
    ("B", "post", False),
    ("B", "wakeup write", False),
    ("B", "send() returned", True),
    ("B", "select returned", False),
    ("B", "drain", False),
    ("B", "engine.send done", False),
    ("B", "sock.send", False),
    ("B", "sock.send returned", True),
    ("B", "engine.handle_sent done", True),
    ("B", "drain done", True),
    ("B", "select entered", True),
    ("A", "select returned", False),
    ("A", "recv", False),
    ("A", "engine.receive_data done", False),
    ("A", "pump done", True),
    ("A", "post_many", False),
    ("A", "posted", False),
    ("A", "select entered", True),
    ("A", "cond.wait returned", False),
    ("A", "dispatcher batch", False),
    ("A", "callback", False),
)

_PAYLOAD_SIZE = 100
_TIMEOUT = 30.0  # seconds any one step of the run may take


class _Recorder:
    """The per-process list of ``(ns, label)``; ``on`` gates recording to the measured pings."""

    def __init__(self) -> None:
        self.events: list[tuple[int, str]] = []
        self.on = False

    def mark(self, label: str) -> None:
        if self.on:
            self.events.append((time.perf_counter_ns(), label))


def _wrap(fn: Callable[..., Any], rec: _Recorder, enter: str | None, leave: str | None) -> Callable[..., Any]:
    clock, events = time.perf_counter_ns, rec.events

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if enter is not None and rec.on:
            events.append((clock(), enter))
        result = fn(*args, **kwargs)
        if leave is not None and rec.on:
            events.append((clock(), leave))
        return result

    return wrapper


def _install(rec: _Recorder) -> list[str]:
    """Wrap every hook present in the imported crust (and the socket calls); returns the ones applied."""
    applied = []
    for module_name, path, enter, leave in HOOKS:
        try:
            owner: Any = importlib.import_module(module_name)
        except ImportError:
            continue
        *parents, name = path.split(".")
        try:
            for part in parents:
                owner = getattr(owner, part)
            fn = owner.__dict__[name]
        except (AttributeError, KeyError):
            continue
        setattr(owner, name, _wrap(fn, rec, enter, leave))
        applied.append(path)
    events, clock = rec.events, time.perf_counter_ns

    # One byte is the reactor's wakeup: only the stream's bytes count.
    def send(self: socket.socket, data: Any, *args: Any) -> int:
        if not (rec.on and len(data) > 1):
            return orig_send(self, data, *args)
        events.append((clock(), "sock.send"))
        sent = orig_send(self, data, *args)
        events.append((clock(), "sock.send returned"))
        return sent

    def recv(self: socket.socket, *args: Any) -> bytes:
        data = orig_recv(self, *args)
        if rec.on and len(data) > 1:
            events.append((clock(), "recv"))
        return data

    orig_send, orig_recv = socket.socket.send, socket.socket.recv
    socket.socket.send = send  # type: ignore[method-assign,assignment]
    socket.socket.recv = recv  # type: ignore[method-assign,assignment]

    selector_type = type(selectors.DefaultSelector())
    orig_select = selector_type.select

    def select(self: Any, timeout: float | None = None) -> Any:
        if rec.on:
            events.append((clock(), "select entered"))
        ready = orig_select(self, timeout)
        if rec.on and ready:
            events.append((clock(), "select returned"))
        return ready

    selector_type.select = select  # type: ignore[method-assign]

    orig_wait = threading.Condition.wait

    def wait(self: threading.Condition, timeout: float | None = None) -> bool:
        woke = orig_wait(self, timeout)
        if rec.on and threading.current_thread().name.startswith("crust-dispatch"):
            events.append((clock(), "cond.wait returned"))
        return woke

    threading.Condition.wait = wait  # type: ignore[method-assign]
    return applied


def _thread_cpu() -> dict[str, int]:
    """On-CPU nanoseconds so far of each thread of this process, by thread name (Linux schedstat; {} elsewhere)."""
    out = {}
    for thread in threading.enumerate():
        try:
            with open(f"/proc/self/task/{thread.native_id}/schedstat") as f:
                out[thread.name.split("_")[0]] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return out


def _cpu_since(before: dict[str, int]) -> dict[str, int]:
    now = _thread_cpu()
    return {name: ns - before.get(name, 0) for name, ns in now.items()}


def _config(**extra: Any) -> Any:
    import crust

    return crust.Config(listen_host="127.0.0.1", bootstrap_cache_path=None, enable_upnp=False, enable_tcp=True,
                        enable_udp=False, **extra)


def _child(role: str, tree: str, conn: Any, hooks: bool, count: int, warmup: int, nice: int,
           profile: str | None = None) -> None:
    if nice:
        os.nice(nice)
    if profile:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import messaging  # bench/messaging.py: cProfile per thread

        dump = messaging._install_cprofile()
        try:
            _child(role, tree, conn, hooks, count, warmup, 0)
        finally:
            dump(f"{profile}-{role}")
        return
    sys.path.insert(0, tree)
    rec = _Recorder()
    applied = _install(rec) if hooks else []
    import crust

    if role == "B":
        svc = crust.Service(_config())

        @svc.on_message
        def echo(peer: Any, data: bytes) -> None:
            rec.mark("callback")
            svc.send(peer, data)

        try:
            conn.send(("ready", str(svc.start_listening()[0]), applied))
            conn.recv()  # ("arm",)
            rec.on = hooks
            cpu0 = _thread_cpu()
            conn.send(("armed",))
            conn.recv()  # ("collect",)
            rec.on = False
            conn.send(("events", rec.events, _cpu_since(cpu0)))
            conn.recv()  # ("quit",)
        finally:
            svc.close()
        return

    _, addr = conn.recv()
    svc = crust.Service(_config(hard_coded_contacts=[addr]))
    perf = time.perf_counter_ns
    state: dict[str, Any] = {"left": warmup + count, "t": 0, "rtts": [], "done": threading.Event(), "peer": None}
    payload = os.urandom(_PAYLOAD_SIZE)

    def on_message(peer: Any, data: bytes) -> None:
        now = perf()
        rec.mark("callback")
        state["left"] -= 1
        if state["left"] < count:
            state["rtts"].append(now - state["t"])
        if state["left"] == count:
            rec.on = hooks  # warm-up over: record from the next ping on
        if state["left"] > 0:
            rec.mark("ping")
            state["t"] = perf()
            svc.send(peer, payload)
        else:
            rec.on = False
            state["done"].set()

    svc.on_message(on_message)
    try:
        svc.start_listening()
        peer = svc.bootstrap(timeout=10.0)
        conn.send(("ready", None, applied))
        conn.recv()  # ("go",)
        cpu0 = _thread_cpu()
        state["t"] = perf()
        svc.send(peer, payload)
        if not state["done"].wait(_TIMEOUT):
            raise RuntimeError("ping-pong did not finish")
        cpu = _cpu_since(cpu0)
        conn.send(("events", rec.events, state["rtts"], cpu))
        conn.recv()  # ("quit",)
    finally:
        svc.close()


def _expect(conn: Any, tag: str) -> Any:
    if not conn.poll(_TIMEOUT):
        raise RuntimeError(f"no {tag!r} from a child within {_TIMEOUT} s")
    msg = conn.recv()
    if msg[0] != tag:
        raise RuntimeError(f"expected {tag!r}, got {msg!r}")
    return msg


def run(tree: str, count: int, warmup: int, hooks: bool, nice: int = 0,
        profile: str | None = None) -> tuple[list[tuple[int, str]], list[int], list[str], dict[str, float]]:
    """One ping-pong of ``count`` measured pings (after ``warmup``).

    Returns:
        The merged timeline, A's RTTs (ns), the hooks applied, and the on-CPU µs per round trip
        (warm-up included) of each thread, as ``"A:crust-io"`` etc.
    """
    ctx = mp.get_context("spawn")
    pipes = {side: ctx.Pipe() for side in "AB"}
    procs = {side: ctx.Process(target=_child, args=(side, tree, pipes[side][1], hooks, count, warmup, nice, profile), daemon=True)
             for side in "AB"}
    conn_a, conn_b = pipes["A"][0], pipes["B"][0]
    try:
        for proc in procs.values():
            proc.start()
        _, addr, applied = _expect(conn_b, "ready")
        conn_a.send(("addr", addr))
        _expect(conn_a, "ready")
        conn_b.send(("arm",))
        _expect(conn_b, "armed")
        conn_a.send(("go",))
        _, events_a, rtts, cpu_a = _expect(conn_a, "events")
        conn_b.send(("collect",))
        _, events_b, cpu_b = _expect(conn_b, "events")
        for conn in (conn_a, conn_b):
            conn.send(("quit",))
        for proc in procs.values():
            proc.join(_TIMEOUT)
    finally:
        for proc in procs.values():
            if proc.is_alive():
                proc.kill()
                proc.join(5.0)
    merged = sorted([(t, "A:" + label) for t, label in events_a] + [(t, "B:" + label) for t, label in events_b])
    per_trip = {f"{side}:{name}": ns / 1e3 / (count + warmup)
                for side, cpu in (("A", cpu_a), ("B", cpu_b)) for name, ns in cpu.items()}
    return merged, rtts, applied, per_trip


def timeline(merged: list[tuple[int, str]]) -> list[dict[int, int]]:
    """Cut the merged events at A's ping marks; per round trip, the time of every stage matched (by index)."""
    trips: list[list[tuple[int, str]]] = []
    for t, label in merged:
        if label == "A:ping":
            trips.append([])
        if trips:
            trips[-1].append((t, label))
    out = []
    for trip in trips[:-1]:  # the last one may be cut short
        found: dict[int, int] = {}
        i = 0
        for idx, (side, label, aside) in enumerate(STAGES):
            key = f"{side}:{label}"
            j = next((k for k in range(i, len(trip)) if trip[k][1] == key), None)
            if j is None:
                continue
            found[idx] = trip[j][0]
            if not aside:
                i = j + 1
        out.append(found)
    return out


def raw_trips(merged: list[tuple[int, str]], k: int) -> str:
    """The raw events of ``k`` round trips from the middle of the run, µs since each ping."""
    pings = [i for i, (_, label) in enumerate(merged) if label == "A:ping"]
    lines = []
    for n in range(len(pings) // 2, min(len(pings) - 1, len(pings) // 2 + k)):
        t0 = merged[pings[n]][0]
        lines += [f"{(t - t0) / 1e3:9.1f}  {label}" for t, label in merged[pings[n]:pings[n + 1]]] + ["--"]
    return "\n".join(lines)


def _stage_medians(trips: list[dict[int, int]]) -> dict[int, tuple[int, float, float | None]]:
    """Per stage index: (n, median µs since the ping, median µs since the previous non-aside stage)."""
    out = {}
    for idx in range(len(STAGES)):
        since, steps = [], []
        for trip in trips:
            if idx not in trip or 0 not in trip:
                continue
            since.append(trip[idx] - trip[0])
            prev = next((k for k in range(idx - 1, -1, -1) if not STAGES[k][2] and k in trip), None)
            if prev is not None:
                steps.append(trip[idx] - trip[prev])
        if since:
            out[idx] = (len(since), statistics.median(since) / 1e3, statistics.median(steps) / 1e3 if steps else None)
    return out


def report(runs: list[tuple[str, list[dict[int, int]], list[int]]]) -> str:
    """The stage table, one (since ping, step) column pair per tree: medians in µs."""
    tables = [_stage_medians(trips) for _, trips, _ in runs]
    head = f"{'stage':34}" + "".join(f" | {'since':>7} {'step':>6}" for _ in runs)
    lines = [f"{'':34}" + "".join(f" | {os.path.basename(tree.rstrip('/'))[-14:]:>14}" for tree, _, _ in runs), head]
    for idx, (side, label, aside) in enumerate(STAGES):
        if not any(idx in table for table in tables):
            continue
        row = f"{side}:{label}{' (aside)' if aside else ''}"
        row = f"{row:34}"
        for table in tables:
            if idx not in table:
                row += f" | {'-':>7} {'':>6}"
                continue
            _, since, step = table[idx]
            row += f" | {since:7.1f} {'' if step is None else f'{step:6.1f}':>6}"
        lines.append(row)
    for tree, _, rtts in runs:
        us = sorted(r / 1e3 for r in rtts)
        lines.append(f"{tree}: RTT median {statistics.median(us):.1f} µs (p10 {us[len(us) // 10]:.1f}, "
                     f"p90 {us[len(us) * 9 // 10]:.1f}), {len(us)} pings")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tree", action="append", default=[],
                        help="a checkout whose crust runs (repeatable; default: this one)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per tree, alternating between trees (default 1)")
    parser.add_argument("--count", type=int, default=400, help="measured pings per run (default 400)")
    parser.add_argument("--warmup", type=int, default=200, help="pings before recording (default 200)")
    parser.add_argument("--bare", action="store_true", help="no hooks: only the RTTs")
    parser.add_argument("--nice", type=int, default=0,
                        help="niceness increment for the two processes (root may give a negative one: less noise "
                             "from other work on a shared machine)")
    parser.add_argument("--profile", metavar="PREFIX",
                        help="cProfile every thread of one run per tree: PREFIX-<tree>-<A|B>-<thread>.prof "
                             "(slow: times are cProfile's, the call counts are what to read)")
    parser.add_argument("--trace", type=int, default=0, metavar="K", help="also print K round trips' raw events")
    args = parser.parse_args()
    trees = [os.path.abspath(t) for t in args.tree] or [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    trips: dict[str, list[dict[int, int]]] = {tree: [] for tree in trees}
    rtts: dict[str, list[int]] = {tree: [] for tree in trees}
    run_medians: dict[str, list[float]] = {tree: [] for tree in trees}
    cpus: dict[str, dict[str, list[float]]] = {tree: {} for tree in trees}
    for i in range(args.repeat):
        for tree in (trees if i % 2 == 0 else trees[::-1]):  # A B C, C B A, ...
            profile = f"{args.profile}-{os.path.basename(tree)}" if args.profile and i == 0 else None
            merged, run_rtts, applied, cpu = run(tree, args.count, args.warmup, not args.bare, args.nice, profile)
            for name, us in cpu.items():
                cpus[tree].setdefault(name, []).append(us)
            trips[tree] += timeline(merged)
            rtts[tree] += run_rtts
            run_medians[tree].append(statistics.median(run_rtts) / 1e3)
            if args.trace:
                print(f"{tree}:\n{raw_trips(merged, args.trace)}")
    print(f"load {os.getloadavg()[0]:.2f} (1 min); hooks on: {not args.bare}")
    print(report([(tree, trips[tree], rtts[tree]) for tree in trees]))
    for tree in trees:
        print(f"{tree}: run medians (µs) {', '.join(f'{m:.0f}' for m in run_medians[tree])}; "
              f"their median {statistics.median(run_medians[tree]):.1f}")
        threads = {name: statistics.median(v) for name, v in sorted(cpus[tree].items()) if statistics.median(v) >= 1}
        print(f"    on-CPU µs per round trip (median of runs): "
              + ", ".join(f"{name} {us:.1f}" for name, us in threads.items()) + f"; total {sum(threads.values()):.1f}")
    if len(trees) > 1 and args.repeat > 1:  # neighbours in time share the machine's load: compare them in pairs
        for tree in trees[1:]:
            ratios = [a / b for a, b in zip(run_medians[trees[0]], run_medians[tree])]
            print(f"{trees[0]} / {tree}: run-by-run ratio median {statistics.median(ratios):.3f} "
                  f"({sum(r < 1 for r in ratios)} of {len(ratios)} runs faster)")


if __name__ == "__main__":
    main()
