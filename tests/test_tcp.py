"""TcpListener / TcpStream on real loopback sockets."""

from __future__ import annotations

import errno
import hashlib
import logging
import random
import select
import socket
import struct
import threading
from typing import Callable, Iterator, TypeVar

import pytest

from crust.errors import ListenerError
from crust.transport import tcp
from crust.transport.reactor import Reactor
from crust.transport.tcp import TcpStream
from crust.transport.tcp_listener import TcpListener

from tests.helpers import WAIT

T = TypeVar("T")
MIB = 1024 * 1024


def run_on(reactor: Reactor, fn: Callable[[], T]) -> T:
    """Run ``fn`` on the reactor thread and return its result (or raise its exception)."""
    return reactor.call(fn, WAIT)


def reactor_turns(reactor: Reactor, turns: int = 3) -> None:
    """Return once the loop has gone through ``turns`` more select() calls.

    A call_soon made from the "soon" phase waits for the next turn, so each
    link of this chain is one select(0): any ready socket is seen meanwhile.
    """
    done = threading.Event()

    def step(left: int) -> None:
        if left == 0:
            done.set()
        else:
            reactor.call_soon(lambda: step(left - 1))

    reactor.call_soon_threadsafe(lambda: reactor.call_soon(lambda: step(turns)))
    assert done.wait(WAIT)


class Peer:
    """Records one stream's callbacks (they all run on the reactor thread)."""

    def __init__(self, want: int | None = None) -> None:
        self.stream: TcpStream | None = None
        self.data = bytearray()
        self.data_calls = 0
        self.sends: list[int] = []  # byte count of each on_sent call
        self.closed: list[OSError | None] = []
        self.want = want
        self.got = threading.Event()  # len(data) reached `want`
        self.connected = threading.Event()
        self.closed_event = threading.Event()
        self.echo = False

    def on_data(self, data: bytes) -> None:
        self.data += data
        self.data_calls += 1
        if self.echo and self.stream is not None:
            self.stream.write(data)
        if self.want is not None and len(self.data) >= self.want:
            self.got.set()

    def on_sent(self, n: int) -> None:
        self.sends.append(n)

    @property
    def sent(self) -> int:
        return sum(self.sends)

    def on_closed(self, err: OSError | None) -> None:
        self.closed.append(err)
        self.closed_event.set()

    def on_connected(self, stream: TcpStream) -> None:
        self.stream = stream
        self.connected.set()

    def wrap(self, reactor: Reactor, sock: socket.socket) -> TcpStream:
        """A stream over an accepted socket, reporting to this peer (reactor thread)."""
        self.stream = TcpStream(reactor, sock, on_data=self.on_data, on_sent=self.on_sent,
                                on_closed=self.on_closed)
        return self.stream

    def connect(self, reactor: Reactor, host: str, port: int, timeout: float | None = None) -> TcpStream:
        """Start connecting, reporting to this peer (reactor thread)."""
        return TcpStream.connect(reactor, host, port, on_connected=self.on_connected, on_data=self.on_data,
                                 on_sent=self.on_sent, on_closed=self.on_closed, timeout=timeout)


def close_all(reactor: Reactor, streams: list[TcpStream], listener: TcpListener | None = None) -> None:
    """Close streams (without flushing) and the listener on the reactor thread."""
    def close() -> None:
        for stream in streams:
            stream.close(flush=False)
        if listener is not None:
            listener.close()

    run_on(reactor, close)


class Pair:
    """A listener plus one connected client/server stream pair; closes all on exit."""

    def __init__(self, reactor: Reactor, host: str = "127.0.0.1") -> None:
        self.reactor = reactor
        self.client = Peer()
        self.server = Peer()
        self.raw_server: socket.socket | None = None
        self.accepted = threading.Event()

        def on_accept(sock: socket.socket, addr: tuple[str, int]) -> None:
            self.raw_server = sock
            self.server.wrap(reactor, sock)
            self.accepted.set()

        self.listener = run_on(reactor, lambda: TcpListener(reactor, host, 0, on_accept))
        port = self.listener.address[1]
        run_on(reactor, lambda: self.client.connect(reactor, host, port))
        assert self.client.connected.wait(WAIT)
        assert self.accepted.wait(WAIT)

    @property
    def c(self) -> TcpStream:
        assert self.client.stream is not None
        return self.client.stream

    @property
    def s(self) -> TcpStream:
        assert self.server.stream is not None
        return self.server.stream

    def close(self) -> None:
        def close_all() -> None:
            for peer in (self.client, self.server):
                if peer.stream is not None:
                    peer.stream.close(flush=False)
            self.listener.close()

        run_on(self.reactor, close_all)


