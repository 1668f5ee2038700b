"""Rendezvous: ``connect()`` through connection info swapped out of band (PROTOCOL.md §7).

Theory of operation.  Both sides call ``connect(ours, theirs)`` at about the
same time.  Each dials every candidate of the other's info, expecting its
PeerId, and presents the other's token in a ``ConnectRequest``; the other
checks the token is the one it handed out and answers with its own.  The
peer's dials to us count as candidates too, even when they arrive before our
own ``connect()`` (they are parked in ``AWAIT_LOCAL_CONNECT`` until it comes,
or until their handshake deadline).

Candidates are the other side's listeners (dialled directly) and its punch
endpoints (:mod:`~crust.engine.punch`: TCP simultaneous open, UDP punching).
If none is through after ``RELAY_GRACE`` (at once when there are none), we
open circuits through the relays the two infos name
(:mod:`~crust.engine.circuits`): each relay in the other's info that we are
connected to, except that a relay named in both infos is opened by the greater
PeerId only, so one circuit per relay is the rule.  A relayed candidate runs the
same exchange as any other.

Exactly one candidate survives: the side with the greater PeerId picks the
first candidate whose exchange completes (``ChooseConnection``) and closes
the rest; the smaller side waits for that choice (``EXPECT_CHOOSE``).  TCP is
preferred: a UDP candidate that completes first is *held* for ``TCP_GRACE``
while a TCP one that is up (past its SYNs) finishes its exchange, and loses
to it if it does.  Only the chooser may close candidates the peer may have
accepted, because the smaller side's candidates might carry a
``ChooseConnection`` in flight.  A
``connect()`` ends with one ``ConnectFinished`` event: success, or every
candidate's failure at the deadline.
"""

from __future__ import annotations

import logging
from typing import Sequence

from ..events import ConnectFinished, Origin
from ..handshake.states import Decision, ExchangeState, Role
from ..ids import Endpoint, PeerId
from ..wire.messages import ChooseConnection, ConnectRequest
from .core import Core
from .peers import Peers
from .circuits import Circuits
from .punch import Punching
from .records import NEVER, Conn, Connect

__all__ = ["Rendezvous", "MAX_CONNECT_CANDIDATES", "TCP_GRACE", "RELAY_GRACE"]

log = logging.getLogger("crust")

MAX_CONNECT_CANDIDATES = 32  # endpoints of one connection info dialled at once
TCP_GRACE = 0.5  # seconds a ready UDP candidate waits for a TCP one (TCP is preferred where both work)
RELAY_GRACE = 2.0  # seconds direct and punched candidates have before relays are tried (at most half the timeout)
_CANDIDATE_STATES = frozenset({ExchangeState.AWAIT_LOCAL_CONNECT, ExchangeState.EXPECT_CHOOSE,
                               ExchangeState.EXPECT_CONNECT_REPLY, ExchangeState.HELD})


