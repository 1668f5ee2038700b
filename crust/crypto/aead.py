"""Authenticated encryption for established channels: ``Sealer`` and ``Opener``.

A channel runs one of three AEADs, the :class:`Cipher` its two ends agreed on
in the handshake (crust.handshake.negotiate):

* ``CHACHA20_POLY1305``: the Noise ``ChaChaPoly`` cipher (Noise spec rev 34,
  §12.3), RFC 8439 with a 96-bit nonce of 32 zero bits followed by the 64-bit
  *little-endian* message counter.  Always supported; the handshake uses it too.
* ``AES_256_GCM``: the Noise ``AESGCM`` cipher (§12.4): 32 zero bits, then the
  counter *big-endian*.
* ``AES_256_OCB``: RFC 7253 with a 128-bit tag and the same nonce as AESGCM.

One ``Sealer`` encrypts one direction of a connection and the peer's
``Opener`` decrypts it; both count messages, so the nonce is never sent and a
replayed, dropped or reordered frame simply fails authentication.

Both sides apply Noise ``REKEY()`` (§4.2, with the channel's own cipher) after
every ``rekey_interval`` messages: 2**32 for ChaCha20-Poly1305, 2**22 for the
AES modes, whose 128-bit block makes the data one key may protect finite
(docs/security.md).  As in Noise, rekeying replaces the key but does not
reset the counter, so ``(key, nonce)`` pairs can never repeat.

The module functions :func:`encrypt` and :func:`decrypt` are Noise's
``ENCRYPT(k, n, ad, plaintext)`` and ``DECRYPT(k, n, ad, ciphertext)``; the
handshake (``kex``) uses them for its CipherState.
"""

from __future__ import annotations

import enum
import hmac
import struct
from typing import Callable, NamedTuple, Union

from Crypto.Cipher import ChaCha20
from Crypto.Hash.Poly1305 import Poly1305_MAC

from crust.crypto import aes
from crust.errors import DecryptError, LocalProtocolError
from crust.ids import check_bytes

__all__ = [
    "KEY_SIZE",
    "TAG_SIZE",
    "MAX_NONCE",
    "REKEY_INTERVAL",
    "AES_REKEY_INTERVAL",
    "Cipher",
    "Sealer",
    "Opener",
    "encrypt",
    "decrypt",
    "rekey",
]

BytesLike = Union[bytes, bytearray, memoryview]

KEY_SIZE = 32  # bytes: a ChaCha20 or AES-256 key
TAG_SIZE = 16  # bytes: a Poly1305, GCM or OCB tag, appended to every ciphertext
MAX_NONCE = 2**64 - 1  # Noise §5.1: reserved for REKEY, never used for a message
REKEY_INTERVAL = 2**32  # messages; PROTOCOL.md §3 "in practice after 2^32 frames"
# AES modes: at most 2**22 frames of <= 4113 blocks = 2**34 blocks per key, the
# amount TLS 1.3 allows one AES-GCM key (RFC 8446 §5.5); see docs/security.md.
AES_REKEY_INTERVAL = 2**22  # messages

# Noise §12.3: 4 zero bytes, then the counter as a 64-bit little-endian integer.
# A precompiled Struct is the cheapest way to build it on the hot path.
_NONCE = struct.Struct("<4xQ")
_pack_nonce = _NONCE.pack
_pack_nonce_be = struct.Struct(">4xQ").pack  # Noise §12.4 (AESGCM): the counter big-endian
_REKEY_NONCE = _pack_nonce(MAX_NONCE)
_ZEROS = bytes(KEY_SIZE)
_new_chacha = ChaCha20.new
_BLOCK0 = bytes(64)  # RFC 8439 §2.6: block 0 makes the one-time Poly1305 key; the text starts at block 1
_PADDING = bytes(15)
_LENGTHS = struct.Struct("<QQ")  # RFC 8439 §2.8: len(ad) || len(ciphertext), 64-bit little-endian each
_same_tag = hmac.compare_digest  # constant time, in C


def _tag(one_time_key: bytes, ad: BytesLike, ciphertext: BytesLike) -> bytes:
    """The RFC 8439 §2.8 Poly1305 tag: ad, padding, ciphertext, padding, both lengths."""
    mac = Poly1305_MAC(one_time_key[:16], one_time_key[16:32], None)
    if ad:
        mac.update(ad)
        mac.update(_PADDING[:-len(ad) % 16])
    mac.update(ciphertext)
    mac.update(_PADDING[:-len(ciphertext) % 16] + _LENGTHS.pack(len(ad), len(ciphertext)))
    return mac.digest()


