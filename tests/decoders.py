"""Every decoder in crust in one table: what it reads, what it may raise, and its valid inputs.

A *decoder* is an entry point that turns bytes or text from outside into values: the wire
codecs, the stream and datagram machines that read hostile input, and the parsers of what a
user hands us (connection info, config and identity files, the bootstrap cache).  Each
:class:`Decoder` row says

* ``decode``: a callable(bytes) that runs the decoder on one input.  Stream decoders get the
  bytes in pieces, cut where a ``Random`` seeded by the input says (:func:`pieces`): the cuts
  vary from input to input, yet a failing input reproduces;
* ``raises``: the only exceptions it may raise, whatever the bytes (``()``: none; such
  decoders count and drop, and return ``None`` for "refused");
* ``values`` / ``encode`` / ``expect``: valid values and their encodings;
  ``decode(encode(v)) == expect(v)`` (``v`` itself by default), and mutations of those
  encodings (bit flips, truncation, extension, ...) are fuzz input too;
* ``canonical``: True when whatever decodes re-encodes to the very same bytes; False when a
  decoded value need only survive ``decode(encode(value))``; None when outputs are not values
  that ``encode`` takes;
* ``noise``: structured hostile input beyond random bytes (a right magic, then junk);
* ``covers``: the package's entry points the row exercises.  tests/test_decoder_fuzz.py scans
  the package (:func:`entry_points`) and fails when one is neither covered nor in ``EXEMPT``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import os
import pkgutil
import random
import re
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

import crust
from crust.bootstrap.cache import BootstrapCache, CacheEntry
from crust.channel import SecureChannel
from crust.cli.chat import decode_info, encode_info
from crust.config import Config
from crust.config_file import load_config
from crust.connection_info import MAX_ENDPOINTS, PubConnectionInfo
from crust.crypto.aead import Cipher, Opener, Sealer
from crust.crypto.kex import NoiseXX
from crust.crypto.keys import KeyPair
from crust.crypto.mac import punch_key
from crust.discovery import beacon
from crust.discovery.lan import LanBeacon
from crust.engine.engine import Engine
from crust.errors import BufferReadError, ConfigError, RemoteProtocolError
from crust.handshake import negotiate
from crust.handshake.secure import PREAMBLE, SecureHandshake
from crust.handshake.states import SecureInput, SecureState
from crust.identity import Identity
from crust.ids import Contact, CrustUser, Endpoint, PeerId, name_hash
from crust.nat import probe
from crust.nat.punch import UdpPunch
from crust.rudp.events import RudpData
from crust.rudp.packet import _VALID_FLAGS, HEADER, MAX_PAYLOAD, RST, SYN, parse_header, peek_ids
from crust.rudp.stream import RudpStream
from crust.wire.buffer import Buffer
from crust.wire.framing import FrameDecoder, HandshakeDecoder, encode_frame, encode_handshake_message
from crust.wire.messages import (
    CONNECT_TOKEN_SIZE, BootstrapDenied, BootstrapGranted, BootstrapRequest, ChooseConnection, ConnectRequest, Data,
    DenyReason, EchoAddrReq, EchoAddrResp, Goodbye, GoodbyeReason, Heartbeat, Message, PeerExchangeRequest,
    PeerExchangeResponse, SharedPeer, decode_record, encode_record,
)

# -- helpers --------------------------------------------------------------------------------


def pieces(data: bytes) -> list[bytes]:
    """``data`` cut at up to four places (maybe none, maybe empty pieces) that ``data`` itself seeds."""
    rng = random.Random(data)
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(5)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


def chunks_of(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` split at the given (unsorted, possibly out-of-range) offsets."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def text(data: bytes) -> str:
    """Bytes as the text a user would paste: UTF-8, undecodable bytes kept as lone surrogates."""
    return data.decode("utf-8", "surrogateescape")


@st.composite
def mutants(draw: st.DrawFn, valid: SearchStrategy[bytes]) -> bytes:
    """A valid encoding after one to three edits: a bit flip, a cut, an extension, an insertion,
    a deletion, or a byte set to an edge value (0, 1, 0x7f, 0x80, 0xff)."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "truncate", "extend", "insert", "delete", "edge"]))
        at = draw(st.integers(0, len(data)))
        if op == "truncate":
            del data[at:]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=16))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 4))]
        elif data:
            i = at % len(data)
            data[i] = data[i] ^ (1 << draw(st.integers(0, 7))) if op == "flip" else draw(
                st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
    return bytes(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)


def json_objects(fields: dict[str, SearchStrategy[Any]]) -> SearchStrategy[bytes]:
    """JSON objects with any of ``fields`` (each a good value or any JSON), maybe an unknown one."""
    optional = {name: good | json_values for name, good in fields.items()}
    return st.fixed_dictionaries({}, optional={**optional, "extra": json_values}).map(
        lambda obj: json.dumps(obj).encode())


# -- shared strategies ------------------------------------------------------------------------

ip_hosts = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
peer_ids = st.binary(min_size=32, max_size=32).map(PeerId)


def ip_endpoints(min_port: int = 0, transports: tuple[str, ...] = ("tcp", "udp")) -> SearchStrategy[Endpoint]:
    """IP-literal endpoints (what the wire can carry)."""
    return st.builds(Endpoint, ip_hosts, st.integers(min_port, 65535), st.sampled_from(transports))


endpoints = ip_endpoints()
listener_lists = st.lists(endpoints, max_size=6).map(tuple)
control_messages: SearchStrategy[Message] = st.one_of(
    st.builds(Heartbeat, st.integers(min_value=0, max_value=2**32 - 1), st.booleans()),
    st.builds(Goodbye, st.sampled_from(GoodbyeReason)),
    st.builds(BootstrapRequest, st.sampled_from(CrustUser), listener_lists, st.booleans()),
    st.builds(BootstrapGranted, listener_lists),
    st.builds(BootstrapDenied, st.sampled_from(DenyReason)),
    st.just(EchoAddrReq()),
    st.builds(EchoAddrResp, endpoints),
    st.builds(ConnectRequest, st.binary(min_size=CONNECT_TOKEN_SIZE, max_size=CONNECT_TOKEN_SIZE)),
    st.just(ChooseConnection()),
    st.just(PeerExchangeRequest()),
    st.builds(PeerExchangeResponse, st.lists(
        st.builds(SharedPeer, peer_ids, st.lists(endpoints, min_size=1, max_size=4).map(tuple)), max_size=3).map(tuple)),
)
data_messages = st.builds(Data, st.integers(min_value=0, max_value=255), st.binary(max_size=300), st.booleans())
all_messages = st.one_of(control_messages, data_messages)

# Hostile handshake input: noise, noise behind a correct preamble, well-framed handshake
# messages of any type and body, or a HELLO of our network with a random ephemeral key.
handshake_messages = st.builds(encode_handshake_message, st.integers(0, 255), st.binary(max_size=200))
handshake_garbage = st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=200).map(lambda b: PREAMBLE + b),
    st.lists(handshake_messages, max_size=4).map(lambda ms: PREAMBLE + b"".join(ms)),
    st.binary(min_size=64, max_size=64).map(
        lambda b: PREAMBLE + encode_handshake_message(SecureInput.HELLO, name_hash(None) + b[:32])),
)

