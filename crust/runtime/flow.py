"""Flow control across the thread boundary: send gates one way, the receive backlog the other.

Theory of operation
-------------------
*Sending.*  The engine's outbox lives on the reactor thread; user threads
must not touch it.  So each peer gets a :class:`SendGate` holding, per
priority, the bytes that ``send()`` admitted and the engine has not yet
released into frames (``SendCredit``).  A sender waits only on its own
priority's count, which is why a full queue of bulk data never blocks a
priority-0 ``send()``.  Droppable priorities wait only while twice the
limit is in flight: the outbox keeps at most one limit (dropping the oldest
to make room, which gives the bytes back), so the other limit bounds what
``send()`` may pile up before the I/O thread has even seen it.

Admitted messages cross to the reactor through the reactor's
:class:`~crust.transport.reactor.Inbox` for sends: the first ``send()`` of a
burst posts one drain on the reactor's call queue (one wakeup, if the loop
sleeps), the others only append ``(peer, priority, payload)``.  The drain
feeds every message present to ``Engine.send``, with one clock reading,
then pumps once, so the burst's messages share frames; a lone message is a
burst of one, sealed and handed to its stream in the same reactor turn
(the stream writes it at once when it has nothing queued).

*Receiving.*  :class:`~crust.engine.backpressure.ReceiveBacklog` (reactor)
decides when to stop reading a peer whose messages wait for the
dispatcher and when to read again;
:class:`~crust.engine.backpressure.DeliveryTally` (the delivering thread)
hands delivered bytes back in batches, through the reactor's call queue.

Who owns what (:class:`Flow`):

* ``_gates``: written on the reactor (:meth:`Flow.opened` / :meth:`Flow.lost`),
  read by any thread (a dict lookup is atomic under the GIL); each gate
  guards its counts with its own Condition, shared by the senders that wait
  on it and the reactor that releases credit;
* ``_sends``: any thread puts, only the reactor drains (the inbox's own protocol);
* ``_backlog``: the reactor thread only;
* ``_tally``: the delivering thread only (``crust-dispatch``, or the caller
  of ``run_callbacks`` in manual mode); only its finished reports cross.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from ..config import MESSAGE_OVERHEAD
from ..engine.backpressure import DeliveryTally, ReceiveBacklog, message_costs
from ..errors import PeerLostError, PeerNotFound, SendTimeout, ServiceClosed
from ..events import Event
from ..ids import PeerId
from ..outbox import DROP_PRIORITY
from ..transport.reactor import Inbox, Reactor
from .driver import Driver
from .streams import Streams

__all__ = ["Flow", "SendGate"]


class Flow:
    """The send gates and the receive backlog of one Service (see the module docstring for threads).

    Args:
        reactor: whose call queue carries admitted messages and delivery reports.
        driver: the engine's driver (reactor thread).
        streams: where reading a peer is paused and resumed.
        send_queue_limit: bytes per peer and priority ``send()`` may queue.
        receive_backlog_limit: bytes of a peer's messages waiting for callbacks before reading pauses.
    """

    def __init__(self, reactor: Reactor, driver: Driver, streams: Streams, *, send_queue_limit: int,
                 receive_backlog_limit: int) -> None:
        self._reactor = reactor
        self._driver = driver
        self._streams = streams
        # The one crossing of admitted messages (module docstring); put is bound once: it runs per message.
        self._sends: Inbox[tuple[PeerId, int, bytes]] = Inbox(reactor.call_soon_threadsafe, self._drain_sends)
        self._put = self._sends.put
        self._send_limit = send_queue_limit
        self._gates: dict[PeerId, SendGate] = {}
        self._backlog = ReceiveBacklog(receive_backlog_limit)
        self._tally = DeliveryTally(self._backlog.report_every)

    # -- any thread ----------------------------------------------------------------------

    def send(self, peer_id: PeerId, priority: int, payload: bytes, timeout: float | None) -> None:
        """Wait at ``peer_id``'s gate while ``priority``'s queue is full, then hand the message to the reactor.

        Raises:
            PeerNotFound: not connected to ``peer_id``.
            SendTimeout / PeerLostError / ServiceClosed: see :meth:`SendGate.admit`.
        """
        gate = self._gates.get(peer_id)
        if gate is None:
            raise PeerNotFound(f"not connected to {peer_id!r}")
        gate.admit(priority, len(payload), timeout)
        self._put((peer_id, priority, payload))

    def is_connected(self, peer_id: PeerId) -> bool:
        """True while ``peer_id`` has a gate (from ``PeerConnected`` to ``PeerLost``)."""
        return peer_id in self._gates

    def close(self) -> None:
        """The service is closing: every waiting and later ``send()`` raises ServiceClosed."""
        for gate in list(self._gates.values()):
            gate.close(ServiceClosed)

    # -- the delivering thread -------------------------------------------------------------

    def delivered(self, events: list[Event]) -> None:
        """The dispatcher delivered ``events``: count their messages; a due report goes to the reactor, the backlog's owner."""
        for peer_id, nbytes in message_costs(events)[0].items():
            report = self._tally.delivered(peer_id, nbytes)
            if report is not None:
                try:
                    self._reactor.call_soon_threadsafe(self._on_delivery_report, report)
                except ServiceClosed:
                    pass

    # -- the reactor thread --------------------------------------------------------------

    def _drain_sends(self, sends: deque[tuple[PeerId, int, bytes]], count: int) -> None:
        """The reactor's half of ``send()``: queue ``count`` admitted messages, then pump once."""
        if not count:
            return  # a second drain posted by a racing put: the first one took its message
        driver = self._driver
        engine_send, popleft, now = driver.engine.send, sends.popleft, driver.time()
        for _ in range(count):
            peer_id, priority, payload = popleft()
            try:
                engine_send(peer_id, priority, payload, now)
            except PeerNotFound:
                pass  # lost meanwhile; on_lost tells the user
        driver.pump()

    def credit(self, peer_id: PeerId, released: tuple[tuple[int, int], ...]) -> None:
        """``SendCredit``: the engine moved these bytes into frames (or dropped them)."""
        gate = self._gates.get(peer_id)
        if gate is not None:
            gate.release(released)

    def opened(self, peer_id: PeerId) -> None:
        """``peer_id`` connected: a fresh gate and backlog."""
        self._gates[peer_id] = SendGate(peer_id, self._send_limit)
        self._backlog.track(peer_id)

    def lost(self, peer_id: PeerId) -> None:
        """``peer_id`` is gone: its blocked senders raise PeerLostError."""
        gate = self._gates.pop(peer_id, None)
        if gate is not None:
            gate.close()
        self._backlog.forget(peer_id)

    def received(self, added: dict[PeerId, int]) -> None:
        """These bytes of messages per peer go to the dispatcher: pause reading a peer whose backlog is full."""
        backlog, driver = self._backlog, self._driver
        for peer_id, nbytes in added.items():
            if backlog.posted(peer_id, nbytes):
                conn = driver.engine.conn_of(peer_id)
                if conn is not None and (self._streams.pause_reading(conn) or driver.engine.is_relayed(conn)):
                    driver.engine.reading_paused(conn, True, driver.time())
                    backlog.paused(peer_id, conn)

    def _on_delivery_report(self, report: dict[PeerId, int]) -> None:
        driver = self._driver
        for peer_id, nbytes in report.items():
            conn = self._backlog.delivered(peer_id, nbytes)
            if conn is not None and (self._streams.resume_reading(conn) or driver.engine.is_relayed(conn)):
                driver.engine.reading_paused(conn, False, driver.time())


