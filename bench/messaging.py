#!/usr/bin/env python3
"""Messaging benchmark: crust.Service against raw-socket baselines, two processes on loopback.

Usage::

    python bench/messaging.py            # full run (40-90 s; < 2 min)
    python bench/messaging.py --quick    # small sizes (~5 s; up to ~20 s on a loaded machine)
    python bench/messaging.py --profile rate --profiler py-spy --profile-dir /tmp/prof

What is measured (each between a *sender* process and a *receiver* process,
the same layout for every kind of transport):

(a) throughput of 64 KiB messages (MB/s = 10^6 payload bytes per second);
(b) rate of 100-byte messages (msgs/s), the sender blocking on ``send()``
    backpressure as usual;
(c) round trip of 100-byte ping-pong (µs per round trip, median and p99).

Kinds of transport:

* ``raw``   -- a blocking TCP socket with ``u32 length ‖ payload`` frames.
  For (b) two senders: ``naive`` (one ``sendall`` per message) and
  ``batched`` (frames appended to a buffer, one ``sendall`` per >= 64 KiB).
* ``aead``  -- the same, with one pycryptodome ChaCha20-Poly1305 seal per
  message on the sender and one open on the receiver (crust's cipher, see
  ``crust/crypto/aead.py``: 96-bit nonce = 4 zero bytes ‖ u64le counter).
  Used for (a) and (c).
* ``crust`` -- two ``crust.Service`` instances (``listen_host="127.0.0.1"``,
  ``bootstrap_cache_path=None``, default ``send_queue_limit``) through the
  public API only: ``start_listening``, ``bootstrap``, ``send``,
  ``on_message``, ``close``.

Timing: the sender takes ``perf_counter()`` just before its first send; the
receiver stamps every message it hands to the application and reports the
stamp of the last one.  ``perf_counter`` is CLOCK_MONOTONIC on Linux, so the
two processes share the clock.  elapsed = last receive - first send.  The
ping-pong is driven from the receive path on both kinds (crust: from the
sender's ``on_message`` callback; raw: the blocking recv loop).

Every phase runs ``--repeat`` times (interleaved across kinds to spread
noise) after one discarded warm-up; the median is reported.  The table is
printed first and, last, one JSON line with every number and ratio.

Besides wall-clock numbers, each run records the CPU time of both processes
(all threads, ``getrusage``) per message, and how many cores *other*
processes kept busy meanwhile (``/proc/stat``): on a shared 2-core machine
the wall-clock numbers move with other load, the CPU cost per message much
less.  After each crust phase (outside the timed region) the sender's
``peer_info().bytes_sent`` gives wire bytes per message and messages per
AEAD frame.

``--profile PHASE`` runs one crust phase for ~5 s while ``py-spy`` samples
both processes (``pip install py-spy``), then prints self time by layer and
the top functions; ``--profiler cprofile`` instead profiles every thread
with cProfile (exact call counts, inflated times).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable

_HDR = struct.Struct(">I")
_RECV_SIZE = 256 * 1024
_BATCH = 64 * 1024  # bytes per sendall() of the batched raw sender
_SOCK_TIMEOUT = 60.0  # no blocking socket call may hang the benchmark longer than this
_SPY_RATE = 250  # py-spy samples per second
_END = _HDR.pack(0)  # a zero-length frame ends a raw phase (real messages are never empty)

KINDS = ("raw", "aead", "crust")
# kind -> phases it runs; "rate_naive"/"rate_batched" are the two raw senders of (b).
PLAN = {
    "raw": ("tput", "rate_naive", "rate_batched", "rtt"),
    "aead": ("tput", "rtt"),
    "crust": ("tput", "rate", "rtt"),
}

FULL: dict[str, Any] = dict(tput_bytes=256 * 2**20, rate_count=200_000, rtt_count=2000, cap=5.0, repeat=3)
QUICK: dict[str, Any] = dict(tput_bytes=32 * 2**20, rate_count=20_000, rtt_count=500, cap=2.0, repeat=1)
TPUT_SIZE = 64 * 1024
SMALL_SIZE = 100


def _sys_busy() -> float:
    """CPU seconds the whole machine has been busy (every process), from /proc/stat; 0 if unknown."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _wait_idle(limit: float) -> float:
    """Wait (at most ``limit`` s) until other processes use < 0.15 cores over 1 s; returns that load."""
    deadline = time.monotonic() + limit
    while True:
        b0, t0 = _sys_busy(), time.monotonic()
        time.sleep(1.0)
        load = (_sys_busy() - b0) / (time.monotonic() - t0)
        if load < 0.15 or time.monotonic() >= deadline:
            return load


