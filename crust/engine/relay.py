"""Relaying: forwarding opaque circuits between two of our peers (``Config.relay``, PROTOCOL.md §15.5).

Theory of operation.  A node with ``relay`` on that accepts connections (it has
listeners: peers can reach it) sends every peer it grants or is granted a
``RelayOffer``.  A peer then asks ``RelayConnect(n, target)``; if the target is
a peer of ours (over a direct connection) and the limits allow, we number a
circuit ``m`` on the target's connection, tell it ``RelayIncoming(m, source)``
and from then on forward ``RelayData`` between ``n`` and ``m`` both ways,
byte for byte, and ``RelayAck`` back.  We never look inside: the two ends run
their own secure handshake through us (:mod:`crust.engine.circuits`).

Limits, each with a refusal the asker sees (``RelayClose`` with a reason):

* ``relay_max_circuits`` circuits at once in all, and a quarter of that (at
  least one) opened by any one peer;
* ``relay_max_bytes_per_s`` per circuit, both directions together (a token
  bucket of a tenth of a second); bytes over the rate wait here;
* what waits here is bounded by the ends' window: an end may have at most
  ``RELAY_WINDOW`` (plus one chunk) forwarded and not acknowledged by the
  other end, and an end may only acknowledge what we already passed on to it;
  breaking either ends the circuit as a flood.  So a circuit holds at most
  about twice the window here, whatever its ends do, and we write to an end
  only while its connection has room (``WRITE_WINDOW``), as for our own
  messages.

A circuit ends when either end closes it, either connection is lost (the
other end hears ``RelayClose(LOST)``) or the node closes.
"""

from __future__ import annotations

import logging
from collections import deque

from ..channel import MAX_FRAME_PLAINTEXT
from ..errors import RemoteProtocolError
from ..events import RelayStats
from ..ids import ConnId, PeerId
from ..wire.messages import (
    RelayAck, RelayClose, RelayCloseReason, RelayConnect, RelayData, RelayIncoming, RelayOffer, encode_relay_data,
)
from .circuits import RELAY_CHUNK, RELAY_WINDOW
from .core import Core
from .peers import WRITE_WINDOW, Peers
from .records import NEVER, Conn

__all__ = ["Relaying", "BURST_SECONDS"]

log = logging.getLogger("crust")

BURST_SECONDS = 0.1  # a circuit's token bucket holds this many seconds of its rate
_WINDOW_LIMIT = RELAY_WINDOW + RELAY_CHUNK  # what an end may have unacknowledged here (the window, plus a chunk)


class _Leg:
    """One side of a relayed circuit: a peer's connection, the circuit's number on it, what waits for it."""

    __slots__ = ("conn", "number", "peer", "other", "relayed", "queue", "queued", "unacked", "written", "closing",
                 "wake")

    def __init__(self, conn: Conn, number: int, peer: PeerId, relayed: _Relayed) -> None:
        self.conn = conn
        self.number = number
        self.peer = peer
        self.other: _Leg = self
        self.relayed = relayed
        self.queue: deque[bytes] = deque()  # bytes from the other end, waiting to be written to this one
        self.queued = 0
        self.unacked = 0  # bytes this end sent us that the other end has not acknowledged
        self.written = 0  # bytes written to this end that it has not acknowledged
        self.closing: RelayCloseReason | None = None  # close this leg once its queue is written
        self.wake = NEVER  # when the circuit's bucket has room again for what waits here


class _Relayed:
    """One circuit: its two legs and its token bucket."""

    __slots__ = ("source", "tokens", "stamp", "last")

    def __init__(self, source: PeerId, tokens: float, now: float) -> None:
        self.source = source
        self.tokens = tokens
        self.stamp = now
        self.last: _Leg | None = None  # the leg that wrote the last frame: the other one goes first next


class _Counters:
    """What we relayed, as :class:`crust.events.RelayStats` reports it."""

    __slots__ = ("circuits", "opened", "refused", "bytes_relayed", "chunks_relayed")

    def __init__(self) -> None:
        self.circuits = 0
        self.opened = 0
        self.refused: dict[str, int] = {}
        self.bytes_relayed = 0
        self.chunks_relayed = 0

    def snapshot(self) -> RelayStats:
        """The counters now, frozen."""
        return RelayStats(self.circuits, self.opened, tuple(sorted(self.refused.items())), self.bytes_relayed,
                          self.chunks_relayed)


