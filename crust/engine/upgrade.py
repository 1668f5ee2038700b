"""Upgrades: moving a relayed peer onto a direct or punched connection once one works.

Theory of operation.  A relayed connection is a fallback: the NATs between
two peers may change (a router restarts, a peer moves, UPnP comes up), and a
direct path is faster and spares the relay.  So while a peer is relayed, the
end with the greater PeerId offers an upgrade now and then: first
``UPGRADE_FIRST`` seconds after the relayed connection came up, then at
doubling intervals up to ``UPGRADE_MAX``; and either end offers at once
when where it accepts changes (a new external address, a UPnP mapping, a
listener: :meth:`Upgrades.network_changed`), at most every ``UPGRADE_FIRST``.

An offer is an ``UpgradeOffer`` carrying our fresh connection info over the
relayed connection itself, so no out-of-band swap is needed; the offerer opens
its rendezvous (:mod:`~crust.engine.rendezvous`) at once, taking the peer's
candidates that present its token, because the answer may come well after the
peer's dials (it travels behind the relay's queue).  The other end answers
with its own info and rendezvous; the answer adds its candidates to the
offerer's.  Both run every direct and punched candidate, no relays, and no
``ConnectFinished`` reaches the application.

When a candidate comes through, the duplicate rule (:meth:`Peers.rank`:
direct beats relayed) makes it the peer's connection and retires the relayed
one.  Nothing is lost, duplicated or reordered: the outbox belongs to the
peer, not the connection; what was already written to the circuit arrives
first, because each end sends nothing on the new connection until the far
end acknowledged everything it sent on the circuit (``Peer.draining``); a
message cut in two by the move is sent again whole on the new connection,
and its first half dies with the circuit.
"""

from __future__ import annotations

import logging
from typing import Callable

from ..connection_info import TOKEN_SIZE, PrivConnectionInfo, PubConnectionInfo
from ..crypto import random_token
from ..errors import RemoteProtocolError
from ..ids import PeerId
from ..wire.messages import UpgradeOffer
from .core import Core
from .peers import Peers
from .records import NEVER, Conn
from .rendezvous import Rendezvous

__all__ = ["Upgrades", "UPGRADE_FIRST", "UPGRADE_MAX", "UPGRADE_TIMEOUT"]

log = logging.getLogger("crust")

UPGRADE_FIRST = 5.0  # seconds after a relayed connection came up before the first upgrade attempt
UPGRADE_MAX = 300.0  # seconds between attempts, at most (the interval doubles from UPGRADE_FIRST)
UPGRADE_TIMEOUT = 10.0  # seconds one attempt's rendezvous may take

InfoSource = Callable[[bytes, float], PrivConnectionInfo]  # (token, now) -> our connection info


class Upgrades:
    """The relayed peers we try to move to a direct connection, and the offers in flight."""

    def __init__(self, core: Core, peers: Peers, rendezvous: Rendezvous, info: InfoSource) -> None:
        self._core = core
        self._peers = peers
        self._rendezvous = rendezvous
        self._info = info
        self._due: dict[PeerId, tuple[float, float]] = {}  # peer -> (next attempt, interval)
        self._offered: dict[PeerId, PrivConnectionInfo] = {}  # our offer, waiting for the answer
        self._last_offer: dict[PeerId, float] = {}  # when we last offered, per relayed peer
        peers.established.append(self._on_established)

    def next_timer(self) -> float:
        """When the next attempt is due (``NEVER`` if no relayed peer of ours waits for one)."""
        return min(when for when, _ in self._due.values()) if self._due else NEVER

    def handle_timer(self, now: float) -> None:
        """Offer an upgrade to every relayed peer whose turn came."""
        for peer_id, (when, interval) in list(self._due.items()):
            if when > now:
                continue
            peer = self._peers.table.get(peer_id)
            if peer is None or peer.conn is None or peer.conn.circuit is None:
                del self._due[peer_id]  # gone, or no longer relayed
                continue
            self._due[peer_id] = (now + min(2 * interval, UPGRADE_MAX), min(2 * interval, UPGRADE_MAX))
            self._offer(peer.id, peer.conn, now)

    def network_changed(self, now: float) -> None:
        """Where we accept changed: offer every relayed peer an upgrade now (unless we just did)."""
        self._last_offer = {peer_id: at for peer_id, at in self._last_offer.items() if peer_id in self._peers.table}
        for peer in self._peers.table.values():
            conn = peer.conn
            if conn is not None and conn.circuit is not None and now >= self._last_offer.get(peer.id, -NEVER) + UPGRADE_FIRST:
                self._offer(peer.id, conn, now)

    def _offer(self, peer_id: PeerId, conn: Conn, now: float) -> None:
        ours = self._offered[peer_id] = self._our_info(now)
        self._last_offer[peer_id] = now
        self._rendezvous.expect_upgrade(peer_id, ours.token, UPGRADE_TIMEOUT, now)
        self._core.send_control(conn, UpgradeOffer(ours.to_pub().to_bytes()))

    def on_offer(self, conn: Conn, offer: UpgradeOffer, now: float) -> None:
        """The relayed peer's connection info: answer with ours (unless this answers ours) and rendezvous.

        Raises:
            RemoteProtocolError: a flood, unreadable info, or info of another peer.
        """
        peer = self._peers.of(conn)
        if peer is None:
            return
        self._peers.count_request(peer, "UpgradeOffer", now)
        try:
            theirs = PubConnectionInfo.from_bytes(offer.info)
        except ValueError as exc:
            raise RemoteProtocolError(f"UpgradeOffer: {exc}") from None
        if theirs.peer_id != peer.id:
            raise RemoteProtocolError("UpgradeOffer carries another peer's connection info")
        if conn.circuit is None:
            self._offered.pop(peer.id, None)
            return  # already direct (a late answer): nothing to upgrade
        ours = self._offered.pop(peer.id, None)
        if ours is not None and self._rendezvous.extend_upgrade(
                peer.id, theirs.listeners, tcp_punch=theirs.tcp_punch, udp_punch=theirs.udp_punch,
                their_token=theirs.token, now=now):
            return  # the answer to our offer: the rendezvous we opened with it now dials the peer too
        if ours is None:  # the peer offered first: answer
            ours = self._our_info(now)
            self._core.send_control(conn, UpgradeOffer(ours.to_pub().to_bytes()))
        self._rendezvous.start(peer.id, theirs.listeners, tcp_punch=theirs.tcp_punch, udp_punch=theirs.udp_punch,
                               their_token=theirs.token, our_token=ours.token, timeout=UPGRADE_TIMEOUT,
                               upgrade=True, now=now)

    def _our_info(self, now: float) -> PrivConnectionInfo:
        return self._info(random_token(TOKEN_SIZE), now)

    def _on_established(self, conn: Conn, peer_id: PeerId) -> None:
        if self._peers.of(conn) is None:
            return  # a retired duplicate
        if conn.circuit is None:
            self._due.pop(peer_id, None)
            self._offered.pop(peer_id, None)
            self._last_offer.pop(peer_id, None)
        elif self._core.id > peer_id:  # one end offers, so the two never cross
            self._due[peer_id] = (self._core.now + UPGRADE_FIRST, UPGRADE_FIRST)
