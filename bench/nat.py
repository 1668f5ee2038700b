#!/usr/bin/env python3
"""NAT traversal matrix: crust ``connect()`` between peers behind the lab's real Linux NATs.

    sudo python bench/nat.py                      # all 10 pairs x {both, udp}, 20 tries each (~5-6 min)
    sudo python bench/nat.py --quick              # 3 tries per cell (~1-2 min)
    sudo python bench/nat.py --pairs fc-sy,pr-pr --modes udp --tries 50 --json nat.json
    sudo python bench/nat.py --reuse              # tries reuse two peers, disconnecting in between
    sudo python bench/nat.py --skew 1             # one side calls connect() a second after the other
    sudo python bench/nat.py --relay-rate 67108864  # the seed relays at 64 MiB/s per circuit, not 1 MiB/s
    sudo python bench/nat.py --no-relay           # the seed does not relay: the two unpunchable pairs fail

Needs root (network namespaces; exits 2 otherwise, even for ``--help``) and ``nft``.  The lab is
tests/natlab.py's, driven through tests/natworld.py exactly as the NAT lab
tests drive it: an internet with a seed and a second observer, and home
routers of the four types (full-cone ``fc``, restricted ``rc``,
port-restricted ``pr``, symmetric ``sy``; TESTLAB.md says how each is built).
``--lanes`` independent sets of two routers per type run tries in parallel.
The seed relays (``Config.relay``, at ``--relay-rate`` bytes/s per circuit,
crust's default 1 MiB/s unless told), so the pairs no punch can join
(symmetric with port-restricted or symmetric) connect through it after
crust's ``RELAY_GRACE``; ``--no-relay`` turns that off.

A **try** (default): two fresh peer processes behind the cell's two routers
bootstrap off the seed as Clients (they do not listen: whatever connects was
punched or relayed), swap connection info and call ``connect(timeout=--timeout)``
at the same time.  If that first attempt fails, the same two peers try again
with fresh info, up to ``--attempts`` in all (libp2p DCUtR's count); a cell the
matrix says cannot connect (``--no-relay``) gets one attempt.  A success is both sides connected
to each other and a 1000-byte message crossing each way.  **First-try
success** is the share of tries whose first attempt (the very first
``connect()`` between two fresh peers) succeeded; **success** allows the
retries.  **Time to connect** runs from both ``connect()`` calls issued to both
answers read; median and p95 (nearest rank) over the successful attempts.

With ``--reuse`` the two peers of a cell are started once and every try after
the first is a reconnect: one side ``disconnect()``s, both see ``on_lost``,
then the next try swaps fresh info.  With ``--skew S`` one side calls
``connect()`` S seconds after the other (each side first in every other try)
and the time runs from the second call.

**Throughput and round trips**: the first ``--perf-tries`` successful tries
of each cell (default 1) then measure, over the connection they made, the
median of ``--pings`` sequential 64-byte round trips (50) and ``--perf-mib``
MiB (8) sent one way in 1 MiB messages, timed on the sender from the first
send to the receiver's acknowledgement of the last (nat_peer.py's ``ping``
and ``blast``; every peer runs ``--echo``).  A table per transport (direct
TCP, punched UDP, relayed) follows the matrix.

Modes: ``both`` (TCP and UDP enabled: TCP simultaneous open and UDP punching
race, TCP preferred) and ``udp`` (``enable_tcp=False``: UDP punching, rUDP).
Prints a markdown table per mode and, last, one JSON line (``--json PATH``
also writes it, with every attempt).  Every wait is bounded; ``--budget``
bounds the whole run (tries not started by then are reported as skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
NEED_ROOT = "bench/nat.py needs root: it builds network namespaces (run it with sudo)"
if __name__ == "__main__" and os.geteuid() != 0:  # before the lab's imports, which may not even load
    print(NEED_ROOT, file=sys.stderr)
    sys.exit(2)

import pytest  # noqa: E402  (tests/natworld.py reports a broken peer with pytest.fail)

from tests.natlab import NatLab, natlab_unavailable_reason  # noqa: E402
from tests.natworld import Attempt, Peer, World, attempt, exchange  # noqa: E402

TYPES = ("fc", "rc", "pr", "sy")
NAMES = {"fc": "full-cone", "rc": "restricted", "pr": "port-restricted", "sy": "symmetric"}
PAIRS = [f"{x}-{y}" for i, x in enumerate(TYPES) for y in TYPES[i:]]
MODES = {"both": (), "udp": ("--no-tcp",)}
MAX_TCP_PUNCH_TARGETS = 4  # crust.engine.punch: TCP punch endpoints dialled per connect
DEFAULT_RELAY_RATE = 1024 * 1024  # crust.Config.relay_max_bytes_per_s's default
PERF_TIME = 150.0  # seconds a try's peers may spend on the throughput and round-trip measurement
FAIL_MARGIN = 1.0  # seconds past --timeout a failing connect() may take to say so
HARNESS_RETRIES = 2  # a try whose peers did not start or bootstrap is run again this often


def expected(pair: str, mode: str, relay: bool = True) -> str | None:
    """The transport the lab's matrix says should connect (TESTLAB.md), or None: cannot connect.

    Args:
        pair: ``"ta-tb"``, two router types.
        mode: ``both`` or ``udp``.
        relay: whether the seed, the peers' mutual peer, relays.
    """
    ta, tb = pair.split("-")
    if {ta, tb} in ({"pr", "sy"}, {"sy"}):  # both filter by port, and the symmetric port is random
        return "relay" if relay else None
    return "tcp" if mode == "both" and "sy" not in (ta, tb) else "udp"


@dataclass
class Try:
    """One try of one cell: its attempts and what came of them."""

    pair: str
    mode: str
    index: int
    lane: int = -1
    attempts: list[dict[str, Any]] = field(default_factory=list)
    harness: list[str] = field(default_factory=list)  # peers that did not start/bootstrap (re-run)
    perf: dict[str, Any] | None = None  # the throughput and round trips measured after its success
    skipped: bool = False

    @property
    def ok(self) -> bool:
        return any(a["ok"] for a in self.attempts)

    @property
    def first_ok(self) -> bool:
        return bool(self.attempts) and self.attempts[0]["ok"]


def named_every_candidate(failure: dict[str, Any], theirs: dict[str, Any]) -> bool:
    """Whether a ConnectError's reasons name each candidate of the other side's info."""
    reasons = failure.get("reasons") or {}
    wanted = [f"tcp-punch {ep}" for ep in theirs.get("tcp_punch", [])[:MAX_TCP_PUNCH_TARGETS]]
    wanted += [str(ep) for ep in theirs.get("listeners", [])]
    if theirs.get("udp_punch"):
        wanted.append("udp-punch")
    return failure.get("type") == "ConnectError" and all(key in reasons for key in wanted)


def judge(world: World, a: Peer, b: Peer, ra: str, rb: str, result: Attempt, timeout: float) -> dict[str, Any]:
    """One attempt as a JSON-able record; a success must also carry a message each way."""
    record: dict[str, Any] = {"ok": False, "seconds": round(result.seconds, 3), "sides": [result.a, result.b]}
    if result.connected:
        assert result.a is not None and result.b is not None
        record["transport"] = result.a["transport"] if result.a["transport"] == result.b["transport"] else "mixed"
        record["peer_seconds"] = [result.a["seconds"], result.b["seconds"]]
        # Through the NATs: each side reached the other's router (or, relayed, the seed), not some other path.
        wan = [world.lab.routers[r].wan_ip for r in (rb, ra)]
        if record["transport"] == "relay":
            wan = [str(world.seed_ip)] * 2
        record["through_nat"] = all(side["addr"].split("//")[-1].startswith(ip + ":")
                                    for side, ip in zip((result.a, result.b), wan))
        try:
            exchange(a, b)
            record["ok"] = True
        except (pytest.fail.Exception, AssertionError) as exc:
            record["exchange_failed"] = str(exc)[:300]
        return record
    failures = [(side, theirs) for side, theirs in ((result.a, result.info_b), (result.b, result.info_a))]
    record["clean"] = all(side is not None and side["event"] == "error" and named_every_candidate(side, theirs)
                          for side, theirs in failures)
    record["in_time"] = result.seconds <= timeout + FAIL_MARGIN
    return record


class Bench:
    """The lab, its lanes of routers, and the tries."""

    def __init__(self, world: World, lanes: int, args: argparse.Namespace) -> None:
        self.world = world
        self.args = args
        # Lane k: two routers of each type (lane 0 is the World's own fc1/fc2, ...).
        self.lanes = [{t: (f"{t}1", f"{t}2") for t in TYPES}]
        for k in range(1, lanes):
            self.lanes.append({t: (world.add_router(t, 2 * k + 1), world.add_router(t, 2 * k + 2)) for t in TYPES})
        self.deadline = time.monotonic() + args.budget
        self.perf_left: dict[tuple[str, str], int] = {}  # cell -> measurements still to take
        self.perf_lock = threading.Lock()

    def expected(self, t: Try) -> str | None:
        return expected(t.pair, t.mode, not self.args.no_relay)

    def peers(self, ra: str, rb: str, mode: str, lifetime: float) -> tuple[Peer, Peer]:
        """Two fresh peers behind ``ra`` and ``rb``, started and bootstrapped in parallel."""
        extra = (*MODES[mode], "--echo", "--lifetime", str(round(lifetime + PERF_TIME)))
        with ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(self.world.client, r, *extra) for r in (ra, rb)]
            started = [f.exception() is None and f.result() for f in futures]
            if not all(started):
                self.world.stop(*(p for p in started if isinstance(p, Peer)))
                raise next(f.exception() for f in futures if f.exception() is not None)  # type: ignore[misc]
        return started[0], started[1]  # type: ignore[return-value]

    def connect(self, t: Try, a: Peer, b: Peer, ra: str, rb: str) -> None:
        """Up to --attempts attempts (one for a cell that cannot punch), stopping at the first success."""
        attempts = self.args.attempts if self.expected(t) is not None else 1
        if t.index % 2:  # with --skew, every other try the second router's peer calls connect() first
            a, b, ra, rb = b, a, rb, ra
        for _ in range(attempts):
            result = attempt(a, b, self.args.timeout, self.args.skew)
            t.attempts.append(judge(self.world, a, b, ra, rb, result, self.args.timeout))
            t.attempts[-1]["first"] = ra
            if t.attempts[-1]["ok"]:
                self.measure(t, a, b)
                return

    def measure(self, t: Try, a: Peer, b: Peer) -> None:
        """Round trips and one-way throughput from ``a`` to ``b``, if the cell still wants a measurement."""
        with self.perf_lock:
            left = self.perf_left.setdefault((t.pair, t.mode), self.args.perf_tries)
            if left <= 0:
                return
            self.perf_left[(t.pair, t.mode)] = left - 1
        perf: dict[str, Any] = {"transport": t.attempts[-1]["transport"]}
        try:
            pinged = a.call("ping", "pinged", PERF_TIME / 2, peer=b.id, count=self.args.pings, within=PERF_TIME / 2)
            perf.update(rtt_ms=pinged["median_ms"], rtt_min_ms=pinged["min_ms"], rtt_max_ms=pinged["max_ms"])
            blasted = a.call("blast", "blasted", PERF_TIME / 2, peer=b.id, count=self.args.perf_mib,
                             size=1024 * 1024, within=PERF_TIME / 2)
            perf.update(mib_per_s=blasted["mib_per_s"], blast_s=blasted["seconds"], blast_bytes=blasted["bytes"])
        except pytest.fail.Exception as exc:
            perf["failed"] = str(exc)[:300]
            with self.perf_lock:  # let a later try of the cell measure instead
                self.perf_left[(t.pair, t.mode)] += 1
        t.perf = perf

    def fresh(self, t: Try, lane: dict[str, tuple[str, str]]) -> None:
        ta, tb = t.pair.split("-")
        ra, rb = lane[ta][0], lane[tb][1]
        for _ in range(1 + HARNESS_RETRIES):
            try:
                a, b = self.peers(ra, rb, t.mode, self.args.attempts * (self.args.timeout + self.args.skew + 10) + 60)
            except pytest.fail.Exception as exc:
                t.harness.append(str(exc)[:300])
                continue
            try:
                self.connect(t, a, b, ra, rb)
            finally:
                self.world.stop(a, b)
            return

    def session(self, tries: list[Try], lane: dict[str, tuple[str, str]]) -> None:
        """--reuse: one pair of peers for every try of a cell, disconnecting between tries."""
        ta, tb = tries[0].pair.split("-")
        ra, rb = lane[ta][0], lane[tb][1]
        life = len(tries) * self.args.attempts * (self.args.timeout + self.args.skew + 15) + 60
        try:
            a, b = self.peers(ra, rb, tries[0].mode, life)
        except pytest.fail.Exception as exc:
            tries[0].harness.append(str(exc)[:300])
            return
        try:
            for t in tries:
                if time.monotonic() > self.deadline:
                    t.skipped = True
                    continue
                t.lane = tries[0].lane
                self.connect(t, a, b, ra, rb)
                progress(t, self.expected(t))
                if t.ok and not self.disconnect(a, b):
                    t.harness.append("disconnect: on_lost not seen on both sides")
                    break
        finally:
            self.world.stop(a, b)

    @staticmethod
    def disconnect(a: Peer, b: Peer) -> bool:
        a.call("disconnect", "disconnected", peer=b.id)
        lost = [p.outcome("lost", 20.0) for p in (a, b)]
        return all(e is not None and e["event"] == "lost" for e in lost)

    def run(self, tries: list[Try]) -> None:
        """Run every try, one lane per worker thread."""
        if self.args.reuse:  # a job is a cell's whole session; the long ones (cells that fail) first
            cells = sorted(dict.fromkeys((t.pair, t.mode) for t in tries),
                           key=lambda c: expected(c[0], c[1], not self.args.no_relay) not in (None, "relay"))
            jobs: list[Any] = [[t for t in tries if (t.pair, t.mode) == cell] for cell in cells]
        else:  # a job is one try; round-robin over the cells so that load drifts hit them alike
            jobs = sorted(tries, key=lambda t: t.index)
        lock = threading.Lock()

        def worker(k: int) -> None:
            lane = self.lanes[k]
            for _ in range(len(jobs)):
                with lock:
                    if not jobs:
                        return
                    job = jobs.pop(0)
                if self.args.reuse:
                    job[0].lane = k
                    self.session(job, lane)
                elif time.monotonic() > self.deadline:
                    job.skipped = True
                else:
                    job.lane = k
                    self.fresh(job, lane)
                    progress(job, self.expected(job))

        with ThreadPoolExecutor(len(self.lanes)) as pool:
            futures = [pool.submit(worker, k) for k in range(len(self.lanes))]
            try:
                for future in futures:
                    future.result()
            except KeyboardInterrupt:  # no new try starts; those running end within their timeouts
                self.deadline = 0.0
                sys.stderr.write("\ninterrupted: finishing the tries under way\n")
                raise


_done = [0]


def progress(t: Try, want: str | None) -> None:
    _done[0] += 1
    mark = "." if t.first_ok else ("r" if t.ok else ("x" if want is None else "F"))
    sys.stderr.write(mark if _done[0] % 80 else mark + "\n")
    sys.stderr.flush()


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarise(tries: list[Try], relay: bool) -> list[dict[str, Any]]:
    """One row per cell."""
    rows = []
    for cell in dict.fromkeys((t.pair, t.mode) for t in tries):
        ran = [t for t in tries if (t.pair, t.mode) == cell and t.attempts]
        pair, mode = cell
        oks = [a for t in ran for a in t.attempts if a["ok"]]
        fails = [a for t in ran for a in t.attempts if not a["ok"]]
        times = [a["seconds"] for a in oks]
        peer_times = [max(a["peer_seconds"]) for a in oks]
        via: dict[str, int] = {}
        for a in oks:
            via[a["transport"]] = via.get(a["transport"], 0) + 1
        perfs = [t.perf for t in ran if t.perf and "failed" not in t.perf]
        rows.append({
            "pair": pair, "mode": mode, "expected": expected(pair, mode, relay) or "fail",
            "tries": len(ran), "success": sum(t.ok for t in ran), "first_try": sum(t.first_ok for t in ran),
            "attempts": sum(len(t.attempts) for t in ran), "via": via,
            "median_s": statistics.median(times) if times else None,
            "p95_s": percentile(times, 0.95) if times else None,
            "max_s": max(times) if times else None,
            "peer_median_s": statistics.median(peer_times) if peer_times else None,
            "through_nat": all(a.get("through_nat") for a in oks),
            "failures": len(fails),
            "fail_median_s": statistics.median(a["seconds"] for a in fails) if fails else None,
            "fail_clean": sum(bool(a.get("clean")) for a in fails),
            "fail_in_time": sum(bool(a.get("in_time")) for a in fails),
            "harness_reruns": sum(len(t.harness) for t in tries if (t.pair, t.mode) == cell),
            "skipped": sum(t.skipped for t in tries if (t.pair, t.mode) == cell),
            "perf": perfs,
            "perf_failed": [t.perf["failed"] for t in ran if t.perf and "failed" in t.perf],
            "rtt_ms": statistics.median(p["rtt_ms"] for p in perfs) if perfs else None,
            "mib_per_s": statistics.median(p["mib_per_s"] for p in perfs) if perfs else None,
        })
    return rows


def table(rows: list[dict[str, Any]], mode: str, timeout: float) -> str:
    def pct(k: int, n: int) -> str:
        return f"{k}/{n} ({100 * k / n:.0f} %)" if n else "–"

    def sec(x: float | None) -> str:
        return "–" if x is None else f"{x:.2f}"

    out = [f"mode **{mode}** ({'TCP + UDP' if mode == 'both' else 'UDP only'}), connect timeout {timeout:g} s",
           "", "| pair | expected | success | first try | via | median s | p95 s | RTT ms | MiB/s | failures |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["mode"] != mode:
            continue
        via = ", ".join(f"{k} {v}" for k, v in sorted(r["via"].items())) or "–"
        fails = "–"
        if r["failures"]:
            fails = (f"{r['failures']}: median {r['fail_median_s']:.1f} s, in time {r['fail_in_time']}, "
                     f"ConnectError naming every candidate {r['fail_clean']}")
        if not r["through_nat"]:
            via += " (not all through the NATs!)"
        out.append(f"| {r['pair']} | {r['expected']} | {pct(r['success'], r['tries'])} | "
                   f"{pct(r['first_try'], r['tries'])} | {via} | {sec(r['median_s'])} | {sec(r['p95_s'])} | "
                   f"{sec(r['rtt_ms'])} | {sec(r['mib_per_s'])} | {fails} |")
    return "\n".join(out)


def perf_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Round trips and throughput per mode and transport (direct TCP, punched UDP, relayed), over every measurement.

    A relayed connection rides the peers' links to the seed: TCP in mode ``both``, rUDP in mode ``udp``.
    """
    out = [f"round trips ({args.pings} x 64 B, sequential) and throughput ({args.perf_mib} x 1 MiB one way), "
           f"relay rate {rate_name(args)}", "",
           "| mode | transport | measurements | RTT ms: median of their medians (range) | MiB/s: median (range) |",
           "|---|---|---|---|---|"]
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        for p in r["perf"]:
            by.setdefault((r["mode"], p["transport"]), []).append(p)
    for (mode, transport), perfs in by.items():
        rtts, rates = [p["rtt_ms"] for p in perfs], [p["mib_per_s"] for p in perfs]
        links = {"both": " (links to the relay: TCP)", "udp": " (links to the relay: rUDP)"}[mode] if transport == "relay" else ""
        out.append(f"| {mode} | {transport}{links} | {len(perfs)} | {statistics.median(rtts):.2f} "
                   f"({min(rtts):.2f}–{max(rtts):.2f}) | {statistics.median(rates):.2f} ({min(rates):.2f}–{max(rates):.2f}) |")
    failed = [f for r in rows for f in r["perf_failed"]]
    if failed:
        out.append(f"\n{len(failed)} measurement(s) failed; the first: {failed[0]}")
    return "\n".join(out)