@pytest.fixture
def pair(reactor: Reactor) -> Iterator[Pair]:
    p = Pair(reactor)
    yield p
    p.close()


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_echo_10_mib_in_random_writes(pair: Pair) -> None:
    total = 10 * MIB
    rng = random.Random(20240601)
    payload = rng.randbytes(total)
    pair.server.echo = True
    pair.client.want = total

    def write_all() -> int:
        offset = writes = 0
        while offset < total:
            size = rng.randint(1, 64 * 1024)
            pair.c.write(payload[offset:offset + size])
            offset += size
            writes += 1
        return writes

    assert run_on(pair.reactor, write_all) > 100
    assert pair.client.got.wait(WAIT)
    assert len(pair.client.data) == total
    assert hashlib.sha256(pair.client.data).digest() == hashlib.sha256(payload).digest()
    assert run_on(pair.reactor, lambda: (pair.client.sent, pair.server.sent, pair.c.pending_bytes)) == (
        total, total, 0)
    assert pair.client.closed == [] and pair.server.closed == []


def test_many_small_writes_in_one_turn_are_sent_with_few_syscalls(pair: Pair) -> None:
    pair.server.want = 10_000 * 16

    def burst() -> None:
        for i in range(10_000):
            pair.c.write(i.to_bytes(16, "big"))

    run_on(pair.reactor, burst)
    assert pair.server.got.wait(WAIT)
    assert bytes(pair.server.data) == b"".join(i.to_bytes(16, "big") for i in range(10_000))
    sends = run_on(pair.reactor, lambda: list(pair.client.sends))
    assert sum(sends) == 10_000 * 16
    assert len(sends) <= 10_000 // 512 + 2  # one sendmsg per 512 buffers


def test_a_lone_write_leaves_inside_the_call_and_later_ones_wait_for_the_turns_flush(pair: Pair) -> None:
    pair.server.want = 3 * 5

    def writes() -> tuple[list[int], list[int], int]:
        pair.c.write(b"first")
        after_first = list(pair.client.sends)  # the short path: sent, and reported, before write() returned
        pair.c.write(b"secon")
        pair.c.write(b"third")
        return after_first, list(pair.client.sends), pair.c.pending_bytes

    after_first, after_all, pending = run_on(pair.reactor, writes)
    assert after_first == [5]
    assert after_all == [5] and pending == 10  # the rest of the turn's writes: queued for one flush
    assert pair.server.got.wait(WAIT)
    assert bytes(pair.server.data) == b"firstseconthird"
    assert run_on(pair.reactor, lambda: list(pair.client.sends)) == [5, 10]  # one send for the two


def test_a_send_error_on_the_short_path_is_reported_later_not_inside_write(pair: Pair) -> None:
    def write_to_a_broken_socket() -> list[OSError | None]:
        pair.c._sock.shutdown(socket.SHUT_WR)  # any send now fails with EPIPE
        pair.c.write(b"doomed")
        return list(pair.client.closed)

    assert run_on(pair.reactor, write_to_a_broken_socket) == []
    assert pair.client.closed_event.wait(WAIT)
    assert len(pair.client.closed) == 1 and isinstance(pair.client.closed[0], BrokenPipeError)


def test_addresses(pair: Pair) -> None:
    assert pair.c.remote_address == pair.listener.address
    assert pair.s.remote_address == pair.c.local_address
    assert pair.c.local_address is not None and pair.c.local_address[0] == "127.0.0.1"


