#!/usr/bin/env python3
"""crust against the libraries users would pick instead, two processes per pair on loopback.

Usage::

    pip install -e .[bench]              # pyzmq (benchmark-only dependency)
    python bench/compare.py              # full run
    python bench/compare.py --quick      # small sizes, one run
    python bench/compare.py --json out.json
    git worktree add --detach /tmp/before <commit>   # then, crust before vs now, alternating:
    python bench/compare.py --quick --kinds crust --against /tmp/before --alternate 5

The same three measurements as ``bench/messaging.py`` (whose processes, pipe
protocol, timing and result code this reuses), for every transport:

(a) throughput of 64 KiB messages (MB/s, 10^6 payload bytes per second);
(b) rate of 100-byte messages (msgs/s);
(c) 100-byte ping-pong round trip (µs, median; p99 in the JSON).

Transports (rows):

* ``crust``     -- crust.Service over TCP (messaging.py's crust kind).
* ``raw``       -- blocking TCP, ``u32 length ‖ payload`` frames; for (b) the
  batched sender (frames appended to a buffer, one ``sendall`` per 64 KiB).
* ``aead``      -- raw TCP + one pycryptodome ChaCha20-Poly1305 seal per
  64 KiB message (and one open on the receiver): the physical limit for a
  Python library encrypting with pycryptodome.  (c) seals every 100 B ping.
  (b) is not measured for this row.
* ``aead-gcm``, ``aead-ocb`` -- the same with AES-256-GCM and AES-256-OCB
  (crust.crypto.aead's Sealer/Opener for each): the ceilings for the other
  ciphers crust can negotiate.  crust runs the one its handshake chose (by
  measuring the ciphers on this machine), printed under the table with the
  seal costs this process measured.
* ``zmq``       -- pyzmq PAIR sockets over ``tcp://127.0.0.1``, plaintext.
* ``zmq-curve`` -- the same with CURVE encryption (CurveZMQ).
* ``crust-rudp`` -- crust.Service over its reliable UDP transport only
  (``enable_tcp=False``): 1200-byte datagrams, acks and congestion control in Python.
* ``crust-chacha`` -- crust over TCP with ChaCha20-Poly1305 forced on both ends
  (``crust.crypto.ranking.force_preference``): what the measured cipher choice gains, in the same run.

Rounds are interleaved: for every repeat, for every measurement, each
transport in turn (A B C, A B C, ...), after one discarded warm-up of each.
The table shows medians and the ratio of each to crust (value / crust).

No py-libp2p row: ``libp2p`` (every release on PyPI) pins ``fastecdsa==2.3.2``,
which ships no wheel for CPython 3.11 on Linux (it compiles against GMP), so
it does not install from wheels as an optional extra.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import messaging as m  # noqa: E402  (bench/messaging.py: processes, timing, results)

from crust.crypto.ranking import ROUNDS, SMALL_REPEAT, measure  # noqa: E402

KINDS = ("crust", "crust-rudp", "crust-chacha", "raw", "aead", "aead-gcm", "aead-ocb", "zmq", "zmq-curve")
# kind -> {measurement: messaging.py phase name}
PLAN: dict[str, dict[str, str]] = {
    "crust": {"tput": "tput", "rate": "rate", "rtt": "rtt"},
    "crust-rudp": {"tput": "tput", "rate": "rate", "rtt": "rtt"},
    "crust-chacha": {"tput": "tput", "rate": "rate", "rtt": "rtt"},
    "raw": {"tput": "tput", "rate": "rate_batched", "rtt": "rtt"},
    "aead": {"tput": "tput", "rtt": "rtt"},
    "aead-gcm": {"tput": "tput", "rtt": "rtt"},
    "aead-ocb": {"tput": "tput", "rtt": "rtt"},
    "zmq": {"tput": "tput", "rate": "rate", "rtt": "rtt"},
    "zmq-curve": {"tput": "tput", "rate": "rate", "rtt": "rtt"},
}
LABELS = {
    "crust": "crust (TCP)",
    "crust-rudp": "crust (rudp)",
    "crust-chacha": "crust (TCP, ChaCha only)",
    "raw": "raw TCP (len-prefixed)",
    "aead": "raw + ChaCha20-Poly1305",
    "aead-gcm": "raw + AES-256-GCM",
    "aead-ocb": "raw + AES-256-OCB",
    "zmq": "pyzmq PAIR",
    "zmq-curve": "pyzmq PAIR + CURVE",
}
MEASURES = (("tput", "mb_per_s", "64 KiB MB/s"), ("rate", "msgs_per_s", "100 B msgs/s"),
            ("rtt", "median_us", "100 B RTT us"))
_ZMQ_TIMEOUT_MS = int(m._SOCK_TIMEOUT * 1000)


# ---------------------------------------------------------------------------------------------
# pyzmq PAIR children, speaking messaging.py's pipe protocol (see _raw_receiver / _raw_sender).


def _zmq_socket(ctx: Any, kind: str) -> Any:
    import zmq

    sock = ctx.socket(zmq.PAIR)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, _ZMQ_TIMEOUT_MS)  # bounded: no call may hang the benchmark
    sock.setsockopt(zmq.SNDTIMEO, _ZMQ_TIMEOUT_MS)
    return sock


def _zmq_receiver(conn: Any, kind: str) -> None:
    import zmq

    ctx = zmq.Context()
    sock = _zmq_socket(ctx, kind)
    server_public = b""
    if kind == "zmq-curve":
        server_public, server_secret = zmq.curve_keypair()
        sock.curve_server = True
        sock.curve_secretkey = server_secret
        sock.curve_publickey = server_public
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    conn.send(("ready", f"tcp://127.0.0.1:{port}|{server_public.decode()}"))
    counter = m._Counter()
    recv, send = sock.recv, sock.send
    try:
        while True:
            cmd = conn.recv()
            if cmd[0] == "quit":
                break
            params = cmd[1]
            counter.reset()
            cpu0 = m._cpu()
            conn.send(("armed",))
            size = params["size"]
            if params["phase"] == "rtt":
                while True:
                    msg = recv()
                    if not msg:
                        break
                    send(msg)
            else:
                on = counter.on
                while True:
                    msg = recv()
                    if not msg:  # the empty end marker (real messages are never empty)
                        break
                    on(msg, size)
            conn.recv()  # ("expect", n)
            conn.send(("done", dict(count=counter.count, nbytes=counter.nbytes, t_last=counter.t_last,
                                    bad=counter.bad, cpu=m._cpu() - cpu0)))
    finally:
        sock.close(0)
        ctx.term()


def _zmq_sender(conn: Any, kind: str, addr: str) -> None:
    import zmq

    endpoint, server_public = addr.split("|", 1)
    ctx = zmq.Context()
    sock = _zmq_socket(ctx, kind)
    if kind == "zmq-curve":
        public, secret = zmq.curve_keypair()
        sock.curve_serverkey = server_public.encode()
        sock.curve_publickey = public
        sock.curve_secretkey = secret
    sock.connect(endpoint)
    # Handshake before the first timed phase: one ping through the echo path is done by the warm-up;
    # here only make sure the connection exists.
    send, recv, perf = sock.send, sock.recv, time.perf_counter
    conn.send(("ready", None))
    cpu0 = m._cpu()
    try:
        while True:
            cmd = conn.recv()
            if cmd[0] == "quit":
                break
            if cmd[0] == "stats":
                conn.send(("stats", (None, m._cpu() - cpu0)))
                continue
            p = cmd[1]
            phase, size, count, cap = p["phase"], p["size"], p["count"], p["cap"]
            payload = os.urandom(size)
            cpu0 = m._cpu()
            result: dict[str, Any] = {}
            t0 = perf()
            deadline = t0 + cap
            n = 0
            if phase == "tput":
                for n in range(1, count + 1):
                    send(payload)
                    if perf() > deadline:
                        break
            elif phase == "rate":
                for n in range(1, count + 1):
                    send(payload)
                    if not n & 1023 and perf() > deadline:
                        break
            elif phase == "rtt":
                rtts = []
                for n in range(1, count + 1):
                    t = perf()
                    send(payload)
                    reply = recv()
                    rtts.append(perf() - t)
                    if len(reply) != size:
                        raise RuntimeError("bad echo")
                    if perf() > deadline:
                        break
                result["rtts"] = rtts
            t_end = perf()
            send(b"")
            result.update(n=n, t0=t0, t_send_end=t_end, cpu=m._cpu() - cpu0)
            conn.send(("sent", result))
    finally:
        sock.close(0)
        ctx.term()


def _child(role: str, kind: str, conn: Any, key: bytes, addr: str | None, cprofile_prefix: str | None) -> None:
    """Process entry: pyzmq kinds here, everything else messaging.py's ``_child``."""
    if kind == "crust-chacha":
        from crust.crypto.aead import Cipher
        from crust.crypto.ranking import force_preference

        force_preference([Cipher.CHACHA20_POLY1305])
        kind = "crust"
    if not kind.startswith("zmq"):
        m._child(role, kind, conn, key, addr, cprofile_prefix)
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if role == "receiver":
            _zmq_receiver(conn, kind)
        else:
            assert addr is not None
            _zmq_sender(conn, kind, addr)
    except Exception as exc:
        try:
            conn.send(("error", f"{kind} {role}: {type(exc).__name__}: {exc}"))
        except OSError:
            pass
        raise


