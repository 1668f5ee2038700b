"""Driver: the one pump between the engine and the shell (ARCHITECTURE.md §1.3, §5, §7).

Theory of operation
-------------------
Every sans-IO machine in the shell is run the same way:

1. an input goes in (a completion, a datagram, a user command, its timer),
   with ``now`` read from the loop's clock;
2. *pump*: its outputs are carried out, in the order it queued them;
3. its one timer is re-armed for ``get_timer()`` (a
   :class:`~crust.transport.reactor.Deadline`).

:class:`Driver` does this for the node: the :class:`~crust.engine.Engine`
(streams over TCP and rUDP, datagrams on the rUDP socket, the engine's
timer) and, while LAN discovery runs, the
:class:`~crust.discovery.lan.LanBeacon` beside it, under one timer.  Each
rUDP stream is a machine too, run by its
:class:`~crust.transport.udp.RudpConnection` in this same pattern with the
same ``Deadline``; that one is not folded in here because it lives below
this layer (``transport`` may not import ``runtime``), there is one per
connection, and it is pumped once per reactor turn however many datagrams
arrived: to the driver it is just a stream, as a TCP socket is.

The interpreter contract.  The engine's effects are carried out in
:meth:`Driver.pump`, the only ``match`` over the effect vocabulary
(:mod:`crust.effects`): stream and datagram effects go to a
:class:`Transport`, ``SendCredit`` and the events to two callbacks.
Completions come back through the driver's methods, named as the engine's
inputs without ``now`` (``handle_connected``, ``receive_data``...); each
feeds the engine and pumps.  The real shell's transport is
:class:`~crust.runtime.streams.Streams` on a :class:`~crust.transport.reactor.Reactor`;
``tests/simnet.py`` gives each simulated node a ``Driver`` with its own
``Transport`` and a virtual :class:`Loop`, so the simulator runs this very
code, timers included.

Re-entrancy.  Pumps never nest: an input that arrives while a pump is
carrying out effects (a simulated write reported sent at once, a LAN seek
that ends and starts a bootstrap) is fed to the engine at once, and its
effects are carried out by the running pump right after the current batch,
in order.

Threads.  A driver belongs to the thread that runs its loop (the reactor,
``crust-io``); nothing here takes a lock.
"""

from __future__ import annotations

from typing import Callable, NoReturn, Protocol

from ..discovery.beacon import Reply
from ..discovery.lan import LanBeacon
from ..effects import Close, Dial, KeyPath, SendCredit, SendDatagram, Write
from ..engine import Engine
from ..events import Event
from ..ids import ConnId, Endpoint, PeerId
from ..transport.reactor import Cancellable, Deadline

__all__ = ["BeaconPort", "Driver", "Loop", "Transport"]

Address = tuple[str, int]


class Loop(Protocol):
    """The clock and timers a driver runs on: a :class:`~crust.transport.reactor.Reactor`, or a simulator's."""

    def time(self) -> float:
        """Now, in seconds (monotonic)."""

    def call_at(self, when: float, fn: Callable[[], object]) -> Cancellable:
        """Run ``fn()`` once ``time() >= when``."""


class Transport(Protocol):
    """Carries out the engine's stream and datagram effects; completions go back to the :class:`Driver`."""

    def dial(self, conn: ConnId, endpoint: Endpoint, local_port: int | None) -> None:
        """Open ``conn`` (``Dial``); later ``handle_connected`` or ``handle_closed``, never a raise."""

    def write(self, conn: ConnId, data: bytes) -> None:
        """Queue ``data`` on ``conn`` (``Write``); ``handle_sent`` as it leaves.  Unknown ``conn``: ignored."""

    def close(self, conn: ConnId, flush: bool) -> None:
        """Close ``conn`` (``Close``), after its queued bytes if ``flush``; no completion follows."""

    def send_datagram(self, data: bytes, endpoint: Endpoint) -> None:
        """Send one datagram from the rUDP socket (``SendDatagram``); losing it is fine."""

    def key_path(self, conn: ConnId, key: bytes) -> None:
        """Tag ``conn``'s datagrams with ``key`` (``KeyPath``) if it is an rUDP stream; ignored otherwise."""


class BeaconPort(Protocol):
    """Carries out the LAN beacon's outputs (the LAN discovery sockets)."""

    def send_seek(self, datagram: bytes, addr: Address) -> None:
        """Send one Seek datagram."""

    def seek_done(self, seek_id: int, replies: list[Reply]) -> None:
        """Seek ``seek_id`` ended with these Replies."""


