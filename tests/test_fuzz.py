"""Property tests (hypothesis) beyond the decoder table.

h11's invariant: a decoder fed hostile bytes either produces values or raises
``RemoteProtocolError`` (``HandshakeError``, ``DecryptError`` and
``BufferReadError`` are subclasses), never anything else.  Every decoder has its
row in tests/decoders.py (run by tests/test_decoder_fuzz.py); here are the
properties a row cannot state: a real flight corrupted in flight, frame limits
of any size, a punch's budget over many probes, the outbox and channel together.
"""

from __future__ import annotations

from typing import Any, Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crust.channel import SecureChannel
from crust.config import MESSAGE_OVERHEAD, unfinished_limit
from crust.crypto.aead import Opener, Sealer
from crust.errors import RemoteProtocolError
from crust.handshake.secure import SecureHandshake
from crust.ids import Endpoint, PeerId, name_hash
from crust.nat.probe import PunchProbe
from crust.nat.probe import encode as encode_nat
from crust.nat.punch import Punched, UdpPunch
from crust.outbox import Outbox
from crust.wire.framing import FrameDecoder, HandshakeDecoder, encode_frame
from crust.wire.messages import Data, Message, encode_record
from tests.decoders import KEY_1, KEY_2, PUNCH_KEY, STATIC_A, STATIC_B, chunks_of, control_messages

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def only_remote_errors(step: Callable[[bytes], Any], pieces: list[bytes]) -> None:
    """Feed ``pieces`` to ``step`` until one raises; that must be a RemoteProtocolError."""
    try:
        for piece in pieces:
            step(piece)
    except RemoteProtocolError:
        pass


cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=8)


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


# -- round trips -------------------------------------------------------------------------

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
