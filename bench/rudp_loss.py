"""Goodput of crust over reliable UDP through a lossy link, with crust over TCP beside it.

    sudo python bench/rudp_loss.py [--loss 0,1,10] [--mib 10] [--runs 1] [--timeout 240]
                                   [--delay-ms 0] [--json PATH]

Needs root: it builds a lab of network namespaces (tests/netlab.py: two hosts, 10.79.0.1 and .2,
on a bridge in a third namespace; veth pairs made inside the lab, nothing in the root namespace)
and exits 2 otherwise.  Loss is injected only there: an nftables ``netdev`` ingress rule on each
host's veth end drops the given share of the IPv4 packets it receives, so each direction (data
and acknowledgements) loses that share.  These kernels have no ``netem``
(/work/shared/design/TESTLAB.md, "Lossy, slow links"), which is why loss is an nft rule;
``--delay-ms`` asks for ``tc qdisc ... netem delay`` on both veth ends and stops with a clear
message where the kernel has no netem.

For every loss rate, transport (``udp``: both Services ``enable_tcp=False``; ``tcp``:
``enable_udp=False``) and run, a fresh receiver Service (on h1) and sender Service (on h2) start
in their namespaces; the sender bootstraps off the receiver, then ``send``s ``--mib`` MiB as
64 KiB messages, one way.  The receiver hashes every byte in arrival order and compares it with
the same pseudo-random stream (a seed both are given): "exact" means byte-for-byte equal.
Goodput = payload bytes / (receiver's last message - sender's first ``send``), in MB/s
(10^6 bytes); CLOCK_MONOTONIC is the same in every namespace.  A transfer that has not finished
within ``--timeout`` seconds is reported with the bytes that had arrived.  Each row also has the
datagrams the two hosts' kernels dropped for a full socket buffer (``Udp: RcvbufErrors``), loss
on top of the injected one.  ``--model`` adds the same transfer between two sans-IO
``RudpStream`` s on a virtual clock (tests/test_rudp.py's link; no CPU or kernel in the way):
what the protocol alone makes of the loss.

Every wait is bounded; the lab's processes are ended by pid (process group) and its
namespaces deleted on the way out, also on failure or ^C.  Prints a table and a JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import sys
import threading
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
NEED_ROOT = "bench/rudp_loss.py needs root: it builds network namespaces to lose packets in (run it with sudo)"

MESSAGE = 64 * 1024
SUBNET = "10.79.0.0/24"
START = 15.0      # s a peer process gets to start and listen (interpreter + import crust + Service)
CONNECT = 40.0    # s a bootstrap may take across the lossy link
LIFETIME = 600.0  # s any peer process lives at most


def stream(seed: int, total: int) -> list[bytes]:
    """The payload: ``total`` pseudo-random bytes from ``seed``, cut into 64 KiB messages."""
    rng = random.Random(seed)
    data = rng.randbytes(total)
    return [data[i:i + MESSAGE] for i in range(0, total, MESSAGE)]


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def peer_config(transport: str, host: str, contact: Any = None) -> Any:
    import crust

    return crust.Config(listen_host=host, enable_tcp=transport == "tcp", enable_udp=transport == "udp",
                        enable_upnp=False, bootstrap_cache_path=None, peer_exchange=False,
                        disable_external_reachability_requirement=True, bootstrap_timeout=CONNECT,
                        handshake_timeout=CONNECT / 2, hard_coded_contacts=[contact] if contact else [])


def receiver(args: argparse.Namespace) -> int:
    """Listen on ``args.host``; take ``args.bytes`` bytes, check them, report the last arrival."""
    import crust

    expected = hashlib.sha256(b"".join(stream(args.seed, args.bytes))).hexdigest()
    digest = hashlib.sha256()
    state = {"bytes": 0, "count": 0, "first": 0.0, "last": 0.0}
    done = threading.Event()

    def got(peer: crust.PeerId, data: bytes) -> None:
        now = time.monotonic()
        if not state["count"]:
            state["first"] = now
        digest.update(data)
        state["bytes"] += len(data)
        state["count"] += 1
        state["last"] = now
        if state["bytes"] >= args.bytes:
            done.set()

    svc = crust.Service(peer_config(args.transport, args.host))
    try:
        svc.on_message(got)
        endpoint = svc.start_listening()[0]
        emit("listening", endpoint=str(endpoint), peer_id=str(svc.id))
        finished = done.wait(args.timeout + CONNECT)
        info = svc.peers()
        emit("received", finished=finished, bytes=state["bytes"], count=state["count"],
             first=state["first"], last=state["last"], exact=finished and digest.hexdigest() == expected,
             transport=info[0].transport if info else None,
             bytes_received_wire=info[0].bytes_received if info else None)
        sys.stdin.read()  # the parent closes our stdin when it has the sender's report too
        return 0
    except Exception as exc:  # reported as a line: the parent reads stdout, not a traceback
        emit("error", type=type(exc).__name__, message=str(exc))
        return 1
    finally:
        svc.close()


def sender(args: argparse.Namespace) -> int:
    """Bootstrap off ``args.contact`` and send ``args.bytes`` bytes; stay until stdin closes."""
    import crust

    chunks = stream(args.seed, args.bytes)
    contact = crust.Contact(args.contact, peer_id=crust.PeerId.from_str(args.peer_id))
    svc = crust.Service(peer_config(args.transport, args.host, contact))
    try:
        t = time.monotonic()
        peer = svc.bootstrap((), crust.CrustUser.CLIENT)
        emit("connected", seconds=round(time.monotonic() - t, 3), transport=svc.peer_info(peer).transport)
        start = time.monotonic()
        for chunk in chunks:
            svc.send(peer, chunk, timeout=args.timeout)
        emit("sent", start=start, queued=time.monotonic() - start)
        sys.stdin.read()
        info = svc.peer_info(peer) if svc.is_connected(peer) else None
        emit("closing", bytes_sent_wire=info.bytes_sent if info else None, **rudp_counters(svc))
        return 0
    except Exception as exc:  # noqa: BLE001
        emit("error", type=type(exc).__name__, message=str(exc))
        return 1
    finally:
        svc.close()


def rudp_counters(svc: Any) -> dict[str, int]:
    """The sender's rUDP RTO expiries and retransmissions (diagnostic: private attributes, read as found)."""
    out = {"rto_expiries": 0, "retransmits": 0}
    for conn in list(getattr(getattr(svc, "_streams", None), "_streams", {}).values()):
        stream = getattr(conn, "_stream", None)
        if stream is not None:
            out["rto_expiries"] += getattr(stream, "timeouts", 0)
            out["retransmits"] += getattr(stream, "retransmits", 0)
    return out


