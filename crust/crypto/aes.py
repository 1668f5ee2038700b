"""AES-256-GCM and AES-256-OCB as raw AEAD functions and per-key contexts, and whether this CPU should use them.

Each function has the signature of :mod:`crust.crypto.aead`'s ChaCha20-Poly1305
primitives, ``(key, nonce, ad, data)`` with a 12-byte nonce and a 16-byte tag
appended to the ciphertext.  Both modes come from pycryptodome's documented
API (``AES.new(key, MODE_GCM | MODE_OCB, nonce=...)``):

* AES-256-GCM: NIST SP 800-38D, a 96-bit IV, a 128-bit tag;
* AES-256-OCB: RFC 7253 (OCB3), a 96-bit nonce, a 128-bit tag.

A channel seals every frame under one key, so :class:`~crust.crypto.aead.Sealer`
and :class:`~crust.crypto.aead.Opener` hold a :class:`Context` per key
instead: :func:`keyed` binds a key to a pair of these functions, and
:func:`ocb_context` gives OCB's direct path (:mod:`crust.crypto.ocb`, three
to five times cheaper for a small frame) once it has checked, at import, that the
direct path gives these functions' bytes and refuses what they refuse.

Why only with hardware AES (docs/security.md, "Transport ciphers"):
pycryptodome's software AES and its portable GHASH are table-driven, so their
memory accesses depend on the key; only the AES-NI and PCLMULQDQ code paths are
constant-time.  :func:`hardware_support` says which modes may be offered here.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Protocol, Union

from Crypto.Cipher import AES
from Crypto.Util import _cpu_features

from crust.crypto import ocb

__all__ = [
    "TAG_SIZE", "FAST_OCB", "Context", "gcm_seal", "gcm_open", "ocb_seal", "ocb_open", "ocb_context", "keyed",
    "hardware_support",
]

BytesLike = Union[bytes, bytearray, memoryview]
Primitive = Callable[[bytes, bytes, BytesLike, BytesLike], bytes]  # (key, nonce, ad, data) -> bytes

TAG_SIZE = 16  # bytes: both modes at their full 128-bit tag


class _Mode(Protocol):
    """What GCM and OCB cipher objects share (pycryptodome's GcmMode / OcbMode)."""

    def update(self, assoc_data: BytesLike, /) -> object: ...

    def encrypt_and_digest(self, plaintext: BytesLike, /) -> tuple[bytes, bytes]: ...

    def decrypt_and_verify(self, ciphertext: BytesLike, received_mac_tag: BytesLike, /) -> bytes: ...


class Context(Protocol):
    """One key's AEAD, a message at a time (the nonce changes, the key does not)."""

    def seal(self, nonce: bytes, ad: BytesLike, plaintext: BytesLike, prefix: bytes = b"", /) -> bytes:
        """``prefix ‖ ciphertext ‖ tag`` (a prefix such as a frame header costs no extra copy where it can)."""

    def open(self, nonce: bytes, ad: BytesLike, data: BytesLike, /) -> bytes:
        """The plaintext of ``ciphertext ‖ tag``; ValueError if it is too short or forged."""


def _new_gcm(key: bytes, nonce: bytes) -> _Mode:
    return AES.new(key, AES.MODE_GCM, nonce=nonce)  # 128-bit tag by default


def _new_ocb(key: bytes, nonce: bytes) -> _Mode:
    return AES.new(key, AES.MODE_OCB, nonce=nonce)  # 128-bit tag by default


def _split(data: BytesLike) -> tuple[memoryview, memoryview]:
    """``(ciphertext, tag)`` views of ``ciphertext ‖ tag``; a memoryview does not copy 64 KiB."""
    view = memoryview(data)
    if len(view) < TAG_SIZE:
        raise ValueError("ciphertext shorter than the tag")
    return view[:-TAG_SIZE], view[-TAG_SIZE:]


def _make_seal(new: Callable[[bytes, bytes], _Mode], name: str) -> Primitive:
    def seal(key: bytes, nonce: bytes, ad: BytesLike, plaintext: BytesLike) -> bytes:
        cipher = new(key, nonce)
        if ad:
            cipher.update(ad)
        ciphertext, tag = cipher.encrypt_and_digest(plaintext)
        return ciphertext + tag

    seal.__doc__ = f"{name} encryption: ``ciphertext ‖ tag``.  ``key`` is 32 bytes, ``nonce`` 12."
    return seal


def _make_open(new: Callable[[bytes, bytes], _Mode], name: str) -> Primitive:
    def open_(key: bytes, nonce: bytes, ad: BytesLike, data: BytesLike) -> bytes:
        ciphertext, tag = _split(data)
        cipher = new(key, nonce)
        if ad:
            cipher.update(ad)
        # decrypt_and_verify checks the tag before it hands back any plaintext.
        return cipher.decrypt_and_verify(ciphertext, tag)

    open_.__doc__ = f"{name} decryption of ``ciphertext ‖ tag``.  Raises ValueError on a short input or a bad tag."
    return open_


gcm_seal = _make_seal(_new_gcm, "AES-256-GCM")
gcm_open = _make_open(_new_gcm, "AES-256-GCM")
ocb_seal = _make_seal(_new_ocb, "AES-256-OCB (RFC 7253, TAGLEN 128)")
ocb_open = _make_open(_new_ocb, "AES-256-OCB (RFC 7253, TAGLEN 128)")


class _Keyed:
    """A key bound to a pair of primitives (see :func:`keyed`)."""

    __slots__ = ("_key", "_seal", "open")

    def __init__(self, key: bytes, seal: Primitive, open_: Primitive) -> None:
        self._key = key
        self._seal = seal
        self.open = partial(open_, key)  # bound in C: the receive path gains a call level on nothing

    def seal(self, nonce: bytes, ad: BytesLike, plaintext: BytesLike, prefix: bytes = b"", /) -> bytes:
        sealed = self._seal(self._key, nonce, ad, plaintext)
        return prefix + sealed if prefix else sealed


def keyed(key: bytes, seal: Primitive, open_: Primitive) -> Context:
    """A :class:`Context` that runs ``seal``/``open_`` with ``key``.

    Args:
        key: the key every message uses.
        seal: ``(key, nonce, ad, plaintext) -> ciphertext ‖ tag``.
        open_: ``(key, nonce, ad, ciphertext ‖ tag) -> plaintext``, ValueError if forged.

    Returns:
        The context.
    """
    return _Keyed(key, seal, open_)


def _agrees(make: Callable[[bytes], Context]) -> bool:
    """Whether contexts from ``make`` give :func:`ocb_seal`'s bytes and refuse what :func:`ocb_open` refuses."""
    key = bytes(range(32))
    try:
        for size in (0, 1, 15, 16, 17, 100, 4100):
            for ad in (b"", b"ad", bytes(33)):
                nonce = size.to_bytes(4, "big") + len(ad).to_bytes(8, "big")
                text = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
                expected = ocb_seal(key, nonce, ad, text)
                ctx = make(key)
                if ctx.seal(nonce, ad, text) != expected or ctx.open(nonce, ad, memoryview(expected)) != text:
                    return False
                forged = bytearray(expected)
                forged[size // 2] ^= 1
                try:
                    ctx.open(nonce, ad, forged)
                except ValueError:
                    continue
                return False
    except (ValueError, TypeError, RuntimeError):
        return False
    return True


FAST_OCB = ocb.AVAILABLE and _agrees(ocb.OcbKey)
"""Whether :func:`ocb_context` takes pycryptodome's OCB core directly (else ``AES.new`` per message)."""


def ocb_context(key: bytes) -> Context:
    """AES-256-OCB (TAGLEN 128) under ``key``: the direct path when :data:`FAST_OCB`, the same bytes otherwise.

    Args:
        key: the 32-byte key.

    Returns:
        A :class:`Context`.
    """
    return ocb.OcbKey(key) if FAST_OCB else keyed(key, ocb_seal, ocb_open)


def hardware_support() -> tuple[bool, bool]:
    """``(ocb, gcm)``: may this CPU run each mode in constant time through pycryptodome?

    OCB needs AES-NI; GCM needs AES-NI and carry-less multiply (PCLMULQDQ) for
    GHASH.  pycryptodome detects both once, when it is loaded.
    """
    aes_ni = bool(_cpu_features.have_aes_ni())
    return aes_ni, aes_ni and bool(_cpu_features.have_clmul())