class SendGate:
    """Admission control for one peer's outbound queue.  Thread-safe.

    Args:
        peer_id: whose queue it guards (named in errors).
        limit: bytes per priority before ``admit()`` waits (twice that for droppable priorities).
    """

    __slots__ = ("peer_id", "_limit", "_limits", "_queued", "_lock", "_cond", "_closed_by", "_waiting")

    def __init__(self, peer_id: PeerId, limit: int) -> None:
        self.peer_id = peer_id
        self._limit = limit
        # Per priority (0..255), the count at which admit() waits: one tuple index on the hot path.
        self._limits = (limit,) * DROP_PRIORITY + (2 * limit,) * (256 - DROP_PRIORITY)
        self._queued: dict[int, int] = {}
        # Guards _queued and _closed_by: senders (any user thread: several may add at once, so
        # a bare counter would lose updates) and the reactor (releases credit, closes).  Senders
        # wait on _cond; paths that never wait take _lock itself, the condition's lock: the same
        # exclusion without Condition's Python-level __enter__.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._closed_by: type[Exception] | None = None
        # Senders inside _cond.wait (under _lock): release() skips Condition.notify_all's
        # Python-level work when there is nobody to wake, which is nearly always.
        self._waiting = 0

    def admit(self, priority: int, nbytes: int, timeout: float | None) -> None:
        """Block until ``priority``'s queue is under the limit, then count a message of ``nbytes`` in.

        It counts ``nbytes + MESSAGE_OVERHEAD``, what the outbox releases for it, so a
        flood of empty messages blocks ``send()`` as a flood of big ones does.

        A message larger than the limit is admitted once the queue is empty
        below it, so any message up to ``max_message_size`` can be sent.

        Args:
            priority: 0..255.
            nbytes: the message's payload bytes.
            timeout: seconds to wait at most; None waits as long as it takes.

        Raises:
            SendTimeout: still full after ``timeout`` seconds.
            PeerLostError: the peer went away while we waited.
            ServiceClosed: the service closed while we waited.
        """
        # The fast path (the queue has room, nobody closed the gate): the plain lock, taken with
        # acquire()/release() (half the cost of a `with`; try/finally is free until it raises),
        # no clock, no Condition.
        lock = self._lock
        lock.acquire()
        try:
            queued = self._queued.get(priority, 0)
            if queued < self._limits[priority] and self._closed_by is None:
                self._queued[priority] = queued + nbytes + MESSAGE_OVERHEAD
                return
        finally:
            lock.release()
        self._admit_waiting(priority, nbytes + MESSAGE_OVERHEAD, timeout)

    def _admit_waiting(self, priority: int, nbytes: int, timeout: float | None) -> None:
        """admit()'s slow path: wait on the condition until the queue has room (or the gate closes)."""
        limit = self._limits[priority]
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                self._raise_if_closed()
                queued = self._queued.get(priority, 0)
                if queued < limit:
                    self._queued[priority] = queued + nbytes
                    return
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise SendTimeout(
                        f"send queue to {self.peer_id!r} at priority {priority} stayed full "
                        f"({queued} bytes queued) for {timeout} s"
                    )
                self._waiting += 1
                try:
                    self._cond.wait(remaining)
                finally:
                    self._waiting -= 1

    def release(self, released: tuple[tuple[int, int], ...]) -> None:
        """The engine moved these ``(priority, bytes)`` into frames: wake waiting senders."""
        with self._lock:
            wake = False
            for priority, nbytes in released:
                # max(): a message restarted on a new connection is released twice.
                queued = self._queued[priority] = max(0, self._queued.get(priority, 0) - nbytes)
                # Hysteresis: waking a blocked sender for every 64 KiB frame costs a
                # thread switch per frame; wake it once half the queue has drained.
                wake = wake or queued <= self._limit // 2
            if wake and self._waiting:
                self._cond.notify_all()

    def close(self, error: type[Exception] = PeerLostError) -> None:
        """The peer is gone (or the service closed): every waiting sender raises ``error``."""
        with self._cond:
            self._closed_by = error
            self._cond.notify_all()

    def _raise_if_closed(self) -> None:
        if self._closed_by is ServiceClosed:
            raise ServiceClosed("the service is closed")
        if self._closed_by is not None:
            raise PeerLostError(f"lost {self.peer_id!r} while sending to it")
