"""Rows for byte streams: the wire codecs, the secure channel, the handshake and its crypto."""

from __future__ import annotations

from typing import Callable

from hypothesis import strategies as st

from crust.channel import SecureChannel
from crust.crypto import aes
from crust.crypto.aead import Cipher, Opener, Sealer
from crust.crypto.kex import NoiseXX
from crust.crypto.keys import KeyPair
from crust.errors import BufferReadError, RemoteProtocolError
from crust.handshake import negotiate
from crust.handshake.secure import SecureHandshake
from crust.handshake.states import SecureState
from crust.ids import Endpoint, name_hash
from crust.wire.buffer import Buffer
from crust.wire.framing import FrameDecoder, HandshakeDecoder, encode_frame, encode_handshake_message
from crust.wire.messages import Data, Message, decode_record, encode_record
from .base import (
    EPHEMERAL_A, EPHEMERAL_B, KEY_1, KEY_2, STATIC_A, STATIC_B, Decoder, all_messages, control_messages, endpoints,
    handshake_garbage, pieces,
)

def _pull_endpoint(data: bytes) -> Endpoint:
    buf = Buffer(data)
    endpoint = buf.pull_endpoint()
    if not buf.eof():
        raise BufferReadError("trailing bytes")  # a whole-input row: the codec itself reads on
    return endpoint


def _push_endpoint(endpoint: Endpoint) -> bytes:
    buf = Buffer()
    buf.push_endpoint(endpoint)
    return buf.data()


def _pull_scalars(data: bytes) -> tuple[int, int, int, int, bytes, bytes]:
    buf = Buffer(data)
    ints = buf.pull_uint8(), buf.pull_uint16(), buf.pull_uint32(), buf.pull_uint64()
    return (*ints, buf.pull_bytes(buf.pull_uint8()), buf.pull_rest())


def _push_scalars(value: tuple[int, int, int, int, bytes, bytes]) -> bytes:
    u8, u16, u32, u64, sized, rest = value
    buf = Buffer()
    buf.push_uint8(u8)
    buf.push_uint16(u16)
    buf.push_uint32(u32)
    buf.push_uint64(u64)
    buf.push_uint8(len(sized))
    buf.push_bytes(sized + rest)
    return buf.data()


FRAME_LIMIT = 200


def _frames(data: bytes) -> tuple[tuple[bytes, ...], bytes]:
    """The frames found, and the bytes left over (an unfinished frame)."""
    decoder, frames = FrameDecoder(FRAME_LIMIT), []
    for piece in pieces(data):
        decoder.receive_data(piece)
        frames += decoder.frames()
    assert all(len(frame) <= FRAME_LIMIT for frame in frames)
    return tuple(frames), decoder.take_rest()


def _handshake_messages(data: bytes) -> tuple[tuple[tuple[int, bytes], ...], bytes]:
    decoder, messages = HandshakeDecoder(FRAME_LIMIT), []
    for piece in pieces(data):
        decoder.receive_data(piece)
        while (message := decoder.next_message()) is not None:
            messages.append(message)
    assert all(len(body) <= FRAME_LIMIT for _, body in messages)
    return tuple(messages), decoder.take_rest()


def _record(data: bytes) -> Message:
    """``u8 type ‖ body`` (the channel has already cut the record out by its length)."""
    if not data:
        raise BufferReadError("no type byte")
    return decode_record(data[0], data[1:])


def _record_bytes(message: Message) -> bytes:
    record = encode_record(message)
    return record[:1] + record[5:]


def _channel(data: bytes) -> list[Message]:
    channel = SecureChannel(Sealer(KEY_2), Opener(KEY_1), max_message_size=1000)
    out: list[Message] = []
    for piece in pieces(data):
        out += channel.receive_data(piece)
    assert all(m.last and len(m.chunk) <= 1000 for m in out if isinstance(m, Data))
    return out