def _check_interval(rekey_interval: object) -> int:
    if isinstance(rekey_interval, bool) or not isinstance(rekey_interval, int):
        raise TypeError(f"rekey_interval must be an int, not {type(rekey_interval).__name__}")
    if rekey_interval < 1:
        raise ValueError(f"rekey_interval must be at least 1, got {rekey_interval}")
    return rekey_interval


# RFC 8439 §2.8 is assembled here from pycryptodome's ChaCha20 and Poly1305
# rather than taken from its ChaCha20_Poly1305 object: same bytes (the RFC
# vectors in tests/test_aead.py check it), but 2-3x less Python per call,
# which is most of a small message's cost (docs/performance.md).
def _seal(key: bytes, nonce: bytes, ad: BytesLike, plaintext: BytesLike) -> bytes:
    """ChaCha20-Poly1305 (RFC 8439 §2.8) with a raw 12-byte nonce: ciphertext || tag."""
    cipher = _new_chacha(key=key, nonce=nonce)
    one_time_key = cipher.encrypt(_BLOCK0)
    ciphertext = cipher.encrypt(plaintext)
    return ciphertext + _tag(one_time_key, ad, ciphertext)


def _open(key: bytes, nonce: bytes, ad: BytesLike, data: BytesLike) -> bytes:
    """Inverse of :func:`_seal`.  Raises ValueError on a short input or a bad tag."""
    view = memoryview(data)  # slicing a memoryview does not copy a 64 KiB frame
    if len(view) < TAG_SIZE:
        raise ValueError("ciphertext shorter than the tag")
    cipher = _new_chacha(key=key, nonce=nonce)
    ciphertext = view[:-TAG_SIZE]
    # decrypt(), not encrypt(), for block 0 too: a pycryptodome cipher object keeps to one direction.
    if not _same_tag(_tag(cipher.decrypt(_BLOCK0), ad, ciphertext), view[-TAG_SIZE:]):
        raise ValueError("MAC check failed")
    return cipher.decrypt(ciphertext)


def _check_n(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"a nonce must be an int, not {type(n).__name__}")
    if not 0 <= n <= MAX_NONCE:
        raise ValueError(f"a nonce must be in 0..2**64-1, got {n}")
    return n


def encrypt(key: bytes, n: int, ad: BytesLike, plaintext: BytesLike) -> bytes:
    """Noise ``ENCRYPT(k, n, ad, plaintext)`` for ChaChaPoly.

    Args:
        key: 32-byte key.
        n: the nonce counter, 0..2**64-1 (2**64-1 is meant for :func:`rekey` only).
        ad: associated data, authenticated but not encrypted.
        plaintext: the data to encrypt.

    Returns:
        ``ciphertext || tag`` (``len(plaintext) + 16`` bytes).

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: the key is not 32 bytes or ``n`` is out of range.
    """
    return _seal(check_bytes("an AEAD key", key, KEY_SIZE), _pack_nonce(_check_n(n)), ad, plaintext)


def decrypt(key: bytes, n: int, ad: BytesLike, ciphertext: BytesLike) -> bytes:
    """Noise ``DECRYPT(k, n, ad, ciphertext)`` for ChaChaPoly.

    Args:
        key: 32-byte key.
        n: the nonce counter the sender used.
        ad: the associated data the sender used.
        ciphertext: ``ciphertext || tag``.

    Returns:
        The plaintext.

    Raises:
        DecryptError: the input is shorter than a tag or does not authenticate.
        TypeError: an argument has the wrong type.
        ValueError: the key is not 32 bytes or ``n`` is out of range.
    """
    key = check_bytes("an AEAD key", key, KEY_SIZE)
    nonce = _pack_nonce(_check_n(n))
    try:
        return _open(key, nonce, ad, ciphertext)
    except ValueError:
        raise DecryptError("AEAD authentication failed") from None


def rekey(key: bytes) -> bytes:
    """Noise ``REKEY(k)`` (§4.2): the first 32 bytes of ``ENCRYPT(k, 2**64-1, b"", zeros)``.

    Args:
        key: the current 32-byte key.

    Returns:
        The next 32-byte key.
    """
    return _seal(check_bytes("an AEAD key", key, KEY_SIZE), _REKEY_NONCE, b"", _ZEROS)[:KEY_SIZE]