class Rendezvous:
    """Every ``connect()`` in progress, by peer."""

    def __init__(self, core: Core, peers: Peers, punching: Punching, circuits: Circuits) -> None:
        self._core = core
        self._peers = peers
        self._punching = punching
        self._circuits = circuits
        self._connects: dict[PeerId, Connect] = {}
        core.conn_failed.append(self._on_conn_failed)
        peers.established.append(self._on_established)

    def start(self, peer_id: PeerId, endpoints: Sequence[Endpoint], *, tcp_punch: Sequence[Endpoint] = (),
              udp_punch: Sequence[Endpoint] = (), their_token: bytes, our_token: bytes, timeout: float,
              their_relays: Sequence[PeerId] = (), our_relays: Sequence[PeerId] = (), upgrade: bool = False,
              now: float) -> None:
        """Dial every listener at once, punch towards the punch endpoints, and relay after a grace.

        Ends with one ``ConnectFinished`` (at once if already connected), except
        for an ``upgrade`` of a relayed peer (:mod:`~crust.engine.upgrade`),
        which ends silently.
        """
        core = self._core
        if (peer_id in self._peers.table) != upgrade:
            if not upgrade:
                core.events.append(ConnectFinished(peer_id, True))
            return
        record = self._new_record(peer_id, our_token, their_token, now + timeout, upgrade)
        direct = self._candidates(record, endpoints, tcp_punch, udp_punch, now)
        record.relays = tuple(relay for relay in their_relays if relay not in (core.id, peer_id)
                              and (core.id > peer_id or relay not in our_relays))
        if record.relays:
            record.relay_at = now + min(RELAY_GRACE, timeout / 2) if direct else now
        self._judge_parked(peer_id, now)

    def expect_upgrade(self, peer_id: PeerId, our_token: bytes, timeout: float, now: float) -> None:
        """We offered relayed ``peer_id`` an upgrade: take its candidates presenting ``our_token`` already.

        Its answer (our half of the info, :meth:`extend_upgrade`) may come well after its
        dials, behind the relay's queue: they must not wait for it.
        """
        peer = self._peers.table.get(peer_id)
        if peer is not None and peer.conn is not None and peer.conn.circuit is not None:
            self._new_record(peer_id, our_token, b"", now + timeout, True)

    def extend_upgrade(self, peer_id: PeerId, endpoints: Sequence[Endpoint], *, tcp_punch: Sequence[Endpoint],
                       udp_punch: Sequence[Endpoint], their_token: bytes, now: float) -> bool:
        """The answer to our upgrade offer: dial and punch it too.  False if that upgrade is over."""
        record = self._connects.get(peer_id)
        if record is None or not record.upgrade or record.their_token:
            return False
        record.their_token = their_token
        self._candidates(record, endpoints, tcp_punch, udp_punch, now)
        return True

    def _new_record(self, peer_id: PeerId, our_token: bytes, their_token: bytes, deadline: float,
                    upgrade: bool) -> Connect:
        if self._connects.pop(peer_id, None) is not None:
            self._close_candidates(peer_id, keep=None)
        record = self._connects[peer_id] = Connect(peer_id, our_token, their_token, deadline)
        record.upgrade = upgrade
        return record

    def _candidates(self, record: Connect, endpoints: Sequence[Endpoint], tcp_punch: Sequence[Endpoint],
                    udp_punch: Sequence[Endpoint], now: float) -> bool:
        """Dial ``record``'s listeners and punch towards its punch endpoints; False if none may be tried."""
        core, peer_id = self._core, record.peer_id
        allowed: dict[str, list[Endpoint]] = {"listeners": [], "tcp_punch": [], "udp_punch": []}
        for group, given in (("listeners", endpoints), ("tcp_punch", tcp_punch), ("udp_punch", udp_punch)):
            for endpoint in given:
                if core.may_connect(endpoint.host):
                    allowed[group].append(endpoint)
                else:
                    label = str(endpoint) if group == "listeners" else f"{group.replace('_', '-')} {endpoint}"
                    record.failures[label] = "not whitelisted"
        for endpoint in allowed["listeners"][:MAX_CONNECT_CANDIDATES]:
            conn = core.dial(Role.INITIATOR, endpoint, peer_id, now)
            conn.connect_for = peer_id
            record.dials.add(conn.id)
        self._punching.start(record, tcp_punch=tuple(allowed["tcp_punch"]), udp_punch=tuple(allowed["udp_punch"]),
                             now=now)
        return any(allowed.values())

    def _judge_parked(self, peer_id: PeerId, now: float) -> None:
        core = self._core
        for conn in list(core.conns.values()):  # the peer may have dialled us first
            if conn.state is ExchangeState.AWAIT_LOCAL_CONNECT and conn.peer_id == peer_id:
                core.move(conn, Decision.LOCAL_CONNECT)
                self._judge(conn, conn.connect_token or b"", now)

    def next_timer(self) -> float:
        """The earliest connect deadline or end of a hold (``NEVER`` if none)."""
        if not self._connects:
            return NEVER
        return min((min(record.deadline, record.hold_until, record.relay_at) for record in self._connects.values()),
                   default=NEVER)

    def handle_timer(self, now: float) -> None:
        """Choose held UDP candidates whose grace ran out; end the connects whose deadline passed."""
        for record in [r for r in self._connects.values() if r.held is not None and r.hold_until <= now]:
            held, record.held, record.hold_until = record.held, None, NEVER
            assert held is not None
            if held.id in self._core.conns:
                self._choose(held, now)
        for record in [r for r in self._connects.values() if r.relay_at <= now]:
            self._open_circuits(record, now)
        for record in [r for r in self._connects.values() if r.deadline <= now]:
            self._end(record)

    def on_secured(self, conn: Conn) -> None:
        """Our candidate finished its secure handshake: present the peer's token."""
        core = self._core
        record = self._connects.get(conn.connect_for) if conn.connect_for is not None else None
        if record is None:
            core.close(conn, flush=False)  # the connect ended meanwhile
            return
        core.move(conn, Decision.SECURED_CONNECT)
        core.send_control(conn, ConnectRequest(record.their_token))

    def on_request(self, conn: Conn, request: ConnectRequest, now: float) -> None:
        """A candidate got a ConnectRequest (it is in JUDGING_CONNECT): the peer's dial, or the reply to ours."""
        self._judge(conn, request.token, now)

    def _judge(self, conn: Conn, token: bytes, now: float) -> None:
        core, peers = self._core, self._peers
        assert conn.peer_id is not None
        if conn.connect_for is not None and conn.peer_id != conn.connect_for:
            self._refuse(conn, "peer_id_mismatch")  # a punched stream that someone else answered
            return
        record = self._connects.get(conn.peer_id)
        if not core.may_connect(conn.remote.host):
            self._refuse(conn, "not whitelisted")  # a punched stream from a learned address, or a dial to us
            return
        if conn.role is Role.RESPONDER:
            if core.is_banned(conn.peer_id, conn.remote):
                self._refuse(conn, "banned")
                return
            if record is None and conn.peer_id in peers.table:
                self._refuse(conn)  # a late candidate of a connect that already succeeded
                return
            if record is None:
                # The peer called connect() a little before us: hold the candidate until we do
                # (or its handshake deadline passes).
                core.move(conn, Decision.PARK)
                conn.connect_token = token
                return
            if token != record.our_token:
                self._refuse(conn, "wrong connect token")
                return
            core.send_control(conn, ConnectRequest(record.our_token))  # accepted: say so
        elif record is None and not (conn.peer_id in peers.table and core.id < conn.peer_id):
            # Our connect ended (the peer came through another connection) and we would not be
            # the one choosing. If we are the smaller side, a ChooseConnection may follow this
            # reply: wait for it, and let the duplicate rule settle which connection stays.
            self._refuse(conn)
            return
        if core.id > conn.peer_id:  # PROTOCOL.md §7: the greater PeerId chooses, the first candidate
            if conn.peer_id in peers.table and not self._upgrades(conn, record):
                core.move(conn, Decision.REFUSE)
                core.close(conn, flush=True)  # a later candidate: the chosen one already carries the peer
                return
            if (record is not None and conn.circuit is None and conn.remote.transport == "udp"
                    and self._tcp_may_win(record)):
                core.move(conn, Decision.HOLD)
                if record.held is None:
                    record.held, record.hold_until = conn, now + TCP_GRACE
                return
            self._choose(conn, now)
        else:
            core.move(conn, Decision.AWAIT_CHOICE)

    def _choose(self, conn: Conn, now: float) -> None:
        core = self._core
        core.move(conn, Decision.CHOOSE)
        core.send_control(conn, ChooseConnection())
        self._peers.establish(conn, Origin.CONNECT, now)

    def _upgrades(self, conn: Conn, record: Connect | None) -> bool:
        """Whether ``conn`` is a direct candidate of an upgrade whose peer is still relayed."""
        peer = self._peers.table.get(conn.peer_id) if conn.peer_id is not None else None
        return (record is not None and record.upgrade and conn.circuit is None and peer is not None
                and peer.conn is not None and peer.conn.circuit is not None)

    def _tcp_may_win(self, record: Connect) -> bool:
        """Whether a TCP candidate of ``record`` is up and on its way (so a ready UDP one should wait).

        Only a TCP connection that is already up counts.  A TCP candidate that
        can work (a dial to a listener, a simultaneous open) is up one round
        trip after both sides started, well before a UDP candidate (punch,
        rUDP handshake, secure handshake, exchange) is ready.  SYNs still
        unanswered then were lost, which costs a retransmission of a second
        or more, longer than the grace, or were dropped by a NAT that cannot
        be punched (a symmetric one): waiting for them would only delay every
        connect to such a peer by the whole grace (bench/nat.py measured it).
        """
        peer_id = record.peer_id
        return any(
            c.remote.transport == "tcp" and c.circuit is None and c.connected
            and c.state is not ExchangeState.ESTABLISHED
            and (c.connect_for == peer_id or (c.peer_id == peer_id and c.state in _CANDIDATE_STATES))
            for c in self._core.conns.values())

    def _refuse(self, conn: Conn, reason: str | None = None) -> None:
        """End a candidate we do not want: as a failure with ``reason``, or quietly."""
        self._core.move(conn, Decision.REFUSE)
        if reason is None:
            self._core.close(conn, flush=False)
        else:
            self._core.refused += 1
            self._core.fail_conn(conn, reason)

    def _close_candidates(self, peer_id: PeerId, keep: Conn | None, chooser: bool = True) -> None:
        core = self._core
        for conn in list(core.conns.values()):
            # Only connect candidates: a bootstrap connection of the same peer is settled by the
            # duplicate rule, and closing it here would cut the peer's own bootstrap short.
            if conn is not keep and conn.state is not ExchangeState.ESTABLISHED and (conn.connect_for == peer_id or (
                    conn.peer_id == peer_id and conn.state in _CANDIDATE_STATES)) and (
                    chooser or conn.state is ExchangeState.AWAIT_LOCAL_CONNECT):
                core.close(conn, flush=False)

    def _on_established(self, conn: Conn, peer_id: PeerId) -> None:
        record = self._connects.get(peer_id)
        if record is not None and not (record.upgrade and conn.circuit is not None):
            del self._connects[peer_id]
            self._punching.stop(peer_id, self._core.now)
            # Only the chooser may drop candidates the peer may have accepted (see the module doc).
            self._close_candidates(peer_id, keep=conn, chooser=self._core.id > peer_id)
            if not record.upgrade:
                self._core.events.append(ConnectFinished(peer_id, True))

    def _on_conn_failed(self, conn: Conn, reason: str, established: bool) -> None:
        record = self._connects.get(conn.connect_for or conn.peer_id)  # type: ignore[arg-type]
        if record is None:
            return
        if record.held is conn:
            record.held, record.hold_until = None, NEVER
        if conn.connect_for is not None and conn.via != "tcp-punch":  # punching words its own failures
            direct = conn.via == conn.remote.transport
            record.failures[str(conn.remote) if direct else f"{conn.via} {conn.remote}"] = reason

    def _open_circuits(self, record: Connect, now: float) -> None:
        """The grace is over: open a circuit through each relay of ``record`` we can use."""
        record.relay_at = NEVER
        if record.peer_id in self._peers.table:
            return
        for relay in record.relays:
            conn = self._circuits.dial(relay, record.peer_id, now)
            if conn is None:
                record.failures[f"relay {relay}"] = "not connected to this relay, or it does not relay for us"
                continue
            conn.connect_for = record.peer_id
            record.dials.add(conn.id)

    def _end(self, record: Connect) -> None:
        if self._connects.pop(record.peer_id, None) is None:
            return
        self._punching.stop(record.peer_id, self._core.now, failed=True)
        self._close_candidates(record.peer_id, keep=None)
        failures = dict(record.failures)
        failures.setdefault("timeout", "no candidate connected in time")
        if record.upgrade:
            log.debug("no direct connection to relayed peer %s yet: %s", record.peer_id, failures)
            return
        self._core.events.append(ConnectFinished(record.peer_id, False, tuple(failures.items())))