def rate_name(args: argparse.Namespace) -> str:
    if args.no_relay:
        return "– (the seed does not relay)"
    default = " (crust's default)" if args.relay_rate == DEFAULT_RELAY_RATE else ""
    return f"{args.relay_rate / (1024 * 1024):g} MiB/s per circuit{default}"


def cpu_busy() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tries", type=int, help="tries per cell (default 20; 3 with --quick)")
    ap.add_argument("--pairs", default="all", help=f"comma-separated, of {','.join(PAIRS)} (default all)")
    ap.add_argument("--modes", default="both,udp", help="comma-separated, of both,udp (default both)")
    ap.add_argument("--attempts", type=int, default=3, help="connect() attempts per try (default 3)")
    ap.add_argument("--timeout", type=float, default=10.0, help="connect() timeout, seconds (default 10)")
    ap.add_argument("--skew", type=float, default=0.0,
                    help="seconds between the two sides' connect() calls, each side first in every other try "
                         "(default 0; times run from the later call)")
    ap.add_argument("--lanes", type=int, default=4, help="tries run in parallel on separate routers (default 4)")
    ap.add_argument("--reuse", action="store_true", help="one pair of peers per cell, disconnecting between tries")
    ap.add_argument("--quick", action="store_true", help="3 tries per cell unless --tries says otherwise")
    ap.add_argument("--budget", type=float, default=1800.0, help="seconds after which no try starts (default 1800)")
    ap.add_argument("--json", help="also write the results, every attempt included, to this file")
    ap.add_argument("--no-relay", action="store_true", help="the seed does not relay (the two unpunchable pairs fail)")
    ap.add_argument("--relay-rate", type=int, default=DEFAULT_RELAY_RATE,
                    help=f"the seed's relay_max_bytes_per_s (default {DEFAULT_RELAY_RATE}, crust's default)")
    ap.add_argument("--perf-tries", type=int, default=1,
                    help="successful tries per cell that measure round trips and throughput (default 1; 0: none)")
    ap.add_argument("--pings", type=int, default=50, help="sequential round trips per measurement (default 50)")
    ap.add_argument("--perf-mib", type=int, default=8, help="MiB sent one way per measurement (default 8)")
    args = ap.parse_args()
    if args.tries is None:
        args.tries = 3 if args.quick else 20
    pairs = PAIRS if args.pairs == "all" else args.pairs.split(",")
    modes = args.modes.split(",")
    for name, value, ok in (("pair", pairs, PAIRS), ("mode", modes, MODES)):
        bad = [v for v in value if v not in ok]
        if bad:
            ap.error(f"unknown {name} {bad}: choose from {list(ok)}")
    if not (1 <= args.tries <= 1000 and 1 <= args.attempts <= 10 and 1 <= args.lanes <= 8
            and 1 <= args.timeout <= 120 and 0 <= args.skew < args.timeout and 0 <= args.perf_tries
            and 1 <= args.pings <= 10_000 and 1 <= args.perf_mib <= 1024 and args.relay_rate >= 1):
        ap.error("need 1 <= tries <= 1000, 1 <= attempts <= 10, 1 <= lanes <= 8, 1 <= timeout <= 120, "
                 "0 <= skew < timeout, 0 <= perf-tries, 1 <= pings <= 10000, 1 <= perf-mib <= 1024, relay-rate >= 1")
    if os.geteuid() != 0:
        print(NEED_ROOT, file=sys.stderr)
        return 2
    why = natlab_unavailable_reason()
    if why:
        print(f"bench/nat.py cannot build its lab: {why}", file=sys.stderr)
        return 2
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # hundreds of peers, a log file each
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 8192), hard), hard))

    tries = [Try(p, m, i) for i in range(args.tries) for m in modes for p in pairs]
    load0, busy0 = os.getloadavg(), cpu_busy()
    t0 = time.monotonic()
    with NatLab("crustnatbench") as lab:
        seed_args = () if args.no_relay else ("--relay", "--relay-rate", str(args.relay_rate))
        world = World(lab, lifetime=args.budget + args.attempts * (args.timeout + args.skew + 20) * (
            args.tries if args.reuse else 1) + PERF_TIME + 300, seed_args=seed_args)
        bench = Bench(world, args.lanes, args)
        built = time.monotonic() - t0
        bench.run(tries)
    sys.stderr.write("\n")
    elapsed = time.monotonic() - t0
    busy1, load1 = cpu_busy(), os.getloadavg()
    busy = (busy1[0] - busy0[0]) / max(1, busy1[1] - busy0[1]) * (os.cpu_count() or 1)
    rows = summarise(tries, not args.no_relay)
    print(f"crust NAT matrix: {args.tries} tries per cell, up to {args.attempts} attempts each, "
          f"{'reusing peers' if args.reuse else 'fresh peers per try'}, skew {args.skew:g} s, {args.lanes} lanes, "
          f"seed relays: {rate_name(args)}; "
          f"lab built in {built:.1f} s, run {elapsed:.0f} s; CPU busy {busy:.2f} of {os.cpu_count()} cores "
          f"(all processes), load average {load0[0]:.1f} -> {load1[0]:.1f}\n")
    for mode in modes:
        print(table(rows, mode, args.timeout) + "\n")
    if args.perf_tries:
        print(perf_table(rows, args) + "\n")
    summary = {"bench": "nat", "python": sys.version.split()[0], "tries": args.tries, "attempts": args.attempts,
               "timeout": args.timeout, "skew": args.skew, "lanes": args.lanes, "reuse": args.reuse, "seconds": round(elapsed, 1),
               "relay": not args.no_relay, "relay_rate": args.relay_rate,
               "cpu_busy_cores": round(busy, 2), "loadavg": [load0[0], load1[0]], "rows": rows}
    print(json.dumps(summary))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**summary, "tries_detail": [t.__dict__ for t in tries]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
