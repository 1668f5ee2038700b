"""One hub Service with many connected peers: connect time, hub threads, hub RSS per peer, broadcast.

    python bench/scale.py [--peers 1000] [--procs 4] [--quick]

The hub is a ``crust.Service`` in this process.  The peers are ``--peers`` Services spread over
``--procs`` child processes (spawned, so no threaded process is forked); each peer uses
``dispatch="manual"`` (one reactor thread, no dispatcher) and bootstraps off the hub as a
``CrustUser.CLIENT`` from a pool of 16 threads per child.  Measured:

* connect-all: from "go" until every child reported all its peers connected (and the hub lists them);
* hub threads (``threading.enumerate``) before the peers, peak while they connect, and after;
* hub RSS (``VmRSS``) before and after, and (after - before) / peers;
* broadcast: the hub ``send``s one 1 KiB message to every peer; time until the last peer's
  ``on_message`` ran (children drive ``run_callbacks``; CLOCK_MONOTONIC is system-wide).

Prints a table and a JSON line.  Loopback only; every loop and wait is bounded.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from multiprocessing.connection import Connection, wait as mp_wait

import crust

BOOTSTRAP_TIMEOUT = 20.0   # one peer's bootstrap()
CONNECT_DEADLINE = 300.0   # all peers of all children
BROADCAST_DEADLINE = 60.0
STEP = 120.0               # any other single step (create services, close, ...)
MESSAGE = bytes(range(256)) * 4  # 1 KiB


def base_config(**extra: object) -> crust.Config:
    return crust.Config(listen_host="127.0.0.1", bootstrap_cache_path=None, enable_upnp=False,
                        peer_exchange=False, disable_external_reachability_requirement=True,
                        **extra)  # type: ignore[arg-type]


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def child(index: int, count: int, hub_ep: str, hub_id: str, pipe: Connection) -> None:
    """Own ``count`` peer Services; obey the parent's commands over ``pipe``."""
    services: list[crust.Service] = []
    try:
        rss0 = rss_kib()
        cfg = base_config(hard_coded_contacts=[crust.Contact(hub_ep, peer_id=crust.PeerId.from_str(hub_id))],
                          enable_udp=False)
        received: dict[int, float] = {}

        def make_handler(slot: int):
            def got(peer_id: crust.PeerId, data: bytes) -> None:
                if data == MESSAGE and slot not in received:
                    received[slot] = time.monotonic()
            return got

        for slot in range(count):
            svc = crust.Service(cfg, dispatch="manual")
            svc.on_message(make_handler(slot))
            services.append(svc)
        pipe.send(("ready", len(services)))

        if pipe.recv() != "go":
            return
        start = time.monotonic()
        failures: list[str] = []
        ok = 0
        with ThreadPoolExecutor(16) as pool:
            futures = {pool.submit(svc.bootstrap, (), crust.CrustUser.CLIENT, BOOTSTRAP_TIMEOUT): i
                       for i, svc in enumerate(services)}
            for future in as_completed(futures, timeout=CONNECT_DEADLINE):
                try:
                    future.result()
                    ok += 1
                except Exception as exc:  # noqa: BLE001 - reported to the parent
                    failures.append(f"{type(exc).__name__}: {exc}")
        # one bounded retry round for failures, sequential
        retried = 0
        for svc in services:
            if retried >= 50 or svc.is_connected(crust.PeerId.from_str(hub_id)):
                continue
            retried += 1
            try:
                svc.bootstrap((), crust.CrustUser.CLIENT, BOOTSTRAP_TIMEOUT)
                ok += 1
            except Exception as exc:  # noqa: BLE001
                failures.append(f"retry {type(exc).__name__}: {exc}")
        connected = sum(svc.is_connected(crust.PeerId.from_str(hub_id)) for svc in services)
        pipe.send(("connected", connected, time.monotonic() - start, failures[:5], len(failures),
                   rss_kib() - rss0, threading.active_count()))

        if pipe.recv() != "poll":
            return
        pipe.send("polling")
        deadline = time.monotonic() + BROADCAST_DEADLINE
        rounds = 0
        while len(received) < connected and time.monotonic() < deadline:
            for svc in services:
                svc.run_callbacks(timeout=0.0)
            rounds += 1
            if len(received) < connected:
                time.sleep(0.001)
        pipe.send(("broadcast", len(received), max(received.values(), default=0.0),
                   min(received.values(), default=0.0), rounds))

        pipe.recv()  # "quit"
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda s: s.close(timeout=5.0), services))
        try:
            pipe.send(("closed", index))
        except (OSError, ValueError):
            pass


