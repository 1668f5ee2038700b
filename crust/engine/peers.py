"""Peers: the duplicate rule, parking, liveness and the flushing of outboxes into frames.

Theory of operation.  A granted connection carries a peer (``Peer``): an
outbox of queued messages, liveness and RTT.  The peer, not the connection,
owns the outbox, so when two connections to the same peer race (both sides
bootstrap off each other at once), one is dropped and the queued messages
simply flow over the survivor.  The survivor is the connection initiated by
the greater PeerId (:meth:`Peers.rank`); both sides compute the same answer
without talking about it.  The loser is *retired*: it says
``Goodbye(DUPLICATE)`` and is read until the peer agrees, so messages the
peer wrote on it before it learnt of the race are still delivered.  A peer
whose only connection was retired by the other side is *parked* for a
handshake timeout while its surviving connection finishes.

Liveness: after ``heartbeat_interval`` of outbound silence a ``Heartbeat``
goes out (its echo times the RTT, RFC 6298's smoothing); a peer silent for
``inactivity_timeout`` is lost, unless we stopped reading it ourselves.

Writes are paced by a window: at most ``WRITE_WINDOW`` bytes of sealed
frames may sit in the shell's buffer per connection; the rest waits in the
outbox, where priorities still apply.  Each frame is filled with as many
queued messages as fit, so small messages cost one AEAD call per 64 KiB.

What a peer asks of us is bounded too (:mod:`crust.engine.limits`): its
control requests (heartbeat probes, ``EchoAddrReq``, peer exchange) draw
on its :class:`~crust.engine.limits.RequestRate`, and a peer that asks too
often is dropped as a flood; our answers wait in its outbox, one per kind,
behind the same write window, so a peer that asks and never reads leaves
us a few queued records, not one per question.
"""

from __future__ import annotations

import logging
import random
from typing import Callable

from ..channel import MAX_FRAME_PLAINTEXT
from ..effects import SendCredit
from ..errors import PeerNotFound, RemoteProtocolError
from ..events import ContactsLearned, Origin, PeerConnected, PeerInfo, PeerLost, SendDropped
from ..handshake.states import ExchangeState, Role
from ..ids import ConnId, Contact, Endpoint, PeerId
from ..outbox import Outbox
from ..wire.messages import (
    EchoAddrResp, Goodbye, GoodbyeReason, Heartbeat, PeerExchangeRequest, PeerExchangeResponse, encode_record,
)
from .core import Core
from .limits import CONTROL_BURST, CONTROL_RATE, limit_granted
from .peer_exchange import MIN_ANSWER_INTERVAL, learned_contacts, sample_peers
from .records import NEVER, Conn, Peer

__all__ = ["Peers", "WRITE_WINDOW"]

log = logging.getLogger("crust")

WRITE_WINDOW = 512 * 1024  # bytes of sealed frames handed to the shell but not yet in the kernel
_RTT_GAIN = 0.125  # RFC 6298 §2.3 alpha for the smoothed RTT

EstablishedHook = Callable[[Conn, PeerId], None]

# Outbox control keys: one queued record of each kind per peer, the newest (see Outbox.push_control).
_PROBE, _ECHO, _ADDRESS, _EXCHANGE_ASK, _EXCHANGE_ANSWER = "probe", "echo", "address", "exchange_ask", "exchange_answer"


