"""Streams: every byte stream of one Service, and the sockets that make them.

The engine names streams by ``ConnId`` and speaks in effects (``Dial``,
``Write``, ``Close``, ``SendDatagram``, ``KeyPath``) and completions (``handle_accepted``,
``handle_connected``, ``receive_data``, ``handle_sent``, ``handle_closed``,
``receive_datagram``).  ``Streams`` is the real shell's
:class:`~crust.runtime.driver.Transport`: the :class:`~crust.runtime.driver.Driver`
hands it the effects, and it turns them into socket calls over TCP
(:mod:`crust.transport.tcp`, :mod:`crust.transport.tcp_listener`) and reliable UDP (:mod:`crust.transport.udp`)
alike; every completion goes back to the driver, which feeds the engine
and pumps.  The Service never touches a socket.

Theory of operation
-------------------
*Listening.*  :meth:`listen` binds a TCP listener (``enable_tcp``) and the
rUDP socket (``enable_udp``) and returns our endpoints, TCP ones first (TCP is
preferred wherever both work).  The rUDP socket is also bound on the first
dial of a ``udp://`` endpoint, and it stays open when listening stops: it
carries every rUDP connection, inbound ones included, and hole punching
needs it.

*Closing.*  ``close(conn, flush=True)`` keeps a stream in ``_flushing`` until
it has sent its last bytes, so :meth:`shutdown` can wait for all of them and
:meth:`abort` can cut the stragglers.  The rUDP socket closes last, after
every rUDP stream: their FINs and resets leave through it.

Everything here runs on the reactor thread; nothing takes a lock.
"""

from __future__ import annotations

import functools
import logging
import socket
from typing import Any, Callable

from ..config import Config
from ..errors import ListenerError
from ..ids import ConnId, Endpoint
from ..transport.interfaces import local_addresses
from ..transport.reactor import Reactor
from ..transport.sockets import bind_socket
from ..transport.tcp import TcpStream
from ..transport.tcp_listener import TcpListener
from ..transport.udp import RudpConnection, RudpSocket
from .driver import Driver

__all__ = ["Streams"]

log = logging.getLogger("crust")

Stream = TcpStream | RudpConnection


