"""crust.connection_info: the info two peers swap out of band before connect()."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crust.connection_info import (
    MAX_ENDPOINTS,
    Candidate,
    CandidateKind,
    PrivConnectionInfo,
    PubConnectionInfo,
)
from crust.ids import Endpoint, PeerId

PID = PeerId(bytes(range(32)))
TOKEN = bytes(range(100, 116))
V4 = Endpoint("192.0.2.7", 5483)
V6 = Endpoint("2001:db8::1", 443)
UDP = Endpoint("10.0.0.1", 9000, "udp")
INFO = PubConnectionInfo(PID, (V4, V6, UDP), TOKEN)
TCP_PUNCH = (Endpoint("198.51.100.1", 40000), Endpoint("10.1.0.2", 40000))
UDP_PUNCH = (Endpoint("198.51.100.1", 40001, "udp"), Endpoint("10.1.0.2", 40001, "udp"))
RELAY = PeerId(bytes(range(1, 33)))
FULL = PubConnectionInfo(PID, (V4, V6, UDP), TOKEN, tcp_punch=TCP_PUNCH, udp_punch=UDP_PUNCH, relays=(RELAY,))

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- construction --------------------------------------------------------------------------

def test_priv_to_pub_keeps_every_field() -> None:
    priv = PrivConnectionInfo(PID, (V4, UDP), TOKEN)
    pub = priv.to_pub()
    assert isinstance(pub, PubConnectionInfo)
    assert (pub.peer_id, pub.endpoints, pub.token) == (PID, (V4, UDP), TOKEN)
    priv = PrivConnectionInfo(PID, (V4, UDP), TOKEN, tcp_punch=TCP_PUNCH, udp_punch=UDP_PUNCH)
    assert priv.to_pub() == PubConnectionInfo(PID, (V4, UDP), TOKEN, tcp_punch=TCP_PUNCH, udp_punch=UDP_PUNCH)
    assert priv != priv.to_pub()  # the halves share fields and checks, never equality


def test_candidates_are_ordered_by_kind_and_endpoints_lists_each_once() -> None:
    info = PubConnectionInfo(PID, (UDP, V4, V6), TOKEN, tcp_punch=TCP_PUNCH, udp_punch=(UDP, *UDP_PUNCH))
    assert info.candidates == (
        Candidate(CandidateKind.TCP_LISTENER, V4), Candidate(CandidateKind.TCP_LISTENER, V6),
        Candidate(CandidateKind.TCP_PUNCH, TCP_PUNCH[0]), Candidate(CandidateKind.TCP_PUNCH, TCP_PUNCH[1]),
        Candidate(CandidateKind.UDP_LISTENER, UDP),
        Candidate(CandidateKind.UDP_PUNCH, UDP), Candidate(CandidateKind.UDP_PUNCH, UDP_PUNCH[0]),
        Candidate(CandidateKind.UDP_PUNCH, UDP_PUNCH[1]),
    )
    assert info.endpoints == (V4, V6, *TCP_PUNCH, UDP, *UDP_PUNCH)  # the rUDP socket's UDP once


def test_duplicates_within_a_group_are_dropped() -> None:
    info = PrivConnectionInfo(PID, (V4, V4, UDP, V4), TOKEN, tcp_punch=TCP_PUNCH * 3)
    assert info.listeners == (V4, UDP) and info.tcp_punch == TCP_PUNCH


def test_gather_drops_duplicates_and_lets_every_kind_keep_its_best() -> None:
    many_tcp = [Endpoint(f"10.0.{i // 250}.{i % 250 + 1}", 5483) for i in range(60)]
    many_udp = [Endpoint(ep.host, 5483, "udp") for ep in many_tcp]
    info = PrivConnectionInfo.gather(PID, TOKEN, listeners=[*many_tcp, *many_udp], tcp_punch=TCP_PUNCH * 2,
                                     udp_punch=UDP_PUNCH)
    assert len(info.candidates) == MAX_ENDPOINTS
    assert info.tcp_punch == TCP_PUNCH and info.udp_punch == UDP_PUNCH  # the short groups keep everything
    assert info.listeners == (*many_tcp[:14], *many_udp[:14])  # the long ones share the rest, best first
    assert isinstance(info, PrivConnectionInfo)
    assert PubConnectionInfo.gather(PID, TOKEN, listeners=[V4, V4]) == PubConnectionInfo(PID, (V4,), TOKEN)
    with pytest.raises(ValueError, match="must be a UDP endpoint"):
        PrivConnectionInfo.gather(PID, TOKEN, udp_punch=[V4])


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
    ((PID, tuple(Endpoint(f"10.0.0.{i}", 1) for i in range(MAX_ENDPOINTS + 1)), TOKEN), ValueError,
     "33 endpoints; at most 32"),
])
def test_bad_fields_are_refused(cls: Any, args: tuple[Any, ...], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        cls(*args)


@pytest.mark.parametrize("cls", [PubConnectionInfo, PrivConnectionInfo])
@pytest.mark.parametrize("kwargs, error, match", [
    ({"tcp_punch": (UDP,)}, ValueError, "tcp_punch endpoint udp://10.0.0.1:9000 must be a TCP endpoint"),
    ({"udp_punch": (V4,)}, ValueError, "udp_punch endpoint 192.0.2.7:5483 must be a UDP endpoint"),
    ({"udp_punch": "udp://1.2.3.4:5"}, TypeError, "udp_punch: endpoints must be a tuple"),
    ({"tcp_punch": (Endpoint("1.2.3.4", 0),)}, ValueError, "port 0"),
    ({"tcp_punch": tuple(Endpoint("10.0.0.1", p) for p in range(1, 31))}, ValueError, "33 endpoints; at most 32"),
])
def test_bad_punch_fields_are_refused(cls: Any, kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        cls(PID, (V4, V6, UDP), TOKEN, **kwargs)


def test_no_endpoints_and_max_endpoints_are_fine() -> None:
    eps = tuple(Endpoint(f"10.0.0.{i}", 1000 + i) for i in range(MAX_ENDPOINTS))
    for info in [PubConnectionInfo(PID, (), TOKEN), PubConnectionInfo(PID, eps, TOKEN),
                 PubConnectionInfo(PID, eps[:10], TOKEN, tcp_punch=eps[10:20],
                                   udp_punch=tuple(Endpoint(ep.host, ep.port, "udp") for ep in eps[20:]))]:
        assert PubConnectionInfo.from_bytes(info.to_bytes()) == info
        assert PubConnectionInfo.from_json(info.to_json()) == info


# -- bytes ----------------------------------------------------------------------------------

def test_bytes_round_trip_ipv4_ipv6_udp() -> None:
    for info in (INFO, FULL):
        data = info.to_bytes()
        assert PubConnectionInfo.from_bytes(data) == info
        assert PubConnectionInfo.from_bytes(bytearray(data)) == info
        assert PubConnectionInfo.from_bytes(memoryview(data)) == info


LOCAL_TCP = b"\x00\x04" + bytes([127, 0, 0, 1]) + b"\x15\x6b"  # tcp, IPv4, 127.0.0.1, port 5483
LOCAL_UDP6 = b"\x01\x06" + bytes(15) + b"\x01" + b"\x01\x02"  # udp, IPv6, ::1, port 258
LOCAL_INFO = PubConnectionInfo(PID, (Endpoint("127.0.0.1", 5483), Endpoint("::1", 258, "udp")), TOKEN)


def test_exact_byte_layout() -> None:
    info = PubConnectionInfo(PID, LOCAL_INFO.listeners, TOKEN, udp_punch=(Endpoint("::1", 258, "udp"),))
    expected = (
        b"\xc3CI" + b"\x03"
        + bytes(range(32))
        + bytes(range(100, 116))
        + b"\x02" + LOCAL_TCP + LOCAL_UDP6  # listeners
        + b"\x00"  # TCP punch
        + b"\x01" + LOCAL_UDP6  # UDP punch
        + b"\x01" + RELAY.raw  # relays
    )
    assert dataclasses.replace(info, relays=(RELAY,)).to_bytes() == expected
    assert len(PubConnectionInfo(PID, (), TOKEN).to_bytes()) == 3 + 1 + 32 + 16 + 4


def test_version_2_bytes_still_decode_without_relays() -> None:
    v2 = FULL.to_bytes()[:-33].replace(b"\xc3CI\x03", b"\xc3CI\x02", 1)
    assert PubConnectionInfo.from_bytes(v2) == dataclasses.replace(FULL, relays=())


@pytest.mark.parametrize("kwargs, error, match", [
    ({"relays": (RELAY,) * 2 + tuple(PeerId(bytes([i]) * 32) for i in range(40, 44))}, ValueError,
     "names 5 relays; at most 4"),
    ({"relays": (PID,)}, ValueError, "names its own peer as a relay"),
    ({"relays": ("ab" * 32,)}, TypeError, "relays must hold PeerIds, not str"),
    ({"relays": RELAY}, TypeError, "relays must be a tuple of PeerIds"),
])
def test_bad_relays_are_refused(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        PubConnectionInfo(PID, (), TOKEN, **kwargs)


def test_relays_are_kept_once_in_order() -> None:
    other = PeerId(bytes([9]) * 32)
    assert PubConnectionInfo(PID, (), TOKEN, relays=(other, RELAY, other)).relays == (other, RELAY)


def test_version_1_bytes_still_decode_as_listeners() -> None:
    v1 = b"\xc3CI" + b"\x01" + bytes(range(32)) + bytes(range(100, 116)) + b"\x02" + LOCAL_TCP + LOCAL_UDP6
    info = PubConnectionInfo.from_bytes(v1)
    assert info == LOCAL_INFO and info.tcp_punch == info.udp_punch == ()


def _header(version: int = 1, count: int = 0) -> bytes:
    return b"\xc3CI" + bytes([version]) + bytes(range(32)) + TOKEN + bytes([count])


GOOD = INFO.to_bytes()
GOOD_V1 = _header(count=3) + GOOD[len(_header()):-3]  # INFO in version 1: the same listeners, no punch or relay counts
GOOD_FULL = FULL.to_bytes()


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
    (GOOD_V1[:-1], "truncated connection info: endpoint 3 of 3 is cut off"),
    (_header(version=4), r"connection info version 4 is newer than this crust \(3\)"),
    (_header(version=4)[:5], r"connection info version 4 is newer than this crust \(3\)"),
    (_header(version=255) + b"whatever", "version 255 is newer"),
    (_header(version=0), "version 0 is not a valid version"),
    (_header(count=MAX_ENDPOINTS + 1), "33 endpoints; at most 32"),
    (_header(count=1) + b"\x07\x04\x7f\x00\x00\x01\x00\x50", "endpoint 1 of 1 is malformed: unknown endpoint transport"),
    (_header(count=1) + b"\x00\x05\x7f\x00\x00\x01\x00\x50", "endpoint 1 of 1 is malformed: unknown IP version 5"),
    (_header(count=1) + b"\x00\x04\x7f\x00\x00\x01\x00\x00", "endpoint 1 of 1 has port 0"),
    (GOOD_V1 + b"\x00", "1 trailing bytes after its 3 endpoints"),
    (_header() + b"xyz", "3 trailing bytes after its 0 endpoints"),
    # version 2: three counted groups
    (_header(version=2), "truncated connection info: the TCP punch endpoint count is cut off"),
    (_header(version=2) + b"\x00", "truncated connection info: the UDP punch endpoint count is cut off"),
    (_header(version=2, count=1) + LOCAL_TCP, "the TCP punch endpoint count is cut off"),
    (_header(version=2) + b"\x01" + LOCAL_TCP[:-1], "TCP punch endpoint 1 of 1 is cut off"),
    (_header(version=2) + b"\x00\x01" + LOCAL_UDP6[:3], "UDP punch endpoint 1 of 1 is cut off"),
    (_header(version=2, count=20) + LOCAL_TCP * 20 + b"\x0d", "33 endpoints; at most 32"),
    (_header(version=2) + b"\x01" + LOCAL_UDP6 + b"\x00", "tcp_punch endpoint .* must be a TCP endpoint"),
    (_header(version=2) + b"\x00\x01" + LOCAL_TCP, "udp_punch endpoint .* must be a UDP endpoint"),
    (_header(version=2) + b"\x00\x07", "UDP punch endpoint 1 of 7 is cut off"),
    (_header(version=2, count=1) + b"\x00\x05" + bytes(6) + b"\x00\x00", "listener 1 of 1 is malformed: unknown IP"),
    (GOOD_FULL + b"\x00", "1 trailing bytes after its 7 endpoints and relays"),
    (GOOD_FULL[:-33] + b"\x05", "names 5 relays; at most 4"),
    (GOOD_FULL[:-1], "1 relays need 32 bytes, 31 are left"),
    (GOOD_FULL[:-33], "the relay count is cut off"),
])
def test_bad_bytes_raise_value_error_naming_the_problem(data: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        PubConnectionInfo.from_bytes(data)


def test_every_truncation_of_good_bytes_is_refused() -> None:
    assert PubConnectionInfo.from_bytes(GOOD_V1) == INFO
    for good in (GOOD, GOOD_V1, GOOD_FULL):
        for n in range(len(good)):
            with pytest.raises(ValueError, match="truncated|empty"):
                PubConnectionInfo.from_bytes(good[:n])


def test_from_bytes_wants_bytes() -> None:
    with pytest.raises(TypeError):
        PubConnectionInfo.from_bytes(GOOD.hex())  # type: ignore[arg-type]


@FUZZ
@given(st.binary(max_size=200))
def test_from_bytes_of_random_bytes_raises_only_value_error(data: bytes) -> None:
    for candidate in (data, b"\xc3CI\x01" + data, b"\xc3CI\x02" + data):
        try:
            info = PubConnectionInfo.from_bytes(candidate)
        except ValueError:
            continue
        assert PubConnectionInfo.from_bytes(info.to_bytes()) == info


@FUZZ
@given(st.binary(max_size=len(GOOD_FULL) + 4), st.integers(0, len(GOOD_FULL) - 1), st.sampled_from([GOOD_V1, GOOD_FULL]))
def test_from_bytes_of_mutated_good_bytes_raises_only_value_error(noise: bytes, at: int, good: bytes) -> None:
    at %= len(good)
    data = good[:at] + noise + good[at + len(noise):]
    try:
        PubConnectionInfo.from_bytes(data)
    except ValueError:
        pass


# -- JSON -----------------------------------------------------------------------------------

def test_json_round_trip_ipv4_ipv6_udp() -> None:
    for info in (INFO, FULL):
        text = info.to_json()
        assert isinstance(text, str)
        assert PubConnectionInfo.from_json(text) == info
        assert PubConnectionInfo.from_json(text.encode()) == info


def test_json_fields() -> None:
    obj = json.loads(FULL.to_json())
    assert obj == {
        "version": 3,
        "peer_id": str(PID),
        "token": TOKEN.hex(),
        "listeners": ["192.0.2.7:5483", "[2001:db8::1]:443", "udp://10.0.0.1:9000"],
        "tcp_punch": ["198.51.100.1:40000", "10.1.0.2:40000"],
        "udp_punch": ["udp://198.51.100.1:40001", "udp://10.1.0.2:40001"],
        "relays": [str(RELAY)],
    }
    assert obj["peer_id"] == PID.raw.hex()


V1_JSON = json.dumps({"version": 1, "peer_id": str(PID), "token": TOKEN.hex(),
                      "endpoints": ["192.0.2.7:5483", "[2001:db8::1]:443", "udp://10.0.0.1:9000"]})


def test_version_1_json_still_decodes_as_listeners() -> None:
    assert PubConnectionInfo.from_json(V1_JSON) == INFO


def _json(base: str = V1_JSON, **changes: Any) -> str:
    obj: dict[str, Any] = json.loads(base)
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
    (_json(version=4), r"connection info version 4 is newer than this crust \(3\)"),
    (_json(version=4, peer_id=_DROP, extra=1), r"version 4 is newer than this crust \(3\)"),
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
    # version 2
    (_json(version=2), "lacks field.*'listeners', 'tcp_punch', 'udp_punch'"),
    (_json(version=3), "lacks field.*'listeners', 'tcp_punch', 'udp_punch', 'relays'"),
    (_json(FULL.to_json(), version=2), "unknown field.*'relays'"),
    (_json(FULL.to_json(), relays="ab"), "'relays' must be a list, got str"),
    (_json(FULL.to_json(), relays=[1]), "relay 1 must be a hex string, got int"),
    (_json(FULL.to_json(), relays=["zz"]), "relay 1 is bad"),
    (_json(FULL.to_json(), relays=[str(PeerId(bytes([i]) * 32)) for i in range(5)]), "names 5 relays; at most 4"),
    (_json(FULL.to_json(), version=1), "lacks field.*'endpoints'"),
    (_json(FULL.to_json(), endpoints=[]), "unknown field.*'endpoints'"),
    (_json(FULL.to_json(), udp_punch="udp://1.2.3.4:5"), "'udp_punch' must be a list, got str"),
    (_json(FULL.to_json(), tcp_punch=["1.2.3.4:5", None]), "TCP punch endpoint 2 must be a string, got null"),
    (_json(FULL.to_json(), listeners=["1.2.3.4"]), "listener 1 is bad: not an endpoint"),
    (_json(FULL.to_json(), udp_punch=["1.2.3.4:5"]), "udp_punch endpoint 1.2.3.4:5 must be a UDP endpoint"),
    (_json(FULL.to_json(), tcp_punch=["udp://1.2.3.4:5"]), "must be a TCP endpoint"),
    (_json(FULL.to_json(), listeners=["1.2.3.4:5"] * 20, tcp_punch=["1.2.3.4:6"] * 13), "33 endpoints; at most 32"),
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


_endpoint_lists = st.lists(
    st.sampled_from(["1.2.3.4:5", "[::1]:9", "udp://1.2.3.4:0", "udp://[::1]:7", "x:y"]) | _json_values, max_size=4,
) | _json_values


@FUZZ
@given(st.fixed_dictionaries({}, optional={
    "version": st.sampled_from([1, 1, 2, 2, 3, 0, -1, "1", None, 1.5]) | _json_values,
    "peer_id": st.sampled_from([str(PID), "zz", ""]) | _json_values,
    "token": st.sampled_from([TOKEN.hex(), "ab", ""]) | _json_values,
    "endpoints": _endpoint_lists,
    "listeners": _endpoint_lists,
    "tcp_punch": _endpoint_lists,
    "udp_punch": _endpoint_lists,
    "extra": _json_values,
}))
def test_from_json_of_random_objects_raises_only_value_error(obj: dict[str, Any]) -> None:
    try:
        info = PubConnectionInfo.from_json(json.dumps(obj))
    except ValueError:
        return
    assert PubConnectionInfo.from_json(info.to_json()) == info


_hosts = st.ip_addresses().map(str)


@FUZZ
@given(st.lists(st.tuples(_hosts, st.integers(1, 65535), st.sampled_from(["tcp", "udp"])), max_size=MAX_ENDPOINTS),
       st.lists(st.tuples(_hosts, st.integers(1, 65535)), max_size=MAX_ENDPOINTS),
       st.lists(st.tuples(_hosts, st.integers(1, 65535)), max_size=MAX_ENDPOINTS),
       st.binary(min_size=32, max_size=32), st.binary(min_size=16, max_size=16))
def test_round_trips_for_any_valid_info(eps: list[tuple[str, int, str]], tcp: list[tuple[str, int]],
                                        udp: list[tuple[str, int]], raw: bytes, token: bytes) -> None:
    info = PrivConnectionInfo.gather(PeerId(raw), token, listeners=[Endpoint(*ep) for ep in eps],
                                     tcp_punch=[Endpoint(*ep) for ep in tcp],
                                     udp_punch=[Endpoint(*ep, "udp") for ep in udp]).to_pub()
    assert PubConnectionInfo.from_bytes(info.to_bytes()) == info
    assert PubConnectionInfo.from_json(info.to_json()) == info
    assert len(info.candidates) <= MAX_ENDPOINTS
    if not tcp and not udp:  # without punch endpoints, gather keeps every listener, TCP ones first
        given = list(dict.fromkeys(Endpoint(*ep) for ep in eps))
        assert info.listeners == tuple(ep for ep in given if ep.transport == "tcp") + tuple(
            ep for ep in given if ep.transport == "udp")
