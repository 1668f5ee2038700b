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

What a peer may make the channel hold is bounded, and the bounds may change
between frames (:meth:`SecureChannel.set_limits`): the largest frame, and
the bytes of unfinished messages, all priorities together, each counted as
its bytes so far plus ``MESSAGE_OVERHEAD`` (:func:`crust.config.unfinished_limit`
by default).  Going over is a ``RemoteProtocolError`` whose text starts with
``flood:``.  So that a new limit applies from the very next frame, the
engine takes messages one frame at a time (:meth:`feed`, :meth:`next_batch`)
and acts on each frame's messages before the next one is decoded.
"""

from __future__ import annotations

from .config import MESSAGE_OVERHEAD, unfinished_limit
from .crypto.aead import Cipher, Opener, Sealer
from .errors import OversizeMessage, RemoteProtocolError
from .wire.framing import FrameDecoder, frame_header
from .wire.messages import DATA_HEADER, DATA_LAST, RECORD_HEADER, Data, Message, MessageType, decode_record, encode_record

__all__ = ["SecureChannel", "MAX_FRAME_PLAINTEXT", "AEAD_TAG_SIZE"]

MAX_FRAME_PLAINTEXT = 64 * 1024 + 256  # bytes: 64 KiB of message data plus record headers
AEAD_TAG_SIZE = 16  # bytes: every negotiable cipher's tag (crypto.aead.TAG_SIZE)
_DATA = MessageType.DATA
_RECORD_HEADER_SIZE = RECORD_HEADER.size
_DATA_HEADER_SIZE = DATA_HEADER.size
_unpack_record = RECORD_HEADER.unpack_from
_unpack_data = DATA_HEADER.unpack_from


class SecureChannel:
    """Encrypts outbound frames and decodes inbound ones into :mod:`crust.wire.messages` values.

    After a :class:`~crust.errors.RemoteProtocolError` the channel is poisoned:
    the connection must be closed, and every later ``receive_data`` raises.
    """

    __slots__ = ("_sealer", "_opener", "_decoder", "_partial", "_max_message", "_failed", "_unfinished",
                 "_unfinished_limit")

    def __init__(self, sealer: Sealer, opener: Opener, *, max_message_size: int) -> None:
        self._sealer = sealer
        self._opener = opener
        self._decoder = FrameDecoder(MAX_FRAME_PLAINTEXT + AEAD_TAG_SIZE)
        self._partial: dict[int, bytearray] = {}  # priority -> chunks of an unfinished message
        self._max_message = max_message_size
        self._failed = False
        self._unfinished = 0  # what the unfinished messages in _partial count for
        self._unfinished_limit = unfinished_limit(max_message_size)

    # -- limits -----------------------------------------------------------

    def set_limits(self, *, max_frame: int, unfinished: int) -> None:
        """Bound what the peer may make us hold, from the next frame on.

        Args:
            max_frame: plaintext bytes one frame may carry (at most ``MAX_FRAME_PLAINTEXT``).
            unfinished: what unfinished messages may count for together (each its
                bytes so far plus ``MESSAGE_OVERHEAD``); 0 allows none.
        """
        self._decoder.max_size = min(max_frame, MAX_FRAME_PLAINTEXT) + AEAD_TAG_SIZE
        self._unfinished_limit = unfinished

    @property
    def unfinished(self) -> int:
        """What the unfinished messages held now count for (bytes plus ``MESSAGE_OVERHEAD`` each)."""
        return self._unfinished

    @property
    def cipher(self) -> Cipher:
        """The transport AEAD the handshake agreed on (the same both ways)."""
        return self._sealer.cipher

    # -- inbound ----------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Feed stream bytes; return every message they complete, in order.

        Complete ``Data`` messages come back whole (``last=True``).  If any
        frame fails, the call raises and returns nothing, not even the
        messages of earlier frames (the engine uses :meth:`next_batch`).

        Raises:
            RemoteProtocolError: oversize frame or message, bad MAC, malformed record, a flood.
        """
        self.feed(data)
        out: list[Message] = []
        while (batch := self.next_batch()) is not None:
            out += batch
        return out

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Buffer stream bytes; :meth:`next_batch` decodes them.

        Raises:
            RemoteProtocolError: the channel already failed.
        """
        if self._failed:
            raise RemoteProtocolError("channel already failed")
        self._decoder.receive_data(data)

    def next_batch(self) -> list[Message] | None:
        """The messages the next whole frame completes (maybe none), or None until more bytes arrive.

        One frame at a time, and a list rather than one message at a time,
        because this is the receive hot path: a frame carries up to 64 KiB.

        Raises:
            RemoteProtocolError: oversize frame or message, bad MAC, malformed record, a flood.
        """
        if self._failed:
            raise RemoteProtocolError("channel already failed")
        try:
            frame = self._decoder.next_frame()
            if frame is None:
                return None
            out: list[Message] = []
            self._read_records(self._opener.open(frame), out)
        except RemoteProtocolError:
            self._failed = True
            raise
        return out

    def _read_records(self, plaintext: bytes, out: list[Message]) -> None:
        pos, end = 0, len(plaintext)
        partial, max_message, append = self._partial, self._max_message, out.append
        while pos < end:
            if end - pos >= _DATA_HEADER_SIZE:
                # The hot path, inline: a whole message (flags == LAST) while none is half
                # received, its header read in one unpack (the first 5 bytes are any record's).
                kind, length, priority, flags = _unpack_data(plaintext, pos)
                if kind == _DATA and flags == DATA_LAST and length >= 2 and not partial:
                    body_start = pos + _DATA_HEADER_SIZE
                    pos += _RECORD_HEADER_SIZE + length
                    if pos > end:
                        raise RemoteProtocolError("record runs past the end of its frame")
                    if length - 2 > max_message:
                        raise RemoteProtocolError(f"message exceeds {max_message} bytes")
                    append(Data(priority, plaintext[body_start:pos]))
                    continue
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
                append(decode_record(kind, memoryview(plaintext)[body_start:pos]))

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
                raise OversizeMessage(f"message exceeds {self._max_message} bytes")
            if flags:
                out.append(Data(priority, chunk))
            else:
                self._hold(len(chunk) + MESSAGE_OVERHEAD)
                self._partial[priority] = bytearray(chunk)
            return
        if len(partial) + len(chunk) > self._max_message:
            raise OversizeMessage(f"message exceeds {self._max_message} bytes")
        if flags:
            del self._partial[priority]
            self._unfinished -= len(partial) + MESSAGE_OVERHEAD
            partial += chunk
            out.append(Data(priority, bytes(partial)))
        else:
            self._hold(len(chunk))
            partial += chunk

    def _hold(self, nbytes: int) -> None:
        held = self._unfinished + nbytes
        if held > self._unfinished_limit:
            raise RemoteProtocolError(
                f"flood: unfinished messages would count {held} bytes, over the limit of {self._unfinished_limit}")
        self._unfinished = held

    # -- outbound ---------------------------------------------------------

    def seal(self, pieces: list[bytes | memoryview]) -> bytes:
        """One frame holding the records whose bytes are ``pieces`` (≤ MAX_FRAME_PLAINTEXT)."""
        plaintext = b"".join(pieces)
        # The header goes in as the seal's prefix: one bytes object, not the sealed 64 KiB copied behind it.
        return self._sealer.seal(plaintext, prefix=frame_header(len(plaintext) + AEAD_TAG_SIZE))

    def encode(self, *messages: Message) -> bytes:
        """One frame holding ``messages`` (control traffic; data goes through the outbox)."""
        return self.seal([encode_record(m) for m in messages])


def data_record_header(priority: int, length: int, last: bool) -> bytes:
    """The header of a Data record carrying ``length`` chunk bytes."""
    return DATA_HEADER.pack(_DATA, length + 2, priority, DATA_LAST if last else 0)
