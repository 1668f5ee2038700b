"""One hub Service with many connected peers: connect time, hub threads, hub RSS per peer, broadcast.

    python bench/scale.py [--peers 10000] [--procs N] [--transport tcp|udp|both] [--quick]
                          [--profile DIR]

The hub is a ``crust.Service`` in this process.  The peers are ``--peers`` Services spread over
``--procs`` child processes (spawned, so no threaded process is forked; default one per 500
peers, at least 4); each peer uses ``dispatch="manual"`` (one reactor thread, no dispatcher) and
bootstraps off the hub as a ``CrustUser.CLIENT`` from a pool of 8 threads per child.  With
``--transport udp`` hub and peers have ``enable_tcp=False``: the hub listens on rUDP only and every
peer bootstraps to it over rUDP (``both``, the default, runs TCP and then rUDP with fresh children;
the hub's RSS per peer is only meaningful for the first, the second reuses memory the first freed).

Measured, per transport:

* connect-all: from "go" until every child reported all its peers connected and the hub lists them;
* hub threads (``threading.enumerate``) before the peers, peak while they connect, and after; hub
  open fds before and after;
* hub RSS (``VmRSS``) before and after, and (after - before) / peers (RSS per idle peer); the
  hub's CPU over 5 s with every peer idle (heartbeats, rUDP keepalives);
* broadcast: the hub ``send``s one 1 KiB message to every peer; time until the last peer's
  ``on_message`` ran (children deliver their queued callbacks within ~5 ms; CLOCK_MONOTONIC is
  system-wide, so the children's stamps compare with the hub's), and the CPU the hub and the
  children spent meanwhile (on two cores the receivers' share sets much of the wall-clock time).

``--profile DIR`` runs cProfile on the hub's I/O thread (switched on and off on that thread)
during the connect phase and during the broadcast, and on the main thread's ``send()`` loop; it
writes ``DIR/<transport>-{connect,broadcast,sendloop}.prof`` and prints the top functions.

The bench raises its open-file limit (``RLIMIT_NOFILE``) from soft to hard, in the hub and in
every child, and says so when even the hard limit is below what the run needs.  Loopback only;
every loop and wait is bounded.  Prints a table and a JSON line per transport.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import logging
import math
import multiprocessing as mp
import os
import pstats
import resource
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from multiprocessing.connection import Connection, wait as mp_wait
from typing import Any, Callable

import crust

BOOTSTRAP_TIMEOUT = 30.0   # one peer's bootstrap()
CONNECT_DEADLINE = 600.0   # all peers of all children
BROADCAST_DEADLINE = 60.0
STEP = 180.0               # any other single step (create services, close, ...)
MESSAGE = bytes(range(256)) * 4  # 1 KiB
PEERS_PER_PROC = 500      # more reactor threads per child and their GIL waits swamp the cores
POLL_INTERVAL = 0.005      # s between a child's sweeps for delivered broadcasts (the stamps' resolution)
IDLE_WINDOW = 5.0          # s over which the hub's CPU is measured with every peer idle
BOOTSTRAP_THREADS = 8     # bootstraps in flight per child
CHILD_SWITCH_INTERVAL = 0.05  # s; fewer futile GIL wake-ups among a child's hundreds of threads
FDS_PER_PEER_CHILD = 4     # epoll + wake socketpair + the connection's socket (TCP or UDP)
FD_MARGIN = 256            # listeners, pipes, the interpreter's own


def base_config(transport: str, **extra: Any) -> crust.Config:
    return crust.Config(listen_host="127.0.0.1", bootstrap_cache_path=None, enable_upnp=False,
                        peer_exchange=False, disable_external_reachability_requirement=True,
                        enable_tcp=transport == "tcp", enable_udp=transport == "udp", **extra)


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def raise_fd_limit(need: int) -> dict[str, Any]:
    """Raise RLIMIT_NOFILE's soft limit to the hard one; report whether ``need`` fds fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, need)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return {"soft_was": soft, "hard": hard, "soft_now": now, "need": need, "enough": now >= need}


