"""rUDP under attack and change (issue 17), over real sockets on loopback with real Services.

* A flood of SYNs with forged sources (a raw socket writes the IP header, so
  each SYN claims another address and port) makes no connection and gets
  nothing back larger than itself, while an honest peer connects through it.
* Forged datagrams from the peer's very address -- guessed ids, replayed old
  datagrams with the right ids, resets inside the window -- neither break an
  established stream nor get the peer reported as misbehaving.
* A NAT rebinding (the peer's address:port changes mid-stream) keeps every
  message flowing, in order; a datagram that does not name the connection
  moves nothing, and one replayed from an address that does not answer the
  path challenge moves nothing either.
* Once the secure channel has keyed the connection (crust.rudp.auth), an
  attacker on the path, who knows the ids, the exact sequence numbers and
  the challenge's nonce, can neither reset it, nor finish it, nor move it to
  an address of its own: it lacks the path key the tags need.  A keyed
  connection still follows an idle peer that rebinds, on its keep-alives.

A :class:`Relay` stands between the two Services where a test needs to be
on the path: it forwards both ways, keeps what it forwarded, sends what the
test asks it to from the peer's address, and can move to a new port.
Private state (``svc._streams._rudp``) is read on purpose: the counts it
keeps are what the tests measure.
"""

from __future__ import annotations

import os
import queue
import random
import selectors
import socket
import struct
import threading
import time
from typing import Any, Iterator

import pytest

import crust
from crust.rudp import MAGIC, SYN_SIZE
from crust.rudp.packet import (ACK, COOKIE, FIN, KEYED, MASK, PATH, PING, RST, SYN, TAG_SIZE, TAGGED, pack_path,
                               pack_syn, parse_header)
from crust.transport.reactor import Reactor
from crust.transport.udp import RudpSocket

from .livenet import WAIT, Net, Recorder
from .netlab import in_ci
from .test_udp import Stream, run_on

pytestmark = pytest.mark.timeout(90)

UDP_ONLY: dict[str, Any] = dict(enable_tcp=False, enable_udp=True)
HEADER = struct.Struct(">BBIIIIIB")


def _rudp_socket(svc: crust.Service) -> RudpSocket:
    sock = svc._streams._rudp  # private on purpose: the counts it keeps are what we measure
    assert sock is not None
    return sock


def _stat(svc: crust.Service, name: str) -> Any:
    """Read a counter of the Service's rUDP socket on its reactor thread."""
    return svc._reactor.call(lambda: getattr(_rudp_socket(svc), name), WAIT)


def _stream_drops(svc: crust.Service) -> int:
    return int(svc._reactor.call(lambda: sum(c._stream.dropped + c._stream.unauthenticated
                                             for c in _rudp_socket(svc)._by_id.values()), WAIT))


# -- a flood of spoofed SYNs ----------------------------------------------------------------


def _raw_socket() -> socket.socket:
    try:
        return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    except PermissionError:
        if in_ci():
            pytest.fail("CI=true but no raw socket (needs root or CAP_NET_RAW)", pytrace=False)
        pytest.skip("a raw socket needs root (or CAP_NET_RAW) to forge source addresses")


def _spoofed(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    """An IPv4 + UDP packet from ``src`` to ``dst`` (the kernel fills in the IP checksum; UDP's 0 = none)."""
    udp = struct.pack(">HHHH", src[1], dst[1], 8 + len(payload), 0) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
                     socket.inet_aton(src[0]), socket.inet_aton(dst[0]))
    return ip + udp


def _syn(rng: random.Random) -> bytes:
    """A first SYN (zeroed cookie) with a random id and ISN: what an attacker can send for free."""
    return HEADER.pack(MAGIC, SYN, 0, rng.randrange(1, 1 << 32), rng.randrange(1 << 32), 0, 65535, 0) + bytes(16)


