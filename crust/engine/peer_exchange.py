"""Peer exchange: which peers we tell others about, and what we take from their answers.

Theory of operation.  A peer that bootstrapped us in may be asked for
contacts (``PeerExchangeRequest``); the answer is a random sample of at
most ``MAX_SHARED_PEERS`` peers that are *directly reachable*: ones we
dialled ourselves (their address demonstrably accepts connections) and
Nodes that bootstrapped off us announcing listeners and not opting out.
Clients, opted-out peers and the asker itself are never shared.  What we
learn is only a hint: every learned contact carries its PeerId, so the
secure handshake decides whether it is real.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Iterable

from ..events import Origin
from ..ids import Contact, CrustUser, Endpoint, PeerId, tcp_first
from ..wire.messages import MAX_SHARED_LISTENERS, MAX_SHARED_PEERS, PeerExchangeResponse, SharedPeer
from .records import Peer

__all__ = ["shareable_listeners", "sample_peers", "learned_contacts", "MIN_ANSWER_INTERVAL"]

MIN_ANSWER_INTERVAL = 10.0  # seconds: a peer asking more often gets an empty answer


def shareable_listeners(peer: Peer) -> tuple[Endpoint, ...]:
    """Where ``peer`` accepts connections, if we may tell others; empty if not."""
    conn = peer.conn
    if conn is None or peer.user is CrustUser.CLIENT or not peer.shareable:
        return ()
    if peer.origin is Origin.BOOTSTRAP_CONNECT:
        return (conn.remote,)
    return tuple(tcp_first(conn.listeners)[:MAX_SHARED_LISTENERS])


def sample_peers(peers: Iterable[Peer], asker: PeerId, rng: random.Random) -> PeerExchangeResponse:
    """A random sample of the shareable peers other than ``asker``."""
    candidates = [(p.id, listeners) for p in peers if p.id != asker and (listeners := shareable_listeners(p))]
    chosen = rng.sample(candidates, min(len(candidates), MAX_SHARED_PEERS))
    return PeerExchangeResponse(tuple(SharedPeer(pid, listeners) for pid, listeners in chosen))


def learned_contacts(response: PeerExchangeResponse, *, us: PeerId, banned_ids: Collection[PeerId],
                     banned_ips: Collection[str]) -> list[Contact]:
    """The contacts worth trying from ``response``: never ourselves, nothing banned."""
    return [Contact(ep, shared.peer_id) for shared in response.peers
            if shared.peer_id != us and shared.peer_id not in banned_ids
            for ep in shared.listeners if ep.host not in banned_ips]
