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

from typing import Callable, Protocol, Union

from Crypto.Cipher import AES
from Crypto.Util import _cpu_features

__all__ = ["TAG_SIZE", "gcm_seal", "gcm_open", "ocb_seal", "ocb_open", "hardware_support"]

BytesLike = Union[bytes, bytearray, memoryview]
Primitive = Callable[[bytes, bytes, BytesLike, BytesLike], bytes]  # (key, nonce, ad, data) -> bytes

TAG_SIZE = 16  # bytes: both modes at their full 128-bit tag


class _Mode(Protocol):
    """What GCM and OCB cipher objects share (pycryptodome's GcmMode / OcbMode)."""

    def update(self, assoc_data: BytesLike, /) -> object: ...

    def encrypt_and_digest(self, plaintext: BytesLike, /) -> tuple[bytes, bytes]: ...

    def decrypt_and_verify(self, ciphertext: BytesLike, received_mac_tag: BytesLike, /) -> bytes: ...


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


def hardware_support() -> tuple[bool, bool]:
    """``(ocb, gcm)``: may this CPU run each mode in constant time through pycryptodome?

    OCB needs AES-NI; GCM needs AES-NI and carry-less multiply (PCLMULQDQ) for
    GHASH.  pycryptodome detects both once, when it is loaded.
    """
    aes_ni = bool(_cpu_features.have_aes_ni())
    return aes_ni, aes_ni and bool(_cpu_features.have_clmul())
