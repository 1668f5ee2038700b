"""Bounds-checked pull/push primitives (aioquic's ``Buffer``, reduced to what crust needs).

Every ``pull_*`` raises :class:`~crust.errors.BufferReadError` instead of
reading past the end, so a decoder fed hostile bytes can only ever fail
with a ``RemoteProtocolError``.  Integers are big-endian (network order).
"""

from __future__ import annotations

import ipaddress
import struct

from ..errors import BufferReadError, LocalProtocolError
from ..ids import Endpoint

__all__ = ["Buffer"]

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

_TRANSPORT_CODES = {"tcp": 0, "udp": 1}
_TRANSPORT_NAMES = {code: name for name, code in _TRANSPORT_CODES.items()}


class Buffer:
    """A read cursor over ``data``, or a growing output when built empty."""

    __slots__ = ("_data", "_pos", "_out")

    def __init__(self, data: bytes | bytearray | memoryview = b"") -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._out = bytearray()

    # -- reading ----------------------------------------------------------

    @property
    def remaining(self) -> int:
        """Bytes not yet pulled."""
        return len(self._data) - self._pos

    def eof(self) -> bool:
        """True once every byte has been pulled."""
        return self._pos >= len(self._data)

    def _take(self, n: int) -> memoryview:
        end = self._pos + n
        if n < 0 or end > len(self._data):
            raise BufferReadError(f"need {n} bytes at offset {self._pos}, only {self.remaining} left")
        view = self._data[self._pos:end]
        self._pos = end
        return view

    def pull_uint8(self) -> int:
        """One unsigned byte."""
        return self._take(1)[0]

    def pull_uint16(self) -> int:
        """Two bytes, big-endian."""
        return int(_U16.unpack(self._take(2))[0])

    def pull_uint32(self) -> int:
        """Four bytes, big-endian."""
        return int(_U32.unpack(self._take(4))[0])

    def pull_uint64(self) -> int:
        """Eight bytes, big-endian."""
        return int(_U64.unpack(self._take(8))[0])

    def pull_bytes(self, n: int) -> bytes:
        """Exactly ``n`` bytes."""
        return bytes(self._take(n))

    def pull_rest(self) -> bytes:
        """Everything not yet pulled."""
        return self.pull_bytes(self.remaining)

    def pull_endpoint(self) -> Endpoint:
        """``u8 transport ‖ u8 ip version (4|6) ‖ address ‖ u16 port``."""
        transport = _TRANSPORT_NAMES.get(self.pull_uint8())
        if transport is None:
            raise BufferReadError("unknown endpoint transport code")
        version = self.pull_uint8()
        if version == 4:
            host = str(ipaddress.IPv4Address(self.pull_bytes(4)))
        elif version == 6:
            host = str(ipaddress.IPv6Address(self.pull_bytes(16)))
        else:
            raise BufferReadError(f"unknown IP version {version} in endpoint")
        return Endpoint(host, self.pull_uint16(), transport)

    # -- writing ----------------------------------------------------------

    def data(self) -> bytes:
        """What has been pushed so far."""
        return bytes(self._out)

    def push_uint8(self, value: int) -> None:
        """One unsigned byte."""
        self._out.append(value)

    def push_uint16(self, value: int) -> None:
        """Two bytes, big-endian."""
        self._out += _U16.pack(value)

    def push_uint32(self, value: int) -> None:
        """Four bytes, big-endian."""
        self._out += _U32.pack(value)

    def push_uint64(self, value: int) -> None:
        """Eight bytes, big-endian."""
        self._out += _U64.pack(value)

    def push_bytes(self, value: bytes) -> None:
        """Raw bytes, no length prefix."""
        self._out += value

    def push_endpoint(self, endpoint: Endpoint) -> None:
        """The inverse of :meth:`pull_endpoint`; hostnames cannot travel (resolve them first)."""
        try:
            address = ipaddress.ip_address(endpoint.host)
        except ValueError:
            raise LocalProtocolError(f"cannot put hostname endpoint {endpoint} on the wire") from None
        self.push_uint8(_TRANSPORT_CODES[endpoint.transport])
        self.push_uint8(address.version)
        self.push_bytes(address.packed)
        self.push_uint16(endpoint.port)
