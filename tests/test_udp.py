"""UdpSocket on real loopback sockets (127.0.0.0/8 only; ports chosen by the kernel)."""

from __future__ import annotations

import socket
import sys
import threading
import time
from typing import Any, Callable, Iterator, TypeVar

import pytest

from crust.errors import ListenerError
from crust.transport.reactor import Reactor
from crust import rudp as rudp_module
from crust.transport.udp import CLOSE_LINGER, RudpConnection, RudpSocket, UdpSocket

from tests.helpers import WAIT

T = TypeVar("T")
QUIET = 0.3  # seconds we listen for a datagram that must not arrive
LOOPBACK_BROADCAST = "127.255.255.255"


def run_on(reactor: Reactor, fn: Callable[[], T]) -> T:
    return reactor.call(fn, WAIT)


class Inbox:
    """Records datagrams (on_datagram runs on the reactor thread)."""

    def __init__(self) -> None:
        self.items: list[tuple[bytes, tuple[str, int]]] = []
        self.cond = threading.Condition()

    def __call__(self, data: bytes, addr: tuple[str, int]) -> None:
        with self.cond:
            self.items.append((data, addr))
            self.cond.notify_all()

    def wait_for(self, count: int, timeout: float = WAIT) -> list[tuple[bytes, tuple[str, int]]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.items) >= count, timeout), f"got {len(self.items)} of {count}"
            return list(self.items)


