"""crust.crypto.aead: ChaCha20-Poly1305 with Noise nonces, Sealer/Opener, rekeying, poisoning."""

from __future__ import annotations

import pytest
from Crypto.Cipher import ChaCha20_Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from crust.crypto import aead
from crust.crypto.aead import MAX_NONCE, REKEY_INTERVAL, Opener, Sealer, decrypt, encrypt, rekey
from crust.errors import DecryptError, LocalProtocolError, RemoteProtocolError

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))

# RFC 8439 §2.8.2, the AEAD_CHACHA20_POLY1305 test vector.
RFC_KEY = bytes(range(0x80, 0xA0))
RFC_NONCE = bytes.fromhex("070000004041424344454647")
RFC_AAD = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
RFC_PLAINTEXT = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, "
    b"sunscreen would be it."
)
RFC_CIPHERTEXT = bytes.fromhex(
    "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6"
    "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36"
    "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
    "3ff4def08e4b7a9de576d26586cec64b6116"
)
RFC_TAG = bytes.fromhex("1ae10b594f09e26a7e902ecbd0600691")


# -- known answers -------------------------------------------------------------

def test_rfc8439_vector_through_the_primitive_path() -> None:
    # The RFC's nonce (07000000 || 4041...47) does not have Noise's layout
    # (4 zero bytes || little-endian counter), so it cannot go through encrypt().
    # It goes through _seal/_open, the exact code encrypt()/decrypt() and the
    # Sealer/Opener call with the nonce they build.
    sealed = aead._seal(RFC_KEY, RFC_NONCE, RFC_AAD, RFC_PLAINTEXT)
    assert sealed == RFC_CIPHERTEXT + RFC_TAG
    assert aead._open(RFC_KEY, RFC_NONCE, RFC_AAD, sealed) == RFC_PLAINTEXT


def test_rfc8439_vector_with_a_tampered_tag_fails() -> None:
    bad = RFC_CIPHERTEXT + bytes([RFC_TAG[0] ^ 1]) + RFC_TAG[1:]
    with pytest.raises(ValueError):
        aead._open(RFC_KEY, RFC_NONCE, RFC_AAD, bad)


@settings(max_examples=200, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), nonce=st.binary(min_size=12, max_size=12),
       ad=st.binary(max_size=40), plaintext=st.binary(max_size=300))
def test_the_assembled_aead_matches_pycryptodomes_chacha20_poly1305(
        key: bytes, nonce: bytes, ad: bytes, plaintext: bytes) -> None:
    # _seal/_open build RFC 8439 from ChaCha20 + Poly1305 for speed; every
    # length modulo 16 (the padding cases) must give the library AEAD's bytes.
    reference = ChaCha20_Poly1305.new(key=key, nonce=nonce)
    reference.update(ad)
    ciphertext, tag = reference.encrypt_and_digest(plaintext)
    assert aead._seal(key, nonce, ad, plaintext) == ciphertext + tag
    assert aead._open(key, nonce, ad, ciphertext + tag) == plaintext
    if plaintext:
        with pytest.raises(ValueError):
            aead._open(key, nonce, ad, bytes([ciphertext[0] ^ 1]) + ciphertext[1:] + tag)


@pytest.mark.parametrize("n", [0, 1, 255, 256, 2**32 - 1, 2**32, 2**63, MAX_NONCE - 1, MAX_NONCE])
def test_encrypt_uses_the_noise_nonce_layout(n: int) -> None:
    # Noise §12.3: 32 zero bits, then the counter as 64-bit little-endian.
    nonce = bytes(4) + n.to_bytes(8, "little")
    assert encrypt(KEY, n, b"ad", b"hello") == aead._seal(KEY, nonce, b"ad", b"hello")
    assert decrypt(KEY, n, b"ad", encrypt(KEY, n, b"ad", b"hello")) == b"hello"


@pytest.mark.parametrize("n", [0, 1, 2**32 + 5, MAX_NONCE - 1])
def test_encrypt_matches_noiseprotocol(n: int) -> None:
    # An independent ENCRYPT(k, n, ad, p) (noiseprotocol, on pyca/cryptography).
    ciphers = pytest.importorskip("noise.backends.default.ciphers")
    theirs = ciphers.ChaCha20Cipher()
    theirs.initialize(KEY)
    assert encrypt(KEY, n, b"assoc", b"payload") == theirs.encrypt(KEY, n, b"assoc", b"payload")
    assert rekey(KEY) == theirs.rekey(KEY)


