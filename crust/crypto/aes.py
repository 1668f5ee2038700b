"""AES-256-GCM and AES-256-OCB as raw AEAD functions, and whether this CPU should use them.

Each function has the signature of :mod:`crust.crypto.aead`'s ChaCha20-Poly1305
primitives, ``(key, nonce, ad, data)`` with a 12-byte nonce and a 16-byte tag
appended to the ciphertext, so :class:`~crust.crypto.aead.Sealer` and
:class:`~crust.crypto.aead.Opener` can run any of them.  Both modes come from
pycryptodome's documented API (``AES.new(key, MODE_GCM | MODE_OCB, nonce=...)``):

* AES-256-GCM: NIST SP 800-38D, a 96-bit IV, a 128-bit tag;
* AES-256-OCB: RFC 7253 (OCB3), a 96-bit nonce, a 128-bit tag.

Why only with hardware AES (docs/security.md, "Transport ciphers"):
pycryptodome's software AES and its portable GHASH are table-driven, so their
memory accesses depend on the key; only the AES-NI and PCLMULQDQ code paths are
constant-time.  :func:`hardware_support` says which modes may be offered here.
"""

from __future__ import annotations

from typing import Union

from Crypto.Cipher import AES
from Crypto.Util import _cpu_features

__all__ = ["TAG_SIZE", "gcm_seal", "gcm_open", "ocb_seal", "ocb_open", "hardware_support"]

BytesLike = Union[bytes, bytearray, memoryview]

TAG_SIZE = 16  # bytes: both modes at their full 128-bit tag
_new_aes = AES.new
_GCM = AES.MODE_GCM
_OCB = AES.MODE_OCB


def _split(data: BytesLike) -> tuple[memoryview, memoryview]:
    """``(ciphertext, tag)`` views of ``ciphertext ‖ tag``; a memoryview does not copy 64 KiB."""
    view = memoryview(data)
    if len(view) < TAG_SIZE:
        raise ValueError("ciphertext shorter than the tag")
    return view[:-TAG_SIZE], view[-TAG_SIZE:]


def gcm_seal(key: bytes, nonce: bytes, ad: BytesLike, plaintext: BytesLike) -> bytes:
    """AES-256-GCM encryption: ``ciphertext ‖ tag``.  ``key`` is 32 bytes, ``nonce`` 12."""
    cipher = _new_aes(key, _GCM, nonce=nonce)
    if ad:
        cipher.update(ad)
    ciphertext, tag = cipher.encrypt_and_digest(plaintext)
    return ciphertext + tag


def gcm_open(key: bytes, nonce: bytes, ad: BytesLike, data: BytesLike) -> bytes:
    """Inverse of :func:`gcm_seal`.  Raises ValueError on a short input or a bad tag."""
    ciphertext, tag = _split(data)
    cipher = _new_aes(key, _GCM, nonce=nonce)
    if ad:
        cipher.update(ad)
    # decrypt_and_verify checks the tag before it hands back any plaintext.
    return cipher.decrypt_and_verify(ciphertext, tag)


def ocb_seal(key: bytes, nonce: bytes, ad: BytesLike, plaintext: BytesLike) -> bytes:
    """AES-256-OCB (RFC 7253, TAGLEN 128) encryption: ``ciphertext ‖ tag``."""
    cipher = _new_aes(key, _OCB, nonce=nonce)
    if ad:
        cipher.update(ad)
    ciphertext, tag = cipher.encrypt_and_digest(plaintext)
    return ciphertext + tag


def ocb_open(key: bytes, nonce: bytes, ad: BytesLike, data: BytesLike) -> bytes:
    """Inverse of :func:`ocb_seal`.  Raises ValueError on a short input or a bad tag."""
    ciphertext, tag = _split(data)
    cipher = _new_aes(key, _OCB, nonce=nonce)
    if ad:
        cipher.update(ad)
    return cipher.decrypt_and_verify(ciphertext, tag)


def hardware_support() -> tuple[bool, bool]:
    """``(ocb, gcm)``: may this CPU run each mode in constant time through pycryptodome?

    OCB needs AES-NI; GCM needs AES-NI and carry-less multiply (PCLMULQDQ) for
    GHASH.  pycryptodome detects both once, when it is loaded.
    """
    aes_ni = bool(_cpu_features.have_aes_ni())
    return aes_ni, aes_ni and bool(_cpu_features.have_clmul())
