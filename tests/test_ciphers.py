"""The negotiable transport AEADs (crust.crypto.aes, aead.Cipher) and the per-process ranking.

Known answers come from the specs (GCM spec test case 16, RFC 7253 Appendix A);
independent implementations (pyca/cryptography, the noiseprotocol package)
check the nonce layout, the rekey function and the Sealer/Opener round trip.
"""

from __future__ import annotations

import struct
from typing import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crust.crypto import aes, ranking
from crust.crypto.aead import AES_REKEY_INTERVAL, MAX_NONCE, REKEY_INTERVAL, Cipher, Opener, Sealer
from crust.errors import DecryptError

ALL = list(Cipher)
AES = [Cipher.AES_256_GCM, Cipher.AES_256_OCB]
KEY = bytes(range(32))

needs_hardware_aes = pytest.mark.skipif(
    ranking.available_ciphers() != (Cipher.CHACHA20_POLY1305, Cipher.AES_256_GCM, Cipher.AES_256_OCB),
    reason="this CPU lacks AES-NI or PCLMULQDQ: crust offers only ChaCha20-Poly1305 here",
)


@pytest.fixture(autouse=True)
def _no_forced_preference() -> object:
    yield
    ranking.force_preference(None)


# -- known answers ---------------------------------------------------------------------

GCM16 = dict(
    key="feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
    nonce="cafebabefacedbaddecaf888",
    ad="feedfacedeadbeeffeedfacedeadbeefabaddad2",
    plaintext="d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
              "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
    sealed="522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
           "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662"
           "76fc6ece0f4e1768cddf8853bb2d551b",
)


def test_gcm_spec_test_case_16() -> None:
    key, nonce, ad, plaintext, sealed = (bytes.fromhex(GCM16[k]) for k in ("key", "nonce", "ad", "plaintext", "sealed"))
    assert aes.gcm_seal(key, nonce, ad, plaintext) == sealed
    assert aes.gcm_open(key, nonce, ad, sealed) == plaintext
    with pytest.raises(ValueError):
        aes.gcm_open(key, nonce, ad[:-1], sealed)


@pytest.mark.parametrize(("key_size", "expected"), [
    (16, "67E944D23256C5E0B6C61FA22FDF1EA2"),
    (32, "D90EB8E9C977C88B79DD793D7FFA161C"),  # AEAD_AES_256_OCB_TAGLEN128: crust's parameters
])
def test_ocb_rfc7253_appendix_a_wider_variety(key_size: int, expected: str) -> None:
    # RFC 7253 Appendix A, page 18: every length 0..127 with and without AD, folded into one tag.
    key = bytes(key_size - 1) + bytes([128])  # zeros(KEYLEN-8) || num2str(TAGLEN, 8)

    def num2str96(i: int) -> bytes:
        return i.to_bytes(12, "big")

    out = bytearray()
    for i in range(128):
        s = bytes(i)
        out += aes.ocb_seal(key, num2str96(3 * i + 1), s, s)
        out += aes.ocb_seal(key, num2str96(3 * i + 2), b"", s)
        out += aes.ocb_seal(key, num2str96(3 * i + 3), s, b"")
    assert len(out) == 22_400
    assert aes.ocb_seal(key, num2str96(385), bytes(out), b"") == bytes.fromhex(expected)


@pytest.mark.parametrize("open_", [aes.gcm_open, aes.ocb_open])
def test_short_or_forged_input_is_a_value_error(open_: object) -> None:
    seal = aes.gcm_seal if open_ is aes.gcm_open else aes.ocb_seal
    sealed = bytearray(seal(KEY, bytes(12), b"", b"attack at dawn"))
    with pytest.raises(ValueError, match="shorter than the tag"):
        open_(KEY, bytes(12), b"", bytes(15))  # type: ignore[operator]
    sealed[3] ^= 1
    with pytest.raises(ValueError):
        open_(KEY, bytes(12), b"", bytes(sealed))  # type: ignore[operator]


# -- the channel construction, against independent implementations --------------------

def _reference(cipher: Cipher, key: bytes, counter: int, plaintext: bytes) -> bytes:
    """pyca/cryptography's AEAD with crust's documented nonce for ``cipher``."""
    aead = pytest.importorskip("cryptography.hazmat.primitives.ciphers.aead")
    if cipher is Cipher.CHACHA20_POLY1305:
        return aead.ChaCha20Poly1305(key).encrypt(struct.pack("<4xQ", counter), plaintext, None)  # type: ignore[no-any-return]
    impl = aead.AESGCM if cipher is Cipher.AES_256_GCM else aead.AESOCB3
    return impl(key).encrypt(struct.pack(">4xQ", counter), plaintext, None)  # type: ignore[no-any-return]


