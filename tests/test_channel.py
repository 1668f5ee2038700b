"""crust.channel.SecureChannel: framing ∘ AEAD ∘ records, reassembly per priority, poisoning."""

from __future__ import annotations

import pytest

from crust.channel import AEAD_TAG_SIZE, MAX_FRAME_PLAINTEXT, SecureChannel, data_record_header
from crust.errors import DecryptError, RemoteProtocolError
from crust.ids import CrustUser, Endpoint
from crust.wire.messages import (
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
)

from tests.helpers import both_modes, channel_pair, feed

CONTROL: list[Message] = [
    Heartbeat(1),
    Heartbeat(2, echo=True),
    Goodbye(GoodbyeReason.CLOSED),
    BootstrapRequest(CrustUser.NODE, (Endpoint("192.0.2.1", 5483), Endpoint("2001:db8::1", 5484, "udp"))),
    BootstrapGranted(),
    BootstrapDenied(DenyReason.BANNED),
    EchoAddrReq(),
    EchoAddrResp(Endpoint("198.51.100.9", 40000)),
    ConnectRequest(b"t" * 16),
    ChooseConnection(),
    Data(3, b"whole message"),
]


def chunk_frame(sender: SecureChannel, priority: int, chunk: bytes, last: bool) -> bytes:
    """One sealed frame holding one Data record (what the outbox builds)."""
    return sender.seal([data_record_header(priority, len(chunk), last), chunk])


def chunked(sender: SecureChannel, priority: int, message: bytes, size: int) -> list[bytes]:
    """``message`` cut into frames of ``size``-byte chunks."""
    pieces = [message[i:i + size] for i in range(0, len(message), size)] or [b""]
    return [chunk_frame(sender, priority, p, i == len(pieces) - 1) for i, p in enumerate(pieces)]


@pytest.fixture
def pair() -> tuple[SecureChannel, SecureChannel]:
    return channel_pair(max_message_size=300_000)


# -- delivery --------------------------------------------------------------------

@both_modes
def test_one_message_each_way(one_byte: bool) -> None:
    a, b = channel_pair(max_message_size=300_000)
    assert feed(b.receive_data, a.encode(Heartbeat(1)), one_byte=one_byte) == [Heartbeat(1)]
    assert feed(a.receive_data, b.encode(Heartbeat(2, echo=True)), one_byte=one_byte) == [Heartbeat(2, echo=True)]


@both_modes
def test_every_message_type_in_one_frame(one_byte: bool) -> None:
    a, b = channel_pair(max_message_size=300_000)
    assert feed(b.receive_data, a.encode(*CONTROL), one_byte=one_byte) == CONTROL


@both_modes
def test_every_message_type_one_frame_each(one_byte: bool) -> None:
    a, b = channel_pair(max_message_size=300_000)
    wire = b"".join(a.encode(m) for m in CONTROL)
    assert feed(b.receive_data, wire, one_byte=one_byte) == CONTROL


def test_frame_layout_is_length_then_ciphertext(pair: tuple[SecureChannel, SecureChannel]) -> None:
    a, _ = pair
    frame = a.encode(Heartbeat(5))
    record_size = RECORD_HEADER.size + 5
    assert frame[:4] == (record_size + AEAD_TAG_SIZE).to_bytes(4, "big")
    assert len(frame) == 4 + record_size + AEAD_TAG_SIZE
    assert b"\x00\x00\x00\x05" not in frame[4:4 + record_size]  # the seq is not in clear (w.h.p.)


def test_empty_frame_carries_nothing(pair: tuple[SecureChannel, SecureChannel]) -> None:
    a, b = pair
    assert b.receive_data(a.seal([])) == []
    assert b.receive_data(a.encode(EchoAddrReq())) == [EchoAddrReq()]


def test_partial_frame_yields_nothing_until_complete(pair: tuple[SecureChannel, SecureChannel]) -> None:
    a, b = pair
    frame = a.encode(Heartbeat(9))
    assert b.receive_data(frame[:-1]) == []
    assert b.receive_data(frame[-1:]) == [Heartbeat(9)]


def test_receive_data_accepts_bytearray_and_memoryview(pair: tuple[SecureChannel, SecureChannel]) -> None:
    a, b = pair
    assert b.receive_data(bytearray(a.encode(Heartbeat(1)))) == [Heartbeat(1)]
    assert b.receive_data(memoryview(a.encode(Heartbeat(2)))) == [Heartbeat(2)]


# -- reassembly of chunked Data ------------------------------------------------------

@both_modes
def test_big_message_is_reassembled(one_byte: bool) -> None:
    a, b = channel_pair(max_message_size=300_000)
    message = bytes(range(256)) * 800  # 204_800 bytes: four 64 KiB chunks
    frames = chunked(a, 5, message, 64 * 1024)
    assert len(frames) == 4
    if one_byte:
        # byte at a time through all 200 KiB is slow; do the first and last frames bytewise
        got = feed(b.receive_data, frames[0], one_byte=True)
        got += b.receive_data(b"".join(frames[1:3]))
        got += feed(b.receive_data, frames[3], one_byte=True)
    else:
        got = b.receive_data(b"".join(frames))
    assert got == [Data(5, message)]
    assert got[0].last is True  # type: ignore[union-attr]


