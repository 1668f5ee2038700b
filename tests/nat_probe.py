"""Plain-socket probes run inside NAT lab namespaces (tests/test_natlab.py), no crust.

One subcommand per job; each prints JSON lines (``{"event": ..., ...}``,
flushed) and ends by itself: every loop is bounded by ``--lifetime`` (or a
command's own timeout) and by its stdin closing where it reads stdin.

    classify   RFC 5780-style mapping and filtering tests against the lab's STUN server;
               then reports unsolicited datagrams to its mapped endpoint until stdin says "done"
    send       a few UDP datagrams to --to
    echo       UDP server: answers every datagram with what it saw; stdin "IP PORT TEXT" pushes TEXT there
    hold       UDP sockets (--sockets K,I) that say hello to --to, K keeping alive; reports pushes
    rendezvous UDP: tells each registered peer the endpoint it saw for the other
    punch      UDP hole punching through the rendezvous
    tcp-rendezvous / tcp-punch   the same for TCP simultaneous open
    tcp-listen / tcp-connect     a plain listener, and a connect that reports how it ended
    upnp       miniupnpc: discover the IGD, map --ext-port to a local listener, "delete" on stdin
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import sys
import time
from typing import Any, Callable, Sequence

from stun_server import binding_request, parse_response  # sys.path[0] is tests/

Address = tuple[str, int]
T0 = time.monotonic()


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields, "t": round(time.monotonic() - T0, 3)}), flush=True)


def endpoint(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return host, int(port)


def left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def stdin_lines(deadline: float, on_line: Callable[[str], bool], also: Sequence[Any] = (),
                on_ready: Callable[[Any], None] | None = None) -> None:
    """Serve stdin lines (and ``also`` sockets) until EOF, ``on_line`` returns False, or the deadline."""
    fd, buf = sys.stdin.fileno(), b""
    for _ in range(1_000_000):
        ready, _, _ = select.select([fd, *also], [], [], left(deadline))
        if not ready:
            return
        for r in ready:
            if r != fd and on_ready is not None:
                on_ready(r)
        if fd in ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if not on_line(line.decode().strip()):
                    return


def udp_socket(port: int = 0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    return s


# -- STUN classification --------------------------------------------------------

def stun_ask(s: socket.socket, server: Address, change_ip: bool = False, change_port: bool = False,
             tries: int = 3, wait: float = 0.3) -> dict[str, Address] | None:
    """One Binding transaction (retried ``tries`` times, ``wait`` s each); the parsed answer or None."""
    request, txid = binding_request(change_ip, change_port)
    for _ in range(tries):
        s.sendto(request, server)
        deadline = time.monotonic() + wait
        while select.select([s], [], [], left(deadline))[0]:
            data, _ = s.recvfrom(2048)
            answer = parse_response(data, txid)
            if answer is not None:
                return {k: (v[0], v[1]) for k, v in answer.items()}
    return None


def classify(args: argparse.Namespace) -> int:
    server = endpoint(args.server)
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.connect(server)  # no packet: only asks the kernel which local IP routes there
    local_ip = probe.getsockname()[0]
    probe.close()
    # Mapping (RFC 5780 4.3) on one socket; filtering (4.4) on a fresh one, which has
    # talked to nothing but the primary address: the mapping tests opened the others.
    with udp_socket() as m, udp_socket() as f:
        first = stun_ask(m, server)
        if first is None or "other" not in first:
            emit("error", message=f"no STUN answer from {server}: {first}")
            return 1
        other = first["other"]
        mapped = [first["mapped"]] + [a["mapped"] if a else None
                                      for a in (stun_ask(m, (other[0], server[1])), stun_ask(m, other))]
        if mapped[0] == mapped[1]:
            mapping = "endpoint-independent"
        else:
            mapping = "address-dependent" if mapped[1] == mapped[2] else "address-and-port-dependent"
        base = stun_ask(f, server)
        if stun_ask(f, server, change_ip=True, change_port=True, tries=2) is not None:
            filtering = "endpoint-independent"
        elif stun_ask(f, server, change_port=True, tries=2) is not None:
            filtering = "address-dependent"
        else:
            filtering = "address-and-port-dependent"
        local = (local_ip, m.getsockname()[1])
        emit("classified", local=local, mapped=mapped, nat=mapped[0] != local, mapping=mapping,
             filtering=filtering)
        emit("listening", mapped=base["mapped"] if base else None)
        got: list[Any] = []

        def note(sock: socket.socket) -> None:
            data, source = sock.recvfrom(2048)
            if not data.startswith(b"\x01\x01"):  # a late STUN answer is not unsolicited
                got.append(source)
                emit("unsolicited", source=source, data=data.decode(errors="replace"))

        deadline = time.monotonic() + args.lifetime
        stdin_lines(deadline, lambda line: line != "done", [f], note)
        end = time.monotonic() + 0.5  # what was sent just before "done" is in flight for microseconds
        while select.select([f], [], [], left(end))[0]:
            note(f)
        emit("done", unsolicited=len(got))
    return 0


def send(args: argparse.Namespace) -> int:
    with udp_socket(args.port) as s:
        for i in range(args.count):
            s.sendto(f"{args.data} {i}".encode(), endpoint(args.to))
    emit("sent", count=args.count)
    return 0


# -- UDP echo / hold (idle timeouts, NAT restart) ---------------------------------

def echo(args: argparse.Namespace) -> int:
    with udp_socket(args.port) as s:
        emit("ready", port=args.port)

        def answer(sock: socket.socket) -> None:
            data, source = sock.recvfrom(2048)
            sock.sendto(json.dumps({"seen": source, "data": data.decode(errors="replace")}).encode(), source)

        def push(line: str) -> bool:
            ip, port, text = line.split(" ", 2)
            s.sendto(text.encode(), (ip, int(port)))
            emit("pushed", to=[ip, int(port)], data=text)
            return True

        stdin_lines(time.monotonic() + args.lifetime, push, [s], answer)
    return 0


def hold(args: argparse.Namespace) -> int:
    server = endpoint(args.to)
    socks = {name: udp_socket() for name in args.sockets.split(",")}
    names = {s: n for n, s in socks.items()}
    deadline = time.monotonic() + args.lifetime
    try:
        for name, s in socks.items():  # hello, and learn what the server saw
            for _ in range(5):
                s.sendto(b"hello", server)
                if select.select([s], [], [], 0.5)[0]:
                    emit("mapped", socket=name, local=s.getsockname()[1], seen=json.loads(s.recv(2048))["seen"])
                    break
            else:
                emit("error", message=f"no echo for socket {name}")
                return 1
        next_ka = time.monotonic() + args.every
        for _ in range(1_000_000):
            if args.keepalive and time.monotonic() >= next_ka:
                socks[args.keepalive].sendto(b"keepalive", server)
                next_ka = time.monotonic() + args.every
            wait = min(left(deadline), left(next_ka) if args.keepalive else left(deadline))
            ready, _, _ = select.select(list(names), [], [], wait)
            for s in ready:
                data = s.recv(2048)
                if not data.startswith(b"{"):  # echo answers to keepalives are JSON; pushes are not
                    emit("got", socket=names[s], data=data.decode(errors="replace"))
            if not left(deadline):
                break
    finally:
        for s in socks.values():
            s.close()
    return 0


# -- UDP hole punching ------------------------------------------------------------

def rendezvous(args: argparse.Namespace) -> int:
    seen: dict[str, Address] = {}
    with udp_socket(args.port) as s:
        emit("ready", port=args.port)

        def register(sock: socket.socket) -> None:
            data, source = sock.recvfrom(2048)
            msg = json.loads(data)
            seen[msg["me"]] = source
            if msg["peer"] in seen:
                sock.sendto(json.dumps({"peer": seen[msg["peer"]]}).encode(), source)

        stdin_lines(time.monotonic() + args.lifetime, lambda line: True, [s], register)
    return 0


def punch(args: argparse.Namespace) -> int:
    server, deadline = endpoint(args.rendezvous), time.monotonic() + args.timeout
    with udp_socket() as s:
        peer: Address | None = None
        for _ in range(1000):  # register until the rendezvous knows both of us
            s.sendto(json.dumps({"me": args.me, "peer": args.peer}).encode(), server)
            if select.select([s], [], [], min(0.25, left(deadline)))[0]:
                data, source = s.recvfrom(2048)
                if source == server:
                    ip, port = json.loads(data)["peer"]
                    peer = (ip, port)
                    break
            if not left(deadline):
                break
        if peer is None:
            emit("error", message="rendezvous never told us the peer")
            return 1
        emit("peer", endpoint=peer)
        heard = they_heard = False
        done_at: float | None = None
        for _ in range(100_000):
            s.sendto(json.dumps({"punch": args.me, "heard": heard}).encode(), peer)
            end = min(time.monotonic() + 0.1, deadline)
            while select.select([s], [], [], left(end))[0]:
                data, source = s.recvfrom(2048)
                msg = json.loads(data)
                if msg.get("punch") == args.peer:
                    heard, peer = True, source  # answer where it came from (a symmetric NAT's new port)
                    they_heard = they_heard or bool(msg.get("heard"))
            if heard and they_heard and done_at is None:
                done_at = time.monotonic() + 0.5  # keep punching so the peer hears "heard" too
                emit("punched", peer=peer)
            if (done_at is not None and time.monotonic() >= done_at) or not left(deadline):
                break
        if done_at is None:
            emit("failed", heard=heard, they_heard=they_heard)
    return 0


# -- TCP --------------------------------------------------------------------------

def tcp_socket(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("0.0.0.0", port))
    return s


def read_line(conn: socket.socket, deadline: float) -> str | None:
    buf = b""
    while b"\n" not in buf and select.select([conn], [], [], left(deadline))[0]:
        chunk = conn.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf.split(b"\n", 1)[0].decode() if b"\n" in buf else None


def tcp_rendezvous(args: argparse.Namespace) -> int:
    waiting: dict[str, tuple[socket.socket, Address, str]] = {}  # name -> (connection, seen from, peer name)
    conns: list[socket.socket] = []
    with tcp_socket(args.port) as listener:
        listener.listen(8)
        emit("ready", port=args.port)

        def register(sock: socket.socket) -> None:
            conn, source = sock.accept()
            conns.append(conn)  # kept open: the peers' NAT mappings hang on it
            msg = json.loads(read_line(conn, time.monotonic() + 5) or "{}")
            waiting[msg["me"]] = (conn, source, msg["peer"])
            if msg["peer"] in waiting:
                at = time.time() + 0.5  # connect then, both (the namespaces share one clock)
                one, two = waiting.pop(msg["me"]), waiting.pop(msg["peer"])
                for (c, _, _), (_, seen, _) in ((one, two), (two, one)):
                    c.sendall((json.dumps({"peer": seen, "at": at}) + "\n").encode())

        stdin_lines(time.monotonic() + args.lifetime, lambda line: True, [listener], register)
    for c in conns:
        c.close()
    return 0


def tcp_punch(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout
    with tcp_socket(args.port) as control:
        control.settimeout(left(deadline))
        control.connect(endpoint(args.rendezvous))
        control.sendall((json.dumps({"me": args.me, "peer": args.peer}) + "\n").encode())
        line = read_line(control, deadline)  # the rendezvous connection stays open meanwhile
        if line is None:
            emit("error", message="rendezvous never told us the peer")
            return 1
        msg = json.loads(line)
        peer = (msg["peer"][0], msg["peer"][1])
        emit("peer", endpoint=peer, at=msg["at"])
        time.sleep(max(0.0, msg["at"] - time.time()))  # the agreed moment, not an event
        errors = []
        for _ in range(50):
            s = tcp_socket(args.port)
            try:
                s.settimeout(max(0.1, left(deadline)))
                s.connect(peer)
            except OSError as e:
                s.close()
                errors.append(type(e).__name__)
                if not left(deadline):
                    break
                time.sleep(0.2)  # a refused/failed attempt: try again shortly (bounded)
                continue
            with s:
                s.sendall(f"hello from {args.me}\n".encode())
                emit("connected", peer=s.getpeername(), got=read_line(s, deadline), attempts=len(errors) + 1)
            return 0
        emit("failed", errors=errors)
    return 0


def tcp_listen(args: argparse.Namespace) -> int:
    with tcp_socket(args.port) as listener:
        listener.listen(8)
        emit("ready", port=args.port)

        def greet(sock: socket.socket) -> None:
            conn, source = sock.accept()
            with conn:
                conn.sendall(b"hello from the listener\n")
            emit("accepted", source=source)

        stdin_lines(time.monotonic() + args.lifetime, lambda line: True, [listener], greet)
    return 0


def tcp_connect(args: argparse.Namespace) -> int:
    start = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(args.timeout)
        try:
            s.connect(endpoint(args.to))
        except socket.timeout:
            result = "timeout"
        except ConnectionRefusedError:
            result = "refused"
        except OSError as e:
            result = f"error:{e.errno}"
        else:
            emit("connect", result="connected", got=read_line(s, time.monotonic() + args.timeout),
                 seconds=round(time.monotonic() - start, 3))
            return 0
    emit("connect", result=result, seconds=round(time.monotonic() - start, 3))
    return 0


# -- UPnP -------------------------------------------------------------------------

def upnp(args: argparse.Namespace) -> int:
    import miniupnpc

    u = miniupnpc.UPnP()
    u.discoverdelay = args.delay
    try:
        devices = u.discover()
        u.selectigd()  # raises without an IGD, often with a misleading message ("Success")
    except Exception as e:  # noqa: BLE001 - miniupnpc raises plain Exception
        emit("no-igd", devices=locals().get("devices", 0), error=str(e))
        return 0
    emit("igd", devices=devices, external_ip=u.externalipaddress(), lan_addr=u.lanaddr)
    if not args.ext_port:
        return 0
    with tcp_socket(args.int_port) as listener:
        listener.listen(8)
        ok = u.addportmapping(args.ext_port, "TCP", u.lanaddr, args.int_port, "crust natlab", "")
        emit("mapped", ok=bool(ok), ext_port=args.ext_port, int_port=args.int_port)

        def command(line: str) -> bool:
            if line == "delete":
                emit("deleted", ok=bool(u.deleteportmapping(args.ext_port, "TCP")))
            return True

        def greet(sock: socket.socket) -> None:
            conn, source = sock.accept()
            with conn:
                conn.sendall(b"hello through the mapping\n")
            emit("accepted", source=source)

        stdin_lines(time.monotonic() + args.lifetime, command, [listener], greet)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    commands: dict[str, Callable[[argparse.Namespace], int]] = {}

    def command(name: str, fn: Callable[[argparse.Namespace], int], lifetime: float = 30.0) -> argparse.ArgumentParser:
        p = sub.add_parser(name)
        p.add_argument("--lifetime", type=float, default=lifetime)
        commands[name] = fn
        return p

    command("classify", classify).add_argument("--server", required=True)
    p = command("send", send)
    p.add_argument("--to", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--count", type=int, default=3)
    p.add_argument("--data", default="unsolicited")
    command("echo", echo).add_argument("--port", type=int, required=True)
    p = command("hold", hold)
    p.add_argument("--to", required=True)
    p.add_argument("--sockets", default="K")
    p.add_argument("--keepalive", default="")
    p.add_argument("--every", type=float, default=1.0)
    command("rendezvous", rendezvous).add_argument("--port", type=int, required=True)
    command("tcp-rendezvous", tcp_rendezvous).add_argument("--port", type=int, required=True)
    for name, fn in (("punch", punch), ("tcp-punch", tcp_punch)):
        p = command(name, fn)
        p.add_argument("--rendezvous", required=True)
        p.add_argument("--me", required=True)
        p.add_argument("--peer", required=True)
        p.add_argument("--timeout", type=float, default=5.0)
        p.add_argument("--port", type=int, default=0)
    command("tcp-listen", tcp_listen).add_argument("--port", type=int, required=True)
    p = command("tcp-connect", tcp_connect)
    p.add_argument("--to", required=True)
    p.add_argument("--timeout", type=float, default=2.0)
    p = command("upnp", upnp)
    p.add_argument("--delay", type=int, default=2000)
    p.add_argument("--ext-port", type=int, default=0)
    p.add_argument("--int-port", type=int, default=0)
    args = ap.parse_args()
    return commands[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