def test_spoofed_syns_make_no_connection_and_no_amplification_while_an_honest_peer_connects(net: Net) -> None:
    raw = net.track(_raw_socket())
    a, ra, a_ep = net.listener("udp", **UDP_ONLY)
    target = (a_ep.host, a_ep.port)
    # Half the claimed sources are sockets of ours, so we see every answer they are sent;
    # the other half are ports on 127.0.0.4 where nothing listens.
    victims = [net.track(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) for _ in range(16)]
    for v in victims:
        v.bind(("127.0.0.3", 0))
        v.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        v.setblocking(False)
    sent_to = {v.getsockname(): 0 for v in victims}
    stop = threading.Event()
    counts = {"syns": 0, "bytes": 0}

    def flood() -> None:
        rng = random.Random(17)
        deadline = time.monotonic() + 3 * WAIT
        # At least 10,000 SYNs, through the honest bootstrap and past it; bounded in count and time.
        while (not stop.is_set() or counts["syns"] < 10_000) and counts["syns"] < 40_000 \
                and time.monotonic() < deadline:
            for v_addr in list(sent_to):
                syn = _syn(rng)
                raw.sendto(_spoofed(v_addr, target, syn), (target[0], 0))
                sent_to[v_addr] += 1
                raw.sendto(_spoofed(("127.0.0.4", rng.randrange(1024, 65536)), target, _syn(rng)), (target[0], 0))
                counts["syns"] += 2
                counts["bytes"] += 2 * len(syn)
            time.sleep(0.0005)  # ~2 ms per 32 SYNs: a steady burst, not one kernel-buffer overflow

    flooder = threading.Thread(target=flood, name="syn-flood", daemon=True)
    flooder.start()
    try:
        while counts["syns"] < 2000:  # the flood is on before the honest peer starts
            assert flooder.is_alive(), "the flood thread died"
            time.sleep(0.01)
        b = net.service(hard_coded_contacts=[str(a_ep)], **UDP_ONLY)
        started = time.monotonic()
        assert b.bootstrap(timeout=WAIT) == a.id
        honest = time.monotonic() - started
        ra.wait(lambda: len(ra.new_peers) == 1, what="the honest peer at A")
    finally:
        stop.set()
        flooder.join(3 * WAIT)
    assert not flooder.is_alive()
    cookies = _stat(a, "cookies_sent")
    # Every SYN A read was answered statelessly: no connection, no engine link, but the honest one.
    assert _stat(a, "connections") == 1, "a spoofed SYN made a connection"
    assert [p.id for p in ra.new_peers] == [b.id]
    assert cookies >= counts["syns"] // 4, (cookies, counts)  # A really did read (most of) the flood
    # What the victims got: at most one datagram per SYN, none larger than the SYN, and only COOKIEs.
    got = {addr: [] for addr in sent_to}  # type: dict[tuple[str, int], list[bytes]]
    for v in victims:
        while True:
            try:
                got[v.getsockname()].append(v.recv(2048))
            except BlockingIOError:
                break
    replies = [d for ds in got.values() for d in ds]
    assert replies, "the victims got no answer at all: the test would prove nothing"
    assert all(len(got[addr]) <= sent_to[addr] for addr in sent_to), [(len(got[x]), sent_to[x]) for x in sent_to]
    assert max(map(len, replies)) <= SYN_SIZE
    assert {parse_header(d)[0] for d in replies} == {COOKIE}  # type: ignore[index]
    assert sum(map(len, replies)) <= sum(sent_to.values()) * SYN_SIZE
    print(f"\n{counts['syns']} spoofed SYNs ({counts['bytes']} bytes), {cookies} cookies sent, 0 connections; "
          f"victims got {len(replies)} datagrams of <= {max(map(len, replies))} bytes; honest bootstrap "
          f"{honest * 1000:.0f} ms")


# -- a relay on the path --------------------------------------------------------------------