def _cpu() -> float:
    """CPU seconds (user + system) of this whole process, every thread."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _phase_params(phase: str, sizes: dict[str, Any], scale: float = 1.0) -> dict[str, Any]:
    cap = sizes["cap"]
    if phase == "tput":
        count = max(16, int(sizes["tput_bytes"] * scale) // TPUT_SIZE)
        return dict(phase=phase, size=TPUT_SIZE, count=count, cap=cap)
    if phase.startswith("rate"):
        return dict(phase=phase, size=SMALL_SIZE, count=max(1000, int(sizes["rate_count"] * scale)), cap=cap)
    return dict(phase=phase, size=SMALL_SIZE, count=max(50, int(sizes["rtt_count"] * scale)), cap=cap)


# ---------------------------------------------------------------------------------------------
# The application side shared by every kind: count and stamp what arrives.


class _Counter:
    """What the receiving application does per message: count bytes, stamp the time."""

    __slots__ = ("count", "nbytes", "t_last", "target", "done", "bad")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.nbytes = 0
        self.t_last = 0.0
        self.target = 1 << 62
        self.done = threading.Event()
        self.bad = 0

    def on(self, data: bytes, expect_size: int) -> None:
        self.count += 1
        self.nbytes += len(data)
        if len(data) != expect_size:
            self.bad += 1
        self.t_last = time.perf_counter()
        if self.count >= self.target:
            self.done.set()


# ---------------------------------------------------------------------------------------------
# Raw TCP (optionally with one AEAD seal per message).


# The raw+AEAD kinds and the cipher each runs: ``aead`` is this script's; bench/compare.py adds
# the AES rows so every ceiling is measured in the same run.
AEAD_KINDS = {"aead": "CHACHA20_POLY1305", "aead-gcm": "AES_256_GCM", "aead-ocb": "AES_256_OCB"}


class _Aead:
    """One direction of an AEAD with a counter nonce: crust's own Sealer/Opener.

    The baseline uses the same code as crust (``crust.crypto.aead``; for
    ChaCha20-Poly1305, RFC 8439 assembled from pycryptodome's ChaCha20 and
    Poly1305, the fastest pycryptodome AEAD we know), so it stays the limit
    crust is measured against when it runs that cipher.
    """

    def __init__(self, key: bytes, kind: str = "aead") -> None:
        from crust.crypto.aead import Cipher, Opener, Sealer

        cipher = Cipher[AEAD_KINDS[kind]]
        self.seal = Sealer(key, cipher=cipher).seal
        self.open = Opener(key, cipher=cipher).open


class _FrameReader:
    """Buffered ``u32 length ‖ body`` reader over a blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._recv = sock.recv
        self._buf = bytearray()
        self._pos = 0

    def frames(self, on_frame: Callable[[bytes], None]) -> None:
        """Call ``on_frame(body)`` for every frame until the zero-length end marker."""
        recv, unpack = self._recv, _HDR.unpack_from
        buf, pos = self._buf, self._pos
        try:
            while True:
                end = len(buf)
                while end - pos >= 4:
                    (n,) = unpack(buf, pos)
                    if n == 0:
                        pos += 4
                        return
                    if end - pos - 4 < n:
                        break
                    body = bytes(buf[pos + 4:pos + 4 + n])
                    pos += 4 + n
                    on_frame(body)
                data = recv(_RECV_SIZE)
                if not data:
                    raise ConnectionError("peer closed mid-phase")
                if pos:
                    del buf[:pos]
                    pos = 0
                buf += data
        finally:
            self._pos = pos

    def one(self) -> bytes:
        """Read exactly one frame (the ping-pong sender)."""
        buf, pos, unpack = self._buf, self._pos, _HDR.unpack_from
        while True:
            end = len(buf)
            if end - pos >= 4:
                (n,) = unpack(buf, pos)
                if end - pos - 4 >= n:
                    body = bytes(buf[pos + 4:pos + 4 + n])
                    self._pos = pos + 4 + n
                    return body
            data = self._recv(_RECV_SIZE)
            if not data:
                raise ConnectionError("peer closed mid-phase")
            if pos:
                del buf[:pos]
                pos = 0
            buf += data