# -- the parent: lab, runs, table ---------------------------------------------------------------


def one_transfer(lab: Any, transport: str, loss: float, total: int, seed: int, timeout: float) -> dict[str, Any]:
    from tests.lines import LineReader

    h1, h2 = lab.hosts["h1"], lab.hosts["h2"]
    me = [sys.executable, os.path.abspath(__file__)]
    common = ["--transport", transport, "--bytes", str(total), "--seed", str(seed), "--timeout", str(timeout)]
    env = {**os.environ, "PYTHONPATH": REPO}
    row: dict[str, Any] = {"transport": transport, "loss_percent": loss, "bytes": total}
    procs = []
    try:
        recv_proc = lab.run("h1", [*me, "--role", "receiver", "--host", h1.ip, *common], cwd=REPO, env=env)
        procs.append(recv_proc)
        recv = LineReader(recv_proc, name="receiver")
        hello = recv.wait_for("listening", START)
        if not hello or hello.get("event") != "listening":
            row["error"] = f"receiver did not listen: {hello} {lab.log_of(recv_proc)[-800:]}"
            return row
        send_proc = lab.run("h2", [*me, "--role", "sender", "--host", h2.ip, "--contact", hello["endpoint"],
                                   "--peer-id", hello["peer_id"], *common], cwd=REPO, env=env)
        procs.append(send_proc)
        send = LineReader(send_proc, name="sender")
        connected = send.wait_for("connected", START + CONNECT)
        if not connected or connected.get("event") != "connected":
            row["error"] = f"sender did not connect: {connected} {lab.log_of(send_proc)[-800:]}"
            return row
        row["connect_s"] = connected["seconds"]
        row["wire_transport"] = connected["transport"]
        sent = send.wait_for("sent", timeout + 10)
        got = recv.wait_for("received", timeout + 20)
        if not got or got.get("event") != "received":
            row["error"] = f"receiver reported nothing: {got} {lab.log_of(recv_proc)[-800:]}"
            return row
        row.update(finished=got["finished"], exact=got["exact"], received=got["bytes"])
        if sent and sent.get("event") == "sent" and got["count"]:
            elapsed = got["last"] - sent["start"]
            row["seconds"] = round(elapsed, 3)
            row["mb_s"] = round(got["bytes"] / elapsed / 1e6, 3) if elapsed > 0 else None
        if sent and sent.get("event") == "error":
            row["error"] = f"sender: {sent}"
        return row
    finally:
        if len(procs) == 2 and row.get("received") is not None:
            procs[1].stdin.close()  # the sender reports its counters, then exits
            closing = LineReader(procs[1], name="sender").wait_for("closing", 10.0)
            if closing and closing.get("event") == "closing" and transport == "udp":
                row["rto_expiries"] = closing.get("rto_expiries")
                row["retransmits"] = closing.get("retransmits")
        for proc in procs:
            lab.stop(proc)


