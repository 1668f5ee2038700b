"""AES-OCB (RFC 7253) with one object per key: pycryptodome's C core, called directly.

Theory of operation
-------------------
A transport frame is sealed with a new nonce but the same key.  Through
pycryptodome's documented API that is ``AES.new(key, AES.MODE_OCB,
nonce=...)`` per frame: 11-17 µs for a 100-byte frame here, of which the five
C calls take 2-3 µs and the rest is Python (argument parsing, a state machine,
half a dozen helper objects; docs/performance.md, "Bulk and small-message path").

:class:`OcbKey` keeps what is fixed per key and makes, per frame, the C calls
that ``AES.new`` + ``encrypt_and_digest`` / ``decrypt_and_verify`` make and
nothing else: the hardware AES key schedule (``AESNI_start_operation``), the
OCB state for the nonce (``OCB_start_operation``), the associated data, the
whole text in one call, the tag, and the state's release.  The key schedule
cannot be kept per key: the OCB state takes the block cipher over and frees
it, and pycryptodome has no call that gives a state a new nonce.  Opening compares the tag in constant time
before it returns any plaintext, as ``decrypt_and_verify`` does.

Those functions are pycryptodome internals (``Crypto.Cipher._raw_ocb`` and the
hardware AES module behind ``Crypto.Cipher.AES``), so :data:`AVAILABLE` is
True only if, at import, pycryptodome runs its cffi backend, it loaded AES-NI
(never the table-driven software AES: docs/security.md), and every C function
has the prototype this module was written against.
:func:`crust.crypto.aes.ocb_context` also checks the bytes against the
documented API before it uses this path, and otherwise uses that API.
"""

from __future__ import annotations

import hmac
from typing import Any, Callable, NamedTuple, Union

from Crypto.Cipher import AES

__all__ = ["TAG_SIZE", "AVAILABLE", "OcbKey"]

BytesLike = Union[bytes, bytearray, memoryview]

TAG_SIZE = 16  # bytes: the full 128-bit tag
_NONCE_SIZE = 12  # bytes: crust's nonces (Noise's 96 bits)
_same_tag = hmac.compare_digest  # constant time, in C
_DIRECT_OUTPUT = 64 * 1024  # bytes: from here on pycryptodome can have C code fill a bytes object


# The prototypes (cffi's spelling) this module calls; another pycryptodome
# that declares them differently gets the documented path.
_PROTOTYPES = {
    "OCB_start_operation": "int(*)(void *, uint8_t *, size_t, size_t, void * *)",
    "OCB_update": "int(*)(void *, uint8_t *, size_t)",
    "OCB_encrypt": "int(*)(void *, uint8_t *, uint8_t *, size_t)",
    "OCB_decrypt": "int(*)(void *, uint8_t *, uint8_t *, size_t)",
    "OCB_digest": "int(*)(void *, uint8_t *, size_t)",
    "OCB_stop_operation": "int(*)(void *)",
}
_AES_PROTOTYPES = ("int(*)(uint8_t *, size_t, void * *)", "int(*)(void *)")  # start, stop


class _Lib(NamedTuple):
    new: Callable[..., Any]  # ffi.new
    from_buffer: Callable[..., Any]  # ffi.from_buffer
    buffer: Callable[..., Any]  # ffi.buffer
    memmove: Callable[..., None]  # ffi.memmove
    aes_start: Callable[..., int]
    aes_stop: Callable[..., int]
    start: Callable[..., int]
    update: Callable[..., int]
    encrypt: Callable[..., int]
    decrypt: Callable[..., int]
    digest: Callable[..., int]
    stop: Callable[..., int]
    output: Callable[[int], Any] | None  # _raw_api.create_output_buffer: C code fills a new bytes object
    holder: Any  # the type it returns when it does (else a cffi array, to copy)
    array: Any  # ffi.typeof("uint8_t[]"), parsed once


def _bind() -> _Lib | None:
    """pycryptodome's hardware AES and OCB C functions, if this build has them as expected."""
    try:
        from Crypto.Cipher import _mode_ocb
        from Crypto.Util import _cpu_features, _raw_api

        if _raw_api.backend != "cffi" or not _cpu_features.have_aes_ni():
            return None
        hardware = AES._raw_aes_hw  # (start, stop) of AES-NI; None without it
        if hardware is None:
            return None
        ffi, lib = _raw_api.ffi, _mode_ocb._raw_ocb_lib
        functions = {name: getattr(lib, name) for name in _PROTOTYPES}
        if any(ffi.typeof(fn).cname != _PROTOTYPES[name] for name, fn in functions.items()):
            return None
        aes_start, aes_stop = hardware
        if (ffi.typeof(aes_start).cname, ffi.typeof(aes_stop).cname) != _AES_PROTOTYPES:
            return None
    except (ImportError, AttributeError, TypeError, ValueError):
        return None
    # Optional: pycryptodome's own way to have C code write a long output straight into a
    # new bytes object (CPython only), which saves a 64 KiB copy per frame.
    output, holder = getattr(_raw_api, "create_output_buffer", None), getattr(_raw_api, "_BytesOutput", None)
    if output is None or not isinstance(holder, type):
        output = holder = None
    return _Lib(ffi.new, ffi.from_buffer, ffi.buffer, ffi.memmove, aes_start, aes_stop,
                functions["OCB_start_operation"], functions["OCB_update"], functions["OCB_encrypt"],
                functions["OCB_decrypt"], functions["OCB_digest"], functions["OCB_stop_operation"], output, holder,
                ffi.typeof("uint8_t[]"))