class Relay:
    """Forwards datagrams between a client (who talks to :attr:`address`) and ``server``.

    It runs on its own thread, bounded by ``lifetime`` seconds; what it sends
    the server leaves from its *back* socket, which :meth:`rebind` replaces by
    a new one (a NAT mapping renewed).  ``captured`` keeps what went client →
    server.  :meth:`inject` sends datagrams to the server from the back socket:
    the client's own address, as the server sees it.
    """

    def __init__(self, server: tuple[str, int], lifetime: float = 60.0) -> None:
        self.server = server
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.back = self._new_back()
        self.address = self.front.getsockname()
        self.client: tuple[str, int] | None = None
        self.captured: list[bytes] = []
        self.to_client: list[bytes] = []
        self._requests: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + lifetime
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)
        self._thread.start()

    @staticmethod
    def _new_back() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        return sock

    @property
    def back_address(self) -> tuple[str, int]:
        return self.back.getsockname()  # type: ignore[no-any-return]

    def inject(self, datagrams: list[bytes]) -> None:
        done = threading.Event()
        self._requests.put(("inject", (datagrams, done)))
        assert done.wait(WAIT), "the relay did not inject"

    def rebind(self) -> tuple[str, int]:
        """Move to a new back socket (the old one is closed: what the server sends there is lost)."""
        done = threading.Event()
        self._requests.put(("rebind", done))
        assert done.wait(WAIT), "the relay did not rebind"
        return self.back_address

    def close(self) -> None:
        self._stop.set()
        self._thread.join(WAIT)
        self.front.close()
        self.back.close()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.front, selectors.EVENT_READ)
        sel.register(self.back, selectors.EVENT_READ)
        try:
            while not self._stop.is_set() and time.monotonic() < self._deadline:
                self._serve_requests(sel)
                for key, _ in sel.select(0.02):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        data, addr = sock.recvfrom(4096)
                    except OSError:
                        continue
                    if sock is self.front:
                        self.client = addr
                        self.captured.append(data)
                        self.back.sendto(data, self.server)
                    elif sock is self.back and self.client is not None:
                        self.to_client.append(data)
                        self.front.sendto(data, self.client)
        finally:
            sel.close()

    def _serve_requests(self, sel: selectors.BaseSelector) -> None:
        while True:
            try:
                kind, arg = self._requests.get_nowait()
            except queue.Empty:
                return
            if kind == "inject":
                datagrams, done = arg
                for d in datagrams:
                    self.back.sendto(d, self.server)
                done.set()
            else:
                sel.unregister(self.back)
                self.back.close()
                self.back = self._new_back()
                sel.register(self.back, selectors.EVENT_READ)
                arg.set()


@pytest.fixture
def relayed(net: Net) -> Iterator[tuple[crust.Service, Recorder, crust.Service, Recorder, Relay]]:
    """A listens on rUDP; B bootstraps through a Relay in front of A."""
    a, ra, a_ep = net.listener("udp", **UDP_ONLY)
    relay = Relay((a_ep.host, a_ep.port))
    try:
        b = net.service(hard_coded_contacts=[f"udp://{relay.address[0]}:{relay.address[1]}"], **UDP_ONLY)
        rb = Recorder(b)
        assert b.bootstrap(timeout=WAIT) == a.id
        ra.wait(lambda: len(ra.new_peers) == 1, what="B at A")
        yield a, ra, b, rb, relay
    finally:
        relay.close()


def _numbered(rec: Recorder, peer: crust.PeerId) -> list[int]:
    return [int.from_bytes(m[:4], "big") for m in rec.data_from(peer)]


def _exchange(a: crust.Service, ra: Recorder, b: crust.Service, rb: Recorder, first: int, count: int) -> None:
    """``count`` numbered messages each way, starting at ``first``; wait until all arrived, in order."""
    for i in range(first, first + count):
        b.send(a.id, i.to_bytes(4, "big") + bytes(2000))
        a.send(b.id, i.to_bytes(4, "big") + bytes(300))
    want = list(range(first + count))
    ra.wait(lambda: _numbered(ra, b.id) == want, what=f"B's messages up to {first + count} at A")
    rb.wait(lambda: _numbered(rb, a.id) == want, what=f"A's messages up to {first + count} at B")


