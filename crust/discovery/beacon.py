"""LAN beacons (PROTOCOL.md §9): the codec, the seeker and the responder, all sans-IO.

Theory of operation
-------------------
A *seeker* wants contacts on its LAN.  It sends ``Seek(nonce, name_hash)`` to
every target (by default each IPv4 interface's broadcast address, chosen by
the service) on ``service_discovery_port``.  UDP loses datagrams, so the Seek
is sent in ``retries`` rounds spread over the first half of the discovery
window (``0, window/4, window/2`` for three rounds), leaving the second half
for the last replies to arrive.  The window ends at ``start + window``.

A *responder* (a Service with discovery listening on) answers a Seek of its
own network with ``Reply(nonce, name_hash, peer_id, listeners)``, sent to the
Seek's source address only.  The seeker keeps a Reply only if it carries its
nonce and network, arrives within the window and names a PeerId it has not
seen yet; everything else is counted and dropped.  Unspecified listener hosts
(``0.0.0.0``, ``::``) are replaced by the address the Reply came from.

Nothing here is secret or trusted: a Reply is only a hint of where to dial,
and the secure handshake decides who answers there.  Malformed datagrams are
counted and dropped; :func:`decode_beacon` raises ``RemoteProtocolError`` and
nothing else for any input.

Wire format (big-endian, one datagram, at most ``MAX_DATAGRAM`` bytes)::

    magic  b"\\xc3CRDS" ‖ u8 version (1) ‖ u8 kind ‖ body
    Seek  (kind 1): nonce[16] ‖ name_hash[32]
    Reply (kind 2): nonce[16] ‖ name_hash[32] ‖ peer_id[32] ‖ u8 count (≤ 16) ‖ endpoint × count

Endpoints use :meth:`crust.wire.buffer.Buffer.push_endpoint`'s encoding.
Trailing bytes, an unknown version or kind are malformed.  The machines do no
I/O and read no clock: the caller passes ``now`` (seconds, any monotonic
origin) and carries out what they return.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Sequence

from ..errors import LocalProtocolError, RemoteProtocolError
from ..ids import NAME_HASH_SIZE, Endpoint, PeerId, ip_endpoints, is_ip_literal
from ..wire.buffer import Buffer

__all__ = [
    "MAGIC",
    "VERSION",
    "NONCE_SIZE",
    "MAX_LISTENERS",
    "MAX_DATAGRAM",
    "Seek",
    "Reply",
    "encode_seek",
    "encode_reply",
    "decode_beacon",
    "BeaconSeeker",
    "BeaconResponder",
]

MAGIC = b"\xc3CRDS"
VERSION = 1
NONCE_SIZE = 16
MAX_LISTENERS = 16
MAX_DATAGRAM = 1200  # bytes: never fragmented on any sane LAN

_KIND_SEEK = 1
_KIND_REPLY = 2
_PEER_ID_SIZE = 32

Address = tuple[str, int]


def _check_size(what: str, value: bytes, size: int) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")
    value = bytes(value)
    if len(value) != size:
        raise ValueError(f"{what} must be {size} bytes, got {len(value)}")
    return value


@dataclass(frozen=True, slots=True)
class Seek:
    """A seeker's question: who on this LAN belongs to network ``name_hash``?"""

    nonce: bytes  # 16 bytes, fresh per discovery run
    name_hash: bytes  # 32 bytes: crust.ids.name_hash(network_name)

    def __post_init__(self) -> None:
        object.__setattr__(self, "nonce", _check_size("nonce", self.nonce, NONCE_SIZE))
        object.__setattr__(self, "name_hash", _check_size("name_hash", self.name_hash, NAME_HASH_SIZE))


@dataclass(frozen=True, slots=True)
class Reply:
    """A responder's answer to ``nonce``: peer ``peer_id`` of network ``name_hash`` listens on ``listeners``."""

    nonce: bytes
    name_hash: bytes
    peer_id: PeerId
    listeners: tuple[Endpoint, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "nonce", _check_size("nonce", self.nonce, NONCE_SIZE))
        object.__setattr__(self, "name_hash", _check_size("name_hash", self.name_hash, NAME_HASH_SIZE))
        if not isinstance(self.peer_id, PeerId):
            raise TypeError(f"peer_id must be a PeerId, not {type(self.peer_id).__name__}")
        object.__setattr__(self, "listeners", ip_endpoints(self.listeners, "LAN beacon", limit=MAX_LISTENERS))


# -- codec ----------------------------------------------------------------------------------

def _header(buf: Buffer, kind: int) -> None:
    buf.push_bytes(MAGIC)
    buf.push_uint8(VERSION)
    buf.push_uint8(kind)


