"""crust.handshake.secure.SecureHandshake: preamble, Noise XX, REJECT, identity checks, handoff.

Every path runs with each flight delivered in one chunk and one byte at a time.
"""

from __future__ import annotations

import struct

import pytest

from crust.crypto.kex import NoiseXX
from crust.crypto.keys import KeyPair
from crust.crypto.ranking import preferred_ciphers
from crust.errors import HandshakeError, LocalProtocolError, RemoteProtocolError
from crust.handshake.secure import MAGIC, MAX_HANDSHAKE_MESSAGE, PREAMBLE, PROTOCOL_VERSION, SecureHandshake
from crust.handshake.states import SecureInput, SecureState
from crust.ids import name_hash
from crust.wire.framing import HandshakeDecoder, encode_handshake_message
from crust.wire.messages import Data, Heartbeat

from tests.helpers import both_modes, bytewise, feed, handshake_pair, run_handshake, transfer

HELLO_SIZE = 3 + 32 + 32  # header, name hash, Noise "-> e"
OFFER_SIZE = 2 + len(preferred_ciphers())  # the responder's cipher offer (tests/test_negotiate.py)
NOISE2_SIZE = 3 + 32 + 48 + OFFER_SIZE + 16  # header, e, encrypted s, encrypted offer
NOISE3_SIZE = 3 + 48 + 3 + 16  # header, encrypted s, encrypted choice


def responder(network: str | None = None, static: KeyPair | None = None) -> SecureHandshake:
    return SecureHandshake(
        initiator=False, static=static or KeyPair.generate(), name_hash=name_hash(network), max_message_size=1024
    )


def initiator(network: str | None = None) -> SecureHandshake:
    return SecureHandshake(
        initiator=True, static=KeyPair.generate(), name_hash=name_hash(network), max_message_size=1024
    )


def expect_error(fn: object, data: bytes, one_byte: bool, reason: str) -> HandshakeError:
    with pytest.raises(HandshakeError) as info:
        feed(fn, data, one_byte=one_byte)  # type: ignore[arg-type]
    assert info.value.reason == reason, info.value
    return info.value


# -- success --------------------------------------------------------------------------

def test_preamble_constants() -> None:
    assert PREAMBLE == MAGIC + struct.pack(">H", PROTOCOL_VERSION)
    assert len(PREAMBLE) == 8
    assert PROTOCOL_VERSION == 1


def test_first_flights() -> None:
    a, b = handshake_pair()
    out_a = a.data_to_send()
    assert out_a[:8] == PREAMBLE
    assert out_a[8:11] == bytes([SecureInput.HELLO]) + (64).to_bytes(2, "big")
    assert out_a[11:43] == name_hash(None)  # the network-name hash travels in clear
    assert len(out_a) == 8 + HELLO_SIZE
    assert a.data_to_send() == b""  # handed out once
    assert b.data_to_send() == PREAMBLE  # the responder waits for HELLO before saying more
    assert (a.state, b.state) == (SecureState.EXPECT_PREAMBLE, SecureState.EXPECT_PREAMBLE)


@both_modes
def test_handshake_completes_both_roles(one_byte: bool) -> None:
    static_a, static_b = KeyPair.generate(), KeyPair.generate()
    a, b = handshake_pair("net", "net", static_a=static_a, static_b=static_b)
    transfer(a, b, one_byte=one_byte)  # preamble + HELLO
    assert b.state is SecureState.EXPECT_NOISE3
    out_b = b.data_to_send()
    assert len(out_b) == 8 + NOISE2_SIZE
    feed(a.receive_data, out_b, one_byte=one_byte)
    assert a.complete and a.state is SecureState.DONE
    assert not b.complete
    out_a = a.data_to_send()
    assert len(out_a) == NOISE3_SIZE
    feed(b.receive_data, out_a, one_byte=one_byte)
    assert b.complete
    assert a.peer_id == static_b.peer_id
    assert b.peer_id == static_a.peer_id
    assert a.trailing_data == b"" and b.trailing_data == b""
    assert a.data_to_send() == b"" and b.data_to_send() == b""