def test_forged_datagrams_from_the_peers_address_do_not_break_the_stream(
        relayed: tuple[crust.Service, Recorder, crust.Service, Recorder, Relay]) -> None:
    a, ra, b, rb, relay = relayed
    _exchange(a, ra, b, rb, 0, 20)
    ids = [parse_header(d) for d in relay.captured]
    data = [(h, d) for h, d in zip(ids, relay.captured) if h is not None and h[0] & ACK and h[7] < len(d)]
    assert data, "no data datagram went B -> A"
    flags, dst, src, seq, ack, window, *_ = data[-1][0]
    rcv_nxt = max((h[3] + len(d) - h[7]) & 0xFFFFFFFF for h, d in data)  # where B's bytes end, as A acks them
    rng = random.Random(7)
    # 1. Off the path: right addresses, guessed ids, any flags and sequence numbers.
    blind = [HEADER.pack(MAGIC, f, rng.randrange(1, 1 << 32), rng.randrange(1, 1 << 32), rng.randrange(1 << 32),
                         rng.randrange(1 << 32), 65535, 0) + (os.urandom(100) if f & ACK and not f & RST else b"")
             for f in (ACK, ACK | FIN, ACK | PING, RST, RST | ACK) for _ in range(40)]
    # 2. On the path, old: every datagram B sent so far again (old sequence numbers, right ids),
    #    and old data made garbage -- all of it already received, so none of it is taken.
    replayed = list(relay.captured)
    garbage = [d[:h[7]] + os.urandom(len(d) - h[7]) for h, d in data]
    # 3. Resets with the right ids inside A's window, but not exactly where B's bytes end.
    resets = [HEADER.pack(MAGIC, RST | ACK, dst, src, (rcv_nxt + k) & 0xFFFFFFFF, ack, 0, 0)
              for k in (1, 2, 1000, 65535, 200_000)]
    drops_before, lost_before = _stream_drops(a), list(ra.lost)
    relay.inject(blind + replayed + garbage + resets)
    _exchange(a, ra, b, rb, 20, 20)  # the stream still carries everything, in order
    dropped_by_socket = _stat(a, "dropped")
    dropped_by_stream = _stream_drops(a) - drops_before
    assert ra.lost == lost_before == [] and rb.lost == []
    assert ra.misbehaviour == [] and rb.misbehaviour == []
    assert [p.id for p in a.peers()] == [b.id] and _stat(a, "migrations") == 0
    # The blind ones named no connection; the resets and the garbage reached the stream and were
    # refused there (replayed duplicates are acked and forgotten, not all counted as drops).
    assert dropped_by_socket >= len(blind) - 1  # (a random dst may, with odds 2**-32 each, hit an id)
    assert dropped_by_stream >= len(resets), dropped_by_stream
    print(f"\ninjected {len(blind)} blind, {len(replayed)} replayed, {len(garbage)} garbled, {len(resets)} resets: "
          f"{dropped_by_socket} dropped by the socket, {dropped_by_stream} by the stream, 0 lost, 0 reports")