def _sealed(batches: list[list[Message]]) -> bytes:
    sender = SecureChannel(Sealer(KEY_1), Opener(KEY_2), max_message_size=1000)
    return b"".join(sender.encode(*batch) for batch in batches)


def _sealed_plaintexts(plaintexts: list[bytes]) -> bytes:
    sealer = Sealer(KEY_1)
    return b"".join(encode_frame(sealer.seal(p)) for p in plaintexts)


whole_messages = st.one_of(control_messages, st.builds(Data, st.integers(0, 255), st.binary(max_size=300)))
# The plaintext of an authentic frame: noise, or real records mixed with junk.
frame_plaintexts = st.one_of(
    st.binary(max_size=200),
    st.lists(st.one_of(all_messages.map(encode_record), st.binary(max_size=20)), max_size=6).map(b"".join),
)

WIRE = (
    Decoder("wire.buffer.endpoint", _pull_endpoint, (BufferReadError,), ("crust.wire.buffer.Buffer.pull_endpoint",),
            endpoints, _push_endpoint, canonical=True, noise=st.binary(max_size=20), max_size=40),
    Decoder("wire.buffer.scalars", _pull_scalars, (BufferReadError,), tuple(
        f"crust.wire.buffer.Buffer.{name}" for name in
        ("pull_uint8", "pull_uint16", "pull_uint32", "pull_uint64", "pull_bytes", "pull_rest")),
        st.tuples(st.integers(0, 2**8 - 1), st.integers(0, 2**16 - 1), st.integers(0, 2**32 - 1),
                  st.integers(0, 2**64 - 1), st.binary(max_size=255), st.binary(max_size=20)),
        _push_scalars, canonical=True),
    Decoder("wire.framing.frames", _frames, (RemoteProtocolError,), (
        "crust.wire.framing.FrameDecoder.receive_data", "crust.wire.framing.FrameDecoder.next_frame"),
        st.lists(st.binary(max_size=FRAME_LIMIT), max_size=5).map(lambda fs: (tuple(fs), b"")),
        lambda v: b"".join(map(encode_frame, v[0])) + v[1], canonical=True),
    Decoder("wire.framing.handshake_messages", _handshake_messages, (RemoteProtocolError,), (
        "crust.wire.framing.HandshakeDecoder.receive_data", "crust.wire.framing.HandshakeDecoder.next_message"),
        st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=FRAME_LIMIT)), max_size=5).map(
            lambda ms: (tuple(ms), b"")),
        lambda v: b"".join(encode_handshake_message(*m) for m in v[0]) + v[1], canonical=True),
    Decoder("wire.messages.record", _record, (RemoteProtocolError,), ("crust.wire.messages.decode_record",),
            all_messages, _record_bytes, canonical=True),
    Decoder("channel", _channel, (RemoteProtocolError,), (
        "crust.channel.SecureChannel.receive_data", "crust.channel.SecureChannel.feed",
        "crust.channel.SecureChannel.next_batch"),
        st.lists(st.lists(whole_messages, min_size=1, max_size=3), max_size=3), _sealed,
        expect=lambda batches: [m for batch in batches for m in batch],
        noise=st.tuples(st.lists(frame_plaintexts, max_size=3), st.binary(max_size=40)).map(
            lambda v: _sealed_plaintexts(v[0]) + v[1]), max_size=400),
)


# -- handshake and crypto -----------------------------------------------------------------------

def _secure(initiator: bool) -> Callable[[bytes], SecureState]:
    def decode(data: bytes) -> SecureState:
        machine = SecureHandshake(initiator=initiator, static=STATIC_A if initiator else STATIC_B,
                                  name_hash=name_hash(None), max_message_size=1024)
        for piece in pieces(data):
            machine.receive_data(piece)
        # Nobody finishes without a real Noise peer: the responder would still need
        # message 3, and the initiator a message 2 keyed to its fresh ephemeral.
        assert not machine.complete and machine.channel is None
        return machine.state
    return decode


