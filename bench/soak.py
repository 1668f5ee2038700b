"""Soak: many Services on loopback doing random work for minutes; nothing may leak or go wrong.

    python bench/soak.py [--minutes 3] [--quick] [--services 16] [--workers 4] [--seed N] [--glibc-defaults]

``--services`` Services live in this process, one per *slot*.  ``--workers`` threads pick random
operations on random slots (seeded: ``--seed`` replays the same choices, though thread timing
differs) until ``--minutes`` (``--quick``: 30 s) have passed:

* bootstrap: A bootstraps off B as a Node or a Client (A's contacts are every slot's TCP
  listener; every other slot's TCP and UDP listeners are blacklisted, as peer exchange teaches
  A the UDP ones).  If B restarted with a new identity, A may still hold B's address with the
  old PeerId: that contact fails once (peer_id_mismatch) and is dropped, so A retries once
  (counted and reported);
* connect: both sides ``prepare_connection_info()``, swap, and ``connect()`` at once;
* send: a burst of 1-40 sequence-numbered messages (0 B to 256 KiB, priority 0 or 1) from A to B,
  then wait until B has them all.  Every message is checked as it arrives: from the right
  PeerId, body intact, and per (sender, receiver, priority) no duplicate and no reordering; a gap
  is a loss unless the connection went down in between (it never does during a burst);
* disconnect: A drops B; both must report ``on_lost``;
* restart: A closes and a new Service takes its slot (same TCP and UDP ports; a new identity one
  time in four); every peer must report ``on_lost`` for the old one.

An operation holds its slots' locks, so the harness's picture of who is connected to whom is
exact between operations, and any failure is a real one.  At the end every connection is
dropped and the checks are: 0 peers anywhere, at most one live reactor timer per Service (the
engine's next deadline; rUDP streams that end last get their close linger or handshake timeout
first) then none once closed, 0 ``crust-*`` threads, open fds back to the baseline taken before
the first Service, 0 misbehaviour reports and 0 dropped sends.  RSS is sampled every second;
after the warm-up (the first third of the run: RSS climbs for a minute or two while the Services
reach more of the states they can be in, then levels) the mean of the last half must be within
``--rss-margin`` % (5 %; 10 % with ``--quick``) of the mean of the first half, and the number of
blocks Python's allocator holds (``sys.getallocatedblocks()``, what a leak of Python objects
grows, whatever the allocators keep) within twice that.  On glibc the
soak first pins malloc's mmap threshold and arena count (:func:`pin_glibc_malloc`;
``--glibc-defaults`` leaves them), so that RSS shows what is held, not what glibc keeps.

Prints a summary and a JSON line; exits 1 if any check failed.  Loopback only (listen_host
127.0.0.1, UPnP off, no LAN discovery started and its targets set to 127.255.255.255 on a private
port anyway, no bootstrap cache file, a network name of its own); every loop and wait is bounded.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import ctypes.util
import gc
import hashlib
import json
import os
import random
import socket
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import crust
from crust.transport.udp import CLOSE_LINGER
from scale import rss_kib  # bench/scale.py: VmRSS of this process

STEP = 30.0  # seconds any one step (a bootstrap, a connect, a burst to arrive, a close) may take
HEADER = struct.Struct(">HHBQI")  # sender slot, receiver slot, priority, seq, body length
SIZES = (0, 1, 100, 1000, 4096, 65536, 262144)
SIZE_WEIGHTS = (5, 10, 40, 25, 10, 8, 2)
M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8  # glibc's mallopt() parameters (malloc.h)


def pin_glibc_malloc() -> bool:
    """Have glibc hand blocks of 128 KiB and more straight back, and keep two arenas; True if done.

    By default glibc raises its mmap threshold to the largest block freed so far (up to 32 MiB),
    after which freed 256 KiB messages stay in its heaps, and busy threads get arenas of their
    own: RSS then steps up by megabytes with no object alive to show for it (tracemalloc sees
    no growth).  Pinned, RSS follows what the process holds.  A no-op (False) off glibc.
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, 128 * 1024)) and bool(mallopt(M_ARENA_MAX, 2))


