"""Immutable value types shared by every layer: peer ids, endpoints, roles.

Nothing here does I/O; every type is hashable and safe to pass between threads.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable, NewType, Tuple, Union

__all__ = [
    "PeerId",
    "Endpoint",
    "EndpointLike",
    "CrustUser",
    "Contact",
    "ConnId",
    "NAME_HASH_SIZE",
    "name_hash",
    "is_ip_literal",
    "ip_endpoints",
]

PEER_ID_SIZE = 32  # bytes: an X25519 public key
NAME_HASH_SIZE = 32  # bytes

ConnId = NewType("ConnId", int)
"""Names one transport byte stream inside one Service (never reused in a session)."""

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")
_TRANSPORTS = ("tcp", "udp")


class PeerId(bytes):
    """A peer's public identity key (32 bytes); the only name a peer has in crust.

    Ordered by its bytes, which is how two peers agree who chooses a connection.
    It *is* those bytes (a ``bytes`` subclass): hashing, equality and ordering
    then run in C, and every message looks a PeerId up several times.
    """

    __slots__ = ()

    def __new__(cls, raw: bytes | bytearray | memoryview) -> PeerId:
        """Wrap exactly 32 bytes.

        Raises:
            TypeError: ``raw`` is not bytes-like.
            ValueError: it is not 32 bytes long.
        """
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise TypeError(f"PeerId needs bytes, not {type(raw).__name__}")
        self = super().__new__(cls, raw)
        if len(self) != PEER_ID_SIZE:
            raise ValueError(f"PeerId needs {PEER_ID_SIZE} bytes, got {len(self)}")
        return self

    @property
    def raw(self) -> bytes:
        """The 32 key bytes as a plain ``bytes``."""
        return bytes(self)

    @classmethod
    def from_str(cls, text: str) -> PeerId:
        """Parse the hex form that ``str(peer_id)`` prints.

        Raises:
            TypeError: ``text`` is not a str.
            ValueError: it is not 64 hex digits.
        """
        if not isinstance(text, str):
            raise TypeError(f"PeerId.from_str needs a str, not {type(text).__name__}")
        try:
            raw = bytes.fromhex(text.strip())
        except ValueError:
            raise ValueError(f"not a hex PeerId: {text[:80]!r}") from None
        return cls(raw)

    def __bytes__(self) -> bytes:
        return bytes(memoryview(self))

    def __str__(self) -> str:
        return self.hex()

    def __repr__(self) -> str:
        return f"PeerId({self[:4].hex()}…)"


def check_bytes(what: str, value: object, size: int | None = None) -> bytes:
    """``value`` as ``bytes``, checked to be bytes-like (and ``size`` long when given).

    Raises:
        TypeError: ``value`` is not bytes, bytearray or memoryview.
        ValueError: it is not ``size`` bytes long.
    """
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be bytes, not {type(value).__name__}")
    value = bytes(value)
    if size is not None and len(value) != size:
        raise ValueError(f"{what} must be {size} bytes, got {len(value)}")
    return value


def is_ip_literal(host: str) -> bool:
    """True when ``host`` is an IPv4 or IPv6 address rather than a name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def ip_endpoints(endpoints: object, what: str, *, limit: int | None = None, transport: str | None = None,
                 dialable: bool = False, unique: bool = False) -> tuple[Endpoint, ...]:
    """Check an endpoint list that goes on the wire, where only IP literals can be carried.

    Every message names ``what`` (e.g. ``"PubConnectionInfo tcp_punch"``, ``"beacon listeners"``).

    Args:
        endpoints: the iterable to check (a string is refused, not taken apart).
        what: the list's name in error messages.
        limit: at most this many endpoints (after dropping duplicates).
        transport: every endpoint must use it (``"tcp"`` or ``"udp"``).
        dialable: refuse port 0.
        unique: drop repeated endpoints, keeping the first.

    Returns:
        The endpoints as a tuple, in order.

    Raises:
        TypeError: not an iterable of :class:`Endpoint`.
        ValueError: a hostname, port 0 (``dialable``), the wrong transport, or too many.
    """
    if isinstance(endpoints, (str, bytes)) or not isinstance(endpoints, Iterable):
        raise TypeError(f"{what}: endpoints must be a tuple of Endpoints, not {type(endpoints).__name__}")
    out: list[Endpoint] = []
    for ep in endpoints:
        if not isinstance(ep, Endpoint):
            raise TypeError(f"{what}: endpoints must be Endpoints, not {type(ep).__name__}")
        if not is_ip_literal(ep.host):
            raise ValueError(f"{what} endpoint {ep} is a hostname; only IP addresses can be sent to peers")
        if dialable and ep.port == 0:
            raise ValueError(f"{what} endpoint {ep} has port 0, which cannot be dialled")
        if transport is not None and ep.transport != transport:
            raise ValueError(f"{what} endpoint {ep} must be a {transport.upper()} endpoint")
        out.append(ep)
    result = tuple(dict.fromkeys(out)) if unique else tuple(out)
    if limit is not None and len(result) > limit:
        raise ValueError(f"{what}: {len(result)} endpoints; at most {limit} are allowed")
    return result


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a peer can be reached: ``(host, port, transport)``.

    ``str()`` gives ``"host:port"`` for TCP (``"[v6]:port"`` for IPv6) and
    ``"udp://host:port"`` for UDP; :meth:`parse` reads both back.
    """

    host: str
    port: int
    transport: str = "tcp"

    def __post_init__(self) -> None:
        if not isinstance(self.host, str):
            raise TypeError(f"Endpoint host must be a str, not {type(self.host).__name__}")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise TypeError(f"Endpoint port must be an int, not {type(self.port).__name__}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"Endpoint port {self.port} is outside 0..65535")
        if self.transport not in _TRANSPORTS:
            raise ValueError(f"Endpoint transport must be 'tcp' or 'udp', not {self.transport!r}")
        host = self.host.strip()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            host = str(ipaddress.ip_address(host))  # canonical form, e.g. '::1'
        except ValueError:
            if not _HOSTNAME.match(host):
                raise ValueError(f"Endpoint host {self.host!r} is neither an IP address nor a hostname") from None
        object.__setattr__(self, "host", host)

    @property
    def is_ipv6(self) -> bool:
        """True for an IPv6 literal host."""
        return ":" in self.host

    def __str__(self) -> str:
        hostport = f"[{self.host}]:{self.port}" if self.is_ipv6 else f"{self.host}:{self.port}"
        return hostport if self.transport == "tcp" else f"{self.transport}://{hostport}"

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Read ``"host:port"``, ``"[v6]:port"``, optionally prefixed ``tcp://`` or ``udp://``.

        Raises:
            TypeError: ``text`` is not a str.
            ValueError: the text is not an endpoint; the message quotes it.
        """
        if not isinstance(text, str):
            raise TypeError(f"Endpoint.parse needs a str, not {type(text).__name__}")
        rest = text.strip()
        transport = "tcp"
        if "://" in rest:
            transport, rest = rest.split("://", 1)
            transport = transport.lower()
        if rest.startswith("["):
            host, sep, port_text = rest[1:].partition("]:")
        else:
            host, sep, port_text = rest.rpartition(":")
        if not sep or not host or not port_text.isdigit():
            raise ValueError(f"not an endpoint (want 'host:port'): {text!r}")
        return cls(host, int(port_text), transport)

    @classmethod
    def coerce(cls, value: EndpointLike, transport: str = "tcp") -> Endpoint:
        """Accept an Endpoint, an endpoint string or a ``(host, port)`` tuple.

        Raises:
            TypeError: anything else.
            ValueError: a string or tuple that does not describe an endpoint.
        """
        if isinstance(value, Endpoint):
            return value
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, tuple) and len(value) == 2:
            return cls(value[0], value[1], transport)
        raise TypeError(f"expected an Endpoint, 'host:port' or (host, port), not {value!r}")


