"""Path authentication for rUDP: once secured, a connection's datagrams carry a tag under its path key.

Theory of operation
-------------------
rUDP runs below the secure channel, so its headers are not the channel's
to authenticate.  Once the channel's handshake is over, both ends hold a
*path key* that nobody else knows (``crust.crypto.kex.NoiseXX.path_key``,
handed down by the engine's ``KeyPath`` effect); :class:`PathAuth` tags
datagrams with it: the n byte gets ``TAGGED`` and a keyed BLAKE2s-128 of
every byte before it ends the datagram (``packet.py``).  The tag covers the
whole datagram -- ids, flags, seq, ack, window, SACK blocks, nonce and
payload -- so nobody without the key can make one, alter one, or graft a
payload onto a header an honest datagram carried.

*Which datagrams.*  :func:`must_tag` says: every datagram of a keyed end
but SYN, COOKIE and PROBE (which come before a key, or carry padding whose
size is their meaning).  A PATH answer, an RST and a FIN are what move or
end a connection; tagging data and acks too (``TAG_ALL``) means garbage at
the next sequence number, injected by someone who sees the ids, never
reaches the channel either (docs/security.md has the cost we measured).

*When.*  The two ends key at different moments: the handshake's initiator
when it writes the last handshake message, the responder when it reads it.
So a responder requires tags at once (its peer keyed before it), while an
initiator tags from its key on but requires the peer's tags only from the
first tagged datagram of the peer's that verifies (before it, the peer may
not have keyed yet).  A datagram with a wrong tag is always dropped by a
keyed end; an end with no key yet strips a tag unchecked (it checks ids as
before).  Tags prove "one of the two ends made these bytes", not that they
are fresh: a replay stays a duplicate (sequence numbers), an old PATH answer
names an old nonce, and the socket moves a connection only to the address
the answer came from, which it challenged.
"""

from __future__ import annotations

import hashlib
import hmac

from .packet import COOKIE, FIN, PATH, PROBE, RST, SYN, TAG_SIZE, TAGGED

__all__ = ["KEY_SIZE", "TAG_ALL", "PathAuth", "must_tag"]

KEY_SIZE = 32  # bytes: a BLAKE2s key, NoiseXX.PATH_KEY_SIZE
TAG_ALL = True  # tag data and acks too, not only PATH, RST and FIN (measured: docs/security.md)
_TAG_AT = 22  # the byte carrying TAGGED


def must_tag(flags: int) -> bool:
    """True if a keyed end tags (and, once its peer has keyed, requires a tag on) a datagram with ``flags``."""
    if flags & (SYN | COOKIE) or flags == PROBE:
        return False
    return TAG_ALL or bool(flags & (FIN | RST | PATH))


class PathAuth:
    """One connection's path key: tags what it sends, checks what it receives (sans-IO, no clock)."""

    __slots__ = ("_base", "enforcing")

    def __init__(self, key: bytes, *, enforce: bool) -> None:
        """Key a connection.

        Args:
            key: the path key, ``KEY_SIZE`` bytes.
            enforce: require the peer's tags at once (the peer keyed before
                us); otherwise from its first tag that verifies.

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
        """``datagram`` as a tagged one if :func:`must_tag` says so, else unchanged."""
        if not must_tag(datagram[1]):
            return datagram
        header = bytearray(datagram[:_TAG_AT + 1])
        header[_TAG_AT] |= TAGGED
        return self.join(bytes(header), datagram[_TAG_AT + 1:])

    def check(self, datagram: bytes | memoryview) -> bool:
        """True if a ``TAGGED`` datagram's tag is right; the first right one makes us require tags."""
        mac = self._base.copy()
        mac.update(memoryview(datagram)[:-TAG_SIZE])
        if not hmac.compare_digest(mac.digest(), datagram[-TAG_SIZE:]):
            return False
        self.enforcing = True
        return True

    def accepts(self, datagram: bytes) -> bool:
        """True if a keyed end may take ``datagram`` (parsed, ids checked) as it is; False: drop it.

        A tag must verify; a datagram without one passes only if it needs
        none, or the peer may not have keyed yet.
        """
        if datagram[_TAG_AT] & TAGGED:
            return self.check(datagram)
        return not (self.enforcing and must_tag(datagram[1]))
