"""The rUDP wire format (PROTOCOL.md §10): header, flags, SACK blocks, 32-bit sequence numbers.

One parser, :func:`parse_header`, serves both readers of a datagram: the
socket's demultiplexer (through :func:`peek_ids`, on every datagram) and the
stream.  Nothing here keeps state.

Wire format (big-endian; header 23 bytes, datagram at most ``MAX_DATAGRAM``)::

    offset size  field
    0      1     magic: 0xC7 = rudp version 3 (0xC6 was version 2, without
                 tags; 0xC5 version 1, without cookies; other first bytes
                 belong to others on the socket: 0xC3 beacons and probes,
                 ASCII for SSDP)
    1      1     flags: 0x01 SYN, 0x02 ACK, 0x04 FIN, 0x08 RST, 0x10 PING
                 (answer with an ACK), 0x20 COOKIE, 0x40 PATH, 0x80 PROBE
    2      4     dst: receiver's connection id (0 only in a SYN without ACK)
    6      4     src: sender's connection id (never 0, but in a COOKIE)
    10     4     seq: sequence number of the first payload byte (or of the
                 SYN / FIN; in a bare ACK, PING or RST the sender's next seq)
    14     4     ack: next sequence number expected (meaningful with ACK, else 0)
    18     4     window: receive window in bytes, counted from ack
    22     1     n: number of SACK blocks, 0..3, plus ``TAGGED`` (0x80)
                 when a tag ends the datagram, plus ``KEYED`` (0x40) when
                 the sender has its path key (auth.py)
    23     8*n   SACK blocks: u32 start, u32 end (end exclusive) of data
                 received above ack
    23+8n  rest  payload: 0..1200 bytes, more once the path is known to carry
                 it (pmtu.py), up to what one UDP datagram holds
    end-16 16    with ``TAGGED`` only: keyed BLAKE2s-128 of every byte before
                 it, under the connection's path key (auth.py)

Valid flag sets: SYN, SYN|ACK, ACK (+FIN, +PING), RST (+ACK), COOKIE, PATH
(+ACK), PROBE (+ACK).  A PROBE (path MTU discovery) is padded to the size
under test and carries its id in seq; PROBE | ACK answers it, with the id
in seq and the size that arrived in ack, and no payload.  A PATH datagram -- a challenge to a new address of the peer, or
with ACK the peer's answer to one -- is a bare header whose seq, ack and
window fields carry a 96-bit nonce (``pack_path``).  A SYN
carries exactly ``COOKIE_SIZE`` bytes, the cookie the listener gave it (zeros
before it has one); a COOKIE -- the listener's stateless answer to a SYN
without a valid cookie, the same size as that SYN -- carries ``dst`` = the
SYN's ``src``, ``src`` 0, ``ack`` = the SYN's ``seq`` and the cookie.  SYN-ACK,
RST and PATH carry no payload.  Anything else -- short, wrong magic, unknown flags,
n > 3, SACK blocks past the end, a datagram over ``MAX_WIRE_DATAGRAM``, src 0 outside a
COOKIE, a SYN or COOKIE of another size, a mark on a SYN or COOKIE, a tag on a
PROBE -- is malformed.  Whether the tag is right is the stream's to check.

*Sequence space.*  The wire carries 32 bits; inside, offsets from the ISN are
unbounded ints, each received value unwrapped (:func:`unwrap`) to the offset
nearest a reference (``rcv_nxt`` for seq, ``snd_una`` for ack and SACK), exact
while windows stay below 2**31.
"""

from __future__ import annotations

import struct
from typing import Sequence

__all__ = [
    "MAGIC",
    "MAX_PAYLOAD",
    "MAX_SACK_BLOCKS",
    "HEADER_SIZE",
    "MAX_DATAGRAM",
    "SYN",
    "ACK",
    "FIN",
    "RST",
    "PING",
    "COOKIE",
    "PATH",
    "PROBE",
    "NONCE_SIZE",
    "TAGGED",
    "KEYED",
    "TAG_SIZE",
    "MAX_WIRE_DATAGRAM",
    "COOKIE_SIZE",
    "SYN_SIZE",
    "HEADER",
    "Header",
    "parse_header",
    "peek_ids",
    "pack_syn",
    "pack_cookie",
    "pack_path",
    "pack_probe",
    "pack_probe_answer",
    "path_nonce",
    "sack_offsets",
    "pack_sack_blocks",
    "unwrap",
    "MASK",
    "HALF",
]