# Keys are made once: each handshake still makes fresh ephemerals unless a row pins them.
STATIC_A, STATIC_B = KeyPair.generate(), KeyPair.generate()
EPHEMERAL_A, EPHEMERAL_B = KeyPair.generate(), KeyPair.generate()
KEY_1, KEY_2 = bytes(range(32)), bytes(range(1, 33))


# -- the row --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Decoder:
    """One decoder: see the module docstring for each field."""

    name: str
    decode: Callable[[bytes], Any]
    raises: tuple[type[BaseException], ...]
    covers: tuple[str, ...]
    values: SearchStrategy[Any] | None = None
    encode: Callable[[Any], bytes] | None = None
    expect: Callable[[Any], Any] = lambda value: value
    canonical: bool | None = None
    noise: SearchStrategy[bytes] = st.nothing()
    max_size: int = 300

    def inputs(self) -> SearchStrategy[tuple[str, Any]]:
        """``("valid", value)``, or ``("hostile", bytes)``: random, structured noise, or a mutant."""
        hostile = st.binary(max_size=self.max_size) | self.noise
        if self.values is not None:
            assert self.encode is not None
            hostile |= mutants(self.values.map(self.encode))
            return st.tuples(st.just("valid"), self.values) | st.tuples(st.just("hostile"), hostile)
        return st.tuples(st.just("hostile"), hostile)

    def __repr__(self) -> str:
        return self.name

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.name)  # hypothesis prints the row by name in a falsifying example