_LIB = _bind()
AVAILABLE = _LIB is not None
"""Whether :class:`OcbKey` may be used here."""


def _pointer(data: BytesLike) -> Any:
    """What a ``uint8_t *`` argument takes: bytes as they are, other buffers through ``from_buffer``."""
    if type(data) is bytes:
        return data
    assert _LIB is not None
    return _LIB.from_buffer(_LIB.array, data)  # holds the buffer (it cannot be resized) while alive


def _output(lib: _Lib, size: int) -> tuple[Any, bytes | None]:
    """Where C code may write ``size`` bytes: ``(pointer, the bytes object it fills)``, or ``(array, None)``.

    With None the caller copies the array out (``lib.buffer(array)[:]``):
    pycryptodome fills a bytes object directly only for long outputs.
    """
    if size >= _DIRECT_OUTPUT and lib.output is not None:
        out: Any = lib.output(size)
        if type(out) is lib.holder:
            return out.ptr, out.obj
        return out, None  # pycryptodome's cffi array after all
    return lib.new(lib.array, size), None


class OcbKey:
    """AES-OCB (TAGLEN 128) under one key, calling pycryptodome's C core directly.

    Only where :data:`AVAILABLE`; use :func:`crust.crypto.aes.ocb_context`,
    which also checks the bytes.  One thread at a time (it keeps a scratch
    pointer, and the tag :meth:`open` computes).

    Args:
        key: 16, 24 or 32 bytes (crust uses 32).

    Raises:
        RuntimeError: the direct path is not available here.
    """

    __slots__ = ("_key", "_slot", "_tag")

    def __init__(self, key: bytes) -> None:
        if _LIB is None:
            raise RuntimeError("pycryptodome's OCB core cannot be called directly here (see ocb.AVAILABLE)")
        self._key = bytes(key)
        self._slot = _LIB.new("void *[1]")  # where the C start functions leave their state
        self._tag = _LIB.new(_LIB.array, TAG_SIZE)  # where open() has the expected tag computed

    def _start(self, nonce: bytes) -> Any:
        """A new OCB state for ``nonce`` (it owns a new key schedule)."""
        lib, slot = _LIB, self._slot
        assert lib is not None
        key = self._key
        if lib.aes_start(key, len(key), slot):
            raise ValueError(f"AES refused a {len(key)}-byte key")
        cipher = slot[0]
        if len(nonce) != _NONCE_SIZE or lib.start(cipher, nonce, _NONCE_SIZE, TAG_SIZE, slot):
            lib.aes_stop(cipher)
            raise ValueError(f"an OCB nonce here is {_NONCE_SIZE} bytes, got {len(nonce)}")
        return slot[0]

    def seal(self, nonce: bytes, ad: BytesLike, plaintext: BytesLike, prefix: bytes = b"", /) -> bytes:
        """``prefix ‖ ciphertext ‖ tag`` of ``plaintext`` under ``nonce`` (12 bytes), authenticating ``ad``.

        ``prefix`` (a frame header, say) is only copied in front, in the same
        new bytes object, which saves the caller a copy of the whole.
        """
        lib = _LIB
        assert lib is not None
        size, head = len(plaintext), len(prefix)
        source = _pointer(plaintext)
        out, sealed = _output(lib, head + size + TAG_SIZE)
        target = out + head
        state = self._start(nonce)
        try:
            failed = (ad and lib.update(state, _pointer(ad), len(ad))) or lib.encrypt(state, source, target, size) \
                or lib.digest(state, target + size, TAG_SIZE)
        finally:
            lib.stop(state)
        if failed:
            raise ValueError(f"OCB encryption failed (pycryptodome error {failed})")
        if head:
            lib.memmove(out, prefix, head)
        return lib.buffer(out)[:] if sealed is None else sealed

    def open(self, nonce: bytes, ad: BytesLike, data: BytesLike, /) -> bytes:
        """The plaintext of ``ciphertext ‖ tag``; ValueError if ``data`` is shorter than a tag or forged."""
        lib = _LIB
        assert lib is not None
        size = len(data) - TAG_SIZE
        if size < 0:
            raise ValueError("ciphertext shorter than the tag")
        source = _pointer(data)
        target, plaintext = _output(lib, size)
        tag = self._tag
        state = self._start(nonce)
        try:
            failed = (ad and lib.update(state, _pointer(ad), len(ad))) or lib.decrypt(state, source, target, size) \
                or lib.digest(state, tag, TAG_SIZE)
        finally:
            lib.stop(state)
        # Checked before any plaintext leaves, in constant time (decrypt_and_verify's order).
        if failed or not _same_tag(lib.buffer(tag), memoryview(data)[size:]):
            raise ValueError("MAC check failed")
        return lib.buffer(target)[:] if plaintext is None else plaintext

    def __repr__(self) -> str:
        return "<OcbKey>"  # never show the key
