import pytest

from crust.ids import Contact, Endpoint, PeerId, ip_endpoints, name_hash


def test_peer_id_round_trips_and_orders() -> None:
    a, b = PeerId(bytes(32)), PeerId(b"\x01" * 32)
    assert a < b and sorted([b, a]) == [a, b]
    assert PeerId.from_str(str(b)) == b and bytes(b) == b"\x01" * 32
    assert repr(a) == "PeerId(00000000…)"
    assert len({a, PeerId(bytes(32))}) == 1


@pytest.mark.parametrize("bad", [b"short", "00" * 31])
def test_peer_id_rejects_wrong_size(bad: object) -> None:
    with pytest.raises(ValueError, match="32"):
        PeerId.from_str(bad) if isinstance(bad, str) else PeerId(bad)  # type: ignore[arg-type]


def test_peer_id_rejects_non_bytes() -> None:
    with pytest.raises(TypeError, match="bytes"):
        PeerId(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text, expect, shown",
    [
        ("127.0.0.1:5483", Endpoint("127.0.0.1", 5483), "127.0.0.1:5483"),
        ("tcp://127.0.0.1:1", Endpoint("127.0.0.1", 1), "127.0.0.1:1"),
        ("udp://127.0.0.1:9", Endpoint("127.0.0.1", 9, "udp"), "udp://127.0.0.1:9"),
        ("[::1]:80", Endpoint("::1", 80), "[::1]:80"),
        ("[0:0::1]:80", Endpoint("::1", 80), "[::1]:80"),
        ("localhost:7", Endpoint("localhost", 7), "localhost:7"),
    ],
)
def test_endpoint_parse_and_str(text: str, expect: Endpoint, shown: str) -> None:
    assert Endpoint.parse(text) == expect
    assert str(expect) == shown
    assert Endpoint.parse(str(expect)) == expect


@pytest.mark.parametrize("text", ["127.0.0.1", "127.0.0.1:", ":80", "1.2.3.4:99999", "quic://1.2.3.4:1", "bad host:1"])
def test_endpoint_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        Endpoint.parse(text)


def test_endpoint_coerce() -> None:
    assert Endpoint.coerce(("127.0.0.1", 5)) == Endpoint("127.0.0.1", 5)
    with pytest.raises(TypeError, match="host:port"):
        Endpoint.coerce(5)  # type: ignore[arg-type]


def test_contact_accepts_hex_peer_id() -> None:
    pid = PeerId(b"\x02" * 32)
    assert Contact("127.0.0.1:1", str(pid)).peer_id == pid


def test_name_hash_distinguishes_none_and_empty() -> None:
    assert name_hash(None) == bytes(32)
    assert name_hash("") != name_hash(None)
    assert name_hash("a") != name_hash("b")


V4, V6, UDP = Endpoint("192.0.2.7", 5483), Endpoint("2001:db8::1", 1), Endpoint("10.0.0.1", 9, "udp")


def test_ip_endpoints_keeps_order_and_drops_repeats_only_when_asked() -> None:
    assert ip_endpoints([V4, V6, V4], "x") == (V4, V6, V4)
    assert ip_endpoints([V4, V6, V4], "x", unique=True) == (V4, V6)
    assert ip_endpoints((), "x", limit=0) == ()
    assert ip_endpoints([V4] * 3, "x", limit=1, unique=True) == (V4,)  # the limit counts what is kept


@pytest.mark.parametrize("endpoints, kwargs, error, match", [
    ("192.0.2.7:5483", {}, TypeError, "^info listeners: endpoints must be a tuple of Endpoints, not str$"),
    (42, {}, TypeError, "must be a tuple of Endpoints, not int"),
    (["192.0.2.7:5483"], {}, TypeError, "^info listeners: endpoints must be Endpoints, not str$"),
    ([Endpoint("example.com", 80)], {}, ValueError,
     "^info listeners endpoint example.com:80 is a hostname; only IP addresses can be sent to peers$"),
    ([Endpoint("192.0.2.7", 0)], {"dialable": True}, ValueError, "port 0, which cannot be dialled"),
    ([V4, UDP], {"transport": "udp"}, ValueError, r"^info listeners endpoint 192.0.2.7:5483 must be a UDP endpoint$"),
    ([V4, V6], {"limit": 1}, ValueError, "^info listeners: 2 endpoints; at most 1 are allowed$"),
])
def test_ip_endpoints_refuses_what_cannot_go_on_the_wire(endpoints: object, kwargs: dict[str, object],
                                                          error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ip_endpoints(endpoints, "info listeners", **kwargs)  # type: ignore[arg-type]


def test_ip_endpoints_allows_port_0_unless_dialable() -> None:
    assert ip_endpoints([Endpoint("192.0.2.7", 0)], "x") == (Endpoint("192.0.2.7", 0),)