def test_states_step_through_the_table() -> None:
    a, b = handshake_pair()
    seen_a, seen_b = [a.state], [b.state]
    out = a.data_to_send()
    b.receive_data(out[:8])
    seen_b.append(b.state)
    b.receive_data(out[8:])
    seen_b.append(b.state)
    out = b.data_to_send()
    a.receive_data(out[:8])
    seen_a.append(a.state)
    a.receive_data(out[8:])
    seen_a.append(a.state)
    b.receive_data(a.data_to_send())
    seen_b.append(b.state)
    assert seen_a == [SecureState.EXPECT_PREAMBLE, SecureState.EXPECT_NOISE2, SecureState.DONE]
    assert seen_b == [SecureState.EXPECT_PREAMBLE, SecureState.EXPECT_HELLO, SecureState.EXPECT_NOISE3, SecureState.DONE]


@both_modes
def test_channels_work_both_ways(one_byte: bool) -> None:
    a, b = handshake_pair()
    run_handshake(a, b, one_byte=one_byte)
    assert a.channel is not None and b.channel is not None
    assert feed(b.channel.receive_data, a.channel.encode(Heartbeat(1)), one_byte=one_byte) == [Heartbeat(1)]
    assert feed(a.channel.receive_data, b.channel.encode(Data(0, b"hi")), one_byte=one_byte) == [Data(0, b"hi")]


def test_channel_gets_the_max_message_size() -> None:
    a, b = handshake_pair(max_message_size=10)
    run_handshake(a, b)
    assert a.channel is not None and b.channel is not None
    with pytest.raises(RemoteProtocolError, match="exceeds 10"):
        b.channel.receive_data(a.channel.encode(Data(0, b"x" * 11)))


def test_every_split_point_of_each_flight() -> None:
    a0, b0 = handshake_pair()
    flight1 = a0.data_to_send()
    for cut in range(1, len(flight1)):
        a, b = handshake_pair()
        data = a.data_to_send()
        b.receive_data(data[:cut])
        b.receive_data(data[cut:])
        assert b.state is SecureState.EXPECT_NOISE3, cut
        reply = b.data_to_send()
        a.receive_data(reply[:cut % len(reply)])
        a.receive_data(reply[cut % len(reply):])
        assert a.complete, cut
        b.receive_data(a.data_to_send())
        assert b.complete, cut


def test_expected_peer_that_matches() -> None:
    static_b = KeyPair.generate()
    a, b = handshake_pair(expected=static_b.peer_id, static_b=static_b)
    run_handshake(a, b)
    assert a.peer_id == static_b.peer_id


def test_receive_after_completion_is_a_local_error() -> None:
    a, b = handshake_pair()
    run_handshake(a, b)
    with pytest.raises(LocalProtocolError, match="feed the channel"):
        a.receive_data(b"x")
    with pytest.raises(LocalProtocolError):
        b.receive_data(b"")


# -- trailing data handoff ------------------------------------------------------------

@both_modes
def test_first_channel_frames_glued_to_noise3_are_trailing_data(one_byte: bool) -> None:
    a, b = handshake_pair()
    transfer(a, b)
    transfer(b, a)
    assert a.complete and a.channel is not None
    # The initiator may send at once: its first frames follow NOISE3 in the stream.
    frames = a.channel.encode(Heartbeat(1)) + a.channel.encode(Data(3, b"early"))
    wire = a.data_to_send() + frames
    if one_byte:
        # Byte at a time, the handshake completes on NOISE3's last byte; the
        # caller then feeds the rest to the channel (feeding the handshake raises).
        for i, byte in enumerate(bytewise(wire)):
            if b.complete:
                break
            b.receive_data(byte)
        assert b.trailing_data == b""
        rest = wire[i:]
    else:
        b.receive_data(wire)
        assert b.trailing_data == frames
        rest = b.trailing_data
    assert b.complete and b.channel is not None
    assert b.channel.receive_data(rest) == [Heartbeat(1), Data(3, b"early")]


def test_bytes_after_noise2_are_the_initiators_trailing_data() -> None:
    a, b = handshake_pair()
    transfer(a, b)
    a.receive_data(b.data_to_send() + b"\x00\x00\x00\x10partial frame")
    assert a.complete
    assert a.trailing_data == b"\x00\x00\x00\x10partial frame"


# -- network mismatch --------------------------------------------------------------

@both_modes
def test_network_mismatch_rejected_on_both_sides(one_byte: bool) -> None:
    a, b = handshake_pair("alpha", "beta")
    err = expect_error(b.receive_data, a.data_to_send(), one_byte, "network_mismatch")
    assert "network" in str(err)
    reply = b.data_to_send()
    # The responder's only answer is a plain REJECT(network_mismatch), no Noise.
    assert reply == PREAMBLE + encode_handshake_message(SecureInput.REJECT, b"\x01")
    expect_error(a.receive_data, reply, one_byte, "network_mismatch")
    assert not a.complete and not b.complete
    assert a.channel is None and b.channel is None