def encode_seek(seek: Seek) -> bytes:
    """The datagram for ``seek``."""
    buf = Buffer()
    _header(buf, _KIND_SEEK)
    buf.push_bytes(seek.nonce)
    buf.push_bytes(seek.name_hash)
    return buf.data()


def encode_reply(reply: Reply) -> bytes:
    """The datagram for ``reply``.

    Raises:
        LocalProtocolError: it would not fit ``MAX_DATAGRAM`` (cannot happen with valid listeners).
    """
    buf = Buffer()
    _header(buf, _KIND_REPLY)
    buf.push_bytes(reply.nonce)
    buf.push_bytes(reply.name_hash)
    buf.push_bytes(reply.peer_id.raw)
    buf.push_uint8(len(reply.listeners))
    for endpoint in reply.listeners:
        buf.push_endpoint(endpoint)
    data = buf.data()
    if len(data) > MAX_DATAGRAM:
        raise LocalProtocolError(f"beacon reply of {len(data)} bytes exceeds {MAX_DATAGRAM}")
    return data


def decode_beacon(data: bytes | bytearray | memoryview) -> Seek | Reply:
    """Parse one beacon datagram.

    Raises:
        RemoteProtocolError: the datagram is not a well-formed version-1 beacon
            (and nothing else, whatever the bytes).
    """
    if len(data) > MAX_DATAGRAM:
        raise RemoteProtocolError(f"beacon of {len(data)} bytes exceeds {MAX_DATAGRAM}")
    buf = Buffer(data)
    if buf.remaining < len(MAGIC) or buf.pull_bytes(len(MAGIC)) != MAGIC:
        raise RemoteProtocolError("not a crust beacon (bad magic)")
    version = buf.pull_uint8()
    if version != VERSION:
        raise RemoteProtocolError(f"unsupported beacon version {version}")
    kind = buf.pull_uint8()
    try:
        beacon: Seek | Reply
        if kind == _KIND_SEEK:
            beacon = Seek(buf.pull_bytes(NONCE_SIZE), buf.pull_bytes(NAME_HASH_SIZE))
        elif kind == _KIND_REPLY:
            nonce = buf.pull_bytes(NONCE_SIZE)
            network = buf.pull_bytes(NAME_HASH_SIZE)
            peer_id = PeerId(buf.pull_bytes(_PEER_ID_SIZE))
            count = buf.pull_uint8()
            if count > MAX_LISTENERS:
                raise RemoteProtocolError(f"beacon reply lists {count} endpoints (max {MAX_LISTENERS})")
            listeners = tuple(buf.pull_endpoint() for _ in range(count))
            beacon = Reply(nonce, network, peer_id, listeners)
        else:
            raise RemoteProtocolError(f"unknown beacon kind {kind}")
    except (ValueError, TypeError) as err:  # a value type refused what the bytes said
        raise RemoteProtocolError(f"malformed beacon: {err}") from None
    if not buf.eof():
        raise RemoteProtocolError(f"{buf.remaining} trailing bytes after beacon")
    return beacon


# -- machines -------------------------------------------------------------------------------

def _fill_unspecified(listeners: tuple[Endpoint, ...], host: str) -> tuple[Endpoint, ...]:
    """Replace ``0.0.0.0``/``::`` listener hosts by ``host`` (where the reply came from)."""
    out = []
    for endpoint in listeners:
        if ipaddress.ip_address(endpoint.host).is_unspecified:
            endpoint = Endpoint(host, endpoint.port, endpoint.transport)
        out.append(endpoint)
    return tuple(out)