def test_rekey_is_noise_rekey() -> None:
    # Noise §4.2: REKEY(k) = ENCRYPT(k, 2^64-1, zerolen, zeros)[:32].
    assert rekey(KEY) == encrypt(KEY, MAX_NONCE, b"", bytes(32))[:32]
    assert len(rekey(KEY)) == 32 and rekey(KEY) != KEY


def test_decrypt_failure_is_a_remote_error() -> None:
    sealed = encrypt(KEY, 7, b"", b"x")
    with pytest.raises(DecryptError):
        decrypt(KEY, 8, b"", sealed)
    with pytest.raises(DecryptError):
        decrypt(KEY, 7, b"", sealed[:5])
    assert issubclass(DecryptError, RemoteProtocolError)


@pytest.mark.parametrize("bad_n", [-1, MAX_NONCE + 1])
def test_encrypt_rejects_out_of_range_nonces(bad_n: int) -> None:
    with pytest.raises(ValueError):
        encrypt(KEY, bad_n, b"", b"x")


def test_key_checks() -> None:
    with pytest.raises(ValueError):
        Sealer(bytes(31))
    with pytest.raises(TypeError):
        Opener("k" * 32)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Sealer(KEY, rekey_interval=0)
    with pytest.raises(TypeError):
        Opener(KEY, rekey_interval=True)


# -- Sealer / Opener -------------------------------------------------------------

def test_round_trip_and_overhead() -> None:
    sealer, opener = Sealer(KEY), Opener(KEY)
    for i, message in enumerate([b"", b"a", bytes(1000), bytes(range(256)) * 256]):
        sealed = sealer.seal(message)
        assert len(sealed) == len(message) + Sealer.overhead == len(message) + Sealer.TAG_SIZE
        assert opener.open(sealed) == message
        assert sealer.nonce == opener.nonce == i + 1
    assert Sealer.overhead == Opener.overhead == 16


def test_accepts_bytearray_and_memoryview() -> None:
    sealer, opener = Sealer(KEY), Opener(KEY)
    assert opener.open(bytearray(sealer.seal(bytearray(b"one")))) == b"one"
    assert opener.open(memoryview(sealer.seal(memoryview(b"two")))) == b"two"


def test_associated_data_must_match() -> None:
    sealer, opener = Sealer(KEY), Opener(KEY)
    sealed = sealer.seal(b"payload", ad=b"header")
    with pytest.raises(DecryptError):
        opener.open(sealed, ad=b"HEADER")


def test_seal_is_noise_encrypt_with_counter() -> None:
    sealer = Sealer(KEY)
    assert [sealer.seal(b"m") for _ in range(3)] == [encrypt(KEY, n, b"", b"m") for n in range(3)]


@pytest.mark.parametrize("position", [0, 5, -1, -16, -17])
def test_tampered_byte(position: int) -> None:
    sealed = bytearray(Sealer(KEY).seal(b"attack at dawn"))
    sealed[position] ^= 0x01
    with pytest.raises(DecryptError):
        Opener(KEY).open(bytes(sealed))


@pytest.mark.parametrize("length", [0, 1, 15, 16, 29])
def test_truncated(length: int) -> None:
    sealed = Sealer(KEY).seal(b"attack at dawn")  # 30 bytes
    with pytest.raises(DecryptError):
        Opener(KEY).open(sealed[:length])


def test_replayed_frame_fails() -> None:
    sealer, opener = Sealer(KEY), Opener(KEY)
    sealed = sealer.seal(b"once")
    assert opener.open(sealed) == b"once"
    with pytest.raises(DecryptError):
        opener.open(sealed)


def test_reordered_frames_fail() -> None:
    sealer, opener = Sealer(KEY), Opener(KEY)
    sealer.seal(b"1")  # sent, but delayed on the way
    with pytest.raises(DecryptError):
        opener.open(sealer.seal(b"2"))