MAGIC = 0xC7  # first byte of every rudp datagram, version 3 (v2, 0xC6, had no tags): a new version takes a new byte
MAX_PAYLOAD = 1200  # bytes per datagram: stays below every sane path MTU, so no IP fragmentation
MAX_SACK_BLOCKS = 3  # per datagram, as TCP fits with timestamps; the sender remembers older ones
HEADER = struct.Struct(">BBIIIIIB")  # magic, flags, dst, src, seq, ack, window, SACK count
_SACK = struct.Struct(">II")
HEADER_SIZE = HEADER.size  # 23 bytes
MAX_DATAGRAM = HEADER_SIZE + MAX_SACK_BLOCKS * _SACK.size + MAX_PAYLOAD  # 1247 bytes: what every path carries
MAX_WIRE_DATAGRAM = 65507  # bytes: the most one UDP datagram over IPv4 holds (probing may reach it)

COOKIE_SIZE = 16  # bytes: a keyed BLAKE2s tag (cookie.py); forging one for a spoofed source takes 2**128 tries
SYN_SIZE = HEADER_SIZE + COOKIE_SIZE  # 39 bytes: every SYN, and every COOKIE answering one

NONCE_SIZE = 12  # bytes of a PATH nonce, in the seq, ack and window fields
TAGGED = 0x80  # in the SACK-count byte: the datagram ends with a TAG_SIZE-byte tag
KEYED = 0x40  # in the SACK-count byte: the sender has its path key (it tags FIN, RST and PATH)
TAG_SIZE = 16  # bytes: keyed BLAKE2s-128 under the path key (auth.py)

SYN, ACK, FIN, RST, PING, COOKIE, PATH, PROBE = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
_VALID_FLAGS = frozenset({SYN, SYN | ACK, ACK, ACK | FIN, ACK | PING, ACK | FIN | PING, RST, RST | ACK, COOKIE,
                          PATH, PATH | ACK, PROBE, PROBE | ACK})
_NONCE = struct.Struct(">III")
_IDS = struct.Struct(">BBII")  # magic, flags, dst, src: what the demultiplexer needs
_NO_COOKIE = bytes(COOKIE_SIZE)
MASK = 0xFFFFFFFF  # the wire's 32 bits
HALF = 1 << 31

# (flags, dst, src, seq, ack, window, nsack, payload_at); payload_at is -1 when the
# header names a valid flag set but the datagram around it is malformed.  A plain
# tuple, not a NamedTuple: it is built twice per datagram on the hot path.
Header = tuple[int, int, int, int, int, int, int, int]


def parse_header(datagram: bytes) -> Header | None:
    """The header of an rudp datagram, or None if the datagram is not rudp.

    Not rudp: shorter than a header, another magic, or a flag set that rudp
    never sends (the first bytes of other protocols on the socket).  Rudp
    but malformed -- too many SACK blocks, blocks past the end, an oversized
    payload, ``src`` 0 outside a COOKIE, a SYN or COOKIE that is not
    ``SYN_SIZE`` bytes, a SYN-ACK, RST or PATH with payload, a SYN or COOKIE
    with a mark, a tagged PROBE -- gives ``payload_at`` -1.  A tag is not payload: with
    ``TAGGED`` the payload ends ``TAG_SIZE`` bytes before the datagram.

    Args:
        datagram: the bytes as received.

    Returns:
        ``(flags, dst, src, seq, ack, window, nsack, payload_at)``, where
        ``nsack`` is the SACK count without the marks and ``payload_at`` is
        where the payload starts (its end if there is none).
    """
    size = len(datagram)
    if size < HEADER_SIZE or datagram[0] != MAGIC or datagram[1] not in _VALID_FLAGS:
        return None
    _, flags, dst, src, seq, ack, window, nsack = HEADER.unpack_from(datagram)
    mark = nsack & (TAGGED | KEYED)
    if mark:
        nsack ^= mark
        if mark & TAGGED:
            size -= TAG_SIZE
        if flags & (SYN | COOKIE) or (mark & TAGGED and (flags == PROBE or size < HEADER_SIZE)):
            return flags, dst, src, seq, ack, window, nsack, -1
    payload_at = HEADER_SIZE + 8 * nsack
    if flags == SYN or flags == COOKIE:
        if size != SYN_SIZE or nsack or (src == 0) != (flags == COOKIE):
            payload_at = -1
    elif (nsack > MAX_SACK_BLOCKS or payload_at > size or size > MAX_WIRE_DATAGRAM or src == 0
            or (flags & (SYN | RST | PATH) and size > payload_at) or (flags & PROBE and (nsack or flags & ACK
                                                                                      and size > payload_at))):
        payload_at = -1
    return flags, dst, src, seq, ack, window, nsack, payload_at