# -- the negotiable transport ciphers -----------------------------------------------


class Cipher(enum.IntEnum):
    """A transport AEAD two peers can agree on; the value is its wire id (docs/protocol.md §3.3)."""

    CHACHA20_POLY1305 = 1
    AES_256_GCM = 2
    AES_256_OCB = 3

    @property
    def label(self) -> str:
        """The cipher's name in logs and docs, e.g. ``"aes-256-ocb"``."""
        return self.name.lower().replace("_", "-")

    @property
    def rekey_interval(self) -> int:
        """Messages per key in a channel running this cipher (the module docstring says why)."""
        return _SUITES[self].rekey_interval


_Primitive = aes.Primitive


class _Suite(NamedTuple):
    seal: _Primitive  # (key, 12-byte nonce, ad, plaintext) -> ciphertext || tag
    context: Callable[[bytes], aes.Context]  # one key's seal/open, what a channel runs per frame
    pack_nonce: Callable[[int], bytes]  # the message counter as the cipher's 12-byte nonce
    rekey_interval: int


def _chacha_context(key: bytes) -> aes.Context:
    return aes.keyed(key, _seal, _open)


def _gcm_context(key: bytes) -> aes.Context:
    return aes.keyed(key, aes.gcm_seal, aes.gcm_open)


_SUITES: dict[Cipher, _Suite] = {
    Cipher.CHACHA20_POLY1305: _Suite(_seal, _chacha_context, _pack_nonce, REKEY_INTERVAL),
    Cipher.AES_256_GCM: _Suite(aes.gcm_seal, _gcm_context, _pack_nonce_be, AES_REKEY_INTERVAL),
    Cipher.AES_256_OCB: _Suite(aes.ocb_seal, aes.ocb_context, _pack_nonce_be, AES_REKEY_INTERVAL),
}


def _suite(cipher: object) -> _Suite:
    if not isinstance(cipher, Cipher):
        raise TypeError(f"cipher must be a crust.crypto.aead.Cipher, not {type(cipher).__name__}")
    return _SUITES[cipher]


def _rekey(suite: _Suite, key: bytes) -> bytes:
    """Noise ``REKEY(k)`` with ``suite``'s own ENCRYPT (§4.2)."""
    return suite.seal(key, suite.pack_nonce(MAX_NONCE), b"", _ZEROS)[:KEY_SIZE]


_Run = Callable[..., bytes]  # (nonce, ad, data[, prefix]) -> bytes: one key's seal or open


def _seal_of(context: aes.Context) -> _Run:
    return context.seal


def _open_of(context: aes.Context) -> _Run:
    return context.open


class _Direction:
    """What a Sealer and an Opener share: the cipher, the key, the counter and the rekey countdown."""

    __slots__ = ("_cipher", "_suite", "_run", "_pick", "_pack", "_key", "_n", "_interval", "_until_rekey")

    def __init__(self, key: bytes, cipher: Cipher, rekey_interval: int | None,
                 pick: Callable[[aes.Context], _Run]) -> None:
        self._cipher = cipher
        self._suite = _suite(cipher)
        self._key = check_bytes("an AEAD key", key, KEY_SIZE)
        self._interval = _check_interval(self._suite.rekey_interval if rekey_interval is None else rekey_interval)
        # The key's context's seal or open, bound once per key: the hot path does one lookup.
        self._pick = pick
        self._run = pick(self._suite.context(self._key))
        self._pack = self._suite.pack_nonce
        self._n = 0
        # A countdown rather than ``n % interval``: one compare per message, and
        # it stays right however ``n`` started.
        self._until_rekey = self._interval

    @property
    def cipher(self) -> Cipher:
        """The AEAD this direction runs."""
        return self._cipher

    @property
    def nonce(self) -> int:
        """The counter the next message will use (= messages processed so far)."""
        return self._n

    def _count(self, n: int) -> None:
        self._n = n + 1
        self._until_rekey -= 1
        if not self._until_rekey:
            self._key = _rekey(self._suite, self._key)
            self._run = self._pick(self._suite.context(self._key))
            self._until_rekey = self._interval


