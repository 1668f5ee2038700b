import pytest

from crust.ids import Contact, Endpoint, PeerId, name_hash


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
