"""Keyed MACs for NAT-traversal probes: a punch key from two connect tokens, BLAKE2s tags.

Theory of operation
-------------------
Before ``connect()`` two peers swap connection infos out of band; each carries
a fresh random 16-byte connect token.  Both sides therefore know both tokens,
and nobody else does unless they saw the swap.  :func:`punch_key` turns the
pair into one 32-byte key, the same on both sides whatever the order
(the tokens are sorted first), with BLAKE2s in its keyed mode
(RFC 7693): ``key = BLAKE2s-256(key=min(a, b) ‖ max(a, b), data=LABEL)``.

:func:`mac` tags datagrams with keyed BLAKE2s truncated to 16 bytes through
BLAKE2's own digest-length parameter (not by cutting a longer digest), and
:func:`verify` compares tags in constant time.  :func:`short_id` gives each
peer an 8-byte name that only holders of the key can link to its PeerId, so a
punch probe can say who sent it without showing identities to the path
(the Noise handshake hides static keys; the probes must not undo that).

What this protects, and what not, is written where it is used
(:mod:`crust.nat.probe`): a tag proves "someone who knows both tokens made
these bytes", nothing about freshness or where a datagram came from.
"""

from __future__ import annotations

import hashlib
import hmac

from ..ids import check_bytes

__all__ = ["KEY_SIZE", "TAG_SIZE", "TOKEN_SIZE", "SHORT_ID_SIZE", "punch_key", "mac", "verify", "short_id"]

KEY_SIZE = 32  # bytes: BLAKE2s's largest key
TAG_SIZE = 16  # bytes: forging needs 2**128 tries; each try costs the forger a datagram
TOKEN_SIZE = 16  # bytes: a connect token (crust.connection_info.TOKEN_SIZE)
SHORT_ID_SIZE = 8  # bytes: names one side of one punch; collisions only cost a failed lookup

# Domain separation: the same tokens also authenticate ConnectRequest, so the
# punch key must be a different function of them.
_KEY_LABEL = b"crust udp punch key v1"
_ID_PERSON = b"crustpid"  # BLAKE2s personalisation, exactly 8 bytes


def punch_key(token_a: bytes, token_b: bytes) -> bytes:
    """The 32-byte key both sides of a connect derive from the two connect tokens.

    Order-independent: ``punch_key(a, b) == punch_key(b, a)``.

    Args:
        token_a: one side's 16-byte connect token.
        token_b: the other side's.

    Returns:
        ``KEY_SIZE`` bytes.

    Raises:
        TypeError: a token is not bytes-like.
        ValueError: a token is not ``TOKEN_SIZE`` bytes.
    """
    a = check_bytes("token_a", token_a, TOKEN_SIZE)
    b = check_bytes("token_b", token_b, TOKEN_SIZE)
    low, high = sorted((a, b))
    return hashlib.blake2s(_KEY_LABEL, key=low + high, digest_size=KEY_SIZE).digest()


def mac(key: bytes, data: bytes) -> bytes:
    """The ``TAG_SIZE``-byte keyed BLAKE2s tag of ``data``.

    Raises:
        TypeError: ``key`` or ``data`` is not bytes-like.
        ValueError: ``key`` is not ``KEY_SIZE`` bytes.
    """
    key = check_bytes("key", key, KEY_SIZE)
    return hashlib.blake2s(check_bytes("data", data), key=key, digest_size=TAG_SIZE).digest()


def verify(key: bytes, data: bytes, tag: bytes) -> bool:
    """True if ``tag`` is :func:`mac` of ``data`` under ``key`` (constant-time comparison).

    A tag of the wrong length is simply wrong (False): it comes from the network.

    Raises:
        TypeError: an argument is not bytes-like.
        ValueError: ``key`` is not ``KEY_SIZE`` bytes.
    """
    return hmac.compare_digest(mac(key, data), check_bytes("tag", tag))


def short_id(key: bytes, peer_id: bytes) -> bytes:
    """An 8-byte name for ``peer_id`` inside the punch keyed by ``key``.

    Both sides compute the same names for both peers; without the key the name
    says nothing about the PeerId, and it changes with every connect.

    Raises:
        TypeError: an argument is not bytes-like.
        ValueError: ``key`` is not ``KEY_SIZE`` bytes.
    """
    key = check_bytes("key", key, KEY_SIZE)
    raw = check_bytes("peer_id", peer_id)
    return hashlib.blake2s(raw, key=key, digest_size=SHORT_ID_SIZE, person=_ID_PERSON).digest()