def test_a_nat_rebinding_keeps_the_stream_and_loses_nothing(
        relayed: tuple[crust.Service, Recorder, crust.Service, Recorder, Relay], net: Net) -> None:
    a, ra, b, rb, relay = relayed
    _exchange(a, ra, b, rb, 0, 10)
    old = relay.back_address
    # A stranger's datagrams naming no connection of A's (guessed ids) move nothing.
    stranger = net.track(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    stranger.bind(("127.0.0.5", 0))
    server = relay.server
    for _ in range(50):
        stranger.sendto(HEADER.pack(MAGIC, ACK | PING, int.from_bytes(os.urandom(4), "big") | 1, 7, 0, 0, 65535, 0),
                        server)
    # One on the path replays B's datagrams (right ids, fresh) from a victim's address: the victim
    # gets a small challenge it does not answer, and the connection stays where B is.
    victim = net.track(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    victim.bind(("127.0.0.6", 0))
    replays = relay.captured[-5:]
    for d in replays:
        victim.sendto(d, server)
    _exchange(a, ra, b, rb, 10, 5)
    assert _stat(a, "migrations") == 0
    victim.settimeout(0.5)
    challenges = [victim.recv(2048)]  # bounded: one answer per replay at most
    victim.settimeout(0)
    for _ in replays:
        try:
            challenges.append(victim.recv(2048))
        except BlockingIOError:
            break
    assert all(parse_header(c)[0] == PATH for c in challenges)  # type: ignore[index]
    assert max(map(len, challenges)) <= min(map(len, replays)) and len(challenges) <= len(replays)
    # Now the mapping changes while messages are on their way both ways.
    for i in range(15, 45):
        b.send(a.id, i.to_bytes(4, "big") + bytes(5000))
        a.send(b.id, i.to_bytes(4, "big") + bytes(300))
    new = relay.rebind()
    assert new != old
    started = time.monotonic()
    _exchange(a, ra, b, rb, 45, 15)  # waits for all 60 each way, in order: none lost
    took = time.monotonic() - started
    assert _stat(a, "migrations") == 1 and _stat(a, "path_challenges") >= 2  # the victim's, then B's
    assert a.peer_info(b.id) is not None and ra.lost == [] and rb.lost == []
    assert ra.misbehaviour == [] and rb.misbehaviour == []
    conn_remote = a._reactor.call(lambda: [c.remote_address for c in _rudp_socket(a)._by_id.values()], WAIT)
    assert conn_remote == [new]
    print(f"\nrebinding {old} -> {new}: 1 migration, 60 messages each way in order, {took * 1000:.0f} ms "
          f"after the move")


# -- an attacker on the path, once the connection is keyed ------------------------------------------


def _keyed_state_now(sock: RudpSocket) -> tuple[int, int, int, int, bool, int]:
    """Of the socket's one connection (reactor thread): our id, the peer's, the exact seq an RST or FIN
    of the peer's must carry, our next seq, whether it requires tags, how many datagrams it refused for them."""
    [conn] = sock._by_id.values()
    s = conn._stream
    auth = s.path_auth
    return (s.local_id, s.remote_id, (s._irs + s._rx.rcv_nxt) & MASK, (s._isn + s._tx.snd_nxt) & MASK,
            auth is not None and auth.enforcing, s.unauthenticated)


def _keyed_state(svc: crust.Service) -> tuple[int, int, int, int, bool, int]:
    return svc._reactor.call(lambda: _keyed_state_now(_rudp_socket(svc)), WAIT)  # type: ignore[no-any-return]


def test_an_on_path_attacker_can_neither_reset_nor_finish_nor_move_a_keyed_connection(
        relayed: tuple[crust.Service, Recorder, crust.Service, Recorder, Relay], net: Net) -> None:
    a, ra, b, rb, relay = relayed
    _exchange(a, ra, b, rb, 0, 10)
    assert _keyed_state(a)[4] and _keyed_state(b)[4], "the secure channel did not key both ends"
    sock = _rudp_socket(a)

    # 1. An RST and a FIN from B's own address, at exactly the seq A expects (read and sent in one
    #    reactor call, so no datagram of B's can move it in between): without the key, dropped.
    def forge_and_deliver() -> None:
        local, remote, exact, nxt, _, _ = _keyed_state_now(sock)
        for forged in (HEADER.pack(MAGIC, RST | ACK, local, remote, exact, nxt, 0, KEYED),
                       HEADER.pack(MAGIC, RST | ACK, local, remote, exact, nxt, 0, TAGGED | KEYED) + os.urandom(16),
                       HEADER.pack(MAGIC, ACK | FIN, local, remote, exact, nxt, 65535, KEYED)):
            sock._on_datagram(forged, relay.back_address)

    refused_before = _keyed_state(a)[5]
    a._reactor.call(forge_and_deliver, WAIT)
    _exchange(a, ra, b, rb, 10, 10)
    assert _keyed_state(a)[5] - refused_before == 3
    # 2. Its own address: from there it sends a datagram of B's as it could have seen one (the
    #    right ids and ack; old bytes, which A has), receives A's challenge (so it knows the nonce)
    #    and answers it -- untagged, and with a made-up tag.
    attacker = net.track(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    attacker.bind(("127.0.0.7", 0))
    attacker.settimeout(WAIT)
    local, remote, exact, nxt, *_ = _keyed_state(a)
    attacker.sendto(HEADER.pack(MAGIC, ACK | PING, local, remote, (exact - 64) & MASK, nxt, 65535, KEYED) + bytes(32),
                    relay.server)
    challenge = attacker.recv(2048)  # bounded by WAIT
    flags, dst, src, *_ = parse_header(challenge)  # type: ignore[misc]
    assert (flags, dst, src) == (PATH, remote, local) and challenge[22] == KEYED and len(challenge) == 23
    nonce = challenge[10:22]
    answer = pack_path(PATH | ACK, src, dst, nonce)
    attacker.sendto(answer[:22] + bytes([KEYED]), relay.server)
    attacker.sendto(answer[:22] + bytes([TAGGED | KEYED]) + os.urandom(TAG_SIZE), relay.server)
    _exchange(a, ra, b, rb, 20, 10)  # A still sends to B: everything arrives
    assert _stat(a, "migrations") == 0 and _keyed_state(a)[5] - refused_before == 5
    conn_remote = a._reactor.call(lambda: [c.remote_address for c in sock._by_id.values()], WAIT)
    assert conn_remote == [relay.back_address]
    assert ra.lost == [] and rb.lost == [] and ra.misbehaviour == [] and rb.misbehaviour == []
    print("\nkeyed: 2 exact resets and 1 exact FIN from B's address, 2 PATH answers from 127.0.0.7 with the "
          "right nonce: all refused, 0 migrations, 30 messages each way in order")


def test_a_version_2_syn_is_not_rudp_to_a_version_3_socket(net: Net) -> None:
    a, _, a_ep = net.listener("udp", **UDP_ONLY)
    client = net.track(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    client.bind(("127.0.0.1", 0))
    client.settimeout(WAIT)
    syn = pack_syn(0x1234, 77, 65535, None)
    client.sendto(bytes([0xC6]) + syn[1:], (a_ep.host, a_ep.port))  # version 2: ignored, never answered
    client.sendto(syn, (a_ep.host, a_ep.port))  # version 3: a COOKIE comes back
    reply = client.recv(2048)
    assert parse_header(reply)[0] == COOKIE and _stat(a, "cookies_sent") == 1  # type: ignore[index]


def test_a_keyed_connection_follows_an_idle_peer_whose_keepalives_come_from_a_new_port(reactor: Reactor) -> None:
    """An idle peer that rebinds sends only 23-byte PINGs from its new port: they must draw a challenge."""
    accepted: list[Stream] = []

    def on_accept(conn: Any) -> None:
        accepted.append(Stream())
        accepted[-1].conn = conn
        conn.attach(**accepted[-1].callbacks())

    server = run_on(reactor, lambda: RudpSocket(reactor, "127.0.0.1", 0, on_accept))
    client_sock = run_on(reactor, lambda: RudpSocket(reactor, "127.0.0.1", 0, on_accept,
                                                     stream_options={"keepalive_interval": 0.3}))
    relay = Relay(server.address)
    try:
        client = Stream()
        client.conn = run_on(reactor, lambda: client_sock.connect(relay.address, on_connected=client.on_connected,
                                                                  **client.callbacks()))
        client.wait(lambda: client.connected == 1, "the handshake")
        key = os.urandom(32)
        run_on(reactor, lambda: client.conn.set_path_key(key))  # type: ignore[union-attr]  # the initiator first
        run_on(reactor, lambda: client.conn.write(b"hello"))  # type: ignore[union-attr]
        stream = accepted[0]
        stream.wait(lambda: bytes(stream.data) == b"hello", "the client's first keyed bytes")
        run_on(reactor, lambda: stream.conn.set_path_key(key))  # type: ignore[union-attr]
        run_on(reactor, lambda: stream.conn.write(b"hi"))  # type: ignore[union-attr]
        client.wait(lambda: bytes(client.data) == b"hi", "the server's first keyed bytes")
        auth = run_on(reactor, lambda: stream.conn._stream.path_auth)  # type: ignore[union-attr]
        assert auth is not None and auth.enforcing
        relay.rebind()  # the client is idle: only its keep-alive PINGs will come from the new port
        run_on(reactor, lambda: stream.conn.write(b"still there?"))  # type: ignore[union-attr]
        client.wait(lambda: bytes(client.data) == b"hi" + b"still there?", "data after the rebinding")
        assert run_on(reactor, lambda: (server.migrations, server.path_challenges)) == (1, 1)
    finally:
        relay.close()
        run_on(reactor, lambda: (server.close(), client_sock.close()))
