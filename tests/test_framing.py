"""crust.wire.framing: incremental length-prefixed frame and handshake-message decoders.

Every decoder test runs with the input in one chunk and one byte at a time (h11 test_io).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crust.errors import RemoteProtocolError
from crust.wire.framing import (
    FRAME_HEADER_SIZE,
    FrameDecoder,
    HandshakeDecoder,
    encode_frame,
    encode_handshake_message,
)

from tests.decoders import chunks_of
from tests.helpers import both_modes, bytewise


def frames_fed(decoder: FrameDecoder, data: bytes, one_byte: bool) -> list[bytes]:
    """Feed ``data`` and collect every frame, polling after each piece as a pump would."""
    out: list[bytes] = []
    for piece in (bytewise(data) if one_byte else [data]):
        decoder.receive_data(piece)
        out.extend(decoder.frames())
    return out


def messages_fed(decoder: HandshakeDecoder, data: bytes, one_byte: bool) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    for piece in (bytewise(data) if one_byte else [data]):
        decoder.receive_data(piece)
        while (message := decoder.next_message()) is not None:
            out.append(message)
    return out


# -- encoders ------------------------------------------------------------------

def test_encode_frame_layout() -> None:
    assert FRAME_HEADER_SIZE == 4
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert encode_frame(b"") == b"\x00\x00\x00\x00"
    assert encode_frame(b"x" * 0x10203)[:4] == b"\x00\x01\x02\x03"


def test_encode_handshake_message_layout() -> None:
    assert encode_handshake_message(3, b"xy") == b"\x03\x00\x02xy"
    assert encode_handshake_message(255, b"") == b"\xff\x00\x00"


# -- FrameDecoder ----------------------------------------------------------------

@both_modes
def test_frames_round_trip(one_byte: bool) -> None:
    bodies = [b"hello", b"", b"x" * 1000, b"\x00\x00\x00\x05", b"end"]
    dec = FrameDecoder(1000)
    assert frames_fed(dec, b"".join(encode_frame(b) for b in bodies), one_byte) == bodies
    assert dec.buffered == 0
    assert dec.next_frame() is None


def test_frame_appears_exactly_when_its_last_byte_arrives() -> None:
    wire = encode_frame(b"abcdef")
    dec = FrameDecoder(100)
    for i, byte in enumerate(bytewise(wire)):
        dec.receive_data(byte)
        if i < len(wire) - 1:
            assert dec.next_frame() is None
            assert dec.buffered == i + 1
    assert dec.next_frame() == b"abcdef"
    assert dec.next_frame() is None


@both_modes
def test_frame_at_the_limit_is_accepted(one_byte: bool) -> None:
    dec = FrameDecoder(16)
    assert frames_fed(dec, encode_frame(b"z" * 16), one_byte) == [b"z" * 16]


@both_modes
def test_frame_over_the_limit_raises(one_byte: bool) -> None:
    dec = FrameDecoder(16)
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        frames_fed(dec, encode_frame(b"z" * 17), one_byte)


def test_huge_length_prefix_fails_after_four_bytes_without_buffering() -> None:
    # PROTOCOL.md §4: the length is checked before any body byte is buffered.
    dec = FrameDecoder(64 * 1024)
    for byte in bytewise(b"\x80\x00\x00"):
        dec.receive_data(byte)
        assert dec.next_frame() is None
    dec.receive_data(b"\x00")  # 2**31
    with pytest.raises(RemoteProtocolError, match=str(2**31)):
        dec.next_frame()
    assert dec.buffered == 4


def test_huge_length_prefix_in_one_chunk_with_body_bytes() -> None:
    dec = FrameDecoder(1024)
    dec.receive_data(b"\xff\xff\xff\xff" + b"junk")
    with pytest.raises(RemoteProtocolError):
        dec.next_frame()


def test_frame_decoder_is_poisoned_after_an_error() -> None:
    dec = FrameDecoder(4)
    dec.receive_data(encode_frame(b"12345"))
    with pytest.raises(RemoteProtocolError):
        dec.next_frame()
    dec.receive_data(encode_frame(b"ok"))
    with pytest.raises(RemoteProtocolError, match="already failed"):
        dec.next_frame()
    with pytest.raises(RemoteProtocolError):
        dec.frames()


def test_error_comes_only_after_the_good_frames_before_it() -> None:
    dec = FrameDecoder(4)
    dec.receive_data(encode_frame(b"ok") + encode_frame(b"too long"))
    assert dec.next_frame() == b"ok"
    with pytest.raises(RemoteProtocolError):
        dec.next_frame()


def test_frame_decoder_accepts_bytearray_and_memoryview() -> None:
    dec = FrameDecoder(10)
    dec.receive_data(bytearray(b"\x00\x00\x00\x02a"))
    dec.receive_data(memoryview(b"b"))
    assert dec.frames() == [b"ab"]


def test_long_bytewise_stream_keeps_the_internal_buffer_small() -> None:
    # Consumed bytes are compacted away; feeding a long stream a byte at a time
    # must not keep all of it (white-box: looks at the private buffer).
    wire = encode_frame(b"0123456789") * 2000
    dec = FrameDecoder(100)
    count = 0
    for byte in bytewise(wire):
        dec.receive_data(byte)
        count += len(dec.frames())
        assert len(dec._buf) <= 64
    assert count == 2000


@both_modes
def test_take_rest_hands_over_unconsumed_bytes(one_byte: bool) -> None:
    dec = FrameDecoder(100)
    rest = b"\x00\x00\x00\x09partial"  # a frame header and part of its body
    assert frames_fed(dec, encode_frame(b"first") + rest, one_byte) == [b"first"]
    assert dec.buffered == len(rest)
    assert dec.take_rest() == rest
    assert dec.buffered == 0
    assert dec.take_rest() == b""
    assert dec.next_frame() is None


def test_take_rest_after_everything_consumed_is_empty() -> None:
    dec = FrameDecoder(100)
    dec.receive_data(encode_frame(b"a"))
    assert dec.next_frame() == b"a"
    assert dec.take_rest() == b""


def test_frames_after_take_rest_start_fresh() -> None:
    dec = FrameDecoder(100)
    dec.receive_data(b"\x00\x00")
    assert dec.take_rest() == b"\x00\x00"
    dec.receive_data(encode_frame(b"new"))
    assert dec.frames() == [b"new"]


def test_whole_frames_of_a_bytes_chunk_are_views_of_it() -> None:
    # A socket read returns bytes: its whole frames are not copied (white-box: the view's owner).
    chunk = encode_frame(b"a" * 100) + encode_frame(b"b" * 50) + b"\x00\x00\x00\x05par"
    dec = FrameDecoder(1000)
    dec.receive_data(chunk)
    first, second = dec.frames()
    assert (first, second) == (b"a" * 100, b"b" * 50)
    assert first.obj is chunk and second.obj is chunk
    # Only the split frame's bytes are kept; the chunk itself is let go.
    assert dec._chunk == b"" and bytes(dec._buf[dec._pos:]) == b"\x00\x00\x00\x05par"
    dec.receive_data(b"ts" + encode_frame(b"c"))
    assert dec.frames() == [b"parts", b"c"]
    assert dec.buffered == 0


def test_a_frame_kept_by_the_caller_survives_later_input() -> None:
    dec = FrameDecoder(100)
    dec.receive_data(b"\x00\x00\x00\x03a")
    dec.receive_data(bytearray(b"bc"))
    kept = dec.next_frame()
    dec.receive_data(b"\x00\x00\x00\x02xy\x00\x00")  # reuses no memory the caller holds
    dec.receive_data(bytearray(b"\x00\x01q\x00"))
    assert dec.buffered == 12
    assert dec.frames() == [b"xy", b"q"]
    assert kept == b"abc"
    assert dec.take_rest() == b"\x00"


@settings(max_examples=80, deadline=None)
@given(bodies=st.lists(st.binary(max_size=40), max_size=8), data=st.data())
def test_any_chunking_and_any_read_schedule_gives_the_frames(bodies: list[bytes], data: st.DataObject) -> None:
    wire = b"".join(encode_frame(b) for b in bodies)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=6))
    dec, got = FrameDecoder(40), []
    for piece in chunks_of(wire, cuts):
        kind = data.draw(st.sampled_from([bytes, bytearray, memoryview]))
        dec.receive_data(kind(piece))
        if data.draw(st.booleans()):  # sometimes read, sometimes feed again first
            got += [bytes(frame) for frame in dec.frames()]
    got += [bytes(frame) for frame in dec.frames()]
    assert got == bodies and dec.buffered == 0


# -- HandshakeDecoder ------------------------------------------------------------

@both_modes
def test_handshake_messages_round_trip(one_byte: bool) -> None:
    messages = [(1, b"hello"), (2, b""), (3, b"\xff" * 512), (255, b"x")]
    dec = HandshakeDecoder(512)
    wire = b"".join(encode_handshake_message(k, b) for k, b in messages)
    assert messages_fed(dec, wire, one_byte) == messages
    assert dec.buffered == 0


def test_handshake_message_appears_exactly_when_complete() -> None:
    wire = encode_handshake_message(7, b"abc")
    dec = HandshakeDecoder(16)
    for i, byte in enumerate(bytewise(wire)):
        dec.receive_data(byte)
        if i < len(wire) - 1:
            assert dec.next_message() is None
    assert dec.next_message() == (7, b"abc")


@both_modes
def test_handshake_message_over_the_limit_raises(one_byte: bool) -> None:
    dec = HandshakeDecoder(512)
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        messages_fed(dec, encode_handshake_message(3, b"\x00" * 513), one_byte)


def test_handshake_length_checked_after_three_header_bytes() -> None:
    dec = HandshakeDecoder(512)
    dec.receive_data(b"\x01\xff")
    assert dec.next_message() is None
    dec.receive_data(b"\xff")  # 65535
    with pytest.raises(RemoteProtocolError):
        dec.next_message()
    assert dec.buffered == 3


def test_handshake_decoder_is_poisoned_after_an_error() -> None:
    dec = HandshakeDecoder(1)
    dec.receive_data(encode_handshake_message(1, b"ab"))
    with pytest.raises(RemoteProtocolError):
        dec.next_message()
    dec.receive_data(encode_handshake_message(1, b"a"))
    with pytest.raises(RemoteProtocolError, match="already failed"):
        dec.next_message()


@both_modes
def test_handshake_decoder_take_rest(one_byte: bool) -> None:
    # The secure handshake stops asking for messages after its last one; the
    # bytes behind it are the channel's and must come back untouched.
    dec = HandshakeDecoder(100)
    trailing = encode_frame(b"first channel frame")
    got = None
    for piece in (bytewise(encode_handshake_message(3, b"noise") + trailing) if one_byte else
                  [encode_handshake_message(3, b"noise") + trailing]):
        dec.receive_data(piece)
        if got is None:
            got = dec.next_message()
    assert got == (3, b"noise")
    assert dec.take_rest() == trailing
    assert dec.buffered == 0