def free_ports(count: int) -> list[int]:
    """``count`` port numbers, each free for both TCP and UDP on loopback just now, all different."""
    ports: list[int] = []
    for _ in range(100 * count):  # bounded: a port taken by either protocol is skipped
        if len(ports) == count:
            break
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    if len(ports) < count:
        raise RuntimeError(f"found only {len(ports)} of {count} free ports")
    return ports


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def crust_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("crust-") and t.is_alive()]


def live_timers(svc: crust.Service) -> list[str] | None:
    """What the timers armed on the Service's reactor will call (private: None if it has no such reactor)."""
    timers = getattr(getattr(svc, "_reactor", None), "_timers", None)
    if timers is None:
        return None
    handles = [entry[-1] for entry in list(timers) if not entry[-1].cancelled]
    return sorted(_timer_name(getattr(h, "_callback", None)) for h in handles)


def _timer_name(callback: Any) -> str:
    """What a timer will call; for a Deadline, also whose (an rUDP stream says its state and ends)."""
    name = getattr(callback, "__qualname__", "?")
    owner = getattr(getattr(getattr(callback, "__self__", None), "_fire", None), "__self__", None)
    if type(owner).__name__ == "RudpConnection":
        stream = owner._stream
        ends = stream._handshake_deadline - owner._socket.reactor.time()
        name += f" {owner!r}" + ("" if stream.connected else f" (its handshake ends in {ends:.1f} s)")
    return name