class Sealer(_Direction):
    """Encrypts one direction of a channel: a Noise CipherState used only for sending.

    Each call to :meth:`seal` uses the next nonce; after ``rekey_interval``
    messages the key is replaced by ``REKEY(key)`` and counting goes on.

    Args:
        key: the 32-byte sending key (from the handshake's ``Split()``).
        cipher: the AEAD; the peer's :class:`Opener` must use the same one.
        rekey_interval: messages per key, by default the cipher's
            (:attr:`Cipher.rekey_interval`); the peer's Opener must use the same value.

    Raises:
        TypeError: ``key`` is not bytes, ``cipher`` not a :class:`Cipher`, or
            ``rekey_interval`` not an int.
        ValueError: ``key`` is not 32 bytes or ``rekey_interval`` is below 1.
    """

    TAG_SIZE = TAG_SIZE
    overhead: int = TAG_SIZE  # bytes a sealed message is longer than its plaintext

    __slots__ = ()

    def __init__(self, key: bytes, *, cipher: Cipher = Cipher.CHACHA20_POLY1305,
                 rekey_interval: int | None = None) -> None:
        super().__init__(key, cipher, rekey_interval, _seal_of)

    def seal(self, plaintext: BytesLike, ad: bytes = b"", prefix: bytes = b"") -> bytes:
        """Encrypt and authenticate one message.

        Args:
            plaintext: the message.
            ad: associated data the receiver must pass to :meth:`Opener.open` too.
            prefix: bytes to put in front of the result, neither encrypted nor
                authenticated (a frame header): one bytes object, and with
                AES-OCB no copy of the ciphertext to make it.

        Returns:
            ``prefix || ciphertext || 16-byte tag``.

        Raises:
            LocalProtocolError: the nonce counter is exhausted (2**64-1 messages);
                the Sealer is unusable and the connection must be replaced.
        """
        n = self._n
        if n >= MAX_NONCE:
            raise LocalProtocolError("Sealer nonce exhausted: the channel must be replaced")
        sealed = self._run(self._pack(n), ad, plaintext, prefix)
        self._count(n)
        return sealed

    def __repr__(self) -> str:
        return f"<Sealer {self._cipher.label} nonce={self._n}>"  # never show the key


class Opener(_Direction):
    """Decrypts one direction of a channel: a Noise CipherState used only for receiving.

    Messages must arrive exactly once and in order.  The first failure poisons
    the Opener: that call and every later one raise :class:`DecryptError`,
    because after a forgery or a gap the stream cannot be trusted again.

    Args:
        key: the 32-byte receiving key (from the handshake's ``Split()``).
        cipher: the AEAD; must match the peer's :class:`Sealer`.
        rekey_interval: messages per key (default: the cipher's); must match the peer's Sealer.

    Raises:
        TypeError: ``key`` is not bytes, ``cipher`` not a :class:`Cipher`, or
            ``rekey_interval`` not an int.
        ValueError: ``key`` is not 32 bytes or ``rekey_interval`` is below 1.
    """

    TAG_SIZE = TAG_SIZE
    overhead: int = TAG_SIZE

    __slots__ = ("_poisoned",)

    def __init__(self, key: bytes, *, cipher: Cipher = Cipher.CHACHA20_POLY1305,
                 rekey_interval: int | None = None) -> None:
        super().__init__(key, cipher, rekey_interval, _open_of)
        self._poisoned = False

    @property
    def poisoned(self) -> bool:
        """True once a call to :meth:`open` has failed; the Opener is then unusable."""
        return self._poisoned

    def open(self, ciphertext: BytesLike, ad: bytes = b"") -> bytes:
        """Authenticate and decrypt the next message.

        Args:
            ciphertext: ``ciphertext || tag`` as produced by :meth:`Sealer.seal`.
            ad: the associated data the sender used.

        Returns:
            The plaintext.

        Raises:
            DecryptError: the message is too short, forged, replayed, reordered,
                from another key, or the counter is exhausted; also on every
                call after any earlier failure.
        """
        if self._poisoned:
            raise DecryptError("Opener is poisoned by an earlier failure")
        n = self._n
        if n >= MAX_NONCE:
            self._poisoned = True
            raise DecryptError("Opener nonce exhausted")
        try:
            plaintext = self._run(self._pack(n), ad, ciphertext)
        except ValueError:
            # Noise lets a CipherState retry after a failed DECRYPT; a stream
            # channel must not, or an attacker could probe it repeatedly.
            self._poisoned = True
            raise DecryptError(f"frame {n} failed authentication") from None
        self._count(n)
        return plaintext

    def __repr__(self) -> str:
        state = " poisoned" if self._poisoned else ""
        return f"<Opener {self._cipher.label} nonce={self._n}{state}>"
