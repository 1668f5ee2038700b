"""Path validation for rUDP: a peer is followed to a new address only once it answers there.

Theory of operation
-------------------
A stream knows no addresses; its owner (the socket) does.  When the peer's
datagrams -- both ids right, ack fresh (``Heard.PEER``) -- arrive from a new
address, the owner sends a challenge there: a PATH datagram whose seq, ack
and window fields carry a 96-bit nonce from the owner's CSPRNG, replacing
any earlier challenge.  A peer answers a challenge with its next datagrams
(PATH | ACK, the same nonce), from wherever it now is.  Only the answer to
the latest challenge counts (``Heard.PATH``), once: the owner moves the
connection if it came from the address challenged.  So, as with QUIC's path
validation, an address that does not receive -- a victim an on-path
attacker would like us to flood -- is never moved to.  Once the connection is
keyed, the stream takes an answer only with a right tag (``auth.py``), so
whoever merely saw the nonce cannot answer in the peer's place.
"""

from __future__ import annotations

import enum

from .packet import ACK, NONCE_SIZE, PATH, pack_path

__all__ = ["Heard", "PathCheck"]


class Heard(enum.IntEnum):
    """What :meth:`RudpStream.receive_datagram` made of a datagram, for an owner that tracks addresses."""

    NOTHING = 0  # not the peer's as far as rUDP can tell, stale, or not about the path
    PEER = 1  # the peer's, and fresh: where it came from may be the peer's new address
    PATH = 2  # the peer's answer to our latest path challenge: its sender receives there


class PathCheck:
    """One stream's challenge in flight and the peer's challenge to answer (the newest of each)."""

    __slots__ = ("_nonce", "_answer")

    def __init__(self) -> None:
        self._nonce: bytes | None = None
        self._answer: bytes | None = None

    def challenge(self, nonce: bytes, dst: int, src: int) -> bytes:
        """The PATH challenge carrying ``nonce``; it replaces any earlier one.

        Raises:
            ValueError: ``nonce`` is not ``NONCE_SIZE`` bytes.
        """
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"a path nonce is {NONCE_SIZE} bytes, got {len(nonce)}")
        self._nonce = bytes(nonce)
        return pack_path(PATH, dst, src, nonce)

    def receive(self, flags: int, nonce: bytes) -> Heard | None:
        """Take a PATH datagram of the peer's: ``Heard.PATH`` for the answer, None for a wrong one."""
        if not flags & ACK:  # a challenge: answered by take_answer(), the newest only
            self._answer = nonce
            return Heard.NOTHING
        if nonce != self._nonce:
            return None  # answers no challenge of ours, or an older one
        self._nonce = None
        return Heard.PATH

    def take_answer(self, dst: int, src: int) -> bytes | None:
        """The answer to the peer's latest challenge, once; None if there is none."""
        answer, self._answer = self._answer, None
        return None if answer is None else pack_path(PATH | ACK, dst, src, answer)