def _raw_socket_opts(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as crust's sockets
    sock.settimeout(_SOCK_TIMEOUT)


def _raw_receiver(conn: Any, kind: str, key: bytes) -> None:
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    lsock.settimeout(_SOCK_TIMEOUT)
    conn.send(("ready", "127.0.0.1:%d" % lsock.getsockname()[1]))
    sock, _ = lsock.accept()
    lsock.close()
    _raw_socket_opts(sock)
    reader = _FrameReader(sock)
    counter = _Counter()
    opener = _Aead(key, kind) if kind in AEAD_KINDS else None  # sender -> receiver direction
    sealer = _Aead(key[::-1], kind) if kind in AEAD_KINDS else None  # receiver -> sender direction
    while True:
        cmd = conn.recv()
        if cmd[0] == "quit":
            break
        params = cmd[1]
        counter.reset()
        cpu0 = _cpu()
        conn.send(("armed",))
        size = params["size"]
        if params["phase"] == "rtt":
            sendall = sock.sendall
            pack = _HDR.pack
            if opener is not None and sealer is not None:
                o, s = opener.open, sealer.seal

                def echo(body: bytes) -> None:
                    ct = s(o(body))
                    sendall(pack(len(ct)) + ct)
            else:
                def echo(body: bytes) -> None:
                    sendall(pack(len(body)) + body)
            reader.frames(echo)
        else:
            on = counter.on
            if opener is not None:
                open_ = opener.open
                reader.frames(lambda body: on(open_(body), size))
            else:
                reader.frames(lambda body: on(body, size))
        conn.recv()  # ("expect", n): the sender is done (the end marker already told us)
        conn.send(("done", dict(count=counter.count, nbytes=counter.nbytes, t_last=counter.t_last,
                                bad=counter.bad, cpu=_cpu() - cpu0)))
    sock.close()


def _raw_sender(conn: Any, kind: str, key: bytes, addr: str) -> None:
    host, port = addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=_SOCK_TIMEOUT)
    _raw_socket_opts(sock)
    reader = _FrameReader(sock)
    sealer = _Aead(key, kind) if kind in AEAD_KINDS else None
    opener = _Aead(key[::-1], kind) if kind in AEAD_KINDS else None
    conn.send(("ready", None))
    sendall, pack, perf = sock.sendall, _HDR.pack, time.perf_counter
    cpu0 = _cpu()
    while True:
        cmd = conn.recv()
        if cmd[0] == "quit":
            break
        if cmd[0] == "stats":
            conn.send(("stats", (None, _cpu() - cpu0)))
            continue
        p = cmd[1]
        phase, size, count, cap = p["phase"], p["size"], p["count"], p["cap"]
        payload = os.urandom(size)
        cpu0 = _cpu()
        result: dict[str, Any] = {}
        t0 = perf()
        deadline = t0 + cap
        n = 0
        if phase == "tput":
            seal = sealer.seal if sealer is not None else None
            for n in range(1, count + 1):
                if seal is not None:
                    ct = seal(payload)
                    sendall(pack(len(ct)) + ct)
                else:
                    sendall(pack(size) + payload)
                if perf() > deadline:
                    break
        elif phase == "rate_naive":
            for n in range(1, count + 1):
                sendall(pack(size) + payload)
                if not n & 1023 and perf() > deadline:
                    break
        elif phase == "rate_batched":
            out = bytearray()
            for n in range(1, count + 1):
                out += pack(size)
                out += payload
                if len(out) >= _BATCH:
                    sendall(out)
                    out.clear()
                    if perf() > deadline:
                        break
            if out:
                sendall(out)
        elif phase == "rtt":
            rtts = []
            for n in range(1, count + 1):
                t = perf()
                if sealer is not None and opener is not None:
                    ct = sealer.seal(payload)
                    sendall(pack(len(ct)) + ct)
                    reply = opener.open(reader.one())
                else:
                    sendall(pack(size) + payload)
                    reply = reader.one()
                rtts.append(perf() - t)
                if len(reply) != size:
                    raise RuntimeError("bad echo")
                if perf() > deadline:
                    break
            result["rtts"] = rtts
        t_end = perf()
        sendall(_END)
        result.update(n=n, t0=t0, t_send_end=t_end, cpu=_cpu() - cpu0)
        conn.send(("sent", result))
    sock.close()


# ---------------------------------------------------------------------------------------------
# crust


def _crust_config(kind: str, **extra: Any) -> Any:
    """``crust``: TCP only; ``crust-rudp``: reliable UDP only (bench/compare.py's rudp row)."""
    import crust

    udp = kind == "crust-rudp"
    return crust.Config(listen_host="127.0.0.1", bootstrap_cache_path=None, enable_upnp=False,
                        enable_tcp=not udp, enable_udp=udp, **extra)


def _crust_receiver(conn: Any, kind: str, key: bytes) -> None:
    import crust

    svc = crust.Service(_crust_config(kind))
    counter = _Counter()
    state: dict[str, Any] = {"mode": "count", "size": TPUT_SIZE}

    @svc.on_message
    def on_message(peer_id: Any, data: bytes) -> None:
        if state["mode"] == "echo":
            svc.send(peer_id, data)
        else:
            counter.on(data, state["size"])

    try:
        endpoints = svc.start_listening()
        conn.send(("ready", str(endpoints[0])))
        while True:
            cmd = conn.recv()
            if cmd[0] == "quit":
                break
            params = cmd[1]
            counter.reset()
            state["size"] = params["size"]
            state["mode"] = "echo" if params["phase"] == "rtt" else "count"
            cpu0 = _cpu()
            conn.send(("armed",))
            _, n = conn.recv()  # ("expect", n): the sender is done
            if params["phase"] != "rtt":
                counter.target = n
                if counter.count < n:
                    counter.done.wait(params["cap"] + 60.0)
            conn.send(("done", dict(count=counter.count, nbytes=counter.nbytes, t_last=counter.t_last,
                                    bad=counter.bad, cpu=_cpu() - cpu0)))
    finally:
        svc.close()


def _negotiated_cipher(svc: Any, peer: Any) -> str | None:
    """The transport AEAD the handshake chose with ``peer`` (a private peek: no public API shows it)."""
    try:
        return str(svc._engine._peers.table[peer].conn.channel.cipher.label)
    except (AttributeError, KeyError):
        return None