def test_none_and_empty_network_names_are_different_networks() -> None:
    a, b = handshake_pair(None, "")
    with pytest.raises(HandshakeError) as info:
        run_handshake(a, b)
    assert info.value.reason == "network_mismatch"


def test_reject_reasons() -> None:
    for body, reason in [(b"\x01", "network_mismatch"), (b"\x63", "rejected"), (b"", "rejected")]:
        a = initiator()
        with pytest.raises(HandshakeError) as info:
            a.receive_data(PREAMBLE + encode_handshake_message(SecureInput.REJECT, body))
        assert info.value.reason == reason


# -- identity checks ---------------------------------------------------------------

@both_modes
def test_wrong_expected_peer_aborts_before_sending_our_static_key(one_byte: bool) -> None:
    someone_else = KeyPair.generate().peer_id
    a, b = handshake_pair(expected=someone_else)
    transfer(a, b)
    err = expect_error(a.receive_data, b.data_to_send(), one_byte, "peer_id_mismatch")
    assert repr(someone_else) in str(err)
    # Noise message 3 (the initiator's encrypted static key) was never produced.
    assert a.data_to_send() == b""
    assert a.channel is None and a.peer_id is None
    assert not b.complete and b.peer_id is None


@both_modes
def test_self_connect_detected_by_the_initiator(one_byte: bool) -> None:
    me = KeyPair.generate()
    a, b = handshake_pair(static_a=me, static_b=me)
    transfer(a, b)
    expect_error(a.receive_data, b.data_to_send(), one_byte, "self_connect")
    assert a.data_to_send() == b""


@both_modes
def test_self_connect_detected_by_the_responder(one_byte: bool) -> None:
    # An initiator that skips its own check (driven here by raw Noise) must
    # still be refused by the responder when message 3 carries its own key.
    me = KeyPair.generate()
    b = responder(static=me)
    noise = NoiseXX(initiator=True, static=me, prologue=PREAMBLE + name_hash(None))
    b.receive_data(PREAMBLE + encode_handshake_message(SecureInput.HELLO, name_hash(None) + noise.write_message()))
    dec = HandshakeDecoder(MAX_HANDSHAKE_MESSAGE)
    dec.receive_data(b.data_to_send()[8:])
    message = dec.next_message()
    assert message is not None and message[0] == SecureInput.NOISE
    noise.read_message(message[1])
    expect_error(b.receive_data, encode_handshake_message(SecureInput.NOISE, noise.write_message()), one_byte,
                 "self_connect")
    assert b.channel is None


# -- not crust, wrong version, bad messages ------------------------------------------

@both_modes
def test_http_request_is_not_crust(one_byte: bool) -> None:
    for make in (responder, initiator):
        machine = make()
        machine.data_to_send()
        if one_byte:
            with pytest.raises(HandshakeError) as info:
                machine.receive_data(b"G")  # refused on the very first byte
        else:
            with pytest.raises(HandshakeError) as info:
                machine.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert info.value.reason == "not_crust"


def test_garbage_is_refused_at_the_first_wrong_byte() -> None:
    b = responder()
    for byte in bytewise(MAGIC[:4]):
        b.receive_data(byte)
    with pytest.raises(HandshakeError) as info:
        b.receive_data(b"X")
    assert info.value.reason == "not_crust"


def test_short_garbage_waits_for_more() -> None:
    b = responder()
    b.receive_data(MAGIC[:3])
    assert b.state is SecureState.EXPECT_PREAMBLE


@both_modes
def test_version_mismatch(one_byte: bool) -> None:
    for version in (0, 2, 0xFFFF):
        b = responder()
        preamble = MAGIC + struct.pack(">H", version)
        if one_byte:
            feed(b.receive_data, preamble[:-1], one_byte=True)  # nothing is wrong yet
            assert b.state is SecureState.EXPECT_PREAMBLE
            preamble = preamble[-1:]
        err = expect_error(b.receive_data, preamble, False, "version_mismatch")
        assert f"version {version}," in str(err) and f"we speak {PROTOCOL_VERSION}" in str(err)


