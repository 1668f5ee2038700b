"""Where a relay record on a peer link goes: our end of a circuit, a circuit we relay, or an upgrade.

A peer link carries relay records for two roles at once (docs/protocol.md
§15.5): circuits we are an end of (:class:`~crust.engine.circuits.Circuits`)
and circuits we forward for others (:class:`~crust.engine.relay.Relaying`).
Circuit numbers are per link and split by parity, so ``Circuits.owns`` tells
the two apart; the records without a circuit number go to the one concern
that takes them.
"""

from __future__ import annotations

from ..wire.messages import (
    Message, RelayAck, RelayClose, RelayConnect, RelayData, RelayIncoming, RelayOffer, UpgradeOffer,
)
from .circuits import Circuits
from .peers import Peers
from .records import Conn
from .relay import Relaying
from .upgrade import Upgrades

__all__ = ["RELAY_MESSAGES", "RelayRouter"]

RELAY_MESSAGES = frozenset({RelayData, RelayAck, RelayClose, RelayConnect, RelayIncoming, RelayOffer, UpgradeOffer})


class RelayRouter:
    """Hands each relay record of an established peer link to the concern it is for."""

    __slots__ = ("_circuits", "_relaying", "_peers", "_upgrades")

    def __init__(self, circuits: Circuits, relaying: Relaying, peers: Peers, upgrades: Upgrades) -> None:
        self._circuits = circuits
        self._relaying = relaying
        self._peers = peers
        self._upgrades = upgrades

    def route(self, conn: Conn, message: Message, now: float) -> None:
        """Deliver ``message`` (a type in :data:`RELAY_MESSAGES`) that arrived on ``conn``."""
        circuits, relaying = self._circuits, self._relaying
        if isinstance(message, RelayData):
            if circuits.owns(conn, message.circuit):
                circuits.on_data(conn, message, now)
            else:
                relaying.on_data(conn, message, now)
        elif isinstance(message, RelayAck):
            if circuits.owns(conn, message.circuit):
                circuits.on_ack(conn, message, now)
            else:
                relaying.on_ack(conn, message, now)
        elif isinstance(message, RelayClose):
            if circuits.owns(conn, message.circuit):
                circuits.on_close(conn, message)
            else:
                relaying.on_close(conn, message, now)
        elif isinstance(message, RelayConnect):
            relaying.on_connect(conn, message, now)
        elif isinstance(message, RelayIncoming):
            circuits.on_incoming(conn, message, now)
        elif isinstance(message, RelayOffer):
            peer = self._peers.of(conn)
            if peer is not None:
                peer.relays_for_us = conn.circuit is None
        elif isinstance(message, UpgradeOffer):
            self._upgrades.on_offer(conn, message, now)
