"""crust.transport.sockets: IP-literal addresses and bind_socket(), on loopback.

The listener-plus-connection case that ``reuse_port`` exists for is in
tests/test_tcp.py (``test_a_listener_and_a_connection_share_a_port_with_reuse_port``).
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Iterator, Literal

import pytest

from crust.errors import ListenerError
from crust.transport.sockets import bind_socket, host_port, resolve

Kind = Literal["tcp", "udp"]


@pytest.fixture
def opened() -> Iterator[list[socket.socket]]:
    """Sockets to close after the test."""
    socks: list[socket.socket] = []
    yield socks
    for sock in socks:
        sock.close()


def test_resolve_takes_ip_literals_only() -> None:
    assert resolve("127.0.0.1", 80, socket.SOCK_STREAM, passive=False) == (socket.AF_INET, ("127.0.0.1", 80))
    with pytest.raises(socket.gaierror):
        resolve("localhost.invalid", 80, socket.SOCK_STREAM, passive=False)


def test_host_port_of_either_family() -> None:
    assert host_port(("10.0.0.1", 5)) == ("10.0.0.1", 5)
    assert host_port(("::1", 5, 0, 0)) == ("::1", 5)


@pytest.mark.parametrize("kind, sock_type", [("tcp", socket.SOCK_STREAM), ("udp", socket.SOCK_DGRAM)])
def test_bind_socket_gives_a_bound_non_blocking_socket(opened: list[socket.socket], kind: Kind,
                                                       sock_type: int) -> None:
    sock = bind_socket(kind, "127.0.0.1", 0)
    opened.append(sock)
    host, port = sock.getsockname()
    assert (sock.family, sock.type, host) == (socket.AF_INET, sock_type, "127.0.0.1") and port > 0
    assert sock.getblocking() is False
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
    # TCP always may rebind over TIME_WAIT on POSIX; UDP only shares when asked.
    assert bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)) == (kind == "tcp" and os.name == "posix")


def test_bind_socket_refuses_other_kinds() -> None:
    with pytest.raises(ValueError, match="kind must be 'tcp' or 'udp'"):
        bind_socket("sctp", "127.0.0.1", 0)  # type: ignore[arg-type]  # the point of the test


def test_bind_socket_refuses_a_hostname() -> None:
    with pytest.raises(ListenerError, match="cannot bind TCP not-an-ip.invalid:0") as info:
        bind_socket("tcp", "not-an-ip.invalid", 0)
    assert isinstance(info.value.__cause__, OSError)


def test_a_taken_port_is_a_listener_error(opened: list[socket.socket]) -> None:
    taken = bind_socket("udp", "127.0.0.1", 0)
    opened.append(taken)
    port = taken.getsockname()[1]
    with pytest.raises(ListenerError, match=f"cannot bind UDP 127.0.0.1:{port}: .*in use") as info:
        bind_socket("udp", "127.0.0.1", port)
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.EADDRINUSE


@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_reuse_port_shares_a_port_between_sockets_that_all_ask(opened: list[socket.socket], kind: Kind) -> None:
    first = bind_socket(kind, "127.0.0.1", 0, reuse_port=True)
    opened.append(first)
    if kind == "tcp":
        first.listen(1)  # a live listener: SO_REUSEADDR alone would not let a second socket in
    port = first.getsockname()[1]
    second = bind_socket(kind, "127.0.0.1", port, reuse_port=True)
    opened.append(second)
    assert second.getsockname() == ("127.0.0.1", port)
    assert second.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
    with pytest.raises(ListenerError):  # one that does not ask is refused
        opened.append(bind_socket(kind, "127.0.0.1", port))
