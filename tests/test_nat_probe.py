"""crust.nat.probe: the peer-STUN and hole-punch datagrams that share the rUDP socket."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crust.crypto.mac import punch_key
from crust.errors import RemoteProtocolError
from crust.ids import Endpoint
from crust.nat.probe import (
    ECHO_REQUEST_SIZE,
    MAGIC,
    MAX_COUNTER,
    PROBE_SIZE,
    EchoRequest,
    EchoResponse,
    NatDatagram,
    PunchProbe,
    decode,
    encode,
)
from crust.rudp import peek_ids

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEY = punch_key(bytes(16), bytes(range(16)))
OTHER_KEY = punch_key(bytes(16), bytes(16))
A, B = b"A" * 8, b"B" * 8

udp_endpoints = st.builds(
    Endpoint,
    st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str),
    st.integers(min_value=1, max_value=65535),
    st.just("udp"),
)
nonces = st.binary(min_size=12, max_size=12)
short_ids = st.binary(min_size=8, max_size=8)
probes = st.builds(
    PunchProbe.sign, st.just(KEY), short_ids, short_ids,
    st.integers(1, MAX_COUNTER), st.integers(0, MAX_COUNTER), st.booleans(),
)
messages: st.SearchStrategy[NatDatagram] = st.one_of(
    st.builds(EchoRequest, nonces), st.builds(EchoResponse, nonces, udp_endpoints), probes,
)


# -- layout ---------------------------------------------------------------------------------

def test_exact_layouts() -> None:
    header = b"\xc3CRNP\x01"
    assert encode(EchoRequest(bytes(range(12)))) == header + b"\x01" + bytes(range(12)) + bytes(20)
    response = EchoResponse(bytes(range(12)), Endpoint("198.51.100.7", 5483, "udp"))
    assert encode(response) == header + b"\x02" + bytes(range(12)) + b"\x01\x04" + bytes([198, 51, 100, 7]) + b"\x15\x6b"
    probe = PunchProbe.sign(KEY, A, B, counter=258, ack=7, nominate=True)
    data = encode(probe)
    assert data[:-16] == header + b"\x03" + A + B + b"\x01" + b"\x00\x00\x01\x02" + b"\x00\x00\x00\x07"
    assert len(data) == PROBE_SIZE == 48


@FUZZ
@given(message=messages)
def test_round_trip(message: NatDatagram) -> None:
    data = encode(message)
    assert decode(data) == message
    assert decode(bytearray(data)) == message and decode(memoryview(data)) == message


@FUZZ
@given(nonce=nonces, source=udp_endpoints)
def test_a_response_is_never_larger_than_its_request(nonce: bytes, source: Endpoint) -> None:
    # No amplification: a spoofed request cannot make us send more bytes than it cost.
    request = EchoRequest(nonce)
    response = EchoResponse.answer(request, source)
    assert response == EchoResponse(nonce, source)
    assert len(encode(response)) <= len(encode(request)) == ECHO_REQUEST_SIZE
    assert len(encode(EchoResponse(nonce, Endpoint("ffff::1", 65535, "udp")))) == ECHO_REQUEST_SIZE


# -- rUDP never takes these ---------------------------------------------------------------

@FUZZ
@given(message=messages)
def test_peek_ids_refuses_every_encoded_datagram(message: NatDatagram) -> None:
    assert peek_ids(encode(message)) is None


@FUZZ
@given(rest=st.binary(min_size=0, max_size=80))
def test_peek_ids_refuses_anything_with_our_first_byte(rest: bytes) -> None:
    # peek_ids accepts only first byte 0xC5; every NAT datagram starts with 0xC3.
    assert peek_ids(MAGIC[:1] + rest) is None
    assert MAGIC[0] == 0xC3


# -- hostile input --------------------------------------------------------------------------

def _only_remote_errors(data: bytes) -> None:
    try:
        message = decode(data)
    except RemoteProtocolError:
        return
    assert encode(message) == bytes(data)  # canonical: what decodes re-encodes to the same bytes


@FUZZ
@given(data=st.binary(max_size=120))
def test_decode_of_random_bytes_raises_only_remote_protocol_error(data: bytes) -> None:
    for candidate in (data, MAGIC + data, MAGIC + b"\x01" + data, MAGIC + b"\x01\x03" + data):
        _only_remote_errors(candidate)


@FUZZ
@given(message=messages, noise=st.binary(min_size=1, max_size=8), at=st.integers(0, 60))
def test_decode_of_mutated_datagrams_raises_only_remote_protocol_error(
        message: NatDatagram, noise: bytes, at: int) -> None:
    good = encode(message)
    at %= len(good)
    _only_remote_errors(good[:at] + noise + good[at + len(noise):])
    _only_remote_errors(good[:at])
    _only_remote_errors(good + noise)


@pytest.mark.parametrize("data, match", [
    (b"", "bad magic or too short"),
    (b"\xc5" + bytes(40), "bad magic"),
    (MAGIC + b"\x02\x01" + bytes(32), "unsupported NAT datagram version 2"),
    (MAGIC + b"\x01\x09", "unknown NAT datagram type 9"),
    (MAGIC + b"\x01\x01" + bytes(31), "truncated"),
    (MAGIC + b"\x01\x01" + bytes(31) + b"\x01", "padding is not zero"),
    (MAGIC + b"\x01\x01" + bytes(33), "1 trailing bytes"),
    (MAGIC + b"\x01\x02" + bytes(12) + b"\x00\x04\x01\x02\x03\x04\x00\x50", "UDP IP-literal endpoint"),  # tcp
    (MAGIC + b"\x01\x02" + bytes(12) + b"\x01\x04\x01\x02\x03\x04\x00\x00", "with a port"),
    (MAGIC + b"\x01\x02" + bytes(12) + b"\x01\x05", "truncated"),
    (MAGIC + b"\x01\x03" + A + B + b"\x02" + bytes(24), "unknown flags 0x02"),
    (MAGIC + b"\x01\x03" + A + B + b"\x00" + bytes(24), "counter must be in 1"),
    (encode(PunchProbe.sign(KEY, A, B, 1))[:-1], "truncated"),
    (bytes(200), "too long"),
])
def test_bad_datagrams_name_the_problem(data: bytes, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        decode(data)


# -- the MAC --------------------------------------------------------------------------------

def test_a_signed_probe_verifies_only_under_its_key_and_fields() -> None:
    probe = PunchProbe.sign(KEY, A, B, counter=5, ack=3, nominate=False)
    assert probe.verify(KEY) and probe.heard
    assert not probe.verify(OTHER_KEY)
    for change in [{"sender": B}, {"receiver": A}, {"counter": 6}, {"ack": 0}, {"nominate": True},
                   {"tag": bytes(16)}]:
        assert not dataclasses.replace(probe, **change).verify(KEY), change
    assert not PunchProbe.sign(KEY, A, B, counter=1).heard


@FUZZ
@given(probe=probes, flip=st.integers(0, PROBE_SIZE * 8 - 1))
def test_any_flipped_bit_fails_to_decode_or_to_verify(probe: PunchProbe, flip: int) -> None:
    data = bytearray(encode(probe))
    data[flip // 8] ^= 1 << (flip % 8)
    try:
        got = decode(bytes(data))
    except RemoteProtocolError:
        return
    assert not isinstance(got, PunchProbe) or not got.verify(KEY)


# -- local misuse -----------------------------------------------------------------------------

@pytest.mark.parametrize("make, error, match", [
    (lambda: EchoRequest(bytes(11)), ValueError, "nonce must be 12 bytes, got 11"),
    (lambda: EchoRequest("x" * 12), TypeError, "nonce must be bytes"),
    (lambda: EchoResponse(bytes(12), "1.2.3.4:5"), TypeError, "observed must be an Endpoint"),
    (lambda: EchoResponse(bytes(12), Endpoint("1.2.3.4", 5)), ValueError, "UDP"),
    (lambda: EchoResponse(bytes(12), Endpoint("example.com", 5, "udp")), ValueError, "IP-literal"),
    (lambda: PunchProbe.sign(KEY, A, B, 0), ValueError, "counter must be in 1"),
    (lambda: PunchProbe.sign(KEY, A, B, 1, ack=2**32), ValueError, "ack must be in 0"),
    (lambda: PunchProbe.sign(KEY, A, B, True), TypeError, "counter must be an int"),
    (lambda: PunchProbe.sign(KEY, A[:7], B, 1), ValueError, "sender must be 8 bytes"),
    (lambda: PunchProbe.sign(KEY, A, B, 1, nominate=1), TypeError, "nominate must be a bool"),
    (lambda: PunchProbe.sign(bytes(16), A, B, 1), ValueError, "key must be 32 bytes"),
    (lambda: encode(b"probe"), TypeError, "cannot encode bytes"),
])
def test_bad_local_values_are_refused(make: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make()