# -- wire: buffer, framing, records, channel ---------------------------------------------------

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


def _first_flight(_: None) -> bytes:
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


offers = st.permutations(list(Cipher)).flatmap(
    lambda order: st.integers(1, len(order)).map(lambda n: tuple(order[:n]))).filter(
    lambda offer: negotiate.FALLBACK in offer)
payload_items = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=6)), max_size=4).map(
    lambda items: b"".join(bytes([tag, len(value)]) + value for tag, value in items))

HANDSHAKE = (
    Decoder("handshake.secure.responder", _secure(False), (RemoteProtocolError,),
            ("crust.handshake.secure.SecureHandshake.receive_data",),
            st.none(), _first_flight, expect=lambda _: SecureState.EXPECT_NOISE3, noise=handshake_garbage),
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
)


# -- datagrams: NAT probes, punching, LAN beacons, rUDP ---------------------------------------------

PUNCH_KEY = punch_key(bytes(16), bytes(range(16)))
PUNCH_FROM = Endpoint("198.51.100.2", 4000, "udp")
NAT_SOURCE = Endpoint("203.0.113.9", 9, "udp")


def _punch() -> UdpPunch:
    punch = UdpPunch(PUNCH_KEY, PeerId(b"\x02" * 32), PeerId(b"\x01" * 32), [PUNCH_FROM], max_datagrams=50)
    punch.start(0.0)
    return punch


def _receive_probe(data: bytes) -> bool:
    return _punch().receive_probe(data, PUNCH_FROM, 0.01)


def _signed_probe(fields: tuple[int, int, bool]) -> bytes:
    counter, ack, nominate = fields
    return probe.encode(probe.PunchProbe.sign(PUNCH_KEY, *_punch().route, counter, ack, nominate))


nonces_12 = st.binary(min_size=probe.NONCE_SIZE, max_size=probe.NONCE_SIZE)
probe_fields = st.tuples(st.integers(1, probe.MAX_COUNTER), st.integers(0, probe.MAX_COUNTER), st.booleans())
nat_datagrams = st.one_of(
    st.builds(probe.EchoRequest, nonces_12),
    st.builds(probe.EchoResponse, nonces_12, ip_endpoints(1, ("udp",))),
    st.builds(probe.PunchProbe, st.binary(min_size=8, max_size=8), st.binary(min_size=8, max_size=8),
              st.integers(1, probe.MAX_COUNTER), st.integers(0, probe.MAX_COUNTER), st.booleans(),
              st.binary(min_size=16, max_size=16)),
)

NAME_HASH = name_hash("fuzz")
SEEK_NONCE = bytes(range(16))
OUR_ID, THEIR_ID = PeerId(b"\x0a" * 32), PeerId(b"\x0b" * 32)
LAN_FROM = ("192.0.2.7", 5484)
beacon_replies = st.builds(beacon.Reply, st.just(SEEK_NONCE), st.just(NAME_HASH), peer_ids.filter(lambda p: p != OUR_ID),
                           st.lists(ip_endpoints().filter(lambda ep: ep.host not in ("0.0.0.0", "::")),
                                    max_size=6).map(tuple))