class Streams:
    """The Service's streams, listener and rUDP socket, driven by the engine's driver (reactor thread only)."""

    def __init__(self, reactor: Reactor, driver: Driver, config: Config) -> None:
        """Own no socket yet (``driver.attach`` this as its transport).

        Args:
            reactor: runs every socket callback.
            driver: gets every completion.
            config: transports, ports, host and timeouts.
        """
        self._reactor = reactor
        self._driver = driver
        self._config = config
        self._streams: dict[ConnId, Stream] = {}
        self._flushing: set[Stream] = set()  # closed with flush=True, still sending their last bytes
        self._listener: TcpListener | None = None
        self._rudp: RudpSocket | None = None  # one UDP socket for every rUDP connection, bound on first use
        self._punch_socket: socket.socket | None = None  # holds our TCP punch port (see punch_port)
        self._endpoints: list[Endpoint] = []

    @property
    def endpoints(self) -> list[Endpoint]:
        """Where we listen (empty when not listening)."""
        return list(self._endpoints)

    # -- listening ----------------------------------------------------------------------

    def listen(self) -> list[Endpoint]:
        """Bind the enabled transports (once) and return our endpoints, TCP first.

        Raises:
            ListenerError: both transports are disabled, or a port could not be bound
                (then nothing stays bound).
        """
        if self._endpoints:
            return self.endpoints
        cfg = self._config
        if not (cfg.enable_tcp or cfg.enable_udp):
            raise ListenerError("both transports are disabled in the config (enable_tcp=enable_udp=False)")
        endpoints: list[Endpoint] = []
        if cfg.enable_tcp:
            self._listener = TcpListener(self._reactor, cfg.listen_host, cfg.tcp_port, self._on_accept)
            host, port = self._listener.address
            endpoints += [Endpoint(h, port) for h in local_addresses(host)]
        if cfg.enable_udp:
            try:
                host, port = self._rudp_socket().address
            except ListenerError:
                self.stop_listening()
                raise
            endpoints += [Endpoint(h, port, "udp") for h in local_addresses(host)]
        self._endpoints = endpoints
        return self.endpoints

    def stop_listening(self) -> None:
        """Stop accepting TCP connections; existing streams and the rUDP socket stay."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._endpoints = []

    def punch_port(self) -> int | None:
        """Our TCP punch port, reserved now if need be; None without TCP.

        Dials for hole punching and for asking observers where they see us
        leave from this one port (``SO_REUSEADDR`` + ``SO_REUSEPORT``), so the
        mapping observers report is the one a punch meets.  It is not our
        listener's port: two nodes asking each other at once would then open
        the same four-tuple twice (each from its listener to the other's).  A
        socket bound to it and never used keeps the port ours between dials.
        """
        if not self._config.enable_tcp:
            return None
        if self._punch_socket is None:
            try:
                self._punch_socket = bind_socket("tcp", self._config.listen_host, 0, reuse_port=True)
            except ListenerError as err:
                log.warning("no TCP punch port: %s", err)
                return None
        return int(self._punch_socket.getsockname()[1])

    def udp_port(self) -> int | None:
        """Our rUDP socket's port, bound now if need be; None without UDP."""
        if not self._config.enable_udp:
            return None
        try:
            return self._rudp_socket().address[1]
        except ListenerError as err:
            log.warning("no rUDP socket: %s", err)
            return None

    # -- the engine's effects -----------------------------------------------------------

    def dial(self, conn: ConnId, endpoint: Endpoint, local_port: int | None = None) -> None:
        """Open ``conn`` to ``endpoint`` over its transport; a failure reaches the engine as a close.

        ``local_port``: a TCP dial leaves from that port of ours (our punch port).
        """
        def on_connected(stream: Stream) -> None:
            local = stream.local_address
            self._driver.handle_connected(conn, None if local is None else Endpoint(*local, endpoint.transport))

        cfg, callbacks = self._config, self._callbacks(conn)

        def fail(why: str) -> None:  # later, as a failed connect would: the caller is mid-pump
            self._reactor.call_soon(callbacks["on_closed"], OSError(why))

        if endpoint.transport == "udp":
            if not cfg.enable_udp:
                fail("UDP is disabled (enable_udp=False)")
                return
            try:
                rudp = self._rudp_socket()
            except ListenerError as err:
                fail(str(err))
                return
            self._streams[conn] = rudp.connect((endpoint.host, endpoint.port), on_connected=on_connected,
                                               **callbacks)
        elif cfg.enable_tcp:
            local = None if local_port is None else (cfg.listen_host, local_port)
            self._streams[conn] = TcpStream.connect(
                self._reactor, endpoint.host, endpoint.port, on_connected=on_connected,
                timeout=cfg.handshake_timeout, local_address=local, reuse_port=True, **callbacks)
        else:
            fail("TCP is disabled (enable_tcp=False)")

    def send_datagram(self, data: bytes, endpoint: Endpoint) -> None:
        """Send one datagram from our rUDP socket (dropped quietly if there is none)."""
        if self._config.enable_udp:
            try:
                self._rudp_socket().sendto(data, (endpoint.host, endpoint.port))
            except ListenerError as err:
                log.debug("datagram to %s not sent: %s", endpoint, err)

    def write(self, conn: ConnId, data: bytes) -> None:
        """Queue ``data`` on ``conn`` (ignored if it is gone)."""
        stream = self._streams.get(conn)
        if stream is not None:
            stream.write(data)

    def close(self, conn: ConnId, flush: bool) -> None:
        """Close ``conn``: after its queued bytes (``flush``), or at once."""
        stream = self._streams.pop(conn, None)
        if stream is None:
            return
        if flush:
            self._flushing.add(stream)
            stream.close(flush=True, on_done=functools.partial(self._flushing.discard, stream))
        else:
            stream.close(flush=False)

    def key_path(self, conn: ConnId, key: bytes) -> None:
        """Give an rUDP ``conn`` its path key (``KeyPath``); a TCP stream or a gone one ignores it."""
        stream = self._streams.get(conn)
        if isinstance(stream, RudpConnection):
            stream.set_path_key(key)

    def pause_reading(self, conn: ConnId) -> bool:
        """Stop reading ``conn`` (its peer's messages wait for the callbacks); False if it is gone."""
        stream = self._streams.get(conn)
        if stream is not None:
            stream.pause_reading()
        return stream is not None

    def resume_reading(self, conn: ConnId) -> bool:
        """Undo :meth:`pause_reading`; False if ``conn`` is gone."""
        stream = self._streams.get(conn)
        if stream is not None:
            stream.resume_reading()
        return stream is not None

    # -- shutting down ------------------------------------------------------------------

    def shutdown(self, done: Callable[[], None]) -> None:
        """Stop listening and close every stream after its queued bytes; ``done()`` once all are closed."""
        self.stop_listening()
        open_streams = [s for s in self._streams.values() if not s.closed] + list(self._flushing)
        remaining = [len(open_streams)]

        def one_closed() -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                done()

        if not open_streams:
            done()
        for stream in open_streams:
            stream.close(flush=True, on_done=one_closed)

    def abort(self) -> None:
        """Close every stream and socket now, dropping what is queued."""
        self.stop_listening()
        for stream in [*self._streams.values(), *self._flushing]:
            stream.close(flush=False)
        self._streams.clear()
        self._flushing.clear()
        if self._rudp is not None:  # last: the rUDP streams' resets leave through it
            self._rudp.close()
            self._rudp = None
        if self._punch_socket is not None:
            self._punch_socket.close()
            self._punch_socket = None

    # -- completions --------------------------------------------------------------------

    def _callbacks(self, conn: ConnId) -> dict[str, Any]:
        driver = self._driver

        def on_closed(err: OSError | None) -> None:
            self._streams.pop(conn, None)
            driver.handle_closed(conn, None if err is None else (err.strerror or str(err)))

        return {"on_data": functools.partial(driver.receive_data, conn),
                "on_sent": functools.partial(driver.handle_sent, conn), "on_closed": on_closed}

    def _on_accept(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        conn = self._driver.handle_accepted(Endpoint(addr[0], addr[1]))
        if conn is None:
            sock.close()
            return
        self._streams[conn] = TcpStream(self._reactor, sock, **self._callbacks(conn))
        self._driver.pump()

    def _on_rudp_accept(self, stream: RudpConnection) -> None:
        host, port = stream.remote_address or ("", 0)
        conn = self._driver.handle_accepted(Endpoint(host, port, "udp"))
        if conn is None:
            return  # left unattached: the socket drops the SYN
        stream.attach(**self._callbacks(conn))
        self._streams[conn] = stream
        self._driver.pump()

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        self._driver.receive_datagram(data, Endpoint(addr[0], addr[1], "udp"))

    def _rudp_socket(self) -> RudpSocket:
        if self._rudp is None:
            cfg = self._config
            self._rudp = RudpSocket(self._reactor, cfg.listen_host, cfg.udp_port, self._on_rudp_accept,
                                    on_other=self._on_datagram,
                                    stream_options={"connect_timeout": cfg.handshake_timeout})
        return self._rudp