def test_message_is_delivered_only_with_its_last_chunk(pair: tuple[SecureChannel, SecureChannel]) -> None:
    a, b = pair
    frames = chunked(a, 1, b"abcdefghij", 3)
    assert [b.receive_data(f) for f in frames] == [[], [], [], [Data(1, b"abcdefghij")]]


def test_priorities_interleave_and_reassemble_separately(pair: tuple[SecureChannel, SecureChannel]) -> None:
    a, b = pair
    big5 = b"5" * 150_000
    big7 = b"7" * 90_000
    wire = [
        chunk_frame(a, 5, big5[:60_000], False),
        chunk_frame(a, 7, big7[:60_000], False),
        chunk_frame(a, 0, b"urgent-1", True),
        chunk_frame(a, 5, big5[60_000:120_000], False),
        chunk_frame(a, 0, b"urgent-2", True),
        chunk_frame(a, 7, big7[60_000:], True),
        chunk_frame(a, 5, big5[120_000:], True),
    ]
    got = [b.receive_data(f) for f in wire]
    assert got == [
        [], [], [Data(0, b"urgent-1")], [], [Data(0, b"urgent-2")], [Data(7, big7)], [Data(5, big5)],
    ]


def test_many_chunks_of_several_priorities_in_one_frame(pair: tuple[SecureChannel, SecureChannel]) -> None:
    a, b = pair
    records: list[bytes | memoryview] = [
        data_record_header(2, 3, False), b"abc",
        data_record_header(1, 1, True), b"X",
        data_record_header(2, 3, True), b"def",
        data_record_header(2, 2, True), b"gh",
    ]
    assert b.receive_data(a.seal(records)) == [Data(1, b"X"), Data(2, b"abcdef"), Data(2, b"gh")]


def test_within_a_priority_messages_keep_their_order(pair: tuple[SecureChannel, SecureChannel]) -> None:
    a, b = pair
    wire = b"".join(f for i in range(5) for f in chunked(a, 4, bytes([65 + i]) * 100, 30))
    assert b.receive_data(wire) == [Data(4, bytes([65 + i]) * 100) for i in range(5)]


def test_empty_message(pair: tuple[SecureChannel, SecureChannel]) -> None:
    a, b = pair
    assert b.receive_data(chunk_frame(a, 0, b"", True)) == [Data(0, b"")]


def test_message_of_exactly_max_size_is_accepted() -> None:
    a, b = channel_pair(max_message_size=1000)
    frames = chunked(a, 3, b"m" * 1000, 400)
    assert b.receive_data(b"".join(frames)) == [Data(3, b"m" * 1000)]


# -- remote misbehaviour: RemoteProtocolError, nothing delivered, then poisoned -----

def assert_poisoned(channel: SecureChannel, good_frame: bytes) -> None:
    with pytest.raises(RemoteProtocolError, match="already failed"):
        channel.receive_data(good_frame)
    with pytest.raises(RemoteProtocolError):
        channel.receive_data(b"")