def child(index: int, count: int, transport: str, hub_ep: str, hub_id: str, pipe: Connection) -> None:
    """Own ``count`` peer Services; obey the parent's commands over ``pipe``."""
    services: list[crust.Service] = []
    sys.setswitchinterval(CHILD_SWITCH_INTERVAL)
    try:
        limit = raise_fd_limit(FDS_PER_PEER_CHILD * count + FD_MARGIN)
        if not limit["enough"]:
            pipe.send(("error", f"child {index}: open-file limit {limit['soft_now']} (hard {limit['hard']}) "
                                f"< {limit['need']} needed for {count} peers"))
            return
        rss0 = rss_kib()
        hub = crust.PeerId.from_str(hub_id)
        cfg = base_config(transport, hard_coded_contacts=[crust.Contact(hub_ep, peer_id=hub)],
                          bootstrap_timeout=BOOTSTRAP_TIMEOUT)
        received: dict[int, float] = {}

        def make_handler(slot: int) -> Callable[[crust.PeerId, bytes], None]:
            def got(peer_id: crust.PeerId, data: bytes) -> None:
                if data == MESSAGE and slot not in received:
                    received[slot] = time.monotonic()
            return got

        for slot in range(count):
            svc = crust.Service(cfg, dispatch="manual")
            svc.on_message(make_handler(slot))
            services.append(svc)
        pipe.send(("ready", len(services), rss_kib() - rss0))

        if pipe.recv() != "go":
            return
        start = time.monotonic()
        failures: list[str] = []
        with ThreadPoolExecutor(BOOTSTRAP_THREADS) as pool:
            futures = {pool.submit(svc.bootstrap, (), crust.CrustUser.CLIENT, BOOTSTRAP_TIMEOUT): i
                       for i, svc in enumerate(services)}
            for future in as_completed(futures, timeout=CONNECT_DEADLINE):
                try:
                    future.result()
                except Exception as exc:  # noqa: BLE001 - reported to the parent
                    failures.append(f"{type(exc).__name__}: {exc}")
        first_pass = time.monotonic() - start
        # one bounded retry round for failures, sequential
        retried = 0
        for svc in services:
            if retried >= 50 or svc.is_connected(hub):
                continue
            retried += 1
            try:
                svc.bootstrap((), crust.CrustUser.CLIENT, BOOTSTRAP_TIMEOUT)
            except Exception as exc:  # noqa: BLE001
                failures.append(f"retry {type(exc).__name__}: {exc}")
        connected = sum(svc.is_connected(hub) for svc in services)
        pipe.send(("connected", connected, time.monotonic() - start, failures[:5], len(failures),
                   rss_kib() - rss0, threading.active_count(), first_pass))

        if pipe.recv() != "poll":
            return
        # A sweep of run_callbacks(0) over 500 idle Services costs ~250 us of CPU, and twenty
        # children sweeping often would take the cores the broadcast needs.  So a sweep reads each
        # dispatcher's queue length (a private attribute; ~45 us for 500), runs callbacks only
        # where something is queued, drops the peers that have the message, and sleeps
        # POLL_INTERVAL between sweeps: ~0.2 of a core for all children at first, then less.
        waiting = [(slot, svc, getattr(svc, "_dispatcher", None)) for slot, svc in enumerate(services)]
        pipe.send("polling")
        cpu0 = time.process_time()
        deadline = time.monotonic() + BROADCAST_DEADLINE
        rounds = 0
        while waiting and len(received) < connected and time.monotonic() < deadline:
            for _, svc, dispatcher in waiting:
                if dispatcher is None or dispatcher.pending:
                    svc.run_callbacks(timeout=0.0)
            waiting = [entry for entry in waiting if entry[0] not in received]
            rounds += 1
            if waiting and len(received) < connected:
                time.sleep(POLL_INTERVAL)
        pipe.send(("broadcast", len(received), max(received.values(), default=0.0),
                   min(received.values(), default=0.0), rounds, time.process_time() - cpu0))

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


def recv_all(pipes: list[Connection], tag: str, timeout: float,
             on_tick: Callable[[], None] | None = None) -> list[tuple[Any, ...]]:
    """Collect one message tagged ``tag`` from each pipe, within ``timeout``."""
    results: dict[int, tuple[Any, ...]] = {}
    deadline = time.monotonic() + timeout
    while len(results) < len(pipes):
        left = deadline - time.monotonic()
        if left <= 0:
            raise SystemExit(f"timed out waiting for {tag!r} from {len(pipes) - len(results)} children")
        for ready in mp_wait([p for i, p in enumerate(pipes) if i not in results], timeout=min(left, 0.2)):
            index = pipes.index(ready)  # type: ignore[arg-type]
            try:
                msg = pipes[index].recv()
            except EOFError:
                raise SystemExit(f"a child exited while we waited for {tag!r}") from None
            name = msg[0] if isinstance(msg, tuple) else msg
            if name == "error":
                raise SystemExit(msg[1])
            if name == tag:
                results[index] = msg if isinstance(msg, tuple) else (msg,)
        if on_tick:
            on_tick()
    return [results[i] for i in range(len(pipes))]


