"""Events: what happened, flowing up from the engine to the user (past tense).

Each is a frozen dataclass.  The dispatcher turns them into calls of the
user's callbacks (``on_new_peer``, ``on_message``, ``on_lost``, ...).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, cast

from .ids import Contact, CrustUser, Endpoint, PeerId

__all__ = [
    "Origin",
    "PeerInfo",
    "Event",
    "PeerConnected",
    "MessageReceived",
    "PeerLost",
    "BootstrapFinished",
    "SendDropped",
    "Misbehaved",
    "ContactsLearned",
    "ConnectFinished",
    "ListenersChanged",
]


class Origin(str, enum.Enum):
    """How a connection to a peer came about; equal to its plain string (``"connect"``...)."""

    BOOTSTRAP_CONNECT = "bootstrap_connect"  # we bootstrapped off the peer
    BOOTSTRAP_ACCEPT = "bootstrap_accept"  # the peer bootstrapped off us
    CONNECT = "connect"  # both called connect() with each other's connection info

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """A snapshot of one connected peer.

    Attributes:
        id: the peer's PeerId (proved by the secure handshake).
        addr: the remote endpoint of the connection.
        transport: ``"tcp"``, ``"udp"`` or ``"relay"``.
        user: the role the peer took (``CrustUser.NODE`` unless it bootstrapped off us as a Client).
        origin: ``"bootstrap_connect"``, ``"bootstrap_accept"`` or ``"connect"``.
        rtt: smoothed round-trip time in seconds, ``None`` until measured.
        bytes_sent: bytes written to the connection (after encryption).
        bytes_received: bytes read from it.
    """

    id: PeerId
    addr: Endpoint
    transport: str
    user: CrustUser
    origin: Origin
    rtt: float | None = None
    bytes_sent: int = 0
    bytes_received: int = 0


@dataclass(frozen=True, slots=True)
class RelayStats:
    """What this node relayed for others (``Service.relay_stats()``): counts and sizes, never content.

    Attributes:
        circuits: circuits open now.
        opened: circuits opened since the start.
        refused: circuits refused, by reason (``"too_many_circuits"``, ``"no_such_peer"``, ...).
        bytes_relayed: bytes forwarded (the ends' ciphertext).
        chunks_relayed: ``RelayData`` records forwarded.
    """

    circuits: int = 0
    opened: int = 0
    refused: tuple[tuple[str, int], ...] = ()
    bytes_relayed: int = 0
    chunks_relayed: int = 0


class Event:
    """Base class of everything the engine reports upward."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class PeerConnected(Event):
    """A connection is up and authenticated."""

    info: PeerInfo


@dataclass(frozen=True, slots=True, init=False)
class MessageReceived(Event):
    """A whole application message arrived from ``peer_id``."""

    peer_id: PeerId
    data: bytes

    def __init__(self, peer_id: PeerId, data: bytes) -> None:
        # One per message received, so made cheap: a frozen dataclass's own __init__ stores
        # each field through object.__setattr__ (a global and an attribute lookup, then a
        # call); the slots' own setters do the same store in about half the time.
        _set_peer_id(self, peer_id)
        _set_data(self, data)


# The member descriptors of MessageReceived's slots (the class dataclass made, with its slots).
_set_peer_id = cast(Any, MessageReceived).peer_id.__set__
_set_data = cast(Any, MessageReceived).data.__set__


@dataclass(frozen=True, slots=True)
class PeerLost(Event):
    """A connected peer is gone; ``reason`` says why in a few words."""

    peer_id: PeerId
    reason: str


@dataclass(frozen=True, slots=True)
class BootstrapFinished(Event):
    """A bootstrap run ended: with ``peer_id`` on success, else ``None``; ``failures`` names each contact that failed."""

    run: int
    peer_id: PeerId | None
    failures: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class SendDropped(Event):
    """``count`` queued messages of droppable ``priority`` to ``peer_id`` were discarded."""

    peer_id: PeerId
    priority: int
    count: int


@dataclass(frozen=True, slots=True)
class ConnectFinished(Event):
    """A ``connect()`` to ``peer_id`` ended: connected, or not (``failures`` per candidate)."""

    peer_id: PeerId
    connected: bool
    failures: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ContactsLearned(Event):
    """``peer_id`` told us about other peers (peer exchange): hints for later bootstraps."""

    peer_id: PeerId
    contacts: tuple[Contact, ...]


@dataclass(frozen=True, slots=True)
class Misbehaved(Event):
    """``peer_id`` broke the protocol (and has been dropped); ``reason`` says how."""

    peer_id: PeerId
    reason: str


@dataclass(frozen=True, slots=True)
class ListenersChanged(Event):
    """What we announce as our listeners changed (an external endpoint was learnt or mapped)."""

    endpoints: tuple[Endpoint, ...]
