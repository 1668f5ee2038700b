"""A non-blocking UDP socket driven by the :class:`~crust.transport.reactor.Reactor`.

``UdpSocket`` moves datagrams and knows nothing of what they mean (beacons,
probes, SSDP).  Like ``tcp.py``, everything here runs on the reactor thread,
so nothing takes a lock.

Theory of operation
-------------------
*Reading.*  On ``EVENT_READ`` the socket reads up to ``_MAX_READS_PER_EVENT``
datagrams of at most ``recv_size`` bytes (longer ones arrive truncated) and
hands each to ``on_datagram(data, (host, port))``; the selector is
level-triggered, so what is left waits for the next turn and one chatty
sender cannot starve the other sockets.

*Writing.*  ``sendto()`` is one non-blocking syscall.  UDP promises nothing,
so a datagram the kernel will not take (``EAGAIN``: buffer full) is dropped
with a debug log, and errors such as ``ENETUNREACH`` or ``EACCES`` are logged,
never raised: the protocol above already retries.

*Sharing a port.*  ``reuse_port=True`` sets ``SO_REUSEADDR`` and, where it
exists, ``SO_REUSEPORT``, so several Services on one host can bind the
discovery port.  On Linux a *broadcast* datagram then reaches every such
socket whose bound address matches it (``0.0.0.0`` or the broadcast address
itself, not a unicast address such as ``127.0.0.1``), while a *unicast* one
reaches only one of them.  Sending to a broadcast address needs
``broadcast=True`` (``SO_BROADCAST``), or the kernel answers ``EACCES``.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys
from typing import Callable

from .reactor import Reactor
from .sockets import ReadingSocket, bind_socket, host_port

__all__ = ["UdpSocket"]

logger = logging.getLogger("crust.transport")

_RECV_SIZE = 2048  # bytes per recvfrom() by default: crust's datagrams stay under 1250 until rUDP probes more
# Linux's "don't fragment, and ignore the cached path MTU" (IP_MTU_DISCOVER = IP_PMTUDISC_PROBE, and
# the IPv6 twin): a datagram too large for the path is lost, which is what path MTU probing listens for.
_PMTUDISC = {socket.AF_INET: (socket.IPPROTO_IP, 10, 3), socket.AF_INET6: (socket.IPPROTO_IPV6, 23, 3)}
_MAX_READS_PER_EVENT = 64  # datagrams per readiness event, for fairness
# ICMP errors that some systems (Windows; Linux on connected sockets) report on a
# later recvfrom: they concern an earlier datagram, not this socket.
_STALE_ERRORS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.EHOSTUNREACH, errno.ENETUNREACH})


class UdpSocket(ReadingSocket):
    """A bound UDP socket that hands each datagram it receives to ``on_datagram``.

    Create, use and close it on the reactor thread (or before the reactor starts).
    """

    def __init__(
        self,
        reactor: Reactor,
        host: str,
        port: int,
        on_datagram: Callable[[bytes, tuple[str, int]], None],
        *,
        reuse_port: bool = False,
        broadcast: bool = False,
        recv_size: int = _RECV_SIZE,
    ) -> None:
        """Bind and start reading.

        Args:
            reactor: the reactor that will run ``on_datagram``.
            host: an IP literal to bind (``"0.0.0.0"``, ``"::"``, ``"127.0.0.1"``...).
            port: the port; 0 lets the kernel pick (see :attr:`address`).
            on_datagram: called with each datagram and its sender's ``(host, port)``.
            reuse_port: let other sockets with this flag bind the same port
                (``SO_REUSEADDR`` + ``SO_REUSEPORT``).
            broadcast: allow sending to broadcast addresses (``SO_BROADCAST``).
            recv_size: the longest datagram read whole (longer ones are cut).

        Raises:
            ListenerError: the address is not an IP literal, or bind failed (port
                in use, no permission); the OSError is the ``__cause__``.
        """
        self._on_datagram = on_datagram
        self._recv_size = recv_size
        sock = bind_socket("udp", host, port, reuse_port=reuse_port)
        allow_broadcast = (lambda s: s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)) if broadcast else None
        super().__init__(reactor, sock, self._on_readable, f"bind UDP {host}:{port}", allow_broadcast)

    def sendto(self, data: bytes, addr: tuple[str, int]) -> bool:
        """Send one datagram to ``addr`` (an IP literal and port) without blocking.

        Returns:
            True if the kernel took it; False if it was dropped (closed socket,
            full buffer, or an error, which is logged).
        """
        if self._closed:
            return False
        try:
            self._sock.sendto(data, addr)
        except BlockingIOError:
            logger.debug("udp %s: send buffer full, dropped %d bytes to %s", self._address, len(data), addr)
            return False
        except OSError as err:
            logger.info("udp %s: sendto %s failed: %s", self._address, addr, err)
            return False
        return True

    def set_dont_fragment(self) -> bool:
        """Send every datagram with "don't fragment", ignoring the kernel's path MTU cache (Linux only).

        Returns:
            True if the option is set; False where the system does not have it
            (datagrams may then be fragmented on the way).
        """
        if sys.platform != "linux":
            return False
        level, option, value = _PMTUDISC[self._sock.family]
        try:
            self._sock.setsockopt(level, option, value)
        except OSError as err:
            logger.debug("udp %s: cannot set don't-fragment: %s", self._address, err)
            return False
        return True

    def set_buffer_sizes(self, nbytes: int) -> None:
        """Ask for ``nbytes`` of kernel send and receive buffer (the kernel may cap it)."""
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                self._sock.setsockopt(socket.SOL_SOCKET, option, nbytes)
            except OSError as err:
                logger.debug("udp %s: cannot set buffer size: %s", self._address, err)

    def __repr__(self) -> str:
        return f"<UdpSocket {self._address}{' closed' if self._closed else ''}>"

    def _on_readable(self, mask: int) -> None:
        recvfrom, recv_size = self._sock.recvfrom, self._recv_size
        for _ in range(_MAX_READS_PER_EVENT):
            if self._closed:  # on_datagram may have closed us
                return
            try:
                data, addr = recvfrom(recv_size)
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno in _STALE_ERRORS:
                    continue
                logger.warning("udp %s: recvfrom failed: %s", self._address, err)
                return
            self._on_datagram(data, host_port(addr))