def _crust_sender(conn: Any, kind: str, key: bytes, addr: str) -> None:
    import crust

    svc = crust.Service(_crust_config(kind, hard_coded_contacts=[addr]))
    rtt: dict[str, Any] = {"samples": [], "left": 0, "t": 0.0, "payload": b"", "done": threading.Event(), "peer": None,
           "deadline": 0.0}
    perf = time.perf_counter

    @svc.on_message
    def on_message(peer_id: Any, data: bytes) -> None:  # ping-pong only: the echo came back
        now = perf()
        rtt["samples"].append(now - rtt["t"])
        rtt["left"] -= 1
        if rtt["left"] > 0 and now < rtt["deadline"]:
            rtt["t"] = perf()
            svc.send(peer_id, rtt["payload"])
        else:
            rtt["done"].set()

    try:
        svc.start_listening()
        peer = svc.bootstrap(timeout=10.0)
        conn.send(("ready", {"cipher": _negotiated_cipher(svc, peer)}))
        send = svc.send
        cpu0 = _cpu()
        while True:
            cmd = conn.recv()
            if cmd[0] == "quit":
                break
            if cmd[0] == "stats":
                conn.send(("stats", (svc.peer_info(peer).bytes_sent, _cpu() - cpu0)))
                continue
            p = cmd[1]
            phase, size, count, cap = p["phase"], p["size"], p["count"], p["cap"]
            payload = os.urandom(size)
            result: dict[str, Any] = {"wire0": svc.peer_info(peer).bytes_sent}
            cpu0 = _cpu()
            t0 = perf()
            deadline = t0 + cap
            n = 0
            if phase == "tput":
                for n in range(1, count + 1):
                    send(peer, payload)
                    if perf() > deadline:
                        break
            elif phase == "rate":
                for n in range(1, count + 1):
                    send(peer, payload)
                    if not n & 1023 and perf() > deadline:
                        break
            elif phase == "rtt":
                rtt.update(samples=[], left=count, payload=payload, done=threading.Event(), deadline=deadline)
                rtt["t"] = perf()
                send(peer, payload)
                if not rtt["done"].wait(cap + 30.0):
                    raise RuntimeError("ping-pong did not finish")
                n = len(rtt["samples"])
                result["rtts"] = rtt["samples"]
            result.update(n=n, t0=t0, t_send_end=perf(), cpu=_cpu() - cpu0)
            conn.send(("sent", result))
    finally:
        svc.close()


# ---------------------------------------------------------------------------------------------
# Child entry and per-thread cProfile.


def _install_cprofile() -> Callable[[str], None]:
    """Profile every thread started from now on, and this one; returns ``dump(prefix)``."""
    import cProfile

    profiles: list[tuple[str, Any]] = []
    orig_run = threading.Thread.run

    def run(self: threading.Thread) -> None:
        prof = cProfile.Profile()
        profiles.append((self.name, prof))
        prof.enable()
        try:
            orig_run(self)
        finally:
            prof.disable()

    threading.Thread.run = run  # type: ignore[method-assign]
    main = cProfile.Profile()
    profiles.append(("main", main))
    main.enable()

    def dump(prefix: str) -> None:
        main.disable()
        for name, prof in profiles:
            prof.dump_stats(f"{prefix}-{name}.prof")

    return dump