# ---------------------------------------------------------------------------------------------
# The parent.


def _report(results: dict[str, dict[str, Any]], machine: dict[str, Any], args: argparse.Namespace,
            sizes: dict[str, Any], wall: float, kinds: list[str]) -> dict[str, Any]:
    def value(kind: str, meas: str, key: str) -> float | None:
        return results.get(kind, {}).get(meas, {}).get(key)

    ratios: dict[str, dict[str, float | None]] = {}
    for kind in kinds:
        ratios[kind] = {}
        for meas, key, _ in MEASURES:
            v, c = value(kind, meas, key), value("crust", meas, key)
            ratios[kind][meas] = None if v is None or not c else v / c

    print()
    print(f"crust vs alternatives  ({'quick' if args.quick else 'full'}; median of {sizes['repeat']} "
          f"interleaved run(s); {machine['nproc']} cores, Python {machine['python']}, "
          f"pycryptodome {machine['pycryptodome']}, pyzmq {machine.get('pyzmq', '?')} / "
          f"libzmq {machine.get('libzmq', '?')})")
    col = 24
    header = f"{'transport':<24}" + "".join(f"{title:>{col}}" for _, _, title in MEASURES)
    print(header)
    print("-" * len(header))

    def cell(kind: str, meas: str, key: str) -> str:
        v = value(kind, meas, key)
        if v is None:
            return "-"
        r = ratios[kind][meas]
        text = m._fmt(v)
        return text if kind == "crust" or r is None else f"{text} ({r:.2f}x)"

    for kind in kinds:
        print(f"{LABELS[kind]:<24}" + "".join(f"{cell(kind, meas, key):>{col}}" for meas, key, _ in MEASURES))
    print(f"\n(x) = value / crust's (for RTT lower is better).  raw 100 B rate: frames batched into one "
          f"sendall per 64 KiB.  raw + cipher: one seal per 64 KiB message (and per 100 B ping for RTT); "
          f"its 100 B rate is not measured.  wall time {wall:.1f} s.")
    negotiated = machine.get("crust_ciphers", {})
    if negotiated:
        print("crust's negotiated cipher: " + ", ".join(f"{LABELS[k]} {c}" for k, c in negotiated.items()))
    print(f"seal cost in this process (crust.crypto.ranking.measure, best of {ROUNDS} / {ROUNDS * SMALL_REPEAT}; "
          f"µs): " + "; ".join(
        f"{c['cipher']} 64 KiB {c['bulk_us']:.1f}, 100 B {c['small_us']:.1f}" for c in machine["seal_costs_us"]))
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return {"bench": "compare", "mode": "quick" if args.quick else "full", "sizes": sizes, "machine": machine,
            "plan": {k: PLAN[k] for k in kinds},
            "results": results,
            "medians": {k: {meas: value(k, meas, key) for meas, key, _ in MEASURES} for k in kinds},
            "ratios_to_crust": {k: {meas: (None if r is None else round(r, 4)) for meas, r in v.items()}
                                for k, v in ratios.items()},
            "wall_s": round(wall, 2),
            "notes": {"mb": "10^6 payload bytes", "ratio": "value / crust value, same measurement",
                      "raw_rate": "raw rate = rate_batched (64 KiB sendall batches)",
                      "aead": "one seal per message (64 KiB for tput) with crust.crypto.aead's Sealer on pycryptodome: "
                              "aead ChaCha20-Poly1305, aead-gcm AES-256-GCM, aead-ocb AES-256-OCB"}}