@pytest.fixture
def sockets(reactor: Reactor) -> Iterator[Callable[..., tuple[UdpSocket, Inbox]]]:
    """Make UdpSockets on the reactor thread; all are closed after the test."""
    made: list[UdpSocket] = []

    def make(host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> tuple[UdpSocket, Inbox]:
        inbox = Inbox()
        sock = run_on(reactor, lambda: UdpSocket(reactor, host, port, inbox, **kwargs))
        made.append(sock)
        return sock, inbox

    yield make

    def close_all() -> None:
        for sock in made:
            sock.close()

    run_on(reactor, close_all)


def test_datagram_round_trip(reactor: Reactor, sockets: Callable[..., tuple[UdpSocket, Inbox]]) -> None:
    a, a_in = sockets()
    b, b_in = sockets()
    assert a.address[0] == "127.0.0.1" and a.address[1] != 0 and a.address != b.address
    assert run_on(reactor, lambda: a.sendto(b"ping", b.address))
    assert b_in.wait_for(1) == [(b"ping", a.address)]
    assert run_on(reactor, lambda: b.sendto(b"pong", b_in.items[0][1]))
    assert a_in.wait_for(1) == [(b"pong", b.address)]


def test_many_queued_datagrams_all_arrive(reactor: Reactor, sockets: Callable[..., tuple[UdpSocket, Inbox]]) -> None:
    # More than one read burst (64 per event): the rest must come on later turns.
    a, _ = sockets()
    b, b_in = sockets()
    payloads = [i.to_bytes(2, "big") for i in range(150)]
    assert run_on(reactor, lambda: all(a.sendto(p, b.address) for p in payloads))
    assert [data for data, _ in b_in.wait_for(len(payloads))] == payloads


def test_large_datagram_is_read_up_to_2048_bytes(reactor: Reactor, sockets: Callable[..., tuple[UdpSocket, Inbox]]) -> None:
    a, _ = sockets()
    b, b_in = sockets()
    run_on(reactor, lambda: a.sendto(b"x" * 1200, b.address))
    run_on(reactor, lambda: a.sendto(b"y" * 4000, b.address))
    got = b_in.wait_for(2)
    assert [len(data) for data, _ in got] == [1200, 2048]  # the oversized one arrives truncated


@pytest.mark.skipif(sys.platform != "linux", reason="measured Linux delivery rules")
@pytest.mark.parametrize("bind_host", ["0.0.0.0", LOOPBACK_BROADCAST])
def test_broadcast_reaches_every_socket_sharing_the_port(
    reactor: Reactor, sockets: Callable[..., tuple[UdpSocket, Inbox]], bind_host: str
) -> None:
    first, first_in = sockets(bind_host, 0, reuse_port=True)
    port = first.address[1]
    second, second_in = sockets(bind_host, port, reuse_port=True)
    assert second.address[1] == port
    sender, _ = sockets("127.0.0.1", 0, broadcast=True)
    assert run_on(reactor, lambda: sender.sendto(b"seek", (LOOPBACK_BROADCAST, port)))
    assert first_in.wait_for(1) == [(b"seek", sender.address)]
    assert second_in.wait_for(1) == [(b"seek", sender.address)]


@pytest.mark.skipif(sys.platform != "linux", reason="measured Linux delivery rules")
def test_sockets_bound_to_a_unicast_address_miss_broadcasts(
    reactor: Reactor, sockets: Callable[..., tuple[UdpSocket, Inbox]]
) -> None:
    # Why the discovery socket binds 0.0.0.0: one bound to 127.0.0.1 never sees 127.255.255.255.
    first, first_in = sockets("127.0.0.1", 0, reuse_port=True)
    port = first.address[1]
    _, second_in = sockets("127.0.0.1", port, reuse_port=True)
    sender, _ = sockets("127.0.0.1", 0, broadcast=True)
    assert run_on(reactor, lambda: sender.sendto(b"seek", (LOOPBACK_BROADCAST, port)))
    time.sleep(QUIET)
    assert first_in.items == [] and second_in.items == []


@pytest.mark.skipif(sys.platform != "linux", reason="measured Linux delivery rules")
def test_unicast_to_a_shared_port_reaches_only_one_socket(
    reactor: Reactor, sockets: Callable[..., tuple[UdpSocket, Inbox]]
) -> None:
    first, first_in = sockets("127.0.0.1", 0, reuse_port=True)
    port = first.address[1]
    _, second_in = sockets("127.0.0.1", port, reuse_port=True)
    sender, _ = sockets()
    assert run_on(reactor, lambda: sender.sendto(b"hello", ("127.0.0.1", port)))
    deadline = time.monotonic() + WAIT
    while not (first_in.items or second_in.items) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(QUIET)
    assert len(first_in.items) + len(second_in.items) == 1


def test_broadcast_without_the_flag_is_logged_not_raised(
    reactor: Reactor, sockets: Callable[..., tuple[UdpSocket, Inbox]], caplog: pytest.LogCaptureFixture
) -> None:
    sender, _ = sockets()
    with caplog.at_level("INFO", logger="crust.transport"):
        assert run_on(reactor, lambda: sender.sendto(b"seek", (LOOPBACK_BROADCAST, 9))) is False
    assert "sendto" in caplog.text


def test_full_send_buffer_drops_the_datagram(
    reactor: Reactor, sockets: Callable[..., tuple[UdpSocket, Inbox]], monkeypatch: pytest.MonkeyPatch
) -> None:
    sender, _ = sockets()

    def eagain(self: socket.socket, *args: Any) -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(socket.socket, "sendto", eagain)
    assert run_on(reactor, lambda: sender.sendto(b"x", ("127.0.0.1", 9))) is False
    assert not sender.closed


def test_close_is_idempotent_and_stops_everything(reactor: Reactor, sockets: Callable[..., tuple[UdpSocket, Inbox]]) -> None:
    a, _ = sockets()
    b, b_in = sockets()
    address = b.address
    run_on(reactor, b.close)
    run_on(reactor, b.close)
    assert b.closed and b.address == address
    assert run_on(reactor, lambda: b.sendto(b"x", a.address)) is False
    run_on(reactor, lambda: a.sendto(b"x", address))
    time.sleep(QUIET)
    assert b_in.items == []


def test_on_datagram_may_close_the_socket(reactor: Reactor, sockets: Callable[..., tuple[UdpSocket, Inbox]]) -> None:
    a, _ = sockets()
    got: list[bytes] = []
    closed = threading.Event()
    holder: list[UdpSocket] = []

    def on_datagram(data: bytes, addr: tuple[str, int]) -> None:
        got.append(data)
        holder[0].close()
        closed.set()

    holder.append(run_on(reactor, lambda: UdpSocket(reactor, "127.0.0.1", 0, on_datagram)))
    b = holder[0]
    run_on(reactor, lambda: [a.sendto(b"%d" % i, b.address) for i in range(5)])
    assert closed.wait(WAIT)
    time.sleep(QUIET)
    assert got == [b"0"]


def test_bind_failure_raises_listener_error(reactor: Reactor, sockets: Callable[..., tuple[UdpSocket, Inbox]]) -> None:
    taken, _ = sockets()
    port = taken.address[1]
    with pytest.raises(ListenerError, match=f"cannot bind UDP 127.0.0.1:{port}") as info:
        sockets("127.0.0.1", port)
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(ListenerError) as info:
        sockets("not-an-ip", 0)
    assert isinstance(info.value.__cause__, OSError)


def test_reuse_port_needs_both_sides(reactor: Reactor, sockets: Callable[..., tuple[UdpSocket, Inbox]]) -> None:
    plain, _ = sockets("127.0.0.1", 0)
    with pytest.raises(ListenerError):
        sockets("127.0.0.1", plain.address[1], reuse_port=True)


# -- RudpSocket: rUDP connections multiplexed on one socket ----------------------------------


class Stream:
    """Records one RudpConnection's completions (they run on the reactor thread)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.data = bytearray()
        self.acked = 0
        self.closed: list[OSError | None] = []
        self.connected = 0
        self.conn: RudpConnection | None = None

    def callbacks(self) -> dict[str, Any]:
        return {"on_data": self._on_data, "on_sent": self._on_sent, "on_closed": self._on_closed}

    def on_connected(self, conn: RudpConnection) -> None:
        self._update(lambda: setattr(self, "connected", self.connected + 1))

    def _on_data(self, data: bytes) -> None:
        self._update(lambda: self.data.extend(data))

    def _on_sent(self, nbytes: int) -> None:
        self._update(lambda: setattr(self, "acked", self.acked + nbytes))

    def _on_closed(self, err: OSError | None) -> None:
        self._update(lambda: self.closed.append(err))

    def _update(self, change: Callable[[], object]) -> None:
        with self.cond:
            change()
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        with self.cond:
            assert self.cond.wait_for(predicate, timeout), f"timed out waiting for {what}"


@pytest.fixture
def rudp(reactor: Reactor) -> Iterator[Callable[..., tuple[RudpSocket, list[Stream]]]]:
    """Make RudpSockets that accept every SYN (recording each accepted stream); closed after the test."""
    made: list[RudpSocket] = []

    def make(accept: bool = True, **options: float) -> tuple[RudpSocket, list[Stream]]:
        accepted: list[Stream] = []

        def on_accept(conn: RudpConnection) -> None:
            if accept:
                stream = Stream()
                stream.conn = conn
                conn.attach(**stream.callbacks())
                accepted.append(stream)

        sock = run_on(reactor, lambda: RudpSocket(reactor, "127.0.0.1", 0, on_accept, stream_options=options))
        made.append(sock)
        return sock, accepted

    yield make
    run_on(reactor, lambda: [sock.close() for sock in made])


def _dial(reactor: Reactor, sock: RudpSocket, remote: tuple[str, int]) -> Stream:
    stream = Stream()
    stream.conn = run_on(reactor, lambda: sock.connect(remote, on_connected=stream.on_connected,
                                                       **stream.callbacks()))
    return stream


def test_rudp_connection_carries_bytes_both_ways_and_closes_in_order(
        reactor: Reactor, rudp: Callable[..., tuple[RudpSocket, list[Stream]]]) -> None:
    server, accepted = rudp()
    client_sock, _ = rudp()
    client = _dial(reactor, client_sock, server.address)
    client.wait(lambda: client.connected == 1, "the handshake")
    payload = bytes(range(256)) * 4096  # 1 MiB, so many datagrams and windows
    run_on(reactor, lambda: client.conn.write(payload))  # type: ignore[union-attr]
    server_stream = accepted[0]
    server_stream.wait(lambda: len(server_stream.data) == len(payload), "1 MiB at the server")
    assert bytes(server_stream.data) == payload
    client.wait(lambda: client.acked == len(payload), "acks for all of it")
    run_on(reactor, lambda: server_stream.conn.write(b"bye"))  # type: ignore[union-attr]
    client.wait(lambda: bytes(client.data) == b"bye", "the reply")
    closed = threading.Event()
    run_on(reactor, lambda: client.conn.close(flush=True, on_done=closed.set))  # type: ignore[union-attr]
    server_stream.wait(lambda: server_stream.closed == [None], "the server's orderly close")
    assert closed.wait(WAIT) and client.closed == []  # the closing side is not told through on_closed
    assert run_on(reactor, lambda: (server.connections, client_sock.connections)) == (0, 0)


def test_rudp_simultaneous_open_gives_one_connection_each(
        reactor: Reactor, rudp: Callable[..., tuple[RudpSocket, list[Stream]]]) -> None:
    a_sock, a_accepted = rudp()
    b_sock, b_accepted = rudp()

    a, b = run_on(reactor, lambda: _dial_both(a_sock, b_sock))  # one reactor turn: the SYNs cross
    a.wait(lambda: a.connected == 1, "A connected")
    b.wait(lambda: b.connected == 1, "B connected")
    run_on(reactor, lambda: a.conn.write(b"from a"))  # type: ignore[union-attr]
    b.wait(lambda: bytes(b.data) == b"from a", "A's bytes on B's dialled stream")
    assert a_accepted == [] and b_accepted == []  # the crossing SYNs joined the dials
    assert run_on(reactor, lambda: (a_sock.connections, b_sock.connections)) == (1, 1)


def test_rudp_plain_dials_that_cross_make_two_connections(
        reactor: Reactor, rudp: Callable[..., tuple[RudpSocket, list[Stream]]]) -> None:
    # Without simultaneous_open each dial keeps its own initiator: two peers that
    # dial each other's listener at once get two streams, as over TCP.
    a_sock, a_accepted = rudp()
    b_sock, b_accepted = rudp()

    a, b = run_on(reactor, lambda: _dial_both(a_sock, b_sock, simultaneous_open=False))  # SYNs cross
    a.wait(lambda: a.connected == 1, "A's dial connected")
    b.wait(lambda: b.connected == 1, "B's dial connected")
    assert len(a_accepted) == 1 and len(b_accepted) == 1
    run_on(reactor, lambda: a.conn.write(b"a's dial"))  # type: ignore[union-attr]
    b_accepted[0].wait(lambda: bytes(b_accepted[0].data) == b"a's dial", "A's bytes on B's accepted stream")
    assert run_on(reactor, lambda: (a_sock.connections, b_sock.connections)) == (2, 2)


def _dial_both(a_sock: RudpSocket, b_sock: RudpSocket, simultaneous_open: bool = True) -> tuple[Stream, Stream]:
    """Both sockets dial each other (on the reactor thread)."""
    streams = (Stream(), Stream())
    for stream, sock, remote in ((streams[0], a_sock, b_sock.address), (streams[1], b_sock, a_sock.address)):
        stream.conn = sock.connect(remote, on_connected=stream.on_connected, simultaneous_open=simultaneous_open,
                                   **stream.callbacks())
    return streams


def test_rudp_refused_syn_leaves_no_state_and_dial_times_out(
        reactor: Reactor, rudp: Callable[..., tuple[RudpSocket, list[Stream]]]) -> None:
    server, accepted = rudp(accept=False)
    client_sock, _ = rudp(connect_timeout=0.5)
    client = _dial(reactor, client_sock, server.address)
    client.wait(lambda: len(client.closed) == 1, "the connect timeout")
    assert "timed out" in str(client.closed[0]) and client.connected == 0
    assert accepted == [] and run_on(reactor, lambda: server.connections) == 0


def test_rudp_datagrams_from_the_wrong_address_or_id_are_dropped(
        reactor: Reactor, rudp: Callable[..., tuple[RudpSocket, list[Stream]]],
        sockets: Callable[..., tuple[UdpSocket, Inbox]]) -> None:
    server, accepted = rudp()
    client_sock, _ = rudp()
    client = _dial(reactor, client_sock, server.address)
    client.wait(lambda: client.connected == 1, "the handshake")
    spoofer, _ = sockets("127.0.0.2")
    # A well-formed ACK carrying the client's real id, but from another address; and one with a guessed id.
    real_dst = run_on(reactor, lambda: accepted[0].conn._stream.local_id)  # type: ignore[union-attr]
    for dst in (real_dst, real_dst ^ 1):
        header = bytes([rudp_module.MAGIC, 0x08]) + dst.to_bytes(4, "big") + (7).to_bytes(4, "big") + bytes(13)
        run_on(reactor, lambda h=header: spoofer.sendto(h, server.address))
    run_on(reactor, lambda: client.conn.write(b"still here"))  # type: ignore[union-attr]
    stream = accepted[0]
    stream.wait(lambda: bytes(stream.data) == b"still here", "data after the spoofed resets")
    # The first reached the stream (a datagram from a new address may be the peer, moved), which
    # refused it for its src id; the second named no connection.  Neither moved the connection.
    assert stream.closed == [] and run_on(reactor, lambda: server.dropped) == 1
    assert run_on(reactor, lambda: (stream.conn._stream.dropped, server.migrations)) == (1, 0)  # type: ignore[union-attr]


def test_rudp_orderly_close_to_a_vanished_peer_turns_into_a_reset_after_the_linger(
        reactor: Reactor, rudp: Callable[..., tuple[RudpSocket, list[Stream]]]) -> None:
    server, accepted = rudp()
    client_sock, _ = rudp()
    client = _dial(reactor, client_sock, server.address)
    client.wait(lambda: client.connected == 1, "the handshake")
    run_on(reactor, server._udp.close)  # the peer vanishes without a word (no resets: a crash)
    run_on(reactor, lambda: client.conn.write(b"into the void"))  # type: ignore[union-attr]
    closed = threading.Event()
    started = time.monotonic()
    run_on(reactor, lambda: client.conn.close(flush=True, on_done=closed.set))  # type: ignore[union-attr]
    # Without the linger the stream would retry for its whole RTO budget (~50 s) first.
    assert closed.wait(WAIT), "close(flush=True) never finished"
    assert time.monotonic() - started >= CLOSE_LINGER * 0.9  # it did wait for the peer first
    assert client.closed == [] and run_on(reactor, lambda: client_sock.connections) == 0


class HandPeer:
    """An rUDP peer driven by hand: a sans-IO RudpStream over a plain blocking socket (test thread)."""

    def __init__(self, server: tuple[str, int], local_id: int) -> None:
        self.server = server
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(WAIT)
        self.stream = rudp_module.RudpStream(local_id, 12345, time.monotonic())
        self.sent: list[bytes] = []

    def pump(self) -> list[bytes]:
        out = self.stream.datagrams_to_send(time.monotonic())
        for d in out:
            self.sock.sendto(d, self.server)
        self.sent += out
        return out

    def take(self) -> bytes:
        data = self.sock.recv(2048)
        self.stream.receive_datagram(data, time.monotonic())
        return data

    def until(self, done: Callable[[], bool], what: str) -> None:
        for _ in range(50):  # bounded: each turn waits at most WAIT for one datagram
            if done():
                return
            self.take()
            self.pump()
        raise AssertionError(f"never reached: {what}")

    def silent(self) -> bool:
        self.sock.settimeout(QUIET)
        try:
            self.sock.recv(2048)
            return False
        except socket.timeout:
            return True
        finally:
            self.sock.settimeout(WAIT)


def test_rudp_time_wait_ignores_a_late_syn_and_answers_a_late_fin_of_a_closed_connection(
        reactor: Reactor, rudp: Callable[..., tuple[RudpSocket, list[Stream]]]) -> None:
    # No path MTU probes: every datagram the hand-driven peer reads must be an answer to its own.
    server, accepted = rudp(max_datagram=rudp_module.MAX_DATAGRAM)
    peer = HandPeer(server.address, 0x51515151)
    try:
        peer.stream.connect(time.monotonic())
        [syn] = peer.pump()
        assert len(peer.take()) == len(syn)  # the COOKIE: as long as the SYN, and nothing kept yet
        assert accepted == [] and run_on(reactor, lambda: (server.connections, server.cookies_sent)) == (0, 1)
        [proven_syn] = peer.pump()
        peer.until(lambda: peer.stream.connected, "the handshake")
        peer.pump()
        assert len(accepted) == 1  # accepted when the proven SYN came (the SYN-ACK we got says so)
        peer.stream.close(time.monotonic())
        peer.pump()
        fin = next(d for d in peer.sent if d[1] & 0x04)
        peer.until(lambda: peer.stream.closed, "the orderly close")
        accepted[0].wait(lambda: accepted[0].closed == [None], "the server's orderly close")
        assert run_on(reactor, lambda: server.connections) == 0
        # Late datagrams of the closed connection: its SYN (cookie still valid) opens nothing and
        # gets no answer; its FIN gets the server's last ACK again, no larger than the FIN.
        peer.sock.sendto(proven_syn, server.address)
        assert peer.silent(), "a late SYN was answered"
        assert len(accepted) == 1 and run_on(reactor, lambda: server.connections) == 0
        peer.sock.sendto(fin, server.address)
        again = peer.sock.recv(2048)
        assert again[1] == 0x02 and len(again) <= len(fin)
        # A new connection from the same address (new ids) is not disturbed.
        fresh = rudp_module.RudpStream(0x52525252, 777, time.monotonic())
        peer.stream = fresh
        fresh.connect(time.monotonic())
        peer.pump()
        peer.until(lambda: fresh.connected, "a new connection from the same address")
        assert len(accepted) == 2
    finally:
        peer.sock.close()