def test_pause_reading_holds_data_until_resume(pair: Pair) -> None:
    run_on(pair.reactor, pair.s.pause_reading)
    pair.server.want = 5
    run_on(pair.reactor, lambda: pair.c.write(b"hello"))
    assert pair.raw_server is not None
    # The bytes are in the server's kernel queue...
    readable, _, _ = select.select([pair.raw_server], [], [], WAIT)
    assert readable
    # ...and the loop goes round several times without delivering them.
    reactor_turns(pair.reactor)
    assert pair.server.data_calls == 0
    run_on(pair.reactor, pair.s.resume_reading)
    assert pair.server.got.wait(WAIT)
    assert bytes(pair.server.data) == b"hello"


def test_peer_close_reports_eof_once(pair: Pair) -> None:
    run_on(pair.reactor, lambda: pair.c.close())
    assert pair.server.closed_event.wait(WAIT)
    reactor_turns(pair.reactor)
    assert pair.server.closed == [None]
    assert pair.client.closed == []  # a local close is never reported
    assert run_on(pair.reactor, lambda: (pair.s.closed, pair.c.closed)) == (True, True)
    run_on(pair.reactor, lambda: pair.s.write(b"ignored"))  # no error after close


def test_peer_reset_reports_the_error(reactor: Reactor) -> None:
    server = Peer()
    accepted = threading.Event()

    def on_accept(sock: socket.socket, addr: tuple[str, int]) -> None:
        server.wrap(reactor, sock)
        accepted.set()

    listener = run_on(reactor, lambda: TcpListener(reactor, "127.0.0.1", 0, on_accept))
    raw = socket.create_connection(listener.address, timeout=WAIT)
    try:
        assert accepted.wait(WAIT)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() sends RST
    finally:
        raw.close()
    assert server.closed_event.wait(WAIT)
    assert len(server.closed) == 1 and isinstance(server.closed[0], ConnectionResetError)
    run_on(reactor, listener.close)


def test_connect_to_a_closed_port_is_refused(reactor: Reactor) -> None:
    peer = Peer()
    run_on(reactor, lambda: peer.connect(reactor, "127.0.0.1", free_port()))
    assert peer.closed_event.wait(WAIT)
    reactor_turns(reactor)
    assert len(peer.closed) == 1 and isinstance(peer.closed[0], ConnectionRefusedError)
    assert not peer.connected.is_set()


def test_connect_to_a_hostname_fails_through_on_closed(reactor: Reactor) -> None:
    peer = Peer()
    stream = run_on(reactor, lambda: peer.connect(reactor, "localhost", 1))
    assert stream.closed
    assert peer.closed_event.wait(WAIT)
    assert len(peer.closed) == 1 and isinstance(peer.closed[0], socket.gaierror)


def test_connect_timeout(reactor: Reactor) -> None:
    # Linux drops SYNs while a listener's accept queue is full; listen(0) holds
    # one connection, so after one filler our connect can only time out.
    listener = socket.socket()
    filler = socket.socket()
    peer = Peer()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.settimeout(WAIT)
        filler.connect(listener.getsockname())
        run_on(reactor, lambda: peer.connect(reactor, "127.0.0.1", listener.getsockname()[1], timeout=0.2))
        assert peer.closed_event.wait(WAIT) or peer.connected.wait(WAIT)
        if peer.connected.is_set():
            close_all(reactor, [peer.stream] if peer.stream else [])
            pytest.skip("this kernel completed the handshake despite a full accept queue")
        assert len(peer.closed) == 1 and isinstance(peer.closed[0], TimeoutError)
    finally:
        filler.close()
        listener.close()


def test_writes_before_connect_are_sent_after(reactor: Reactor) -> None:
    server = Peer(want=11)
    accepted: list[TcpStream] = []

    def on_accept(sock: socket.socket, addr: tuple[str, int]) -> None:
        accepted.append(server.wrap(reactor, sock))

    listener = run_on(reactor, lambda: TcpListener(reactor, "127.0.0.1", 0, on_accept))
    client = Peer()

    def start() -> TcpStream:
        stream = client.connect(reactor, "127.0.0.1", listener.address[1])
        stream.write(b"hello ")
        stream.write(b"world")
        return stream

    stream = run_on(reactor, start)
    assert server.got.wait(WAIT)
    assert bytes(server.data) == b"hello world"
    assert client.connected.is_set()
    close_all(reactor, [stream, *accepted], listener)


