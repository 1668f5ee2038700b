"""The engine's core: the connection table, the timer heap and the one output sink.

Theory of operation.  Every concern of the engine (peers, bootstrap runs,
admission, rendezvous) works on the same connections and writes to the same
two queues, so they share one :class:`Core`:

* ``conns``: every live connection by id, and ``pending_accepts`` (accepted,
  not yet granted: oldest first, for the caps of PROTOCOL.md §11);
* a lazy timer heap: each connection keeps only its earliest entry valid
  (``Conn.scheduled``), later ones are skipped when they come due;
* ``effects`` and ``events``: what the shell must do and what happened, in
  order; the :class:`~crust.engine.Engine` facade hands them out.

A connection's exchange state moves only through :meth:`Core.move`, one
lookup in ``handshake.states.EXCHANGE``.  When a connection fails, every
concern that may hold it hears so through ``conn_failed`` hooks, in the
order they were registered; none of them needs to know the others.  Every
connection dropped by any path (a failure, a Goodbye, a close) is announced
to the ``conn_forgotten`` hooks: what rides on it (relay circuits) ends too.
"""

from __future__ import annotations

import heapq
import logging
from collections import OrderedDict
from typing import Callable, Protocol

from ..config import Config
from ..crypto.keys import KeyPair
from ..effects import Close, Dial, Effect, Write
from ..events import Event
from ..handshake.secure import SecureHandshake
from ..handshake.states import EXCHANGE, Decision, ExchangeInput, ExchangeState, Role, transition
from ..ids import ConnId, Endpoint, PeerId, name_hash
from ..wire.messages import Message
from .records import NEVER, Conn

__all__ = ["Core", "ConnFailedHook", "CircuitIO"]

log = logging.getLogger("crust")

ConnFailedHook = Callable[[Conn, str, bool], None]  # (conn, reason, was it established)


class CircuitIO(Protocol):
    """Where the bytes of a relayed connection go instead of a socket (:mod:`crust.engine.circuits`)."""

    def write(self, conn: Conn, data: bytes) -> None:
        """Carry ``data`` of ``conn`` over its circuit."""

    def close(self, conn: Conn) -> None:
        """Close ``conn``'s circuit (after the bytes already written)."""

    def unacked(self, conn: Conn) -> int:
        """Bytes ``conn`` wrote that the far end has not acknowledged yet (0 once its circuit ended)."""