def test_tampered_byte() -> None:
    for where in ("first", "middle", "tag"):
        a, b = channel_pair()
        frame = bytearray(a.encode(Heartbeat(1), Data(0, b"secret")))
        index = {"first": 4, "middle": len(frame) // 2, "tag": len(frame) - 1}[where]
        frame[index] ^= 0x01
        with pytest.raises(DecryptError):
            b.receive_data(bytes(frame))
        assert_poisoned(b, a.encode(Heartbeat(2)))


def test_tampered_length_prefix() -> None:
    for delta in (-1, +1):
        a, b = channel_pair()
        frame = a.encode(Heartbeat(1))
        length = int.from_bytes(frame[:4], "big") + delta
        forged = length.to_bytes(4, "big") + frame[4:]
        if delta > 0:
            # One more byte announced: the frame is incomplete, so nothing happens yet...
            assert b.receive_data(forged) == []
            # ...until the next byte arrives and the misaligned frame fails to open.
            with pytest.raises(DecryptError):
                b.receive_data(b"\x00")
        else:
            with pytest.raises(DecryptError):
                b.receive_data(forged)
        assert_poisoned(b, a.encode(Heartbeat(2)))


@both_modes
def test_tampered_frame_delivers_nothing_bytewise(one_byte: bool) -> None:
    a, b = channel_pair(max_message_size=300_000)
    frame = bytearray(a.encode(Data(0, b"secret"), Heartbeat(3)))
    frame[10] ^= 0x80
    delivered: list[Message] = []
    with pytest.raises(RemoteProtocolError):
        delivered += feed(b.receive_data, bytes(frame), one_byte=one_byte)
    assert delivered == []


def test_replayed_frame(pair: tuple[SecureChannel, SecureChannel]) -> None:
    a, b = pair
    frame = a.encode(Data(0, b"pay me once"))
    assert b.receive_data(frame) == [Data(0, b"pay me once")]
    with pytest.raises(DecryptError):
        b.receive_data(frame)
    assert_poisoned(b, a.encode(Heartbeat(2)))


def test_reordered_frames(pair: tuple[SecureChannel, SecureChannel]) -> None:
    a, b = pair
    first, second = a.encode(Heartbeat(1)), a.encode(Heartbeat(2))
    with pytest.raises(DecryptError):
        b.receive_data(second)
    assert_poisoned(b, first)


def test_dropped_frame(pair: tuple[SecureChannel, SecureChannel]) -> None:
    a, b = pair
    a.encode(Heartbeat(1))  # sealed, never delivered
    with pytest.raises(DecryptError):
        b.receive_data(a.encode(Heartbeat(2)))


def test_frame_from_the_wrong_direction(pair: tuple[SecureChannel, SecureChannel]) -> None:
    a, b = pair
    with pytest.raises(DecryptError):
        a.receive_data(a.encode(Heartbeat(1)))  # a's own frame: other key


def test_oversize_message_in_one_chunk() -> None:
    a, b = channel_pair(max_message_size=1000)
    with pytest.raises(RemoteProtocolError, match="exceeds 1000"):
        b.receive_data(chunk_frame(a, 0, b"x" * 1001, True))
    assert_poisoned(b, a.encode(Heartbeat(1)))


def test_oversize_message_across_chunks_delivers_nothing() -> None:
    a, b = channel_pair(max_message_size=1000)
    assert b.receive_data(chunk_frame(a, 2, b"x" * 600, False)) == []
    with pytest.raises(RemoteProtocolError, match="exceeds 1000"):
        b.receive_data(chunk_frame(a, 2, b"x" * 401, True))
    assert_poisoned(b, a.encode(Heartbeat(1)))


def test_oversize_first_chunk_without_last_flag() -> None:
    a, b = channel_pair(max_message_size=1000)
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        b.receive_data(chunk_frame(a, 2, b"x" * 1001, False))


def test_oversize_frame_rejected_after_its_length_prefix(pair: tuple[SecureChannel, SecureChannel]) -> None:
    a, b = pair
    too_big = MAX_FRAME_PLAINTEXT + AEAD_TAG_SIZE + 1
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        b.receive_data(too_big.to_bytes(4, "big"))
    assert_poisoned(b, a.encode(Heartbeat(1)))


def test_largest_frame_is_accepted(pair: tuple[SecureChannel, SecureChannel]) -> None:
    a, b = pair
    chunk = b"c" * (MAX_FRAME_PLAINTEXT - 7)
    frame = chunk_frame(a, 0, chunk, True)
    assert len(frame) == 4 + MAX_FRAME_PLAINTEXT + AEAD_TAG_SIZE
    assert b.receive_data(frame) == [Data(0, chunk)]


MALFORMED_PLAINTEXTS = [
    (b"\x01\x00", "truncated record header"),
    (b"\x01\x00\x00\x00\x09\x00", "past the end"),
    (b"\x0a\x00\x00\x00\x09\x00\x01zz", "past the end"),  # a whole Data record (the fast path) cut short
    (b"\x63\x00\x00\x00\x00", "unknown message type"),
    (b"\x0a\x00\x00\x00\x01\x00", "shorter than its header"),
    (b"\x0a\x00\x00\x00\x03\x00\x04z", "unknown Data flags"),
    (b"\x01\x00\x00\x00\x04\x00\x00\x00\x01", "need 1 bytes"),  # Heartbeat body one byte short
    (b"\x04\x00\x00\x00\x01\x00", "stray"),  # BootstrapGranted with a body
]


def test_malformed_records_inside_an_authentic_frame() -> None:
    for plaintext, match in MALFORMED_PLAINTEXTS:
        a, b = channel_pair()
        with pytest.raises(RemoteProtocolError, match=match):
            b.receive_data(a.seal([plaintext]))
        assert_poisoned(b, a.encode(Heartbeat(1)))


def test_good_frames_before_a_bad_one_in_the_same_read_are_not_returned(
    pair: tuple[SecureChannel, SecureChannel],
) -> None:
    # The call raises, so the connection is dropped as a whole: messages decoded
    # earlier in the same call are never handed out (nothing half-delivered).
    a, b = pair
    good = a.encode(Heartbeat(1))
    bad = bytearray(a.encode(Heartbeat(2)))
    bad[-1] ^= 1
    with pytest.raises(DecryptError):
        b.receive_data(good + bytes(bad))


def test_seal_concatenates_pieces(pair: tuple[SecureChannel, SecureChannel]) -> None:
    a, b = pair
    pieces: list[bytes | memoryview] = [b"\x01\x00\x00", memoryview(b"\x00\x05\x00\x00"), b"\x00\x06\x01"]
    assert b.receive_data(a.seal(pieces)) == [Heartbeat(6, echo=True)]