def first_flight(_: None) -> bytes:
    return SecureHandshake(initiator=True, static=STATIC_A, name_hash=name_hash(None),
                           max_message_size=1024).data_to_send()


PROLOGUE = b"crust fuzz"


def _noise(initiator: bool, ephemeral: KeyPair | None = None) -> NoiseXX:
    return NoiseXX(initiator=initiator, static=STATIC_A if initiator else STATIC_B, prologue=PROLOGUE,
                   ephemeral=ephemeral)


def _read_message_1(data: bytes) -> bytes:
    return _noise(False).read_message(data)


def _read_message_2(data: bytes) -> bytes:
    initiator = _noise(True, EPHEMERAL_A)
    initiator.write_message()
    return initiator.read_message(data)


def _message_2(payload: bytes) -> bytes:
    # Both ephemerals pinned: message 2 is a function of its payload, so it can be made ahead.
    responder = _noise(False, EPHEMERAL_B)
    responder.read_message(_noise(True, EPHEMERAL_A).write_message())
    return responder.write_message(payload)


def _aead(cipher: Cipher) -> Decoder:
    return Decoder(f"crypto.aead.open[{cipher.label}]", lambda data: Opener(KEY_1, cipher=cipher).open(data),
                   (RemoteProtocolError,), ("crust.crypto.aead.Opener.open",),
                   st.binary(max_size=200), lambda pt: Sealer(KEY_1, cipher=cipher).seal(pt), canonical=True)


_NONCE = bytes(12)


def _ocb_open(data: bytes) -> bytes:
    return aes.ocb_context(KEY_1).open(_NONCE, b"", data)


def _ocb_seal(plaintext: bytes) -> bytes:
    return aes.ocb_context(KEY_1).seal(_NONCE, b"", plaintext)


offers = st.permutations(list(Cipher)).flatmap(
    lambda order: st.integers(1, len(order)).map(lambda n: tuple(order[:n]))).filter(
    lambda offer: negotiate.FALLBACK in offer)
payload_items = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=6)), max_size=4).map(
    lambda items: b"".join(bytes([tag, len(value)]) + value for tag, value in items))

HANDSHAKE = (
    Decoder("handshake.secure.responder", _secure(False), (RemoteProtocolError,),
            ("crust.handshake.secure.SecureHandshake.receive_data",),
            st.none(), first_flight, expect=lambda _: SecureState.EXPECT_NOISE3, noise=handshake_garbage),
    Decoder("handshake.secure.initiator", _secure(True), (RemoteProtocolError,),
            ("crust.handshake.secure.SecureHandshake.receive_data",), noise=handshake_garbage),
    Decoder("handshake.negotiate.offer", negotiate.read_offer, (RemoteProtocolError,),
            ("crust.handshake.negotiate.read_offer",), offers, negotiate.encode_offer, canonical=False,
            noise=payload_items),
    Decoder("handshake.negotiate.choice", lambda data: negotiate.read_choice(data, tuple(Cipher)),
            (RemoteProtocolError,), ("crust.handshake.negotiate.read_choice",),
            st.sampled_from(Cipher), negotiate.encode_choice, canonical=False, noise=payload_items),
    Decoder("crypto.kex.message_1", _read_message_1, (RemoteProtocolError,), ("crust.crypto.kex.NoiseXX.read_message",),
            st.binary(max_size=100), lambda payload: _noise(True).write_message(payload)),
    Decoder("crypto.kex.message_2", _read_message_2, (RemoteProtocolError,), ("crust.crypto.kex.NoiseXX.read_message",),
            st.binary(max_size=100), _message_2),
    *(_aead(cipher) for cipher in Cipher),
    # The per-key OCB context under Opener (its direct path on AES-NI machines): ValueError, which Opener re-labels.
    Decoder("crypto.ocb.open", _ocb_open, (ValueError,), ("crust.crypto.ocb.OcbKey.open",),
            st.binary(max_size=200), _ocb_seal, canonical=True),
)