class Core:
    """State every engine concern shares.  Owned by the engine, on one thread."""

    def __init__(self, *, static: KeyPair, config: Config) -> None:
        self.id = static.peer_id
        self.static = static
        self.config = config
        self.name_hash = name_hash(config.network_name)
        self.conns: dict[ConnId, Conn] = {}
        self.pending_accepts: OrderedDict[ConnId, Conn] = OrderedDict()  # oldest first
        self.effects: list[Effect] = []
        self.events: list[Event] = []
        self.timers: list[tuple[float, ConnId]] = []
        self.banned_ids: set[PeerId] = set()
        self.banned_ips: set[str] = set()
        self.refused = 0  # connections refused before they became peers (Service.stats())
        self.conn_failed: list[ConnFailedHook] = []
        self.conn_forgotten: list[Callable[[Conn], None]] = []  # every connection dropped, by any path
        self.listeners: tuple[Endpoint, ...] = ()  # where we accept, as we announce it to peers
        self.circuits: CircuitIO | None = None  # carries relayed connections (set by the circuits concern)
        self._next_circuit = 0
        self.now = 0.0  # the latest ``now`` any input brought: for paths that have none of their own
        self._next_conn = 0

    # -- connections ----------------------------------------------------------------

    def new_conn(self, role: Role, remote: Endpoint, now: float) -> Conn:
        """A new connection, due to finish its handshake within ``handshake_timeout``."""
        self._next_conn += 1
        conn = Conn(ConnId(self._next_conn), role, remote, now)
        conn.deadline = now + self.config.handshake_timeout
        self.conns[conn.id] = conn
        self.schedule(conn, conn.deadline)
        return conn

    def dial(self, role: Role, remote: Endpoint, expected: PeerId | None, now: float, *,
             local_port: int | None = None) -> Conn:
        """A new outgoing connection to ``remote`` whose handshake expects ``expected``.

        ``local_port``: dial from our punch port (TCP), see :class:`~crust.effects.Dial`.
        """
        conn = self.new_conn(role, remote, now)
        conn.connected = False  # even as the Noise responder (a punched stream): nothing is written before it is
        self.start_handshake(conn, expected)
        self.effects.append(Dial(conn.id, remote, local_port))
        return conn

    def start_handshake(self, conn: Conn, expected: PeerId | None) -> None:
        """Run the secure handshake on ``conn`` (the initiator checks the responder is ``expected``)."""
        conn.handshake = SecureHandshake(
            initiator=conn.role is Role.INITIATOR, static=self.static, name_hash=self.name_hash,
            max_message_size=self.config.max_message_size, expected_peer=expected,
        )
        if conn.connected:
            self.write_handshake(conn)

    def write_handshake(self, conn: Conn) -> None:
        """Send whatever the handshake has for the peer."""
        assert conn.handshake is not None
        out = conn.handshake.data_to_send()
        if out:
            self.write(conn, out)

    def write(self, conn: Conn, data: bytes) -> None:
        """Hand ``data`` to the shell for ``conn``; it counts as unsent until ``handle_sent``."""
        conn.unsent += len(data)
        if conn.circuit is None:
            self.effects.append(Write(conn.id, data))
        else:
            assert self.circuits is not None
            self.circuits.write(conn, data)

    def send_control(self, conn: Conn, *messages: Message) -> None:
        """Seal ``messages`` into one frame on ``conn`` at once (outside any peer's outbox)."""
        assert conn.channel is not None
        self.write(conn, conn.channel.encode(*messages))

    def new_circuit_number(self, peer_id: PeerId) -> int:
        """A circuit number for a link to ``peer_id`` that the peer never picks.

        Both ends of a link number the circuits they open; the end with the
        greater PeerId takes odd numbers, the other even ones, so the two never
        collide (QUIC's stream-id parity).
        """
        self._next_circuit += 1
        return (self._next_circuit * 2 + (self.id > peer_id)) & 0xFFFFFFFF

    def move(self, conn: Conn, what: ExchangeInput) -> ExchangeState:
        """Take ``conn`` through the exchange table.  Raises LocalProtocolError for a pair it lacks."""
        conn.state = transition(EXCHANGE, (conn.role, conn.state, what))
        return conn.state

    def schedule(self, conn: Conn, when: float) -> None:
        """Check ``conn`` again at ``when`` (or earlier, if already due sooner)."""
        if when < conn.scheduled:
            conn.scheduled = when
            heapq.heappush(self.timers, (when, conn.id))

    def due(self, now: float) -> list[Conn]:
        """The connections whose timer came due by ``now`` (each once)."""
        timers, found = self.timers, []
        while timers and timers[0][0] <= now:
            when, conn_id = heapq.heappop(timers)
            conn = self.conns.get(conn_id)
            if conn is not None and conn.scheduled == when:
                conn.scheduled = NEVER
                found.append(conn)
        return found

    def next_timer(self) -> float:
        """When the earliest connection timer is due (``NEVER`` if none)."""
        return self.timers[0][0] if self.timers else NEVER

    def close(self, conn: Conn, *, flush: bool) -> None:
        """Forget ``conn`` and tell the shell to close it (after its queued writes when ``flush``)."""
        if not self.forget(conn):
            return
        if conn.circuit is None:
            self.effects.append(Close(conn.id, flush))
        else:
            assert self.circuits is not None
            self.circuits.close(conn)

    def forget(self, conn: Conn) -> bool:
        """Drop every reference to ``conn``; False if it was already gone."""
        if self.conns.pop(conn.id, None) is None:
            return False
        self.pending_accepts.pop(conn.id, None)
        if conn.state is not ExchangeState.CLOSED:
            self.move(conn, Decision.FAIL)
        for hook in self.conn_forgotten:
            hook(conn)
        return True

    def fail_conn(self, conn: Conn, reason: str, *, close: bool = True) -> None:
        """``conn`` is finished for ``reason``: every concern that holds it hears so."""
        established = conn.state is ExchangeState.ESTABLISHED
        if close:
            self.close(conn, flush=True)
        else:
            self.forget(conn)  # the stream is already gone: nothing to tell the shell
        for hook in self.conn_failed:
            hook(conn, reason, established)
        if not established:
            log.debug("connection %s to %s failed: %s", conn.id, conn.remote, reason)

    def evict_pending(self, host: str) -> None:
        """Make room for one more accepted connection from ``host``."""
        # PROTOCOL.md §11: at a cap, drop the *oldest* pending handshake, so a flood of
        # idle connections cannot lock honest peers out.
        cfg = self.config
        same_ip = [c for c in self.pending_accepts.values() if c.remote.host == host]
        if len(same_ip) >= cfg.max_pending_handshakes_per_ip:
            self.fail_conn(same_ip[0], "pending handshakes from this IP over the cap")
        if len(self.pending_accepts) >= cfg.max_pending_handshakes:
            self.fail_conn(next(iter(self.pending_accepts.values())), "pending handshakes over the cap")

    def may_connect(self, host: str) -> bool:
        """Whether ``host`` passes the node whitelist (``whitelisted_node_ips``; unset lets everyone in).

        ``connect()`` links are symmetric, peer to peer, so both directions are judged as a Node's.
        """
        whitelist = self.config.whitelisted_node_ips
        return whitelist is None or host in whitelist

    def is_banned(self, peer_id: PeerId | None, remote: Endpoint | None) -> bool:
        """Whether ``peer_id`` or the IP of ``remote`` was banned."""
        return (peer_id in self.banned_ids) or (remote is not None and remote.host in self.banned_ips)
