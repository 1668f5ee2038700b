"""Reliable UDP over one socket: many rUDP connections, each with a TCP stream's interface.

:class:`RudpSocket` owns a :class:`~crust.transport.datagram.UdpSocket` (the
plain non-blocking socket, re-exported here) and carries every
:class:`RudpConnection` of a Service on it: it demultiplexes datagrams by
connection id, opens connections only for sources that proved they receive
(stateless cookies), follows a peer whose address changes (path
validation) and remembers closed connections for a while (TIME_WAIT).  The
protocol itself is the sans-IO :mod:`crust.rudp` package; everything here
runs on the reactor thread, so nothing takes a lock.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

from ..rudp import CookieJar, Heard, RudpClosed, RudpConnected, RudpData, RudpSent, RudpStream, TimeWait, peek_ids
from ..rudp.cookie import SECRET_SIZE
from ..rudp.packet import HEADER_SIZE, NONCE_SIZE, pack_cookie, parse_header
from .datagram import UdpSocket
from .reactor import Deadline, Reactor, TimerHandle

__all__ = ["UdpSocket", "RudpSocket", "RudpConnection", "CLOSE_LINGER"]

logger = logging.getLogger("crust.transport")

_RUDP_SOCKET_BUFFER = 4 * 1024 * 1024  # bytes: bursts of a full congestion window must not overflow the kernel
# The largest datagram path MTU discovery may try (crust.rudp.pmtu): loopback and jumbo-frame
# LANs carry it, an Ethernet path settles at 1452.  Larger ones cost more per loss than they save.
MAX_DATAGRAM = 16384  # bytes
# An orderly rUDP close waits for the peer to acknowledge everything, FIN included;
# a peer that vanished never will, so after this the close becomes a reset (as a
# TCP close never waits on the peer, Service.close() must not wait long either).
CLOSE_LINGER = 2.0  # seconds


def _random_id() -> int:
    """A nonzero 32-bit value from the OS CSPRNG: connection ids are what stops off-path spoofing."""
    while True:
        value = int.from_bytes(os.urandom(4), "big")
        if value:
            return value


class RudpConnection:
    """One reliable-UDP stream, with :class:`~crust.transport.tcp.TcpStream`'s interface.

    The owner sees the same ``write`` / ``pause_reading`` / ``resume_reading`` /
    ``close`` methods and the same ``on_data`` / ``on_sent`` / ``on_closed``
    completions, so the service drives TCP and rUDP connections alike.  The
    protocol itself is the sans-IO :class:`~crust.rudp.RudpStream`;
    this object only carries its datagrams, events and one timer.  ``on_sent``
    reports bytes the peer *acknowledged* (the rUDP send buffer is ours, not
    the kernel's, so that is when they stop costing memory).

    It runs its machine in the pattern :mod:`crust.runtime.driver` runs the
    engine in (input, then a pump that carries out every output in order,
    then one :class:`~crust.transport.reactor.Deadline` re-armed for
    ``get_timer()``), with one difference: the pump is queued with
    ``call_soon`` and runs once per reactor turn, so the up to 64 datagrams a
    read brings cost one ack and one ``on_data``.
    """

    __slots__ = (
        "_socket", "_stream", "_remote", "_on_connected", "_on_data", "_on_sent", "_on_closed",
        "_on_done", "_deadline", "_service_scheduled", "_service_cb", "_closing", "_closed",
        "_linger", "_candidate", "_challenged_at",
    )

    def __init__(
        self,
        socket_: RudpSocket,
        stream: RudpStream,
        remote: tuple[str, int],
    ) -> None:
        self._socket = socket_
        self._stream = stream
        self._remote = remote
        self._on_connected: Callable[[RudpConnection], None] | None = None
        self._on_data: Callable[[bytes], None] | None = None
        self._on_sent: Callable[[int], None] | None = None
        self._on_closed: Callable[[OSError | None], None] | None = None
        self._on_done: Callable[[], None] | None = None
        self._deadline = Deadline(socket_.reactor.call_at, self._on_timer)
        self._service_scheduled = False
        self._service_cb = self._service  # bound once: it is queued on every write turn
        self._closing = False
        self._closed = False
        self._linger: TimerHandle | None = None
        self._candidate: tuple[str, int] | None = None  # a new address of the peer's, being challenged
        self._challenged_at = 0.0

    def attach(
        self,
        *,
        on_data: Callable[[bytes], None],
        on_sent: Callable[[int], None],
        on_closed: Callable[[OSError | None], None],
        on_connected: Callable[[RudpConnection], None] | None = None,
    ) -> None:
        """Set the completions, as :class:`~crust.transport.tcp.TcpStream` takes them.

        Args:
            on_data: called with each in-order chunk received.
            on_sent: called with byte counts the peer acknowledged.
            on_closed: called once if the network ends the stream: ``None`` for
                an orderly close by the peer, an OSError saying why otherwise.
                Not called after :meth:`close`.
            on_connected: called once the rUDP handshake is done.
        """
        self._on_data = on_data
        self._on_sent = on_sent
        self._on_closed = on_closed
        self._on_connected = on_connected

    @property
    def attached(self) -> bool:
        """True once :meth:`attach` gave the connection an owner."""
        return self._on_closed is not None

    @property
    def local_address(self) -> tuple[str, int] | None:
        """Our socket's ``(host, port)``."""
        return self._socket.address

    @property
    def remote_address(self) -> tuple[str, int] | None:
        """The peer's ``(host, port)``."""
        return self._remote

    @property
    def closed(self) -> bool:
        """True once closed, or closing after ``close(flush=True)``."""
        return self._closed or self._closing

    @property
    def pending_bytes(self) -> int:
        """Bytes written but not yet acknowledged by the peer."""
        return self._stream.pending_bytes

    def write(self, data: bytes) -> None:
        """Queue ``data``; datagrams leave once per reactor turn.  Ignored once closing or closed."""
        if self._closed or self._closing or not data:
            return
        self._stream.write(data)
        self._schedule_service()

    def pause_reading(self) -> None:
        """Hold back ``on_data``; the peer sees our receive window shrink and stops sending."""
        if not self._closed:
            self._stream.pause_reading()

    def resume_reading(self) -> None:
        """Undo :meth:`pause_reading` and deliver what was held back."""
        if not self._closed:
            self._stream.resume_reading()
            self._schedule_service()

    def close(self, flush: bool = True, on_done: Callable[[], None] | None = None) -> None:
        """Close locally; ``on_closed`` is not called afterwards.  Idempotent.

        Args:
            flush: True delivers what is queued, then closes in order (FIN),
                resetting instead if the peer has not acknowledged it all within
                ``CLOSE_LINGER`` seconds; False resets at once.
            on_done: called once the stream is really closed.
        """
        if on_done is not None:
            if self._closed:
                on_done()
            else:
                self._on_done = on_done
        if self._closed:
            return
        if flush and self._stream.connected:
            if not self._closing:
                self._closing = True
                self._linger = self._socket.reactor.call_later(CLOSE_LINGER, self._give_up_closing)
                self._stream.close(self._socket.reactor.time())
                self._service()
            return
        self._reset()

    def set_path_key(self, key: bytes) -> None:
        """Tag this connection's datagrams with the secure channel's path key (``RudpStream.set_path_key``).

        Ignored once closed.

        Raises:
            TypeError, ValueError: ``key`` is not 32 bytes, or the connection is keyed already.
        """
        if not self._closed:
            self._stream.set_path_key(key)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "closing" if self._closing else (
            "connected" if self._stream.connected else "connecting")
        return f"<RudpConnection {state} {self._socket.address}->{self._remote}>"

    # -- driven by RudpSocket -----------------------------------------------------------

    def _receive(self, datagram: bytes, now: float) -> Heard:
        # Serviced once per reactor turn, not per datagram: the socket reads up to
        # 64 datagrams per event, which then cost one ack and one on_data.
        fresh = self._stream.receive_datagram(datagram, now)
        self._schedule_service()
        return fresh

    def _schedule_service(self) -> None:
        if not self._service_scheduled:
            self._service_scheduled = True
            self._socket.reactor.call_soon(self._service_cb)

    def _on_timer(self) -> None:
        if not self._closed:
            self._stream.handle_timer(self._socket.reactor.time())
            self._service()

    def _service(self) -> None:
        """Send what the machine wants sent, report its events, re-arm its timer."""
        self._service_scheduled = False
        if self._closed:
            return
        stream, sock = self._stream, self._socket
        now = sock.reactor.time()
        for datagram in stream.datagrams_to_send(now):
            sock.sendto(datagram, self._remote)
        received: list[bytes] = []
        for event in stream.take_events():
            if self._closed:
                return
            if isinstance(event, RudpData):
                received.append(event.data)
                continue
            if received:  # in order with the events around them, one call per run of data
                self._deliver(received)
                received = []
                if self._closed:
                    return
            if isinstance(event, RudpSent):
                if not self._closing and self._on_sent is not None:
                    self._on_sent(event.nbytes)
            elif isinstance(event, RudpConnected):
                if self._on_connected is not None:
                    self._on_connected(self)
            elif isinstance(event, RudpClosed):
                closing = self._closing
                self._finish()
                if not closing and self._on_closed is not None:
                    self._on_closed(None if event.error is None else OSError(event.error))
                return
        if received:
            self._deliver(received)
            if self._closed:
                return
        if stream.closed:
            self._finish()
            return
        self._deadline.arm(stream.get_timer())

    def _deliver(self, chunks: list[bytes]) -> None:
        if not self._closing and self._on_data is not None:
            self._on_data(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def _give_up_closing(self) -> None:
        self._linger = None
        if not self._closed:
            self._reset()

    def _reset(self) -> None:
        self._stream.abort(self._socket.reactor.time())
        self._service()  # sends the RST
        self._finish()

    def _finish(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._closing = False
        self._deadline.cancel()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        self._socket._forget(self)
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done()


class RudpSocket:
    """A UDP socket that carries many :class:`RudpConnection` s (PROTOCOL.md §14).

    Theory of operation
    -------------------
    *Demultiplexing.*  Datagrams go to a connection by the id the sender put
    in ``dst`` (ours, random); the stream then checks ``src`` (the peer's), so
    an off-path spoofer must guess 64 bits.  Datagrams that are not rUDP
    (hole-punch probes, strays) go to ``on_other``, or are dropped.

    *Opening, statelessly.*  A SYN for no connection of ours gets a COOKIE
    back (``crust.rudp.cookie``: as long as the SYN, nothing remembered);
    only a SYN carrying a valid cookie for its source -- proof that the
    source receives what we send it -- makes a connection and calls
    ``on_accept(connection)``, which accepts it by calling
    :meth:`~RudpConnection.attach` (left unattached, the SYN is ignored).  A
    SYN from an address we dial with ``simultaneous_open`` joins that dial
    instead (that state is ours, made by our dial), and a resent SYN reaches
    the connection it already opened.

    *Following the peer.*  A datagram for a connection from an address other
    than its peer's is still given to the stream.  If the stream takes it as
    the peer's (both ids right, ack fresh: ``Heard.PEER``), that address is
    the connection's *candidate*: it gets a PATH challenge (a fresh 96-bit
    nonce; at most one per RTO, never larger than the datagram that caused
    it), and only the matching answer *from the candidate* (``Heard.PATH``)
    moves the connection there.  A NAT rebinding therefore costs a round
    trip, not the stream; a blind spoofer cannot start a move (the ids), and
    one on the path cannot move it to an address that does not answer -- a
    victim it would reflect our traffic to -- nor, once the secure channel
    has keyed the connection (:meth:`RudpConnection.set_path_key`), answer
    the challenge itself: the answer must carry a tag under the path key
    (``crust.rudp.auth``; docs/security.md).

    *TIME_WAIT.*  A closed connection is remembered for a while
    (``crust.rudp.timewait``): its late SYNs open nothing, a resent FIN gets
    the last ACK again, other datagrams of a connection that ended otherwise
    get an RST (tagged if the connection was keyed), and its id is not reused.

    Reactor thread only, like :class:`UdpSocket`.
    """

    def __init__(
        self,
        reactor: Reactor,
        host: str,
        port: int,
        on_accept: Callable[[RudpConnection], None],
        *,
        on_other: Callable[[bytes, tuple[str, int]], None] | None = None,
        stream_options: dict[str, float] | None = None,
    ) -> None:
        """Bind and start reading.

        Args:
            reactor: the reactor that runs everything here.
            host, port: where to bind (an IP literal; port 0 = the kernel picks).
            on_accept: called with the connection a new SYN opens (its
                :attr:`~RudpConnection.remote_address` says who sent it); it
                accepts by calling :meth:`~RudpConnection.attach`.
            on_other: gets datagrams that are not rUDP.
            stream_options: keyword arguments for each :class:`RudpStream`
                (``connect_timeout``, ``idle_timeout``, ``keepalive_interval``...);
                ``max_datagram`` defaults to ``MAX_DATAGRAM`` (path MTU discovery).

        Raises:
            ListenerError: the address is not an IP literal or cannot be bound.
        """
        self.reactor = reactor
        self._on_accept = on_accept
        self._on_other = on_other
        self._options: dict[str, float] = {"max_datagram": MAX_DATAGRAM, **(stream_options or {})}
        self._by_id: dict[int, RudpConnection] = {}
        # Dials open to a simultaneous open, for a crossing SYN: remote -> connection.
        self._dialling: dict[tuple[str, int], RudpConnection] = {}
        # Inbound SYNs already answered: (remote, their id) -> connection, so a
        # retransmitted SYN reaches the same stream instead of opening another.
        self._accepted: dict[tuple[tuple[str, int], int], RudpConnection] = {}
        self._cookies = CookieJar(os.urandom(SECRET_SIZE))
        self._time_wait = TimeWait()
        self.dropped = 0  # datagrams for no connection (streams count their own)
        self.cookies_sent = 0  # SYNs answered statelessly
        self.path_challenges = 0  # PATH challenges sent to candidate addresses
        self.migrations = 0  # connections moved to a new peer address
        self._udp = UdpSocket(reactor, host, port, self._on_datagram,
                              recv_size=int(self._options["max_datagram"]) + 1)  # +1: a longer one shows as such
        self._udp.set_buffer_sizes(_RUDP_SOCKET_BUFFER)
        self._udp.set_dont_fragment()  # a probe too large for the path must be lost, not fragmented

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``."""
        return self._udp.address

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._udp.closed

    @property
    def connections(self) -> int:
        """How many connections are open on this socket."""
        return len(self._by_id)

    def sendto(self, data: bytes, addr: tuple[str, int]) -> bool:
        """Send one raw datagram (hole-punch probes share the socket)."""
        return self._udp.sendto(data, addr)

    def connect(
        self,
        remote: tuple[str, int],
        *,
        on_connected: Callable[[RudpConnection], None],
        on_data: Callable[[bytes], None],
        on_sent: Callable[[int], None],
        on_closed: Callable[[OSError | None], None],
        simultaneous_open: bool = False,
    ) -> RudpConnection:
        """Open a connection to ``remote`` (an IP literal and port); ``on_connected`` when it is up.

        A failure (no answer within the connect timeout, reset) is reported
        through ``on_closed``, never raised.

        Args:
            simultaneous_open: a SYN from ``remote`` that crosses ours joins
                this connection (hole punching: both sides dial, one stream
                results).  Without it such a SYN opens a second, inbound
                connection, so two peers dialling each other's listeners get
                two connections, each with one initiator, as over TCP.
        """
        conn = self._new(remote)
        conn.attach(on_data=on_data, on_sent=on_sent, on_closed=on_closed, on_connected=on_connected)
        if simultaneous_open:
            self._dialling[remote] = conn
        conn._stream.connect(self.reactor.time())
        conn._schedule_service()
        return conn

    def close(self) -> None:
        """Reset every connection (without their ``on_closed``) and close the socket.  Idempotent."""
        for conn in list(self._by_id.values()):
            conn.close(flush=False)
        self._udp.close()

    def __repr__(self) -> str:
        return f"<RudpSocket {self.address} connections={len(self._by_id)}>"

    def _new(self, remote: tuple[str, int]) -> RudpConnection:
        now = self.reactor.time()
        local_id = _random_id()
        while local_id in self._by_id or self._time_wait.holds_id(local_id, now):
            local_id = _random_id()
        stream = RudpStream(local_id, _random_id(), now, **self._options)
        conn = RudpConnection(self, stream, remote)
        self._by_id[local_id] = conn
        return conn

    def _forget(self, conn: RudpConnection) -> None:
        stream = conn._stream
        if self._by_id.pop(stream.local_id, None) is conn:
            self._time_wait.add(stream.local_id, conn._remote, stream.remote_id, stream.final_ack(),
                                self.reactor.time(), stream.path_auth)
        self._unindex(conn)

    def _unindex(self, conn: RudpConnection) -> None:
        if self._dialling.get(conn._remote) is conn:
            del self._dialling[conn._remote]
        key = (conn._remote, conn._stream.remote_id)
        if self._accepted.get(key) is conn:
            del self._accepted[key]

    def _from_elsewhere(self, conn: RudpConnection, data: bytes, addr: tuple[str, int], now: float) -> None:
        """A datagram of ``conn`` from another address than its peer's: challenge it, or move there."""
        heard = conn._receive(data, now)
        if heard is Heard.PATH:
            if addr == conn._candidate:
                self._migrate(conn, addr)
        elif heard is Heard.PEER and (addr != conn._candidate or now >= conn._challenged_at + conn._stream.rto):
            conn._candidate, conn._challenged_at = addr, now
            self.path_challenges += 1
            self._udp.sendto(conn._stream.path_challenge(os.urandom(NONCE_SIZE)), addr)

    def _migrate(self, conn: RudpConnection, addr: tuple[str, int]) -> None:
        logger.info("rudp %s: peer of connection %08x moved from %s to %s", self.address, conn._stream.local_id,
                    conn._remote, addr)
        self._unindex(conn)  # a joined dial or answered SYN: its SYNs are over, nothing to route any more
        conn._remote, conn._candidate = addr, None
        self.migrations += 1

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        ids = peek_ids(data)
        if ids is None:
            if self._on_other is not None:
                self._on_other(data, addr)
            return
        dst, src, is_syn = ids
        now = self.reactor.time()
        conn = self._by_id.get(dst) if dst else None
        if conn is not None:
            if conn._remote == addr:
                conn._receive(data, now)
            else:
                self._from_elsewhere(conn, data, addr, now)
            return
        if not is_syn or dst:
            self.dropped += 1
            header = parse_header(data)
            if header is not None and header[7] >= 0:
                reply = self._time_wait.answer(addr, dst, src, header[0], header[4], now, len(data))
                if reply is not None:
                    self._udp.sendto(reply, addr)
            return
        conn = self._accepted.get((addr, src))
        dialled = self._dialling.get(addr)
        # Our simultaneous-open dial's SYN and theirs crossed, or that SYN is
        # resent; a SYN with another id is a second connection between the two
        # sockets (a reachability dial-back), so it is accepted on its own.
        if conn is None and dialled is not None and dialled._stream.remote_id in (0, src):
            conn = dialled
        if conn is None:
            if not self._proven(data, addr, src, now):
                return
            conn = self._new(addr)
            self._on_accept(conn)
            if not conn.attached or self.closed:
                self._by_id.pop(conn._stream.local_id, None)  # refused: no state, no answer
                return
            self._accepted[(addr, src)] = conn
        conn._receive(data, now)

    def _proven(self, syn: bytes, addr: tuple[str, int], src: int, now: float) -> bool:
        """True if this SYN carries a valid cookie; else answer it with one (or drop it) and keep nothing."""
        header = parse_header(syn)
        if header is None or header[7] < 0 or self._time_wait.holds_syn(addr, src, now):
            self.dropped += 1  # malformed, or a late SYN of a connection that is over
            return False
        isn = header[3]
        if self._cookies.check(syn[HEADER_SIZE:], addr, src, isn, now):
            return True
        self.cookies_sent += 1
        self._udp.sendto(pack_cookie(src, isn, self._cookies.make(addr, src, isn, now)), addr)
        return False