def _child(role: str, kind: str, conn: Any, key: bytes, addr: str | None, cprofile_prefix: str | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles ^C and tells us to quit
    dump = _install_cprofile() if cprofile_prefix else None
    try:
        if kind.startswith("crust"):
            if role == "receiver":
                _crust_receiver(conn, kind, key)
            else:
                assert addr is not None
                _crust_sender(conn, kind, key, addr)
        elif role == "receiver":
            _raw_receiver(conn, kind, key)
        else:
            assert addr is not None
            _raw_sender(conn, kind, key, addr)
    except Exception as exc:  # reported to the parent, which fails the run
        try:
            conn.send(("error", f"{kind} {role}: {type(exc).__name__}: {exc}"))
        except OSError:
            pass
        raise
    finally:
        if dump is not None and cprofile_prefix:
            dump(f"{cprofile_prefix}-{role}")


# ---------------------------------------------------------------------------------------------
# The parent: start pairs, run phases, report.


class _Pair:
    """A receiver and a sender process of one kind, connected to each other."""

    def __init__(self, ctx: Any, kind: str, cprofile_prefix: str | None = None,
                 child: Callable[..., None] | None = None) -> None:
        """``child(role, kind, conn, key, addr, cprofile_prefix)`` runs in each process (default ``_child``);
        it must be a module-level function and speak the same pipe protocol (bench/compare.py adds kinds)."""
        self.kind = kind
        target = _child if child is None else child
        key = os.urandom(32)
        self.rconn, rchild = ctx.Pipe()
        self.receiver = ctx.Process(target=target, name=f"bench-{kind}-receiver",
                                    args=("receiver", kind, rchild, key, None, cprofile_prefix), daemon=True)
        self.receiver.start()
        rchild.close()
        self.sender = None
        self.sender_info: Any = None
        self.sconn = None
        try:
            _, addr = self._call(self.rconn, None, 30.0, "ready")
            self.sconn, schild = ctx.Pipe()
            self.sender = ctx.Process(target=target, name=f"bench-{kind}-sender",
                                      args=("sender", kind, schild, key, addr, cprofile_prefix), daemon=True)
            self.sender.start()
            schild.close()
            _, self.sender_info = self._call(self.sconn, None, 30.0, "ready")  # crust: the negotiated cipher
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _call(conn: Any, msg: Any, timeout: float, expect: str) -> Any:
        if msg is not None:
            conn.send(msg)
        if not conn.poll(timeout):
            raise TimeoutError(f"no {expect!r} from a benchmark child within {timeout} s")
        reply = conn.recv()
        if reply[0] == "error":
            raise RuntimeError(reply[1])
        if reply[0] != expect:
            raise RuntimeError(f"expected {expect!r}, got {reply!r}")
        return reply

    def run(self, params: dict[str, Any]) -> dict[str, Any]:
        wait = params["cap"] + 60.0
        busy0, wall0 = _sys_busy(), time.perf_counter()
        self._call(self.rconn, ("run", params), 30.0, "armed")
        _, sent = self._call(self.sconn, ("run", params), wait, "sent")
        _, got = self._call(self.rconn, ("expect", sent["n"]), wait, "done")
        _, (wire, sender_cpu) = self._call(self.sconn, ("stats",), 30.0, "stats")
        busy, wall = _sys_busy() - busy0, time.perf_counter() - wall0
        # The sender's CPU until the receiver got everything: crust's I/O thread goes on sealing
        # and writing queued messages after the send() loop has returned.
        sent["cpu"] = sender_cpu
        result = _result(params, sent, got)
        if wire is not None and sent["n"]:
            # Diagnostics from peer_info(): bytes the sender put on the wire per message, and
            # frames (u32 length + 16-byte tag = 20 bytes each, after 7-byte Data record headers).
            n = sent["n"]
            result["wire_bytes_per_msg"] = (wire - sent["wire0"]) / n
            result["msgs_per_frame"] = n / max(1.0, (wire - sent["wire0"] - n * (params["size"] + 7)) / 20)
        # Cores other processes kept busy meanwhile (tick resolution: 10 ms): the noise indicator.
        result["other_load"] = max(0.0, (busy - sent["cpu"] - got["cpu"]) / wall) if wall > 0 else 0.0
        return result

    def close(self) -> None:
        for conn in (self.sconn, self.rconn):
            if conn is not None:
                try:
                    conn.send(("quit",))
                except OSError:
                    pass
        for proc in (self.sender, self.receiver):
            if proc is not None:
                proc.join(15.0)
                if proc.is_alive():
                    proc.terminate()
                    proc.join(5.0)


def _result(params: dict[str, Any], sent: dict[str, Any], got: dict[str, Any]) -> dict[str, Any]:
    phase, size = params["phase"], params["size"]
    out: dict[str, Any] = {"messages": sent["n"], "cpu_sender_s": round(sent["cpu"], 4),
                           "cpu_receiver_s": round(got["cpu"], 4)}
    if sent["n"]:
        # CPU time per message (per round trip for rtt) of each process, all threads: far less
        # sensitive to other load on the machine than the wall-clock numbers.
        out["cpu_us_snd"] = 1e6 * sent["cpu"] / sent["n"]
        out["cpu_us_rcv"] = 1e6 * got["cpu"] / sent["n"]
    if phase == "rtt":
        rtts = sorted(sent["rtts"])
        us = [r * 1e6 for r in rtts]
        out.update(median_us=statistics.median(us), p99_us=us[min(len(us) - 1, int(len(us) * 0.99))],
                   mean_us=statistics.fmean(us), elapsed_s=sum(rtts))
        return out
    if got["count"] != sent["n"] or got["nbytes"] != sent["n"] * size or got["bad"]:
        raise RuntimeError(f"{phase}: sent {sent['n']} messages, received {got['count']} "
                           f"({got['nbytes']} bytes, {got['bad']} of a wrong size)")
    elapsed = got["t_last"] - sent["t0"]
    out.update(elapsed_s=elapsed, send_s=sent["t_send_end"] - sent["t0"], bytes=got["nbytes"])
    if phase == "tput":
        out["mb_per_s"] = got["nbytes"] / elapsed / 1e6
    else:
        out["msgs_per_s"] = got["count"] / elapsed
    return out


def _median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median headline metric; ``runs`` lists that metric for every run."""
    phase_key = next((k for k in ("mb_per_s", "msgs_per_s", "median_us") if k in runs[0]), None)
    assert phase_key is not None
    ordered = sorted(runs, key=lambda r: r[phase_key])
    med = dict(ordered[(len(ordered) - 1) // 2] if phase_key == "median_us" else ordered[len(ordered) // 2])
    med["runs"] = [round(r[phase_key], 2) for r in runs]
    for key in ("cpu_us_snd", "cpu_us_rcv"):  # medians of their own, run by run
        if all(key in r for r in runs):
            med[key] = statistics.median(r[key] for r in runs)
    return med


def _machine() -> dict[str, Any]:
    try:
        from importlib.metadata import version

        crypto = version("pycryptodome")
    except Exception:
        crypto = "?"
    try:
        import crust

        crust_version = getattr(crust, "__version__", "?")
    except Exception:
        crust_version = "?"
    return dict(nproc=os.cpu_count(), python=platform.python_version(), implementation=platform.python_implementation(),
                pycryptodome=crypto, crust=crust_version, commit=_git_commit(), platform=platform.platform(),
                loadavg_start=[round(x, 2) for x in os.getloadavg()])


def _git_commit() -> str | None:
    """The checkout's commit, with ``+dirty`` when crust/ has uncommitted changes; None outside git."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "../crust"], cwd=here, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None


def _fmt(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "-"
    if x >= 10000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _report(results: dict[str, dict[str, Any]], machine: dict[str, Any], args: argparse.Namespace,
            sizes: dict[str, Any], wall: float) -> dict[str, Any]:
    def get(kind: str, phase: str, key: str) -> float | None:
        return results.get(kind, {}).get(phase, {}).get(key)

    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b

    def cost(kind: str, phase: str) -> float | None:
        """CPU µs per message of the busier side (the one that bounds a CPU-limited rate)."""
        r = results.get(kind, {}).get(phase)
        return None if not r or "cpu_us_snd" not in r else max(r["cpu_us_snd"], r["cpu_us_rcv"])

    ratios = {
        "tput_crust_over_aead": ratio(get("crust", "tput", "mb_per_s"), get("aead", "tput", "mb_per_s")),
        "tput_crust_over_raw": ratio(get("crust", "tput", "mb_per_s"), get("raw", "tput", "mb_per_s")),
        "rate_crust_over_raw_batched": ratio(get("crust", "rate", "msgs_per_s"),
                                             get("raw", "rate_batched", "msgs_per_s")),
        "rate_crust_over_raw_naive": ratio(get("crust", "rate", "msgs_per_s"), get("raw", "rate_naive", "msgs_per_s")),
        "rtt_crust_over_raw": ratio(get("crust", "rtt", "median_us"), get("raw", "rtt", "median_us")),
        "rtt_crust_over_aead": ratio(get("crust", "rtt", "median_us"), get("aead", "rtt", "median_us")),
        "rtt_p99_crust_over_raw": ratio(get("crust", "rtt", "p99_us"), get("raw", "rtt", "p99_us")),
        # The same comparisons on CPU cost per message (baseline cost / crust cost: higher = better for crust).
        "cpu_tput_aead_over_crust": ratio(cost("aead", "tput"), cost("crust", "tput")),
        "cpu_rate_raw_batched_over_crust": ratio(cost("raw", "rate_batched"), cost("crust", "rate")),
        "cpu_rate_raw_naive_over_crust": ratio(cost("raw", "rate_naive"), cost("crust", "rate")),
        "cpu_rtt_crust_over_aead": ratio(cost("crust", "rtt"), cost("aead", "rtt")),
    }
    targets = {"tput_crust_over_aead": 0.8, "rate_crust_over_raw_batched": 0.5}

    def cpu(kind: str, phase: str) -> str:
        r = results.get(kind, {}).get(phase)
        if not r or not r.get("elapsed_s"):
            return "-"
        el = r["elapsed_s"]
        return f"{100 * r['cpu_sender_s'] / el:.0f}%/{100 * r['cpu_receiver_s'] / el:.0f}%"

    def cpu_us(kind: str, phase: str) -> str:
        r = results.get(kind, {}).get(phase)
        if not r or "cpu_us_snd" not in r:
            return "-"
        return f"{r['cpu_us_snd']:.1f}/{r['cpu_us_rcv']:.1f}"

    def rs(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    rows = [
        ("(a) 64 KiB throughput, MB/s", "raw", "tput", "mb_per_s"),
        ("(a) 64 KiB throughput, MB/s", "aead", "tput", "mb_per_s"),
        ("(a) 64 KiB throughput, MB/s", "crust", "tput", "mb_per_s"),
        ("(b) 100 B rate, msgs/s", "raw naive", "rate_naive", "msgs_per_s"),
        ("(b) 100 B rate, msgs/s", "raw batched", "rate_batched", "msgs_per_s"),
        ("(b) 100 B rate, msgs/s", "crust", "rate", "msgs_per_s"),
        ("(c) 100 B RTT median, us", "raw", "rtt", "median_us"),
        ("(c) 100 B RTT median, us", "aead", "rtt", "median_us"),
        ("(c) 100 B RTT median, us", "crust", "rtt", "median_us"),
        ("(c) 100 B RTT p99, us", "raw", "rtt", "p99_us"),
        ("(c) 100 B RTT p99, us", "aead", "rtt", "p99_us"),
        ("(c) 100 B RTT p99, us", "crust", "rtt", "p99_us"),
    ]
    labels = {"raw": "raw TCP", "aead": "raw TCP + AEAD/msg", "crust": "crust", "raw naive": "raw, sendall/msg",
              "raw batched": "raw, 64 KiB sendall"}
    print()
    print(f"crust messaging benchmark  ({'quick' if args.quick else 'full'}; median of {sizes['repeat']} runs; "
          f"{machine['nproc']} cores, Python {machine['python']}, pycryptodome {machine['pycryptodome']})")
    header = (f"{'case':<28} {'transport':<20} {'value':>10} {'runs':<28} {'cpu% s/r':>9} "
              f"{'cpu us/msg s/r':>15} {'other':>6}")
    print(header)
    print("-" * len(header))
    for case, label, phase, key in rows:
        kind = label.split()[0]
        r = results.get(kind, {}).get(phase)
        if not r:
            continue
        runs = ", ".join(_fmt(v) for v in r["runs"]) if key != "p99_us" else ""
        first = key != "p99_us"
        other = f"{r.get('other_load', 0.0):.2f}" if first else ""
        print(f"{case:<28} {labels[label]:<20} {_fmt(r.get(key)):>10} {runs:<28} "
              f"{cpu(kind, phase) if first else '':>9} {cpu_us(kind, phase) if first else '':>15} {other:>6}")
    print()
    print(f"{'ratio':<44} {'value':>8} {'target':>8}")
    print("-" * 62)
    names = {
        "tput_crust_over_aead": "(a) crust / raw+AEAD throughput",
        "tput_crust_over_raw": "(a) crust / raw throughput",
        "rate_crust_over_raw_batched": "(b) crust / raw batched 100 B rate",
        "rate_crust_over_raw_naive": "(b) crust / raw naive 100 B rate",
        "rtt_crust_over_raw": "(c) crust / raw RTT median (lower=better)",
        "rtt_crust_over_aead": "(c) crust / raw+AEAD RTT median",
        "rtt_p99_crust_over_raw": "(c) crust / raw RTT p99",
        "cpu_tput_aead_over_crust": "CPU/msg: raw+AEAD / crust, 64 KiB",
        "cpu_rate_raw_batched_over_crust": "CPU/msg: raw batched / crust, 100 B",
        "cpu_rate_raw_naive_over_crust": "CPU/msg: raw naive / crust, 100 B",
        "cpu_rtt_crust_over_aead": "CPU/round trip: crust / raw+AEAD",
    }
    for key, name in names.items():
        target = targets.get(key)
        mark = ""
        value = ratios[key]
        if target is not None and value is not None:
            mark = "  ok" if value >= target else "  MISSED"
        print(f"{name:<44} {rs(ratios[key]):>8} {('>= %.1f' % target) if target else '':>8}{mark}")
    print(f"\nwall time {wall:.1f} s.  cpu% s/r: CPU time of the sender / receiver process (all threads) over the "
          f"elapsed time, 100% = one core.  cpu us/msg s/r: the same per message (per round trip for RTT), "
          f"median of the runs.\nother: cores busy with other processes during the median run "
          f"(whole benchmark: {machine.get('other_load_avg', 0.0):.2f} of {machine['nproc']}); "
          f"wall-clock numbers taken with other > ~0.3 are noisy, the CPU-cost ratios much less so.")
    machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    return {"bench": "messaging", "mode": "quick" if args.quick else "full", "sizes": sizes, "machine": machine,
            "results": results, "ratios": {k: (None if v is None else round(v, 4)) for k, v in ratios.items()},
            "targets": targets, "wall_s": round(wall, 2),
            "notes": {"mb": "10^6 payload bytes", "rate_baseline": "raw batched = 64 KiB sendall batches; "
                      "raw naive = one sendall per message", "rtt": "callback/recv-loop driven ping-pong"}}


def _round(obj: Any) -> Any:
    if isinstance(obj, float):
        return round(obj, 4)
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round(v) for v in obj]
    return obj


def _bench(args: argparse.Namespace) -> int:
    sizes = dict(QUICK if args.quick else FULL)
    if args.repeat:
        sizes["repeat"] = args.repeat
    ctx = mp.get_context("spawn")
    machine = _machine()
    if args.wait_idle:
        machine["other_load_before"] = round(_wait_idle(args.wait_idle), 3)
    started = time.perf_counter()
    busy0, self0 = _sys_busy(), _cpu()
    pairs: dict[str, _Pair] = {}
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {k: {p: [] for p in PLAN[k]} for k in KINDS}
    kinds = [k for k in KINDS if k in args.kinds.split(",")]
    try:
        for kind in kinds:
            pairs[kind] = _Pair(ctx, kind)
        # One discarded warm-up per kind and phase (JIT-free Python still warms caches, buffers, TCP windows).
        for kind in kinds:
            for phase in PLAN[kind]:
                pairs[kind].run(_phase_params(phase, sizes, scale=0.1))
        for rep in range(sizes["repeat"]):
            for phase in ("tput", "rate", "rtt"):
                for kind in kinds:
                    for p in PLAN[kind]:
                        if p == phase or p.startswith(phase + "_"):
                            runs[kind][p].append(pairs[kind].run(_phase_params(p, sizes)))
            if args.verbose:
                print(f"repeat {rep + 1} done at {time.perf_counter() - started:.1f} s", file=sys.stderr)
    finally:
        for pair in pairs.values():
            pair.close()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    ours = children.ru_utime + children.ru_stime + _cpu() - self0
    elapsed = time.perf_counter() - started
    machine["other_load_avg"] = round(max(0.0, (_sys_busy() - busy0 - ours) / elapsed), 3)
    results = {k: {p: _median_of(r) for p, r in ph.items() if r} for k, ph in runs.items() if k in kinds}
    results = _round(results)
    doc = _report(results, machine, args, sizes, time.perf_counter() - started)
    print(json.dumps(doc, separators=(",", ":")))
    return 0


# ---------------------------------------------------------------------------------------------
# Profiling one crust phase (py-spy sampling of both processes, or cProfile per thread).


def _strip_line(frame: str) -> str:
    """``"f (path/x.py:12)"`` -> ``"f (path/x.py)"``."""
    head, sep, tail = frame.rpartition(":")
    return f"{head})" if sep and tail.rstrip(")").isdigit() else frame


_LAYERS = (  # (substring of a leaf frame's file, layer), first match wins
    ("Crypto/", "pycryptodome (AEAD C calls + cffi glue)"),
    ("cffi/", "pycryptodome (AEAD C calls + cffi glue)"),
    ("crust/crypto/", "crust AEAD wrapper (Sealer/Opener)"),
    ("crust/engine", "engine (sans-IO)"),
    ("crust/channel.py", "channel (frame/record codec)"),
    ("crust/outbox.py", "outbox"),
    ("crust/wire/", "wire (framing, records)"),
    ("crust/service.py", "Service shell (send, pump, account, backlog)"),
    ("crust/runtime/", "runtime (driver, streams, send flow)"),
    ("crust/dispatch.py", "Dispatcher"),
    ("crust/transport/tcp.py", "TcpStream (incl. recv/send syscalls)"),
    ("crust/transport/reactor.py", "Reactor loop"),
    ("selectors.py", "Reactor loop"),
    ("threading.py", "threading locks / conditions"),
    ("<string>", "dataclass-generated __init__/__hash__ (events, PeerId)"),
    ("messaging.py", "benchmark application"),
)


def _layer(frame: str) -> str:
    for needle, layer in _LAYERS:
        if needle in frame:
            return layer
    return "other"


def summarize_pyspy(path: str, rate: float, top: int = 20) -> str:
    """Per-thread shares, and top functions by self and by inclusive samples, of a ``py-spy --format raw`` file."""
    from collections import Counter

    threads: Counter[str] = Counter()
    self_fn: Counter[str] = Counter()
    self_line: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            n = int(count)
            frames = stack.split(";")
            thread = frames[0].split(": ", 1)[-1] if frames[0].startswith("thread") else "?"
            frames = frames[1:] if frames[0].startswith("thread") else frames
            total += n
            threads[thread] += n
            if frames:
                self_line[f"[{thread}] {frames[-1]}"] += n
                self_fn[_strip_line(frames[-1])] += n
                layers[_layer(frames[-1])] += n
            for fn in {_strip_line(fr) for fr in frames}:
                incl[fn] += n
    if not total:
        return f"{path}: no samples\n"
    out = [f"{path}: {total} samples = {total / rate:.2f} s of thread time"]
    out.append("  per thread: " + ", ".join(f"{t} {100 * c / total:.1f}%" for t, c in threads.most_common()))
    out.append("  self time by layer:")
    for name, c in layers.most_common():
        out.append(f"    {100 * c / total:5.1f}%  {name}")
    for title, table in (("self (leaf function)", self_fn), ("self (leaf line)", self_line),
                         ("inclusive", incl)):
        out.append(f"  top {top} by {title}:")
        for name, c in table.most_common(top):
            out.append(f"    {100 * c / total:5.1f}%  {name}")
    return "\n".join(out) + "\n"


def _profile(args: argparse.Namespace) -> int:
    phase = args.profile
    sizes = dict(FULL)
    os.makedirs(args.profile_dir, exist_ok=True)
    ctx = mp.get_context("spawn")
    cprefix = os.path.join(args.profile_dir, f"crust-{phase}") if args.profiler == "cprofile" else None
    pair = _Pair(ctx, "crust", cprofile_prefix=cprefix)
    spies: list[subprocess.Popen[bytes]] = []
    try:
        pair.run(_phase_params(phase, sizes, scale=0.05))  # warm-up
        params = _phase_params(phase, sizes)
        params["count"] *= 8  # let the time cap end it: a steady state of ~cap seconds
        if args.profiler == "py-spy":
            spy = shutil.which("py-spy")
            if spy is None:
                print("py-spy is not installed (pip install py-spy); use --profiler cprofile", file=sys.stderr)
                return 2
            for role, proc in (("sender", pair.sender), ("receiver", pair.receiver)):
                assert proc is not None
                out = os.path.join(args.profile_dir, f"crust-{phase}-{role}.pyspy.txt")
                cmd = [spy, "record", "--pid", str(proc.pid), "--rate", str(_SPY_RATE), "--format", "raw",
                       "--threads", "--nonblocking", "-o", out]
                if args.gil:
                    cmd.append("--gil")
                spies.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            time.sleep(1.0)  # py-spy attaches
        result = pair.run(params)
        print(json.dumps(_round(result)))
        time.sleep(0.5)  # let py-spy take the last samples
    finally:
        for spy_proc in spies:
            if spy_proc.poll() is None:
                spy_proc.send_signal(signal.SIGINT)
        for spy_proc in spies:
            try:
                spy_proc.wait(20.0)
            except subprocess.TimeoutExpired:
                spy_proc.kill()
                spy_proc.wait(5.0)
        pair.close()
    print(f"profiles written to {args.profile_dir}")
    for role in ("sender", "receiver"):
        out = os.path.join(args.profile_dir, f"crust-{phase}-{role}.pyspy.txt")
        if args.profiler == "py-spy" and os.path.exists(out):
            text = summarize_pyspy(out, _SPY_RATE)
            with open(out.replace(".txt", ".summary.txt"), "w") as f:
                f.write(text)
            print(text)
        elif args.profiler == "cprofile":
            import glob
            import pstats

            for prof in sorted(glob.glob(f"{cprefix}-{role}-*.prof")):
                stats = pstats.Stats(prof)
                total_tt = getattr(stats, "total_tt", 0.0)
                if total_tt < 0.05:
                    continue
                print(f"== {os.path.basename(prof)}: {total_tt:.2f} s")
                stats.sort_stats("tottime").print_stats(15)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: finishes in 5-20 s")
    ap.add_argument("--repeat", type=int, default=0, help="runs per phase (default: 3 full, 1 quick)")
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated subset of raw,aead,crust")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                    help="first wait up to S seconds for other processes to go quiet (a shared machine)")
    ap.add_argument("--profile", choices=("tput", "rate", "rtt"),
                    help="profile one crust phase instead of benchmarking (sender and receiver processes)")
    ap.add_argument("--profiler", choices=("py-spy", "cprofile"), default="py-spy")
    ap.add_argument("--gil", action="store_true", help="py-spy: sample only the thread holding the GIL")
    ap.add_argument("--profile-dir", default="bench-profiles")
    args = ap.parse_args(argv)
    if args.profile:
        return _profile(args)
    return _bench(args)


if __name__ == "__main__":
    sys.exit(main())