def _alternate(args: argparse.Namespace) -> int:
    """``--against TREE``: runs of this tree and of each TREE, alternating, each its own process.

    Each run is the tree's own copy of this script with ``PYTHONPATH`` set to
    its tree, so every run imports its own crust; another tree runs only
    ``crust`` (the kind an older tree is sure to have).  The order flips every
    round (A B C, C B A, ...), and the medians per tree come from one stretch
    of a shared machine: a before/after pair from the same run.
    """
    trees = [("this", os.path.dirname(os.path.dirname(os.path.abspath(__file__))), args.kinds)]
    trees += [(f"tree {i + 1}", os.path.abspath(path), "crust") for i, path in enumerate(args.against)]
    got: dict[tuple[str, str], dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.alternate):
            for name, path, kinds in (trees if i % 2 == 0 else trees[::-1]):
                out = os.path.join(tmp, "run.json")
                cmd = [sys.executable, os.path.join(path, "bench", "compare.py"), "--kinds", kinds, "--json", out]
                cmd += (["--quick"] if args.quick else []) + (["--repeat", str(args.repeat)] if args.repeat else [])
                subprocess.run(cmd, cwd=path, env={**os.environ, "PYTHONPATH": path}, check=True,
                               stdout=subprocess.DEVNULL)
                with open(out) as f:
                    results = json.load(f)["results"]
                for kind, meas in results.items():
                    row = got.setdefault((f"{name} ({_tree_commit(path)})", kind), {})
                    for m_name, key, _ in MEASURES:
                        phase = meas.get(m_name, {})
                        if key in phase:
                            row.setdefault(m_name, []).append(phase[key])
                        for cpu in ("cpu_us_snd", "cpu_us_rcv"):  # per message: steadier than wall clock under load
                            if cpu in phase:
                                row.setdefault(f"{m_name}_{cpu}", []).append(phase[cpu])
            if args.verbose:
                print(f"round {i + 1}/{args.alternate} done", file=sys.stderr)
    print(f"\nalternating runs: {args.alternate} per tree ({'quick' if args.quick else 'full'}); "
          f"medians, every run in brackets; loadavg at the end {os.getloadavg()[0]:.1f}")
    for (tree, kind), row in got.items():
        print(f"{LABELS.get(kind, kind)} @ {tree}")
        for m_name, _, title in MEASURES:
            values = row.get(m_name)
            if values:
                print(f"    {title:<18}{m._fmt(statistics.median(values)):>10}   "
                      f"[{', '.join(m._fmt(v) for v in values)}]")
        for m_name, _, title in MEASURES:
            snd, rcv = row.get(f"{m_name}_cpu_us_snd"), row.get(f"{m_name}_cpu_us_rcv")
            if snd and rcv:
                what = {"tput": "64 KiB CPU us/msg", "rate": "100 B CPU us/msg", "rtt": "RTT CPU us/trip"}[m_name]
                print(f"    {what:<18}{statistics.median(snd):>10.2f} sender, {statistics.median(rcv):.2f} receiver")
    return 0