def peers_of(hub: crust.Service, wait: float = 15.0) -> list[crust.PeerInfo]:
    """``hub.peers()``, waiting up to ``wait`` s for a saturated hub (then ``[]``, with a note on stderr)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return hub.peers()
        except crust.CrustTimeoutError:
            if time.monotonic() > deadline:
                print(f"hub.peers() got no answer from the hub's I/O thread for {wait} s", file=sys.stderr)
                return []


class LostPeers(logging.Handler):
    """Counts why the engine dropped peers, from its "lost peer %r: %s" log record (it should drop none)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.reasons: dict[str, int] = {}
        self.logger = logging.getLogger("crust")
        self.old_level = self.logger.level
        self.logger.addHandler(self)
        if not self.logger.isEnabledFor(logging.INFO):
            self.logger.setLevel(logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == "lost peer %r: %s" and isinstance(record.args, tuple) and len(record.args) == 2:
            key = str(record.args[1]).split(":")[0][:60]
            self.reasons[key] = self.reasons.get(key, 0) + 1

    def remove(self) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.old_level)


class HubProfile:
    """cProfile on the hub's I/O thread, switched on and off on that thread (a private handle)."""

    def __init__(self, hub: crust.Service, directory: str | None, transport: str) -> None:
        self.hub, self.directory, self.transport = hub, directory, transport
        self.prof: cProfile.Profile | None = None

    def start(self) -> None:
        if self.directory is None:
            return
        self.prof = cProfile.Profile()
        self.hub._reactor.call(self.prof.enable, 10.0)  # type: ignore[attr-defined]

    def stop(self, phase: str) -> None:
        if self.directory is None or self.prof is None:
            return
        self.hub._reactor.call(self.prof.disable, 30.0)  # type: ignore[attr-defined]
        save(self.prof, self.directory, f"{self.transport}-{phase}")
        self.prof = None


