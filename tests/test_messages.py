"""crust.wire.messages: the record table, each message's layout, and malformed bodies.

(The channel tests feed these records through a real SecureChannel in one
chunk and one byte at a time; here each body is decoded on its own.)
"""

from __future__ import annotations

import pytest

from crust.errors import LocalProtocolError, RemoteProtocolError
from crust.ids import CrustUser, Endpoint, PeerId
from crust.wire.messages import (
    CONNECT_TOKEN_SIZE,
    DATA_HEADER,
    DATA_LAST,
    MAX_LISTENERS,
    MAX_SHARED_PEERS,
    RECORD_HEADER,
    BootstrapDenied,
    BootstrapGranted,
    BootstrapRequest,
    ChooseConnection,
    ConnectRequest,
    Data,
    DenyReason,
    EchoAddrReq,
    EchoAddrResp,
    Goodbye,
    GoodbyeReason,
    Heartbeat,
    Message,
    MessageType,
    PeerExchangeRequest,
    PeerExchangeResponse,
    RelayAck,
    RelayClose,
    RelayCloseReason,
    RelayConnect,
    RelayData,
    RelayIncoming,
    RelayOffer,
    SharedPeer,
    UpgradeOffer,
    decode_record,
    encode_record,
    encode_relay_data,
)

V4 = Endpoint("10.1.2.3", 5483)
V6 = Endpoint("2001:db8::7", 443, "udp")
V4_PACKED = bytes.fromhex("00" "04" "0a010203" "156b")  # tcp, IPv4, 10.1.2.3, port 5483
V6_PACKED = bytes.fromhex("01" "06" "20010db8000000000000000000000007" "01bb")  # udp, IPv6, port 443

# One sample per type, with the exact body it must encode to.
SAMPLES: list[tuple[Message, MessageType, bytes]] = [
    (Heartbeat(7), MessageType.HEARTBEAT, b"\x00\x00\x00\x07\x00"),
    (Heartbeat(0xFFFFFFFF, echo=True), MessageType.HEARTBEAT, b"\xff\xff\xff\xff\x01"),
    (Goodbye(GoodbyeReason.DUPLICATE), MessageType.GOODBYE, b"\x02"),
    (BootstrapRequest(CrustUser.CLIENT), MessageType.BOOTSTRAP_REQUEST, b"\x01\x00\x00"),
    (
        BootstrapRequest(CrustUser.NODE, (V4, V6), shareable=False),
        MessageType.BOOTSTRAP_REQUEST,
        b"\x00\x02" + V4_PACKED + V6_PACKED + b"\x01",
    ),
    (BootstrapGranted(), MessageType.BOOTSTRAP_GRANTED, b""),
    (BootstrapGranted((V4, V6)), MessageType.BOOTSTRAP_GRANTED, b"\x02" + V4_PACKED + V6_PACKED),
    (BootstrapDenied(DenyReason.NOT_ACCEPTING), MessageType.BOOTSTRAP_DENIED, b"\x05"),
    (EchoAddrReq(), MessageType.ECHO_ADDR_REQ, b""),
    (EchoAddrResp(V4), MessageType.ECHO_ADDR_RESP, V4_PACKED),
    (ConnectRequest(bytes(range(16))), MessageType.CONNECT_REQUEST, bytes(range(16))),
    (ChooseConnection(), MessageType.CHOOSE_CONNECTION, b""),
    (Data(0, b"payload"), MessageType.DATA, b"\x00\x01payload"),
    (Data(255, b"", last=False), MessageType.DATA, b"\xff\x00"),
    (PeerExchangeRequest(), MessageType.PEER_EXCHANGE_REQUEST, b""),
    (
        PeerExchangeResponse((SharedPeer(PeerId(bytes(range(32))), (V4,)),)),
        MessageType.PEER_EXCHANGE_RESPONSE,
        b"\x01" + bytes(range(32)) + b"\x01" + V4_PACKED,
    ),
    (RelayOffer(), MessageType.RELAY_OFFER, b""),
    (RelayConnect(5, PeerId(bytes(range(32)))), MessageType.RELAY_CONNECT, b"\x00\x00\x00\x05" + bytes(range(32))),
    (RelayIncoming(6, PeerId(bytes(range(32)))), MessageType.RELAY_INCOMING, b"\x00\x00\x00\x06" + bytes(range(32))),
    (RelayData(0xFFFFFFFF, b"opaque"), MessageType.RELAY_DATA, b"\xff\xff\xff\xffopaque"),
    (RelayAck(7, 65536), MessageType.RELAY_ACK, b"\x00\x00\x00\x07\x00\x01\x00\x00"),
    (RelayClose(8, RelayCloseReason.TOO_MANY_CIRCUITS), MessageType.RELAY_CLOSE, b"\x00\x00\x00\x08\x04"),
    (UpgradeOffer(b"\xc3CI..."), MessageType.UPGRADE_OFFER, b"\xc3CI..."),
]