beacons = st.one_of(
    st.builds(beacon.Seek, st.binary(min_size=16, max_size=16), st.binary(min_size=32, max_size=32)),
    st.builds(beacon.Reply, st.binary(min_size=16, max_size=16), st.binary(min_size=32, max_size=32), peer_ids,
              st.lists(endpoints, max_size=6).map(tuple)),
)


def _encode_beacon(message: beacon.Seek | beacon.Reply) -> bytes:
    return beacon.encode_seek(message) if isinstance(message, beacon.Seek) else beacon.encode_reply(message)


def _beacon_machines(data: bytes) -> tuple[beacon.Reply | None, bytes | None]:
    """What a seeker makes of ``data`` (a new contact?), and what a responder answers."""
    seeker = beacon.BeaconSeeker(NAME_HASH, [LAN_FROM], SEEK_NONCE, 0.0, self_id=OUR_ID)
    responder = beacon.BeaconResponder(NAME_HASH, OUR_ID, [Endpoint("192.0.2.1", 5483)])
    return seeker.receive_datagram(data, LAN_FROM, 0.1), responder.receive_datagram(data, LAN_FROM)


def _lan_beacon(data: bytes) -> bytes | None:
    lan = LanBeacon(NAME_HASH, OUR_ID)
    lan.set_listeners([Endpoint("192.0.2.1", 5483)])
    lan.seek([LAN_FROM], SEEK_NONCE, 0.0, 1.0, until_first=True)
    lan.receive_reply(data, LAN_FROM, 0.1)
    return lan.receive_seek(data, LAN_FROM, 0.1)


def _rudp_header(data: bytes) -> tuple[int, int, int, int, int, int, tuple[bytes, ...], bytes] | None:
    """The parsed datagram, or None when it is not rUDP or is malformed (counted and dropped)."""
    header = parse_header(data)
    ids = peek_ids(data)
    assert (header is None) == (ids is None)
    if header is None or header[7] < 0:
        return None
    flags, dst, src, seq, ack, window, nsack, payload_at = header
    sacks = tuple(data[23 + 8 * i:31 + 8 * i] for i in range(nsack))
    return flags, dst, src, seq, ack, window, sacks, data[payload_at:]


def _rudp_datagram(value: tuple[int, int, int, int, int, int, tuple[bytes, ...], bytes]) -> bytes:
    flags, dst, src, seq, ack, window, sacks, payload = value
    return HEADER.pack(0xC5, flags, dst, src, seq, ack, window, len(sacks)) + b"".join(sacks) + payload


u32 = st.integers(0, 2**32 - 1)
rudp_datagrams = st.sampled_from(sorted(_VALID_FLAGS)).flatmap(lambda flags: st.tuples(
    st.just(flags), u32, st.integers(1, 2**32 - 1), u32, u32, u32,
    st.lists(st.binary(min_size=8, max_size=8), max_size=3).map(tuple),
    st.just(b"") if flags & (SYN | RST) else st.binary(max_size=MAX_PAYLOAD)))

RUDP_A, RUDP_B, ISN_A, ISN_B = 0xA1A1A1A1, 0xB2B2B2B2, 0xFFFFFFF0, 0x7FFFFFF0


def _rudp_pair() -> tuple[RudpStream, RudpStream]:
    """Two streams through their handshake (ids and ISNs fixed, so every pair is the same)."""
    a, b = RudpStream(RUDP_A, ISN_A, 0.0), RudpStream(RUDP_B, ISN_B, 0.0)
    a.connect(0.0)
    for _ in range(3):  # SYN, SYN-ACK, ACK
        for datagram in a.datagrams_to_send(0.0):
            b.receive_datagram(datagram, 0.0)
        for datagram in b.datagrams_to_send(0.0):
            a.receive_datagram(datagram, 0.0)
    assert a.connected and b.connected
    return a, b