def _tree_commit(path: str) -> str:
    try:
        return subprocess.run(["git", "-C", path, "describe", "--always", "--dirty"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.path.basename(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one run")
    ap.add_argument("--repeat", type=int, default=0, help="runs per measurement (default: 3 full, 1 quick)")
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated subset of " + ",".join(KINDS))
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--against", metavar="TREE", action="append",
                    help="also run another checkout's crust (e.g. a git worktree of an older commit), alternating; "
                         "may be given more than once")
    ap.add_argument("--alternate", type=int, default=3, metavar="N", help="with --against: runs per tree")
    args = ap.parse_args(argv)
    if args.against:
        return _alternate(args)

    sizes = dict(m.QUICK if args.quick else m.FULL)
    if args.repeat:
        sizes["repeat"] = args.repeat
    kinds = [k for k in KINDS if k in args.kinds.split(",")]
    machine = m._machine()
    try:
        import zmq

        machine.update(pyzmq=zmq.__version__, libzmq=zmq.zmq_version(), zmq_curve=bool(zmq.has("curve")))
    except ImportError:
        if any(k.startswith("zmq") for k in kinds):
            print("pyzmq is not installed: pip install -e .[bench]  (or drop zmq kinds with --kinds)",
                  file=sys.stderr)
            return 2
    # The same measurement each crust process makes to rank its ciphers, here for the record.
    machine["seal_costs_us"] = [{"cipher": c.cipher.label, "bulk_us": c.bulk_us, "small_us": c.small_us}
                                for c in measure(time.perf_counter)]
    ctx = mp.get_context("spawn")
    started = time.perf_counter()
    pairs: dict[str, m._Pair] = {}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {k: {meas: [] for meas in PLAN[k]} for k in kinds}
    try:
        for kind in kinds:
            pairs[kind] = m._Pair(ctx, kind, child=_child)
            if kind.startswith("crust") and pairs[kind].sender_info:
                machine.setdefault("crust_ciphers", {})[kind] = pairs[kind].sender_info.get("cipher")
        for kind in kinds:  # one discarded warm-up per kind and measurement
            for phase in PLAN[kind].values():
                pairs[kind].run(m._phase_params(phase, sizes, scale=0.1))
        for rep in range(sizes["repeat"]):
            for meas, _, _ in MEASURES:
                for kind in kinds:  # interleaved: A B C, A B C, ...
                    planned = PLAN[kind].get(meas)
                    if planned is not None:
                        runs[kind][meas].append(pairs[kind].run(m._phase_params(planned, sizes)))
            if args.verbose:
                print(f"round {rep + 1} done at {time.perf_counter() - started:.1f} s", file=sys.stderr)
    finally:
        for pair in pairs.values():
            pair.close()
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    machine["children_cpu_s"] = round(ru.ru_utime + ru.ru_stime, 2)
    results = m._round({k: {meas: m._median_of(r) for meas, r in ph.items() if r} for k, ph in runs.items()})
    doc = m._round(_report(results, machine, args, sizes, time.perf_counter() - started, kinds))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