def test_relay_data_fast_encoder_matches_the_table() -> None:
    assert encode_relay_data(9, b"abc") == encode_record(RelayData(9, b"abc"))
    assert encode_relay_data(9, memoryview(b"")) == encode_record(RelayData(9, b""))


@pytest.mark.parametrize("kind, body, match", [
    (MessageType.RELAY_CLOSE, b"\x00\x00\x00\x01\x63", "unknown RelayCloseReason 99"),
    (MessageType.RELAY_CONNECT, b"\x00\x00\x00\x01" + bytes(31), "need 32 bytes"),
    (MessageType.RELAY_ACK, b"\x00\x00\x00\x01\x00", "need 4 bytes"),
    (MessageType.RELAY_OFFER, b"\x00", "stray bytes"),
    (MessageType.UPGRADE_OFFER, b"", "UpgradeOffer info of 0 bytes"),
    (MessageType.UPGRADE_OFFER, bytes(2049), "UpgradeOffer info of 2049 bytes"),
])
def test_bad_relay_records_are_remote_errors(kind: MessageType, body: bytes, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        decode_record(kind, body)


def split_record(record: bytes) -> tuple[int, bytes]:
    kind, length = RECORD_HEADER.unpack_from(record)
    body = record[RECORD_HEADER.size:]
    assert len(body) == length
    return kind, body


def test_samples_cover_every_message_type() -> None:
    assert {kind for _, kind, _ in SAMPLES} == set(MessageType)


def test_message_type_values_are_the_wire_bytes() -> None:
    # Renumbering a type breaks every deployed peer; pin the numbers.
    assert {t.name: t.value for t in MessageType} == {
        "HEARTBEAT": 1, "GOODBYE": 2, "BOOTSTRAP_REQUEST": 3, "BOOTSTRAP_GRANTED": 4,
        "BOOTSTRAP_DENIED": 5, "ECHO_ADDR_REQ": 6, "ECHO_ADDR_RESP": 7, "CONNECT_REQUEST": 8,
        "CHOOSE_CONNECTION": 9, "DATA": 10, "PEER_EXCHANGE_REQUEST": 11, "PEER_EXCHANGE_RESPONSE": 12,
        "RELAY_OFFER": 13, "RELAY_CONNECT": 14, "RELAY_INCOMING": 15, "RELAY_DATA": 16, "RELAY_ACK": 17,
        "RELAY_CLOSE": 18, "UPGRADE_OFFER": 19,
    }


@pytest.mark.parametrize(("msg", "kind", "body"), SAMPLES, ids=[f"{type(m).__name__}-{i}" for i, (m, _, _) in enumerate(SAMPLES)])
def test_sample(msg: Message, kind: MessageType, body: bytes) -> None:
    # the exact layout
    record = encode_record(msg)
    assert record == bytes([kind]) + len(body).to_bytes(4, "big") + body
    # the round trip, from bytes and from a memoryview slice
    got_kind, got_body = split_record(record)
    assert got_kind == kind
    decoded = decode_record(got_kind, got_body)
    assert decoded == msg and type(decoded) is type(msg)
    assert decode_record(kind, memoryview(b"~" + body)[1:]) == msg
    # trailing bytes
    if kind is MessageType.DATA:
        # A Data chunk is "the rest of the body": an extra byte is just a longer chunk.
        assert isinstance(msg, Data)
        assert decode_record(kind, body + b"!") == Data(msg.priority, msg.chunk + b"!", msg.last)
    elif kind is MessageType.RELAY_DATA:
        assert isinstance(msg, RelayData)  # the same: opaque bytes to the end of the body
        assert decode_record(kind, body + b"!") == RelayData(msg.circuit, msg.chunk + b"!")
    elif kind is MessageType.UPGRADE_OFFER:
        assert decode_record(kind, body + b"!") == UpgradeOffer(body + b"!")  # the info's own parser judges it
    else:
        with pytest.raises(RemoteProtocolError, match="stray"):
            decode_record(kind, body + b"\x00")
    # every truncation (Data bodies are valid from 2 bytes, priority and flags, on; RelayData from 4)
    shortest_valid = {MessageType.DATA: 2, MessageType.RELAY_DATA: 4, MessageType.UPGRADE_OFFER: 1}.get(kind, len(body))
    for cut in range(shortest_valid):
        if cut == 0 and isinstance(msg, BootstrapGranted):
            continue  # an empty body is a valid BootstrapGranted: one with no listeners
        with pytest.raises(RemoteProtocolError):
            decode_record(kind, body[:cut])


def test_unknown_message_type() -> None:
    for kind in (0, 20, 99, 255):
        with pytest.raises(RemoteProtocolError, match="unknown message type"):
            decode_record(kind, b"")


MALFORMED: list[tuple[MessageType, bytes]] = [
    (MessageType.HEARTBEAT, b"\x00\x00\x00\x01\x02"),  # echo flag must be 0 or 1
    (MessageType.GOODBYE, b"\x00"),  # no GoodbyeReason 0
    (MessageType.GOODBYE, b"\x63"),
    (MessageType.BOOTSTRAP_DENIED, b"\x00"),
    (MessageType.BOOTSTRAP_DENIED, b"\x09"),
    (MessageType.BOOTSTRAP_REQUEST, b"\x02\x00"),  # CrustUser code 2
    (MessageType.BOOTSTRAP_REQUEST, b"\x00\x01"),  # one listener announced, none sent
    (MessageType.BOOTSTRAP_REQUEST, b"\x00\x01\x02\x04\x01\x02\x03\x04\x00\x01"),  # transport 2
    (MessageType.BOOTSTRAP_REQUEST, b"\x00\x01\x00\x05\x01\x02\x03\x04\x00\x01"),  # IP version 5
    (MessageType.ECHO_ADDR_RESP, b"\x00\x06\x00"),
    (MessageType.CONNECT_REQUEST, bytes(CONNECT_TOKEN_SIZE - 1)),
    (MessageType.CONNECT_REQUEST, bytes(CONNECT_TOKEN_SIZE + 1)),
    (MessageType.DATA, b"\x00\x02chunk"),  # unknown flag bit
    (MessageType.DATA, b"\x00\x81chunk"),
    (MessageType.BOOTSTRAP_GRANTED, b"\x00"),
    (MessageType.ECHO_ADDR_REQ, b"\x00"),
    (MessageType.CHOOSE_CONNECTION, b"x"),
]


def test_malformed_bodies() -> None:
    for kind, body in MALFORMED:
        with pytest.raises(RemoteProtocolError):
            decode_record(kind, body)


def test_every_known_enum_value_decodes() -> None:
    for reason in GoodbyeReason:
        assert decode_record(MessageType.GOODBYE, bytes([reason])) == Goodbye(reason)
    for deny in DenyReason:
        assert decode_record(MessageType.BOOTSTRAP_DENIED, bytes([deny])) == BootstrapDenied(deny)
    for user in CrustUser:
        msg = BootstrapRequest(user, (V4,))
        assert decode_record(MessageType.BOOTSTRAP_REQUEST, split_record(encode_record(msg))[1]) == msg


# -- the listener limit ----------------------------------------------------------

def listeners(n: int) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(f"10.0.{i // 256}.{i % 256}", 1000 + i) for i in range(n))