class Relaying:
    """The circuits we relay, by (peer connection, circuit number on it)."""

    def __init__(self, core: Core, peers: Peers) -> None:
        self._core = core
        self._peers = peers
        self._legs: dict[tuple[ConnId, int], _Leg] = {}
        self._by_source: dict[PeerId, int] = {}
        self._offered: set[PeerId] = set()
        self.waiting: set[_Leg] = set()  # legs with bytes queued: written as tokens and room allow (public: see sent)
        self.stats = _Counters()
        core.conn_forgotten.append(self._on_forgotten)
        peers.established.append(lambda conn, peer_id: self.offer())

    # -- offering -------------------------------------------------------------------------

    @property
    def offering(self) -> bool:
        """Whether we relay: ``Config.relay`` is on and we accept connections (peers can reach us)."""
        return self._core.config.relay and bool(self._core.listeners)

    def offer(self) -> None:
        """Tell every directly connected peer not told yet that we relay for it."""
        if not self.offering:
            return
        for peer in self._peers.table.values():
            conn = peer.conn
            if peer.id not in self._offered and conn is not None and conn.circuit is None:
                self._offered.add(peer.id)
                self._core.send_control(conn, RelayOffer())

    # -- requests -------------------------------------------------------------------------

    def on_connect(self, conn: Conn, request: RelayConnect, now: float) -> None:
        """A peer asks for a circuit to ``request.target``.  Raises RemoteProtocolError (a flood, a reused number)."""
        core, peers = self._core, self._peers
        source = peers.of(conn)
        if source is None:
            return  # a retiring duplicate: the peer asks again on its survivor
        peers.count_request(source, "RelayConnect", now)
        if (conn.id, request.circuit) in self._legs:
            raise RemoteProtocolError(f"RelayConnect reuses circuit number {request.circuit}")
        cfg = core.config
        target = peers.table.get(request.target)
        reason: RelayCloseReason | None = None
        if not self.offering or conn.circuit is not None:
            reason = RelayCloseReason.NOT_RELAYING
        elif (target is None or target.conn is None or target.conn.circuit is not None
              or target.id == source.id or core.is_banned(target.id, None)):
            reason = RelayCloseReason.NO_SUCH_PEER
        elif (self.stats.circuits >= cfg.relay_max_circuits
              or self._by_source.get(source.id, 0) >= max(1, cfg.relay_max_circuits // 4)):
            reason = RelayCloseReason.TOO_MANY_CIRCUITS
        if reason is not None:
            self.stats.refused[reason.name.lower()] = self.stats.refused.get(reason.name.lower(), 0) + 1
            log.info("refused a relay circuit from %s: %s", source.id, reason.name.lower().replace("_", " "))
            core.send_control(conn, RelayClose(request.circuit, reason))
            return
        assert target is not None and target.conn is not None
        relayed = _Relayed(source.id, cfg.relay_max_bytes_per_s * BURST_SECONDS, now)
        near = _Leg(conn, request.circuit, source.id, relayed)
        far = _Leg(target.conn, core.new_circuit_number(target.id), target.id, relayed)
        near.other, far.other = far, near
        self._legs[(conn.id, near.number)] = near
        self._legs[(far.conn.id, far.number)] = far
        self._by_source[source.id] = self._by_source.get(source.id, 0) + 1
        self.stats.circuits += 1
        self.stats.opened += 1
        core.send_control(far.conn, RelayIncoming(far.number, source.id))

    def on_data(self, conn: Conn, data: RelayData, now: float) -> None:
        """Bytes from one end: queued for the other, written as the rate and its connection allow."""
        leg = self._legs.get((conn.id, data.circuit))
        if leg is None:
            return  # a circuit that ended: late bytes are dropped
        size = len(data.chunk)
        if leg.unacked + size > _WINDOW_LIMIT:
            self._end(leg, RelayCloseReason.FLOOD, f"{leg.peer} sent past its window")
            return
        leg.unacked += size
        out = leg.other
        out.queue.append(data.chunk)
        out.queued += size
        self.stats.bytes_relayed += size
        self.stats.chunks_relayed += 1
        self._drain(out, now)

    def on_ack(self, conn: Conn, ack: RelayAck, now: float) -> None:
        """An end took bytes we wrote to it: pass the acknowledgement on to the other end."""
        leg = self._legs.get((conn.id, ack.circuit))
        if leg is None:
            return
        if not 0 < ack.nbytes <= leg.written:
            self._end(leg, RelayCloseReason.FLOOD, f"{leg.peer} acknowledged bytes it was never sent")
            return
        leg.written -= ack.nbytes
        source = leg.other
        source.unacked -= ack.nbytes
        if source.conn.id in self._core.conns:
            self._core.send_control(source.conn, RelayAck(source.number, ack.nbytes))

    def on_close(self, conn: Conn, close: RelayClose, now: float) -> None:
        """An end closed its circuit: the other end hears so after the bytes still waiting for it."""
        leg = self._legs.get((conn.id, close.circuit))
        if leg is None:
            return
        self._forget(leg)
        other = leg.other
        other.closing = close.reason if close.reason is RelayCloseReason.CLOSED else RelayCloseReason.REFUSED
        self._drain(other, now)

    # -- writing --------------------------------------------------------------------------

    def sent(self, conn: Conn, now: float) -> None:
        """``conn`` wrote bytes to the kernel: circuits waiting for room on it may go on.

        The engine calls this only while some leg waits (:attr:`waiting`): every write
        completion of every connection passes there.
        """
        for leg in [leg for leg in self.waiting if leg.conn is conn]:
            self._drain(leg, now)

    def next_timer(self) -> float:
        """When the earliest waiting circuit's bucket has room again (``NEVER`` if none)."""
        return min(leg.wake for leg in self.waiting) if self.waiting else NEVER

    def handle_timer(self, now: float) -> None:
        """Write what waited for tokens."""
        for leg in [leg for leg in self.waiting if leg.wake <= now]:
            self._drain(leg, now)

    def _drain(self, leg: _Leg, now: float) -> None:
        """Write what waits on ``leg``'s circuit while its rate and the connections' room allow.

        Both directions share the circuit's bucket, so they take turns a frame
        at a time: a direction whose bytes keep arriving must not starve the
        other one, which waits on its timer.
        """
        core = self._core
        relayed = leg.relayed
        rate = core.config.relay_max_bytes_per_s
        relayed.tokens = min(rate * BURST_SECONDS, relayed.tokens + max(0.0, now - relayed.stamp) * rate)
        relayed.stamp = max(relayed.stamp, now)
        first, second = (leg.other, leg) if relayed.last is leg else (leg, leg.other)
        sides = [side for side in (first, second) if self._writable(side)]
        moved = True
        while moved and relayed.tokens > 0:
            moved = False
            for side in sides:
                if side.queue and relayed.tokens > 0 and side.conn.unsent < WRITE_WINDOW:
                    self._write_frame(side)
                    moved = True
        for side in sides:
            self._settle(side, now)

    def _writable(self, leg: _Leg) -> bool:
        """Whether ``leg`` is still relayed (its tail included) and its connection is open."""
        conn = leg.conn
        return (conn.id, leg.number) in self._legs and conn.id in self._core.conns and conn.channel is not None

    def _write_frame(self, leg: _Leg) -> None:
        """One frame of ``leg``'s queue (two chunks at most), paid from the circuit's bucket."""
        conn, queue, relayed = leg.conn, leg.queue, leg.relayed
        assert conn.channel is not None
        records: list[bytes | memoryview] = []
        size = 0
        while queue and relayed.tokens > 0 and (not records or size + len(queue[0]) + 9 <= MAX_FRAME_PLAINTEXT):
            chunk = queue.popleft()
            leg.queued -= len(chunk)
            leg.written += len(chunk)
            relayed.tokens -= len(chunk)
            size += len(chunk) + 9
            records.append(encode_relay_data(leg.number, chunk))
        relayed.last = leg
        self._core.write(conn, conn.channel.seal(records))

    def _settle(self, leg: _Leg, now: float) -> None:
        """After a drain: wait for tokens or room if bytes remain; else close a finished tail."""
        if leg.queue:
            self.waiting.add(leg)
            # Out of tokens: wake when the bucket is positive again; out of room: ``sent`` wakes us.
            tokens, rate = leg.relayed.tokens, self._core.config.relay_max_bytes_per_s
            leg.wake = now + (-tokens) / rate + 1e-6 if tokens <= 0 else NEVER
            return
        self.waiting.discard(leg)
        if leg.closing is not None:
            self._core.send_control(leg.conn, RelayClose(leg.number, leg.closing))
            self._legs.pop((leg.conn.id, leg.number), None)

    # -- ending ---------------------------------------------------------------------------

    def _end(self, leg: _Leg, reason: RelayCloseReason, why: str) -> None:
        """End ``leg``'s circuit at once: both ends hear ``reason``."""
        log.info("relay circuit ended: %s", why)
        self._forget(leg)
        for side in (leg, leg.other):
            self._legs.pop((side.conn.id, side.number), None)
            self.waiting.discard(side)
            if side.conn.id in self._core.conns:
                self._core.send_control(side.conn, RelayClose(side.number, reason))

    def _forget(self, leg: _Leg) -> None:
        """Take ``leg``'s circuit off the counts (its legs stay until their tails are written)."""
        if self._legs.pop((leg.conn.id, leg.number), None) is None:
            return
        self.waiting.discard(leg)
        other_key = (leg.other.conn.id, leg.other.number)
        if other_key not in self._legs:
            return  # the other leg was forgotten first: the circuit was already counted off
        source = leg.relayed.source
        self._by_source[source] -= 1
        if not self._by_source[source]:
            del self._by_source[source]
        self.stats.circuits -= 1

    def _on_forgotten(self, conn: Conn) -> None:
        if conn.peer_id is not None and (peer := self._peers.table.get(conn.peer_id)) is not None and peer.conn is conn:
            self._offered.discard(conn.peer_id)  # its next connection hears the offer again
        for key in [key for key in self._legs if key[0] == conn.id]:
            leg = self._legs.get(key)
            if leg is None:
                continue
            self._forget(leg)
            other = leg.other
            other.queue.clear()
            other.closing = RelayCloseReason.LOST
            self._drain(other, self._core.now)