class BeaconSeeker:
    """One discovery run: when to send Seeks, and which Replies are new contacts.

    Attributes:
        found: each PeerId heard so far, mapped to its first valid Reply.
        malformed: datagrams that were not beacons.
        ignored: beacons for another network or nonce, Seeks, Replies from
            ``self_id`` and Replies after the window.
        duplicates: further valid Replies from a PeerId already in ``found``.
    """

    def __init__(
        self,
        name_hash: bytes,
        targets: Sequence[Address],
        nonce: bytes,
        now: float,
        window: float = 1.0,
        retries: int = 3,
        *,
        self_id: PeerId | None = None,
    ) -> None:
        """Start a run at ``now``.

        Args:
            name_hash: our network's 32-byte name hash.
            targets: ``(ip, port)`` to send each Seek to (broadcast addresses, usually).
            nonce: 16 fresh random bytes; Replies must echo it.
            now: the current time.
            window: seconds the run lasts (``done(now)`` after that).
            retries: rounds of Seeks, ≥ 1, spread over the window's first half
                (round ``k`` at ``now + k * window / (2 * (retries - 1))``).
            self_id: our own PeerId, whose Replies (our own responder) are ignored.

        Raises:
            ValueError: a size or count out of range.
        """
        if not window > 0:
            raise ValueError(f"window must be > 0, got {window}")
        if retries < 1:
            raise ValueError(f"retries must be >= 1, got {retries}")
        self._seek = Seek(nonce, name_hash)
        self._datagram = encode_seek(self._seek)
        self._targets = tuple((str(host), int(port)) for host, port in targets)
        self._self_id = self_id
        self.start = now
        self.deadline = now + window
        step = window / (2 * (retries - 1)) if retries > 1 else 0.0
        self._rounds = [now + k * step for k in range(retries)]
        self._next_round = 0
        self.found: dict[PeerId, Reply] = {}
        self.malformed = 0
        self.ignored = 0
        self.duplicates = 0

    @property
    def nonce(self) -> bytes:
        """The nonce Replies must carry."""
        return self._seek.nonce

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Address]]:
        """The Seeks due by ``now``: one per target, at most one round however late the call."""
        if self._next_round >= len(self._rounds) or now < self._rounds[self._next_round] or self.done(now):
            return []
        while self._next_round < len(self._rounds) and self._rounds[self._next_round] <= now:
            self._next_round += 1
        return [(self._datagram, target) for target in self._targets]

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> Reply | None:
        """Judge one datagram; return it as a Reply only if it is a new contact (also added to ``found``)."""
        try:
            beacon = decode_beacon(data)
        except RemoteProtocolError:
            self.malformed += 1
            return None
        if (
            not isinstance(beacon, Reply)
            or beacon.nonce != self._seek.nonce
            or beacon.name_hash != self._seek.name_hash
            or beacon.peer_id == self._self_id
            or self.done(now)
        ):
            self.ignored += 1
            return None
        if beacon.peer_id in self.found:
            self.duplicates += 1
            return None
        if is_ip_literal(addr[0]):
            listeners = _fill_unspecified(beacon.listeners, addr[0])
            if listeners != beacon.listeners:
                beacon = Reply(beacon.nonce, beacon.name_hash, beacon.peer_id, listeners)
        self.found[beacon.peer_id] = beacon
        return beacon

    def get_timer(self) -> float:
        """When to call again: the next round of Seeks, else the end of the window."""
        if self._next_round < len(self._rounds):
            return self._rounds[self._next_round]
        return self.deadline

    def done(self, now: float) -> bool:
        """True once the window is over: ``found`` is final."""
        return now >= self.deadline


class BeaconResponder:
    """Answers Seeks of our network with a Reply naming us and our listeners.

    Attributes:
        malformed: datagrams that were not beacons.
        ignored: beacons that were not Seeks of our network.
        answered: Replies produced.
    """

    def __init__(self, name_hash: bytes, peer_id: PeerId, listeners: Sequence[Endpoint] = ()) -> None:
        """
        Args:
            name_hash: our network's 32-byte name hash.
            peer_id: our PeerId.
            listeners: where we accept connections (IP literals, at most ``MAX_LISTENERS``).

        Raises:
            ValueError / TypeError: a bad size, type or listener.
        """
        self._name_hash = _check_size("name_hash", name_hash, NAME_HASH_SIZE)
        if not isinstance(peer_id, PeerId):
            raise TypeError(f"peer_id must be a PeerId, not {type(peer_id).__name__}")
        self._peer_id = peer_id
        self._listeners = ip_endpoints(listeners, "LAN beacon", limit=MAX_LISTENERS)
        self.malformed = 0
        self.ignored = 0
        self.answered = 0

    @property
    def listeners(self) -> tuple[Endpoint, ...]:
        """The endpoints we advertise; set it when our listeners change."""
        return self._listeners

    @listeners.setter
    def listeners(self, listeners: Sequence[Endpoint]) -> None:
        self._listeners = ip_endpoints(listeners, "LAN beacon", limit=MAX_LISTENERS)

    def receive_datagram(self, data: bytes, addr: Address) -> bytes | None:
        """The Reply datagram to send back to ``addr``, or None if ``data`` deserves no answer."""
        try:
            beacon = decode_beacon(data)
        except RemoteProtocolError:
            self.malformed += 1
            return None
        if not isinstance(beacon, Seek) or beacon.name_hash != self._name_hash:
            self.ignored += 1
            return None
        self.answered += 1
        listeners = self._listeners
        if not _is_loopback(addr[0]):
            # Our loopback address would make a seeker on another host dial itself.
            listeners = tuple(ep for ep in listeners if not _is_loopback(ep.host))
        return encode_reply(Reply(beacon.nonce, self._name_hash, self._peer_id, listeners))


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
