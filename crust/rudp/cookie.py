"""Stateless SYN cookies: a listener keeps nothing for a source until it proves it receives.

Theory of operation
-------------------
A SYN costs its sender nothing and its source address may be forged, so a
listener that made a connection for every SYN would hold state (and start a
handshake above) for anyone's claim, and answer to whatever address the
claim named.  Instead, as QUIC's Retry and WireGuard's cookie reply do, a SYN
without a valid cookie gets a COOKIE back -- no larger than the SYN, so a
forged source gains no amplification -- and nothing is remembered.  The
cookie is a tag only this socket can compute::

    cookie = BLAKE2s-128(key=secret, bucket ‖ host ‖ port ‖ src id ‖ ISN)

``secret`` is 32 random bytes per socket; ``bucket`` is ``floor(now /
COOKIE_PERIOD)``.  The initiator sends its SYN again with the cookie (same
id, same ISN); only a SYN whose cookie verifies for its source address, in
the current bucket or the one before, opens a connection.  So only a source
that received our COOKIE can open one, a cookie lives between one and two
periods, and a cookie seen on the path is good for that one (address, id,
ISN) only -- which the listener already answered.

Keyed BLAKE2s is the stdlib's (``hashlib``), as ``crust.crypto.mac`` uses it:
``crust.rudp`` sits below ``crust.crypto`` and must not import it.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from .packet import COOKIE_SIZE

__all__ = ["COOKIE_PERIOD", "SECRET_SIZE", "CookieJar"]

COOKIE_PERIOD = 10.0  # seconds per bucket: a cookie is good for 10..20 s, far more than a round trip
SECRET_SIZE = 32  # bytes: BLAKE2s's largest key
_FIELDS = struct.Struct(">qII")  # bucket, src id, ISN
_PERSON = b"crustck2"  # BLAKE2s personalisation, 8 bytes: rudp v2 cookies and nothing else


class CookieJar:
    """Makes and checks the cookies of one socket (sans-IO: ``now`` comes from the caller)."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        """Key the jar.

        Args:
            secret: ``SECRET_SIZE`` random bytes (the caller's CSPRNG), never sent.

        Raises:
            TypeError: ``secret`` is not bytes.
            ValueError: ``secret`` is not ``SECRET_SIZE`` bytes.
        """
        if not isinstance(secret, bytes):
            raise TypeError(f"secret must be bytes, got {type(secret).__name__}")
        if len(secret) != SECRET_SIZE:
            raise ValueError(f"secret must be {SECRET_SIZE} bytes, got {len(secret)}")
        self._secret = secret

    def make(self, addr: tuple[str, int], src: int, isn: int, now: float) -> bytes:
        """The cookie for a SYN from ``addr`` with id ``src`` and ISN ``isn``, now.

        Returns:
            ``COOKIE_SIZE`` bytes.
        """
        return self._tag(int(now // COOKIE_PERIOD), addr, src, isn)

    def check(self, cookie: bytes, addr: tuple[str, int], src: int, isn: int, now: float) -> bool:
        """True if ``cookie`` was made for this SYN in this bucket or the one before (constant-time)."""
        bucket = int(now // COOKIE_PERIOD)
        # Both tags are always computed: the time taken says nothing about which bucket matched.
        fresh = hmac.compare_digest(cookie, self._tag(bucket, addr, src, isn))
        old = hmac.compare_digest(cookie, self._tag(bucket - 1, addr, src, isn))
        return fresh | old

    def _tag(self, bucket: int, addr: tuple[str, int], src: int, isn: int) -> bytes:
        host, port = addr
        data = _FIELDS.pack(bucket, src, isn) + port.to_bytes(2, "big") + host.encode()
        return hashlib.blake2s(data, key=self._secret, digest_size=COOKIE_SIZE, person=_PERSON).digest()