@both_modes
def test_oversize_handshake_message_fails_after_its_header(one_byte: bool) -> None:
    b = responder()
    header = bytes([SecureInput.HELLO]) + (MAX_HANDSHAKE_MESSAGE + 1).to_bytes(2, "big")
    expect_error(b.receive_data, PREAMBLE + header, one_byte, "bad_handshake")


def test_max_handshake_message_size() -> None:
    assert MAX_HANDSHAKE_MESSAGE == 512


@both_modes
def test_unknown_handshake_message_type(one_byte: bool) -> None:
    b = responder()
    expect_error(b.receive_data, PREAMBLE + encode_handshake_message(9, b"?"), one_byte, "bad_handshake")


@both_modes
def test_message_out_of_turn(one_byte: bool) -> None:
    # The initiator waits for NOISE; a HELLO is a table miss, re-labelled as the peer's fault.
    a = initiator()
    err = expect_error(a.receive_data, PREAMBLE + encode_handshake_message(SecureInput.HELLO, bytes(64)), one_byte,
                       "bad_handshake")
    assert isinstance(err.__cause__, LocalProtocolError)


def test_responder_refuses_noise_before_hello() -> None:
    b = responder()
    with pytest.raises(HandshakeError) as info:
        b.receive_data(PREAMBLE + encode_handshake_message(SecureInput.NOISE, bytes(64)))
    assert info.value.reason == "bad_handshake"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "bad_handshake"),  # no room for the name hash: refused by SecureHandshake
        (name_hash(None)[:31], "bad_handshake"),
        # the hash is fine but Noise "-> e" is short: refused by crypto.kex, reported the same way
        (name_hash(None), "bad_handshake"),
        (name_hash(None) + bytes(31), "bad_handshake"),
    ],
)
def test_short_hello(body: bytes, reason: str) -> None:
    b = responder()
    with pytest.raises(HandshakeError) as info:
        b.receive_data(PREAMBLE + encode_handshake_message(SecureInput.HELLO, body))
    assert info.value.reason == reason
    assert b.data_to_send() == PREAMBLE  # no REJECT: that one is only for another network


def test_low_order_ephemeral_key_in_hello() -> None:
    b = responder()
    with pytest.raises(HandshakeError) as info:
        b.receive_data(PREAMBLE + encode_handshake_message(SecureInput.HELLO, name_hash(None) + bytes(32)))
    assert info.value.reason == "bad_key"


@both_modes
def test_tampered_noise2(one_byte: bool) -> None:
    a, b = handshake_pair()
    transfer(a, b)
    reply = bytearray(b.data_to_send())
    reply[-5] ^= 0x40  # inside the encrypted payload tag
    expect_error(a.receive_data, bytes(reply), one_byte, "bad_handshake")
    assert a.data_to_send() == b""


def test_tampered_noise3() -> None:
    a, b = handshake_pair()
    transfer(a, b)
    transfer(b, a)
    out = bytearray(a.data_to_send())
    out[10] ^= 1
    with pytest.raises(HandshakeError) as info:
        b.receive_data(bytes(out))
    assert info.value.reason == "bad_handshake"
    assert b.channel is None


def test_bad_name_hash_length_is_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        SecureHandshake(initiator=True, static=KeyPair.generate(), name_hash=b"short", max_message_size=1)


# -- poisoning ------------------------------------------------------------------------

@pytest.mark.parametrize(
    "garbage",
    [b"GET / HTTP/1.1\r\n", MAGIC + b"\x00\x09", PREAMBLE + b"\x09\x00\x00"],
    ids=["not_crust", "version", "bad_type"],
)
def test_poisoned_after_error(garbage: bytes) -> None:
    b = responder()
    with pytest.raises(HandshakeError):
        b.receive_data(garbage)
    # A dead machine refuses every later input, good or bad, and never completes.
    good = initiator().data_to_send()
    with pytest.raises(LocalProtocolError, match="already failed"):
        b.receive_data(good)
    with pytest.raises(LocalProtocolError):
        b.receive_data(b"")
    assert not b.complete and b.channel is None


def test_initiator_poisoned_after_reject() -> None:
    a, b = handshake_pair("x", "y")
    with pytest.raises(HandshakeError):
        transfer(a, b)
    with pytest.raises(HandshakeError):
        transfer(b, a)
    with pytest.raises(LocalProtocolError):
        a.receive_data(PREAMBLE)