def peek_ids(datagram: bytes) -> tuple[int, int, bool] | None:
    """``(dst_id, src_id, is_syn_without_ack)`` if this looks like an rudp datagram, else None.

    The socket demultiplexer calls it on every datagram; a malformed rudp
    datagram still gets its ids, so the stream it names counts it.  It makes
    the same "is it rudp" checks as :func:`parse_header` but unpacks only the
    ids: the stream parses the whole header once, right after.
    """
    if len(datagram) < HEADER_SIZE or datagram[0] != MAGIC:
        return None
    _, flags, dst, src = _IDS.unpack_from(datagram)
    if flags not in _VALID_FLAGS:
        return None
    return dst, src, flags == SYN


def pack_syn(src: int, seq: int, window: int, cookie: bytes | None) -> bytes:
    """A SYN without ACK (``dst`` 0): ``src`` our id, ``seq`` our ISN, and the listener's cookie or zeros."""
    return HEADER.pack(MAGIC, SYN, 0, src, seq, 0, window, 0) + (cookie or _NO_COOKIE)


def pack_cookie(dst: int, syn_seq: int, cookie: bytes) -> bytes:
    """The COOKIE answering a SYN whose ``src`` was ``dst`` and ``seq`` ``syn_seq``: as long as that SYN."""
    return HEADER.pack(MAGIC, COOKIE, dst, 0, 0, syn_seq, 0, 0) + cookie


def pack_path(flags: int, dst: int, src: int, nonce: bytes) -> bytes:
    """A PATH challenge (``flags`` PATH) or answer (PATH | ACK) carrying the ``NONCE_SIZE``-byte ``nonce``."""
    return HEADER.pack(MAGIC, flags, dst, src, *_NONCE.unpack(nonce), 0)


def pack_probe(dst: int, src: int, probe_id: int, size: int) -> bytes:
    """A PROBE of exactly ``size`` bytes: the header (``seq`` = ``probe_id``), then zero padding."""
    return HEADER.pack(MAGIC, PROBE, dst, src, probe_id, 0, 0, 0) + bytes(size - HEADER_SIZE)


def pack_probe_answer(dst: int, src: int, probe_id: int, size: int) -> bytes:
    """The PROBE | ACK answering probe ``probe_id``, which arrived ``size`` bytes long."""
    return HEADER.pack(MAGIC, PROBE | ACK, dst, src, probe_id, size, 0, 0)


def path_nonce(datagram: bytes) -> bytes:
    """The nonce of a parsed PATH datagram."""
    return datagram[10:10 + NONCE_SIZE]


def sack_offsets(datagram: bytes, nsack: int, ref: int, base: int) -> list[tuple[int, int]]:
    """The SACK blocks of a parsed datagram as ``(start, end)`` offsets from ``base``, in wire order.

    Each edge is unwrapped near ``ref`` (``snd_una``).  Stale or bogus blocks
    are kept: which block came first matters to the reader.
    """
    return [(unwrap(start, ref, base), unwrap(end, ref, base))
            for start, end in (_SACK.unpack_from(datagram, HEADER_SIZE + 8 * i) for i in range(nsack))]


def pack_sack_blocks(ranges: Sequence[tuple[int, int]], base: int) -> bytes:
    """SACK blocks for ``(start, end)`` offsets from ``base``, in the order given."""
    return b"".join(_SACK.pack((base + start) & MASK, (base + end) & MASK) for start, end in ranges)


def unwrap(wire: int, ref: int, base: int) -> int:
    """The offset (from ``base``) nearest ``ref`` whose 32-bit wire value is ``wire``."""
    diff = (wire - base - ref) & MASK
    return ref + diff - (1 << 32) if diff >= HALF else ref + diff
