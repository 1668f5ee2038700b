"""Circuits: our end of connections relayed through a mutual peer (PROTOCOL.md §15.5).

Theory of operation.  When no direct or punched candidate of a ``connect()``
comes through, the two peers meet through a *relay*: a peer both are connected
to that offered to relay for them (``RelayOffer``).  One end sends the relay
``RelayConnect(circuit, target)``; the relay tells the target
``RelayIncoming(circuit', source)`` and from then on forwards ``RelayData``
between the two numbered circuits, opaque.

Each end runs an ordinary connection over its circuit: a :class:`Conn` whose
:attr:`~crust.engine.records.Conn.circuit` is set and that has no socket.
:class:`~crust.engine.core.Core` hands its writes and its close to this module
(:class:`~crust.engine.core.CircuitIO`) instead of the shell, and this module
feeds what arrives on the circuit back into the engine as if a socket had read
it.  So the two ends run their own secure handshake end to end, expecting each
other's PeerId, and everything above it (the connect exchange, heartbeats,
priorities, back-pressure, ``on_lost``) is the same as on any connection.  The
relay sees PeerIds, circuit numbers and sizes, never plaintext, and cannot
alter a byte without the far end's channel refusing it.

Flow control is end to end: an end keeps at most ``RELAY_WINDOW`` bytes sent
and not acknowledged; the far end acknowledges (``RelayAck``) what its engine
took, batched once per engine turn (:meth:`Circuits.flush_acks`), and not at
all while the application is behind (the connection's reading is paused), so
a slow reader slows the sender instead of filling the relay.  A connection
counts its bytes as *sent* when they are acknowledged, so its outbox waits
behind the window like any other connection's behind the socket.
"""

from __future__ import annotations

import logging
from typing import Callable

from ..channel import MAX_FRAME_PLAINTEXT
from ..errors import RemoteProtocolError
from ..handshake.states import Role
from ..ids import ConnId, PeerId
from ..wire.messages import (
    RelayAck, RelayClose, RelayCloseReason, RelayConnect, RelayData, RelayIncoming, encode_relay_data,
)
from .core import Core
from .peers import Peers
from .records import NEVER, Circuit, Conn

__all__ = ["Circuits", "RELAY_WINDOW", "RELAY_CHUNK", "CLOSE_REASONS"]

log = logging.getLogger("crust")

RELAY_WINDOW = 512 * 1024  # bytes an end may have sent on a circuit and not had acknowledged
RELAY_CHUNK = 32 * 1024  # bytes per RelayData: two fit one frame of the link to the relay

CLOSE_REASONS = {
    RelayCloseReason.CLOSED: "the relayed peer closed the circuit",
    RelayCloseReason.NOT_RELAYING: "the relay does not relay (relay is off, or it is not reachable)",
    RelayCloseReason.NO_SUCH_PEER: "the relay is not connected to that peer",
    RelayCloseReason.TOO_MANY_CIRCUITS: "the relay is at its circuit limit (relay_max_circuits)",
    RelayCloseReason.FLOOD: "the circuit broke its flow-control window",
    RelayCloseReason.REFUSED: "the peer refused the relayed connection",
    RelayCloseReason.LOST: "the relay lost its connection to the peer",
}

Feed = Callable[[ConnId, bytes, float], None]
Sent = Callable[[ConnId, int, float], None]