def recv_all(pipes: list[Connection], tag: str, timeout: float, on_tick=None) -> list[tuple]:
    """Collect one message tagged ``tag`` from each pipe, within ``timeout``."""
    results: dict[int, tuple] = {}
    deadline = time.monotonic() + timeout
    while len(results) < len(pipes):
        left = deadline - time.monotonic()
        if left <= 0:
            raise SystemExit(f"timed out waiting for {tag!r} from {len(pipes) - len(results)} children")
        for conn in mp_wait([p for i, p in enumerate(pipes) if i not in results], timeout=min(left, 0.2)):
            msg = conn.recv()
            index = pipes.index(conn)
            if (msg[0] if isinstance(msg, tuple) else msg) == tag:
                results[index] = msg if isinstance(msg, tuple) else (msg,)
        if on_tick:
            on_tick()
    return [results[i] for i in range(len(pipes))]


def measure(peers: int, procs: int) -> dict[str, object]:
    procs = max(1, min(procs, peers))
    hub = crust.Service(base_config(max_pending_handshakes_per_ip=1024, max_pending_handshakes=2048))
    hub_ep = str(hub.start_listening()[0])
    gc.collect()
    threads_before = threading.active_count()
    rss_before = rss_kib()

    ctx = mp.get_context("spawn")
    shares = [peers // procs + (1 if i < peers % procs else 0) for i in range(procs)]
    pipes: list[Connection] = []
    workers: list[mp.process.BaseProcess] = []
    result: dict[str, object] = {"peers": peers, "procs": procs}
    try:
        for i, n in enumerate(shares):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=child, args=(i, n, hub_ep, str(hub.id), theirs), daemon=True)
            proc.start()
            theirs.close()
            pipes.append(ours)
            workers.append(proc)
        t = time.monotonic()
        recv_all(pipes, "ready", STEP)
        result["create_peers_s"] = round(time.monotonic() - t, 3)

        peak = [threading.active_count()]

        def sample() -> None:
            peak[0] = max(peak[0], threading.active_count())

        start = time.monotonic()
        for pipe in pipes:
            pipe.send("go")
        reports = recv_all(pipes, "connected", CONNECT_DEADLINE + STEP, sample)
        children_done = time.monotonic() - start
        # the hub may see the last few a moment after the children do
        wait_until = time.monotonic() + 10.0
        while len(hub.peers()) < sum(r[1] for r in reports) and time.monotonic() < wait_until:
            sample()
            time.sleep(0.01)
        connect_all = time.monotonic() - start
        hub_peers = len(hub.peers())
        time.sleep(1.0)  # let the hub settle (handshake buffers released)
        gc.collect()
        sample()
        threads_after = threading.active_count()
        rss_after = rss_kib()
        connected = sum(r[1] for r in reports)
        result.update({
            "connected": connected, "hub_peers": hub_peers,
            "connect_all_s": round(connect_all, 3), "children_connect_s": round(children_done, 3),
            "bootstrap_failures": sum(r[4] for r in reports),
            "failure_samples": [f for r in reports for f in r[3]][:5],
            "hub_threads_before": threads_before, "hub_threads_peak": peak[0],
            "hub_threads_after": threads_after,
            "hub_thread_names": sorted({t.name for t in threading.enumerate()}),
            "hub_rss_before_kib": rss_before, "hub_rss_after_kib": rss_after,
            "hub_rss_per_peer_kib": round((rss_after - rss_before) / max(1, hub_peers), 2),
            "peer_rss_per_peer_kib": round(sum(r[5] for r in reports) / max(1, connected), 1),
            "child_threads": [r[6] for r in reports],
        })

        for pipe in pipes:
            pipe.send("poll")
        recv_all(pipes, "polling", STEP)
        ids = [info.id for info in hub.peers()]
        sent0 = sum(info.bytes_sent for info in hub.peers())
        t0 = time.monotonic()
        send_errors = 0
        for pid in ids:
            try:
                hub.send(pid, MESSAGE, timeout=10.0)
            except crust.CrustError:
                send_errors += 1
        sends_done = time.monotonic() - t0
        # hub side: until its counters show every message written (bounded)
        flushed = None
        flush_deadline = t0 + BROADCAST_DEADLINE
        while time.monotonic() < flush_deadline:
            if sum(info.bytes_sent for info in hub.peers()) - sent0 >= len(MESSAGE) * (len(ids) - send_errors):
                flushed = time.monotonic() - t0
                break
            time.sleep(0.005)
        casts = recv_all(pipes, "broadcast", BROADCAST_DEADLINE + STEP)
        got = sum(c[1] for c in casts)
        last = max((c[2] for c in casts if c[1]), default=t0)
        result.update({
            "broadcast_sent": len(ids) - send_errors, "broadcast_received": got,
            "broadcast_send_loop_s": round(sends_done, 4),
            "broadcast_last_s": round(last - t0, 4),
            "broadcast_hub_written_s": None if flushed is None else round(flushed, 4),
            "broadcast_first_s": round(min((c[3] for c in casts if c[1]), default=t0) - t0, 4),
            "hub_threads_end": threading.active_count(),
        })
        for pipe in pipes:
            pipe.send("quit")
        t = time.monotonic()
        recv_all(pipes, "closed", STEP)
        result["close_peers_s"] = round(time.monotonic() - t, 3)
    finally:
        for pipe in pipes:
            try:
                pipe.send("quit")
            except (OSError, ValueError):
                pass
        for proc in workers:
            proc.join(30.0)
            if proc.is_alive():
                proc.terminate()
                proc.join(5.0)
        hub.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=1000)
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="100 peers")
    args = parser.parse_args()
    peers = 100 if args.quick else args.peers
    r = measure(peers, args.procs)
    rows = [
        ("peers connected (children / hub)", f"{r.get('connected')} / {r.get('hub_peers')} of {peers}"
                                             f" in {r['procs']} procs"),
        ("bootstrap failures", r.get("bootstrap_failures")),
        ("create peer Services", f"{r.get('create_peers_s')} s"),
        ("connect all", f"{r.get('connect_all_s')} s"),
        ("hub threads before / peak / after", f"{r.get('hub_threads_before')} / {r.get('hub_threads_peak')}"
                                              f" / {r.get('hub_threads_after')}"),
        ("hub RSS before / after", f"{r.get('hub_rss_before_kib')} / {r.get('hub_rss_after_kib')} KiB"),
        ("hub RSS per peer", f"{r.get('hub_rss_per_peer_kib')} KiB"),
        ("peer-side RSS per peer", f"{r.get('peer_rss_per_peer_kib')} KiB"),
        ("broadcast 1 KiB: received", f"{r.get('broadcast_received')} of {r.get('broadcast_sent')}"),
        ("broadcast: send loop", f"{r.get('broadcast_send_loop_s')} s"),
        ("broadcast: hub wrote all (bytes_sent)", f"{r.get('broadcast_hub_written_s')} s"),
        ("broadcast: first / last peer has it", f"{r.get('broadcast_first_s')} / {r.get('broadcast_last_s')} s"),
        ("close peers", f"{r.get('close_peers_s')} s"),
    ]
    for name, value in rows:
        print(f"{name:<38} {value}")
    if r.get("failure_samples"):
        print("failure samples:", *r["failure_samples"], sep="\n  ")
    print(json.dumps(r))
    ok = r.get("hub_peers") == peers and r.get("broadcast_received") == peers
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