def udp_drops(lab: Any) -> dict[str, int]:
    """Datagrams each lab host's kernel dropped for a full socket buffer (``Udp: RcvbufErrors``)."""
    out = {}
    for host in ("h1", "h2"):
        lines = [line.split() for line in lab.exec(host, ["cat", "/proc/net/snmp"]).stdout.splitlines()
                 if line.startswith("Udp:")]
        if len(lines) >= 2 and "RcvbufErrors" in lines[0]:
            out[host] = int(lines[1][lines[0].index("RcvbufErrors")])
    return out


def model(losses: list[float], total: int, delay_s: float) -> list[dict[str, Any]]:
    """The same transfer between two sans-IO ``RudpStream`` s on a virtual clock (no CPU, no kernel).

    tests/test_rudp.py's ``Pair`` joins them by a link with ``delay_s`` one way and the given
    random loss each way; what it reports is what the protocol alone (RTO, NewReno, SACK)
    makes of the loss.
    """
    from tests.test_rudp import connected_pair

    rows = []
    for loss in losses:
        pair = connected_pair(seed=7, link={"loss": loss / 100, "delay": delay_s})
        start = pair.now
        pair.transfer(total, max_steps=5_000_000, max_time=3600.0)
        virtual = pair.now - start
        rows.append({"loss_percent": loss, "virtual_s": round(virtual, 3),
                     "mb_s": round(total / virtual / 1e6, 3) if virtual > 0 else None,
                     "timeouts": pair.a.timeouts, "retransmits": pair.a.retransmits,
                     "datagrams_sent": pair.link.sent, "datagrams_lost": pair.link.lost})
    return rows


def set_loss(lab: Any, loss: float) -> None:
    for host in ("h1", "h2"):
        lab.stop_dropping(host)
        if loss > 0:
            lab.drop_randomly(host, round(loss * 100))


def set_delay(lab: Any, delay_ms: float) -> None:
    for host in ("h1", "h2"):
        ifname = lab.hosts[host].ifname
        done = lab.exec(host, ["tc", "qdisc", "add", "dev", ifname, "root", "netem", "delay", f"{delay_ms}ms"])
        if done.returncode != 0:
            raise SystemExit(f"--delay-ms needs netem, which this kernel lacks ({done.stderr.strip()}); "
                             "TESTLAB.md: delay needs a userspace forwarder here. Run without --delay-ms.")