def _rudp_established(data: bytes) -> bytes:
    """What an established stream delivers when ``data`` arrives (it never raises)."""
    _, b = _rudp_pair()
    b.receive_datagram(data, 0.1)
    b.datagrams_to_send(0.1)
    return b"".join(e.data for e in b.take_events() if isinstance(e, RudpData))


def _rudp_segment(payload: bytes) -> bytes:
    a, _ = _rudp_pair()
    a.write(payload)
    return a.datagrams_to_send(0.1)[0]


def _rudp_listening(data: bytes) -> int:
    """How many datagrams a fresh stream answers ``data`` with (a SYN gets its SYN-ACK)."""
    stream = RudpStream(RUDP_B, ISN_B, 0.0)
    stream.receive_datagram(data, 0.0)
    return len(stream.datagrams_to_send(0.0))


def _syn(_: None) -> bytes:
    stream = RudpStream(RUDP_A, ISN_A, 0.0)
    stream.connect(0.0)
    return stream.datagrams_to_send(0.0)[0]


DATAGRAMS = (
    Decoder("nat.probe", probe.decode, (RemoteProtocolError,), ("crust.nat.probe.decode",),
            nat_datagrams, probe.encode, canonical=True,
            noise=st.binary(max_size=60).map(lambda b: probe.MAGIC + b"\x01" + b), max_size=100),
    Decoder("nat.punch.receive_probe", _receive_probe, (), ("crust.nat.punch.UdpPunch.receive_probe",),
            probe_fields, _signed_probe, expect=lambda _: True, max_size=100),
    Decoder("discovery.beacon", beacon.decode_beacon, (RemoteProtocolError,), ("crust.discovery.beacon.decode_beacon",),
            beacons, _encode_beacon, canonical=True,
            noise=st.binary(max_size=100).map(lambda b: beacon.MAGIC + b"\x01" + b)),
    Decoder("discovery.beacon.machines", _beacon_machines, (), (
        "crust.discovery.beacon.BeaconSeeker.receive_datagram", "crust.discovery.beacon.BeaconResponder.receive_datagram"),
        beacon_replies, beacon.encode_reply, expect=lambda reply: (reply, None)),
    Decoder("discovery.lan", _lan_beacon, (), (
        "crust.discovery.lan.LanBeacon.receive_seek", "crust.discovery.lan.LanBeacon.receive_reply"),
        st.binary(min_size=16, max_size=16), lambda nonce: beacon.encode_seek(beacon.Seek(nonce, NAME_HASH)),
        expect=lambda nonce: beacon.encode_reply(beacon.Reply(nonce, NAME_HASH, OUR_ID, (Endpoint("192.0.2.1", 5483),)))),
    Decoder("rudp.packet", _rudp_header, (), ("crust.rudp.packet.parse_header", "crust.rudp.packet.peek_ids"),
            rudp_datagrams, _rudp_datagram, canonical=True, max_size=1300),
    Decoder("rudp.stream.established", _rudp_established, (), ("crust.rudp.stream.RudpStream.receive_datagram",),
            st.binary(min_size=1, max_size=MAX_PAYLOAD), _rudp_segment, max_size=1300,
            noise=rudp_datagrams.map(_rudp_datagram)),
    Decoder("rudp.stream.listening", _rudp_listening, (), ("crust.rudp.stream.RudpStream.receive_datagram",),
            st.none(), _syn, expect=lambda _: 1, max_size=1300, noise=rudp_datagrams.map(_rudp_datagram)),
)


# -- the engine's doors for hostile bytes --------------------------------------------------------

ENGINE_CONFIG = Config(bootstrap_cache_path=None, enable_upnp=False, listen_host="127.0.0.1")
ENGINE_REMOTE = Endpoint("127.0.0.2", 40000)