def test_max_listeners_round_trip() -> None:
    assert MAX_LISTENERS == 32
    msg = BootstrapRequest(CrustUser.NODE, listeners(MAX_LISTENERS))
    kind, body = split_record(encode_record(msg))
    assert body[1] == MAX_LISTENERS
    assert decode_record(kind, body) == msg


def test_more_than_max_listeners_on_the_wire_is_rejected() -> None:
    body = bytearray(split_record(encode_record(BootstrapRequest(CrustUser.NODE, listeners(MAX_LISTENERS))))[1])
    body[1] = MAX_LISTENERS + 1  # claim one more; checked before any endpoint is read
    with pytest.raises(RemoteProtocolError, match="listeners"):
        decode_record(MessageType.BOOTSTRAP_REQUEST, bytes(body) + body[2:12])


def test_encoding_more_than_max_listeners_keeps_the_first_ones() -> None:
    # Documented behaviour of the encoder: it truncates rather than raising.
    msg = BootstrapRequest(CrustUser.NODE, listeners(MAX_LISTENERS + 5))
    kind, body = split_record(encode_record(msg))
    assert decode_record(kind, body) == BootstrapRequest(CrustUser.NODE, listeners(MAX_LISTENERS))


# -- local misuse is a local error, never a remote one -------------------------

def test_hostname_listener_cannot_be_encoded() -> None:
    with pytest.raises(LocalProtocolError):
        encode_record(BootstrapRequest(CrustUser.NODE, (Endpoint("example.com", 1),)))


def test_connect_token_must_be_sixteen_bytes() -> None:
    with pytest.raises(ValueError):
        encode_record(ConnectRequest(b"short"))


# -- the Data header used by the channel's fast path ----------------------------

def test_data_header_matches_encode_record() -> None:
    from crust.channel import data_record_header

    chunk = b"0123456789"
    assert DATA_HEADER.size == 7
    for last in (True, False):
        assert data_record_header(9, len(chunk), last) + chunk == encode_record(Data(9, chunk, last))
        assert DATA_HEADER.unpack(encode_record(Data(9, chunk, last))[:7]) == (
            MessageType.DATA, len(chunk) + 2, 9, DATA_LAST if last else 0
        )


def test_peer_exchange_response_is_capped_on_the_wire() -> None:
    shared = SharedPeer(PeerId(bytes(32)), (V4,))
    kind, body = split_record(encode_record(PeerExchangeResponse((shared,) * MAX_SHARED_PEERS)))
    assert len(decode_record(kind, body).peers) == MAX_SHARED_PEERS  # type: ignore[union-attr]
    with pytest.raises(RemoteProtocolError, match="at most"):
        decode_record(kind, bytes([MAX_SHARED_PEERS + 1]) + body[1:])
    with pytest.raises(RemoteProtocolError, match="listeners"):
        decode_record(kind, b"\x01" + bytes(32) + b"\x00")