EndpointLike = Union[Endpoint, str, Tuple[str, int]]


def tcp_first(endpoints: Iterable[Endpoint]) -> list[Endpoint]:
    """``endpoints`` with the TCP ones first, each group in its given order: TCP is preferred where both work."""
    return sorted(endpoints, key=lambda endpoint: endpoint.transport != "tcp")


class CrustUser(enum.Enum):
    """The role a peer takes when it bootstraps: a Node must be reachable, a Client need not be."""

    NODE = "node"
    CLIENT = "client"


def name_hash(network_name: str | None) -> bytes:
    """The 32-byte network-name hash that keeps different networks apart.

    SHA3-256 of the UTF-8 name, as in the original; no name hashes to zeros
    (so ``""`` and ``None`` are different networks).
    """
    if network_name is None:
        return bytes(NAME_HASH_SIZE)
    return hashlib.sha3_256(network_name.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True)
class Contact:
    """A bootstrap contact: where to dial, and optionally who must answer there.

    With ``peer_id`` set, the secure handshake aborts unless the responder
    proves that identity, so a cached or configured contact is authenticated.
    """

    addr: Endpoint
    peer_id: PeerId | None = None

    def __init__(self, addr: EndpointLike, peer_id: PeerId | str | None = None) -> None:
        object.__setattr__(self, "addr", Endpoint.coerce(addr))
        if isinstance(peer_id, str):
            peer_id = PeerId.from_str(peer_id)
        if peer_id is not None and not isinstance(peer_id, PeerId):
            raise TypeError(f"Contact peer_id must be a PeerId, hex str or None, not {type(peer_id).__name__}")
        object.__setattr__(self, "peer_id", peer_id)

    @classmethod
    def coerce(cls, value: Contact | EndpointLike) -> Contact:
        """Accept a Contact or anything :meth:`Endpoint.coerce` accepts."""
        return value if isinstance(value, Contact) else cls(value)
