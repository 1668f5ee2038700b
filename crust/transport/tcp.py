"""A non-blocking TCP stream driven by the :class:`~crust.transport.reactor.Reactor`.

``TcpStream`` moves bytes over one connection (its listener is
:class:`~crust.transport.tcp_listener.TcpListener`).  It knows nothing about
crust's protocol: bytes in, bytes out, plus three completions (``on_data``,
``on_sent``, ``on_closed``).  Everything here runs on the reactor thread, so
nothing in this module takes a lock.

Theory of operation
-------------------
*Writing.*  The first ``write()`` of a reactor turn to an idle stream sends
at once, inside the call (the short path for a lone message, issue 15: no
queued flush, no second pump for its completion): ``on_sent`` may run
before ``write()`` returns.  Every later write of the same turn only appends
to a deque and, the first time, queues one flush with ``call_soon``, so a
burst still leaves in one ``sendmsg()`` of up to ``_MAX_IOV`` buffers.  A
partial send means the kernel's send buffer is full: the rest waits for
``EVENT_WRITE``.  ``on_sent(n)`` reports each send syscall's byte count, which
is how the layer above learns that its bytes reached the kernel.  A send
error is reported through ``on_closed`` from the "soon" phase, never from
inside ``write()``.

*Reading.*  On ``EVENT_READ`` the stream reads up to ``_RECV_SIZE`` bytes, up
to ``_MAX_READS_PER_EVENT`` times while reads come back full, so one busy
connection cannot starve the others.  ``b""`` is EOF.

*Closing.*  The stream reaches ``closed`` once, by one of two doors:
the owner's ``close()`` (never followed by ``on_closed``) or the network
(EOF, error, connect failure or timeout: ``on_closed(err)`` exactly once).
The socket is always unregistered from the reactor before its fd is closed.

*Re-entrancy.*  Callbacks may call ``write()``, ``close()``, ``pause_reading()``
on this or any stream.  Every loop re-checks ``_closed`` / ``_read_paused``
after each callback, and ``_on_event`` ignores events that were already
selected for a stream closed earlier in the same turn.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
from collections import deque
from itertools import islice
from typing import Callable

from ..errors import ListenerError
from .reactor import Reactor, TimerHandle
from .sockets import bind_socket, host_port, resolve

__all__ = ["TcpStream"]

logger = logging.getLogger("crust.transport")

_RECV_SIZE = 256 * 1024  # bytes per recv(): large reads amortise Python's per-call cost
_MAX_READS_PER_EVENT = 4  # recvs per readiness event, for fairness between streams
_MAX_IOV = 512  # buffers per sendmsg(); Linux IOV_MAX is 1024
CLOSE_FLUSH_TIMEOUT = 5.0  # seconds close(flush=True) keeps trying to send queued bytes

_EVENT_READ = selectors.EVENT_READ
_EVENT_WRITE = selectors.EVENT_WRITE
_CONNECT_IN_PROGRESS = frozenset({0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN})

# _flush_state values
_IDLE = 0  # nothing queued, or not connected yet
_SCHEDULED = 1  # a flush is queued with call_soon, or running now (or a failure is queued)
_WAITING = 2  # the kernel buffer is full: waiting for EVENT_WRITE


class TcpStream:
    """One TCP connection: a write queue with completions, and a read pump.

    All methods are for the reactor thread.  See the module docstring for the
    write, read and close paths.
    """

    __slots__ = (
        "_reactor", "_sock", "_on_data", "_on_sent", "_on_closed", "_on_connected",
        "_on_event_cb", "_flush_cb", "_buffers", "_pending", "_events", "_flush_state",
        "_connected", "_closing", "_closed", "_read_paused", "_connect_timer",
        "_close_timer", "_early_error", "_local", "_remote", "_on_done", "_turn",
    )

    _reactor: Reactor
    _sock: socket.socket
    _on_data: Callable[[bytes], None]
    _on_sent: Callable[[int], None]
    _on_closed: Callable[[OSError | None], None]
    _on_connected: Callable[[TcpStream], None] | None
    _on_event_cb: Callable[[int], None]
    _flush_cb: Callable[[], None]
    _buffers: deque[bytes | memoryview]
    _pending: int
    _events: int
    _flush_state: int
    _connected: bool
    _closing: bool
    _closed: bool
    _read_paused: bool
    _connect_timer: TimerHandle | None
    _close_timer: TimerHandle | None
    _early_error: OSError | None
    _local: tuple[str, int] | None
    _remote: tuple[str, int] | None
    _on_done: Callable[[], None] | None
    _turn: int

    def __init__(
        self,
        reactor: Reactor,
        sock: socket.socket,
        *,
        on_data: Callable[[bytes], None],
        on_sent: Callable[[int], None],
        on_closed: Callable[[OSError | None], None],
    ) -> None:
        """Wrap an already connected (e.g. accepted) socket and start reading at once.

        Args:
            reactor: the reactor that runs the callbacks.
            sock: a connected TCP socket; the stream owns and closes it.
            on_data: called with each chunk received.
            on_sent: called with the byte count of each send that reached the kernel.
            on_closed: called once if the network ends the stream: ``None`` on EOF,
                the OSError otherwise.  Not called after :meth:`close`.
        """
        self._init(reactor, on_data, on_sent, on_closed)
        self._sock = sock
        sock.setblocking(False)
        self._connected = True
        try:
            self._local = host_port(sock.getsockname())
            self._remote = host_port(sock.getpeername())
        except OSError:
            pass  # reset before we got here; the first recv reports it
        self._update_events()

    def _init(
        self,
        reactor: Reactor,
        on_data: Callable[[bytes], None],
        on_sent: Callable[[int], None],
        on_closed: Callable[[OSError | None], None],
    ) -> None:
        self._reactor = reactor
        self._on_data = on_data
        self._on_sent = on_sent
        self._on_closed = on_closed
        self._on_connected = None
        # Bound once: the reactor and call_soon would otherwise get a new
        # bound-method object on every registration and flush.
        self._on_event_cb = self._on_event
        self._flush_cb = self._flush
        # Reactor-thread only, like everything here: no lock.
        self._buffers = deque()
        self._pending = 0
        self._events = 0  # what the reactor currently watches for us
        self._flush_state = _IDLE
        self._connected = False
        self._closing = False  # close(flush=True) is sending the last bytes
        self._closed = False
        self._read_paused = False
        self._connect_timer = None
        self._close_timer = None
        self._early_error = None
        self._local = None
        self._remote = None
        self._on_done = None
        self._turn = -1  # the reactor turn of the last write that went out at once

    @classmethod
    def connect(
        cls,
        reactor: Reactor,
        host: str,
        port: int,
        *,
        on_connected: Callable[[TcpStream], None],
        on_data: Callable[[bytes], None],
        on_sent: Callable[[int], None],
        on_closed: Callable[[OSError | None], None],
        timeout: float | None = None,
        local_address: tuple[str, int] | None = None,
        reuse_port: bool = False,
    ) -> TcpStream:
        """Start a non-blocking connect to ``host:port``.  Reactor thread only.

        Exactly one of ``on_connected(stream)`` or ``on_closed(err)`` follows,
        never before this method returns (unless the stream is closed first).
        Writes made before the connection is up are sent once it is.

        Args:
            reactor: the reactor that runs the callbacks.
            host: an IP literal (a hostname fails with ``socket.gaierror``;
                resolve it first, off the reactor thread).
            port: the TCP port.
            on_connected: called when the connection is established.
            on_data: as for ``TcpStream()``.
            on_sent: as for ``TcpStream()``.
            on_closed: as for ``TcpStream()``; also gets the connect failure
                (e.g. ``ConnectionRefusedError``) or ``TimeoutError``.
            timeout: seconds to wait for the connection; None waits for the kernel.
            local_address: ``(IP literal, port)`` to bind before connecting; a
                failure to bind reaches ``on_closed`` as its OSError.
            reuse_port: with ``local_address``, share that port with other
                sockets that set it too, such as a ``TcpListener(...,
                reuse_port=True)`` (``SO_REUSEPORT``; see
                :mod:`crust.transport.sockets`).

        Returns:
            The stream, not yet connected.
        """
        self = cls.__new__(cls)
        self._init(reactor, on_data, on_sent, on_closed)
        self._on_connected = on_connected
        try:
            family, sockaddr = resolve(host, port, socket.SOCK_STREAM, passive=False)
            if local_address is None:
                sock = socket.socket(family, socket.SOCK_STREAM)
            else:
                sock = bind_socket("tcp", *local_address, reuse_port=reuse_port)
        except (OSError, ListenerError) as err:
            # No socket exists: _closed keeps every method away from self._sock.
            # A local_address that cannot be bound fails like any connect: with its OSError.
            cause = err.__cause__ if isinstance(err, ListenerError) else err
            self._fail_early(cause if isinstance(cause, OSError) else OSError(str(err)))
            return self
        self._sock = sock
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            code = sock.connect_ex(sockaddr)
            if code not in _CONNECT_IN_PROGRESS:
                raise OSError(code, os.strerror(code))
        except OSError as err:
            sock.close()
            self._fail_early(err)
            return self
        try:
            # The kernel picked our port during connect(): known before the peer answers.
            self._local = host_port(sock.getsockname())
        except OSError:
            pass
        # Writable means the connect finished, one way or the other (SO_ERROR says which).
        self._update_events()
        if timeout is not None:
            self._connect_timer = reactor.call_later(timeout, self._on_connect_timeout)
        return self

    # -- public API ---------------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        """Bytes written but not yet accepted by the kernel."""
        return self._pending

    @property
    def local_address(self) -> tuple[str, int] | None:
        """Our ``(host, port)``; None only if ``connect()`` failed before it had a socket."""
        return self._local

    @property
    def remote_address(self) -> tuple[str, int] | None:
        """The peer's ``(host, port)``; None until a connect completes."""
        return self._remote

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called or ``on_closed`` fired."""
        return self._closed or self._closing

    def write(self, data: bytes) -> None:
        """Send ``data``: at once if it is the stream's first write this turn, else with the turn's flush.

        ``data`` must not be mutated afterwards (it is sent without a copy).
        Writes to a closed or closing stream are ignored: its owner closed it,
        or has been told through ``on_closed``.
        """
        if self._closed or self._closing or not data:
            return
        self._buffers.append(data)
        self._pending += len(data)
        if self._flush_state == _IDLE and self._connected:
            reactor = self._reactor
            if self._turn != reactor.turn:  # the first write of this turn: out at once
                self._turn = reactor.turn
                self._flush(direct=True)
            else:  # later ones wait for one flush at the end of the turn, together
                self._flush_state = _SCHEDULED
                reactor.call_soon(self._flush_cb)

    def pause_reading(self) -> None:
        """Stop reading (and calling ``on_data``) until :meth:`resume_reading`; writes go on."""
        if not self._closed and not self._read_paused:
            self._read_paused = True
            self._update_events()

    def resume_reading(self) -> None:
        """Undo :meth:`pause_reading`."""
        if not self._closed and self._read_paused:
            self._read_paused = False
            self._update_events()

    def close(self, flush: bool = True, on_done: Callable[[], None] | None = None) -> None:
        """Close the stream locally; ``on_closed`` is not called afterwards.  Idempotent.

        Args:
            flush: True stops reading, sends what is queued (giving up after
                ``CLOSE_FLUSH_TIMEOUT`` seconds), then sends FIN and closes.
                False closes at once, dropping queued bytes; it also cuts short
                an earlier ``close(flush=True)``.
            on_done: called once the socket is really closed (at once if it
                already is), so an owner shutting down can wait for the flush.
        """
        if on_done is not None:
            if self._closed:
                on_done()
            else:
                self._on_done = on_done
        if self._closed:
            self._early_error = None  # a connect failure not yet reported stays unreported
            return
        if not flush:
            self._close_now()
            return
        if self._closing:
            return
        self._closing = True
        if not self._buffers:
            if self._connected:
                self._finish_close()
            else:
                self._close_now()  # nothing to say: no reason to finish connecting
            return
        self._close_timer = self._reactor.call_later(CLOSE_FLUSH_TIMEOUT, self._give_up_flush)
        self._update_events()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "closing" if self._closing else (
            "connected" if self._connected else "connecting")
        return f"<TcpStream {state} {self._local}->{self._remote} pending={self._pending}>"

    # -- event handling -----------------------------------------------------------------

    def _on_event(self, mask: int) -> None:
        if self._closed:
            return  # selected in this turn before something closed us
        if mask & _EVENT_WRITE:
            if not self._connected:
                self._finish_connect()
                return
            if self._flush_state == _WAITING:
                self._flush()
                if self._closed:
                    return
        if mask & _EVENT_READ and not self._read_paused and not self._closing:
            self._read()

    def _read(self) -> None:
        recv = self._sock.recv
        for _ in range(_MAX_READS_PER_EVENT):
            try:
                data = recv(_RECV_SIZE)
            except BlockingIOError:
                return
            except OSError as err:
                self._fail(err)
                return
            if not data:
                self._fail(None)  # EOF
                return
            self._on_data(data)
            # on_data may have closed or paused us; a short read means the queue is empty.
            if self._closed or self._read_paused or self._closing or len(data) < _RECV_SIZE:
                return

    def _flush(self, direct: bool = False) -> None:
        """Send what is queued; ``direct``: called by ``write()``, so a failure is reported later."""
        if self._closed:
            return
        # Writes made by on_sent below only append: this loop picks them up.
        self._flush_state = _SCHEDULED
        buffers = self._buffers
        sock = self._sock
        while buffers:
            try:
                if len(buffers) == 1:
                    offered = 1
                    sent = sock.send(buffers[0])
                else:
                    batch = list(islice(buffers, _MAX_IOV))
                    offered = len(batch)
                    sent = sock.sendmsg(batch)
            except BlockingIOError:
                self._wait_writable()
                return
            except OSError as err:
                if direct:  # not from inside write(): its caller may be mid-way through its own state
                    self._reactor.call_soon(self._fail, err)
                else:
                    self._fail(err)
                return
            self._pending -= sent
            complete = self._consume(sent, offered)
            self._on_sent(sent)
            if self._closed:
                return
            if not complete:
                # The kernel took less than offered: its buffer is full, and
                # another send now would only fail with EAGAIN.
                self._wait_writable()
                return
        self._flush_state = _IDLE
        if self._closing:
            self._finish_close()
        elif self._events & _EVENT_WRITE:
            self._update_events()

    def _consume(self, sent: int, offered: int) -> bool:
        """Drop ``sent`` bytes from the queue's head; True if all ``offered`` buffers went."""
        buffers = self._buffers
        done = 0
        while sent:
            head = buffers[0]
            size = len(head)
            if size <= sent:
                buffers.popleft()
                sent -= size
                done += 1
            else:
                # Keep the unsent tail without copying it.
                buffers[0] = memoryview(head)[sent:]
                return False
        return done == offered

    def _wait_writable(self) -> None:
        self._flush_state = _WAITING
        self._update_events()

    def _finish_connect(self) -> None:
        code = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            # OSError(errno, ...) builds the matching subclass (ConnectionRefusedError...).
            self._fail(OSError(code, os.strerror(code)))
            return
        try:
            self._local = host_port(self._sock.getsockname())
            self._remote = host_port(self._sock.getpeername())
        except OSError as err:
            self._fail(err)
            return
        if self._connect_timer is not None:
            self._connect_timer.cancel()
            self._connect_timer = None
        self._connected = True
        if self._buffers:
            self._flush_state = _SCHEDULED
            self._reactor.call_soon(self._flush_cb)
        self._update_events()
        if not self._closing and self._on_connected is not None:
            self._on_connected(self)

    def _on_connect_timeout(self) -> None:
        self._connect_timer = None
        if not self._connected:
            self._fail(TimeoutError(errno.ETIMEDOUT, "TCP connect timed out"))

    def _give_up_flush(self) -> None:
        self._close_timer = None
        logger.warning("closing the connection to %s: the peer took none of the last %d bytes in %.1f s, "
                       "so they were dropped", _where(self._remote), self._pending, CLOSE_FLUSH_TIMEOUT)
        self._close_now()

    # -- registration and teardown ------------------------------------------------------

    def _update_events(self) -> None:
        if self._closed:
            return
        if not self._connected:
            events = _EVENT_WRITE
        else:
            events = 0 if self._read_paused or self._closing else _EVENT_READ
            if self._flush_state == _WAITING:
                events |= _EVENT_WRITE
        current = self._events
        if events == current:
            return
        if current == 0:
            self._reactor.register(self._sock, events, self._on_event_cb)
        elif events == 0:
            self._reactor.unregister(self._sock)
        else:
            self._reactor.modify(self._sock, events, self._on_event_cb)
        self._events = events

    def _fail(self, err: OSError | None) -> None:
        """The network ended the stream: close, and tell the owner unless it closed first."""
        if self._closed:
            return
        notify = not self._closing
        self._close_now()
        if notify:
            self._on_closed(err)

    def _fail_early(self, err: OSError) -> None:
        # Reported on the next "soon" phase, so the caller of connect() gets its
        # stream object before it hears that the stream failed.
        self._closed = True
        self._early_error = err
        self._reactor.call_soon(self._report_early_error)

    def _report_early_error(self) -> None:
        err = self._early_error
        if err is not None:
            self._early_error = None
            self._on_closed(err)

    def _finish_close(self) -> None:
        sock = self._sock
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the peer is already gone: nothing left to deliver
        # Linux answers close() with RST instead of FIN when unread bytes sit in
        # the receive queue (tcp_close: "data_was_unread"), and that RST throws
        # away what we just queued.  Discard what has arrived; bounded, since a
        # peer that keeps sending gets its RST anyway.
        try:
            for _ in range(_MAX_READS_PER_EVENT):
                if len(sock.recv(_RECV_SIZE)) < _RECV_SIZE:
                    break
        except OSError:
            pass
        self._close_now()

    def _close_now(self) -> None:
        self._closed = True
        self._closing = False
        for timer in (self._connect_timer, self._close_timer):
            if timer is not None:
                timer.cancel()
        self._connect_timer = self._close_timer = None
        self._buffers.clear()
        self._pending = 0
        # Unregister before close: a closed fd number can be reused at once by
        # a new socket, which must not inherit our registration.
        if self._events:
            self._reactor.unregister(self._sock)
            self._events = 0
        self._sock.close()
        on_done, self._on_done = self._on_done, None
        if on_done is not None:
            on_done()


def _where(remote: object) -> str:
    """``host:port`` of a socket address for a log line (an IPv6 host in brackets)."""
    if isinstance(remote, tuple) and len(remote) >= 2:
        host, port = remote[0], remote[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return "a peer not connected yet"
