"""Engine: the whole node as one sans-IO state machine (ARCHITECTURE.md §1.3).

Theory of operation.  Three kinds of input drive the engine, as in
aioquic's ``QuicConnection``:

* user commands: :meth:`start_bootstrap`, :meth:`send`, :meth:`disconnect`,
  :meth:`ban`, :meth:`close`;
* I/O completions from the shell: :meth:`handle_accepted`,
  :meth:`handle_connected`, :meth:`receive_data`, :meth:`handle_sent`,
  :meth:`handle_closed`, :meth:`reading_paused`;
* the clock: :meth:`handle_timer` whenever :meth:`get_timer` comes due.

Every call may queue effects (:meth:`take_effects`: Dial, Write, Close,
SendCredit) and events (:meth:`take_events`).  Nothing here touches a
socket, a thread or the clock; ``now`` is always a parameter.

A connection (``Conn``) runs the secure handshake, then the exchange
(``handshake.states.EXCHANGE``): the initiator asks for a bootstrap, the
responder grants or denies.  A granted connection carries a peer
(``Peer``): an outbox of queued messages, liveness and RTT.  The peer, not
the connection, owns the outbox, so when two connections to the same peer
race (both sides bootstrap off each other at once), one is dropped and the
queued messages simply flow over the survivor.  The survivor is the
connection initiated by the greater PeerId; both sides compute the same
answer without talking about it.

Writes are paced by a window: at most ``WRITE_WINDOW`` bytes of sealed
frames may sit in the shell's buffer per connection; the rest waits in the
outbox, where priorities still apply.  Each frame is filled with as many
queued messages as fit, so small messages cost one AEAD call per 64 KiB,
not one each (the issue's performance design).
"""

from __future__ import annotations

import dataclasses
import heapq
import random
import ipaddress
import logging
from collections import OrderedDict
from collections.abc import Collection
from typing import Iterable, Sequence

from ..bootstrap.policy import Bootstrapper
from ..channel import MAX_FRAME_PLAINTEXT
from ..config import Config
from ..crypto.keys import KeyPair
from ..effects import Close, Dial, Effect, SendCredit, Write
from ..errors import HandshakeError, LocalProtocolError, PeerNotFound, RemoteProtocolError
from ..events import BootstrapFinished, ConnectFinished, ContactsLearned, Event, MessageReceived, Misbehaved, PeerConnected, PeerInfo, PeerLost, SendDropped
from ..handshake.bootstrap import judge_bootstrap
from ..handshake.secure import SecureHandshake
from ..handshake.states import EXCHANGE, ExchangeState, Role, transition
from ..ids import ConnId, Contact, CrustUser, Endpoint, PeerId, name_hash, tcp_first
from ..outbox import Outbox
from .peer_exchange import MIN_ANSWER_INTERVAL, learned_contacts, sample_peers
from .records import NEVER, Conn, Connect, Peer, Run
from ..wire.messages import (
    BootstrapDenied, BootstrapGranted, BootstrapRequest, ChooseConnection, ConnectRequest, Data, DenyReason, EchoAddrReq, EchoAddrResp, Goodbye,
    GoodbyeReason, Heartbeat, Message, PeerExchangeRequest, PeerExchangeResponse, encode_record,
)

__all__ = ["Engine", "WRITE_WINDOW"]

log = logging.getLogger("crust")

WRITE_WINDOW = 512 * 1024  # bytes of sealed frames handed to the shell but not yet in the kernel
_MAX_REACHABILITY_PROBES = 4  # listeners of a bootstrapping Node dialled back at once
_MAX_CONNECT_CANDIDATES = 32  # endpoints of one connection info dialled at once
_CANDIDATE_STATES = frozenset({ExchangeState.AWAIT_LOCAL_CONNECT, ExchangeState.EXPECT_CHOOSE,
                               ExchangeState.EXPECT_CONNECT_REPLY})
_RTT_GAIN = 0.125  # RFC 6298 §2.3 alpha for the smoothed RTT


