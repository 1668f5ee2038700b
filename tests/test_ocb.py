"""AES-OCB's direct path (crust.crypto.ocb.OcbKey) against pycryptodome's documented API and RFC 7253.

The direct path calls pycryptodome's OCB C core without ``AES.new``; these
tests hold it to the documented path's bytes for every length and to its
refusals (a changed bit anywhere, another nonce or associated data, a short
input), and check that crust falls back to the documented path when the C
functions are not what ``crust.crypto.ocb`` expects.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crust.crypto import aes, ocb
from crust.crypto.aead import Cipher, Opener, Sealer

pytestmark = pytest.mark.skipif(not aes.hardware_support()[0], reason="this CPU lacks AES-NI: crust never runs OCB")

KEY = bytes(range(32))


def direct(key: bytes = KEY) -> ocb.OcbKey:
    assert ocb.AVAILABLE, "pycryptodome's OCB core is not callable directly here"
    return ocb.OcbKey(key)


def test_the_direct_path_is_the_one_in_use() -> None:
    # On this project's machines (AES-NI, pycryptodome's cffi backend): if this fails,
    # a pycryptodome upgrade changed the C functions and crust fell back to AES.new.
    assert ocb.AVAILABLE and aes.FAST_OCB
    assert isinstance(aes.ocb_context(KEY), ocb.OcbKey)


# RFC 7253 Appendix A: the first sample vectors (AES-128, TAGLEN 128).
RFC_KEY = bytes.fromhex("000102030405060708090A0B0C0D0E0F")
SAMPLES = [  # (nonce, A, P, C)
    ("BBAA99887766554433221100", "", "", "785407BFFFC8AD9EDCC5520AC9111EE6"),
    ("BBAA99887766554433221101", "0001020304050607", "0001020304050607",
     "6820B3657B6F615A5725BDA0D3B4EB3A257C9AF1F8F03009"),
    ("BBAA99887766554433221102", "0001020304050607", "", "81017F8203F081277152FADE694A0A00"),
    ("BBAA99887766554433221103", "", "0001020304050607", "45DD69F8F5AAE72414054CD1F35D82760B2CD00D2F99BFA9"),
]


@pytest.mark.parametrize(("nonce", "ad", "plaintext", "sealed"), SAMPLES)
def test_rfc7253_sample_results(nonce: str, ad: str, plaintext: str, sealed: str) -> None:
    ctx = direct(RFC_KEY)
    n, a, p, c = (bytes.fromhex(x) for x in (nonce, ad, plaintext, sealed))
    assert ctx.seal(n, a, p) == c
    assert ctx.open(n, a, c) == p


@pytest.mark.parametrize(("key_size", "expected"), [
    (16, "67E944D23256C5E0B6C61FA22FDF1EA2"),
    (32, "D90EB8E9C977C88B79DD793D7FFA161C"),  # AEAD_AES_256_OCB_TAGLEN128: crust's parameters
])
def test_rfc7253_wider_variety(key_size: int, expected: str) -> None:
    # Every length 0..127 with and without AD, folded into one tag (RFC 7253 Appendix A, page 18).
    ctx = direct(bytes(key_size - 1) + bytes([128]))
    out = bytearray()
    for i in range(128):
        s = bytes(i)
        out += ctx.seal((3 * i + 1).to_bytes(12, "big"), s, s)
        out += ctx.seal((3 * i + 2).to_bytes(12, "big"), b"", s)
        out += ctx.seal((3 * i + 3).to_bytes(12, "big"), s, b"")
    assert ctx.seal((385).to_bytes(12, "big"), out, b"") == bytes.fromhex(expected)


SIZES = st.one_of(st.sampled_from([0, 1, 15, 16, 17, 100, 65535, 65536, 65536 + 256]), st.integers(0, 70_000))


@settings(max_examples=60, deadline=None)
@given(size=SIZES, ad=st.binary(max_size=40), nonce=st.binary(min_size=12, max_size=12),
       kind=st.sampled_from([bytes, bytearray, memoryview]))
def test_same_bytes_as_the_documented_api(size: int, ad: bytes, nonce: bytes, kind: type) -> None:
    plaintext = (bytes(range(251)) * (size // 251 + 1))[:size]
    expected = aes.ocb_seal(KEY, nonce, ad, plaintext)
    ctx = direct()
    assert ctx.seal(nonce, kind(ad), kind(plaintext)) == expected
    assert ctx.open(nonce, kind(ad), kind(expected)) == plaintext == aes.ocb_open(KEY, nonce, ad, expected)


@settings(max_examples=40, deadline=None)
@given(size=st.integers(0, 5000), data=st.data())
def test_any_change_is_refused(size: int, data: st.DataObject) -> None:
    nonce, ad = bytes(11) + b"\x07", b"header"
    sealed = direct().seal(nonce, ad, bytes(size))
    bit = data.draw(st.integers(0, len(sealed) * 8 - 1))
    forged = bytearray(sealed)
    forged[bit // 8] ^= 1 << (bit % 8)
    for args in ((nonce, ad, forged), (bytes(12), ad, sealed), (nonce, b"headex", sealed), (nonce, b"", sealed),
                 (nonce, ad, sealed[:-1])):
        with pytest.raises(ValueError):
            direct().open(*args)
        with pytest.raises(ValueError):
            aes.ocb_open(KEY, *args)  # the documented path refuses the same


def test_short_input_and_bad_nonce_are_value_errors() -> None:
    ctx = direct()
    with pytest.raises(ValueError, match="shorter than the tag"):
        ctx.open(bytes(12), b"", bytes(15))
    with pytest.raises(ValueError, match="12 bytes"):
        ctx.seal(bytes(8), b"", b"x")
    assert ctx.open(bytes(12), b"", ctx.seal(bytes(12), b"", b"")) == b""  # and the context still works


def test_a_context_that_disagrees_is_not_used() -> None:
    assert aes._agrees(ocb.OcbKey)
    assert not aes._agrees(lambda key: aes.keyed(key, aes.gcm_seal, aes.gcm_open))  # other bytes

    class Lax:  # right bytes, but takes a forgery
        def __init__(self, key: bytes) -> None:
            self.seal = aes.keyed(key, aes.ocb_seal, aes.ocb_open).seal

        def open(self, nonce: bytes, ad: object, data: bytes) -> bytes:
            return bytes(len(data) - 16)

    assert not aes._agrees(Lax)


def test_unexpected_c_prototypes_mean_no_direct_path(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ocb._bind() is not None
    monkeypatch.setitem(ocb._PROTOTYPES, "OCB_start_operation", "int(*)(void *, uint8_t *, size_t, void * *)")
    assert ocb._bind() is None
    monkeypatch.undo()
    from Crypto.Util import _raw_api

    monkeypatch.setattr(_raw_api, "backend", "ctypes")
    assert ocb._bind() is None
    monkeypatch.setattr(ocb, "_LIB", None)
    with pytest.raises(RuntimeError, match="directly"):
        ocb.OcbKey(KEY)


def test_the_fallback_gives_the_same_channel(monkeypatch: pytest.MonkeyPatch) -> None:
    fast_sealer = Sealer(KEY, cipher=Cipher.AES_256_OCB, rekey_interval=3)
    monkeypatch.setattr(aes, "FAST_OCB", False)
    assert not isinstance(aes.ocb_context(KEY), ocb.OcbKey)
    slow_sealer = Sealer(KEY, cipher=Cipher.AES_256_OCB, rekey_interval=3)
    opener = Opener(KEY, cipher=Cipher.AES_256_OCB, rekey_interval=3)
    for n in range(7):  # across two rekeys
        frame = fast_sealer.seal(b"frame %d" % n)
        assert slow_sealer.seal(b"frame %d" % n) == frame
        assert opener.open(frame) == b"frame %d" % n


def test_repr_hides_the_key() -> None:
    assert KEY.hex() not in repr(direct()) and "OcbKey" in repr(direct())


@pytest.mark.parametrize("size", [65535, 65536, 65536 + 256])
def test_long_outputs_with_and_without_pycryptodome_filling_bytes(size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # From 64 KiB on, C code writes into a new bytes object (no copy); without that helper, the same bytes.
    plaintext = bytes(range(256)) * (size // 256) + bytes(size % 256)
    nonce = bytes(12)
    sealed = direct().seal(nonce, b"", plaintext)
    assert type(sealed) is bytes and sealed == aes.ocb_seal(KEY, nonce, b"", plaintext)
    assert direct().open(nonce, b"", sealed) == plaintext
    assert ocb._LIB is not None
    monkeypatch.setattr(ocb, "_LIB", ocb._LIB._replace(output=None, holder=None))
    assert direct().seal(nonce, b"", plaintext) == sealed
    assert direct().open(nonce, b"", sealed) == plaintext


@pytest.mark.parametrize("size", [0, 100, 65536])
@pytest.mark.parametrize("helper", [True, False])
def test_a_prefix_is_put_in_front_unchanged(size: int, helper: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not helper:
        assert ocb._LIB is not None
        monkeypatch.setattr(ocb, "_LIB", ocb._LIB._replace(output=None, holder=None))
    plaintext, nonce, prefix = bytes(range(256)) * (size // 256) + bytes(size % 256), bytes(12), b"\x00\x01\x00\x10"
    sealed = direct().seal(nonce, b"ad", plaintext, prefix)
    assert sealed == prefix + aes.ocb_seal(KEY, nonce, b"ad", plaintext)
    assert direct().open(nonce, b"ad", memoryview(sealed)[len(prefix):]) == plaintext