class Peers:
    """The peer table and everything that keeps a peer's connection alive and flowing."""

    def __init__(self, core: Core, rng: random.Random) -> None:
        self._core = core
        self._rng = rng  # peer-exchange sampling; tests inject a seeded one
        self.table: dict[PeerId, Peer] = {}
        self.parked: dict[PeerId, float] = {}  # peers between a duplicate's Goodbye and the survivor
        self._retiring: dict[PeerId, list[Conn]] = {}  # duplicates read until the peer agrees, by peer
        self.dirty: dict[ConnId, Conn] = {}  # conns whose outbox may fill a frame
        self.established: list[EstablishedHook] = []  # told of every connection that came to carry a peer
        self.learned: list[Callable[[list[Contact]], None]] = []  # told of contacts peer exchange brought
        core.conn_failed.append(self._on_conn_failed)

    # -- queries ----------------------------------------------------------------------

    def get(self, peer_id: PeerId) -> Peer:
        """The connected peer ``peer_id``.  Raises PeerNotFound."""
        peer = self.table.get(peer_id)
        if peer is None:
            raise PeerNotFound(f"not connected to {peer_id!r}")
        return peer

    def of(self, conn: Conn) -> Peer | None:
        """The peer ``conn`` carries, if it carries one (not a retiring duplicate)."""
        peer = self.table.get(conn.peer_id) if conn.peer_id is not None else None
        return peer if peer is not None and peer.conn is conn else None

    def info(self, peer_id: PeerId) -> PeerInfo:
        """A snapshot of one peer.  Raises PeerNotFound."""
        peer = self.get(peer_id)
        conn = peer.conn
        return PeerInfo(
            id=peer.id, addr=conn.remote if conn else Endpoint("0.0.0.0", 0),
            transport=("relay" if conn.circuit is not None else conn.remote.transport) if conn else "tcp",
            user=peer.user,
            origin=peer.origin, rtt=peer.rtt, bytes_sent=conn.bytes_out if conn else 0,
            bytes_received=conn.bytes_in if conn else 0,
        )

    def successor(self, peer_id: PeerId) -> Conn | None:
        """A connection to ``peer_id`` still on its way to being granted, if any."""
        for conn in self._core.conns.values():
            if conn.peer_id == peer_id and conn.state is not ExchangeState.ESTABLISHED and conn.probe_for is None:
                return conn
        return None

    # -- sending ----------------------------------------------------------------------

    def send(self, peer_id: PeerId, priority: int, data: bytes, now: float) -> None:
        """Queue ``data``; the frame is built at the next flush.  Raises PeerNotFound."""
        peer = self.table.get(peer_id)  # get()'s lookup, inline: this runs once per message
        if peer is None:
            raise PeerNotFound(f"not connected to {peer_id!r}")
        dropped = peer.outbox.push(priority, data, now)
        if dropped:
            core = self._core
            core.events.append(SendDropped(peer_id, priority, dropped))
            core.effects.append(SendCredit(peer_id, tuple(peer.outbox.take_dropped_bytes())))
        conn = peer.conn
        if conn is not None:
            self.dirty[conn.id] = conn
            if priority >= 2 and conn.scheduled == NEVER:
                self._core.schedule(conn, now + self._core.config.drop_after)

    def flush_dirty(self) -> None:
        """Seal what waits in every outbox that changed since the last flush."""
        if self.dirty:
            dirty, self.dirty = self.dirty, {}
            for conn in dirty.values():
                self.flush(conn)

    def flush(self, conn: Conn, window: float = WRITE_WINDOW) -> None:
        """Seal queued messages of ``conn``'s peer into frames, up to ``window`` unsent bytes."""
        core = self._core
        if conn.id not in core.conns or conn.channel is None:
            return
        peer = self.table.get(conn.peer_id)  # type: ignore[arg-type]  # of()'s test, inline: once per message
        if peer is None or peer.conn is not conn or (peer.draining is not None and not self.drained(peer)):
            return
        outbox = peer.outbox
        credit: dict[int, int] = {}
        while outbox and conn.unsent < window:
            pieces, released = outbox.fill(MAX_FRAME_PLAINTEXT)
            if not pieces:
                break  # cannot happen (a begun message always goes on), but never loop on empty frames
            core.write(conn, conn.channel.seal(pieces))
            for priority, nbytes in released:
                credit[priority] = credit.get(priority, 0) + nbytes
            conn.last_tx = core.now
        if credit:
            core.effects.append(SendCredit(peer.id, tuple(credit.items())))

    def drained(self, peer: Peer) -> bool:
        """Whether the relayed connection ``peer`` moved off has had all it sent acknowledged (then forget it)."""
        old = peer.draining
        circuits = self._core.circuits
        if old is not None and circuits is not None and circuits.unacked(old):
            return False
        peer.draining = None
        if peer.conn is not None:
            self.dirty[peer.conn.id] = peer.conn
        return True

    def sent(self, conn: Conn) -> None:
        """Bytes of ``conn`` reached the kernel: its window may admit more frames."""
        peer = self.table.get(conn.peer_id)  # type: ignore[arg-type]  # of()'s test, inline: once per message
        if peer is not None and peer.conn is conn and peer.outbox:
            self.dirty[conn.id] = conn

    # -- the duplicate rule -----------------------------------------------------------

    def wins_duplicate(self, conn: Conn) -> bool:
        """Whether ``conn`` should carry its peer, given any connection the peer already has."""
        peer = self.table.get(conn.peer_id) if conn.peer_id is not None else None
        if peer is None or peer.conn is None:
            return True
        return self.rank(conn) > self.rank(peer.conn)

    def rank(self, conn: Conn) -> tuple[bool, PeerId, bytes]:
        """A total order of the connections between two peers that both ends compute alike.

        A direct connection beats a relayed one (so a later direct connection takes
        over from a relay); then the connection initiated by the greater PeerId wins;
        between two initiated by the same side (a connect candidate and a bootstrap,
        say) the greater session id does.  Arrival order never enters into it, so
        both ends always keep the same one.
        """
        assert conn.peer_id is not None
        return (conn.circuit is None, self._core.id if conn.role is Role.INITIATOR else conn.peer_id,
                conn.session_id)

    def establish(self, conn: Conn, origin: Origin, now: float) -> None:
        """``conn`` was granted: it now carries its peer (a new one, or a duplicate's survivor)."""
        core = self._core
        peer_id = conn.peer_id
        assert peer_id is not None and conn.state is ExchangeState.ESTABLISHED
        core.pending_accepts.pop(conn.id, None)
        assert conn.channel is not None
        limit_granted(conn.channel, core.config)  # before its next frame is read: frames may come at once
        peer = self.table.get(peer_id)
        conn.last_tx = conn.last_rx = now
        if peer is not None and not self.wins_duplicate(conn):
            self._retire(conn, now)
            self._tell_established(conn, peer_id)
            return
        conn.deadline = NEVER
        if peer is None:
            cfg = core.config
            outbox = Outbox(queue_limit=cfg.send_queue_limit, drop_after=cfg.drop_after,
                            unfinished_limit=cfg.unfinished_limit)
            peer = self.table[peer_id] = Peer(peer_id, conn, outbox, origin, now)
            core.events.append(PeerConnected(self.info(peer_id)))
            if origin is Origin.BOOTSTRAP_CONNECT:
                self.ask_exchange(peer)  # the peer that let us in knows others: ask for them
        else:
            old, peer.conn = peer.conn, conn
            self.parked.pop(peer_id, None)
            peer.outbox.restart_partial()
            if old is not None:
                if old.circuit is not None:
                    peer.draining = old  # moved off a relay: its tail must arrive before anything new
                self._retire(old, now)
        self._probe(peer, conn, now)
        self.check(conn, now)
        self._tell_established(conn, peer_id)

    def ask_exchange(self, peer: Peer) -> None:
        """Ask ``peer`` for a sample of its peers (once at a time; not with ``peer_exchange`` off)."""
        if self._core.config.peer_exchange and not peer.exchange_asked and peer.conn is not None:
            peer.exchange_asked = True
            peer.outbox.push_control(_EXCHANGE_ASK, encode_record(PeerExchangeRequest()))
            self.dirty[peer.conn.id] = peer.conn

    def _tell_established(self, conn: Conn, peer_id: PeerId) -> None:
        for hook in self.established:
            hook(conn, peer_id)

    def _retire(self, conn: Conn, now: float) -> None:
        """``conn`` lost a duplicate race: say so, and read on until the peer agrees.

        It is not closed at once because the peer may have written messages on
        it before it learnt of the race; they are delivered, then its Goodbye
        (or close) ends the connection.  The deadline bounds the wait.
        """
        core = self._core
        core.send_control(conn, Goodbye(GoodbyeReason.DUPLICATE))
        conn.deadline = now + core.config.handshake_timeout
        core.schedule(conn, conn.deadline)
        assert conn.peer_id is not None
        retiring = [c for c in self._retiring.get(conn.peer_id, ()) if c.id in core.conns]
        self._retiring[conn.peer_id] = [*retiring, conn]

    # -- losing peers -----------------------------------------------------------------

    def say_goodbye(self, conn: Conn, reason: GoodbyeReason) -> None:
        """Flush everything ``send()`` accepted for ``conn``'s peer, then a Goodbye."""
        if conn.id in self._core.conns and conn.channel is not None:
            self.flush(conn, window=NEVER)
            self._core.send_control(conn, Goodbye(reason))

    def lose(self, peer_id: PeerId, reason: str, goodbye: GoodbyeReason) -> None:
        """Say Goodbye to ``peer_id``, close its connection and report it lost."""
        peer = self.table[peer_id]
        if peer.conn is not None:
            self.say_goodbye(peer.conn, goodbye)
            self._core.close(peer.conn, flush=True)
        self.drop(peer, reason)

    def drop(self, peer: Peer, reason: str) -> None:
        """Forget ``peer`` (and any duplicate still retiring) and report it lost."""
        core = self._core
        # Its connection, and retiring duplicates, which must not outlive their peer (a lookup, not a scan:
        # a hub that loses thousands of peers at once must not scan its table for each).
        for conn in (peer.conn, *self._retiring.pop(peer.id, ())):
            if conn is not None and conn.id in core.conns and conn.state is ExchangeState.ESTABLISHED:
                core.close(conn, flush=True)
        self.parked.pop(peer.id, None)
        if self.table.pop(peer.id, None) is not None:
            log.info("lost peer %r: %s", peer.id, reason)
            core.events.append(PeerLost(peer.id, reason))

    def _on_conn_failed(self, conn: Conn, reason: str, established: bool) -> None:
        peer = self.table.get(conn.peer_id) if conn.peer_id is not None else None
        if peer is not None and (peer.conn is conn or (peer.conn is None and not self.successor(peer.id))):
            self.drop(peer, reason)

    # -- liveness ---------------------------------------------------------------------

    def check(self, conn: Conn, now: float) -> None:
        """Run an established ``conn``'s deadlines (liveness, heartbeat, expiry) and schedule the next."""
        core = self._core
        peer = self.of(conn)
        if peer is None:  # retiring after a duplicate race: while the peer's tail still arrives, it may finish
            until = max(conn.deadline, conn.last_rx + core.config.handshake_timeout)
            if now >= until:
                core.close(conn, flush=False)
            else:
                core.schedule(conn, until)
            return
        cfg = core.config
        # Compare with the very sums the timer is scheduled at: `now - last >= interval` can be
        # False at `now == last + interval` (float rounding), and the timer would fire forever.
        if not conn.paused and now >= conn.last_rx + cfg.inactivity_timeout:
            self.lose(peer.id, "timed out", GoodbyeReason.CLOSED)
            return
        if now >= conn.last_tx + cfg.heartbeat_interval:
            self._probe(peer, conn, now)
        expired = peer.outbox.expire(now)
        for priority, count in expired:
            core.events.append(SendDropped(peer.id, priority, count))
        if expired:
            core.effects.append(SendCredit(peer.id, tuple(peer.outbox.take_dropped_bytes())))
        nexts = [conn.last_tx + cfg.heartbeat_interval]
        if not conn.paused:
            nexts.append(conn.last_rx + cfg.inactivity_timeout)
        expiry = peer.outbox.next_expiry()
        if expiry is not None:
            nexts.append(expiry)
        core.schedule(conn, max(min(nexts), now))

    def _probe(self, peer: Peer, conn: Conn, now: float) -> None:
        if peer.probe_sent_at is None:  # one probe in flight: its echo times the RTT
            peer.probe_seq = (peer.probe_seq + 1) & 0xFFFFFFFF
            peer.probe_sent_at = now
        peer.outbox.push_control(_PROBE, encode_record(Heartbeat(peer.probe_seq)))
        conn.last_tx = now
        self.dirty[conn.id] = conn

    def expire_parked(self, now: float) -> None:
        """Drop parked peers whose surviving connection never came."""
        for peer_id, until in list(self.parked.items()):
            if until <= now:
                del self.parked[peer_id]
                peer = self.table.get(peer_id)
                if peer is not None and peer.conn is None:
                    self.drop(peer, "closed by peer (duplicate), and no other connection came")

    def next_timer(self) -> float:
        """When the earliest parked peer expires (``NEVER`` if none)."""
        return min(self.parked.values()) if self.parked else NEVER

    # -- messages on an established connection ------------------------------------------

    def count_request(self, peer: Peer, what: str, now: float) -> None:
        """Count one control request of ``peer``.  Raises RemoteProtocolError (a flood) if it asks too often."""
        if not peer.requests.take(now):
            raise RemoteProtocolError(f"flood: control requests ({what}) over {CONTROL_BURST} at once "
                                      f"or {CONTROL_RATE:g} a second")

    def _answer(self, peer: Peer, key: str, record: bytes) -> None:
        """Queue ``record`` (replacing an unsent answer of its kind) for the next flush."""
        peer.outbox.push_control(key, record)
        if peer.conn is not None:
            self.dirty[peer.conn.id] = peer.conn

    def on_heartbeat(self, conn: Conn, beat: Heartbeat, now: float) -> None:
        """Echo a probe, or time the RTT from the echo of ours.  Raises RemoteProtocolError (a flood)."""
        peer = self.table[conn.peer_id]  # type: ignore[index]
        if not beat.echo:
            self.count_request(peer, "heartbeat probes", now)
            self._answer(peer, _ECHO, encode_record(Heartbeat(beat.seq, echo=True)))
        elif beat.seq == peer.probe_seq and peer.probe_sent_at is not None:
            sample = now - peer.probe_sent_at
            peer.rtt = sample if peer.rtt is None else peer.rtt + _RTT_GAIN * (sample - peer.rtt)
            peer.probe_sent_at = None

    def on_goodbye(self, conn: Conn, goodbye: Goodbye) -> None:
        """The peer closes ``conn``: lose it, or wait for the survivor of a duplicate race."""
        core = self._core
        peer = self.table[conn.peer_id]  # type: ignore[index]
        if peer.conn is not conn:
            core.close(conn, flush=False)  # a retired duplicate: both sides have now said so
            return
        if goodbye.reason is GoodbyeReason.DUPLICATE:
            # The peer kept another connection to us that we have not seen granted yet (it may
            # still be in its handshake, its PeerId unknown to us): wait for it, a bounded time.
            peer.conn = None
            self.parked[peer.id] = core.now + core.config.handshake_timeout
            core.close(conn, flush=False)
            return
        core.close(conn, flush=False)
        self.drop(peer, f"closed by peer ({goodbye.reason.name.lower()})")

    def on_echo_request(self, conn: Conn, now: float) -> None:
        """Tell the peer where we see it (``EchoAddrReq`` on a peer link).  Raises RemoteProtocolError (a flood)."""
        peer = self.of(conn)
        if peer is None:
            return  # a retiring duplicate: nobody asks there
        self.count_request(peer, "EchoAddrReq", now)
        self._answer(peer, _ADDRESS, encode_record(EchoAddrResp(conn.remote)))

    def on_peer_exchange(self, conn: Conn, message: PeerExchangeRequest | PeerExchangeResponse, now: float) -> None:
        """Answer a request for contacts (rate-limited), or take the contacts we asked for."""
        peer = self.of(conn)
        if peer is None:
            return  # a retiring duplicate: its peer answers on the survivor
        core = self._core
        if isinstance(message, PeerExchangeRequest):
            self.count_request(peer, "PeerExchangeRequest", now)
            # Within the interval the asker gets an empty answer, not a fresh sample.
            answer = (sample_peers(self.table.values(), peer.id, self._rng)
                      if core.config.peer_exchange and now - peer.exchange_answered_at >= MIN_ANSWER_INTERVAL
                      else PeerExchangeResponse())
            peer.exchange_answered_at = now
            self._answer(peer, _EXCHANGE_ANSWER, encode_record(answer))
            return
        if not peer.exchange_asked:
            raise RemoteProtocolError("unsolicited PeerExchangeResponse")
        peer.exchange_asked = False
        contacts = learned_contacts(message, us=core.id, banned_ids=core.banned_ids, banned_ips=core.banned_ips)
        if contacts:
            core.events.append(ContactsLearned(peer.id, tuple(contacts)))
            for hook in self.learned:
                hook(contacts)
