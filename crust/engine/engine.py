"""Engine: the whole node as one sans-IO state machine (ARCHITECTURE.md §1.3).

Theory of operation.  Three kinds of input drive the engine, as in
aioquic's ``QuicConnection``:

* user commands: :meth:`start_bootstrap`, :meth:`start_connect`, :meth:`send`,
  :meth:`disconnect`, :meth:`ban`, :meth:`close`;
* I/O completions from the shell: :meth:`handle_accepted`,
  :meth:`handle_connected`, :meth:`receive_data`, :meth:`handle_sent`,
  :meth:`handle_closed`, :meth:`reading_paused`;
* the clock: :meth:`handle_timer` whenever :meth:`get_timer` comes due.

Every call may queue effects (:meth:`take_effects`: Dial, Write, Close,
SendCredit) and events (:meth:`take_events`).  Nothing here touches a
socket, a thread or the clock; ``now`` is always a parameter.

This class is the front door and the router; the protocol lives in one
module per concern, all sharing one :class:`~crust.engine.core.Core`
(connection table, timer heap, output sink):

* ``peers``: the duplicate rule, parking, liveness, flushing outboxes;
* ``admission``: bootstrap requests made to us, reachability dial-back;
* ``runs``: our bootstrap runs;
* ``rendezvous``: ``connect()`` through swapped connection info;
* ``external``: our external addresses (peers' echoes of where they see us);
* ``circuits`` and ``relay``: connections relayed through a mutual peer, as
  an end and as the relay (``relay_routing`` says which a record is for).

The timer.  :meth:`get_timer` runs after every pump, so it keeps the
earliest timer of every concern but the connection heap (``_cold_timer``)
and asks them again only after an input that may have moved one: every
input and command but the data path (:meth:`send`, a ``Data`` record in
:meth:`receive_data`, :meth:`handle_sent` with no relay leg waiting, and
:meth:`take_effects`, which only seals and writes), which leaves those
timers as they were.  The heap's top is read afresh each time, and a kept
time already past (an observer's check is "the next one after now") is
asked again.

A connection runs the secure handshake, then the exchange
(``handshake.states.EXCHANGE``, through which every state change goes):
the initiator says why it came, the responder grants, denies or answers.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import random
from collections.abc import Collection
from typing import Iterable, Sequence

from ..config import Config
from ..connection_info import PrivConnectionInfo
from ..crypto.keys import KeyPair
from ..effects import Effect, KeyPath
from ..errors import HandshakeError, LocalProtocolError, OversizeMessage, RemoteProtocolError
from ..events import Event, MessageReceived, Misbehaved, Origin, PeerInfo, RelayStats
from ..nat import probe
from ..nat.observe import NatInfo
from ..handshake.states import Decision, ExchangeState, Role
from ..ids import ConnId, Contact, CrustUser, Endpoint, PeerId
from ..wire.messages import (
    MAX_LISTENERS, BootstrapDenied, BootstrapGranted, BootstrapRequest, ChooseConnection, ConnectRequest, Data,
    EchoAddrReq, EchoAddrResp, Goodbye, GoodbyeReason, Heartbeat, Message, PeerExchangeRequest, PeerExchangeResponse,
)
from .admission import Admission
from .circuits import Circuits
from .core import Core
from .external import ExternalAddresses
from .mesh import Mesh
from .limits import limit_pre_grant
from .peers import Peers
from .punch import Punching
from .records import NEVER, Conn
from .relay import Relaying
from .relay_routing import RELAY_MESSAGES, RelayRouter
from .rendezvous import Rendezvous
from .upgrade import Upgrades
from .runs import Runs

__all__ = ["Engine"]

_OVER_A_CIRCUIT = (ConnectRequest, ChooseConnection, Goodbye)  # what a relayed connection may carry before it is a peer

log = logging.getLogger("crust")


class Engine:
    """A crust node without I/O.  See the module docstring for the contract."""

    def __init__(self, *, static: KeyPair, config: Config, rng: random.Random | None = None) -> None:
        core = self._core = Core(static=static, config=config)
        self.id = core.id
        # Order matters: conn_failed hooks run in registration order (peers first).
        self._peers = Peers(core, rng or random.Random())
        self._admission = Admission(core, self._peers)
        self._runs = Runs(core, self._peers)
        self._punching = Punching(core)
        self._circuits = Circuits(core, self._peers, feed=self.receive_data, sent=self.handle_sent)
        self._relaying = Relaying(core, self._peers)
        self._rendezvous = Rendezvous(core, self._peers, self._punching, self._circuits)
        self._upgrades = Upgrades(core, self._peers, self._rendezvous, info=self.connection_info)
        self._external = ExternalAddresses(core, self._peers)
        self._external.changed.append(self._upgrades.network_changed)
        self._mesh = Mesh(core, self._peers, self._runs)
        self._relay_router = RelayRouter(self._circuits, self._relaying, self._peers, self._upgrades)
        self._cold_timer: float | None = None  # the concerns' earliest timer, heap aside; None: ask them (get_timer)
        self.closed = False

    # -- outputs ------------------------------------------------------------

    def take_effects(self) -> list[Effect]:
        """Everything the shell must do now, in order (flushes queued messages into frames first)."""
        core, peers, circuits = self._core, self._peers, self._circuits
        # Tested here, not in the callees: this runs every pump round, and most rounds have neither.
        if peers.dirty:
            peers.flush_dirty()
        if circuits.acks_due:
            circuits.flush_acks()
        effects, core.effects = core.effects, []
        return effects

    def take_events(self) -> list[Event]:
        """Everything that happened since the last call, in order."""
        core = self._core
        events, core.events = core.events, []
        return events

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called, if ever."""
        core = self._core
        cold = self._cold_timer
        if cold is None or cold <= core.now:  # see "The timer" in the module docstring
            cold = self._cold_timer = min(
                self._runs.next_timer(), self._rendezvous.next_timer(), self._peers.next_timer(),
                self._external.next_timer(core.now), self._punching.next_timer(), self._mesh.next_timer(),
                self._circuits.next_timer(), self._relaying.next_timer(), self._upgrades.next_timer())
        timers = core.timers
        soonest = timers[0][0] if timers and timers[0][0] < cold else cold
        return None if soonest == NEVER else soonest

    def _moved(self, now: float) -> None:
        """An input that may move any concern's timer: ``now`` is the clock, and get_timer asks them all again."""
        self._core.now = now
        self._cold_timer = None

    # -- queries --------------------------------------------------------------

    @property
    def accept_bootstrap(self) -> bool:
        """Whether peers may bootstrap off us."""
        return self._admission.accepting

    @accept_bootstrap.setter
    def accept_bootstrap(self, accept: bool) -> None:
        self._admission.accepting = accept  # admission keeps no timer

    def is_connected(self, peer_id: PeerId) -> bool:
        """True while ``peer_id`` is a connected peer."""
        return peer_id in self._peers.table

    def peer_ids(self) -> list[PeerId]:
        """Every connected peer."""
        return list(self._peers.table)

    def peer_info(self, peer_id: PeerId) -> PeerInfo:
        """A snapshot of one peer.  Raises PeerNotFound."""
        return self._peers.info(peer_id)

    def conn_of(self, peer_id: PeerId) -> ConnId | None:
        """The connection currently carrying ``peer_id``, if any."""
        peer = self._peers.table.get(peer_id)
        return peer.conn.id if peer is not None and peer.conn is not None else None

    def is_relayed(self, conn_id: ConnId) -> bool:
        """Whether ``conn_id`` runs over a relay circuit (no socket: the engine pauses its reading itself)."""
        conn = self._core.conns.get(conn_id)
        return conn is not None and conn.circuit is not None

    def queued_bytes(self, peer_id: PeerId, priority: int) -> int:
        """What the unsent messages for ``peer_id`` at ``priority`` count for (bytes plus ``MESSAGE_OVERHEAD`` each)."""
        return self._peers.get(peer_id).outbox.queued_bytes(priority)

    def relays(self) -> list[PeerId]:
        """Connected peers that offered to relay for us: what our connection info names."""
        return self._circuits.relays()

    def connection_info(self, token: bytes, now: float) -> PrivConnectionInfo:
        """Our connection info with ``token``: every candidate we know of and our relays."""
        self._cold_timer = None  # the observer may prune its votes
        return self._external.connection_info(token, self.relays(), now)

    def relay_stats(self) -> RelayStats:
        """What we relayed for others (counts and sizes)."""
        return self._relaying.stats.snapshot()

    def nat_info(self, now: float) -> NatInfo:
        """What peers told us of our external endpoints and NAT (see :mod:`crust.nat.observe`)."""
        self._cold_timer = None  # the observer may prune its votes
        return self._external.nat_info(now)

    def listeners(self, now: float) -> list[Endpoint]:
        """Where we accept, local and external, TCP first: what we announce to peers."""
        self._cold_timer = None  # the observer may prune its votes
        return self._external.announced(self._core.listeners, now)

    def set_mapped(self, endpoints: Sequence[Endpoint], now: float) -> None:
        """External endpoints a router maps to our listeners (UPnP)."""
        self._moved(now)
        self._external.mapped = tuple(endpoints)
        self._external.check_announced(now)

    def connection_count(self) -> int:
        """Live connections of every kind (handshaking, candidates, peers, retiring duplicates)."""
        return len(self._core.conns)

    def refused(self) -> int:
        """Connections refused before they became peers (denied bootstraps, refused candidates, failed handshakes)."""
        return self._core.refused

    def pending_handshakes(self) -> int:
        """Accepted connections not granted yet (the ones the caps of PROTOCOL.md §11 count)."""
        return len(self._core.pending_accepts)

    # -- user commands ------------------------------------------------------

    def set_listeners(self, endpoints: Sequence[Endpoint]) -> None:
        """The endpoints we accept on, announced in our BootstrapRequests."""
        self._cold_timer = None
        self._core.listeners = tuple(endpoints)
        self._external.check_announced(self._core.now)
        self._relaying.offer()

    def set_sockets(self, *, tcp_port: int | None, udp_port: int | None, local_ips: Sequence[str],
                    now: float) -> None:
        """Our TCP punch port, our rUDP socket's port and our interface addresses (a changed set forgets every vote).

        With a socket to observe, the engine starts asking peers where they see it.
        """
        external = self._external
        self._moved(now)
        if tuple(local_ips) != external.local_ips and external.local_ips:
            external.observer.reset()  # a new network: old observations mean nothing
        external.tcp_port, external.udp_port, external.local_ips = tcp_port, udp_port, tuple(local_ips)
        self._punching.tcp_port, self._punching.udp_ready = tcp_port, udp_port is not None
        external.refresh(now)

    def start_bootstrap(self, contacts: Sequence[Contact], *, blacklist: Iterable[Endpoint | str] = (),
                        user: CrustUser = CrustUser.NODE, timeout: float | None = None, now: float) -> int:
        """Start a bootstrap run over ``contacts`` (IP literals only); returns its id.

        The run ends with one ``BootstrapFinished`` event: the first granted
        peer, or ``None`` and each contact's failure.
        """
        self._moved(now)
        self._mesh.bootstrapped(user, now)
        return self._runs.start(contacts, blacklist=blacklist, user=user, timeout=timeout, now=now)

    def start_connect(self, peer_id: PeerId, endpoints: Sequence[Endpoint], *, tcp_punch: Sequence[Endpoint] = (),
                      udp_punch: Sequence[Endpoint] = (), their_token: bytes, our_token: bytes, timeout: float,
                      their_relays: Sequence[PeerId] = (), our_relays: Sequence[PeerId] = (), now: float) -> None:
        """Connect to ``peer_id``, who does the same with our info (PROTOCOL.md §7).

        Every listener endpoint is dialled at once, and we punch towards the
        punch endpoints (TCP simultaneous open, UDP hole punching); the
        peer's dials to us count too.  If none came through after a grace
        period, we open circuits through the relays both infos name
        (``their_relays``, ``our_relays``).  Ends with one ``ConnectFinished``
        event (at once if already connected).
        """
        self._moved(now)
        self._rendezvous.start(peer_id, endpoints, tcp_punch=tcp_punch, udp_punch=udp_punch,
                               their_token=their_token, our_token=our_token, timeout=timeout,
                               their_relays=their_relays, our_relays=our_relays, now=now)

    def stop_bootstrap(self, now: float) -> None:
        """Abandon every bootstrap run (each reports ``BootstrapFinished`` with no peer)."""
        self._moved(now)
        self._runs.stop()

    def send(self, peer_id: PeerId, priority: int, data: bytes, now: float) -> None:
        """Queue ``data`` for ``peer_id``; the frame is built at the next :meth:`take_effects`.

        Raises:
            PeerNotFound: not connected to ``peer_id``.
        """
        self._core.now = now  # the data path: no concern's timer moves (module docstring)
        self._peers.send(peer_id, priority, data, now)

    def disconnect(self, peer_id: PeerId, now: float) -> bool:
        """Say Goodbye to ``peer_id`` and drop it (``PeerLost`` is reported here too)."""
        self._moved(now)
        if peer_id not in self._peers.table:
            return False
        self._peers.lose(peer_id, "disconnected", GoodbyeReason.CLOSED)
        return True

    def ban(self, peer_ids: Iterable[PeerId], ips: Iterable[str], now: float) -> None:
        """Refuse these peers and IPs for the rest of the session; drop the connected ones."""
        core = self._core
        self._moved(now)
        core.banned_ids.update(peer_ids)
        core.banned_ips.update(str(ipaddress.ip_address(ip)) for ip in ips)
        for peer in list(self._peers.table.values()):
            if core.is_banned(peer.id, peer.conn.remote if peer.conn else None):
                self._peers.lose(peer.id, "banned", GoodbyeReason.BANNED)

    def update_whitelists(self, node_ips: Collection[str] | None, client_ips: Collection[str] | None,
                          now: float) -> None:
        """New whitelists (a re-read config file): drop every peer whose IP no longer passes.

        Every peer is judged, whatever its origin: a Client that bootstrapped off
        us by the client list; a Node (one that bootstrapped off us, one we
        bootstrapped off, a ``connect()`` peer) by the node list, which also
        judges our own bootstrap dials and connect candidates.  A relayed peer is
        judged by its relay's IP, the only one we see.
        """
        core = self._core
        self._moved(now)
        core.config = dataclasses.replace(core.config, whitelisted_node_ips=node_ips,
                                          whitelisted_client_ips=client_ips)
        for peer in list(self._peers.table.values()):
            whitelist = client_ips if peer.user is CrustUser.CLIENT else node_ips
            if peer.conn is not None and whitelist is not None and peer.conn.remote.host not in whitelist:
                self._peers.lose(peer.id, "no longer whitelisted", GoodbyeReason.NOT_WHITELISTED)

    def close(self, now: float) -> None:
        """Say Goodbye to every peer and close every connection.  No events follow."""
        core = self._core
        self._moved(now)
        self.closed = True
        for peer in list(self._peers.table.values()):
            if peer.conn is not None:
                self._peers.say_goodbye(peer.conn, GoodbyeReason.CLOSED)
        for conn in list(core.conns.values()):
            core.close(conn, flush=True)
        self._peers.table.clear()
        self._runs.clear()
        core.events.clear()

    # -- I/O completions ----------------------------------------------------

    def handle_accepted(self, remote: Endpoint, now: float) -> ConnId | None:
        """A stream from ``remote`` was accepted; returns its id, or None to close it at once."""
        core = self._core
        self._moved(now)
        if self.closed or remote.host in core.banned_ips:
            return None
        core.evict_pending(remote.host)
        conn = core.new_conn(Role.RESPONDER, remote, now)
        core.pending_accepts[conn.id] = conn
        core.start_handshake(conn, expected=None)
        return conn.id

    def handle_connected(self, conn_id: ConnId, now: float, local: Endpoint | None = None) -> None:
        """A dial we asked for (``Dial``) connected (from ``local``, our end, when the shell knows it)."""
        conn = self._input(conn_id, now)
        if conn is None:
            return
        core = self._core
        conn.connected = True
        conn.local = local
        conn.last_rx = now
        core.write_handshake(conn)

    def receive_data(self, conn_id: ConnId, data: bytes, now: float) -> None:
        """Bytes arrived on ``conn_id``."""
        core = self._core
        core.now = now  # the data path; what else a record brings marks the timers moved (_on_message)
        conn = core.conns.get(conn_id)
        if conn is None:
            return
        conn.last_rx = now
        conn.bytes_in += len(data)
        try:
            if conn.channel is None:
                self._cold_timer = None  # the handshake, and the exchange it starts
                assert conn.handshake is not None
                conn.handshake.receive_data(data)
                core.write_handshake(conn)
                if not conn.handshake.complete:
                    return
                data = conn.handshake.trailing_data
                self._on_secured(conn)
                if conn.id not in core.conns or not data:
                    return
            channel = conn.channel
            assert channel is not None
            channel.feed(data)
            # One frame at a time: what a frame's messages decide (a grant raises the
            # link's limits, a flood closes it) holds from the very next frame on.
            while (batch := channel.next_batch()) is not None:
                for message in batch:
                    if type(message) is Data and conn.state is ExchangeState.ESTABLISHED:  # the hot path, inline
                        core.events.append(MessageReceived(conn.peer_id, message.chunk))  # type: ignore[arg-type]
                        continue
                    self._on_message(conn, message, now)
                    if conn.id not in core.conns:
                        return  # that message closed it: the rest of the batch and the stream are moot
        except RemoteProtocolError as exc:
            self._remote_error(conn, exc)
        except LocalProtocolError as exc:  # a table miss the peer's input caused (h11's re-label)
            self._remote_error(conn, RemoteProtocolError(f"unexpected message: {exc}"))

    def handle_sent(self, conn_id: ConnId, nbytes: int, now: float) -> None:
        """``nbytes`` written on ``conn_id`` reached the kernel."""
        core = self._core
        core.now = now  # the data path, unless a relay leg waited for this room
        conn = core.conns.get(conn_id)
        if conn is None:
            return
        conn.unsent -= nbytes
        conn.bytes_out += nbytes
        self._peers.sent(conn)
        if self._relaying.waiting:  # circuits we relay wait for room: draining them moves the relay's timer
            self._relaying.sent(conn, now)
            self._cold_timer = None

    def handle_closed(self, conn_id: ConnId, error: str | None, now: float) -> None:
        """The stream ended: closed by the peer, reset, or a dial failed (``error`` says how)."""
        conn = self._input(conn_id, now)
        if conn is None:
            return
        core = self._core
        reason = f"connection lost: {error}" if error else "connection closed by peer"
        if not conn.connected:  # a dial of ours (accepted streams start connected)
            reason = f"connect failed: {error or 'closed'}"
        core.fail_conn(conn, reason, close=False)

    def receive_datagram(self, data: bytes, remote: Endpoint, now: float) -> None:
        """A datagram on our rUDP socket that is not rUDP (peer STUN, hole-punch probes)."""
        self._moved(now)
        try:
            message = probe.decode(data)
        except RemoteProtocolError:
            return  # strays and scanners: dropped
        if isinstance(message, probe.PunchProbe):
            self._punching.receive_probe(message, remote, now)
        else:
            self._external.receive_datagram(message, remote, now)

    def reading_paused(self, conn_id: ConnId, paused: bool, now: float) -> None:
        """The shell stopped (or resumed) reading ``conn_id``: silence then is ours, not the peer's."""
        conn = self._input(conn_id, now)
        if conn is not None:
            conn.paused = paused
            conn.last_rx = now
            if not paused:
                self._circuits.resumed(conn)

    def handle_timer(self, now: float) -> None:
        """Run everything that came due by ``now``."""
        core = self._core
        self._moved(now)
        for conn in core.due(now):
            if conn.id in core.conns:  # an earlier one in this batch may have closed it
                self._check_conn(conn, now)
        self._runs.handle_timer(now)
        self._rendezvous.handle_timer(now)
        self._peers.expire_parked(now)
        self._external.refresh(now)
        self._punching.handle_timer(now)
        self._mesh.handle_timer(now)
        self._circuits.handle_timer(now)
        self._relaying.handle_timer(now)
        self._upgrades.handle_timer(now)

    def _input(self, conn_id: ConnId, now: float) -> Conn | None:
        """An I/O completion's bookkeeping: the clock moves on; the connection, unless already forgotten."""
        self._moved(now)
        return self._core.conns.get(conn_id)

    # -- routing --------------------------------------------------------------

    def _check_conn(self, conn: Conn, now: float) -> None:
        """Run ``conn``'s deadlines and schedule its next one."""
        if conn.state is ExchangeState.ESTABLISHED:
            self._peers.check(conn, now)
        elif now >= conn.deadline:
            self._core.fail_conn(conn, "handshake timed out")
        else:
            self._core.schedule(conn, conn.deadline)

    def _on_secured(self, conn: Conn) -> None:
        core = self._core
        hs = conn.handshake
        assert hs is not None and hs.channel is not None and hs.peer_id is not None
        conn.channel, conn.peer_id, conn.handshake = hs.channel, hs.peer_id, None
        conn.session_id = hs.session_id
        if conn.circuit is None and conn.remote.transport == "udp":  # rUDP authenticates its control datagrams
            core.effects.append(KeyPath(conn.id, hs.path_key))
        limit_pre_grant(conn.channel)  # the smallest budget until a grant (limits.py)
        if conn.circuit is not None and conn.peer_id != conn.circuit.peer:
            raise HandshakeError("the relayed peer is not the one the relay announced", reason="peer_id_mismatch")
        if conn.role is Role.RESPONDER:
            core.move(conn, Decision.SECURED)
            return
        if core.is_banned(conn.peer_id, conn.remote):
            raise HandshakeError("peer is banned", reason="banned")
        if conn.probe_for is not None:
            self._admission.on_probe_secured(conn)  # the Node answered at its listener as itself
        elif conn.connect_for is not None:
            self._rendezvous.on_secured(conn)
        elif conn.echo:
            self._external.on_echo_secured(conn)
        else:
            core.move(conn, Decision.SECURED_BOOTSTRAP)
            core.send_control(conn, BootstrapRequest(conn.user, tuple(self.listeners(core.now)[:MAX_LISTENERS]),
                                                     shareable=core.config.peer_exchange))

    def _on_message(self, conn: Conn, message: Message, now: float) -> None:
        """A record :meth:`receive_data` does not take inline (all but ``Data`` on an established connection)."""
        self._cold_timer = None  # any such record may move a concern's timer
        peers = self._peers
        if conn.state is ExchangeState.ESTABLISHED:  # rows exist for these: the table lookup is skipped
            kind = type(message)
            if kind is Heartbeat:
                peers.on_heartbeat(conn, message, now)  # type: ignore[arg-type]
                return
            if kind is Goodbye:
                peers.on_goodbye(conn, message)  # type: ignore[arg-type]
                return
            if kind is PeerExchangeRequest or kind is PeerExchangeResponse:
                peers.on_peer_exchange(conn, message, now)  # type: ignore[arg-type]
                return
            if kind in RELAY_MESSAGES:
                self._relay_router.route(conn, message, now)
                return
        elif conn.circuit is not None and not isinstance(message, _OVER_A_CIRCUIT):
            raise RemoteProtocolError(f"{type(message).__name__} over a relay: only connect() runs there")
        self._core.move(conn, type(message).__name__)
        if isinstance(message, BootstrapRequest):
            self._admission.on_request(conn, message, now)
        elif isinstance(message, BootstrapDenied):
            self._runs.on_denied(conn, message)
        elif isinstance(message, ConnectRequest):
            self._rendezvous.on_request(conn, message, now)
        elif isinstance(message, BootstrapGranted):
            conn.listeners = message.listeners  # where else the granter accepts
            peers.establish(conn, Origin.BOOTSTRAP_CONNECT, now)
        elif isinstance(message, ChooseConnection):
            peers.establish(conn, Origin.CONNECT, now)  # the greater PeerId picked this candidate
        elif isinstance(message, EchoAddrReq):
            self._external.on_echo_request(conn, now)
        elif isinstance(message, EchoAddrResp) and conn.echo:
            self._external.on_echo_response(conn, message, now)
        # an EchoAddrResp on a peer link nobody asked for: ignored

    def _remote_error(self, conn: Conn, exc: RemoteProtocolError) -> None:
        self._cold_timer = None
        core = self._core
        reason = exc.reason if isinstance(exc, HandshakeError) else str(exc)
        peer = self._peers.of(conn)
        if peer is not None:
            log.warning("peer %r misbehaved: %s", peer.id, exc)
            core.events.append(Misbehaved(peer.id, str(exc)))
            goodbye = GoodbyeReason.MESSAGE_TOO_LARGE if isinstance(exc, OversizeMessage) else GoodbyeReason.PROTOCOL
            self._peers.lose(peer.id, f"misbehaved: {exc}", goodbye)
            return
        if conn.role is Role.RESPONDER:
            core.refused += 1
        if conn.handshake is not None:
            core.write_handshake(conn)  # a REJECT telling the peer why
        if isinstance(exc, HandshakeError) and exc.reason in ("network_mismatch", "version_mismatch"):
            log.warning("handshake with %s failed: %s", conn.remote, exc)
        core.fail_conn(conn, reason if conn.role is Role.INITIATOR else str(exc))
