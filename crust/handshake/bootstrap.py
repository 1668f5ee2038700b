"""The responder's side of the bootstrap exchange: grant or deny (PROTOCOL.md §6.3).

A pure decision over what the engine knows; the engine sends the answer.
The checks run in the original's order, so the reason a peer hears is the
first rule it broke.  Network name was already settled by the secure
handshake (it is in the Noise prologue), and the external-reachability
check of a Node comes with the bootstrap cache.
"""

from __future__ import annotations

from collections.abc import Collection

from ..ids import CrustUser
from ..wire.messages import BootstrapRequest, DenyReason

__all__ = ["judge_bootstrap"]


def judge_bootstrap(
    request: BootstrapRequest,
    *,
    remote_ip: str,
    accepting: bool,
    node_whitelist: Collection[str] | None,
    client_whitelist: Collection[str] | None,
    is_new_peer: bool,
    peer_count: int,
    max_peers: int,
) -> DenyReason | None:
    """Why ``request`` from ``remote_ip`` must be denied, or ``None`` to grant it."""
    if not accepting:
        return DenyReason.NOT_ACCEPTING
    if request.user is CrustUser.CLIENT:
        if client_whitelist is not None and remote_ip not in client_whitelist:
            return DenyReason.CLIENT_NOT_WHITELISTED
    elif node_whitelist is not None and remote_ip not in node_whitelist:
        return DenyReason.NODE_NOT_WHITELISTED
    if is_new_peer and peer_count >= max_peers:
        return DenyReason.TOO_MANY_PEERS
    return None
