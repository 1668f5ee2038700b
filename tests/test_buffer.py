"""crust.wire.buffer: bounds-checked big-endian pull/push primitives and endpoints."""

from __future__ import annotations

import pytest

from crust.errors import BufferReadError, LocalProtocolError, RemoteProtocolError
from crust.ids import Endpoint
from crust.wire.buffer import Buffer


def test_buffer_read_error_is_a_remote_protocol_error() -> None:
    # Decoders rely on this: running off the end of hostile input is the peer's fault.
    assert issubclass(BufferReadError, RemoteProtocolError)


def test_push_integers_big_endian() -> None:
    buf = Buffer()
    buf.push_uint8(0xAB)
    buf.push_uint16(0x0102)
    buf.push_uint32(0x03040506)
    buf.push_uint64(0x0708090A0B0C0D0E)
    buf.push_bytes(b"xyz")
    assert buf.data() == bytes.fromhex("ab" "0102" "03040506" "0708090a0b0c0d0e") + b"xyz"


def test_pull_integers_big_endian() -> None:
    buf = Buffer(bytes.fromhex("ab" "0102" "03040506" "0708090a0b0c0d0e") + b"xyz")
    assert buf.remaining == 18
    assert buf.pull_uint8() == 0xAB
    assert buf.pull_uint16() == 0x0102
    assert buf.pull_uint32() == 0x03040506
    assert buf.pull_uint64() == 0x0708090A0B0C0D0E
    assert not buf.eof()
    assert buf.pull_rest() == b"xyz"
    assert buf.eof()
    assert buf.remaining == 0
    assert buf.pull_rest() == b""


def test_uint8_extremes_round_trip() -> None:
    for value in (0, 1, 0x7F, 0xFF):
        out = Buffer()
        out.push_uint8(value)
        assert Buffer(out.data()).pull_uint8() == value


def test_integer_maxima_round_trip() -> None:
    out = Buffer()
    out.push_uint16(0xFFFF)
    out.push_uint32(0xFFFFFFFF)
    out.push_uint64(0xFFFFFFFFFFFFFFFF)
    buf = Buffer(out.data())
    assert (buf.pull_uint16(), buf.pull_uint32(), buf.pull_uint64()) == (0xFFFF, 0xFFFFFFFF, 2**64 - 1)
    assert buf.eof()


def test_short_reads_raise_and_consume_nothing() -> None:
    for method, size in [("pull_uint8", 1), ("pull_uint16", 2), ("pull_uint32", 4), ("pull_uint64", 8)]:
        buf = Buffer(b"\x01" * (size - 1))
        with pytest.raises(BufferReadError):
            getattr(buf, method)()
        assert buf.remaining == size - 1, method  # the cursor did not move


def test_pull_bytes_bounds() -> None:
    buf = Buffer(b"abcdef")
    assert buf.pull_bytes(0) == b""
    assert buf.pull_bytes(2) == b"ab"
    with pytest.raises(BufferReadError):
        buf.pull_bytes(5)
    assert buf.pull_bytes(4) == b"cdef"
    with pytest.raises(BufferReadError):
        buf.pull_bytes(1)


def test_pull_bytes_negative_count_is_a_read_error() -> None:
    buf = Buffer(b"abc")
    with pytest.raises(BufferReadError):
        buf.pull_bytes(-1)
    assert buf.remaining == 3


def test_pull_bytes_returns_bytes_from_memoryview_and_bytearray() -> None:
    for source in (bytearray(b"hello"), memoryview(b"hello")):
        got = Buffer(source).pull_bytes(5)
        assert type(got) is bytes and got == b"hello"


def test_empty_buffer() -> None:
    buf = Buffer()
    assert buf.eof() and buf.remaining == 0
    assert buf.data() == b""
    with pytest.raises(BufferReadError):
        buf.pull_uint8()


# -- endpoints -------------------------------------------------------------------

def test_push_endpoint_ipv4_layout() -> None:
    buf = Buffer()
    buf.push_endpoint(Endpoint("1.2.3.4", 0x1F90))
    # u8 transport (tcp=0) | u8 version | 4 address bytes | u16 port
    assert buf.data() == bytes.fromhex("00" "04" "01020304" "1f90")


def test_push_endpoint_ipv6_udp_layout() -> None:
    buf = Buffer()
    buf.push_endpoint(Endpoint("::1", 65535, "udp"))
    assert buf.data() == bytes.fromhex("01" "06") + bytes(15) + b"\x01" + b"\xff\xff"


def test_endpoint_round_trip() -> None:
    endpoints = [
        Endpoint("127.0.0.1", 0),
        Endpoint("255.255.255.255", 65535, "udp"),
        Endpoint("::", 1),
        Endpoint("2001:db8::42", 5483, "udp"),
        Endpoint("[fe80::1]", 80),
    ]
    out = Buffer()
    for endpoint in endpoints:
        out.push_endpoint(endpoint)
    buf = Buffer(out.data())
    assert [buf.pull_endpoint() for _ in endpoints] == endpoints
    assert buf.eof()


def test_push_endpoint_refuses_hostnames() -> None:
    buf = Buffer()
    with pytest.raises(LocalProtocolError):
        buf.push_endpoint(Endpoint("example.com", 80))
    assert buf.data() == b""  # nothing half-written


MALFORMED_ENDPOINTS = [
    b"",
    b"\x00",  # transport only
    b"\x02\x04\x01\x02\x03\x04\x00\x50",  # unknown transport code 2
    b"\x00\x05\x01\x02\x03\x04\x00\x50",  # unknown IP version 5
    b"\x00\x04\x01\x02\x03",  # short IPv4 address
    b"\x00\x04\x01\x02\x03\x04\x00",  # short port
    b"\x00\x06" + bytes(15),  # short IPv6 address
]


def test_pull_endpoint_malformed() -> None:
    for data in MALFORMED_ENDPOINTS:
        with pytest.raises(BufferReadError):
            Buffer(data).pull_endpoint()