def test_close_flush_delivers_everything_before_fin(pair: Pair) -> None:
    total = 16 * MIB
    payload = random.Random(7).randbytes(total)
    run_on(pair.reactor, pair.s.pause_reading)  # make the client's queue back up

    def write_and_close() -> int:
        pair.c.write(payload)
        pending = pair.c.pending_bytes
        pair.c.close(flush=True)
        return pending

    run_on(pair.reactor, lambda: pair.c.write(payload[:1]))  # a write from an earlier turn, too
    pair.server.want = total + 1
    assert run_on(pair.reactor, write_and_close) > 0
    assert run_on(pair.reactor, lambda: pair.c.closed)
    run_on(pair.reactor, pair.s.resume_reading)
    assert pair.server.closed_event.wait(WAIT)
    assert pair.server.closed == [None]  # FIN, not RST
    assert len(pair.server.data) == total + 1
    assert bytes(pair.server.data[1:]) == payload
    assert pair.client.closed == []


def test_close_without_flush_returns_at_once(pair: Pair) -> None:
    run_on(pair.reactor, pair.s.pause_reading)

    def write_and_close() -> tuple[int, int, bool]:
        pair.c.write(b"x" * (32 * MIB))
        before = pair.c.pending_bytes
        pair.c.close(flush=False)
        return before, pair.c.pending_bytes, pair.c.closed

    before, after, closed = run_on(pair.reactor, write_and_close)
    assert before > 0 and after == 0 and closed
    run_on(pair.reactor, pair.s.resume_reading)
    assert pair.server.closed_event.wait(WAIT)  # EOF or reset, but it ends
    assert pair.client.closed == []


def test_close_flush_gives_up_after_the_timeout(
    pair: Pair, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tcp, "CLOSE_FLUSH_TIMEOUT", 0.2)
    gave_up = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "so they were dropped" in record.getMessage():
                gave_up.set()

    handler = Watch()
    logging.getLogger("crust.transport").addHandler(handler)
    try:
        run_on(pair.reactor, pair.s.pause_reading)  # the peer never reads again

        def write_and_close() -> None:
            pair.c.write(b"x" * (64 * MIB))  # more than both kernel buffers hold
            pair.c.close(flush=True)

        run_on(pair.reactor, write_and_close)
        assert gave_up.wait(WAIT)
        assert run_on(pair.reactor, lambda: (pair.c.closed, pair.c.pending_bytes)) == (True, 0)
        assert pair.client.closed == []
    finally:
        logging.getLogger("crust.transport").removeHandler(handler)


def test_on_data_closing_the_stream_stops_the_read_loop(pair: Pair) -> None:
    def close_on_data(data: bytes) -> None:
        pair.server.data_calls += 1
        pair.s.close(flush=False)

    pair.s._on_data = close_on_data
    run_on(pair.reactor, lambda: pair.c.write(b"y" * (4 * MIB)))
    assert pair.client.closed_event.wait(WAIT)  # the client sees the server go away
    reactor_turns(pair.reactor)
    assert pair.server.data_calls == 1
    assert pair.server.closed == []


def test_listener_accepts_many_connections(reactor: Reactor) -> None:
    count = 150  # more than one readiness event's worth of accepts
    accepted: list[TcpStream] = []
    all_in = threading.Event()

    def on_accept(sock: socket.socket, addr: tuple[str, int]) -> None:
        assert sock.getblocking() is False
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        accepted.append(TcpStream(reactor, sock, on_data=lambda d: None, on_sent=lambda n: None,
                                  on_closed=lambda e: None))
        if len(accepted) == count:
            all_in.set()

    listener = run_on(reactor, lambda: TcpListener(reactor, "127.0.0.1", 0, on_accept, backlog=256))
    clients = [socket.create_connection(listener.address, timeout=WAIT) for _ in range(count)]
    try:
        assert all_in.wait(WAIT)
    finally:
        for client in clients:
            client.close()
        close_all(reactor, accepted, listener)


