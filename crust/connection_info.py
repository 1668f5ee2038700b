"""Connection info: what two peers swap out of band before ``connect()`` (sans-IO).

A :class:`PrivConnectionInfo` is what ``Service.prepare_connection_info()``
returns and what we keep; :meth:`PrivConnectionInfo.to_pub` gives the
:class:`PubConnectionInfo` the other side needs.  Both carry our PeerId, a
fresh 16-byte connect token and our *candidates* in three groups:

* ``listeners``: TCP and UDP listener endpoints, dialled directly;
* ``tcp_punch``: our TCP punch socket (its observed external mapping, then
  its local address); the other side must dial these *from its own punch
  port* at about the same time (TCP simultaneous open), not as a plain dial;
* ``udp_punch``: our rUDP socket (its observed external mapping, then its
  local address), probed with :class:`crust.nat.punch.UdpPunch` before rUDP.

and, beside the candidates, ``relays``: the PeerIds of up to ``MAX_RELAYS``
connected peers that offered to relay for us.  The other side uses those it is
connected to as well, when no direct or punched candidate came through in time
(PROTOCOL.md §15.5).

:attr:`~PubConnectionInfo.candidates` lists them with their
:class:`CandidateKind` in the order TCP listener, TCP punch, UDP listener,
UDP punch: TCP is preferred where both work (PROTOCOL.md §7), and a direct
dial needs neither timing nor cooperation, so it comes before a punch.
Within a group the caller's order stands, external mappings first: only the
caller knows which address is external (an address range cannot tell: the
test lab's "internet" is a documentation range, as private as any LAN).
:attr:`~PubConnectionInfo.endpoints` is every endpoint in that order, once.

The public half travels as bytes (:meth:`PubConnectionInfo.to_bytes`, compact
and versioned; each group holds at most ``MAX_ENDPOINTS`` together)::

    v3: v2 ‖ u8 n ‖ relay peer_id[32] × n
    v2: b"\\xc3CI" ‖ u8 version (2) ‖ peer_id[32] ‖ token[16]
        ‖ u8 n ‖ listener × n ‖ u8 n ‖ TCP punch endpoint × n ‖ u8 n ‖ UDP punch endpoint × n
    v1: b"\\xc3CI" ‖ u8 version (1) ‖ peer_id[32] ‖ token[16] ‖ u8 n ‖ endpoint × n   (listeners only)

(each endpoint as :meth:`crust.wire.buffer.Buffer.push_endpoint` writes it:
``u8 transport ‖ u8 ip version ‖ address[4|16] ‖ u16 port``), or as JSON
(:meth:`PubConnectionInfo.to_json`)::

    v3: {"version": 3, "peer_id": "<64 hex>", "token": "<32 hex>", "listeners": ["1.2.3.4:5483", ...],
         "tcp_punch": ["1.2.3.4:40000", ...], "udp_punch": ["udp://1.2.3.4:40001", ...],
         "relays": ["<64 hex>", ...]}
    v2: the same without "relays"
    v1: {"version": 1, "peer_id": "<64 hex>", "token": "<32 hex>", "endpoints": ["1.2.3.4:5483", ...]}

We write version 3 and read all three.  Neither form is signed: whoever can alter
the info in transit can only make the connect fail, because the secure
handshake proves ``peer_id``.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, TypeVar

from .errors import BufferReadError
from .ids import Endpoint, PeerId, ip_endpoints
from .wire.buffer import Buffer

__all__ = [
    "PubConnectionInfo",
    "PrivConnectionInfo",
    "Candidate",
    "CandidateKind",
    "CONNECTION_INFO_VERSION",
    "MAX_ENDPOINTS",
    "MAX_RELAYS",
    "TOKEN_SIZE",
]

CONNECTION_INFO_VERSION = 3
MAX_ENDPOINTS = 32
MAX_RELAYS = 4
_FIRST_WITH_RELAYS = 3
TOKEN_SIZE = 16  # bytes
MAGIC = b"\xc3CI"
_PEER_ID_SIZE = 32
_HEADER_SIZE = len(MAGIC) + 1 + _PEER_ID_SIZE + TOKEN_SIZE + 1  # through the first count
_ADDRESS_SIZE = {4: 4, 6: 16}
# (field, JSON key, what one is called in messages, required transport) of each group, per version.
_Group = tuple[str, str, str, str | None]
_GROUPS: dict[int, tuple[_Group, ...]] = {
    1: (("listeners", "endpoints", "endpoint", None),),
    2: (("listeners", "listeners", "listener", None),
        ("tcp_punch", "tcp_punch", "TCP punch endpoint", "tcp"),
        ("udp_punch", "udp_punch", "UDP punch endpoint", "udp")),
}
_GROUPS[3] = _GROUPS[2]


class CandidateKind(enum.Enum):
    """How the other side uses one endpoint of our connection info."""

    TCP_LISTENER = "tcp-listener"
    """Dial it."""
    TCP_PUNCH = "tcp-punch"
    """Dial it from your own TCP punch port while we dial yours (simultaneous open)."""
    UDP_LISTENER = "udp-listener"
    """Open an rUDP connection to it."""
    UDP_PUNCH = "udp-punch"
    """Punch a hole to it (:class:`crust.nat.punch.UdpPunch`), then open rUDP through it."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """One endpoint of a connection info, with what to do with it."""

    kind: CandidateKind
    endpoint: Endpoint


def _check_group(kind: str, name: str, endpoints: object, transport: str | None) -> tuple[Endpoint, ...]:
    """One group, validated (IP literals, dialable, of ``transport``), without duplicates, in order."""
    return ip_endpoints(endpoints, f"{kind} {name}", transport=transport, dialable=True, unique=True)


def _check_version(version: int) -> None:
    if version > CONNECTION_INFO_VERSION:
        shown = str(version) if version < 10**9 else "(huge)"
        raise ValueError(f"connection info version {shown} is newer than this crust ({CONNECTION_INFO_VERSION})")
    if version < 1:
        raise ValueError(f"connection info version {version} is not a valid version")


def _brief(value: object) -> str:
    """A short description of a JSON value for error messages."""
    if value is None:
        return "null"
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'…' if len(text) > 40 else ''}"


_Info = TypeVar("_Info", bound="_ConnectionInfo")
_Item = TypeVar("_Item")


@dataclass(frozen=True, slots=True)
class _ConnectionInfo:
    """The fields and checks both halves share (see the subclasses)."""

    peer_id: PeerId
    listeners: tuple[Endpoint, ...]
    token: bytes
    tcp_punch: tuple[Endpoint, ...] = field(default=(), kw_only=True)
    udp_punch: tuple[Endpoint, ...] = field(default=(), kw_only=True)
    relays: tuple[PeerId, ...] = field(default=(), kw_only=True)

    def __post_init__(self) -> None:
        kind = type(self).__name__
        if not isinstance(self.peer_id, PeerId):
            raise TypeError(f"{kind} peer_id must be a PeerId, not {type(self.peer_id).__name__}")
        if not isinstance(self.token, (bytes, bytearray, memoryview)):
            raise TypeError(f"{kind} token must be bytes, not {type(self.token).__name__}")
        token = bytes(self.token)
        if len(token) != TOKEN_SIZE:
            raise ValueError(f"{kind} token must be {TOKEN_SIZE} bytes, got {len(token)}")
        object.__setattr__(self, "token", token)
        total = 0
        for name, _, _, transport in _GROUPS[CONNECTION_INFO_VERSION]:
            group = _check_group(kind, name, getattr(self, name), transport)
            object.__setattr__(self, name, group)
            total += len(group)
        if total > MAX_ENDPOINTS:
            raise ValueError(f"{kind} has {total} endpoints; at most {MAX_ENDPOINTS} are allowed")
        if isinstance(self.relays, (str, bytes)) or not isinstance(self.relays, (tuple, list)):
            raise TypeError(f"{kind} relays must be a tuple of PeerIds, not {type(self.relays).__name__}")
        for relay in self.relays:
            if not isinstance(relay, PeerId):
                raise TypeError(f"{kind} relays must hold PeerIds, not {type(relay).__name__}")
        relays = tuple(dict.fromkeys(self.relays))
        if len(relays) > MAX_RELAYS:
            raise ValueError(f"{kind} names {len(relays)} relays; at most {MAX_RELAYS} are allowed")
        if self.peer_id in relays:
            raise ValueError(f"{kind} names its own peer as a relay")
        object.__setattr__(self, "relays", relays)

    @property
    def candidates(self) -> tuple[Candidate, ...]:
        """Every endpoint with its kind: TCP listeners, TCP punch, UDP listeners, UDP punch."""
        groups = (
            (CandidateKind.TCP_LISTENER, [ep for ep in self.listeners if ep.transport == "tcp"]),
            (CandidateKind.TCP_PUNCH, self.tcp_punch),
            (CandidateKind.UDP_LISTENER, [ep for ep in self.listeners if ep.transport == "udp"]),
            (CandidateKind.UDP_PUNCH, self.udp_punch),
        )
        return tuple(Candidate(kind, ep) for kind, eps in groups for ep in eps)

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """Every endpoint once, in :attr:`candidates` order (a punch endpoint may also be a listener)."""
        return tuple(dict.fromkeys(c.endpoint for c in self.candidates))

    @classmethod
    def gather(cls: type[_Info], peer_id: PeerId, token: bytes, *, listeners: Iterable[Endpoint] = (),
               tcp_punch: Iterable[Endpoint] = (), udp_punch: Iterable[Endpoint] = (),
               relays: Iterable[PeerId] = ()) -> _Info:
        """Build an info from everything we found, dropping duplicates and capping at ``MAX_ENDPOINTS``.

        Each group is given best first (external mappings before local
        addresses).  When there are too many, the four kinds of
        :attr:`candidates` take turns keeping their best endpoint, so no
        kind is crowded out by a host with many interface addresses.
        ``relays`` are kept up to ``MAX_RELAYS``, best first.

        Raises:
            TypeError, ValueError: as the constructor does for bad values.
        """
        kind = cls.__name__
        lists = _check_group(kind, "listeners", listeners, None)
        groups = [
            [ep for ep in lists if ep.transport == "tcp"],
            list(_check_group(kind, "tcp_punch", tcp_punch, "tcp")),
            [ep for ep in lists if ep.transport == "udp"],
            list(_check_group(kind, "udp_punch", udp_punch, "udp")),
        ]
        kept: list[list[Endpoint]] = [[], [], [], []]
        room = MAX_ENDPOINTS
        for rank in range(max(map(len, groups))):
            for group, keep in zip(groups, kept):
                if rank < len(group) and room > 0:
                    keep.append(group[rank])
                    room -= 1
        return cls(peer_id, (*kept[0], *kept[2]), token, tcp_punch=tuple(kept[1]), udp_punch=tuple(kept[3]),
                   relays=tuple(dict.fromkeys(relays))[:MAX_RELAYS])


@dataclass(frozen=True, slots=True)
class PubConnectionInfo(_ConnectionInfo):
    """The half of our connection info that the other side needs for ``connect()``.

    ``peer_id`` is who must answer at the endpoints; ``token`` is the 16-byte
    connect token the dialling side presents in its ``ConnectRequest`` (and
    half of the UDP punch key).  ``listeners``, ``tcp_punch`` and
    ``udp_punch`` hold up to ``MAX_ENDPOINTS`` IP-literal endpoints together
    (duplicates within a group are dropped); :attr:`candidates` says how to
    use each, :attr:`endpoints` lists them all.

    The info is **not signed**: the secure handshake proves ``peer_id``, so
    tampered info can make a connect fail but never reach the wrong peer.

    Raises (on construction):
        TypeError: a field has the wrong type.
        ValueError: wrong token size, too many endpoints, a hostname, port 0,
            or a punch endpoint of the wrong transport.
    """

    # -- bytes --------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The compact, versioned binary form (version 3; see the module docstring)."""
        buf = Buffer()
        buf.push_bytes(MAGIC)
        buf.push_uint8(CONNECTION_INFO_VERSION)
        buf.push_bytes(self.peer_id.raw)
        buf.push_bytes(self.token)
        for name, _, _, _ in _GROUPS[CONNECTION_INFO_VERSION]:
            group: tuple[Endpoint, ...] = getattr(self, name)
            buf.push_uint8(len(group))
            for ep in group:
                buf.push_endpoint(ep)
        buf.push_uint8(len(self.relays))
        for relay in self.relays:
            buf.push_bytes(relay.raw)
        return buf.data()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> PubConnectionInfo:
        """Parse :meth:`to_bytes` output, of this version or an older one.

        Raises:
            TypeError: ``data`` is not bytes-like.
            ValueError: garbage (bad magic), truncated input, an unknown or newer
                version, too many endpoints, a malformed endpoint or trailing
                bytes; the message says which.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"PubConnectionInfo.from_bytes needs bytes, not {type(data).__name__}")
        data = bytes(data)
        if not data:
            raise ValueError("not connection info: the input is empty")
        if data[: len(MAGIC)] != MAGIC[: len(data)]:
            raise ValueError("not connection info: bad magic (expected it to start with b'\\xc3CI')")
        if len(data) > len(MAGIC):
            _check_version(data[len(MAGIC)])
        if len(data) < _HEADER_SIZE:
            raise ValueError(f"truncated connection info: {len(data)} bytes, the header alone needs {_HEADER_SIZE}")
        buf = Buffer(data)
        version = buf.pull_bytes(len(MAGIC) + 1)[-1]
        peer_id = PeerId(buf.pull_bytes(_PEER_ID_SIZE))
        token = buf.pull_bytes(TOKEN_SIZE)
        groups: dict[str, list[Endpoint]] = {}
        total = 0
        for name, _, label, _ in _GROUPS[version]:
            groups[name] = _pull_group(buf, data, label, total)
            total += len(groups[name])
        relays = _pull_relays(buf) if version >= _FIRST_WITH_RELAYS else []
        if not buf.eof():
            raise ValueError(f"connection info has {buf.remaining} trailing bytes after its {total} endpoints"
                             f"{' and relays' if version >= _FIRST_WITH_RELAYS else ''}")
        return cls(peer_id, tuple(groups["listeners"]), token, tcp_punch=tuple(groups.get("tcp_punch", ())),
                   udp_punch=tuple(groups.get("udp_punch", ())), relays=tuple(relays))

    # -- JSON ---------------------------------------------------------------

    def to_json(self) -> str:
        """A JSON object: ``version``, ``peer_id`` (``str(peer_id)``), ``token`` (hex), the three groups and ``relays``."""
        obj: dict[str, Any] = {
            "version": CONNECTION_INFO_VERSION,
            "peer_id": str(self.peer_id),
            "token": self.token.hex(),
        }
        for name, key, _, _ in _GROUPS[CONNECTION_INFO_VERSION]:
            obj[key] = [str(ep) for ep in getattr(self, name)]
        obj["relays"] = [str(relay) for relay in self.relays]
        return json.dumps(obj)

    @classmethod
    def from_json(cls, text: str | bytes | bytearray) -> PubConnectionInfo:
        """Parse :meth:`to_json` output, of this version or an older one.

        Raises:
            TypeError: ``text`` is not str or bytes.
            ValueError: anything wrong with the content (not JSON, not an object,
                missing, unknown or wrongly typed fields, an unknown or newer
                version, a bad peer id, token or endpoint); the message says which.
        """
        if not isinstance(text, (str, bytes, bytearray)):
            raise TypeError(f"PubConnectionInfo.from_json needs a str, not {type(text).__name__}")
        try:
            obj: Any = json.loads(text)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ValueError(f"connection info is not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ValueError(f"connection info JSON must be an object, not {type(obj).__name__}")
        version = obj.get("version")
        if isinstance(version, bool) or not isinstance(version, int):
            raise ValueError(f"connection info 'version' must be an integer, got {_brief(version)}")
        _check_version(version)
        fields = ("version", "peer_id", "token", *(key for _, key, _, _ in _GROUPS[version]),
                  *(("relays",) if version >= _FIRST_WITH_RELAYS else ()))
        missing = [name for name in fields if name not in obj]
        if missing:
            raise ValueError(f"connection info JSON lacks field(s) {', '.join(map(repr, missing))}")
        unknown = sorted(str(name) for name in obj if name not in fields)
        if unknown:
            raise ValueError(f"connection info JSON has unknown field(s) {', '.join(map(repr, unknown))}")
        peer_text, token_text = obj["peer_id"], obj["token"]
        if not isinstance(peer_text, str):
            raise ValueError(f"connection info 'peer_id' must be a hex string, got {_brief(peer_text)}")
        try:
            peer_id = PeerId.from_str(peer_text)
        except ValueError as exc:
            raise ValueError(f"connection info 'peer_id' is bad: {exc}") from None
        if not isinstance(token_text, str):
            raise ValueError(f"connection info 'token' must be a hex string, got {_brief(token_text)}")
        try:
            token = bytes.fromhex(token_text)
        except ValueError:
            raise ValueError(f"connection info 'token' is not hex: {token_text[:80]!r}") from None
        if len(token) != TOKEN_SIZE:
            raise ValueError(f"connection info 'token' must be {TOKEN_SIZE} bytes, got {len(token)}")
        groups: dict[str, tuple[Endpoint, ...]] = {}
        total = 0
        for name, key, label, _ in _GROUPS[version]:
            groups[name] = _group_from_json(obj[key], key, label, total)
            total += len(groups[name])
        relays = _relays_from_json(obj["relays"]) if version >= _FIRST_WITH_RELAYS else ()
        # The constructor's checks raise ValueError (hostname, port 0, a punch endpoint's transport).
        return cls(peer_id, groups["listeners"], token, tcp_punch=groups.get("tcp_punch", ()),
                   udp_punch=groups.get("udp_punch", ()), relays=relays)


@dataclass(frozen=True, slots=True)
class PrivConnectionInfo(_ConnectionInfo):
    """Our connection info, as ``Service.prepare_connection_info()`` returns it.

    Pass it as ``ours`` to ``connect(ours, theirs)``, and send
    :meth:`to_pub` to the other side out of band.  It is "private" because it
    is what *we* keep: today it holds nothing beyond the public half (its
    ``token`` is shared anyway), but NAT traversal may add local state
    (sockets, mappings) that must never leave this process.

    Like the public half it is **not signed**: the secure handshake proves identity.

    Raises (on construction):
        TypeError: a field has the wrong type.
        ValueError: wrong token size, too many endpoints, a hostname, port 0,
            or a punch endpoint of the wrong transport.
    """

    def to_pub(self) -> PubConnectionInfo:
        """The half to hand to the other side."""
        return PubConnectionInfo(self.peer_id, self.listeners, self.token,
                                 tcp_punch=self.tcp_punch, udp_punch=self.udp_punch, relays=self.relays)


def _pull_group(buf: Buffer, data: bytes, label: str, total: int) -> list[Endpoint]:
    """One ``u8 count ‖ endpoint × count`` group; ``total`` endpoints came before it."""
    if buf.eof():
        raise ValueError(f"truncated connection info: the {label} count is cut off")
    count = buf.pull_uint8()
    if total + count > MAX_ENDPOINTS:
        raise ValueError(f"connection info lists {total + count} endpoints; at most {MAX_ENDPOINTS} are allowed")
    endpoints = []
    for i in range(count):
        where = f"{label} {i + 1} of {count}"
        offset = len(data) - buf.remaining
        size = _ADDRESS_SIZE.get(data[offset + 1]) if buf.remaining >= 2 else None
        if buf.remaining < 2 or size is not None and buf.remaining < 2 + size + 2:
            raise ValueError(f"truncated connection info: {where} is cut off")
        try:
            ep = buf.pull_endpoint()
        except BufferReadError as exc:
            raise ValueError(f"connection info {where} is malformed: {exc}") from None
        if ep.port == 0:
            raise ValueError(f"connection info {where} has port 0")
        endpoints.append(ep)
    return endpoints


def _group_from_json(texts: object, key: str, label: str, total: int) -> tuple[Endpoint, ...]:
    """One JSON list of endpoint strings; ``total`` endpoints came before it."""
    items = _json_list(texts, key)
    if total + len(items) > MAX_ENDPOINTS:
        raise ValueError(
            f"connection info lists {total + len(items)} endpoints; at most {MAX_ENDPOINTS} are allowed")
    return _parse_each(items, label, "a string", Endpoint.parse)


def _pull_relays(buf: Buffer) -> list[PeerId]:
    """``u8 count ‖ peer_id × count``."""
    if buf.eof():
        raise ValueError("truncated connection info: the relay count is cut off")
    count = buf.pull_uint8()
    if count > MAX_RELAYS:
        raise ValueError(f"connection info names {count} relays; at most {MAX_RELAYS} are allowed")
    if buf.remaining < count * _PEER_ID_SIZE:
        raise ValueError(f"truncated connection info: {count} relays need {count * _PEER_ID_SIZE} bytes, "
                         f"{buf.remaining} are left")
    return [PeerId(buf.pull_bytes(_PEER_ID_SIZE)) for _ in range(count)]


def _relays_from_json(texts: object) -> tuple[PeerId, ...]:
    """The JSON list of relay PeerIds (hex strings)."""
    items = _json_list(texts, "relays")
    if len(items) > MAX_RELAYS:
        raise ValueError(f"connection info names {len(items)} relays; at most {MAX_RELAYS} are allowed")
    return _parse_each(items, "relay", "a hex string", PeerId.from_str)


def _json_list(value: object, key: str) -> list[object]:
    """``value`` as the JSON list field ``key`` must be."""
    if not isinstance(value, list):
        raise ValueError(f"connection info '{key}' must be a list, got {_brief(value)}")
    return value


def _parse_each(items: list[object], label: str, kind: str, parse: Callable[[str], _Item]) -> tuple[_Item, ...]:
    """Each string of ``items`` through ``parse``; an error names the item (``label`` and its number)."""
    parsed = []
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise ValueError(f"connection info {label} {i + 1} must be {kind}, got {_brief(text)}")
        try:
            parsed.append(parse(text))
        except ValueError as exc:
            raise ValueError(f"connection info {label} {i + 1} is bad: {exc}") from None
    return tuple(parsed)
