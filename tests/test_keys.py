"""crust.crypto.keys: X25519 against RFC 7748, low-order points, PeerId derivation."""

from __future__ import annotations

import pytest

from crust.crypto.keys import KeyPair, check_public_key
from crust.errors import HandshakeError, RemoteProtocolError
from crust.ids import PeerId

P = 2**255 - 19


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# RFC 7748 §5.2: (scalar, input u-coordinate, output u-coordinate).
RFC7748_5_2 = [
    (
        "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
        "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
        "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
    ),
    (
        # Its u has the top bit set: X25519 must mask it (RFC 7748 §5).
        "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
        "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
        "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
    ),
]

# RFC 7748 §6.1.
ALICE_PRIVATE = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIVATE = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUBLIC = h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")

# u-coordinates of small order on Curve25519 or its twist (cr.yp.to/ecdh.html#validate),
# their non-canonical encodings below 2**255 (u + p), and encodings that only
# become one of them once the top bit is masked (RFC 7748 §5).
_ORDER_8_A = 325606250916557431795983626356110631294008115727848805560023387167927233504
_ORDER_8_B = 39382357235489614581723060781553021112529911719440698176882885853963445705823
LOW_ORDER_U = [0, 1, _ORDER_8_A, _ORDER_8_B, P - 1, P, P + 1, 2**255, 2**255 + 1, 2**255 + _ORDER_8_B]


def encode_u(u: int) -> bytes:
    return (u % 2**256).to_bytes(32, "little")


@pytest.mark.parametrize(("scalar", "u", "expected"), RFC7748_5_2)
def test_rfc7748_section_5_2(scalar: str, u: str, expected: str) -> None:
    assert KeyPair(h(scalar)).dh(h(u)) == h(expected)


def test_rfc7748_section_5_2_iterated() -> None:
    # k = u = 9; each round k, u = X25519(k, u), k.  After 1 and 1000 rounds.
    k = u = b"\x09" + bytes(31)
    for i in range(1000):
        k, u = KeyPair(k).dh(u), k
        if i == 0:
            assert k == h("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079")
    assert k == h("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51")


def test_rfc7748_section_6_1_alice_and_bob() -> None:
    alice, bob = KeyPair(ALICE_PRIVATE), KeyPair(BOB_PRIVATE)
    assert alice.public_bytes == ALICE_PUBLIC
    assert bob.public_bytes == BOB_PUBLIC
    assert alice.dh(BOB_PUBLIC) == SHARED
    assert bob.dh(ALICE_PUBLIC) == SHARED


def test_public_key_is_x25519_of_the_base_point() -> None:
    alice = KeyPair(ALICE_PRIVATE)
    assert alice.dh(b"\x09" + bytes(31)) == alice.public_bytes


@pytest.mark.parametrize("u", LOW_ORDER_U)
def test_low_order_points_are_refused(u: int) -> None:
    with pytest.raises(HandshakeError) as info:
        KeyPair(ALICE_PRIVATE).dh(encode_u(u))
    assert info.value.reason == "bad_key"
    with pytest.raises(HandshakeError):
        check_public_key(encode_u(u))


def test_all_zero_public_key_is_a_remote_error() -> None:
    with pytest.raises(RemoteProtocolError):
        KeyPair.generate().dh(bytes(32))


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_public_key_of_wrong_length(length: int) -> None:
    with pytest.raises(HandshakeError) as info:
        KeyPair(ALICE_PRIVATE).dh(b"\x09" * length)
    assert info.value.reason == "bad_key"


def test_public_key_of_wrong_type() -> None:
    with pytest.raises(TypeError):
        KeyPair(ALICE_PRIVATE).dh("de9edb7d" * 8)  # type: ignore[arg-type]


def test_check_public_key_accepts_a_real_key() -> None:
    check_public_key(BOB_PUBLIC)
    check_public_key(KeyPair.generate().public_bytes)


@pytest.mark.parametrize("bad", [b"", bytes(31), bytes(33)])
def test_private_key_of_wrong_length(bad: bytes) -> None:
    with pytest.raises(ValueError):
        KeyPair(bad)


def test_private_key_of_wrong_type() -> None:
    with pytest.raises(TypeError):
        KeyPair(ALICE_PRIVATE.hex())  # type: ignore[arg-type]


def test_private_key_bytes_are_kept_as_given() -> None:
    # X25519 clamps when it multiplies; the stored key is the caller's bytes.
    unclamped = b"\xff" * 32
    pair = KeyPair(bytearray(unclamped))  # type: ignore[arg-type]  # any bytes-like works at runtime
    assert pair.private_bytes == unclamped and isinstance(pair.private_bytes, bytes)


def test_generate_gives_distinct_working_keys() -> None:
    pairs = [KeyPair.generate() for _ in range(8)]
    assert len({p.private_bytes for p in pairs}) == 8
    assert len({p.public_bytes for p in pairs}) == 8
    a, b = pairs[0], pairs[1]
    assert a.dh(b.public_bytes) == b.dh(a.public_bytes)


def test_generate_returns_the_subclass() -> None:
    class Sub(KeyPair):
        __slots__ = ()

    assert type(Sub.generate()) is Sub


def test_peer_id_is_the_public_key() -> None:
    pair = KeyPair(ALICE_PRIVATE)
    assert pair.peer_id == PeerId(ALICE_PUBLIC)
    assert bytes(pair.peer_id) == pair.public_bytes
    generated = KeyPair.generate()
    assert generated.peer_id.raw == generated.public_bytes


def test_repr_hides_the_private_key() -> None:
    pair = KeyPair(ALICE_PRIVATE)
    text = repr(pair)
    assert ALICE_PRIVATE.hex() not in text
    assert ALICE_PRIVATE.hex()[:8] not in text
    assert repr(pair.peer_id) in text
