"""X25519 key pairs: a peer's long-term identity key and the handshake's ephemeral keys.

A :class:`KeyPair` holds a 32-byte X25519 private key (RFC 7748 §5) and its
public key; the public key *is* the peer's :class:`~crust.ids.PeerId`.
:meth:`KeyPair.dh` is Noise's ``DH()`` (Noise spec rev 34, §12.1): the raw
X25519 shared secret, refusing the low-order public keys that would make it
all zeros.  Nothing here touches files; ``crust.identity`` stores keys.
"""

from __future__ import annotations

import hmac
import secrets
from typing import TypeVar

from Crypto.Protocol.DH import import_x25519_private_key, import_x25519_public_key, key_agreement
from Crypto.PublicKey.ECC import EccKey

from crust.errors import HandshakeError
from crust.ids import PeerId

__all__ = ["KEY_SIZE", "KeyPair", "check_public_key"]

KEY_SIZE = 32  # bytes: X25519 private keys, public keys and shared secrets

_ZEROS = bytes(KEY_SIZE)
_K = TypeVar("_K", bound="KeyPair")


def _raw(secret: bytes) -> bytes:
    # key_agreement() insists on a KDF; Noise wants the bare shared secret
    # and hashes it itself (MixKey), so this one returns its input.
    return bytes(secret)


def _import_public(public: object) -> EccKey:
    if not isinstance(public, (bytes, bytearray, memoryview)):
        raise TypeError(f"an X25519 public key must be bytes, not {type(public).__name__}")
    raw = bytes(public)
    if len(raw) != KEY_SIZE:
        raise HandshakeError(f"X25519 public key must be {KEY_SIZE} bytes, got {len(raw)}", reason="bad_key")
    try:
        # pycryptodome refuses the u-coordinates of small order here
        # (0, 1, p-1 and the two points of order 8; cr.yp.to/ecdh.html#validate).
        return import_x25519_public_key(raw)
    except ValueError:
        raise HandshakeError("X25519 public key is a low-order point", reason="bad_key") from None


def check_public_key(public: bytes) -> None:
    """Check that ``public`` is a usable X25519 public key, without a scalar multiplication.

    The handshake calls this when a key arrives, so a bad key is reported by
    ``read_message`` rather than later, when our own reply is computed.

    Args:
        public: 32 bytes received from a peer.

    Raises:
        HandshakeError: (``reason="bad_key"``) wrong length or a low-order point.
        TypeError: ``public`` is not bytes-like.
    """
    _import_public(public)


class KeyPair:
    """X25519 static or ephemeral key pair.

    Args:
        private: the 32-byte private key.  Any 32 bytes will do: X25519 clamps
            the scalar itself (RFC 7748 §5), so the bytes are kept as given.

    Raises:
        TypeError: ``private`` is not bytes-like.
        ValueError: ``private`` is not 32 bytes.
    """

    __slots__ = ("_private", "_public", "_key", "_peer_id")

    def __init__(self, private: bytes) -> None:
        if not isinstance(private, (bytes, bytearray, memoryview)):
            raise TypeError(f"a private key must be bytes, not {type(private).__name__}")
        raw = bytes(private)
        if len(raw) != KEY_SIZE:
            raise ValueError(f"an X25519 private key must be {KEY_SIZE} bytes, got {len(raw)}")
        self._private = raw
        self._key = import_x25519_private_key(raw)
        # The public half costs one scalar multiplication: compute it once.
        self._public: bytes = self._key.public_key().export_key(format="raw")
        self._peer_id = PeerId(self._public)

    @classmethod
    def generate(cls: type[_K]) -> _K:
        """Make a key pair from 32 fresh bytes of the OS's CSPRNG.

        Returns:
            A new key pair (of the class it is called on).
        """
        return cls(secrets.token_bytes(KEY_SIZE))

    @property
    def private_bytes(self) -> bytes:
        """The 32-byte private key.  Keep it secret."""
        return self._private

    @property
    def public_bytes(self) -> bytes:
        """The 32-byte public key (an RFC 7748 u-coordinate)."""
        return self._public

    @property
    def peer_id(self) -> PeerId:
        """The PeerId this key pair proves: ``PeerId(public_bytes)``."""
        return self._peer_id

    def dh(self, their_public: bytes) -> bytes:
        """Noise ``DH(key_pair, public_key)``: the raw X25519 shared secret.

        Args:
            their_public: the other side's 32-byte public key.

        Returns:
            The 32-byte shared secret.

        Raises:
            HandshakeError: (``reason="bad_key"``) ``their_public`` is not 32 bytes,
                or is a low-order point, which would make the secret all zeros
                and let an attacker fix it (RFC 7748 §6.1).
            TypeError: ``their_public`` is not bytes-like.
        """
        public = _import_public(their_public)
        try:
            shared = key_agreement(static_priv=self._key, static_pub=public, kdf=_raw)
        except ValueError:
            raise HandshakeError("X25519 produced the point at infinity", reason="bad_key") from None
        # RFC 7748 §6.1: check for the all-zero output; compare_digest so that
        # the check does not leak how many leading bytes were zero.
        if hmac.compare_digest(shared, _ZEROS):
            raise HandshakeError("X25519 shared secret is all zeros", reason="bad_key")
        return shared

    def __repr__(self) -> str:
        # Never the private key: reprs end up in logs and tracebacks.
        return f"{type(self).__name__}({self._peer_id!r})"