class Engine:
    """A crust node without I/O.  See the module docstring for the contract."""

    def __init__(self, *, static: KeyPair, config: Config, rng: random.Random | None = None) -> None:
        self.id = static.peer_id
        self._rng = rng or random.Random()  # peer-exchange sampling; tests inject a seeded one
        self._static = static
        self._config = config
        self._name_hash = name_hash(config.network_name)
        self._conns: dict[ConnId, Conn] = {}
        self._pending_accepts: OrderedDict[ConnId, Conn] = OrderedDict()  # oldest first
        self._peers: dict[PeerId, Peer] = {}
        self._runs: dict[int, Run] = {}
        self._connects: dict[PeerId, Connect] = {}  # connect() calls in progress, by peer
        self._parked: dict[PeerId, float] = {}  # peers between a duplicate's Goodbye and the survivor
        self._next_conn = 0
        self._next_run = 0
        self._effects: list[Effect] = []
        self._events: list[Event] = []
        self._dirty: dict[ConnId, Conn] = {}  # conns whose outbox may fill a frame
        self._timers: list[tuple[float, ConnId]] = []
        self._listeners: tuple[Endpoint, ...] = ()
        self._banned_ids: set[PeerId] = set()
        self._banned_ips: set[str] = set()
        self.accept_bootstrap = True
        self.closed = False
        self._now = 0.0  # the latest ``now`` any input brought: for paths that have none of their own

    # -- outputs ------------------------------------------------------------

    def take_effects(self) -> list[Effect]:
        """Everything the shell must do now, in order (flushes queued messages into frames first)."""
        if self._dirty:
            dirty, self._dirty = self._dirty, {}
            for conn in dirty.values():
                self._flush(conn)
        effects, self._effects = self._effects, []
        return effects

    def take_events(self) -> list[Event]:
        """Everything that happened since the last call, in order."""
        events, self._events = self._events, []
        return events

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called, if ever."""
        soonest = self._timers[0][0] if self._timers else NEVER
        for run in self._runs.values():
            due = run.policy.get_timer()
            if due is not None and due < soonest:
                soonest = due
        for record in self._connects.values():
            soonest = min(soonest, record.deadline)
        for until in self._parked.values():
            soonest = min(soonest, until)
        return None if soonest == NEVER else soonest

    # -- queries --------------------------------------------------------------

    def is_connected(self, peer_id: PeerId) -> bool:
        """True while ``peer_id`` is a connected peer."""
        return peer_id in self._peers

    def peer_ids(self) -> list[PeerId]:
        """Every connected peer."""
        return list(self._peers)

    def peer_info(self, peer_id: PeerId) -> PeerInfo:
        """A snapshot of one peer.  Raises PeerNotFound."""
        peer = self._peer(peer_id)
        conn = peer.conn
        return PeerInfo(
            id=peer.id, addr=conn.remote if conn else Endpoint("0.0.0.0", 0),
            transport=conn.remote.transport if conn else "tcp", user=peer.user,
            origin=peer.origin, rtt=peer.rtt, bytes_sent=conn.bytes_out if conn else 0,
            bytes_received=conn.bytes_in if conn else 0,
        )

    def conn_of(self, peer_id: PeerId) -> ConnId | None:
        """The connection currently carrying ``peer_id``, if any."""
        peer = self._peers.get(peer_id)
        return peer.conn.id if peer is not None and peer.conn is not None else None

    def queued_bytes(self, peer_id: PeerId, priority: int) -> int:
        """Unsent bytes queued for ``peer_id`` at ``priority``."""
        return self._peer(peer_id).outbox.queued_bytes(priority)

    def _peer(self, peer_id: PeerId) -> Peer:
        peer = self._peers.get(peer_id)
        if peer is None:
            raise PeerNotFound(f"not connected to {peer_id!r}")
        return peer

    # -- user commands ------------------------------------------------------

    def set_listeners(self, endpoints: Sequence[Endpoint]) -> None:
        """The endpoints we accept on, announced in our BootstrapRequests."""
        self._listeners = tuple(endpoints)

    def start_bootstrap(self, contacts: Sequence[Contact], *, blacklist: Iterable[Endpoint | str] = (),
                        user: CrustUser = CrustUser.NODE, timeout: float | None = None, now: float) -> int:
        """Start a bootstrap run over ``contacts`` (IP literals only); returns its id.

        The run ends with one ``BootstrapFinished`` event: the first granted
        peer, or ``None`` and each contact's failure.
        """
        self._now = now
        self._next_run += 1
        cfg = self._config
        policy = Bootstrapper(contacts, blacklist=[*blacklist, *self._banned_ips], stagger=cfg.bootstrap_stagger,
                              max_in_flight=cfg.bootstrap_max_in_flight,
                              deadline=now + (cfg.bootstrap_timeout if timeout is None else timeout), now=now)
        for contact in policy.skipped:
            policy.failures[str(contact.addr)] = "blacklisted"
        run = self._runs[self._next_run] = Run(self._next_run, policy, user)
        self._pump_run(run, now)
        return run.id

    def start_connect(self, peer_id: PeerId, endpoints: Sequence[Endpoint], *, their_token: bytes,
                      our_token: bytes, timeout: float, now: float) -> None:
        """Connect to ``peer_id``, who does the same with our info (PROTOCOL.md §7).

        Every endpoint is dialled at once; the peer's dials to us count too.
        Ends with one ``ConnectFinished`` event (at once if already connected).
        """
        self._now = now
        if peer_id in self._peers:
            self._events.append(ConnectFinished(peer_id, True))
            return
        old = self._connects.pop(peer_id, None)
        if old is not None:
            self._close_candidates(peer_id, keep=None)
        record = self._connects[peer_id] = Connect(peer_id, our_token, their_token, now + timeout)
        for endpoint in endpoints[:_MAX_CONNECT_CANDIDATES]:
            conn = self._new_conn(Role.INITIATOR, endpoint, now)
            conn.connect_for = peer_id
            record.dials.add(conn.id)
            self._start_handshake(conn, expected=peer_id)
            self._effects.append(Dial(conn.id, endpoint))
        for conn in list(self._conns.values()):  # the peer may have dialled us first
            if conn.state is ExchangeState.AWAIT_LOCAL_CONNECT and conn.peer_id == peer_id:
                self._on_connect_request(conn, ConnectRequest(conn.connect_token or b""), now)

    def stop_bootstrap(self, now: float) -> None:
        """Abandon every bootstrap run (each reports ``BootstrapFinished`` with no peer)."""
        self._now = now
        for run in list(self._runs.values()):
            run.policy.time_out()
            self._end_run(run, None)

    def send(self, peer_id: PeerId, priority: int, data: bytes, now: float) -> None:
        """Queue ``data`` for ``peer_id``; the frame is built at the next :meth:`take_effects`.

        Raises:
            PeerNotFound: not connected to ``peer_id``.
        """
        self._now = now
        peer = self._peer(peer_id)
        dropped = peer.outbox.push(priority, data, now)
        if dropped:
            self._events.append(SendDropped(peer_id, priority, dropped))
            self._effects.append(SendCredit(peer_id, tuple(peer.outbox.take_dropped_bytes())))
        if peer.conn is not None:
            self._dirty[peer.conn.id] = peer.conn
            if priority >= 2 and peer.conn.scheduled == NEVER:
                self._schedule(peer.conn, now + self._config.drop_after)

    def disconnect(self, peer_id: PeerId, now: float) -> bool:
        """Say Goodbye to ``peer_id`` and drop it (``PeerLost`` is reported here too)."""
        self._now = now
        if peer_id not in self._peers:
            return False
        self._lose_peer(peer_id, "disconnected", GoodbyeReason.CLOSED)
        return True

    def ban(self, peer_ids: Iterable[PeerId], ips: Iterable[str], now: float) -> None:
        """Refuse these peers and IPs for the rest of the session; drop the connected ones."""
        self._now = now
        self._banned_ids.update(peer_ids)
        self._banned_ips.update(str(ipaddress.ip_address(ip)) for ip in ips)
        for peer in list(self._peers.values()):
            if self._is_banned(peer.id, peer.conn.remote if peer.conn else None):
                self._lose_peer(peer.id, "banned", GoodbyeReason.BANNED)

    def update_whitelists(self, node_ips: Collection[str] | None, client_ips: Collection[str] | None,
                          now: float) -> None:
        """New whitelists (a re-read config file): drop peers that bootstrapped off us and no longer may."""
        self._now = now
        self._config = dataclasses.replace(self._config, whitelisted_node_ips=node_ips,
                                           whitelisted_client_ips=client_ips)
        for peer in list(self._peers.values()):
            whitelist = client_ips if peer.user is CrustUser.CLIENT else node_ips
            if (peer.origin == "bootstrap_accept" and peer.conn is not None and whitelist is not None
                    and peer.conn.remote.host not in whitelist):
                self._lose_peer(peer.id, "no longer whitelisted", GoodbyeReason.NOT_WHITELISTED)

    def close(self, now: float) -> None:
        """Say Goodbye to every peer and close every connection.  No events follow."""
        self._now = now
        self.closed = True
        for peer in list(self._peers.values()):
            if peer.conn is not None:
                self._say_goodbye(peer.conn, GoodbyeReason.CLOSED)
        for conn in list(self._conns.values()):
            self._close(conn, flush=True)
        self._peers.clear()
        self._runs.clear()
        self._events.clear()

    def _is_banned(self, peer_id: PeerId | None, remote: Endpoint | None) -> bool:
        return (peer_id in self._banned_ids) or (remote is not None and remote.host in self._banned_ips)

    # -- I/O completions ----------------------------------------------------

    def handle_accepted(self, remote: Endpoint, now: float) -> ConnId | None:
        """A stream from ``remote`` was accepted; returns its id, or None to close it at once."""
        self._now = now
        if self.closed or remote.host in self._banned_ips:
            return None
        self._evict_pending(remote.host)
        conn = self._new_conn(Role.RESPONDER, remote, now)
        self._pending_accepts[conn.id] = conn
        self._start_handshake(conn, expected=None)
        return conn.id

    def _evict_pending(self, host: str) -> None:
        # PROTOCOL.md §11: at a cap, drop the *oldest* pending handshake, so a flood of
        # idle connections cannot lock honest peers out.
        cfg = self._config
        same_ip = [c for c in self._pending_accepts.values() if c.remote.host == host]
        if len(same_ip) >= cfg.max_pending_handshakes_per_ip:
            self._fail_conn(same_ip[0], "pending handshakes from this IP over the cap")
        if len(self._pending_accepts) >= cfg.max_pending_handshakes:
            self._fail_conn(next(iter(self._pending_accepts.values())), "pending handshakes over the cap")

    def handle_connected(self, conn_id: ConnId, now: float) -> None:
        """A dial we asked for (``Dial``) connected."""
        self._now = now
        conn = self._conns.get(conn_id)
        if conn is None:
            return
        conn.connected = True
        conn.last_rx = now
        self._write_handshake(conn)

    def receive_data(self, conn_id: ConnId, data: bytes, now: float) -> None:
        """Bytes arrived on ``conn_id``."""
        self._now = now
        conn = self._conns.get(conn_id)
        if conn is None:
            return
        conn.last_rx = now
        conn.bytes_in += len(data)
        try:
            if conn.channel is None:
                assert conn.handshake is not None
                conn.handshake.receive_data(data)
                self._write_handshake(conn)
                if not conn.handshake.complete:
                    return
                data = conn.handshake.trailing_data
                self._on_secured(conn, now)
                if conn.id not in self._conns or not data:
                    return
            assert conn.channel is not None
            for message in conn.channel.receive_data(data):
                if conn.id not in self._conns:
                    return  # an earlier message in this batch closed it
                self._on_message(conn, message, now)
        except RemoteProtocolError as exc:
            self._remote_error(conn, exc)
        except LocalProtocolError as exc:  # a table miss the peer's input caused (h11's re-label)
            self._remote_error(conn, RemoteProtocolError(f"unexpected message: {exc}"))

    def handle_sent(self, conn_id: ConnId, nbytes: int, now: float) -> None:
        """``nbytes`` written on ``conn_id`` reached the kernel."""
        self._now = now
        conn = self._conns.get(conn_id)
        if conn is None:
            return
        conn.unsent -= nbytes
        conn.bytes_out += nbytes
        peer = self._peers.get(conn.peer_id) if conn.peer_id is not None else None
        if peer is not None and peer.conn is conn and peer.outbox:
            self._dirty[conn.id] = conn

    def handle_closed(self, conn_id: ConnId, error: str | None, now: float) -> None:
        """The stream ended: closed by the peer, reset, or a dial failed (``error`` says how)."""
        self._now = now
        conn = self._conns.get(conn_id)
        if conn is None:
            return
        reason = f"connection lost: {error}" if error else "connection closed by peer"
        if conn.role is Role.INITIATOR and not conn.connected:
            reason = f"connect failed: {error or 'closed'}"
        self._fail_conn(conn, reason, close=False)

    def reading_paused(self, conn_id: ConnId, paused: bool, now: float) -> None:
        """The shell stopped (or resumed) reading ``conn_id``: silence then is ours, not the peer's."""
        self._now = now
        conn = self._conns.get(conn_id)
        if conn is not None:
            conn.paused = paused
            conn.last_rx = now

    def handle_timer(self, now: float) -> None:
        """Run everything that came due by ``now``."""
        self._now = now
        timers = self._timers
        while timers and timers[0][0] <= now:
            when, conn_id = heapq.heappop(timers)
            conn = self._conns.get(conn_id)
            if conn is not None and conn.scheduled == when:
                conn.scheduled = NEVER
                self._check_conn(conn, now)
        for run in list(self._runs.values()):
            due = run.policy.get_timer()
            if due is not None and due <= now:
                if now >= run.policy.deadline:
                    run.policy.time_out()
                    for conn_id in run.dials.values():
                        if conn_id in self._conns:
                            self._close(self._conns[conn_id], flush=False)
                self._pump_run(run, now)
        for record in [r for r in self._connects.values() if r.deadline <= now]:
            self._end_connect(record, connected=False)
        for peer_id, until in list(self._parked.items()):
            if until <= now:
                del self._parked[peer_id]
                peer = self._peers.get(peer_id)
                if peer is not None and peer.conn is None:
                    self._drop_peer(peer, "closed by peer (duplicate), and no other connection came")

    # -- connections --------------------------------------------------------

    def _new_conn(self, role: Role, remote: Endpoint, now: float) -> Conn:
        self._next_conn += 1
        conn = Conn(ConnId(self._next_conn), role, remote, now)
        conn.deadline = now + self._config.handshake_timeout
        self._conns[conn.id] = conn
        self._schedule(conn, conn.deadline)
        return conn

    def _start_handshake(self, conn: Conn, expected: PeerId | None) -> None:
        conn.handshake = SecureHandshake(
            initiator=conn.role is Role.INITIATOR, static=self._static, name_hash=self._name_hash,
            max_message_size=self._config.max_message_size, expected_peer=expected,
        )
        if conn.connected:
            self._write_handshake(conn)

    def _write_handshake(self, conn: Conn) -> None:
        assert conn.handshake is not None
        out = conn.handshake.data_to_send()
        if out:
            self._write(conn, out)

    def _write(self, conn: Conn, data: bytes) -> None:
        conn.unsent += len(data)
        self._effects.append(Write(conn.id, data))

    def _send_control(self, conn: Conn, *messages: Message) -> None:
        assert conn.channel is not None
        self._write(conn, conn.channel.encode(*messages))

    def _schedule(self, conn: Conn, when: float) -> None:
        # A lazy heap: a conn keeps only its earliest entry valid; later ones are skipped.
        if when < conn.scheduled:
            conn.scheduled = when
            heapq.heappush(self._timers, (when, conn.id))

    def _close(self, conn: Conn, *, flush: bool) -> None:
        """Forget ``conn`` and tell the shell to close it (after its queued writes when ``flush``)."""
        if self._forget(conn):
            self._effects.append(Close(conn.id, flush))

    def _forget(self, conn: Conn) -> bool:
        """Drop every reference to ``conn``; False if it was already gone."""
        if self._conns.pop(conn.id, None) is None:
            return False
        self._pending_accepts.pop(conn.id, None)
        self._dirty.pop(conn.id, None)
        return True

    def _fail_conn(self, conn: Conn, reason: str, *, close: bool = True) -> None:
        """``conn`` is finished for ``reason``: lose its peer or fail its bootstrap dial."""
        if close:
            self._close(conn, flush=True)
        else:
            self._forget(conn)  # the stream is already gone: nothing to tell the shell
        peer = self._peers.get(conn.peer_id) if conn.peer_id is not None else None
        if peer is not None and peer.conn is conn:
            self._drop_peer(peer, reason)
        elif peer is not None and peer.conn is None and not self._successor(peer.id):
            self._drop_peer(peer, reason)
        if conn.run is not None and conn.state is not ExchangeState.ESTABLISHED:
            run = self._runs.get(conn.run)
            if run is not None and conn.contact is not None and conn.contact in run.policy.in_flight:
                run.policy.failed(conn.contact, reason)
                self._pump_run(run, self._now)
        if conn.probe_for is not None:
            self._reachability_checked(conn.probe_for, conn.id, reachable=False)
        if conn.connect_for is not None and conn.connect_for in self._connects:
            self._connects[conn.connect_for].failures[str(conn.remote)] = reason
        if conn.state is not ExchangeState.ESTABLISHED:
            log.debug("connection %s to %s failed: %s", conn.id, conn.remote, reason)

    def _remote_error(self, conn: Conn, exc: RemoteProtocolError) -> None:
        reason = exc.reason if isinstance(exc, HandshakeError) else str(exc)
        peer = self._peers.get(conn.peer_id) if conn.peer_id is not None else None
        if peer is not None and peer.conn is conn:
            log.warning("peer %r misbehaved: %s", peer.id, exc)
            self._events.append(Misbehaved(peer.id, str(exc)))
            self._lose_peer(peer.id, f"misbehaved: {exc}", GoodbyeReason.PROTOCOL)
            return
        if conn.handshake is not None:
            self._write_handshake(conn)  # a REJECT telling the peer why
        if isinstance(exc, HandshakeError) and exc.reason in ("network_mismatch", "version_mismatch"):
            log.warning("handshake with %s failed: %s", conn.remote, exc)
        self._fail_conn(conn, reason if conn.role is Role.INITIATOR else str(exc))

    def _check_conn(self, conn: Conn, now: float) -> None:
        """Run ``conn``'s deadlines and schedule its next one."""
        if conn.state is not ExchangeState.ESTABLISHED:
            if now >= conn.deadline:
                self._fail_conn(conn, "handshake timed out")
            else:
                self._schedule(conn, conn.deadline)
            return
        peer = self._peers.get(conn.peer_id) if conn.peer_id is not None else None
        if peer is None or peer.conn is not conn:  # retiring after a duplicate race
            if now >= conn.deadline:
                self._close(conn, flush=False)
            else:
                self._schedule(conn, conn.deadline)
            return
        cfg = self._config
        if not conn.paused and now - conn.last_rx >= cfg.inactivity_timeout:
            self._lose_peer(peer.id, "timed out", GoodbyeReason.CLOSED)
            return
        if now - conn.last_tx >= cfg.heartbeat_interval:
            self._probe(peer, conn, now)
        expired = peer.outbox.expire(now)
        for priority, count in expired:
            self._events.append(SendDropped(peer.id, priority, count))
        if expired:
            self._effects.append(SendCredit(peer.id, tuple(peer.outbox.take_dropped_bytes())))
        nexts = [conn.last_tx + cfg.heartbeat_interval]
        if not conn.paused:
            nexts.append(conn.last_rx + cfg.inactivity_timeout)
        expiry = peer.outbox.next_expiry()
        if expiry is not None:
            nexts.append(expiry)
        self._schedule(conn, max(min(nexts), now))

    def _probe(self, peer: Peer, conn: Conn, now: float) -> None:
        if peer.probe_sent_at is None:  # one probe in flight: its echo times the RTT
            peer.probe_seq = (peer.probe_seq + 1) & 0xFFFFFFFF
            peer.probe_sent_at = now
        peer.outbox.push_control(encode_record(Heartbeat(peer.probe_seq)))
        conn.last_tx = now
        self._dirty[conn.id] = conn

    def _flush(self, conn: Conn, window: float = WRITE_WINDOW) -> None:
        """Seal queued messages of ``conn``'s peer into frames, up to ``window`` unsent bytes."""
        if conn.id not in self._conns or conn.peer_id is None:
            return
        peer = self._peers.get(conn.peer_id)
        if peer is None or peer.conn is not conn or conn.channel is None:
            return
        outbox = peer.outbox
        credit: dict[int, int] = {}
        while outbox and conn.unsent < window:
            pieces, released = outbox.fill(MAX_FRAME_PLAINTEXT)
            self._write(conn, conn.channel.seal(pieces))
            for priority, nbytes in released:
                credit[priority] = credit.get(priority, 0) + nbytes
            conn.last_tx = self._now
        if credit:
            self._effects.append(SendCredit(peer.id, tuple(credit.items())))

    # -- the exchange -------------------------------------------------------

    def _on_secured(self, conn: Conn, now: float) -> None:
        hs = conn.handshake
        assert hs is not None and hs.channel is not None and hs.peer_id is not None
        conn.channel, conn.peer_id, conn.handshake = hs.channel, hs.peer_id, None
        conn.session_id = hs.session_id
        if conn.role is Role.INITIATOR:
            if self._is_banned(conn.peer_id, conn.remote):
                raise HandshakeError("peer is banned", reason="banned")
            if conn.probe_for is not None:
                self._close(conn, flush=True)  # the Node answered at its listener as itself: reachable
                self._reachability_checked(conn.probe_for, conn.id, reachable=True)
                return
            if conn.connect_for is not None:
                record = self._connects.get(conn.connect_for)
                if record is None:
                    self._close(conn, flush=False)  # the connect ended meanwhile
                    return
                conn.state = ExchangeState.EXPECT_CONNECT_REPLY
                self._send_control(conn, ConnectRequest(record.their_token))
                return
            conn.state = ExchangeState.EXPECT_GRANT
            self._send_control(conn, BootstrapRequest(conn.user, self._listeners[:32],
                                                      shareable=self._config.peer_exchange))
        else:
            conn.state = ExchangeState.EXPECT_PURPOSE

    def _on_message(self, conn: Conn, message: Message, now: float) -> None:
        if conn.state is ExchangeState.ESTABLISHED:
            if type(message) is Data:  # the hot path
                self._events.append(MessageReceived(conn.peer_id, message.chunk))  # type: ignore[arg-type]
                return
            if type(message) is Heartbeat:
                self._on_heartbeat(conn, message, now)
                return
            if type(message) is Goodbye:
                self._on_goodbye(conn, message)
                return
            if type(message) is PeerExchangeRequest or type(message) is PeerExchangeResponse:
                self._on_peer_exchange(conn, message, now)
                return
        state = transition(EXCHANGE, (conn.role, conn.state, type(message).__name__))
        if isinstance(message, BootstrapRequest):
            self._on_bootstrap_request(conn, message, now)
        elif isinstance(message, BootstrapGranted):
            self._establish(conn, "bootstrap_connect", now)
        elif isinstance(message, BootstrapDenied):
            self._on_denied(conn, message)
        elif isinstance(message, ConnectRequest):
            self._on_connect_request(conn, message, now)
        elif isinstance(message, ChooseConnection):
            self._establish(conn, "connect", now)  # the greater PeerId picked this candidate
        elif isinstance(message, EchoAddrReq):
            self._send_control(conn, EchoAddrResp(conn.remote))
            conn.state = state
        else:
            conn.state = state  # EchoAddrResp: external-address voting comes with NAT traversal

    def _on_heartbeat(self, conn: Conn, beat: Heartbeat, now: float) -> None:
        peer = self._peers[conn.peer_id]  # type: ignore[index]
        if not beat.echo:
            peer.outbox.push_control(encode_record(Heartbeat(beat.seq, echo=True)))
            self._dirty[conn.id] = conn
        elif beat.seq == peer.probe_seq and peer.probe_sent_at is not None:
            sample = now - peer.probe_sent_at
            peer.rtt = sample if peer.rtt is None else peer.rtt + _RTT_GAIN * (sample - peer.rtt)
            peer.probe_sent_at = None

    def _on_goodbye(self, conn: Conn, goodbye: Goodbye) -> None:
        peer = self._peers[conn.peer_id]  # type: ignore[index]
        if peer.conn is not conn:
            self._close(conn, flush=False)  # a retired duplicate: both sides have now said so
            return
        if goodbye.reason is GoodbyeReason.DUPLICATE:
            # The peer kept another connection to us that we have not seen granted yet (it may
            # still be in its handshake, its PeerId unknown to us): wait for it, a bounded time.
            peer.conn = None
            self._parked[peer.id] = self._now + self._config.handshake_timeout
            self._close(conn, flush=False)
            return
        self._close(conn, flush=False)
        self._drop_peer(peer, f"closed by peer ({goodbye.reason.name.lower()})")

    def _on_peer_exchange(self, conn: Conn, message: Message, now: float) -> None:
        peer = self._peers.get(conn.peer_id)  # type: ignore[arg-type]
        if peer is None or peer.conn is not conn:
            return  # a retiring duplicate: its peer answers on the survivor
        if isinstance(message, PeerExchangeRequest):
            # Rate limit: within the interval the asker gets an empty answer, not a fresh sample.
            answer = (sample_peers(self._peers.values(), peer.id, self._rng)
                      if self._config.peer_exchange and now - peer.exchange_answered_at >= MIN_ANSWER_INTERVAL
                      else PeerExchangeResponse())
            peer.exchange_answered_at = now
            peer.outbox.push_control(encode_record(answer))
            self._dirty[conn.id] = conn
            return
        assert isinstance(message, PeerExchangeResponse)
        if not peer.exchange_asked:
            raise RemoteProtocolError("unsolicited PeerExchangeResponse")
        peer.exchange_asked = False
        contacts = learned_contacts(message, us=self.id, banned_ids=self._banned_ids, banned_ips=self._banned_ips)
        if contacts:
            self._events.append(ContactsLearned(peer.id, tuple(contacts)))

    def _successor(self, peer_id: PeerId) -> Conn | None:
        for conn in self._conns.values():
            if conn.peer_id == peer_id and conn.state is not ExchangeState.ESTABLISHED and conn.probe_for is None:
                return conn
        return None

    def _on_bootstrap_request(self, conn: Conn, request: BootstrapRequest, now: float) -> None:
        cfg = self._config
        deny = DenyReason.BANNED if self._is_banned(conn.peer_id, conn.remote) else judge_bootstrap(
            request, remote_ip=conn.remote.host, accepting=self.accept_bootstrap,
            node_whitelist=cfg.whitelisted_node_ips, client_whitelist=cfg.whitelisted_client_ips,
            is_new_peer=conn.peer_id not in self._peers, peer_count=len(self._peers), max_peers=cfg.max_peers)
        if deny is None and not self._wins_duplicate(conn):
            deny = DenyReason.ALREADY_CONNECTED
        if deny is None and request.user is CrustUser.NODE and not cfg.disable_external_reachability_requirement:
            self._check_reachability(conn, request, now)
            return
        self._answer(conn, request, deny, now)

    def _answer(self, conn: Conn, request: BootstrapRequest, deny: DenyReason | None, now: float) -> None:
        if deny is None and not self._wins_duplicate(conn):  # again: the check may have taken seconds
            deny = DenyReason.ALREADY_CONNECTED
        if deny is not None:
            self._send_control(conn, BootstrapDenied(deny))
            self._close(conn, flush=True)
            return
        conn.user = request.user
        conn.listeners = request.listeners
        conn.shareable = request.shareable
        self._send_control(conn, BootstrapGranted())
        self._establish(conn, "bootstrap_accept", now)

    def _check_reachability(self, conn: Conn, request: BootstrapRequest, now: float) -> None:
        """Dial back the Node's listeners (PROTOCOL.md §6.3); grant once one answers as that PeerId.

        The budget is half the handshake timeout, so the requester (whose own
        deadline started earlier) hears Granted or Denied before it gives up.
        """
        listeners = tcp_first(request.listeners)[:_MAX_REACHABILITY_PROBES]
        if not listeners:
            self._answer(conn, request, DenyReason.FAILED_EXTERNAL_REACHABILITY, now)
            return
        conn.state = ExchangeState.CHECKING_REACHABILITY
        conn.request = request
        budget = self._config.handshake_timeout / 2
        for endpoint in listeners:
            probe = self._new_conn(Role.INITIATOR, endpoint, now)
            probe.probe_for = conn.id
            probe.deadline = now + budget
            conn.probes.add(probe.id)
            self._start_handshake(probe, expected=conn.peer_id)
            self._effects.append(Dial(probe.id, endpoint))

    def _reachability_checked(self, request_id: ConnId, probe_id: ConnId, *, reachable: bool) -> None:
        conn = self._conns.get(request_id)
        if conn is None or conn.request is None or probe_id not in conn.probes:
            return  # the requester left, or an earlier probe already decided
        conn.probes.discard(probe_id)
        if not reachable and conn.probes:
            return  # other listeners may still answer
        request, conn.request = conn.request, None
        for other in conn.probes:
            if other in self._conns:
                self._close(self._conns[other], flush=False)
        conn.probes.clear()
        deny = None if reachable else DenyReason.FAILED_EXTERNAL_REACHABILITY
        self._answer(conn, request, deny, self._now)

    def _on_denied(self, conn: Conn, denied: BootstrapDenied) -> None:
        assert conn.peer_id is not None
        if denied.reason is DenyReason.ALREADY_CONNECTED and (conn.peer_id in self._peers):
            self._close(conn, flush=False)
            self._run_succeeded(conn, conn.peer_id)
            return
        self._fail_conn(conn, f"denied: {denied.reason.name.lower()}")

    def _wins_duplicate(self, conn: Conn) -> bool:
        """Whether ``conn`` should carry its peer, given any connection the peer already has."""
        peer = self._peers.get(conn.peer_id) if conn.peer_id is not None else None
        if peer is None or peer.conn is None:
            return True
        return self._rank(conn) > self._rank(peer.conn)

    def _rank(self, conn: Conn) -> tuple[PeerId, bytes]:
        """A total order of the connections between two peers that both ends compute alike.

        The connection initiated by the greater PeerId wins; between two initiated by the
        same side (a connect candidate and a bootstrap, say) the greater session id does.
        Arrival order never enters into it, so both ends always keep the same one.
        """
        assert conn.peer_id is not None
        return (self.id if conn.role is Role.INITIATOR else conn.peer_id), conn.session_id

    def _establish(self, conn: Conn, origin: str, now: float) -> None:
        """``conn`` was granted: it now carries its peer (a new one, or a duplicate's survivor)."""
        peer_id = conn.peer_id
        assert peer_id is not None
        self._pending_accepts.pop(conn.id, None)
        peer = self._peers.get(peer_id)
        conn.state = ExchangeState.ESTABLISHED
        conn.last_tx = conn.last_rx = now
        if peer is not None and not self._wins_duplicate(conn):
            self._retire(conn, now)
            self._run_succeeded(conn, peer_id)
            self._connect_succeeded(peer_id, conn)
            return
        conn.deadline = NEVER
        if peer is None:
            cfg = self._config
            peer = self._peers[peer_id] = Peer(
                peer_id, conn, Outbox(queue_limit=cfg.send_queue_limit, drop_after=cfg.drop_after), origin)
            self._events.append(PeerConnected(self.peer_info(peer_id)))
            if origin == "bootstrap_connect" and self._config.peer_exchange:
                peer.exchange_asked = True  # the peer that let us in knows others: ask for them
                peer.outbox.push_control(encode_record(PeerExchangeRequest()))
        else:
            old, peer.conn = peer.conn, conn
            self._parked.pop(peer_id, None)
            peer.outbox.restart_partial()
            if old is not None:
                self._retire(old, now)
        self._probe(peer, conn, now)
        self._check_conn(conn, now)
        self._run_succeeded(conn, peer_id)
        self._connect_succeeded(peer_id, conn)

    def _retire(self, conn: Conn, now: float) -> None:
        """``conn`` lost a duplicate race: say so, and read on until the peer agrees.

        It is not closed at once because the peer may have written messages on
        it before it learnt of the race; they are delivered, then its Goodbye
        (or close) ends the connection.  The deadline bounds the wait.
        """
        self._send_control(conn, Goodbye(GoodbyeReason.DUPLICATE))
        conn.deadline = now + self._config.handshake_timeout
        self._schedule(conn, conn.deadline)

    def _say_goodbye(self, conn: Conn, reason: GoodbyeReason) -> None:
        if conn.id in self._conns and conn.channel is not None:
            self._flush(conn, window=NEVER)  # everything send() accepted goes out before the Goodbye
            self._send_control(conn, Goodbye(reason))

    def _lose_peer(self, peer_id: PeerId, reason: str, goodbye: GoodbyeReason) -> None:
        peer = self._peers[peer_id]
        if peer.conn is not None:
            self._say_goodbye(peer.conn, goodbye)
            self._close(peer.conn, flush=True)
        self._drop_peer(peer, reason)

    def _drop_peer(self, peer: Peer, reason: str) -> None:
        for conn in [c for c in self._conns.values() if c.peer_id == peer.id and c.state is ExchangeState.ESTABLISHED]:
            self._close(conn, flush=True)  # retiring duplicates must not outlive their peer
        self._parked.pop(peer.id, None)
        if self._peers.pop(peer.id, None) is not None:
            log.info("lost peer %r: %s", peer.id, reason)
            self._events.append(PeerLost(peer.id, reason))

    # -- bootstrap runs -----------------------------------------------------

    def _pump_run(self, run: Run, now: float) -> None:
        policy = run.policy
        for contact in policy.due(now):
            conn = self._new_conn(Role.INITIATOR, contact.addr, now)
            conn.contact, conn.run, conn.user = contact, run.id, run.user
            run.dials[contact] = conn.id
            self._start_handshake(conn, expected=contact.peer_id)
            self._effects.append(Dial(conn.id, contact.addr))
        if policy.finished and policy.winner is None:
            self._end_run(run, None)

    # -- connect (rendezvous through swapped connection info) --------------------------

    def _on_connect_request(self, conn: Conn, request: ConnectRequest, now: float) -> None:
        """A candidate got a ConnectRequest: the peer's dial to us, or the reply to ours."""
        assert conn.peer_id is not None
        record = self._connects.get(conn.peer_id)
        if conn.role is Role.RESPONDER:
            if self._is_banned(conn.peer_id, conn.remote):
                self._fail_conn(conn, "banned")
                return
            if record is None and conn.peer_id in self._peers:
                self._close(conn, flush=False)  # a late candidate of a connect that already succeeded
                return
            if record is None:
                # The peer called connect() a little before us: hold the candidate until we do
                # (or its handshake deadline passes).
                conn.state = ExchangeState.AWAIT_LOCAL_CONNECT
                conn.connect_token = request.token
                return
            if request.token != record.our_token:
                self._fail_conn(conn, "wrong connect token")
                return
            self._send_control(conn, ConnectRequest(record.our_token))  # accepted: say so
        elif record is None and not (conn.peer_id in self._peers and self.id < conn.peer_id):
            # Our connect ended (the peer came through another connection) and we would not be
            # the one choosing. If we are the smaller side, a ChooseConnection may follow this
            # reply: wait for it, and let the duplicate rule settle which connection stays.
            self._close(conn, flush=False)
            return
        if self.id > conn.peer_id:  # PROTOCOL.md §7: the greater PeerId chooses, the first candidate
            if conn.peer_id in self._peers:
                self._close(conn, flush=True)  # a later candidate: the chosen one already carries the peer
                return
            self._send_control(conn, ChooseConnection())
            self._establish(conn, "connect", now)
        else:
            conn.state = ExchangeState.EXPECT_CHOOSE

    def _close_candidates(self, peer_id: PeerId, keep: Conn | None, chooser: bool = True) -> None:
        for conn in list(self._conns.values()):
            # Only connect candidates: a bootstrap connection of the same peer is settled by the
            # duplicate rule, and closing it here would cut the peer's own bootstrap short.
            if conn is not keep and conn.state is not ExchangeState.ESTABLISHED and (conn.connect_for == peer_id or (
                    conn.peer_id == peer_id and conn.state in _CANDIDATE_STATES)) and (
                    chooser or conn.state is ExchangeState.AWAIT_LOCAL_CONNECT):
                self._close(conn, flush=False)

    def _connect_succeeded(self, peer_id: PeerId, conn: Conn) -> None:
        record = self._connects.pop(peer_id, None)
        if record is not None:
            # Only the chooser may drop candidates the peer may have accepted: the smaller side's
            # candidates might carry a ChooseConnection in flight.  They end with their deadline,
            # or when the chooser closes them, or as duplicates if chosen.
            self._close_candidates(peer_id, keep=conn, chooser=self.id > peer_id)
            self._events.append(ConnectFinished(peer_id, True))

    def _end_connect(self, record: Connect, *, connected: bool) -> None:
        if self._connects.pop(record.peer_id, None) is None:
            return
        self._close_candidates(record.peer_id, keep=None)
        failures = dict(record.failures)
        failures.setdefault("timeout", "no candidate connected in time")
        self._events.append(ConnectFinished(record.peer_id, connected, tuple(failures.items())))

    def _run_succeeded(self, conn: Conn, peer_id: PeerId) -> None:
        run = self._runs.get(conn.run) if conn.run is not None else None
        if run is None or conn.contact is None or conn.contact not in run.policy.in_flight:
            return
        for other in run.policy.succeeded(conn.contact):
            other_conn = self._conns.get(run.dials.get(other, ConnId(0)))
            if other_conn is not None:
                self._close(other_conn, flush=False)
        self._end_run(run, peer_id)

    def _end_run(self, run: Run, peer_id: PeerId | None) -> None:
        if self._runs.pop(run.id, None) is None:
            return
        failures = tuple(run.policy.failures.items())
        self._events.append(BootstrapFinished(run.id, peer_id, failures))
