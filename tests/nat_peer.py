"""One crust peer driven by JSON commands, for the namespace lab tests (NAT traversal, UPnP).

Started inside a lab namespace; reads one JSON command per line on stdin and
prints one JSON event per line on stdout, flushed at once.  Every event has
``"event"`` and ``"t"`` (seconds since start).  Commands (``"cmd"``):

    listen                           -> {"event": "listening", "endpoints": [...]}
    bootstrap  [blacklist, user]     -> {"event": "bootstrapped", "peer": hex} | error
    nat                              -> {"event": "nat", "tcp": {...}, "udp": {...}, "notes": [...]}
    info                             -> {"event": "info", "info": <PubConnectionInfo JSON>}
    connect    info [timeout]        -> {"event": "connected", "peer", "transport", "addr", "seconds"} | error
    send       peer size [priority, fill]  -> {"event": "sent", "sha256": hex, "bytes": n}  (fill: hex bytes repeated)
    relay_stats                      -> {"event": "relay_stats", "circuits", "opened", "refused", "bytes_relayed",
                                          "chunks_relayed", "tap_hits"} (with --relay; --tap counts chunks holding it)
    peers                            -> {"event": "peers", "peers": [{"peer", "transport", "addr"}]}
    stop_listening                   -> {"event": "stopped", "seconds": s}
    close                            -> {"event": "closed", "seconds": s} (later commands answer ServiceClosed)
    disconnect peer                  -> {"event": "disconnected", "peer", "was": bool (there was a connection)}
    ping       peer [count, size, within]  -> {"event": "pinged", "peer", "rtt_ms": [...], "median_ms", "min_ms",
                                          "max_ms"}: sequential round trips to a peer started with --echo
    blast      peer [count, size, within]  -> {"event": "blasted", "peer", "bytes", "seconds", "mib_per_s"}: count
                                          messages one way, timed on this side to the --echo peer's ack of the last
    quit                             -> the process ends (so does a closed stdin or --lifetime)

Asynchronous events: {"event": "new_peer", "peer", "transport", "addr", "origin"},
{"event": "message", "peer", "bytes", "sha256"}, {"event": "lost", "peer"}.
A failed command answers {"event": "error", "cmd", "type", "message", "reasons"}.

Fault-lab options and commands (tests/test_lab_faults.py): ``--inactivity S`` sets
``inactivity_timeout``, ``--cache PATH`` the bootstrap cache file (default: none).

    send_seq   peer count max_size [seed] [priority]
                                     -> {"event": "sent_seq", "peer", "count", "bytes", "seconds"} | error
    seq_report peer                  -> {"event": "seq_report", "peer", **SeqStream.report()}

``send_seq`` sends ``count`` sequence-numbered messages (sizes log-uniform in
1..``max_size``, bodies derived from their headers) to ``peer``; the receiving
peer checks each one (order, duplicates, body) and says
{"event": "seq_complete", "peer", **report} once the last of a run arrived.
Those messages raise no "message" event.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import queue
import random
import statistics
import struct
import sys
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import crust  # noqa: E402

T0 = time.monotonic()
_out = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    line = json.dumps({"event": event, **fields, "t": round(time.monotonic() - T0, 3)})
    with _out:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def transport_nat(t: crust.TransportNat) -> dict[str, Any]:
    return {"external": None if t.external is None else str(t.external), "local": None if t.local is None else str(t.local),
            "mapping": t.mapping.value, "confirmed": t.confirmed, "observers": t.observers}


# -- faults: the options and commands of tests/test_lab_faults.py (one block) ----------------

SEQ_MAGIC = b"crustSEQ"  # what marks a sequence-checked message (random payloads never start so)
SEQ_HEADER = struct.Struct(">8sIIQ")  # magic, seq (from 0), count of the run, run id


def add_fault_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--inactivity", type=float, default=None,
                    help="inactivity_timeout, seconds (default max(120, 6 x heartbeat))")
    ap.add_argument("--cache", default=None, help="bootstrap_cache_path (default: no cache)")


def fault_config(config: crust.Config, args: argparse.Namespace) -> crust.Config:
    """``config`` with the fault options applied (unchanged without them)."""
    changes: dict[str, Any] = {}
    if args.inactivity is not None:
        changes["inactivity_timeout"] = args.inactivity
    if args.cache is not None:
        changes["bootstrap_cache_path"] = args.cache
    return dataclasses.replace(config, **changes) if changes else config


def seq_body(header: bytes, size: int) -> bytes:
    """The body only this header makes (a corrupted or misplaced byte shows)."""
    seed = hashlib.blake2b(header, digest_size=32).digest()
    return (seed * (size // 32 + 1))[:size]


@dataclasses.dataclass
class SeqStream:
    """What one run of a peer's sequence-numbered messages looked like on arrival."""

    run: int
    count: int  # messages in the run
    received: int = 0
    next: int = 0  # the seq we expect next
    duplicates: int = 0  # a seq at or below one seen before
    gaps: int = 0  # a seq beyond the next one: a loss, or the start of a reordering
    corrupt: int = 0
    bytes: int = 0
    started: float = dataclasses.field(default_factory=time.monotonic)  # the first arrival
    seconds: float = 0.0  # from the first arrival to the last
    longest_wait: float = 0.0  # seconds between two arrivals, at most

    def take(self, seq: int, data: bytes) -> bool:
        """Check one message of this run; True when it was the run's last."""
        waited = time.monotonic() - self.started - self.seconds
        self.seconds += waited
        self.longest_wait = max(self.longest_wait, waited)
        self.received += 1
        self.bytes += len(data)
        if data[SEQ_HEADER.size:] != seq_body(data[:SEQ_HEADER.size], len(data) - SEQ_HEADER.size):
            self.corrupt += 1
        if seq < self.next:
            self.duplicates += 1
        elif seq > self.next:
            self.gaps += 1
        self.next = max(self.next, seq + 1)
        return seq == self.count - 1

    def report(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        del out["started"]
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


class SeqChecker:
    """The receiving side of ``send_seq``: one :class:`SeqStream` per sending peer."""

    def __init__(self) -> None:
        self.streams: dict[str, SeqStream] = {}
        self.lock = threading.Lock()

    def on_message(self, peer: crust.PeerId, data: bytes) -> bool:
        """Check ``data`` if it is a sequence-numbered message; True if it was (it is then taken)."""
        if not data.startswith(SEQ_MAGIC) or len(data) < SEQ_HEADER.size:
            return False
        _, seq, count, run = SEQ_HEADER.unpack_from(data)
        with self.lock:
            stream = self.streams.get(str(peer))
            if stream is None or stream.run != run:
                stream = self.streams[str(peer)] = SeqStream(run, count)
            if stream.take(seq, data):
                emit("seq_complete", peer=str(peer), **stream.report())
        return True

    def report(self, peer: str) -> dict[str, Any]:
        with self.lock:
            stream = self.streams.get(peer)
            return stream.report() if stream is not None else {"received": 0}


def send_seq(svc: crust.Service, command: dict[str, Any], checker: SeqChecker) -> None:
    peer = crust.PeerId.from_str(command["peer"])
    count, max_size = int(command["count"]), int(command["max_size"])
    rng = random.Random(command.get("seed", 0))
    run = rng.getrandbits(63)
    start, total = time.monotonic(), 0
    for seq in range(count):
        size = int(math.exp(rng.uniform(0.0, math.log(max_size))))  # log-uniform: many small, some near max_size
        header = SEQ_HEADER.pack(SEQ_MAGIC, seq, count, run)
        data = header + seq_body(header, max(0, size - SEQ_HEADER.size))
        svc.send(peer, data, int(command.get("priority", 0)), timeout=60.0)
        total += len(data)
    emit("sent_seq", peer=command["peer"], count=count, bytes=total, seconds=round(time.monotonic() - start, 3))


def seq_report(svc: crust.Service, command: dict[str, Any], checker: SeqChecker) -> None:
    emit("seq_report", peer=command["peer"], **checker.report(command["peer"]))


FAULT_COMMANDS = {"send_seq": send_seq, "seq_report": seq_report}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--contact", action="append", default=[], help="a hard-coded contact (repeatable)")
    ap.add_argument("--no-tcp", action="store_true")
    ap.add_argument("--no-udp", action="store_true")
    ap.add_argument("--upnp", action="store_true")
    ap.add_argument("--upnp-lease", type=float, default=3600.0, help="upnp_lease, seconds")
    ap.add_argument("--heartbeat", type=float, default=20.0, help="heartbeat_interval, seconds")
    ap.add_argument("--lifetime", type=float, default=120.0)
    ap.add_argument("--tcp-port", type=int, default=0, help="tcp_port (0: random)")
    ap.add_argument("--udp-port", type=int, default=0, help="udp_port (0: random)")
    ap.add_argument("--debug", action="store_true", help="crust's debug log on stderr")
    ap.add_argument("--log-info", action="store_true", help="crust's INFO log on stderr, one line each")
    ap.add_argument("--relay", action="store_true", help="Config.relay: relay for peers that cannot meet")
    ap.add_argument("--relay-max-circuits", type=int, default=16)
    ap.add_argument("--relay-rate", type=int, default=64 * 1024 * 1024, help="relay_max_bytes_per_s")
    ap.add_argument("--tap", default="", help="hex bytes: count relayed chunks that hold them (a plaintext leak)")
    ap.add_argument("--echo", action="store_true", help="answer the ping and blast commands of other peers")
    add_fault_options(ap)
    args = ap.parse_args()
    tap_hits = _tap_relay(bytes.fromhex(args.tap)) if args.tap else [0]
    if args.log_info and not args.debug:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if args.debug:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(relativeCreated)d %(message)s")
        from crust.engine.engine import Engine
        original = Engine.receive_data

        def traced(self: Engine, conn_id: Any, data: bytes, now: float) -> None:
            conn = self._core.conns.get(conn_id)
            if conn is not None and conn.channel is None:
                logging.getLogger("crust").debug("conn %s (%s) got %r", conn_id, conn.role.value, bytes(data[:24]))
            original(self, conn_id, data, now)

        Engine.receive_data = traced  # type: ignore[method-assign]

    config = crust.Config(
        enable_tcp=not args.no_tcp, enable_udp=not args.no_udp, enable_upnp=args.upnp, upnp_lease=args.upnp_lease,
        tcp_port=args.tcp_port, udp_port=args.udp_port, bootstrap_cache_path=None,
        listen_host="0.0.0.0", hard_coded_contacts=args.contact, heartbeat_interval=args.heartbeat,
        inactivity_timeout=max(120.0, 6 * args.heartbeat), network_name="natlab", bootstrap_timeout=15.0,
        relay=args.relay, relay_max_circuits=args.relay_max_circuits, relay_max_bytes_per_s=args.relay_rate,
    )
    svc = crust.Service(fault_config(config, args))
    checker = SeqChecker()
    ours: list[crust.PrivConnectionInfo] = []
    svc.on_new_peer(lambda p: emit("new_peer", peer=str(p.id), transport=p.transport, addr=str(p.addr),
                                   origin=str(p.origin)))
    svc.on_message(lambda peer, data: checker.on_message(peer, data) or data.startswith(BENCH) or emit(
        "message", peer=str(peer), bytes=len(data), sha256=hashlib.sha256(data).hexdigest()))  # BENCH: Measure's
    svc.on_lost(lambda peer: emit("lost", peer=str(peer)))
    measure = Measure(svc, args.echo)
    svc.on_message(measure.on_message)
    done = threading.Event()

    def run(command: dict[str, Any]) -> None:
        cmd = command.get("cmd")
        try:
            if cmd == "listen":
                emit("listening", endpoints=[str(ep) for ep in svc.start_listening()])
            elif cmd in FAULT_COMMANDS:
                FAULT_COMMANDS[cmd](svc, command, checker)
            elif cmd == "bootstrap":
                user = crust.CrustUser.CLIENT if command.get("user", "client") == "client" else crust.CrustUser.NODE
                peer = svc.bootstrap(blacklist=command.get("blacklist", []), user=user)
                emit("bootstrapped", peer=str(peer))
            elif cmd == "nat":
                info = svc.nat_info()
                emit("nat", tcp=transport_nat(info.tcp), udp=transport_nat(info.udp), notes=list(info.notes))
            elif cmd == "info":
                ours[:] = [svc.prepare_connection_info()]
                emit("info", info=ours[0].to_pub().to_json())
            elif cmd == "connect":
                theirs = crust.PubConnectionInfo.from_json(command["info"])
                start = time.monotonic()
                peer = svc.connect(ours[0], theirs, timeout=float(command.get("timeout", 20.0)))
                info = svc.peer_info(peer)
                emit("connected", peer=str(peer), transport=info.transport, addr=str(info.addr),
                     seconds=round(time.monotonic() - start, 3))
            elif cmd == "send":
                size = int(command["size"])
                fill = bytes.fromhex(command.get("fill", ""))
                data = (fill * (size // len(fill) + 1))[:size] if fill else os.urandom(size)
                svc.send(crust.PeerId.from_str(command["peer"]), data, int(command.get("priority", 0)))
                emit("sent", bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
            elif cmd == "peers":
                emit("peers", peers=[{"peer": str(p.id), "transport": p.transport, "addr": str(p.addr)}
                                     for p in svc.peers()])
            elif cmd in ("stop_listening", "close"):
                start = time.monotonic()
                svc.stop_listening() if cmd == "stop_listening" else svc.close()
                emit("stopped" if cmd == "stop_listening" else "closed", seconds=round(time.monotonic() - start, 3))
            elif cmd == "relay_stats":
                stats = svc.relay_stats()
                emit("relay_stats", circuits=stats.circuits, opened=stats.opened, refused=dict(stats.refused),
                     bytes_relayed=stats.bytes_relayed, chunks_relayed=stats.chunks_relayed, tap_hits=tap_hits[0])
            elif cmd == "disconnect":
                was = svc.disconnect(crust.PeerId.from_str(command["peer"]))
                emit("disconnected", peer=command["peer"], was=was)
            elif cmd in Measure.COMMANDS:
                event, fields = measure.run(command)
                emit(event, **fields)
            elif cmd == "quit":
                done.set()
            else:
                emit("error", cmd=cmd, type="UnknownCommand", message=f"unknown command {cmd!r}", reasons={})
        except Exception as exc:  # reported as a line: the test reads stdout, not a traceback
            emit("error", cmd=cmd, type=type(exc).__name__, message=str(exc),
                 reasons=dict(getattr(exc, "reasons", {}) or {}))

    def read_commands() -> None:
        for line in sys.stdin:
            if line.strip():
                # Each command on its own thread: connect() blocks while the test drives the other side.
                threading.Thread(target=run, args=(json.loads(line),), daemon=True).start()
        done.set()

    threading.Thread(target=read_commands, daemon=True).start()
    emit("ready", peer=str(svc.id))
    try:
        done.wait(args.lifetime)
    finally:
        svc.close()
    return 0


# -- bench/nat.py's measurements: round trips (ping) and one-way throughput (blast) to a peer with --echo --

BENCH = b"crust-nat-bench/"  # starts every measurement message; the next byte is its kind
PING, PONG, BLAST, DONE = b"p", b"P", b"b", b"D"  # the --echo end answers PING with PONG, a blast's last with DONE
SEQ = struct.Struct("!II")  # a PING's round number and nonce; a BLAST's index and count


class Measure:
    """Round trips and throughput timed on one side's clock, against a peer started with ``--echo``.

    ``ping`` sends ``count`` messages of ``size`` bytes one after the other, each
    when the echo of the last came back.  ``blast`` sends ``count`` messages of
    ``size`` bytes back to back; the echo end answers the last with how many
    blast bytes it received, so the time runs from the first send to that
    answer (one small message's one-way trip more than the transfer itself).
    Measurement messages raise no ``message`` events: nobody reads the echo
    end's output meanwhile, and a few hundred lines would fill its pipe and
    stall the peer.
    """

    COMMANDS = ("ping", "blast")

    def __init__(self, svc: crust.Service, echo: bool) -> None:
        self.svc = svc
        self.echo = echo
        self.answers: queue.Queue[bytes] = queue.Queue()
        self.blasted: dict[crust.PeerId, int] = {}  # blast bytes received per peer (the echo end)

    def on_message(self, peer: crust.PeerId, data: bytes) -> None:
        if not data.startswith(BENCH):
            return
        kind, body = data[len(BENCH):len(BENCH) + 1], data[len(BENCH) + 1:]
        if kind in (PONG, DONE):
            self.answers.put(data)
        elif self.echo and kind == PING:
            self.svc.send(peer, BENCH + PONG + body)
        elif self.echo and kind == BLAST and len(body) >= SEQ.size:
            index, count = SEQ.unpack_from(body)
            self.blasted[peer] = (self.blasted.get(peer, 0) if index else 0) + len(data)
            if index == count - 1:
                self.svc.send(peer, BENCH + DONE + struct.pack("!Q", self.blasted.pop(peer)))

    def answer(self, kind: bytes, deadline: float) -> bytes:
        """The next answer of ``kind`` (stale ones of the other kind are dropped); TimeoutError at ``deadline``."""
        for _ in range(100_000):
            data = self.answers.get(timeout=max(0.001, deadline - time.monotonic()))  # queue.Empty: timed out
            if data[len(BENCH):len(BENCH) + 1] == kind:
                return data
        raise TimeoutError("too many stale answers")

    def run(self, command: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        peer = crust.PeerId.from_str(command["peer"])
        count, timeout = int(command.get("count", 50 if command["cmd"] == "ping" else 8)), float(command.get("within", 60))
        size = max(len(BENCH) + 1 + 8, int(command.get("size", 64 if command["cmd"] == "ping" else 1024 * 1024)))
        deadline = time.monotonic() + timeout
        while not self.answers.empty():  # answers left over from an earlier command that timed out
            self.answers.get_nowait()
        try:
            if command["cmd"] == "ping":
                return "pinged", self.ping(peer, count, size, deadline)
            return "blasted", self.blast(peer, count, size, deadline)
        except queue.Empty:
            raise TimeoutError(f"{command['cmd']}: no answer from {peer} within {timeout} s (is it --echo?)") from None

    def ping(self, peer: crust.PeerId, count: int, size: int, deadline: float) -> dict[str, Any]:
        nonce = int.from_bytes(os.urandom(4), "big")
        pad = bytes(size - len(BENCH) - 1 - SEQ.size)
        rtts = []
        for n in range(count):
            body = SEQ.pack(n, nonce) + pad
            start = time.monotonic()
            self.svc.send(peer, BENCH + PING + body)
            for _ in range(100):
                if self.answer(PONG, deadline)[len(BENCH) + 1:] == body:
                    break
            rtts.append((time.monotonic() - start) * 1000)
        return {"peer": str(peer), "rtt_ms": [round(r, 3) for r in rtts], "median_ms": round(statistics.median(rtts), 3),
                "min_ms": round(min(rtts), 3), "max_ms": round(max(rtts), 3)}

    def blast(self, peer: crust.PeerId, count: int, size: int, deadline: float) -> dict[str, Any]:
        payload = os.urandom(size)
        head = len(BENCH) + 1 + SEQ.size
        start = time.monotonic()
        for index in range(count):
            self.svc.send(peer, BENCH + BLAST + SEQ.pack(index, count) + payload[head:],
                          timeout=max(0.001, deadline - time.monotonic()))
        got = struct.unpack("!Q", self.answer(DONE, deadline)[len(BENCH) + 1:])[0]
        seconds = time.monotonic() - start
        if got != count * size:
            raise ValueError(f"blast: the echo end received {got} bytes of {count * size}")
        return {"peer": str(peer), "bytes": got, "seconds": round(seconds, 4),
                "mib_per_s": round(got / seconds / (1024 * 1024), 3)}


def _tap_relay(marker: bytes) -> list[int]:
    """Count the relayed chunks holding ``marker``: the ends' plaintext, if the relay could ever see it.

    It watches what the relay forwards, changing nothing: the count must stay 0.
    """
    from crust.engine.relay import Relaying

    hits = [0]
    forward = Relaying.on_data

    def watched(self: Relaying, conn: Any, data: Any, now: float) -> None:
        if marker in data.chunk:
            hits[0] += 1
        forward(self, conn, data, now)

    Relaying.on_data = watched  # type: ignore[method-assign]
    return hits


if __name__ == "__main__":
    sys.exit(main())