def test_listener_error_on_port_in_use(reactor: Reactor) -> None:
    first = run_on(reactor, lambda: TcpListener(reactor, "127.0.0.1", 0, lambda s, a: None))
    try:
        port = first.address[1]
        with pytest.raises(ListenerError, match=f"cannot listen on 127.0.0.1:{port}") as info:
            run_on(reactor, lambda: TcpListener(reactor, "127.0.0.1", port, lambda s, a: None))
        assert isinstance(info.value.__cause__, OSError)
    finally:
        run_on(reactor, first.close)
        run_on(reactor, first.close)  # idempotent


def test_listener_error_on_a_hostname(reactor: Reactor) -> None:
    with pytest.raises(ListenerError):
        run_on(reactor, lambda: TcpListener(reactor, "not-an-ip.invalid", 0, lambda s, a: None))


class Acceptor:
    """A listener's accepted sockets and their peers' addresses (closed by close())."""

    def __init__(self) -> None:
        self.socks: list[socket.socket] = []
        self.peers: list[tuple[str, int]] = []
        self.count = threading.Semaphore(0)

    def __call__(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        self.socks.append(sock)
        self.peers.append(addr)
        self.count.release()

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


def dial_from(reactor: Reactor, peer: Peer, local: tuple[str, int], port: int, reuse_port: bool) -> TcpStream:
    return run_on(reactor, lambda: TcpStream.connect(
        reactor, "127.0.0.1", port, on_connected=peer.on_connected, on_data=peer.on_data, on_sent=peer.on_sent,
        on_closed=peer.on_closed, local_address=local, reuse_port=reuse_port))


def test_a_listener_and_a_connection_share_a_port_with_reuse_port(reactor: Reactor) -> None:
    # TCP hole punching dials out from the port its listener holds: the one the peer was told about.
    here, there = Acceptor(), Acceptor()
    listener = run_on(reactor, lambda: TcpListener(reactor, "127.0.0.1", 0, here, reuse_port=True))
    target = run_on(reactor, lambda: TcpListener(reactor, "127.0.0.1", 0, there))
    peer = Peer()
    stream = dial_from(reactor, peer, listener.address, target.address[1], reuse_port=True)
    late = None
    try:
        assert peer.connected.wait(WAIT), peer.closed
        assert there.count.acquire(timeout=WAIT)
        assert there.peers == [listener.address]  # the connection left from the listener's port
        assert run_on(reactor, lambda: stream.local_address) == listener.address
        late = socket.create_connection(listener.address, timeout=WAIT)  # and the listener still accepts
        assert here.count.acquire(timeout=WAIT)
        assert here.peers == [late.getsockname()]
    finally:
        if late is not None:
            late.close()
        close_all(reactor, [stream], listener)
        run_on(reactor, target.close)
        here.close()
        there.close()


@pytest.mark.parametrize("listener_reuses, dial_reuses", [(True, False), (False, True)])
def test_sharing_a_listeners_port_needs_reuse_port_on_both(reactor: Reactor, listener_reuses: bool,
                                                           dial_reuses: bool) -> None:
    acceptor = Acceptor()
    listener = run_on(reactor, lambda: TcpListener(reactor, "127.0.0.1", 0, acceptor, reuse_port=listener_reuses))
    target = run_on(reactor, lambda: TcpListener(reactor, "127.0.0.1", 0, acceptor))
    peer = Peer()
    stream = dial_from(reactor, peer, listener.address, target.address[1], reuse_port=dial_reuses)
    try:
        assert peer.closed_event.wait(WAIT)  # the bind failed: reported as a connect failure
        assert len(peer.closed) == 1 and isinstance(peer.closed[0], OSError)
        assert peer.closed[0].errno == errno.EADDRINUSE
        assert not peer.connected.is_set()
    finally:
        close_all(reactor, [stream], listener)
        run_on(reactor, target.close)
        acceptor.close()


def _ipv6_loopback_works() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback_works(), reason="no IPv6 loopback (::1) on this host")
def test_ipv6_loopback_echo(reactor: Reactor) -> None:
    pair = Pair(reactor, host="::1")
    try:
        assert pair.listener.address[0] == "::1"
        pair.server.echo = True
        pair.client.want = 6
        run_on(reactor, lambda: pair.c.write(b"over 6"))
        assert pair.client.got.wait(WAIT)
        assert bytes(pair.client.data) == b"over 6"
    finally:
        pair.close()
