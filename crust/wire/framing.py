"""Frame boundaries on a byte stream, found incrementally.

Two frame shapes share one decoder:

* transport frames, ``u32 length ‖ ciphertext`` (PROTOCOL.md §4), and
* handshake messages, ``u8 type ‖ u16 length ‖ body`` (PROTOCOL.md §3).

The length is checked against the limit *before* any byte of the body is
buffered for it, so a peer announcing 2^31 bytes costs us four bytes, not
two gigabytes.  Bytes are consumed from a ``bytearray`` with a read offset
that is compacted only once it passes half the buffer, which keeps both
one-chunk and byte-at-a-time feeding linear; and once no whole frame is
left, so an idle stream holds at most one unfinished frame, not the last
read (up to 256 KiB per connection otherwise).  The limit may change
between frames (:attr:`max_size`): a link not yet granted is held to small
frames.
"""

from __future__ import annotations

import struct

from ..errors import RemoteProtocolError

__all__ = ["FrameDecoder", "HandshakeDecoder", "encode_frame", "frame_header", "encode_handshake_message",
           "FRAME_HEADER_SIZE"]

_FRAME_HEADER = struct.Struct(">I")
_HANDSHAKE_HEADER = struct.Struct(">BH")
FRAME_HEADER_SIZE = _FRAME_HEADER.size


class _Decoder:
    __slots__ = ("_buf", "_pos", "_max", "_closed")

    def __init__(self, max_size: int) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._max = max_size
        self._closed = False

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes read from the stream."""
        if self._pos and self._pos * 2 >= len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    @property
    def max_size(self) -> int:
        """The largest frame (or handshake message) body accepted; takes effect from the next one."""
        return self._max

    @max_size.setter
    def max_size(self, value: int) -> None:
        self._max = value

    def _compact(self) -> None:
        """Free the bytes already returned (called when no whole frame is left)."""
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned in a frame."""
        return len(self._buf) - self._pos

    def take_rest(self) -> bytes:
        """Hand over every unconsumed byte (the handshake's trailing data)."""
        rest = bytes(self._buf[self._pos:])
        self._buf.clear()
        self._pos = 0
        return rest

    def _fail(self, msg: str) -> RemoteProtocolError:
        self._closed = True  # poisoned: the stream's boundaries can no longer be trusted
        return RemoteProtocolError(msg)


class FrameDecoder(_Decoder):
    """Splits ``u32 length ‖ body`` frames; a length above ``max_size`` is a remote error.

    A ``bytes`` chunk (what a socket read returns) is not copied into the
    buffer: the whole frames in it are handed out as views of it (a 256 KiB
    read holds up to four 64 KiB frames), and only a frame split between two
    reads is gathered in the buffer, its own bytes and no more.  Other
    buffer types, which their owner may change, are copied as before.
    """

    __slots__ = ("_chunk", "_cpos")

    def __init__(self, max_size: int) -> None:
        super().__init__(max_size)
        self._chunk = b""  # the latest bytes chunk, read in place from _cpos on (after the buffer)
        self._cpos = 0

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes read from the stream (kept, not copied, if they are ``bytes``)."""
        if self._cpos < len(self._chunk):
            self._spill()  # fed again before the last chunk was read out: its rest comes first
        if type(data) is bytes:
            self._chunk, self._cpos = data, 0
        else:
            super().receive_data(data)

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned in a frame."""
        return len(self._buf) - self._pos + len(self._chunk) - self._cpos

    def take_rest(self) -> bytes:
        """Hand over every unconsumed byte."""
        self._spill()
        return super().take_rest()

    def _spill(self) -> None:
        """Move the chunk's unread bytes into the buffer (a partial frame, usually) and let the chunk go."""
        rest = memoryview(self._chunk)[self._cpos:]
        if rest:
            super().receive_data(rest)
        self._chunk, self._cpos = b"", 0

    def _pull(self, wanted: int) -> int:
        """Move up to ``wanted`` bytes from the chunk to the buffer; returns how many bytes the buffer holds."""
        start = self._cpos
        end = min(start + wanted, len(self._chunk))
        if end > start:
            self._buf += memoryview(self._chunk)[start:end]
            self._cpos = end
        return len(self._buf) - self._pos

    def _length(self, data: bytes | bytearray, pos: int) -> int:
        (length,) = _FRAME_HEADER.unpack_from(data, pos)
        if length > self._max:
            raise self._fail(f"frame of {length} bytes exceeds the {self._max}-byte limit")
        return int(length)

    def next_frame(self) -> memoryview | None:
        """The next whole frame body, or ``None`` until more bytes arrive.

        The body is a view of bytes nobody changes: the caller may keep it.

        Raises:
            RemoteProtocolError: an announced length exceeds the limit (the decoder stays failed).
        """
        if self._closed:
            raise RemoteProtocolError("frame decoder already failed")
        if self._pos < len(self._buf):
            return self._from_buffer()
        chunk, pos = self._chunk, self._cpos
        if len(chunk) - pos < 4:
            self._spill()
            self._compact()
            return None
        end = pos + 4 + self._length(chunk, pos)
        if end > len(chunk):
            self._spill()
            return None
        self._cpos = end
        return memoryview(chunk)[pos + 4:end]

    def _from_buffer(self) -> memoryview | None:
        """The frame that starts in the buffer, completed from the chunk if it can be."""
        pos = self._pos
        if self._pull(4 - (len(self._buf) - pos)) < 4:
            self._compact()
            return None
        buf = self._buf
        end = pos + 4 + self._length(buf, pos)
        if len(buf) < end and self._pull(end - len(buf)) < end - pos:
            self._compact()
            return None
        if pos == 0 and end == len(buf):
            # The buffer is this frame and nothing else: hand it over, and start a new one.
            self._buf = bytearray()
            return memoryview(buf)[4:]
        self._pos = end
        return memoryview(buf[pos + 4:end])

    def frames(self) -> list[memoryview]:
        """Every whole frame now buffered (see :meth:`next_frame`)."""
        out = []
        while (frame := self.next_frame()) is not None:
            out.append(frame)
        return out


class HandshakeDecoder(_Decoder):
    """Splits ``u8 type ‖ u16 length ‖ body`` handshake messages."""

    __slots__ = ()

    def next_message(self) -> tuple[int, bytes] | None:
        """The next ``(type, body)``, or ``None`` until more bytes arrive.

        Raises:
            RemoteProtocolError: an announced length exceeds the limit.
        """
        if self._closed:
            raise RemoteProtocolError("handshake decoder already failed")
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 3:
            self._compact()
            return None
        kind, length = _HANDSHAKE_HEADER.unpack_from(buf, pos)
        if length > self._max:
            raise self._fail(f"handshake message of {length} bytes exceeds the {self._max}-byte limit")
        end = pos + 3 + length
        if len(buf) < end:
            self._compact()
            return None
        self._pos = end
        return kind, bytes(buf[pos + 3:end])


def encode_frame(body: bytes) -> bytes:
    """``u32 length ‖ body``."""
    return _FRAME_HEADER.pack(len(body)) + body


def frame_header(length: int) -> bytes:
    """The ``u32 length`` in front of a frame body of ``length`` bytes (for a body written after it)."""
    return _FRAME_HEADER.pack(length)


def encode_handshake_message(kind: int, body: bytes) -> bytes:
    """``u8 kind ‖ u16 length ‖ body``."""
    return _HANDSHAKE_HEADER.pack(kind, len(body)) + body
