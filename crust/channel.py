"""SecureChannel: an established, encrypted, framed message stream.

``channel = framing ∘ aead ∘ messages`` (ARCHITECTURE.md §5).  Inbound bytes
are split into frames, each frame is opened (authenticated and decrypted
with the next counter nonce, so a tampered, replayed, dropped or reordered
frame fails), and its plaintext is read as a run of records.  Chunks of
application messages are glued back together per priority: chunks of
different priorities may interleave, chunks of one priority never do.

Outbound, the caller hands over record pieces for one frame (the outbox
decides which) and gets back the sealed, length-prefixed frame.  One AEAD
call per frame rather than per message is what makes small messages cheap.
"""

from __future__ import annotations

from .crypto.aead import Cipher, Opener, Sealer
from .errors import RemoteProtocolError
from .wire.framing import FrameDecoder, encode_frame
from .wire.messages import DATA_HEADER, DATA_LAST, RECORD_HEADER, Data, Message, MessageType, decode_record, encode_record

__all__ = ["SecureChannel", "MAX_FRAME_PLAINTEXT", "AEAD_TAG_SIZE"]

MAX_FRAME_PLAINTEXT = 64 * 1024 + 256  # bytes: 64 KiB of message data plus record headers
AEAD_TAG_SIZE = 16  # bytes: every negotiable cipher's tag (crypto.aead.TAG_SIZE)
_DATA = MessageType.DATA
_RECORD_HEADER_SIZE = RECORD_HEADER.size
_unpack_record = RECORD_HEADER.unpack_from


class SecureChannel:
    """Encrypts outbound frames and decodes inbound ones into :mod:`crust.wire.messages` values.

    After a :class:`~crust.errors.RemoteProtocolError` the channel is poisoned:
    the connection must be closed, and every later ``receive_data`` raises.
    """

    __slots__ = ("_sealer", "_opener", "_decoder", "_partial", "_max_message", "_failed")

    def __init__(self, sealer: Sealer, opener: Opener, *, max_message_size: int) -> None:
        self._sealer = sealer
        self._opener = opener
        self._decoder = FrameDecoder(MAX_FRAME_PLAINTEXT + AEAD_TAG_SIZE)
        self._partial: dict[int, bytearray] = {}  # priority -> chunks of an unfinished message
        self._max_message = max_message_size
        self._failed = False

    @property
    def cipher(self) -> Cipher:
        """The transport AEAD the handshake agreed on (the same both ways)."""
        return self._sealer.cipher

    # -- inbound ----------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Feed stream bytes; return every message they complete, in order.

        Complete ``Data`` messages come back whole (``last=True``).  A list is
        returned rather than one event at a time because this is the receive
        hot path: one call per socket read, not per message.

        Raises:
            RemoteProtocolError: oversize frame or message, bad MAC, malformed record.
        """
        if self._failed:
            raise RemoteProtocolError("channel already failed")
        self._decoder.receive_data(data)
        out: list[Message] = []
        try:
            while (frame := self._decoder.next_frame()) is not None:
                self._read_records(self._opener.open(frame), out)
        except RemoteProtocolError:
            self._failed = True
            raise
        return out

    def _read_records(self, plaintext: bytes, out: list[Message]) -> None:
        pos, end = 0, len(plaintext)
        while pos < end:
            if end - pos < _RECORD_HEADER_SIZE:
                raise RemoteProtocolError("truncated record header")
            kind, length = _unpack_record(plaintext, pos)
            body_start = pos + _RECORD_HEADER_SIZE
            pos = body_start + length
            if pos > end:
                raise RemoteProtocolError("record runs past the end of its frame")
            if kind == _DATA:
                self._read_data(plaintext, body_start, pos, out)
            else:
                out.append(decode_record(kind, memoryview(plaintext)[body_start:pos]))

    def _read_data(self, plaintext: bytes, start: int, end: int, out: list[Message]) -> None:
        if end - start < 2:
            raise RemoteProtocolError("Data record shorter than its header")
        priority, flags = plaintext[start], plaintext[start + 1]
        if flags & ~DATA_LAST:
            raise RemoteProtocolError(f"unknown Data flags {flags:#x}")
        chunk = plaintext[start + 2:end]
        partial = self._partial.get(priority)
        if partial is None:
            if len(chunk) > self._max_message:
                raise RemoteProtocolError(f"message exceeds {self._max_message} bytes")
            if flags:
                out.append(Data(priority, chunk))
            else:
                self._partial[priority] = bytearray(chunk)
            return
        if len(partial) + len(chunk) > self._max_message:
            raise RemoteProtocolError(f"message exceeds {self._max_message} bytes")
        partial += chunk
        if flags:
            del self._partial[priority]
            out.append(Data(priority, bytes(partial)))

    # -- outbound ---------------------------------------------------------

    def seal(self, pieces: list[bytes | memoryview]) -> bytes:
        """One frame holding the records whose bytes are ``pieces`` (≤ MAX_FRAME_PLAINTEXT)."""
        return encode_frame(self._sealer.seal(b"".join(pieces)))

    def encode(self, *messages: Message) -> bytes:
        """One frame holding ``messages`` (control traffic; data goes through the outbox)."""
        return self.seal([encode_record(m) for m in messages])


def data_record_header(priority: int, length: int, last: bool) -> bytes:
    """The header of a Data record carrying ``length`` chunk bytes."""
    return DATA_HEADER.pack(_DATA, length + 2, priority, DATA_LAST if last else 0)