def _engine_stream(data: bytes) -> None:
    engine = Engine(static=STATIC_B, config=ENGINE_CONFIG, rng=random.Random(0))
    conn = engine.handle_accepted(ENGINE_REMOTE, 0.0)
    assert conn is not None
    for piece in pieces(data):
        engine.receive_data(conn, piece, 0.01)
    engine.take_effects(), engine.take_events()


def _engine_datagram(data: bytes) -> None:
    engine = Engine(static=STATIC_B, config=ENGINE_CONFIG, rng=random.Random(0))
    engine.receive_datagram(data, NAT_SOURCE, 0.01)
    engine.take_effects(), engine.take_events()


ENGINE = (
    Decoder("engine.receive_data", _engine_stream, (), ("crust.engine.engine.Engine.receive_data",),
            noise=handshake_garbage | st.none().map(_first_flight)),
    Decoder("engine.receive_datagram", _engine_datagram, (), (
        "crust.engine.engine.Engine.receive_datagram", "crust.engine.punch.Punching.receive_probe",
        "crust.engine.external.ExternalAddresses.receive_datagram"),
        noise=nat_datagrams.map(probe.encode) | mutants(nat_datagrams.map(probe.encode)), max_size=100),
)


# -- what users hand us: connection info, config, identity, cache ----------------------------------

token_16 = st.binary(min_size=16, max_size=16)
conn_infos = st.builds(
    PubConnectionInfo.gather, peer_ids, token_16, listeners=st.lists(ip_endpoints(1), max_size=6),
    tcp_punch=st.lists(ip_endpoints(1, ("tcp",)), max_size=4), udp_punch=st.lists(ip_endpoints(1, ("udp",)), max_size=4))
endpoint_texts = st.lists(ip_endpoints(1).map(str) | st.sampled_from(["x:y", "udp://1.2.3.4:0", "[::1]:9"]),
                          max_size=MAX_ENDPOINTS + 1)
conn_info_json = json_objects({
    "version": st.sampled_from([1, 2, 3, 0, -1, 10**30]), "peer_id": peer_ids.map(str), "token": token_16.map(bytes.hex),
    "endpoints": endpoint_texts, "listeners": endpoint_texts, "tcp_punch": endpoint_texts, "udp_punch": endpoint_texts,
})
hostnames = st.from_regex(r"\A[a-z]([a-z0-9-]{0,8}[a-z0-9])?(\.[a-z]{1,5}){0,2}\Z")
any_endpoints = st.builds(Endpoint, ip_hosts | hostnames, st.integers(0, 65535), st.sampled_from(("tcp", "udp")))


_T = TypeVar("_T")


