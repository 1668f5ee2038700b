"""crust.connection_info: the info two peers swap out of band before connect()."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crust.connection_info import MAX_ENDPOINTS, PrivConnectionInfo, PubConnectionInfo
from crust.ids import Endpoint, PeerId

PID = PeerId(bytes(range(32)))
TOKEN = bytes(range(100, 116))
V4 = Endpoint("192.0.2.7", 5483)
V6 = Endpoint("2001:db8::1", 443)
UDP = Endpoint("10.0.0.1", 9000, "udp")
INFO = PubConnectionInfo(PID, (V4, V6, UDP), TOKEN)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- construction --------------------------------------------------------------------------

def test_priv_to_pub_keeps_every_field() -> None:
    priv = PrivConnectionInfo(PID, (V4, UDP), TOKEN)
    pub = priv.to_pub()
    assert isinstance(pub, PubConnectionInfo)
    assert (pub.peer_id, pub.endpoints, pub.token) == (PID, (V4, UDP), TOKEN)


@pytest.mark.parametrize("cls", [PubConnectionInfo, PrivConnectionInfo])
def test_fields_are_normalised_and_frozen(cls: Any) -> None:
    info = cls(PID, [V4], bytearray(TOKEN))
    assert info.endpoints == (V4,) and type(info.token) is bytes
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.token = TOKEN
    hash(info)


@pytest.mark.parametrize("cls", [PubConnectionInfo, PrivConnectionInfo])
@pytest.mark.parametrize("args, error, match", [
    ((str(PID), (V4,), TOKEN), TypeError, "peer_id must be a PeerId"),
    ((PID, (V4,), "ab" * 16), TypeError, "token must be bytes"),
    ((PID, (V4,), bytes(15)), ValueError, "token must be 16 bytes, got 15"),
    ((PID, "1.2.3.4:5", TOKEN), TypeError, "endpoints must be a tuple"),
    ((PID, ("1.2.3.4:5",), TOKEN), TypeError, "endpoints must be Endpoints"),
    ((PID, (Endpoint("example.com", 80),), TOKEN), ValueError, "hostname"),
    ((PID, (Endpoint("1.2.3.4", 0),), TOKEN), ValueError, "port 0"),
    ((PID, (V4,) * (MAX_ENDPOINTS + 1), TOKEN), ValueError, "33 endpoints; at most 32"),
])
def test_bad_fields_are_refused(cls: Any, args: tuple[Any, ...], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        cls(*args)


def test_no_endpoints_and_max_endpoints_are_fine() -> None:
    for eps in [(), tuple(Endpoint(f"10.0.0.{i}", 1000 + i) for i in range(MAX_ENDPOINTS))]:
        info = PubConnectionInfo(PID, eps, TOKEN)
        assert PubConnectionInfo.from_bytes(info.to_bytes()) == info
        assert PubConnectionInfo.from_json(info.to_json()) == info


# -- bytes ----------------------------------------------------------------------------------

def test_bytes_round_trip_ipv4_ipv6_udp() -> None:
    data = INFO.to_bytes()
    assert PubConnectionInfo.from_bytes(data) == INFO
    assert PubConnectionInfo.from_bytes(bytearray(data)) == INFO
    assert PubConnectionInfo.from_bytes(memoryview(data)) == INFO


def test_exact_byte_layout() -> None:
    info = PubConnectionInfo(PID, (Endpoint("127.0.0.1", 5483), Endpoint("::1", 258, "udp")), TOKEN)
    expected = (
        b"\xc3CI" + b"\x01"
        + bytes(range(32))
        + bytes(range(100, 116))
        + b"\x02"
        + b"\x00\x04" + bytes([127, 0, 0, 1]) + b"\x15\x6b"  # tcp, IPv4, 127.0.0.1, port 5483
        + b"\x01\x06" + bytes(15) + b"\x01" + b"\x01\x02"  # udp, IPv6, ::1, port 258
    )
    assert info.to_bytes() == expected
    assert len(PubConnectionInfo(PID, (), TOKEN).to_bytes()) == 3 + 1 + 32 + 16 + 1


def _header(version: int = 1, count: int = 0) -> bytes:
    return b"\xc3CI" + bytes([version]) + bytes(range(32)) + TOKEN + bytes([count])


GOOD = INFO.to_bytes()


@pytest.mark.parametrize("data, match", [
    (b"", "empty"),
    (b"garbage, not info", "bad magic"),
    (b'{"version": 1}', "bad magic"),
    (b"\xc3CX" + GOOD[3:], "bad magic"),
    (b"\xc3", "truncated"),
    (b"\xc3CI", "truncated"),
    (GOOD[:20], "truncated"),
    (_header()[:-1], "truncated"),
    (_header(count=1), "truncated connection info: endpoint 1 of 1 is cut off"),
    (_header(count=1) + b"\x00\x04\x7f\x00", "truncated connection info: endpoint 1 of 1 is cut off"),
    (GOOD[:-1], "truncated connection info: endpoint 3 of 3 is cut off"),
    (_header(version=2), r"connection info version 2 is newer than this crust \(1\)"),
    (_header(version=2)[:5], r"connection info version 2 is newer than this crust \(1\)"),
    (_header(version=255) + b"whatever", "version 255 is newer"),
    (_header(version=0), "version 0 is not a valid version"),
    (_header(count=MAX_ENDPOINTS + 1), "33 endpoints; at most 32"),
    (_header(count=1) + b"\x07\x04\x7f\x00\x00\x01\x00\x50", "endpoint 1 of 1 is malformed: unknown endpoint transport"),
    (_header(count=1) + b"\x00\x05\x7f\x00\x00\x01\x00\x50", "endpoint 1 of 1 is malformed: unknown IP version 5"),
    (_header(count=1) + b"\x00\x04\x7f\x00\x00\x01\x00\x00", "endpoint 1 of 1 has port 0"),
    (GOOD + b"\x00", "1 trailing bytes after its 3 endpoints"),
    (_header() + b"xyz", "3 trailing bytes after its 0 endpoints"),
])
def test_bad_bytes_raise_value_error_naming_the_problem(data: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PubConnectionInfo.from_bytes(data)


def test_every_truncation_of_good_bytes_is_refused() -> None:
    for n in range(len(GOOD)):
        with pytest.raises(ValueError, match="truncated|empty"):
            PubConnectionInfo.from_bytes(GOOD[:n])


def test_from_bytes_wants_bytes() -> None:
    with pytest.raises(TypeError):
        PubConnectionInfo.from_bytes(GOOD.hex())  # type: ignore[arg-type]


@FUZZ
@given(st.binary(max_size=200))
def test_from_bytes_of_random_bytes_raises_only_value_error(data: bytes) -> None:
    for candidate in (data, b"\xc3CI\x01" + data):
        try:
            info = PubConnectionInfo.from_bytes(candidate)
        except ValueError:
            continue
        assert PubConnectionInfo.from_bytes(info.to_bytes()) == info


@FUZZ
@given(st.binary(max_size=len(GOOD) + 4), st.integers(0, len(GOOD) - 1))
def test_from_bytes_of_mutated_good_bytes_raises_only_value_error(noise: bytes, at: int) -> None:
    data = GOOD[:at] + noise + GOOD[at + len(noise):]
    try:
        PubConnectionInfo.from_bytes(data)
    except ValueError:
        pass


# -- JSON -----------------------------------------------------------------------------------

def test_json_round_trip_ipv4_ipv6_udp() -> None:
    text = INFO.to_json()
    assert isinstance(text, str)
    assert PubConnectionInfo.from_json(text) == INFO
    assert PubConnectionInfo.from_json(text.encode()) == INFO


def test_json_fields() -> None:
    obj = json.loads(INFO.to_json())
    assert obj == {
        "version": 1,
        "peer_id": str(PID),
        "token": TOKEN.hex(),
        "endpoints": ["192.0.2.7:5483", "[2001:db8::1]:443", "udp://10.0.0.1:9000"],
    }
    assert obj["peer_id"] == PID.raw.hex()


def _json(**changes: Any) -> str:
    obj: dict[str, Any] = json.loads(INFO.to_json())
    for key, value in changes.items():
        if value is _DROP:
            del obj[key]
        else:
            obj[key] = value
    return json.dumps(obj)


_DROP = object()


@pytest.mark.parametrize("text, match", [
    ("", "not valid JSON"),
    ("garbage", "not valid JSON"),
    (INFO.to_json()[:-1], "not valid JSON"),
    (INFO.to_json() + "x", "not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
    ("[1, 2]", "must be an object, not list"),
    ("null", "must be an object, not NoneType"),
    (_json(version=2), r"connection info version 2 is newer than this crust \(1\)"),
    (_json(version=2, peer_id=_DROP, extra=1), r"version 2 is newer than this crust \(1\)"),
    (_json(version=0), "version 0 is not a valid version"),
    (_json(version="1"), "'version' must be an integer, got str"),
    (_json(version=True), "'version' must be an integer, got bool"),
    (_json(version=1.0), "'version' must be an integer, got float"),
    (_json(version=_DROP), "'version' must be an integer, got null"),
    (_json(peer_id=_DROP), "lacks field.*'peer_id'"),
    (_json(token=_DROP, endpoints=_DROP), "lacks field.*'token', 'endpoints'"),
    (_json(extra=1), "unknown field.*'extra'"),
    (_json(peer_id=7), "'peer_id' must be a hex string, got int"),
    (_json(peer_id="zz"), "'peer_id' is bad: not a hex PeerId"),
    (_json(peer_id="ab" * 31), "'peer_id' is bad: PeerId needs 32 bytes, got 31"),
    (_json(token=None), "'token' must be a hex string, got null"),
    (_json(token="not hex"), "'token' is not hex"),
    (_json(token="ab" * 17), "'token' must be 16 bytes, got 17"),
    (_json(endpoints="1.2.3.4:5"), "'endpoints' must be a list, got str"),
    (_json(endpoints={"a": 1}), "'endpoints' must be a list, got dict"),
    (_json(endpoints=["1.2.3.4:5", 6]), "endpoint 2 must be a string, got int"),
    (_json(endpoints=["1.2.3.4"]), "endpoint 1 is bad: not an endpoint"),
    (_json(endpoints=["1.2.3.4:70000"]), "endpoint 1 is bad: .*outside 0..65535"),
    (_json(endpoints=["sctp://1.2.3.4:5"]), "endpoint 1 is bad: .*transport"),
    (_json(endpoints=["example.com:80"]), "hostname"),
    (_json(endpoints=["1.2.3.4:0"]), "port 0"),
    (_json(endpoints=["1.2.3.4:5"] * 33), "33 endpoints; at most 32"),
    (b"\xff\xfe\x00garbage", "not valid JSON"),
])
def test_bad_json_raises_value_error_naming_the_problem(text: str | bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PubConnectionInfo.from_json(text)


def test_from_json_wants_text() -> None:
    with pytest.raises(TypeError):
        PubConnectionInfo.from_json({"version": 1})  # type: ignore[arg-type]


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)


@FUZZ
@given(st.text(max_size=200))
def test_from_json_of_random_text_raises_only_value_error(text: str) -> None:
    try:
        PubConnectionInfo.from_json(text)
    except ValueError:
        pass


@FUZZ
@given(st.fixed_dictionaries({}, optional={
    "version": st.sampled_from([1, 1, 2, 0, -1, "1", None, 1.5]) | _json_values,
    "peer_id": st.sampled_from([str(PID), "zz", ""]) | _json_values,
    "token": st.sampled_from([TOKEN.hex(), "ab", ""]) | _json_values,
    "endpoints": st.lists(st.sampled_from(["1.2.3.4:5", "[::1]:9", "udp://1.2.3.4:0", "x:y"]) | _json_values,
                          max_size=4) | _json_values,
    "extra": _json_values,
}))
def test_from_json_of_random_objects_raises_only_value_error(obj: dict[str, Any]) -> None:
    try:
        info = PubConnectionInfo.from_json(json.dumps(obj))
    except ValueError:
        return
    assert PubConnectionInfo.from_json(info.to_json()) == info


@FUZZ
@given(st.lists(st.tuples(st.ip_addresses().map(str), st.integers(1, 65535), st.sampled_from(["tcp", "udp"])),
                max_size=MAX_ENDPOINTS),
       st.binary(min_size=32, max_size=32), st.binary(min_size=16, max_size=16))
def test_round_trips_for_any_valid_info(eps: list[tuple[str, int, str]], raw: bytes, token: bytes) -> None:
    info = PrivConnectionInfo(PeerId(raw), tuple(Endpoint(*ep) for ep in eps), token).to_pub()
    assert PubConnectionInfo.from_bytes(info.to_bytes()) == info
    assert PubConnectionInfo.from_json(info.to_json()) == info
