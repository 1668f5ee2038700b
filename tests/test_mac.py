"""crust.crypto.mac: the punch key, keyed BLAKE2s tags and short ids."""

from __future__ import annotations

import hashlib

import pytest
from Crypto.Hash import BLAKE2s
from hypothesis import given, settings
from hypothesis import strategies as st

from crust.crypto.mac import KEY_SIZE, SHORT_ID_SIZE, TAG_SIZE, mac, punch_key, short_id, verify

TOKEN_A = bytes(range(16))
TOKEN_B = bytes(range(16, 32))
KEY = punch_key(TOKEN_A, TOKEN_B)

tokens = st.binary(min_size=16, max_size=16)
keys = st.binary(min_size=KEY_SIZE, max_size=KEY_SIZE)


# -- known answers: pinned bytes, so a change that breaks interoperability fails here ----

def test_known_answers() -> None:
    assert KEY.hex() == "90a213644692c5bb113bcfd1e8af7795267e015b6ecdf4fc7ef121215c375a27"
    assert mac(KEY, b"crust").hex() == "d6ca79d261104ae3fd7b50a56961b4e7"
    assert short_id(KEY, bytes(range(32))).hex() == "9669f8ebb8de8118"


def test_rfc7693_keyed_blake2s_vector_through_hashlib() -> None:
    # The BLAKE2 reference KAT (blake2s-kat.txt, keyed, empty input): the
    # primitive mac() builds on computes the published answer.
    out = hashlib.blake2s(b"", key=bytes(range(32))).hexdigest()
    assert out == "48a8997da407876b3d79c0d92325ad3b89cbb754d86ab71aee047ad345fd2c49"


@settings(max_examples=100, deadline=None)
@given(key=keys, data=st.binary(max_size=200))
def test_mac_matches_pycryptodomes_blake2s(key: bytes, data: bytes) -> None:
    # An independent implementation: 128-bit keyed BLAKE2s (digest length as a parameter, not a cut).
    assert mac(key, data) == BLAKE2s.new(digest_bits=128, key=key, data=data).digest()


@settings(max_examples=50, deadline=None)
@given(a=tokens, b=tokens)
def test_punch_key_matches_pycryptodome_and_ignores_order(a: bytes, b: bytes) -> None:
    key = punch_key(a, b)
    assert key == punch_key(b, a) and len(key) == KEY_SIZE
    low, high = sorted((a, b))
    assert key == BLAKE2s.new(digest_bits=256, key=low + high, data=b"crust udp punch key v1").digest()


# -- behaviour ---------------------------------------------------------------------------

def test_different_tokens_give_different_keys() -> None:
    assert punch_key(TOKEN_A, TOKEN_A) != KEY
    assert punch_key(TOKEN_A, bytes(16)) != KEY


def test_verify_accepts_the_tag_and_nothing_else() -> None:
    tag = mac(KEY, b"probe")
    assert len(tag) == TAG_SIZE
    assert verify(KEY, b"probe", tag)
    assert verify(KEY, bytearray(b"probe"), memoryview(tag))
    assert not verify(KEY, b"probe!", tag)
    assert not verify(punch_key(TOKEN_B, bytes(16)), b"probe", tag)
    assert not verify(KEY, b"probe", bytes([tag[0] ^ 1]) + tag[1:])
    assert not verify(KEY, b"probe", tag[:-1])  # a short tag from the network is just wrong
    assert not verify(KEY, b"probe", b"")


def test_short_ids_name_peers_per_key() -> None:
    alice, bob = bytes(32), bytes([1]) * 32
    assert len(short_id(KEY, alice)) == SHORT_ID_SIZE
    assert short_id(KEY, alice) != short_id(KEY, bob)
    assert short_id(KEY, alice) != short_id(punch_key(TOKEN_A, bytes(16)), alice)


@pytest.mark.parametrize("call, error, match", [
    (lambda: punch_key("ab" * 8, TOKEN_B), TypeError, "token_a must be bytes"),  # type: ignore[arg-type]
    (lambda: punch_key(TOKEN_A, bytes(15)), ValueError, "token_b must be 16 bytes, got 15"),
    (lambda: mac(bytes(31), b""), ValueError, "key must be 32 bytes, got 31"),
    (lambda: mac(KEY, "text"), TypeError, "data must be bytes"),  # type: ignore[arg-type]
    (lambda: verify(KEY, b"", None), TypeError, "tag must be bytes"),  # type: ignore[arg-type]
    (lambda: short_id(b"", bytes(32)), ValueError, "key must be 32 bytes"),
])
def test_bad_arguments_are_refused(call: object, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()  # type: ignore[operator]