def _from_file(parse: Callable[[str], _T], data: bytes) -> _T:
    """Run a file parser on ``data`` written to a private (mode 0600) temporary file."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "input")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        return parse(path)


def _config(data: bytes) -> Config:
    config = _from_file(load_config, data)
    assert isinstance(config.listen_host, str)
    return config


def _config_bytes(config: Config) -> bytes:
    return json.dumps(config.to_dict()).encode()


positive_seconds = st.floats(min_value=1e-3, max_value=1e6)
counts = st.integers(1, 1 << 40)


@st.composite
def configs(draw: st.DrawFn) -> Config:
    """Valid Configs, every field drawn."""
    heartbeat = draw(positive_seconds)
    max_message = draw(st.integers(1, 1 << 30))
    ips = st.lists(ip_hosts, max_size=3)
    return Config(
        hard_coded_contacts=draw(st.lists(st.builds(Contact, any_endpoints, st.none() | peer_ids), max_size=3)),
        tcp_port=draw(st.integers(0, 65535)), udp_port=draw(st.integers(0, 65535)), listen_host=draw(ip_hosts),
        enable_tcp=draw(st.booleans()), enable_udp=draw(st.booleans()), enable_upnp=draw(st.booleans()),
        force_acceptor_port_in_ext_ep=draw(st.booleans()), service_discovery_port=draw(st.integers(0, 65535)),
        service_discovery_targets=draw(st.none() | ips.map(tuple)), bootstrap_cache_path=draw(st.none() | st.text()),
        whitelisted_node_ips=draw(st.none() | ips), whitelisted_client_ips=draw(st.none() | ips),
        network_name=draw(st.none() | st.text(max_size=20)),
        disable_external_reachability_requirement=draw(st.booleans()), heartbeat_interval=heartbeat,
        inactivity_timeout=heartbeat * draw(st.floats(1.01, 100)), max_message_size=max_message,
        relay=draw(st.booleans()), relay_max_circuits=draw(counts), relay_max_bytes_per_s=draw(counts),
        handshake_timeout=draw(positive_seconds), max_pending_handshakes=draw(counts),
        max_pending_handshakes_per_ip=draw(counts), max_peers=draw(counts), bootstrap_timeout=draw(positive_seconds),
        bootstrap_max_in_flight=draw(counts), bootstrap_stagger=draw(st.floats(0, 1e6)),
        send_queue_limit=draw(st.integers(max_message, 1 << 40)), drop_after=draw(positive_seconds),
        receive_backlog_limit=draw(st.integers(max_message, 1 << 40)),
        service_discovery_window=draw(positive_seconds), connect_timeout=draw(positive_seconds),
        peer_exchange=draw(st.booleans()), config_reload_interval=draw(positive_seconds),
    )


_CONFIG_FIELDS = {f.name: st.nothing() for f in dataclasses.fields(Config)}
config_json = json_objects({
    **_CONFIG_FIELDS, "tcp_acceptor_port": st.integers(0, 65535), "bootstrap_cache_name": st.text(max_size=10),
    "listen_host": ip_hosts, "hard_coded_contacts": st.lists(any_endpoints.map(str) | st.fixed_dictionaries(
        {"addr": any_endpoints.map(str)}, optional={"peer_id": peer_ids.map(str) | json_values}), max_size=3),
    "dev": st.dictionaries(st.sampled_from([*_CONFIG_FIELDS, "tcp_acceptor_port", "nope"]), json_values, max_size=3),
})


def _identity(data: bytes) -> bytes:
    return _from_file(Identity.load, data).private_bytes


def _identity_file(private: bytes) -> bytes:
    return f"crust-identity v1\n{private.hex()}\n".encode()


def _cache(data: bytes) -> list[Any]:
    return BootstrapCache.loads(text(data)).entries()


def _cache_text(entries: list[Any]) -> bytes:
    cache = BootstrapCache()
    for entry in reversed(entries):  # record_success puts each at the front
        cache.record_success(entry.contact, entry.last_success)
    return cache.dumps().encode()


cache_entries = st.lists(st.builds(CacheEntry, st.builds(Contact, any_endpoints, peer_ids), st.floats(-1e12, 1e12)),
                         max_size=5, unique_by=lambda e: (e.contact.addr.host, e.contact.addr.port))
cache_json = json_objects({"version": st.just(1), "contacts": st.lists(st.fixed_dictionaries({}, optional={
    "addr": any_endpoints.map(str), "peer_id": peer_ids.map(str), "last_success": st.floats()}), max_size=4)})

USER = (
    Decoder("connection_info.bytes", PubConnectionInfo.from_bytes, (ValueError,),
            ("crust.connection_info.PubConnectionInfo.from_bytes",), conn_infos, PubConnectionInfo.to_bytes,
            canonical=False, max_size=400),
    Decoder("connection_info.json", PubConnectionInfo.from_json, (ValueError,),
            ("crust.connection_info.PubConnectionInfo.from_json",), conn_infos, lambda i: i.to_json().encode(),
            canonical=False, noise=conn_info_json),
    Decoder("cli.chat.decode_info", lambda data: decode_info(text(data)), (ValueError,), ("crust.cli.chat.decode_info",),
            conn_infos, lambda info: encode_info(info).encode(), canonical=False,
            noise=conn_info_json | conn_infos.map(lambda i: i.to_json().encode())),
    Decoder("ids.endpoint", lambda data: Endpoint.parse(text(data)), (ValueError,), ("crust.ids.Endpoint.parse",),
            any_endpoints, lambda ep: str(ep).encode(), canonical=False,
            noise=st.tuples(st.sampled_from(["", "tcp://", "udp://", "UDP://", "x://", " "]), ip_hosts | hostnames,
                            st.sampled_from([":", "]:", ":-", "::"]), st.text("0123456789٣²", max_size=7)).map(
                lambda t: "".join(t).encode())),
    Decoder("ids.peer_id", lambda data: PeerId.from_str(text(data)), (ValueError,), ("crust.ids.PeerId.from_str",),
            peer_ids, lambda pid: str(pid).encode(), canonical=False),
    Decoder("bootstrap.cache", _cache, (ConfigError,), ("crust.bootstrap.cache.BootstrapCache.loads",),
            cache_entries, _cache_text, canonical=False, noise=cache_json),
    Decoder("config.file", _config, (ConfigError,), (
        "crust.config_file.load_config", "crust.config.Config.from_dict", "crust.config.Config.load"),
        configs(), _config_bytes, canonical=False, noise=config_json | st.integers(1, 3000).map(
            lambda depth: b"[" * depth * 10)),
    Decoder("identity.file", _identity, (ConfigError,), ("crust.identity.Identity.load",),
            st.binary(min_size=32, max_size=32), _identity_file, canonical=False,
            noise=st.binary(min_size=32, max_size=32).map(_identity_file).map(lambda f: f.upper())),
)

DECODERS: tuple[Decoder, ...] = (*WIRE, *HANDSHAKE, *DATAGRAMS, *ENGINE, *USER)


# -- the scan --------------------------------------------------------------------------------------

# Public names that read outside input.  `open` is the AEAD's (no other public `open` exists).
ENTRY_POINT = re.compile(r"(decode\w*|pull_\w+|from_\w+|loads?|load_\w+|parse\w*|peek_\w+|read_\w+|receive_\w+"
                         r"|next_(frame|message|batch)|feed|open)")
# Entry points that match but need no row of their own, and why.
EXEMPT = {
    "crust.config.FileSide.load": "a Protocol stub; config_file's load_config (row config.file) is the body",
    "crust.config_file.read_config_file": "finds the file, then Config.load: the parsing is row config.file",
    "crust.cli.common.load_identity": "Identity.load (row identity.file) plus the CLI's error printing",
}


def _defined_in(value: object, module: Any) -> bool:
    """True when ``value`` (a function or class) is written in ``module``'s file.

    Not ``__module__``: crust/__init__ relabels the public classes as ``crust``'s.
    """
    if inspect.isclass(value):
        functions = [getattr(member, "__func__", member) for member in vars(value).values()]
    else:
        functions = [value]
    return any(inspect.isfunction(f) and f.__code__.co_filename == module.__file__ for f in functions)


def entry_points() -> Iterator[str]:
    """Every public function or method of crust whose name says it reads outside input."""
    for info in pkgutil.walk_packages(crust.__path__, "crust."):
        if info.name == "crust.__main__":
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if name.startswith("_") or not _defined_in(value, module):
                continue
            if inspect.isfunction(value) and ENTRY_POINT.fullmatch(name):
                yield f"{module.__name__}.{name}"
            elif inspect.isclass(value):
                for attr in dir(value):
                    member = inspect.getattr_static(value, attr)
                    function = getattr(member, "__func__", member)
                    if (not attr.startswith("_") and ENTRY_POINT.fullmatch(attr) and inspect.isfunction(function)
                            and function.__module__.startswith("crust.")):
                        yield f"{module.__name__}.{name}.{attr}"
