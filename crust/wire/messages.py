"""crust's messages inside the secure channel: one frozen dataclass each, one table.

A decrypted frame is a sequence of records, ``u8 type ‖ u32 length ‖ body``
(PROTOCOL.md §4; layout in docs/protocol.md).  Adding a message is one
dataclass, one pull/push pair and one row in ``_TABLE``.

``Data`` records carry chunks of application messages: ``u8 priority ‖ u8
flags ‖ chunk``, with ``LAST`` set on a message's final chunk.  The channel
parses them on its hot path with ``struct`` directly; this module only
defines their layout.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Callable, Union

from ..errors import BufferReadError, RemoteProtocolError
from ..ids import PEER_ID_SIZE, CrustUser, Endpoint, PeerId
from .buffer import Buffer

__all__ = [
    "MessageType",
    "DenyReason",
    "GoodbyeReason",
    "Heartbeat",
    "Goodbye",
    "BootstrapRequest",
    "BootstrapGranted",
    "BootstrapDenied",
    "EchoAddrReq",
    "EchoAddrResp",
    "ConnectRequest",
    "ChooseConnection",
    "Data",
    "PeerExchangeRequest",
    "PeerExchangeResponse",
    "SharedPeer",
    "Message",
    "RECORD_HEADER",
    "DATA_HEADER",
    "DATA_LAST",
    "encode_record",
    "decode_record",
    "MAX_LISTENERS",
    "CONNECT_TOKEN_SIZE",
    "MAX_SHARED_PEERS",
    "MAX_SHARED_LISTENERS",
    "RelayOffer",
    "RelayConnect",
    "RelayIncoming",
    "RelayData",
    "RelayAck",
    "RelayClose",
    "RelayCloseReason",
    "UpgradeOffer",
    "RELAY_DATA_HEADER",
    "encode_relay_data",
]

RECORD_HEADER = struct.Struct(">BI")  # type, body length
RELAY_DATA_HEADER = struct.Struct(">BII")  # type, body length, circuit: a whole RelayData record header
DATA_HEADER = struct.Struct(">BIBB")  # type, body length, priority, flags: a whole Data record header
DATA_LAST = 0x01  # flag: this chunk ends its message
MAX_LISTENERS = 32  # endpoints a BootstrapRequest may carry
CONNECT_TOKEN_SIZE = 16  # bytes
MAX_SHARED_PEERS = 32  # entries a PeerExchangeResponse may carry
MAX_SHARED_LISTENERS = 4  # endpoints per shared peer
_DO_NOT_SHARE = 0x01  # BootstrapRequest flag: keep me out of peer exchange


class MessageType(enum.IntEnum):
    """The record type byte."""

    HEARTBEAT = 1
    GOODBYE = 2
    BOOTSTRAP_REQUEST = 3
    BOOTSTRAP_GRANTED = 4
    BOOTSTRAP_DENIED = 5
    ECHO_ADDR_REQ = 6
    ECHO_ADDR_RESP = 7
    CONNECT_REQUEST = 8
    CHOOSE_CONNECTION = 9
    DATA = 10
    PEER_EXCHANGE_REQUEST = 11
    PEER_EXCHANGE_RESPONSE = 12
    RELAY_OFFER = 13
    RELAY_CONNECT = 14
    RELAY_INCOMING = 15
    RELAY_DATA = 16
    RELAY_ACK = 17
    RELAY_CLOSE = 18
    UPGRADE_OFFER = 19


class DenyReason(enum.IntEnum):
    """Why a bootstrap was refused (the original's four, plus ours)."""

    NETWORK_MISMATCH = 1
    FAILED_EXTERNAL_REACHABILITY = 2
    NODE_NOT_WHITELISTED = 3
    CLIENT_NOT_WHITELISTED = 4
    NOT_ACCEPTING = 5
    BANNED = 6
    ALREADY_CONNECTED = 7
    TOO_MANY_PEERS = 8


class GoodbyeReason(enum.IntEnum):
    """Why a peer closed an established connection."""

    CLOSED = 1  # disconnect() or Service.close()
    DUPLICATE = 2  # another connection to the same peer won
    PROTOCOL = 3
    BANNED = 4
    NOT_WHITELISTED = 5
    MESSAGE_TOO_LARGE = 6  # the peer sent a message over our max_message_size


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Liveness probe; ``echo`` marks the answer to probe ``seq`` (gives us the RTT)."""

    seq: int
    echo: bool = False


@dataclass(frozen=True, slots=True)
class Goodbye:
    """The sender is closing this connection on purpose."""

    reason: GoodbyeReason


@dataclass(frozen=True, slots=True)
class BootstrapRequest:
    """Asks to join the network through the receiver as ``user``, listing our listeners."""

    user: CrustUser
    listeners: tuple[Endpoint, ...] = ()
    shareable: bool = True  # may the receiver tell other peers about us (peer exchange)?


@dataclass(frozen=True, slots=True)
class BootstrapGranted:
    """The bootstrap was accepted: the connection is now an established peer link.

    ``listeners`` are the granter's own endpoints (every transport), so the
    requester knows where else to reach it, e.g. to ask it for our external
    UDP address.  An empty body (an older granter) means none.
    """

    listeners: tuple[Endpoint, ...] = ()


@dataclass(frozen=True, slots=True)
class BootstrapDenied:
    """The bootstrap was refused; the connection closes after this."""

    reason: DenyReason


@dataclass(frozen=True, slots=True)
class EchoAddrReq:
    """Asks the receiver which address our packets come from (peer STUN)."""


@dataclass(frozen=True, slots=True)
class EchoAddrResp:
    """The address the receiver sees us at."""

    addr: Endpoint


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """Opens a rendezvous connect; ``token`` ties it to swapped connection info."""

    token: bytes


@dataclass(frozen=True, slots=True)
class ChooseConnection:
    """Sent by the greater PeerId on the one candidate connection that survives."""


@dataclass(frozen=True, slots=True)
class PeerExchangeRequest:
    """Asks a connected peer for a sample of its directly reachable peers."""


@dataclass(frozen=True, slots=True)
class SharedPeer:
    """One peer in a PeerExchangeResponse: who, and where it accepts connections."""

    peer_id: PeerId
    listeners: tuple[Endpoint, ...]


@dataclass(frozen=True, slots=True)
class PeerExchangeResponse:
    """A bounded sample of the sender's directly reachable, shareable peers."""

    peers: tuple[SharedPeer, ...] = ()


class RelayCloseReason(enum.IntEnum):
    """Why a relay circuit ended (or was refused)."""

    CLOSED = 1  # an end closed its connection
    NOT_RELAYING = 2  # the receiver does not relay (``Config.relay`` off, or not reachable)
    NO_SUCH_PEER = 3  # the relay is not connected to the target (or may not relay to it)
    TOO_MANY_CIRCUITS = 4  # ``relay_max_circuits`` reached (in all, or for this peer)
    FLOOD = 5  # an end sent past its window, or acknowledged bytes it never got
    REFUSED = 6  # the far end would not take the circuit
    LOST = 7  # the relay lost its connection to the far end


@dataclass(frozen=True, slots=True)
class RelayOffer:
    """Sent by a relay node to a peer it is willing to relay for (once, after the grant)."""


@dataclass(frozen=True, slots=True)
class RelayConnect:
    """To a relay: open circuit ``circuit`` (our number) to its peer ``target``."""

    circuit: int
    target: PeerId


@dataclass(frozen=True, slots=True)
class RelayIncoming:
    """From a relay: ``source`` opened circuit ``circuit`` (the relay's number) to us."""

    circuit: int
    source: PeerId


@dataclass(slots=True)
class RelayData:
    """Opaque bytes on a circuit: the two ends' own secure channel, which the relay cannot read."""

    circuit: int
    chunk: bytes


@dataclass(frozen=True, slots=True)
class RelayAck:
    """The far end took ``nbytes`` more of the circuit's data: the sender's window opens by that much."""

    circuit: int
    nbytes: int


@dataclass(frozen=True, slots=True)
class RelayClose:
    """The circuit is closed (or refused), for ``reason``."""

    circuit: int
    reason: RelayCloseReason


@dataclass(frozen=True, slots=True)
class UpgradeOffer:
    """On a relayed peer link: our fresh connection info (``PubConnectionInfo`` bytes), to try a direct connection."""

    info: bytes


@dataclass(slots=True)  # not frozen: one is built per received message, and frozen init costs ~2x
class Data:
    """One chunk of an application message."""

    priority: int
    chunk: bytes
    last: bool = True


Message = Union[Heartbeat, Goodbye, BootstrapRequest, BootstrapGranted, BootstrapDenied, EchoAddrReq,
                EchoAddrResp, ConnectRequest, ChooseConnection, Data, PeerExchangeRequest, PeerExchangeResponse,
                RelayOffer, RelayConnect, RelayIncoming, RelayData, RelayAck, RelayClose, UpgradeOffer]


# -- pull/push pairs -----------------------------------------------------------

def _pull_enum(buf: Buffer, kind: type[enum.IntEnum]) -> enum.IntEnum:
    value = buf.pull_uint8()
    try:
        return kind(value)
    except ValueError:
        raise BufferReadError(f"unknown {kind.__name__} {value}") from None


def _pull_heartbeat(buf: Buffer) -> Heartbeat:
    seq = buf.pull_uint32()
    echo = buf.pull_uint8()
    if echo > 1:
        raise BufferReadError("heartbeat echo flag must be 0 or 1")
    return Heartbeat(seq, bool(echo))


def _push_heartbeat(buf: Buffer, msg: Heartbeat) -> None:
    buf.push_uint32(msg.seq)
    buf.push_uint8(int(msg.echo))


def _pull_goodbye(buf: Buffer) -> Goodbye:
    return Goodbye(GoodbyeReason(_pull_enum(buf, GoodbyeReason)))


def _push_goodbye(buf: Buffer, msg: Goodbye) -> None:
    buf.push_uint8(msg.reason)


_USER_CODES = {CrustUser.NODE: 0, CrustUser.CLIENT: 1}
_USERS = {code: user for user, code in _USER_CODES.items()}


def _pull_listeners(buf: Buffer, what: str) -> tuple[Endpoint, ...]:
    count = buf.pull_uint8()
    if count > MAX_LISTENERS:
        raise BufferReadError(f"{what} lists {count} listeners, at most {MAX_LISTENERS} allowed")
    return tuple(buf.pull_endpoint() for _ in range(count))


def _push_listeners(buf: Buffer, listeners: tuple[Endpoint, ...]) -> None:
    listeners = listeners[:MAX_LISTENERS]
    buf.push_uint8(len(listeners))
    for endpoint in listeners:
        buf.push_endpoint(endpoint)


def _pull_bootstrap_request(buf: Buffer) -> BootstrapRequest:
    user = _USERS.get(buf.pull_uint8())
    if user is None:
        raise BufferReadError("unknown CrustUser code")
    listeners = _pull_listeners(buf, "BootstrapRequest")
    flags = buf.pull_uint8()
    if flags & ~_DO_NOT_SHARE:
        raise BufferReadError(f"unknown BootstrapRequest flags {flags:#x}")
    return BootstrapRequest(user, listeners, shareable=not flags & _DO_NOT_SHARE)


def _push_bootstrap_request(buf: Buffer, msg: BootstrapRequest) -> None:
    buf.push_uint8(_USER_CODES[msg.user])
    _push_listeners(buf, msg.listeners)
    buf.push_uint8(0 if msg.shareable else _DO_NOT_SHARE)


def _pull_granted(buf: Buffer) -> BootstrapGranted:
    if buf.eof():
        return BootstrapGranted()
    listeners = _pull_listeners(buf, "BootstrapGranted")
    if not listeners:  # one encoding per message: no listeners is an empty body
        raise BufferReadError("stray count byte: a BootstrapGranted with no listeners has an empty body")
    return BootstrapGranted(listeners)


def _push_granted(buf: Buffer, msg: BootstrapGranted) -> None:
    if msg.listeners:
        _push_listeners(buf, msg.listeners)


def _pull_peer_exchange(buf: Buffer) -> PeerExchangeResponse:
    count = buf.pull_uint8()
    if count > MAX_SHARED_PEERS:
        raise BufferReadError(f"PeerExchangeResponse lists {count} peers, at most {MAX_SHARED_PEERS} allowed")
    peers = []
    for _ in range(count):
        peer_id = PeerId(buf.pull_bytes(PEER_ID_SIZE))
        listeners = buf.pull_uint8()
        if not 0 < listeners <= MAX_SHARED_LISTENERS:
            raise BufferReadError(f"a shared peer needs 1..{MAX_SHARED_LISTENERS} listeners, got {listeners}")
        peers.append(SharedPeer(peer_id, tuple(buf.pull_endpoint() for _ in range(listeners))))
    return PeerExchangeResponse(tuple(peers))


def _push_peer_exchange(buf: Buffer, msg: PeerExchangeResponse) -> None:
    if len(msg.peers) > MAX_SHARED_PEERS:
        raise ValueError(f"at most {MAX_SHARED_PEERS} shared peers")
    buf.push_uint8(len(msg.peers))
    for peer in msg.peers:
        if not 0 < len(peer.listeners) <= MAX_SHARED_LISTENERS:
            raise ValueError(f"a shared peer needs 1..{MAX_SHARED_LISTENERS} listeners")
        buf.push_bytes(bytes(peer.peer_id))
        buf.push_uint8(len(peer.listeners))
        for endpoint in peer.listeners:
            buf.push_endpoint(endpoint)


def _pull_denied(buf: Buffer) -> BootstrapDenied:
    return BootstrapDenied(DenyReason(_pull_enum(buf, DenyReason)))


def _push_denied(buf: Buffer, msg: BootstrapDenied) -> None:
    buf.push_uint8(msg.reason)


def _pull_echo_resp(buf: Buffer) -> EchoAddrResp:
    return EchoAddrResp(buf.pull_endpoint())


def _push_echo_resp(buf: Buffer, msg: EchoAddrResp) -> None:
    buf.push_endpoint(msg.addr)


def _pull_connect_request(buf: Buffer) -> ConnectRequest:
    return ConnectRequest(buf.pull_bytes(CONNECT_TOKEN_SIZE))


def _push_connect_request(buf: Buffer, msg: ConnectRequest) -> None:
    if len(msg.token) != CONNECT_TOKEN_SIZE:
        raise ValueError(f"connect token must be {CONNECT_TOKEN_SIZE} bytes")
    buf.push_bytes(msg.token)


def _pull_data(buf: Buffer) -> Data:
    priority = buf.pull_uint8()
    flags = buf.pull_uint8()
    if flags & ~DATA_LAST:
        raise BufferReadError(f"unknown Data flags {flags:#x}")
    return Data(priority, buf.pull_rest(), bool(flags & DATA_LAST))


def _push_data(buf: Buffer, msg: Data) -> None:
    buf.push_uint8(msg.priority)
    buf.push_uint8(DATA_LAST if msg.last else 0)
    buf.push_bytes(msg.chunk)


def _pull_relay_peer(cls: type[RelayConnect] | type[RelayIncoming]) -> Callable[[Buffer], object]:
    return lambda buf: cls(buf.pull_uint32(), PeerId(buf.pull_bytes(PEER_ID_SIZE)))


def _push_relay_peer(buf: Buffer, msg: RelayConnect | RelayIncoming) -> None:
    buf.push_uint32(msg.circuit)
    buf.push_bytes(bytes(msg.target if isinstance(msg, RelayConnect) else msg.source))


def _pull_relay_data(buf: Buffer) -> RelayData:
    return RelayData(buf.pull_uint32(), buf.pull_rest())


def _push_relay_data(buf: Buffer, msg: RelayData) -> None:
    buf.push_uint32(msg.circuit)
    buf.push_bytes(msg.chunk)


def _pull_relay_ack(buf: Buffer) -> RelayAck:
    return RelayAck(buf.pull_uint32(), buf.pull_uint32())


def _push_relay_ack(buf: Buffer, msg: RelayAck) -> None:
    buf.push_uint32(msg.circuit)
    buf.push_uint32(msg.nbytes)


def _pull_relay_close(buf: Buffer) -> RelayClose:
    circuit = buf.pull_uint32()
    return RelayClose(circuit, RelayCloseReason(_pull_enum(buf, RelayCloseReason)))


def _push_relay_close(buf: Buffer, msg: RelayClose) -> None:
    buf.push_uint32(msg.circuit)
    buf.push_uint8(msg.reason)


MAX_UPGRADE_INFO = 2048  # bytes: a PubConnectionInfo is at most ~800


def _pull_upgrade(buf: Buffer) -> UpgradeOffer:
    info = buf.pull_rest()
    if not 0 < len(info) <= MAX_UPGRADE_INFO:
        raise BufferReadError(f"UpgradeOffer info of {len(info)} bytes (1..{MAX_UPGRADE_INFO} allowed)")
    return UpgradeOffer(info)


def _push_upgrade(buf: Buffer, msg: UpgradeOffer) -> None:
    buf.push_bytes(msg.info)


def encode_relay_data(circuit: int, chunk: bytes | memoryview) -> bytes:
    """One ``RelayData`` record, without building the message (the relay's hot path)."""
    return RELAY_DATA_HEADER.pack(MessageType.RELAY_DATA, 4 + len(chunk), circuit) + chunk


def _empty(cls: type) -> tuple[Callable[[Buffer], object], Callable[[Buffer, object], None]]:
    return (lambda buf: cls()), (lambda buf, msg: None)


_Pull = Callable[[Buffer], object]
_Push = Callable[[Buffer, object], None]

# The one table (aioquic's frame table): type -> (class, pull, push).
_TABLE: dict[MessageType, tuple[type, _Pull, _Push]] = {
    MessageType.HEARTBEAT: (Heartbeat, _pull_heartbeat, _push_heartbeat),  # type: ignore[dict-item]
    MessageType.GOODBYE: (Goodbye, _pull_goodbye, _push_goodbye),  # type: ignore[dict-item]
    MessageType.BOOTSTRAP_REQUEST: (BootstrapRequest, _pull_bootstrap_request, _push_bootstrap_request),  # type: ignore[dict-item]
    MessageType.BOOTSTRAP_GRANTED: (BootstrapGranted, _pull_granted, _push_granted),  # type: ignore[dict-item]
    MessageType.BOOTSTRAP_DENIED: (BootstrapDenied, _pull_denied, _push_denied),  # type: ignore[dict-item]
    MessageType.ECHO_ADDR_REQ: (EchoAddrReq, *_empty(EchoAddrReq)),
    MessageType.ECHO_ADDR_RESP: (EchoAddrResp, _pull_echo_resp, _push_echo_resp),  # type: ignore[dict-item]
    MessageType.CONNECT_REQUEST: (ConnectRequest, _pull_connect_request, _push_connect_request),  # type: ignore[dict-item]
    MessageType.CHOOSE_CONNECTION: (ChooseConnection, *_empty(ChooseConnection)),
    MessageType.DATA: (Data, _pull_data, _push_data),  # type: ignore[dict-item]
    MessageType.PEER_EXCHANGE_REQUEST: (PeerExchangeRequest, *_empty(PeerExchangeRequest)),
    MessageType.PEER_EXCHANGE_RESPONSE: (PeerExchangeResponse, _pull_peer_exchange, _push_peer_exchange),  # type: ignore[dict-item]
    MessageType.RELAY_OFFER: (RelayOffer, *_empty(RelayOffer)),
    MessageType.RELAY_CONNECT: (RelayConnect, _pull_relay_peer(RelayConnect), _push_relay_peer),  # type: ignore[dict-item]
    MessageType.RELAY_INCOMING: (RelayIncoming, _pull_relay_peer(RelayIncoming), _push_relay_peer),  # type: ignore[dict-item]
    MessageType.RELAY_DATA: (RelayData, _pull_relay_data, _push_relay_data),  # type: ignore[dict-item]
    MessageType.RELAY_ACK: (RelayAck, _pull_relay_ack, _push_relay_ack),  # type: ignore[dict-item]
    MessageType.RELAY_CLOSE: (RelayClose, _pull_relay_close, _push_relay_close),  # type: ignore[dict-item]
    MessageType.UPGRADE_OFFER: (UpgradeOffer, _pull_upgrade, _push_upgrade),  # type: ignore[dict-item]
}
_TYPE_OF: dict[type, MessageType] = {cls: kind for kind, (cls, _, _) in _TABLE.items()}


def encode_record(msg: Message) -> bytes:
    """``u8 type ‖ u32 length ‖ body`` for one message."""
    kind = _TYPE_OF[type(msg)]
    buf = Buffer()
    _TABLE[kind][2](buf, msg)
    body = buf.data()
    return RECORD_HEADER.pack(kind, len(body)) + body


def decode_record(kind: int, body: bytes | memoryview) -> Message:
    """The message of type ``kind`` whose body is exactly ``body``.

    Raises:
        RemoteProtocolError: unknown type, short body or trailing bytes.
    """
    try:
        entry = _TABLE[MessageType(kind)]
    except ValueError:
        raise RemoteProtocolError(f"unknown message type {kind}") from None
    buf = Buffer(body)
    msg = entry[1](buf)
    if not buf.eof():
        raise RemoteProtocolError(f"{buf.remaining} stray bytes after {MessageType(kind).name}")
    return msg  # type: ignore[return-value]