def body_of(header: bytes, size: int) -> bytes:
    """A body only this header makes: a corrupted byte anywhere shows."""
    seed = hashlib.blake2b(header, digest_size=32).digest()
    return (seed * (size // 32 + 1))[:size]


def wait_for(condition: Callable[[], bool], timeout: float = STEP) -> bool:
    """Poll ``condition`` every 10 ms for up to ``timeout`` seconds (the harness has no event to wait on)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@dataclass
class Slot:
    """One place for a Service; the Service in it is replaced on restart."""

    index: int
    port: int  # TCP
    udp_port: int
    identity: crust.Identity
    svc: crust.Service | None = None
    listeners: list[crust.Endpoint] = field(default_factory=list)  # TCP and UDP, as start_listening() said
    renamed: bool = False  # restarted with a new identity at least once
    lock: threading.Lock = field(default_factory=threading.Lock)
    peers: set[crust.PeerId] = field(default_factory=set)  # as its on_new_peer / on_lost said


class Soak:
    """The slots, the harness's record of what happened, and the operations."""

    def __init__(self, count: int, seed: int) -> None:
        self.seed = seed
        self.network = f"soak-{seed}-{os.getpid()}"
        # Every listener on a port of its own, UDP ones included: crust's blacklist compares
        # host:port only, so a slot's random UDP port equal to B's TCP port would blacklist B.
        ports = free_ports(2 * count + 1)
        self.discovery_port = ports.pop()
        self.slots = [Slot(i, ports[2 * i], ports[2 * i + 1], crust.Identity.generate()) for i in range(count)]
        self.state = threading.Lock()  # guards everything below
        self.sent: dict[tuple[int, int, int], int] = collections.Counter()  # (from, to, priority) -> last seq
        self.seen: dict[tuple[int, int, int], int] = collections.Counter()  # what the receiver got last
        self.went_down: set[tuple[int, int]] = set()  # (receiver, sender) lost each other since the last message
        self.problems: list[str] = []
        self.ops: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.messages = self.bytes = self.misbehaved = self.dropped = self.restarts = self.stale_ids = 0
        self.contacts = [f"127.0.0.1:{slot.port}" for slot in self.slots]

    # -- Services and their callbacks --------------------------------------------------------------

    def config(self, port: int, udp_port: int) -> crust.Config:
        return crust.Config(tcp_port=port, udp_port=udp_port,
                            listen_host="127.0.0.1", enable_upnp=False, bootstrap_cache_path=None,
                            service_discovery_targets=("127.255.255.255",),
                            service_discovery_port=self.discovery_port, network_name=self.network,
                            hard_coded_contacts=self.contacts, disable_external_reachability_requirement=True,
                            bootstrap_timeout=STEP / 2, connect_timeout=STEP / 2)

    def start(self, slot: Slot) -> None:
        """Put a new Service in ``slot`` (its port may linger a moment after a close: bounded retries)."""
        for _ in range(50):
            svc = crust.Service(self.config(slot.port, slot.udp_port), slot.identity)
            self.wire(slot, svc)
            try:
                slot.listeners = svc.start_listening()
            except crust.ListenerError:
                svc.close()
                time.sleep(0.1)
                continue
            slot.svc = svc
            return
        raise RuntimeError(f"slot {slot.index}: port {slot.port} or {slot.udp_port} stayed busy")

    def wire(self, slot: Slot, svc: crust.Service) -> None:
        index = slot.index

        @svc.on_new_peer
        def new(info: crust.PeerInfo) -> None:
            with self.state:
                slot.peers.add(info.id)

        @svc.on_lost
        def lost(peer: crust.PeerId) -> None:
            with self.state:
                slot.peers.discard(peer)
                sender = self.slot_of(peer)
                if sender is not None:
                    self.went_down.add((index, sender))

        @svc.on_message
        def message(peer: crust.PeerId, data: bytes) -> None:
            self.check_message(index, peer, data)

        @svc.on_misbehaviour
        def misbehaviour(peer: crust.PeerId, reason: str) -> None:
            with self.state:
                self.misbehaved += 1
                self.problems.append(f"slot {index}: misbehaviour of {peer!r}: {reason}")

        @svc.on_send_dropped
        def dropped(peer: crust.PeerId, priority: int, count: int) -> None:
            with self.state:
                self.dropped += count
                self.problems.append(f"slot {index}: {count} sends of priority {priority} dropped")

    def slot_of(self, peer: crust.PeerId) -> int | None:
        for slot in self.slots:
            if slot.identity.peer_id == peer:
                return slot.index
        return None

    def check_message(self, receiver: int, peer: crust.PeerId, data: bytes) -> None:
        problem = None
        try:
            sender, to, priority, seq, size = HEADER.unpack_from(data)
        except struct.error:
            sender = to = priority = seq = size = -1
        with self.state:
            self.messages += 1
            self.bytes += len(data)
            key = (sender, receiver, priority)
            if sender < 0 or to != receiver or len(data) != HEADER.size + size:
                problem = "a malformed message"
            elif self.slots[sender].identity.peer_id != peer:
                problem = f"a message of slot {sender} from another peer"
            elif data[HEADER.size:] != body_of(data[:HEADER.size], size):
                problem = f"a corrupted message {key} #{seq}"
            elif seq <= self.seen[key]:
                problem = f"a duplicate or reordered message {key} #{seq} after #{self.seen[key]}"
            elif seq != self.seen[key] + 1 and (receiver, sender) not in self.went_down:
                problem = f"messages {key} #{self.seen[key] + 1}..#{seq - 1} lost while connected"
            if problem is not None:
                self.problems.append(f"slot {receiver} got {problem}")
            if sender >= 0 and seq > self.seen[key]:  # one problem is reported once, not again for each later message
                self.seen[key] = seq
                self.went_down.discard((receiver, sender))

    # -- operations: each holds both slots' locks, so nothing else touches the pair ------------------

    def connected(self, a: Slot, b: Slot) -> bool:
        with self.state:
            return b.identity.peer_id in a.peers and a.identity.peer_id in b.peers

    def apart(self, a: Slot, b: Slot) -> bool:
        with self.state:
            return b.identity.peer_id not in a.peers and a.identity.peer_id not in b.peers

    def op_bootstrap(self, rng: random.Random, a: Slot, b: Slot) -> str:
        assert a.svc is not None
        # Every other slot's listeners: peer exchange may have told A of their UDP ones too.
        blacklist = [ep for slot in self.slots if slot is not b for ep in slot.listeners] + [
            c for i, c in enumerate(self.contacts) if i != b.index]
        user = rng.choice([crust.CrustUser.NODE, crust.CrustUser.CLIENT])
        try:
            got = a.svc.bootstrap(blacklist=blacklist, user=user, timeout=STEP / 2)
        except crust.BootstrapFailed as exc:
            # A remembers B's address with the PeerId B had before a restart with a new identity:
            # that contact fails once (peer_id_mismatch) and is forgotten, so the next run goes through.
            if b.renamed and exc.reasons.get(self.contacts[b.index]) == "peer_id_mismatch":
                with self.state:
                    self.stale_ids += 1
                got = a.svc.bootstrap(blacklist=blacklist, user=user, timeout=STEP / 2)
            else:
                raise
        if got != b.identity.peer_id:
            raise AssertionError(f"bootstrapped to {got!r}, not slot {b.index}")
        return "ok" if wait_for(lambda: self.connected(a, b)) else "one side never saw on_new_peer"

    def op_connect(self, rng: random.Random, a: Slot, b: Slot, pool: ThreadPoolExecutor) -> str:
        assert a.svc is not None and b.svc is not None
        ours, theirs = a.svc.prepare_connection_info(timeout=STEP / 2), b.svc.prepare_connection_info(timeout=STEP / 2)
        calls = [pool.submit(a.svc.connect, ours, theirs.to_pub(), STEP / 2),
                 pool.submit(b.svc.connect, theirs, ours.to_pub(), STEP / 2)]
        got = [call.result(STEP) for call in calls]
        if got != [b.identity.peer_id, a.identity.peer_id]:
            raise AssertionError(f"connect returned {got}")
        return "ok" if wait_for(lambda: self.connected(a, b)) else "one side never saw on_new_peer"

    def op_send(self, rng: random.Random, a: Slot, b: Slot) -> str:
        assert a.svc is not None
        burst = rng.randint(1, 40)
        last: dict[tuple[int, int, int], int] = {}
        for _ in range(burst):
            priority = rng.randint(0, 1)
            key = (a.index, b.index, priority)
            with self.state:
                self.sent[key] += 1
                seq = last[key] = self.sent[key]
            size = rng.choices(SIZES, SIZE_WEIGHTS)[0]
            header = HEADER.pack(a.index, b.index, priority, seq, size)
            a.svc.send(b.identity.peer_id, header + body_of(header, size), priority=priority, timeout=STEP)

        def arrived() -> bool:
            with self.state:
                return all(self.seen[key] >= seq for key, seq in last.items())
        return "ok" if wait_for(arrived) else f"a burst of {burst} did not all arrive"

    def op_disconnect(self, rng: random.Random, a: Slot, b: Slot) -> str:
        assert a.svc is not None
        if not a.svc.disconnect(b.identity.peer_id):
            return "disconnect() found no connection"
        return "ok" if wait_for(lambda: self.apart(a, b)) else "on_lost missing on one side"

    def op_restart(self, rng: random.Random, a: Slot) -> str:
        assert a.svc is not None
        old = a.identity.peer_id
        a.svc.close(timeout=STEP)
        with self.state:
            a.peers.clear()
            self.restarts += 1
            for other in self.slots:  # a stream from or to this slot may now have a gap
                self.went_down.update({(a.index, other.index), (other.index, a.index)})
        if rng.random() < 0.25:
            a.identity, a.renamed = crust.Identity.generate(), True
        self.start(a)

        def forgotten() -> bool:
            with self.state:
                return not any(old in other.peers for other in self.slots if other is not a)
        return "ok" if wait_for(forgotten) else "a peer never saw on_lost for the closed Service"

    def op_settle(self, a: Slot, b: Slot) -> str:
        """One side lists the other, the other does not: it must resolve by itself."""
        if wait_for(lambda: self.connected(a, b) or self.apart(a, b)):
            return "ok"
        return "the pair stayed half-connected"

    def run_op(self, rng: random.Random, pool: ThreadPoolExecutor) -> None:
        a, b = rng.sample(self.slots, 2)
        first, second = sorted((a, b), key=lambda slot: slot.index)
        if not first.lock.acquire(timeout=1.0):
            return
        try:
            if not second.lock.acquire(timeout=1.0):
                return
            try:
                self.run_locked(rng, pool, a, b)
            finally:
                second.lock.release()
        finally:
            first.lock.release()

    def run_locked(self, rng: random.Random, pool: ThreadPoolExecutor, a: Slot, b: Slot) -> None:
        roll = rng.random()
        call: Callable[[], str]
        if roll < 0.04:
            name, call = "restart", lambda: self.op_restart(rng, a)
        elif self.connected(a, b):
            if roll < 0.75:
                name, call = "send", lambda: self.op_send(rng, a, b)
            else:
                name, call = "disconnect", lambda: self.op_disconnect(rng, a, b)
        elif not self.apart(a, b):
            name, call = "settle", lambda: self.op_settle(a, b)
        elif roll < 0.5:
            name, call = "bootstrap", lambda: self.op_bootstrap(rng, a, b)
        else:
            name, call = "connect", lambda: self.op_connect(rng, a, b, pool)
        try:
            outcome = call()
        except Exception as exc:  # every failure is reported, none stops the soak
            outcome = f"{type(exc).__name__}: {exc}"
        with self.state:
            self.ops[name]["ok" if outcome == "ok" else "failed"] += 1
            if outcome != "ok":
                self.problems.append(f"{name} slot {a.index} -> {b.index}: {outcome}")


def summarize_rss(samples: list[tuple[float, int, int]], margin: float) -> dict[str, Any]:
    """Warm-up: the first third; then the two halves of the rest, compared (RSS, and Python's blocks)."""
    rest = samples[len(samples) // 3:]
    half = max(1, len(rest) // 2)

    def halves(column: int) -> tuple[float, float, float]:
        first = sum(s[column] for s in rest[:half]) / half
        last = sum(s[column] for s in rest[-half:]) / half
        return first, last, (last - first) / first * 100

    first, last, growth = halves(1)
    blocks_first, blocks_last, blocks_growth = halves(2)
    return {"samples": len(samples), "start_mib": samples[0][1] / 1024, "peak_mib": max(s[1] for s in samples) / 1024,
            "end_mib": samples[-1][1] / 1024, "first_half_mib": first / 1024, "last_half_mib": last / 1024,
            "growth_pct": growth, "margin_pct": margin, "flat": abs(growth) <= margin,
            # Twice the margin: how many small objects are alive swings with the connections and
            # messages of the moment (seen: -1.7 % to +6.3 % in 3-minute runs whose traced memory shrank).
            "python_blocks": {"first_half": round(blocks_first), "last_half": round(blocks_last),
                              "growth_pct": round(blocks_growth, 2), "margin_pct": 2 * margin,
                              "flat": abs(blocks_growth) <= 2 * margin},
            "timeline_mib": [(round(t), round(kib / 1024, 1)) for t, kib, _ in samples[::max(1, len(samples) // 20)]]}


def soak(minutes: float, services: int, workers: int, seed: int, rss_margin: float) -> dict[str, Any]:
    gc.collect()
    fds0, threads0 = open_fds(), crust_threads()
    harness = Soak(services, seed)
    started = time.monotonic()
    for slot in harness.slots:
        harness.start(slot)
    deadline = time.monotonic() + minutes * 60
    samples: list[tuple[float, int, int]] = []  # seconds, RSS KiB, Python's allocated blocks
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(1.0):
            samples.append((time.monotonic() - started, rss_kib(), sys.getallocatedblocks()))

    def work(index: int) -> None:
        rng = random.Random(f"{seed}-{index}")
        with ThreadPoolExecutor(2, thread_name_prefix=f"soak-connect-{index}") as pool:
            while time.monotonic() < deadline:
                harness.run_op(rng, pool)

    sampler = threading.Thread(target=sample, name="soak-rss")
    sampler.start()
    threads = [threading.Thread(target=work, args=(i,), name=f"soak-worker-{i}") for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(minutes * 60 + 10 * STEP)  # an op takes at most a few STEPs
    stop.set()
    sampler.join(5)
    busy = time.monotonic() - started

    # Quiesce: drop every connection, then look for leftovers before and after closing.
    for slot in harness.slots:
        assert slot.svc is not None
        for peer in list(slot.peers):
            slot.svc.disconnect(peer)
    quiet = wait_for(lambda: all(not slot.svc.peers() for slot in harness.slots if slot.svc is not None))
    peers_left = sum(len(slot.svc.peers()) for slot in harness.slots if slot.svc is not None)
    # rUDP streams keep a timer of their own for a while after their peer is gone: one closed
    # just now waits up to CLOSE_LINGER for its FIN's ack, and a dial that lost a race may
    # resend its SYN to a peer that ignores it until its handshake timeout.  Only timers that
    # outlive both are left over.
    live = [slot.svc for slot in harness.slots if slot.svc is not None]
    settle = crust.Config().handshake_timeout + CLOSE_LINGER + 3.0
    settled = time.monotonic()
    wait_for(lambda: all(len(live_timers(svc) or ()) <= 1 for svc in live), settle)
    settled = time.monotonic() - settled
    timers_idle = [live_timers(svc) for svc in live]
    for slot in harness.slots:
        assert slot.svc is not None
        slot.svc.close(timeout=STEP)
    timers_closed = [live_timers(slot.svc) for slot in harness.slots if slot.svc is not None]
    wait_for(lambda: not set(crust_threads()) - set(threads0), 10.0)
    gc.collect()
    leaked_threads = sorted(set(crust_threads()) - set(threads0))
    fds = open_fds()
    rss = summarize_rss(samples, rss_margin) if len(samples) >= 6 else {"samples": len(samples), "flat": True}

    checks = {
        "operations failed": sum(c["failed"] for c in harness.ops.values()),
        "message problems": len([p for p in harness.problems if " got " in p]),
        "misbehaviour reports": harness.misbehaved,
        "dropped sends": harness.dropped,
        "peers left": peers_left + (0 if quiet else 1),
        "timers armed when idle beyond one per Service": sum(max(0, len(t or ()) - 1) for t in timers_idle),
        "timers armed after close": sum(len(t or ()) for t in timers_closed),
        "leaked crust threads": len(leaked_threads),
        "fds above baseline": max(0, fds - fds0),
        "rss not flat": 0 if rss["flat"] else 1,
        "python blocks not flat": 0 if rss.get("python_blocks", {"flat": True})["flat"] else 1,
    }
    return {
        "seed": seed, "minutes": minutes, "services": services, "workers": workers, "seconds": round(busy, 1),
        "operations": {name: dict(counts) for name, counts in sorted(harness.ops.items())},
        "restarts": harness.restarts, "stale_id_retries": harness.stale_ids, "messages": harness.messages, "megabytes": round(harness.bytes / 1e6, 1),
        "fds": {"baseline": fds0, "end": fds}, "timers_settled_s": round(settled, 1),
        "timers_idle": timers_idle, "leaked_threads": leaked_threads,
        "rss": rss, "checks": checks, "problems": harness.problems[:20], "ok": not any(checks.values()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--quick", action="store_true", help="30 seconds")
    parser.add_argument("--services", type=int, default=16)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--rss-margin", type=float, default=None,
                        help="percent (default 5; 10 with --quick, whose warm-up is only 10 s)")
    parser.add_argument("--glibc-defaults", action="store_true",
                        help="leave glibc's malloc as it is (its RSS steps up as its heaps keep freed blocks)")
    args = parser.parse_args()
    pinned = False if args.glibc_defaults else pin_glibc_malloc()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    minutes = 0.5 if args.quick else args.minutes
    malloc = "pinned (mmap threshold 128 KiB, 2 arenas)" if pinned else "as the platform has it"
    print(f"soak: {args.services} services, {args.workers} workers, {minutes} min, seed {seed}, malloc {malloc}",
          flush=True)
    margin = args.rss_margin if args.rss_margin is not None else 10.0 if args.quick else 5.0
    result = soak(minutes, args.services, args.workers, seed, margin)
    print(f"{result['seconds']} s, {result['restarts']} restarts, {result['messages']} messages "
          f"({result['megabytes']} MB), {result['stale_id_retries']} bootstraps retried after a PeerId change")
    for name, counts in result["operations"].items():
        print(f"  {name:<10} ok {counts.get('ok', 0):>6}  failed {counts.get('failed', 0)}")
    rss = result["rss"]
    if "growth_pct" in rss:
        print(f"RSS MiB: start {rss['start_mib']:.1f}, peak {rss['peak_mib']:.1f}, after warm-up first half"
              f" {rss['first_half_mib']:.1f}, last half {rss['last_half_mib']:.1f} ({rss['growth_pct']:+.2f} %,"
              f" margin ±{rss['margin_pct']} %)")
        blocks = rss["python_blocks"]
        print(f"Python's allocated blocks after warm-up: first half {blocks['first_half']}, last half"
              f" {blocks['last_half']} ({blocks['growth_pct']:+.2f} %, margin ±{blocks['margin_pct']} %)")
    print(f"fds: baseline {result['fds']['baseline']}, end {result['fds']['end']}")
    for check, value in result["checks"].items():
        print(f"  {'FAIL' if value else 'ok  '} {check}: {value}")
    for problem in result["problems"]:
        print(f"  problem: {problem}")
    print(json.dumps({"bench": "soak", "python": sys.version.split()[0], "malloc": malloc, **result}))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
