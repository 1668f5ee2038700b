"""Service-wide counters: what ``Service.stats()`` returns, and the tally that keeps them.

The tally lives on the reactor thread and counts the events the Service
already handles on their way to the dispatcher (``Service._account``), so
counting costs a few integer additions per event and no extra hook in the
engine; :meth:`Tally.snapshot` adds the engine's view of the peers connected
now.  Everything counts from the Service's start.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from .events import BootstrapFinished, ConnectFinished, Event, MessageReceived, Misbehaved, PeerConnected, PeerInfo
from .events import PeerLost, SendDropped

__all__ = ["Stats", "Tally"]


@dataclass(frozen=True)
class Stats:
    """A snapshot of a Service's counters (``Service.stats()``); counts run from the Service's start.

    Attributes:
        peers: peers connected now.
        peers_by_transport: peers connected now per transport (``"tcp"``, ``"udp"``); only
            transports with at least one peer appear.
        bytes_sent: bytes written on the connections to the peers connected now (on the wire,
            after encryption: the sum of their ``PeerInfo.bytes_sent``).
        bytes_received: bytes read from those connections (the sum of ``PeerInfo.bytes_received``).
        messages_received: messages received from every peer so far.
        message_bytes_received: payload bytes of those messages.
        peers_connected: connections that came up so far (``on_new_peer`` events).
        peers_lost: connections that went so far (``on_lost`` events).
        messages_dropped: droppable queued messages discarded so far (the ``count`` of every
            ``on_send_dropped`` event).
        misbehaviours: peers dropped for breaking the protocol or flooding us so far
            (``on_misbehaviour`` events).
        misbehaviour_kinds: the same per kind: the reason's first word (``"flood"`` for every
            ``"flood: ..."`` reason) or the whole reason when it has no colon.
        handshakes_refused: connections we refused before they became peers: bootstrap
            requests we denied (whitelist, network, ban, reachability, capacity...), connect
            candidates we refused and inbound handshakes that failed.
        bootstraps_succeeded: bootstrap runs (``bootstrap()``, ``start_bootstrap()`` and the
            mesh's own) that got a peer.
        bootstraps_failed: bootstrap runs that ended with no peer.
        connects_succeeded: ``connect()`` / ``start_connect()`` calls that got their peer.
        connects_failed: ``connect()`` / ``start_connect()`` calls that did not.
    """

    peers: int = 0
    peers_by_transport: Mapping[str, int] = field(default_factory=dict)
    bytes_sent: int = 0
    bytes_received: int = 0
    messages_received: int = 0
    message_bytes_received: int = 0
    peers_connected: int = 0
    peers_lost: int = 0
    messages_dropped: int = 0
    misbehaviours: int = 0
    misbehaviour_kinds: Mapping[str, int] = field(default_factory=dict)
    handshakes_refused: int = 0
    bootstraps_succeeded: int = 0
    bootstraps_failed: int = 0
    connects_succeeded: int = 0
    connects_failed: int = 0


class Tally:
    """The running counts behind :class:`Stats` (reactor thread only)."""

    def __init__(self) -> None:
        self.messages_received = 0
        self.message_bytes_received = 0
        self.peers_connected = 0
        self.peers_lost = 0
        self.messages_dropped = 0
        self.misbehaviour_kinds: dict[str, int] = {}
        self.bootstraps = [0, 0]  # succeeded, failed
        self.connects = [0, 0]

    def count_messages(self, count: int, nbytes: int) -> None:
        """``count`` messages of ``nbytes`` payload bytes in all arrived (the hot path counts in bulk)."""
        self.messages_received += count
        self.message_bytes_received += nbytes

    def count(self, event: Event) -> None:
        """Count one event other than ``MessageReceived``."""
        match event:
            case PeerConnected():
                self.peers_connected += 1
            case PeerLost():
                self.peers_lost += 1
            case SendDropped(_, _, count):
                self.messages_dropped += count
            case Misbehaved(_, reason):
                kind = reason.split(":", 1)[0].strip() if ":" in reason else reason
                self.misbehaviour_kinds[kind] = self.misbehaviour_kinds.get(kind, 0) + 1
            case BootstrapFinished(_, peer_id):
                self.bootstraps[peer_id is None] += 1
            case ConnectFinished(_, connected):
                self.connects[not connected] += 1
            case MessageReceived(_, data):
                self.count_messages(1, len(data))

    def snapshot(self, peers: list[PeerInfo], handshakes_refused: int) -> Stats:
        """The counts now, with ``peers`` (the engine's connected peers) and its refusal count."""
        by_transport: dict[str, int] = {}
        for info in peers:
            by_transport[info.transport] = by_transport.get(info.transport, 0) + 1
        return Stats(
            peers=len(peers), peers_by_transport=by_transport,
            bytes_sent=sum(info.bytes_sent for info in peers), bytes_received=sum(info.bytes_received for info in peers),
            messages_received=self.messages_received, message_bytes_received=self.message_bytes_received,
            peers_connected=self.peers_connected, peers_lost=self.peers_lost, messages_dropped=self.messages_dropped,
            misbehaviours=sum(self.misbehaviour_kinds.values()), misbehaviour_kinds=dict(self.misbehaviour_kinds),
            handshakes_refused=handshakes_refused,
            bootstraps_succeeded=self.bootstraps[0], bootstraps_failed=self.bootstraps[1],
            connects_succeeded=self.connects[0], connects_failed=self.connects[1],
        )