def test_reordered_pair_fails_both_ways() -> None:
    sealer, opener = Sealer(KEY), Opener(KEY)
    first, second = sealer.seal(b"1"), sealer.seal(b"2")
    with pytest.raises(DecryptError):
        opener.open(second)
    with pytest.raises(DecryptError):  # and the late first one no longer helps
        opener.open(first)


def test_wrong_key_fails() -> None:
    with pytest.raises(DecryptError):
        Opener(OTHER_KEY).open(Sealer(KEY).seal(b"x"))


def test_poisoning() -> None:
    sealer, opener = Sealer(KEY), Opener(KEY)
    good = sealer.seal(b"good")
    with pytest.raises(DecryptError):
        opener.open(b"\x00" * 20)
    assert opener.poisoned
    # The valid frame is refused too: after a failure the stream is dead.
    with pytest.raises(DecryptError, match="poisoned"):
        opener.open(good)
    with pytest.raises(DecryptError):
        opener.open(good)
    assert opener.nonce == 0


# -- rekeying --------------------------------------------------------------------

def test_rekey_keeps_a_pair_in_sync() -> None:
    sealer, opener = Sealer(KEY, rekey_interval=3), Opener(KEY, rekey_interval=3)
    for i in range(10):
        message = f"message {i}".encode()
        assert opener.open(sealer.seal(message)) == message
    assert sealer.nonce == opener.nonce == 10


def test_rekey_changes_the_key_and_keeps_counting() -> None:
    sealer = Sealer(KEY, rekey_interval=3)
    sealed = [sealer.seal(b"m") for _ in range(7)]
    k1 = rekey(KEY)
    k2 = rekey(k1)
    # Noise: REKEY does not reset n, so messages 3..5 use k1 with nonces 3..5.
    expected = [encrypt(KEY, n, b"", b"m") for n in range(3)]
    expected += [encrypt(k1, n, b"", b"m") for n in range(3, 6)]
    expected += [encrypt(k2, 6, b"", b"m")]
    assert sealed == expected


def test_rekey_interval_mismatch_fails() -> None:
    sealer, opener = Sealer(KEY, rekey_interval=3), Opener(KEY, rekey_interval=4)
    for i in range(3):
        assert opener.open(sealer.seal(b"x")) == b"x"
    with pytest.raises(DecryptError):
        opener.open(sealer.seal(b"x"))


def test_rekey_interacts_with_noiseprotocol_rekey() -> None:
    # noiseprotocol's CipherState.rekey() is an independent REKEY(); applying it
    # every 2 messages must decrypt what a Sealer with rekey_interval=2 produced.
    state_mod = pytest.importorskip("noise.state")
    ciphers = pytest.importorskip("noise.backends.default.ciphers")

    class _Proto:
        cipher_class = ciphers.ChaCha20Cipher

    theirs = state_mod.CipherState(_Proto())
    theirs.initialize_key(KEY)
    sealer = Sealer(KEY, rekey_interval=2)
    for i in range(7):
        assert theirs.decrypt_with_ad(b"", sealer.seal(b"%d" % i)) == b"%d" % i
        if i % 2 == 1:
            theirs.rekey()


def test_default_interval() -> None:
    assert REKEY_INTERVAL == 2**32


# -- exhaustion --------------------------------------------------------------------

def test_sealer_counter_exhaustion() -> None:
    sealer = Sealer(KEY)
    sealer._n = MAX_NONCE - 1  # white box: 2**64 real messages would take forever
    sealer.seal(b"last")
    assert sealer.nonce == MAX_NONCE
    with pytest.raises(LocalProtocolError):
        sealer.seal(b"one too many")
    with pytest.raises(LocalProtocolError):
        sealer.seal(b"still refused")


def test_opener_counter_exhaustion() -> None:
    sealer, opener = Sealer(KEY), Opener(KEY)
    sealer._n = opener._n = MAX_NONCE - 1
    assert opener.open(sealer.seal(b"last")) == b"last"
    with pytest.raises(DecryptError):
        opener.open(aead._seal(KEY, aead._pack_nonce(MAX_NONCE), b"", b"x"))
    assert opener.poisoned


def test_reprs_hide_the_key() -> None:
    assert KEY.hex() not in repr(Sealer(KEY)) and "nonce=0" in repr(Sealer(KEY))
    assert KEY.hex() not in repr(Opener(KEY))