@pytest.mark.parametrize("cipher", ALL, ids=lambda c: c.label)
def test_sealer_matches_an_independent_implementation(cipher: Cipher) -> None:
    sealer, opener = Sealer(KEY, cipher=cipher), Opener(KEY, cipher=cipher)
    for counter, size in enumerate([0, 1, 15, 16, 17, 100, 4096, 65536 + 256]):
        plaintext = bytes(range(256)) * (size // 256) + bytes(size % 256)
        sealed = sealer.seal(plaintext)
        assert sealed == _reference(cipher, KEY, counter, plaintext), size
        assert opener.open(sealed) == plaintext


@pytest.mark.parametrize("cipher", ALL, ids=lambda c: c.label)
def test_a_prefix_goes_in_front_of_the_sealed_frame_unchanged(cipher: Cipher) -> None:
    plain, prefixed = Sealer(KEY, cipher=cipher), Sealer(KEY, cipher=cipher)
    for size in (0, 100, 65536 + 256):
        plaintext = bytes(size)
        assert prefixed.seal(plaintext, prefix=b"HEAD") == b"HEAD" + plain.seal(plaintext)
    assert prefixed.nonce == plain.nonce == 3


@pytest.mark.parametrize("cipher", AES, ids=lambda c: c.label)
def test_aes_rekey_is_noise_rekey_with_the_cipher_itself(cipher: Cipher) -> None:
    # Noise §4.2: REKEY(k) = ENCRYPT(k, 2^64-1, "", zeros(32))[:32], with this cipher's nonce layout.
    sealer = Sealer(KEY, cipher=cipher, rekey_interval=2)
    sealer.seal(b"a")
    sealer.seal(b"b")
    next_key = _reference(cipher, KEY, MAX_NONCE, bytes(32))[:32]
    assert sealer.seal(b"c") == _reference(cipher, next_key, 2, b"c")


def test_gcm_is_the_noise_aesgcm_cipher() -> None:
    # The noiseprotocol package's AESGCM cipher functions (Noise §12.4), REKEY included.
    ciphers = pytest.importorskip("noise.backends.default.ciphers")
    noise_aesgcm = ciphers.AESGCMCipher()
    noise_aesgcm.initialize(KEY)
    sealer = Sealer(KEY, cipher=Cipher.AES_256_GCM, rekey_interval=3)
    for n in range(3):
        assert sealer.seal(b"frame %d" % n) == noise_aesgcm.encrypt(KEY, n, b"", b"frame %d" % n)
    noise_aesgcm.initialize(noise_aesgcm.rekey(KEY))
    assert sealer.seal(b"after rekey") == noise_aesgcm.encrypt(None, 3, b"", b"after rekey")


@pytest.mark.parametrize("cipher", ALL, ids=lambda c: c.label)
def test_tampered_replayed_and_foreign_frames_poison_the_opener(cipher: Cipher) -> None:
    sealer = Sealer(KEY, cipher=cipher)
    first, second = sealer.seal(b"one"), sealer.seal(b"two")
    opener = Opener(KEY, cipher=cipher)
    assert opener.open(first) == b"one"
    with pytest.raises(DecryptError):
        opener.open(first)  # replayed
    with pytest.raises(DecryptError, match="poisoned"):
        opener.open(second)
    other = next(c for c in ALL if c is not cipher)
    with pytest.raises(DecryptError):
        Opener(KEY, cipher=other).open(Sealer(KEY, cipher=cipher).seal(b"x"))  # another cipher's frame
    tampered = bytearray(Sealer(KEY, cipher=cipher).seal(b"attack at dawn"))
    tampered[0] ^= 1
    with pytest.raises(DecryptError):
        Opener(KEY, cipher=cipher).open(bytes(tampered))


@settings(max_examples=50, deadline=None)
@given(cipher=st.sampled_from(ALL), plaintexts=st.lists(st.binary(max_size=200), max_size=6),
       interval=st.integers(1, 4))
def test_round_trip_across_rekeys(cipher: Cipher, plaintexts: list[bytes], interval: int) -> None:
    sealer = Sealer(KEY, cipher=cipher, rekey_interval=interval)
    opener = Opener(KEY, cipher=cipher, rekey_interval=interval)
    for plaintext in plaintexts:
        assert opener.open(memoryview(sealer.seal(plaintext))) == plaintext


def test_cipher_ids_names_and_rekey_intervals() -> None:
    assert [(int(c), c.label) for c in Cipher] == [
        (1, "chacha20-poly1305"), (2, "aes-256-gcm"), (3, "aes-256-ocb")]
    assert Cipher.CHACHA20_POLY1305.rekey_interval == REKEY_INTERVAL == 2**32
    assert Cipher.AES_256_GCM.rekey_interval == Cipher.AES_256_OCB.rekey_interval == AES_REKEY_INTERVAL == 2**22
    assert "aes-256-ocb" in repr(Sealer(KEY, cipher=Cipher.AES_256_OCB)) and KEY.hex() not in repr(Opener(KEY))


def test_cipher_must_be_a_cipher() -> None:
    with pytest.raises(TypeError, match="Cipher"):
        Sealer(KEY, cipher=2)  # type: ignore[arg-type]


# -- ranking ------------------------------------------------------------------------------

def test_available_ciphers_follow_the_hardware() -> None:
    ocb, gcm = aes.hardware_support()
    found = ranking.available_ciphers()
    assert found[0] is Cipher.CHACHA20_POLY1305
    assert (Cipher.AES_256_OCB in found, Cipher.AES_256_GCM in found) == (ocb, gcm)


def scripted_clock(durations: list[float]) -> Callable[[], float]:
    """A clock whose successive (start, stop) pairs of readings lie ``durations`` seconds apart."""
    readings: list[float] = []
    now = 0.0
    for duration in durations:
        readings += [now, now + duration]
        now += duration + 1.0
    return iter(readings).__next__


def seal_times(costs: dict[Cipher, tuple[float, float]], noise: float = 0.0) -> list[float]:
    """What ``measure`` times, in its order: per round, per cipher, a bulk seal then the small ones.

    ``noise`` is added to every timing of the first round (another process took the core).
    """
    durations = []
    for round_ in range(ranking.ROUNDS):
        for cipher in costs:
            bulk, small = costs[cipher]
            extra = noise if round_ == 0 else 0.0
            durations += [bulk + extra] + [small + extra] * ranking.SMALL_REPEAT
    return durations


COSTS = {  # seconds per 64 KiB and per 100 B seal, as measured on an AES-NI machine
    Cipher.CHACHA20_POLY1305: (120e-6, 12e-6),
    Cipher.AES_256_GCM: (75e-6, 40e-6),
    Cipher.AES_256_OCB: (34e-6, 11e-6),
}


def test_measure_ranks_by_the_clock_it_is_given() -> None:
    costs = ranking.measure(scripted_clock(seal_times(COSTS, noise=1e-3)), list(COSTS))
    assert [cost.cipher for cost in costs] == [Cipher.AES_256_OCB, Cipher.AES_256_GCM, Cipher.CHACHA20_POLY1305]
    # The best of the rounds: the noisy first round is ignored.
    assert [(round(c.bulk_us), round(c.small_us), round(c.score)) for c in costs] == [
        (34, 11, 45), (75, 40, 115), (120, 12, 132)]


def test_measure_sorts_on_bulk_plus_small() -> None:
    # GCM seals 64 KiB faster than ChaCha but a small frame slower: the sum decides.
    costs = {Cipher.CHACHA20_POLY1305: (100e-6, 10e-6), Cipher.AES_256_GCM: (80e-6, 40e-6)}
    found = ranking.measure(scripted_clock(seal_times(costs)), list(costs))
    assert [cost.cipher for cost in found] == [Cipher.CHACHA20_POLY1305, Cipher.AES_256_GCM]


def test_measure_preference_measures_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ranking, "_measured", ())  # this process's real measurement comes back afterwards
    here = ranking.available_ciphers()
    first = ranking.measure_preference(scripted_clock(seal_times({c: COSTS[c] for c in here})))

    def no_clock() -> float:
        raise AssertionError("measured twice")

    assert ranking.measure_preference(no_clock) == first == ranking.measured_costs()
    assert ranking.preferred_ciphers() == tuple(cost.cipher for cost in first)


def test_before_measuring_chacha_leads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ranking, "_measured", ())
    assert ranking.preferred_ciphers() == ranking.available_ciphers()
    assert ranking.preferred_ciphers()[0] is Cipher.CHACHA20_POLY1305


@needs_hardware_aes
def test_force_preference_overrides_and_can_be_undone() -> None:
    ranking.force_preference([Cipher.AES_256_GCM, Cipher.CHACHA20_POLY1305])
    assert ranking.preferred_ciphers() == (Cipher.AES_256_GCM, Cipher.CHACHA20_POLY1305)
    ranking.force_preference(None)
    assert ranking.preferred_ciphers() != (Cipher.AES_256_GCM, Cipher.CHACHA20_POLY1305)


@pytest.mark.parametrize(("order", "error", "match"), [
    ([Cipher.AES_256_OCB], ValueError, "must include chacha20-poly1305"),
    ([Cipher.CHACHA20_POLY1305, Cipher.CHACHA20_POLY1305], ValueError, "once"),
    ([1], TypeError, "Cipher members"),
    ([], ValueError, "must include"),
])
def test_check_preference_refuses_bad_orders(order: list[Cipher], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ranking.check_preference(order)
