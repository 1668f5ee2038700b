"""Connection info: what two peers swap out of band before ``connect()`` (sans-IO).

A :class:`PrivConnectionInfo` is what ``Service.prepare_connection_info()``
returns and what we keep; :meth:`PrivConnectionInfo.to_pub` gives the
:class:`PubConnectionInfo` the other side needs.  The public half travels as
bytes (:meth:`PubConnectionInfo.to_bytes`, compact and versioned)::

    b"\\xc3CI" ‖ u8 version (1) ‖ peer_id[32] ‖ token[16] ‖ u8 count ‖ endpoint × count

(each endpoint as :meth:`crust.wire.buffer.Buffer.push_endpoint` writes it:
``u8 transport ‖ u8 ip version ‖ address[4|16] ‖ u16 port``), or as JSON
(:meth:`PubConnectionInfo.to_json`)::

    {"version": 1, "peer_id": "<64 hex>", "token": "<32 hex>", "endpoints": ["1.2.3.4:5483", ...]}

Neither form is signed: whoever can alter the info in transit can only make
the connect fail, because the secure handshake proves ``peer_id``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable

from .errors import BufferReadError
from .ids import Endpoint, PeerId, is_ip_literal
from .wire.buffer import Buffer

__all__ = [
    "PubConnectionInfo",
    "PrivConnectionInfo",
    "CONNECTION_INFO_VERSION",
    "MAX_ENDPOINTS",
    "TOKEN_SIZE",
]

CONNECTION_INFO_VERSION = 1
MAX_ENDPOINTS = 32
TOKEN_SIZE = 16  # bytes
MAGIC = b"\xc3CI"
_PEER_ID_SIZE = 32
_HEADER_SIZE = len(MAGIC) + 1 + _PEER_ID_SIZE + TOKEN_SIZE + 1
_ADDRESS_SIZE = {4: 4, 6: 16}
_JSON_FIELDS = ("version", "peer_id", "token", "endpoints")


def _check_fields(kind: str, peer_id: object, endpoints: object, token: object) -> tuple[tuple[Endpoint, ...], bytes]:
    """Validate the three fields; return the normalised ``(endpoints, token)``."""
    if not isinstance(peer_id, PeerId):
        raise TypeError(f"{kind} peer_id must be a PeerId, not {type(peer_id).__name__}")
    if not isinstance(token, (bytes, bytearray, memoryview)):
        raise TypeError(f"{kind} token must be bytes, not {type(token).__name__}")
    token = bytes(token)
    if len(token) != TOKEN_SIZE:
        raise ValueError(f"{kind} token must be {TOKEN_SIZE} bytes, got {len(token)}")
    if isinstance(endpoints, (str, bytes)) or not isinstance(endpoints, Iterable):
        raise TypeError(f"{kind} endpoints must be a tuple of Endpoints, not {type(endpoints).__name__}")
    eps = tuple(endpoints)
    if len(eps) > MAX_ENDPOINTS:
        raise ValueError(f"{kind} has {len(eps)} endpoints; at most {MAX_ENDPOINTS} are allowed")
    for ep in eps:
        if not isinstance(ep, Endpoint):
            raise TypeError(f"{kind} endpoints must be Endpoints, not {type(ep).__name__}")
        if not is_ip_literal(ep.host):
            raise ValueError(f"{kind} endpoint {ep} is a hostname; only IP addresses can be swapped")
        if ep.port == 0:
            raise ValueError(f"{kind} endpoint {ep} has port 0, which cannot be dialled")
    return eps, token


def _check_version(version: int) -> None:
    if version > CONNECTION_INFO_VERSION:
        shown = str(version) if version < 10**9 else "(huge)"
        raise ValueError(f"connection info version {shown} is newer than this crust ({CONNECTION_INFO_VERSION})")
    if version < 1:
        raise ValueError(f"connection info version {version} is not a valid version")


@dataclass(frozen=True, slots=True)
class PubConnectionInfo:
    """The half of our connection info that the other side needs for ``connect()``.

    ``peer_id`` is who must answer at ``endpoints`` (up to 32 IP-literal
    endpoints, tried concurrently); ``token`` is the 16-byte connect token the
    dialling side presents in its ``ConnectRequest``.

    The info is **not signed**: the secure handshake proves ``peer_id``, so
    tampered info can make a connect fail but never reach the wrong peer.

    Raises (on construction):
        TypeError: a field has the wrong type.
        ValueError: wrong token size, too many endpoints, a hostname or port 0.
    """

    peer_id: PeerId
    endpoints: tuple[Endpoint, ...]
    token: bytes

    def __post_init__(self) -> None:
        endpoints, token = _check_fields(type(self).__name__, self.peer_id, self.endpoints, self.token)
        object.__setattr__(self, "endpoints", endpoints)
        object.__setattr__(self, "token", token)

    # -- bytes --------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """The compact, versioned binary form (see the module docstring)."""
        buf = Buffer()
        buf.push_bytes(MAGIC)
        buf.push_uint8(CONNECTION_INFO_VERSION)
        buf.push_bytes(self.peer_id.raw)
        buf.push_bytes(self.token)
        buf.push_uint8(len(self.endpoints))
        for ep in self.endpoints:
            buf.push_endpoint(ep)
        return buf.data()

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> PubConnectionInfo:
        """Parse :meth:`to_bytes` output.

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
        try:
            buf.pull_bytes(len(MAGIC) + 1)
            peer_id = PeerId(buf.pull_bytes(_PEER_ID_SIZE))
            token = buf.pull_bytes(TOKEN_SIZE)
            count = buf.pull_uint8()
            if count > MAX_ENDPOINTS:
                raise ValueError(f"connection info lists {count} endpoints; at most {MAX_ENDPOINTS} are allowed")
            endpoints = []
            for i in range(count):
                where = f"endpoint {i + 1} of {count}"
                if buf.remaining < 2:
                    raise ValueError(f"truncated connection info: {where} is cut off")
                offset = len(data) - buf.remaining
                size = _ADDRESS_SIZE.get(data[offset + 1])
                if size is not None and buf.remaining < 2 + size + 2:
                    raise ValueError(f"truncated connection info: {where} is cut off")
                try:
                    ep = buf.pull_endpoint()
                except BufferReadError as exc:
                    raise ValueError(f"connection info {where} is malformed: {exc}") from None
                if ep.port == 0:
                    raise ValueError(f"connection info {where} has port 0")
                endpoints.append(ep)
        except BufferReadError as exc:  # not reachable after the size checks above; kept as a net
            raise ValueError(f"truncated connection info: {exc}") from None
        if not buf.eof():
            raise ValueError(f"connection info has {buf.remaining} trailing bytes after its {count} endpoints")
        return cls(peer_id, tuple(endpoints), token)

    # -- JSON ---------------------------------------------------------------

    def to_json(self) -> str:
        """A JSON object: ``version``, ``peer_id`` (``str(peer_id)``), ``token`` (hex), ``endpoints`` (strings)."""
        return json.dumps({
            "version": CONNECTION_INFO_VERSION,
            "peer_id": str(self.peer_id),
            "token": self.token.hex(),
            "endpoints": [str(ep) for ep in self.endpoints],
        })

    @classmethod
    def from_json(cls, text: str | bytes | bytearray) -> PubConnectionInfo:
        """Parse :meth:`to_json` output.

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
        missing = [name for name in _JSON_FIELDS if name not in obj]
        if missing:
            raise ValueError(f"connection info JSON lacks field(s) {', '.join(map(repr, missing))}")
        unknown = sorted(str(name) for name in obj if name not in _JSON_FIELDS)
        if unknown:
            raise ValueError(f"connection info JSON has unknown field(s) {', '.join(map(repr, unknown))}")
        peer_text, token_text, endpoint_texts = obj["peer_id"], obj["token"], obj["endpoints"]
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
        if not isinstance(endpoint_texts, list):
            raise ValueError(f"connection info 'endpoints' must be a list, got {_brief(endpoint_texts)}")
        if len(endpoint_texts) > MAX_ENDPOINTS:
            raise ValueError(
                f"connection info lists {len(endpoint_texts)} endpoints; at most {MAX_ENDPOINTS} are allowed")
        endpoints = []
        for i, ep_text in enumerate(endpoint_texts):
            if not isinstance(ep_text, str):
                raise ValueError(f"connection info endpoint {i + 1} must be a string, got {_brief(ep_text)}")
            try:
                endpoints.append(Endpoint.parse(ep_text))
            except ValueError as exc:
                raise ValueError(f"connection info endpoint {i + 1} is bad: {exc}") from None
        return cls(peer_id, tuple(endpoints), token)  # its checks raise ValueError (hostname, port 0)


def _brief(value: object) -> str:
    """A short description of a JSON value for error messages."""
    if value is None:
        return "null"
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'…' if len(text) > 40 else ''}"


@dataclass(frozen=True, slots=True)
class PrivConnectionInfo:
    """Our connection info, as ``Service.prepare_connection_info()`` returns it.

    Pass it as ``ours`` to ``connect(ours, theirs)``, and send
    :meth:`to_pub` to the other side out of band.  It is "private" because it
    is what *we* keep: today it holds nothing beyond the public half (its
    ``token`` is shared anyway), but NAT traversal will add local state
    (sockets, mappings) that must never leave this process.

    Like the public half it is **not signed**: the secure handshake proves identity.

    Raises (on construction):
        TypeError: a field has the wrong type.
        ValueError: wrong token size, too many endpoints, a hostname or port 0.
    """

    peer_id: PeerId
    endpoints: tuple[Endpoint, ...]
    token: bytes

    def __post_init__(self) -> None:
        PubConnectionInfo.__post_init__(self)  # type: ignore[arg-type]  # the same fields and checks

    def to_pub(self) -> PubConnectionInfo:
        """The half to hand to the other side."""
        return PubConnectionInfo(self.peer_id, self.endpoints, self.token)