def save(prof: cProfile.Profile, directory: str, name: str) -> None:
    """Write ``prof`` to ``directory/name.prof`` and print its top functions by own time."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{name}.prof")
    prof.dump_stats(path)
    out = io.StringIO()
    stats = pstats.Stats(path, stream=out)
    stats.sort_stats("tottime").print_stats(18)
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    print(f"--- profile {name} ({path}), top by own time:")
    for line in lines[2:24]:
        print("   ", line[:150])


T0 = time.monotonic()


def progress(what: str) -> None:
    """A timestamped line on stderr, so a run that stalls shows where."""
    print(f"[{time.monotonic() - T0:7.1f} s, load {os.getloadavg()[0]:.1f}] {what}", file=sys.stderr, flush=True)


def measure(peers: int, procs: int, transport: str, profile_dir: str | None) -> dict[str, Any]:
    procs = max(1, min(procs, peers))
    fd_limit = raise_fd_limit((peers if transport == "tcp" else 0) + FD_MARGIN)
    result: dict[str, Any] = {"peers": peers, "procs": procs, "transport": transport, "fd_limit": fd_limit,
                              "load_start": os.getloadavg()[0]}
    if not fd_limit["enough"]:
        print(f"open-file limit too low for the hub: soft {fd_limit['soft_now']}, hard {fd_limit['hard']}, "
              f"need {fd_limit['need']} (raise the hard limit: ulimit -Hn / limits.conf)", file=sys.stderr)
    hub = crust.Service(base_config(transport, max_peers=max(4096, peers + 64),
                                    max_pending_handshakes_per_ip=1024, max_pending_handshakes=2048))
    hub_ep = str(hub.start_listening()[0])
    lost = LostPeers()
    profile = HubProfile(hub, profile_dir, transport)
    gc.collect()
    threads_before = threading.active_count()
    rss_before = rss_kib()
    fds_before = open_fds()

    ctx = mp.get_context("spawn")
    shares = [peers // procs + (1 if i < peers % procs else 0) for i in range(procs)]
    pipes: list[Connection] = []
    workers: list[Any] = []
    try:
        for i, n in enumerate(shares):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=child, args=(i, n, transport, hub_ep, str(hub.id), theirs), daemon=True)
            proc.start()
            theirs.close()
            pipes.append(ours)
            workers.append(proc)
        t = time.monotonic()
        ready = recv_all(pipes, "ready", STEP)
        progress(f"{transport}: {peers} peer Services created in {procs} processes")
        result["create_peers_s"] = round(time.monotonic() - t, 3)
        result["peer_rss_idle_unconnected_kib"] = round(sum(r[2] for r in ready) / peers, 1)

        peak = [threading.active_count()]

        def sample() -> None:
            peak[0] = max(peak[0], threading.active_count())

        result["load_connect"] = os.getloadavg()[0]
        profile.start()
        start = time.monotonic()
        for pipe in pipes:
            pipe.send("go")
        reports = recv_all(pipes, "connected", CONNECT_DEADLINE + STEP, sample)
        children_done = time.monotonic() - start
        progress(f"{transport}: children connected {sum(r[1] for r in reports)} in {children_done:.1f} s")
        connected = sum(r[1] for r in reports)
        # the hub may see the last few a moment after the children do (hub.peers() runs on the
        # hub's I/O thread: poll it slowly)
        wait_until = time.monotonic() + 10.0
        hub_peers = len(peers_of(hub))
        while hub_peers < connected and time.monotonic() < wait_until:
            sample()
            time.sleep(0.1)
            hub_peers = len(peers_of(hub))
        connect_all = time.monotonic() - start
        profile.stop("connect")
        time.sleep(1.0)  # let the hub settle (handshake buffers released)
        gc.collect()
        # the hub's CPU while every peer sits idle: heartbeats (and rUDP keepalives) only
        cpu0, idle0 = time.process_time(), time.monotonic()
        time.sleep(IDLE_WINDOW)
        result["hub_idle_cpu_pct"] = round(100 * (time.process_time() - cpu0) / (time.monotonic() - idle0), 1)
        sample()
        threads_after = threading.active_count()
        rss_after = rss_kib()
        result.update({
            "connected": connected, "hub_peers": hub_peers,
            "connect_all_s": round(connect_all, 3), "children_connect_s": round(children_done, 3),
            "children_first_pass_s": [round(r[7], 2) for r in reports],
            "bootstrap_failures": sum(r[4] for r in reports),
            "failure_samples": [f for r in reports for f in r[3]][:5],
            "hub_threads_before": threads_before, "hub_threads_peak": peak[0],
            "hub_threads_after": threads_after,
            "hub_thread_names": sorted({t.name for t in threading.enumerate()}),
            "hub_fds_before": fds_before, "hub_fds_after": open_fds(),
            "hub_rss_before_kib": rss_before, "hub_rss_after_kib": rss_after,
            "hub_rss_per_peer_kib": round((rss_after - rss_before) / max(1, hub_peers), 2),
            "peer_rss_per_peer_kib": round(sum(r[5] for r in reports) / max(1, connected), 1),
            "child_threads": [r[6] for r in reports],
        })

        for pipe in pipes:
            pipe.send("poll")
        recv_all(pipes, "polling", STEP)
        infos = peers_of(hub, 60.0)
        ids = [info.id for info in infos]
        sent0 = sum(info.bytes_sent for info in infos)
        gc.collect()
        result["load_broadcast"] = os.getloadavg()[0]
        send_prof = cProfile.Profile() if profile_dir else None
        profile.start()
        # Nothing else touches the hub while the broadcast is under way: hub.peers() would run on
        # its I/O thread, the one doing the work being timed.
        t0, cpu0 = time.monotonic(), time.process_time()
        if send_prof:
            send_prof.enable()
        send_errors = 0
        for pid in ids:
            try:
                hub.send(pid, MESSAGE, timeout=10.0)
            except crust.CrustError:
                send_errors += 1
        sends_done = time.monotonic() - t0
        progress(f"{transport}: send() loop over {len(ids)} peers took {sends_done:.3f} s")
        if send_prof:
            send_prof.disable()
        casts = recv_all(pipes, "broadcast", BROADCAST_DEADLINE + STEP)
        hub_cpu = time.process_time() - cpu0  # all hub threads, until the last child reported
        progress(f"{transport}: broadcast reached {sum(c[1] for c in casts)} peers")
        profile.stop("broadcast")
        if send_prof and profile_dir:
            save(send_prof, profile_dir, f"{transport}-sendloop")
        written = sum(info.bytes_sent for info in peers_of(hub, 60.0)) - sent0
        got = sum(c[1] for c in casts)
        last = max((c[2] for c in casts if c[1]), default=t0)
        result.update({
            "broadcast_sent": len(ids) - send_errors, "broadcast_received": got,
            "broadcast_send_loop_s": round(sends_done, 4),
            "broadcast_last_s": round(last - t0, 4),
            "broadcast_first_s": round(min((c[3] for c in casts if c[1]), default=t0) - t0, 4),
            "broadcast_hub_cpu_s": round(hub_cpu, 3),
            "broadcast_peers_cpu_s": round(sum(c[5] for c in casts), 3),
            "broadcast_hub_bytes_per_peer": round(written / max(1, len(ids)), 1),
            "hub_threads_end": threading.active_count(),
            "hub_lost_peers": dict(lost.reasons),
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
        lost.remove()
    result["load_end"] = os.getloadavg()[0]
    return result


def report(r: dict[str, Any]) -> None:
    lim = r["fd_limit"]
    rows = [
        ("transport", r["transport"]),
        ("peers connected (children / hub)", f"{r.get('connected')} / {r.get('hub_peers')} of {r['peers']}"
                                             f" in {r['procs']} procs"),
        ("bootstrap failures", r.get("bootstrap_failures")),
        ("fd limit soft was / now / hard", f"{lim['soft_was']} / {lim['soft_now']} / {lim['hard']}"),
        ("load avg at start / connect / broadcast / end",
         f"{r.get('load_start'):.2f} / {r.get('load_connect', 0):.2f} / {r.get('load_broadcast', 0):.2f}"
         f" / {r.get('load_end', 0):.2f}"),
        ("create peer Services", f"{r.get('create_peers_s')} s"),
        ("connect all", f"{r.get('connect_all_s')} s"),
        ("hub threads before / peak / after", f"{r.get('hub_threads_before')} / {r.get('hub_threads_peak')}"
                                              f" / {r.get('hub_threads_after')}"),
        ("hub open fds before / after", f"{r.get('hub_fds_before')} / {r.get('hub_fds_after')}"),
        ("hub RSS before / after", f"{r.get('hub_rss_before_kib')} / {r.get('hub_rss_after_kib')} KiB"),
        ("hub RSS per idle peer", f"{r.get('hub_rss_per_peer_kib')} KiB"),
        ("hub CPU with all peers idle", f"{r.get('hub_idle_cpu_pct')} % of a core"),
        ("peer-side RSS per peer", f"{r.get('peer_rss_per_peer_kib')} KiB"),
        ("broadcast 1 KiB: received", f"{r.get('broadcast_received')} of {r.get('broadcast_sent')}"),
        ("broadcast: send loop", f"{r.get('broadcast_send_loop_s')} s"),
        ("broadcast: first / last peer has it", f"{r.get('broadcast_first_s')} / {r.get('broadcast_last_s')} s"),
        ("broadcast: CPU until all had it, hub / peers", f"{r.get('broadcast_hub_cpu_s')} / "
                                                         f"{r.get('broadcast_peers_cpu_s')} s"),
        ("hub lost peers (reason: count)", r.get("hub_lost_peers")),
        ("close peers", f"{r.get('close_peers_s')} s"),
    ]
    for name, value in rows:
        print(f"{name:<46} {value}")
    if r.get("failure_samples"):
        print("failure samples:", *r["failure_samples"], sep="\n  ")
    print(json.dumps(r), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--peers", type=int, default=10000)
    parser.add_argument("--procs", type=int, default=0, help=f"child processes (default: one per "
                                                             f"{PEERS_PER_PROC} peers, at least 4)")
    parser.add_argument("--transport", choices=("tcp", "udp", "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="100 peers")
    parser.add_argument("--profile", metavar="DIR", help="cProfile the hub's connect and broadcast phases")
    args = parser.parse_args()
    peers = 100 if args.quick else args.peers
    procs = args.procs or max(4, math.ceil(peers / PEERS_PER_PROC))
    ok = True
    for transport in (("tcp", "udp") if args.transport == "both" else (args.transport,)):
        r = measure(peers, procs, transport, args.profile)
        report(r)
        ok = ok and r.get("hub_peers") == peers and r.get("broadcast_received") == peers
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
