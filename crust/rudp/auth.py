"""Path authentication for rUDP: once secured, what moves or ends a connection carries a tag under its path key.

Theory of operation
-------------------
rUDP runs below the secure channel, so its headers are not the channel's
to authenticate.  Once the channel's handshake is over, both ends hold a
*path key* nobody else knows (``crust.crypto.kex.NoiseXX.path_key``, handed
down by the engine's ``KeyPath`` effect), and :class:`PathAuth` tags with it:
the n byte gets ``TAGGED`` and a keyed BLAKE2s-128 of every byte before it
ends the datagram (``packet.py``).  The tag covers the whole datagram -- ids,
flags, seq, ack, window, SACK blocks, nonce, payload -- so nobody without
the key can make one or alter one.

*Which datagrams.*  :func:`must_tag`: the ones that move or end a
connection -- a PATH answer (PATH | ACK), an RST and every datagram with
FIN.  A PATH challenge is not: it moves nothing (only its answer does),
its answer goes to the peer's known address whoever sent it, and at 23
bytes any datagram of the peer's from a new address -- a keep-alive PING
too -- is large enough to be answered with one.  Data and acks are not
tagged: tagging them too would also stop garbage injected at the next
sequence number by someone who sees the ids, but it cost about half the
64 KiB goodput (docs/security.md), and the secure channel above already
refuses such bytes.

*When.*  The two ends key at different moments: the secure handshake's
initiator when it writes the last handshake message, the responder when it
reads it.  An end that has its key sets ``KEYED`` in the n byte of every
datagram it sends; an end requires tags (``enforcing``) once it has its key
and has seen ``KEYED`` from the peer -- before that the peer may not be
able to tag yet, and the ids-only rules hold.  ``KEYED`` is not
authenticated: forging it early only makes an end strict a moment sooner,
and an attacker who could keep it from arriving can drop everything
anyway.  A datagram with a wrong tag is always dropped by a keyed end; an
end with no key strips a tag unchecked.  A tag proves "one of the two ends
made these bytes", not freshness: a replayed FIN or RST sits at an old
sequence number, an old PATH answer names an old nonce, and the socket
moves a connection only to the address that answered its latest
challenge, from there.
"""

from __future__ import annotations

import hashlib
import hmac

from .packet import ACK, FIN, KEYED, PATH, RST, TAG_SIZE, TAGGED

__all__ = ["KEY_SIZE", "PathAuth", "must_tag"]

KEY_SIZE = 32  # bytes: a BLAKE2s key, NoiseXX.PATH_KEY_SIZE
_MARK_AT = 22  # the n byte, which carries TAGGED and KEYED


def must_tag(flags: int) -> bool:
    """True if a keyed end tags (and, once enforcing, requires a tag on) a datagram with ``flags``."""
    return bool(flags & (FIN | RST)) or flags == PATH | ACK


class PathAuth:
    """One connection's path key: tags what it sends, checks what it receives (sans-IO, no clock)."""

    __slots__ = ("_base", "enforcing")

    def __init__(self, key: bytes, *, enforce: bool) -> None:
        """Key a connection.

        Args:
            key: the path key, ``KEY_SIZE`` bytes.
            enforce: require the peer's tags at once (it has said ``KEYED``).

        Raises:
            TypeError: ``key`` is not bytes.
            ValueError: ``key`` is not ``KEY_SIZE`` bytes.
        """
        if not isinstance(key, (bytes, bytearray)):
            raise TypeError(f"a path key must be bytes, not {type(key).__name__}")
        if len(key) != KEY_SIZE:
            raise ValueError(f"a path key is {KEY_SIZE} bytes, got {len(key)}")
        self._base = hashlib.blake2s(key=bytes(key), digest_size=TAG_SIZE)  # copied per tag: no key block each time
        self.enforcing = enforce

    def join(self, header: bytes, *rest: bytes) -> bytes:
        """``header`` (already saying ``TAGGED``), then ``rest``, then their tag: one datagram, one copy."""
        mac = self._base.copy()
        mac.update(header)
        for part in rest:
            mac.update(part)
        return b"".join((header, *rest, mac.digest()))

    def seal(self, datagram: bytes) -> bytes:
        """``datagram`` saying ``KEYED``, and tagged if :func:`must_tag` says so."""
        header = bytearray(datagram[:_MARK_AT + 1])
        if not must_tag(datagram[1]):
            header[_MARK_AT] |= KEYED
            return bytes(header) + datagram[_MARK_AT + 1:]
        header[_MARK_AT] |= TAGGED | KEYED
        return self.join(bytes(header), datagram[_MARK_AT + 1:])

    def check(self, datagram: bytes) -> bool:
        """True if a ``TAGGED`` datagram's tag is right."""
        mac = self._base.copy()
        mac.update(memoryview(datagram)[:-TAG_SIZE])
        return hmac.compare_digest(mac.digest(), datagram[-TAG_SIZE:])

    def accepts(self, datagram: bytes) -> bool:
        """True if a keyed end may take ``datagram`` (parsed, ids checked); False: drop it.

        A tag must verify; a datagram without one passes if it needs none,
        or while the peer may not have keyed yet.
        """
        mark = datagram[_MARK_AT]
        if mark & KEYED:
            self.enforcing = True
        if mark & TAGGED:
            return self.check(datagram)
        return not (self.enforcing and must_tag(datagram[1]))