def load() -> float:
    return os.getloadavg()[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--loss", default="0,1,10", help="loss rates in percent, comma-separated (each direction)")
    ap.add_argument("--mib", type=float, default=10.0, help="MiB sent one way per transfer")
    ap.add_argument("--runs", type=int, default=1, help="transfers per (loss, transport), interleaved")
    ap.add_argument("--transports", default="udp,tcp")
    ap.add_argument("--timeout", type=float, default=240.0, help="s one transfer may take")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay on each veth end (needs netem)")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--model", action="store_true",
                    help="also run the transfer between two sans-IO RudpStreams on a virtual clock")
    ap.add_argument("--model-delay-ms", type=float, default=0.1, help="the model link's one-way delay")
    # the roles this script plays inside the lab
    ap.add_argument("--role", choices=("receiver", "sender"), help=argparse.SUPPRESS)
    ap.add_argument("--transport", help=argparse.SUPPRESS)
    ap.add_argument("--host", help=argparse.SUPPRESS)
    ap.add_argument("--contact", help=argparse.SUPPRESS)
    ap.add_argument("--peer-id", help=argparse.SUPPRESS)
    ap.add_argument("--bytes", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.role == "receiver":
        return receiver(args)
    if args.role == "sender":
        return sender(args)

    if os.geteuid() != 0:
        print(NEED_ROOT, file=sys.stderr)
        return 2
    from tests.netlab import NFT, Lab, netns_unavailable_reason

    why = netns_unavailable_reason()
    if why or shutil.which(NFT) is None:
        print(f"bench/rudp_loss.py cannot build its lab: {why or 'nftables `nft` is not installed'}",
              file=sys.stderr)
        return 2
    losses = [float(x) for x in args.loss.split(",") if x.strip()]
    if any(not 0 <= x <= 100 for x in losses):
        ap.error("--loss rates must be 0..100")
    transports = [t.strip() for t in args.transports.split(",") if t.strip()]
    if any(t not in ("udp", "tcp") for t in transports) or not 1 <= args.runs <= 20:
        ap.error("--transports takes udp,tcp; --runs 1..20")
    total = int(args.mib * 1024 * 1024)
    rows: list[dict[str, Any]] = []
    with Lab("rudploss") as lab:
        lab.build_lan(2, SUBNET)
        if args.delay_ms:
            set_delay(lab, args.delay_ms)
        for loss in losses:
            set_loss(lab, loss)
            for run in range(args.runs):
                for transport in transports:
                    before, drops = load(), udp_drops(lab)
                    row = one_transfer(lab, transport, loss, total, seed=run + 1, timeout=args.timeout)
                    row["rcvbuf_drops"] = {h: n - drops.get(h, 0) for h, n in udp_drops(lab).items()}
                    row.update(run=run + 1, load_before=round(before, 2), load_after=round(load(), 2))
                    rows.append(row)
                    print(f"  loss {loss:g} % {transport}: {row.get('mb_s')} MB/s in {row.get('seconds')} s, "
                          f"exact={row.get('exact')} finished={row.get('finished')} load {before:.2f}"
                          f" rcvbuf drops {row['rcvbuf_drops']} RTOs {row.get('rto_expiries')}"
                          f" retransmits {row.get('retransmits')}"
                          + (f"  ERROR {row['error']}" if row.get("error") else ""), file=sys.stderr, flush=True)
    summary = summarize(rows, losses, transports)
    print_table(summary, total, args)
    out: dict[str, Any] = {"mib": args.mib, "delay_ms": args.delay_ms, "rows": rows, "summary": summary}
    if args.model:
        out["model"] = model(losses, total, args.model_delay_ms / 1000)
        print(f"\nthe protocol alone (two sans-IO RudpStreams, virtual clock, "
              f"{args.model_delay_ms:g} ms one way, same loss each way):")
        for m in out["model"]:
            print(f"  loss {m['loss_percent']:g} %: {m['mb_s']} MB/s ({m['virtual_s']} s virtual), "
                  f"{m['timeouts']} RTO expiries, {m['retransmits']} retransmissions")
    print(json.dumps(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0 if all(r.get("exact") for r in rows) else 1


def summarize(rows: list[dict[str, Any]], losses: list[float], transports: list[str]) -> list[dict[str, Any]]:
    out = []
    for loss in losses:
        line: dict[str, Any] = {"loss_percent": loss}
        for t in transports:
            mine = [r for r in rows if r["loss_percent"] == loss and r["transport"] == t]
            rates = [r["mb_s"] for r in mine if r.get("mb_s") and r.get("finished")]
            line[t] = {"mb_s_median": round(statistics.median(rates), 3) if rates else None,
                       "mb_s_runs": [r.get("mb_s") for r in mine],
                       "seconds_runs": [r.get("seconds") for r in mine],
                       "complete": sum(bool(r.get("finished") and r.get("exact")) for r in mine),
                       "runs": len(mine)}
        if "udp" in line and "tcp" in line and line["udp"]["mb_s_median"] and line["tcp"]["mb_s_median"]:
            line["udp_over_tcp"] = round(line["udp"]["mb_s_median"] / line["tcp"]["mb_s_median"], 4)
        out.append(line)
    return out


def print_table(summary: list[dict[str, Any]], total: int, args: argparse.Namespace) -> None:
    print(f"\n{total / 2**20:g} MiB one way per transfer, {args.runs} run(s) each, loss on both directions"
          + (f", {args.delay_ms:g} ms delay each way" if args.delay_ms else ""))
    print(f"{'loss':>6}  {'rUDP MB/s':>10}  {'TCP MB/s':>9}  {'rUDP/TCP':>8}  {'rUDP s':>14}  {'complete (rUDP, TCP)':>20}")
    for line in summary:
        udp, tcp = line.get("udp", {}), line.get("tcp", {})
        done = ", ".join(f"{d.get('complete')}/{d.get('runs')}" for d in (udp, tcp) if d)
        print(f"{line['loss_percent']:>5g}%  {udp.get('mb_s_median')!s:>10}  {tcp.get('mb_s_median')!s:>9}  "
              f"{line.get('udp_over_tcp')!s:>8}  {','.join(map(str, udp.get('seconds_runs', []))):>14}  {done:>20}")


if __name__ == "__main__":
    sys.exit(main())
