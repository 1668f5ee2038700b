"""Socket addresses and bound sockets for the transport pumps: IP literals in, never DNS.

:func:`bind_socket` is the one place TCP and UDP sockets get their socket
options and their port, for listeners and for connections from a fixed port
alike; :func:`resolve` and :func:`host_port` convert addresses;
:class:`ReadingSocket` is what a bound socket read by the reactor (a TCP
listener, a UDP socket) knows of its address and of closing.

*Sharing a port.*  POSIX TCP sockets always get ``SO_REUSEADDR``: a
restarted node rebinds its port while old connections sit in TIME_WAIT,
and Linux and the BSDs still refuse a second live listener.  (On Windows
the same flag would allow port hijacking, so it is left off there.)
``reuse_port=True`` adds ``SO_REUSEPORT`` where it exists: sockets that
*all* set it may bind one port -- several Services on the LAN discovery
port, or a TCP listener and the outgoing connections of a hole punch,
which must leave from the port the peer was told about.
"""

from __future__ import annotations

import os
import selectors
import socket
from typing import TYPE_CHECKING, Any, Callable, Literal

from ..errors import ListenerError

if TYPE_CHECKING:  # the reactor imports nothing of this module; the type is for annotations only
    from .reactor import Reactor

__all__ = ["SockAddr", "resolve", "host_port", "bind_socket", "ReadingSocket"]

SockAddr = tuple[Any, ...]  # (host, port) for IPv4, (host, port, flowinfo, scope_id) for IPv6

_TYPES = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}
_POSIX = os.name == "posix"


def resolve(host: str, port: int, kind: int, passive: bool) -> tuple[int, SockAddr]:
    """Turn an IP literal into (family, sockaddr) for a ``kind`` socket without ever touching DNS.

    AI_NUMERICHOST makes getaddrinfo fail fast on a hostname instead of
    blocking the reactor on a resolver; resolving names is the caller's job.
    """
    flags = socket.AI_NUMERICHOST | (socket.AI_PASSIVE if passive else 0)
    infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, kind, 0, flags)
    family, _type, _proto, _canon, sockaddr = infos[0]
    return int(family), sockaddr


def host_port(sockaddr: SockAddr) -> tuple[str, int]:
    """The ``(host, port)`` of a socket address of either family."""
    return (str(sockaddr[0]), int(sockaddr[1]))


def bind_socket(kind: Literal["tcp", "udp"], host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A new non-blocking TCP or UDP socket bound to ``host:port`` (see the module docstring for options).

    Args:
        kind: ``"tcp"`` or ``"udp"``.
        host: an IP literal (``"0.0.0.0"``, ``"::"``, ``"127.0.0.1"``...); its
            family is the socket's.
        port: the port; 0 lets the kernel pick (read it with ``getsockname()``).
        reuse_port: share the port with other sockets that set it too
            (``SO_REUSEADDR`` + ``SO_REUSEPORT``).

    Returns:
        The bound socket; the caller owns it (listens, connects, closes).

    Raises:
        ValueError: ``kind`` is neither ``"tcp"`` nor ``"udp"``.
        ListenerError: ``host`` is not an IP literal, or the socket cannot be
            created or bound (port in use, no permission), e.g. ``cannot bind
            UDP 127.0.0.1:5483: [Errno 98] Address already in use``; the
            OSError is the ``__cause__``.
    """
    sock_type = _TYPES.get(kind)
    if sock_type is None:
        raise ValueError(f"kind must be 'tcp' or 'udp', not {kind!r}")
    sock: socket.socket | None = None
    try:
        family, sockaddr = resolve(host, port, sock_type, passive=True)
        sock = socket.socket(family, sock_type)
        sock.setblocking(False)
        if reuse_port or (_POSIX and kind == "tcp"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(sockaddr)
    except OSError as err:
        if sock is not None:
            sock.close()
        raise ListenerError(f"cannot bind {kind.upper()} {host}:{port}: {err}") from err
    return sock


class ReadingSocket:
    """A bound socket the reactor reads: its address, whether it is closed, and one way to close it.

    The half that :class:`~crust.transport.tcp_listener.TcpListener` and
    :class:`~crust.transport.datagram.UdpSocket` share.  Reactor thread only
    (or before the reactor starts), so nothing takes a lock.
    """

    def __init__(self, reactor: Reactor, sock: socket.socket, on_readable: Callable[[int], None],
                 failure: str, setup: Callable[[socket.socket], object] | None = None) -> None:
        """Take ``sock`` over: run ``setup`` on it, then register it for reading.

        Args:
            reactor: the reactor that will call ``on_readable(mask)``.
            sock: a bound socket; closed here if anything below fails.
            on_readable: the reactor's callback.
            failure: what was being done, for the error (``"listen on 127.0.0.1:0"``).
            setup: what the socket needs before it is read (``listen``, a socket option).

        Raises:
            ListenerError: ``setup`` or registering failed; the OSError is the ``__cause__``.
        """
        self._reactor = reactor
        self._closed = False
        try:
            if setup is not None:
                setup(sock)
            self._address = host_port(sock.getsockname())
            reactor.register(sock, selectors.EVENT_READ, on_readable)
        except OSError as err:
            sock.close()
            raise ListenerError(f"cannot {failure}: {err}") from err
        self._sock = sock

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``, with the port the kernel chose if 0 was asked."""
        return self._address

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def close(self) -> None:
        """Stop reading and close the socket.  Reactor thread only; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._closing()
        # Unregister before close: the fd number may be reused at once.
        self._reactor.unregister(self._sock)
        self._sock.close()

    def _closing(self) -> None:
        """Let go of what a subclass holds besides the socket (a timer); runs once, before it closes."""
