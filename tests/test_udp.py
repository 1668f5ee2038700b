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
from crust.transport.udp import UdpSocket

T = TypeVar("T")
WAIT = 20.0  # seconds any single wait may take before the test fails
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
