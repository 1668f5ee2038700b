"""Property tests (hypothesis).

h11's invariant: a decoder fed hostile bytes either produces values or raises
``RemoteProtocolError`` (``HandshakeError``, ``DecryptError`` and
``BufferReadError`` are subclasses), never anything else.  And every message
survives ``decode(encode(m)) == m``.
"""

from __future__ import annotations

from typing import Any, Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crust.channel import SecureChannel
from crust.config import MESSAGE_OVERHEAD, unfinished_limit
from crust.crypto.mac import punch_key
from crust.crypto.aead import Opener, Sealer
from crust.crypto.keys import KeyPair
from crust.errors import RemoteProtocolError
from crust.handshake.secure import PREAMBLE, SecureHandshake
from crust.handshake.states import SecureInput
from crust.ids import CrustUser, Endpoint, PeerId, name_hash
from crust.nat.probe import MAGIC as NAT_MAGIC
from crust.nat.probe import PunchProbe
from crust.nat.probe import decode as decode_nat
from crust.nat.probe import encode as encode_nat
from crust.nat.punch import Punched, UdpPunch
from crust.outbox import Outbox
from crust.wire.buffer import Buffer
from crust.wire.framing import FrameDecoder, HandshakeDecoder, encode_frame, encode_handshake_message
from crust.wire.messages import (
    CONNECT_TOKEN_SIZE,
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
    decode_record,
    encode_record,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Static keys are reused across examples (each handshake still makes fresh ephemerals).
STATIC_A = KeyPair.generate()
STATIC_B = KeyPair.generate()
KEY_1 = bytes(range(32))
KEY_2 = bytes(range(1, 33))


def chunks_of(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` split at the given (unsorted, possibly out-of-range) offsets."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def only_remote_errors(step: Callable[[bytes], Any], pieces: list[bytes]) -> None:
    """Feed ``pieces`` to ``step`` until one raises; that must be a RemoteProtocolError."""
    try:
        for piece in pieces:
            step(piece)
    except RemoteProtocolError:
        pass


# -- strategies ----------------------------------------------------------------------

cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=8)

endpoints = st.builds(
    Endpoint,
    st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str),
    st.integers(min_value=0, max_value=65535),
    st.sampled_from(["tcp", "udp"]),
)

control_messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Heartbeat, st.integers(min_value=0, max_value=2**32 - 1), st.booleans()),
    st.builds(Goodbye, st.sampled_from(GoodbyeReason)),
    st.builds(BootstrapRequest, st.sampled_from(CrustUser),
              st.lists(endpoints, max_size=6).map(tuple)),  # MAX_LISTENERS: test_messages
    st.builds(BootstrapGranted, st.lists(endpoints, max_size=6).map(tuple)),
    st.builds(BootstrapDenied, st.sampled_from(DenyReason)),
    st.just(EchoAddrReq()),
    st.builds(EchoAddrResp, endpoints),
    st.builds(ConnectRequest, st.binary(min_size=CONNECT_TOKEN_SIZE, max_size=CONNECT_TOKEN_SIZE)),
    st.just(ChooseConnection()),
)
data_messages = st.builds(Data, st.integers(min_value=0, max_value=255), st.binary(max_size=300), st.booleans())
all_messages = st.one_of(control_messages, data_messages)

# Hostile handshake input: pure noise, or noise behind a correct preamble, or
# well-framed handshake messages of any type and body.
handshake_messages = st.builds(
    encode_handshake_message, st.integers(min_value=0, max_value=255), st.binary(max_size=200)
)
handshake_garbage = st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=200).map(lambda b: PREAMBLE + b),
    st.lists(handshake_messages, max_size=4).map(lambda ms: PREAMBLE + b"".join(ms)),
    st.binary(min_size=64, max_size=64).map(
        lambda b: PREAMBLE + encode_handshake_message(SecureInput.HELLO, name_hash(None) + b[:32])
    ),
)


# -- decoders raise only RemoteProtocolError ------------------------------------------

@FUZZ
@given(data=handshake_garbage, cut=cuts, initiator=st.booleans())
def test_secure_handshake_fuzz(data: bytes, cut: list[int], initiator: bool) -> None:
    # The preamble check, the handshake-message framing and Noise, in either role.
    static = STATIC_A if initiator else STATIC_B
    machine = SecureHandshake(initiator=initiator, static=static, name_hash=name_hash(None), max_message_size=1024)
    only_remote_errors(machine.receive_data, chunks_of(data, cut))
    # Nobody finishes without a real Noise peer: the responder would still need
    # message 3, and the initiator a message 2 keyed to its fresh ephemeral.
    assert not machine.complete and machine.channel is None


@FUZZ
@given(data=st.binary(max_size=300), flip=st.integers(min_value=0, max_value=10_000))
def test_secure_handshake_with_one_corrupted_flight(data: bytes, flip: int) -> None:
    # A real responder's reply with one byte changed (then noise) must fail cleanly.
    a = SecureHandshake(initiator=True, static=STATIC_A, name_hash=name_hash(None), max_message_size=1024)
    b = SecureHandshake(initiator=False, static=STATIC_B, name_hash=name_hash(None), max_message_size=1024)
    b.receive_data(a.data_to_send())
    reply = bytearray(b.data_to_send())
    reply[flip % len(reply)] ^= 1 + flip % 255
    only_remote_errors(a.receive_data, [bytes(reply), data])
    assert not a.complete


@FUZZ
@given(data=st.binary(max_size=400), limit=st.integers(min_value=0, max_value=300), cut=cuts)
def test_framing_decoders_fuzz(data: bytes, limit: int, cut: list[int]) -> None:
    pieces = chunks_of(data, cut)

    frame_dec = FrameDecoder(limit)
    frames: list[bytes] = []

    def frame_step(piece: bytes) -> None:
        frame_dec.receive_data(piece)
        frames.extend(frame_dec.frames())

    only_remote_errors(frame_step, pieces)
    assert all(len(f) <= limit for f in frames)
    assert sum(4 + len(f) for f in frames) <= len(data)

    hs_dec = HandshakeDecoder(limit)
    messages: list[tuple[int, bytes]] = []

    def handshake_step(piece: bytes) -> None:
        hs_dec.receive_data(piece)
        while (m := hs_dec.next_message()) is not None:
            messages.append(m)

    only_remote_errors(handshake_step, pieces)
    assert all(len(body) <= limit and 0 <= kind <= 255 for kind, body in messages)
    assert sum(3 + len(body) for _, body in messages) <= len(data)


@FUZZ
@given(kind=st.one_of(st.sampled_from(MessageType), st.integers(min_value=0, max_value=255)),
       body=st.binary(max_size=300))
def test_decode_record_fuzz(kind: int, body: bytes) -> None:
    try:
        msg = decode_record(kind, body)
    except RemoteProtocolError:
        pass
    else:
        # Whatever decodes re-encodes to the very same bytes (the layout is canonical).
        assert encode_record(msg) == RECORD_HEADER.pack(kind, len(body)) + body
    try:
        endpoint = Buffer(body).pull_endpoint()
    except RemoteProtocolError:
        return
    out = Buffer()
    out.push_endpoint(endpoint)
    assert body.startswith(out.data())


@FUZZ
@given(data=st.one_of(st.binary(max_size=80), st.binary(max_size=60).map(lambda b: NAT_MAGIC + b"\x01" + b)))
def test_nat_datagram_fuzz(data: bytes) -> None:
    # The rUDP socket's other traffic: peer-STUN echoes and punch probes.
    try:
        message = decode_nat(data)
    except RemoteProtocolError:
        return
    assert encode_nat(message) == data


PUNCH_KEY = punch_key(bytes(16), bytes(range(16)))
PUNCH_SOURCES = [Endpoint("198.51.100.2", 4000, "udp"), Endpoint("203.0.113.9", 9, "udp"),
                 Endpoint("::ffff:198.51.100.2", 4000, "udp"), Endpoint("10.0.0.1", 1, "udp")]


@FUZZ
@given(controlling=st.booleans(), steps=st.lists(st.tuples(
    st.one_of(st.binary(max_size=60), st.tuples(st.integers(1, 40), st.integers(0, 40), st.booleans())),
    st.integers(0, len(PUNCH_SOURCES) - 1), st.floats(0, 1.0)), max_size=60))
def test_udp_punch_fuzz(controlling: bool, steps: list[tuple[Any, int, float]]) -> None:
    # Garbage or authentic probes with any counters, acks and flags, from any
    # address: the machine never raises, stays within its budget, and reports a
    # punch only to an address that acked a counter we sent to that very address.
    ours, theirs = PeerId(b"\x02" * 32), PeerId(b"\x01" * 32)
    punch = UdpPunch(PUNCH_KEY, *((ours, theirs) if controlling else (theirs, ours)), PUNCH_SOURCES[:1],
                     max_datagrams=50)
    punch.start(0.0)
    now, sent, acks = 0.0, 0, set()
    for payload, which, dt in steps:
        now += dt
        source = PUNCH_SOURCES[which]
        canonical = PUNCH_SOURCES[0] if which == 2 else source  # the IPv4-mapped form is the same address
        if isinstance(payload, tuple):
            counter, ack, nominate = payload
            payload = encode_nat(PunchProbe.sign(PUNCH_KEY, *punch.route, counter, ack, nominate))
            if punch._sent_to.get(ack) == canonical:
                acks.add(canonical)
        punch.receive_probe(payload, source, now)
        punch.handle_timer(now)
        sent += len(punch.datagrams_to_send(now))
    assert sent <= 50
    for event in punch.take_events():
        if isinstance(event, Punched):
            assert event.endpoint in acks


def fresh_channel(max_message_size: int = 1000) -> tuple[Sealer, SecureChannel]:
    """A receiving channel, and the Sealer whose frames it opens."""
    return Sealer(KEY_1), SecureChannel(Sealer(KEY_2), Opener(KEY_1), max_message_size=max_message_size)


# The plaintext of an authentic frame: noise, or real records mixed with junk.
frame_plaintexts = st.one_of(
    st.binary(max_size=200),
    st.lists(st.one_of(all_messages.map(encode_record), st.binary(max_size=20)), max_size=6).map(b"".join),
)


@FUZZ
@given(plaintexts=st.lists(frame_plaintexts, max_size=4), tail=st.binary(max_size=100), cut=cuts,
       max_message=st.integers(min_value=0, max_value=300))
def test_channel_fuzz(plaintexts: list[bytes], tail: bytes, cut: list[int], max_message: int) -> None:
    # Frames that authenticate (so the record parser behind the AEAD gets the
    # noise), then raw bytes (so framing and the AEAD get it).
    sealer, channel = fresh_channel(max_message)
    wire = b"".join(encode_frame(sealer.seal(p)) for p in plaintexts) + tail
    out: list[Message] = []
    only_remote_errors(lambda piece: out.extend(channel.receive_data(piece)), chunks_of(wire, cut))
    for msg in out:
        if isinstance(msg, Data):
            assert msg.last and len(msg.chunk) <= max_message


# -- round trips -------------------------------------------------------------------------

@FUZZ
@given(msg=all_messages)
def test_record_round_trip(msg: Message) -> None:
    record = encode_record(msg)
    kind, length = RECORD_HEADER.unpack_from(record)
    assert length == len(record) - RECORD_HEADER.size
    assert decode_record(kind, record[RECORD_HEADER.size:]) == msg


@FUZZ
@given(bodies=st.lists(st.binary(max_size=100), max_size=10), cut=cuts)
def test_frame_round_trip(bodies: list[bytes], cut: list[int]) -> None:
    dec = FrameDecoder(100)
    got: list[bytes] = []
    for piece in chunks_of(b"".join(encode_frame(b) for b in bodies), cut):
        dec.receive_data(piece)
        got += dec.frames()
    assert got == bodies
    assert dec.buffered == 0


@FUZZ
@given(batches=st.lists(st.lists(control_messages, min_size=1, max_size=3), max_size=4), cut=cuts)
def test_channel_round_trip(batches: list[list[Message]], cut: list[int]) -> None:
    sealer, channel = fresh_channel()
    sender = SecureChannel(sealer, Opener(KEY_2), max_message_size=1000)
    wire = b"".join(sender.encode(*batch) for batch in batches)
    got: list[Message] = []
    for piece in chunks_of(wire, cut):
        got += channel.receive_data(piece)
    assert got == [m for batch in batches for m in batch]


@FUZZ
@given(
    messages=st.lists(st.tuples(st.integers(min_value=0, max_value=5), st.binary(max_size=3000)), max_size=12),
    capacity=st.integers(min_value=8, max_value=2000),
    control=st.lists(control_messages, max_size=3),
)
def test_outbox_through_channel_round_trip(
    messages: list[tuple[int, bytes]], capacity: int, control: list[Message]
) -> None:
    # Whatever the frame size, each priority's messages arrive whole and in order.
    box = Outbox(queue_limit=1 << 40, drop_after=1e9, unfinished_limit=unfinished_limit(3000))
    for priority, data in messages:
        box.push(priority, data, 0.0)
    for i, msg in enumerate(control):
        box.push_control(i, encode_record(msg))
    sealer, receiver = fresh_channel(max_message_size=3000)
    got: list[Message] = []
    released = 0
    while box:
        pieces, rel = box.fill(capacity)
        released += sum(n for _, n in rel)
        got += receiver.receive_data(encode_frame(sealer.seal(b"".join(bytes(p) for p in pieces))))
    assert released == sum(len(d) + MESSAGE_OVERHEAD for _, d in messages)
    assert [m for m in got if not isinstance(m, Data)] == control
    for priority in range(6):
        assert [m for m in got if isinstance(m, Data) and m.priority == priority] == [
            Data(p, d) for p, d in messages if p == priority
        ]