class Driver:
    """Feeds one engine its inputs and carries out its outputs.  One thread (the loop's).

    Args:
        engine: the node.
        loop: its clock and timers.

    :meth:`attach` says where the outputs go, before the first input.
    """

    def __init__(self, engine: Engine, loop: Loop) -> None:
        self.engine = engine
        self._time = loop.time
        self._transport: Transport | None = None
        self._on_events: Callable[[list[Event]], None] = _unattached
        self._on_credit: Callable[[PeerId, tuple[tuple[int, int], ...]], None] = _unattached
        self._beacon: LanBeacon | None = None
        self._beacon_port: BeaconPort | None = None
        self._deadline = Deadline(loop.call_at, self._on_timer, lazy=True)
        self._pumping = False
        self._again = False  # an input arrived during the pump: go round once more
        self._closed = False

    def attach(self, transport: Transport, *, on_events: Callable[[list[Event]], None],
               on_credit: Callable[[PeerId, tuple[tuple[int, int], ...]], None]) -> None:
        """Say where the engine's outputs go.

        Args:
            transport: carries out ``Dial``, ``Write``, ``Close``, ``SendDatagram`` and ``KeyPath``.
            on_events: called after every pump round with the events it took
                (often none): the shell's bookkeeping, then the dispatcher.
            on_credit: ``SendCredit``: bytes of ``peer_id``'s queued messages
                left the send queue, per priority.
        """
        self._transport, self._on_events, self._on_credit = transport, on_events, on_credit

    def attach_beacon(self, beacon: LanBeacon | None, port: BeaconPort | None = None) -> None:
        """Pump ``beacon`` with the engine, its datagrams and ended seeks going to ``port`` (None: detach)."""
        self._beacon, self._beacon_port = (beacon, port) if beacon is not None and port is not None else (None, None)
        self.pump()

    def time(self) -> float:
        """The loop's clock: the ``now`` every input gets."""
        return self._time()

    # -- completions: the engine's inputs, without `now` -----------------------------------

    def handle_accepted(self, remote: Endpoint) -> ConnId | None:
        """An inbound stream from ``remote``: its id, or None to refuse it.

        Does not pump: the transport files the stream under the id first, then calls :meth:`pump`.
        """
        return self.engine.handle_accepted(remote, self._time())

    def handle_connected(self, conn: ConnId, local: Endpoint | None = None) -> None:
        """A ``Dial`` connected, from ``local`` (our end) when the transport knows it."""
        self.engine.handle_connected(conn, self._time(), local)
        self.pump()

    def receive_data(self, conn: ConnId, data: bytes) -> None:
        """Bytes arrived on ``conn``."""
        self.engine.receive_data(conn, data, self._time())
        self.pump()

    def handle_sent(self, conn: ConnId, nbytes: int) -> None:
        """``nbytes`` written on ``conn`` left our hands (reached the kernel; for rUDP, were acknowledged)."""
        self.engine.handle_sent(conn, nbytes, self._time())
        self.pump()

    def handle_closed(self, conn: ConnId, error: str | None) -> None:
        """``conn`` ended by the network: ``error`` says why (None: an orderly close by the peer)."""
        self.engine.handle_closed(conn, error, self._time())
        self.pump()

    def receive_datagram(self, data: bytes, remote: Endpoint) -> None:
        """A datagram on the rUDP socket that is not rUDP (peer STUN, hole-punch probes)."""
        self.engine.receive_datagram(data, remote, self._time())
        self.pump()

    # -- the pump ---------------------------------------------------------------------------

    def pump(self) -> None:
        """Carry out every queued effect and event in order, then re-arm the one timer."""
        if self._pumping:
            self._again = True
            return
        self._pumping = True
        # One body, no helper calls: this runs two or three times per message each way.
        engine, transport = self.engine, self._transport
        try:
            if transport is None:
                _unattached()
            self._again = True
            while self._again:  # a round; an input fed during it (a write reported sent) asks for another
                self._again = False
                for effect in engine.take_effects():
                    if isinstance(effect, Write):  # the hot path first
                        transport.write(effect.conn, effect.data)
                    elif isinstance(effect, SendCredit):
                        self._on_credit(effect.peer_id, effect.released)
                    elif isinstance(effect, Dial):
                        transport.dial(effect.conn, effect.endpoint, effect.local_port)
                    elif isinstance(effect, SendDatagram):
                        transport.send_datagram(effect.data, effect.endpoint)
                    elif isinstance(effect, Close):
                        transport.close(effect.conn, effect.flush)
                    elif isinstance(effect, KeyPath):
                        transport.key_path(effect.conn, effect.key)
                    else:
                        raise TypeError(f"the driver does not know the effect {effect!r}")
                beacon, port = self._beacon, self._beacon_port
                if beacon is not None and port is not None:
                    for datagram, addr in beacon.datagrams_to_send(self._time()):
                        port.send_seek(datagram, addr)
                    while (finished := beacon.next_finished()) is not None:
                        port.seek_done(*finished)
                self._on_events(engine.take_events())
        finally:
            self._pumping = False
        # The timer: the engine's, or the beacon's if sooner.
        if self._closed:
            return
        when = engine.get_timer()
        beacon = self._beacon
        if beacon is not None:
            other = beacon.get_timer()
            if other is not None and (when is None or other < when):
                when = other
        # The deadline is lazy (it only ever moves earlier): arm() would return at once otherwise.
        armed = self._deadline.when
        if when is not None and (armed is None or when < armed):
            self._deadline.arm(when)

    # -- the timer ----------------------------------------------------------------------------

    def _on_timer(self) -> None:
        # The lazy deadline may fire early; only a machine with something due gets handle_timer.
        now = self._time()
        when = self.engine.get_timer()
        if when is not None and when <= now:
            self.engine.handle_timer(now)
        beacon = self._beacon
        if beacon is not None:
            when = beacon.get_timer()
            if when is not None and when <= now:
                beacon.handle_timer(now)
        self.pump()

    def close(self) -> None:
        """Disarm the timer for good and forget the beacon (the engine is closed by its owner)."""
        self._closed = True
        self._deadline.cancel()
        self._beacon = self._beacon_port = None


def _unattached(*args: object) -> NoReturn:
    raise RuntimeError("Driver.attach() the outputs before the first input")
