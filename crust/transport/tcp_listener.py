"""A listening TCP socket driven by the :class:`~crust.transport.reactor.Reactor`.

``TcpListener`` accepts connections and hands each socket, non-blocking
with ``TCP_NODELAY`` on, to its owner, who wraps it in a
:class:`~crust.transport.tcp.TcpStream`.  It knows nothing of crust's
protocol, and runs on the reactor thread only, so it takes no lock.

Accepting is bounded per readiness event (``_MAX_ACCEPTS_PER_EVENT``) so a
connection storm cannot starve the streams; running out of descriptors or
kernel memory pauses accepting for ``_ACCEPT_RETRY_DELAY`` rather than
spinning on a listener that stays readable.
"""

from __future__ import annotations

import errno
import logging
import selectors
import socket
from typing import Callable

from ..errors import ListenerError
from .reactor import Reactor, TimerHandle
from .sockets import ReadingSocket, bind_socket, host_port

__all__ = ["TcpListener"]

logger = logging.getLogger("crust.transport")

_MAX_ACCEPTS_PER_EVENT = 64  # accepts per readiness event, for fairness
_ACCEPT_RETRY_DELAY = 0.1  # seconds to stop accepting after running out of fds
_EVENT_READ = selectors.EVENT_READ
# Running out of fds or kernel memory is not the peer's fault and lasts a
# while; the listener stays readable meanwhile, so retrying at once would spin.
_ACCEPT_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class TcpListener(ReadingSocket):
    """A listening TCP socket that hands each accepted connection to ``on_accept``.

    Create, use and close it on the reactor thread (or before the reactor starts).
    """

    def __init__(
        self,
        reactor: Reactor,
        host: str,
        port: int,
        on_accept: Callable[[socket.socket, tuple[str, int]], None],
        backlog: int = 128,
        *,
        reuse_port: bool = False,
    ) -> None:
        """Bind, listen and start accepting.

        Args:
            reactor: the reactor that will run ``on_accept``.
            host: an IP literal to bind (``"0.0.0.0"``, ``"::"``, ``"127.0.0.1"``...).
            port: the port; 0 lets the kernel pick (see :attr:`address`).
            on_accept: called with each accepted socket (non-blocking, TCP_NODELAY
                on) and the peer's ``(host, port)``.  It owns the socket from
                that call on, even if it raises.
            backlog: the kernel's accept queue length.
            reuse_port: share the port with other sockets that set it too,
                such as connections started with ``TcpStream.connect(...,
                local_address=this address, reuse_port=True)``
                (``SO_REUSEPORT``; see :mod:`crust.transport.sockets`).

        Raises:
            ListenerError: the address is not an IP literal, or bind/listen failed
                (port in use, no permission); the OSError is the ``__cause__``.
        """
        self._on_accept = on_accept
        self._retry_timer: TimerHandle | None = None
        try:
            sock = bind_socket("tcp", host, port, reuse_port=reuse_port)
        except ListenerError as err:  # the same failure in a listener's words, with the OSError as cause
            raise ListenerError(f"cannot listen on {host}:{port}: {err.__cause__}") from err.__cause__
        super().__init__(reactor, sock, self._on_readable, f"listen on {host}:{port}",
                         lambda s: s.listen(backlog))

    def _closing(self) -> None:
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None

    def _on_readable(self, mask: int) -> None:
        accept = self._sock.accept
        for _ in range(_MAX_ACCEPTS_PER_EVENT):
            if self._closed:  # on_accept may have closed us
                return
            try:
                sock, addr = accept()
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno in _ACCEPT_RESOURCE_ERRORS:
                    logger.error(
                        "listener %s: accept failed (%s); pausing accepts for %.1f s",
                        self._address, err, _ACCEPT_RETRY_DELAY,
                    )
                    self._reactor.unregister(self._sock)
                    self._retry_timer = self._reactor.call_later(_ACCEPT_RETRY_DELAY, self._resume_accepting)
                    return
                # ECONNABORTED, EPROTO, EPERM (firewall): that connection died in
                # the queue; the others are fine.
                logger.warning("listener %s: accept failed: %s", self._address, err)
                continue
            try:
                # socket.accept() returns a blocking socket whatever the listener is.
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as err:
                logger.warning("listener %s: dropping connection from %s: %s", self._address, addr, err)
                sock.close()
                continue
            try:
                self._on_accept(sock, host_port(addr))
            except Exception:
                logger.exception("listener %s: on_accept callback raised", self._address)

    def _resume_accepting(self) -> None:
        self._retry_timer = None
        if not self._closed:
            self._reactor.register(self._sock, _EVENT_READ, self._on_readable)