class Circuits:
    """Every relayed connection we are an end of, by (link to the relay, circuit number)."""

    def __init__(self, core: Core, peers: Peers, *, feed: Feed, sent: Sent) -> None:
        """``feed(conn, data, now)``: bytes arrived on ``conn``; ``sent(conn, nbytes, now)``: bytes acknowledged."""
        self._core = core
        self._peers = peers
        self._feed = feed
        self._sent = sent
        self._ends: dict[tuple[ConnId, int], Conn] = {}
        self._closing: dict[tuple[ConnId, int], tuple[Conn, float]] = {}  # closed ends still sending their tail
        self.acks_due: dict[ConnId, Conn] = {}  # circuit data taken, to acknowledge (the engine tests it per turn)
        core.circuits = self
        core.conn_forgotten.append(self._on_forgotten)

    # -- queries ------------------------------------------------------------------------

    def owns(self, carrier: Conn, number: int) -> bool:
        """Whether circuit ``number`` on ``carrier`` is one we are an end of."""
        key = (carrier.id, number)
        return key in self._ends or key in self._closing

    def relays(self) -> list[PeerId]:
        """The connected peers that offered to relay for us (over a direct connection)."""
        return [peer.id for peer in self._peers.table.values() if self.usable(peer.id)]

    def usable(self, relay: PeerId) -> bool:
        """Whether ``relay`` offered to relay for us and is connected directly (not itself relayed)."""
        peer = self._peers.table.get(relay)
        return peer is not None and peer.relays_for_us and peer.conn is not None and peer.conn.circuit is None

    def next_timer(self) -> float:
        """When the oldest closing circuit gives up on its tail (``NEVER`` if none)."""
        return min(until for _, until in self._closing.values()) if self._closing else NEVER

    # -- opening --------------------------------------------------------------------------

    def dial(self, relay: PeerId, target: PeerId, now: float) -> Conn | None:
        """Open a circuit to ``target`` through ``relay`` and start our secure handshake over it."""
        core = self._core
        if not self.usable(relay):
            return None
        carrier = self._peers.table[relay].conn
        assert carrier is not None
        number = core.new_circuit_number(relay)
        conn = core.new_conn(Role.INITIATOR, carrier.remote, now)
        conn.via = "relay"
        conn.circuit = Circuit(carrier, number, relay, target)
        self._ends[(carrier.id, number)] = conn
        core.send_control(carrier, RelayConnect(number, target))
        core.start_handshake(conn, expected=target)
        conn.connected = True
        core.write_handshake(conn)
        return conn

    def on_incoming(self, carrier: Conn, incoming: RelayIncoming, now: float) -> None:
        """A relay opened a circuit to us from ``incoming.source``: accept it as a responder."""
        core = self._core
        key = (carrier.id, incoming.circuit)
        relay = carrier.peer_id
        assert relay is not None
        if (key in self._ends or key in self._closing or carrier.circuit is not None
                or incoming.source in (core.id, relay) or core.is_banned(incoming.source, None)):
            core.send_control(carrier, RelayClose(incoming.circuit, RelayCloseReason.REFUSED))
            return
        core.evict_pending(carrier.remote.host)
        conn = core.new_conn(Role.RESPONDER, carrier.remote, now)
        conn.via = "relay"
        conn.circuit = Circuit(carrier, incoming.circuit, relay, incoming.source)
        self._ends[key] = conn
        core.pending_accepts[conn.id] = conn
        core.start_handshake(conn, expected=None)

    # -- data -------------------------------------------------------------------------------

    def on_data(self, carrier: Conn, data: RelayData, now: float) -> None:
        """Bytes of one of our circuits: into its connection, to be acknowledged at the end of the turn."""
        conn = self._ends.get((carrier.id, data.circuit))
        if conn is None:
            return  # a circuit we closed: its last bytes are moot
        circuit = conn.circuit
        assert circuit is not None
        circuit.to_ack += len(data.chunk)
        self.acks_due[conn.id] = conn
        self._feed(conn.id, data.chunk, now)

    def on_ack(self, carrier: Conn, ack: RelayAck, now: float) -> None:
        """The far end took ``ack.nbytes``: the window opens and the connection counts them sent."""
        key = (carrier.id, ack.circuit)
        conn = self._ends.get(key)
        if conn is None:
            closing = self._closing.get(key)
            if closing is None:
                return
            conn = closing[0]
        circuit = conn.circuit
        assert circuit is not None
        if not 0 < ack.nbytes <= circuit.in_flight:
            raise RemoteProtocolError(f"RelayAck of {ack.nbytes} bytes on circuit {ack.circuit} "
                                      f"with {circuit.in_flight} in flight")
        circuit.in_flight -= ack.nbytes
        self._pump(conn)
        if key in self._ends:
            self._sent(conn.id, ack.nbytes, now)
        elif not circuit.queue and not circuit.in_flight:
            self._finish_close(key, conn)
        self._settle(conn)

    def on_close(self, carrier: Conn, close: RelayClose) -> None:
        """The relay ended (or refused) one of our circuits."""
        key = (carrier.id, close.circuit)
        self._closing.pop(key, None)
        closing = self._closing.pop(key, None)
        conn = self._ends.pop(key, None)
        if conn is not None:
            self.acks_due.pop(conn.id, None)
            self._core.fail_conn(conn, f"relay closed the circuit: {CLOSE_REASONS[close.reason]}", close=False)
        for ended in (conn, closing[0] if closing else None):
            if ended is not None:
                self._settle(ended)

    def flush_acks(self) -> None:
        """Acknowledge what each circuit's connection took this turn (not while its reading is paused)."""
        if not self.acks_due:
            return
        pending, self.acks_due = self.acks_due, {}
        by_carrier: dict[ConnId, tuple[Conn, list[RelayAck]]] = {}
        for conn in pending.values():
            circuit = conn.circuit
            assert circuit is not None
            if conn.paused:
                self.acks_due[conn.id] = conn  # resumed later: reading_paused puts it back
                continue
            if circuit.to_ack and conn.id in self._core.conns:
                by_carrier.setdefault(circuit.carrier.id, (circuit.carrier, []))[1].append(
                    RelayAck(circuit.number, circuit.to_ack))
            circuit.to_ack = 0
        for carrier, acks in by_carrier.values():
            if carrier.id in self._core.conns:
                self._core.send_control(carrier, *acks)

    def resumed(self, conn: Conn) -> None:
        """``conn``'s reading resumed: what it took meanwhile may be acknowledged now."""
        if conn.circuit is not None and conn.circuit.to_ack:
            self.acks_due[conn.id] = conn

    # -- CircuitIO: what Core hands us instead of the shell -----------------------------------

    def write(self, conn: Conn, data: bytes) -> None:
        """Carry ``data`` of ``conn``: sent on as its window allows."""
        circuit = conn.circuit
        assert circuit is not None
        if len(data) <= RELAY_CHUNK:  # a small frame goes as it is, with no copy
            circuit.queue.append(data)
        else:  # slices of one view: the record's encoding copies each once anyway
            view = memoryview(data)
            circuit.queue.extend(view[start:start + RELAY_CHUNK] for start in range(0, len(data), RELAY_CHUNK))
        circuit.queued += len(data)
        self._pump(conn)

    def close(self, conn: Conn) -> None:
        """``conn`` is closed: its circuit ends once what it wrote is sent (bounded by the handshake timeout)."""
        circuit = conn.circuit
        assert circuit is not None
        key = (circuit.carrier.id, circuit.number)
        self.acks_due.pop(conn.id, None)
        if self._ends.pop(key, None) is None:
            return
        carrier = circuit.carrier
        if circuit.to_ack and carrier.id in self._core.conns:  # what we took, before we go
            self._core.send_control(carrier, RelayAck(circuit.number, circuit.to_ack))
            circuit.to_ack = 0
        if circuit.queue or circuit.in_flight:
            self._closing[key] = (conn, self._core.now + self._core.config.handshake_timeout)
        else:
            self._finish_close(key, conn)

    def handle_timer(self, now: float) -> None:
        """Give up on closing circuits whose tail was not taken in time."""
        for key, (conn, until) in list(self._closing.items()):
            if until <= now:
                self._finish_close(key, conn)
                self._settle(conn)

    def unacked(self, conn: Conn) -> int:
        """Bytes ``conn`` wrote that the far end has not acknowledged yet (0 once its circuit ended)."""
        circuit = conn.circuit
        if circuit is None:
            return 0
        key = (circuit.carrier.id, circuit.number)
        return circuit.queued + circuit.in_flight if key in self._ends or key in self._closing else 0

    # -- inside ---------------------------------------------------------------------------------

    def _pump(self, conn: Conn) -> None:
        """Send queued bytes of ``conn``'s circuit while its window has room."""
        core = self._core
        circuit = conn.circuit
        assert circuit is not None
        carrier = circuit.carrier
        if carrier.id not in core.conns or carrier.channel is None:
            return
        queue = circuit.queue
        while queue and circuit.in_flight < RELAY_WINDOW:
            records: list[bytes | memoryview] = []
            size = 0
            while queue and circuit.in_flight < RELAY_WINDOW and (not records or size + len(queue[0]) + 9 <= MAX_FRAME_PLAINTEXT):
                chunk = queue.popleft()
                circuit.queued -= len(chunk)
                circuit.in_flight += len(chunk)
                size += len(chunk) + 9
                records.append(encode_relay_data(circuit.number, chunk))
            core.write(carrier, carrier.channel.seal(records))

    def _settle(self, conn: Conn) -> None:
        """If ``conn``'s peer moved off it and waits for its tail, and the tail is acknowledged: go on."""
        circuit = conn.circuit
        assert circuit is not None
        peer = self._peers.table.get(circuit.peer)
        if peer is not None and peer.draining is conn:
            self._peers.drained(peer)

    def _finish_close(self, key: tuple[ConnId, int], conn: Conn) -> None:
        self._closing.pop(key, None)
        circuit = conn.circuit
        assert circuit is not None
        carrier = circuit.carrier
        if carrier.id in self._core.conns and carrier.channel is not None:
            self._core.send_control(carrier, RelayClose(circuit.number, RelayCloseReason.CLOSED))

    def _on_forgotten(self, conn: Conn) -> None:
        if conn.circuit is not None:
            return  # one of ours: Core.close hands it to close(), the relay's RelayClose to on_close()
        for key in [key for key in (*self._ends, *self._closing) if key[0] == conn.id]:
            closing = self._closing.pop(key, None)
            end = self._ends.pop(key, None)
            if end is not None:
                self.acks_due.pop(end.id, None)
                self._core.fail_conn(end, "the connection to the relay was lost", close=False)
            for ended in (end, closing[0] if closing else None):
                if ended is not None:
                    self._settle(ended)
