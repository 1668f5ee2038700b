"""The transport-cipher negotiation carried in the Noise payloads (docs/protocol.md §3.3).

Theory of operation.  Noise XX messages 2 and 3 carry encrypted payloads.
The responder puts its cipher *offer* in message 2: the ciphers it accepts,
best first.  The initiator, who then knows both lists, puts its *choice* in
message 3.  Both payloads are AEAD-encrypted under keys that only the
authenticated sender can have made (message 2 after ``es``, message 3 after
``se``) with the transcript hash ``h`` as associated data, and their
ciphertexts are mixed into ``h``; an attacker who changes a byte makes the
next decryption fail, so it can neither read the preferences nor downgrade
the choice.

The choice: of the ciphers both list, the one with the smallest sum of its
positions in the two lists (each side measured its own, see
:mod:`crust.crypto.ranking`); a tie goes to the initiator's order.  A peer
that sends no offer (an older crust, or a plain Noise implementation whose
payloads are empty) gets ChaCha20-Poly1305, and so does a responder that
offered but hears no choice; every offer must include ChaCha20-Poly1305.

Payload layout: a run of items ``u8 tag ‖ u8 length ‖ value``.  Tag 1 is the
offer (one u8 cipher id per cipher, best first), tag 2 the choice (one u8).
Other tags, and ids we do not know, are skipped, which leaves room for later
extensions; a truncated item, a repeated tag or an id listed twice is a
``bad_handshake``.
"""

from __future__ import annotations

from typing import Sequence

from ..crypto.aead import Cipher
from ..errors import HandshakeError

__all__ = ["OFFER", "CHOICE", "encode_offer", "encode_choice", "read_offer", "read_choice", "choose"]

OFFER = 1  # tag: the responder's ciphers, best first (Noise message 2)
CHOICE = 2  # tag: the cipher the initiator picked (Noise message 3)
FALLBACK = Cipher.CHACHA20_POLY1305  # what a peer that does not negotiate gets


def _bad(msg: str) -> HandshakeError:
    return HandshakeError(f"bad cipher negotiation: {msg}", reason="bad_handshake")


def _items(payload: bytes) -> dict[int, bytes]:
    """The payload's items by tag; raises ``bad_handshake`` if it is malformed."""
    items: dict[int, bytes] = {}
    pos, end = 0, len(payload)
    while pos < end:
        if end - pos < 2:
            raise _bad("truncated item header")
        tag, length = payload[pos], payload[pos + 1]
        pos += 2 + length
        if pos > end:
            raise _bad(f"item {tag} runs past the payload")
        if tag in items:
            raise _bad(f"item {tag} repeated")
        items[tag] = payload[pos - length:pos]
    return items


def encode_offer(preference: Sequence[Cipher]) -> bytes:
    """Message 2's payload: our ciphers, best first (an already validated preference)."""
    return bytes([OFFER, len(preference), *preference])


def encode_choice(cipher: Cipher) -> bytes:
    """Message 3's payload: the cipher we picked."""
    return bytes([CHOICE, 1, cipher])


def read_offer(payload: bytes) -> tuple[Cipher, ...] | None:
    """The responder's offer in message 2, ids we do not know left out; None when it sent none.

    Raises:
        HandshakeError: (``bad_handshake``) malformed items, an id listed
            twice, or an offer without ChaCha20-Poly1305.
    """
    value = _items(payload).get(OFFER)
    if value is None:
        return None
    if len(set(value)) != len(value):
        raise _bad("a cipher offered twice")
    if FALLBACK not in value:
        raise _bad("the offer lacks chacha20-poly1305")
    known = set(Cipher)
    return tuple(Cipher(byte) for byte in value if byte in known)


def read_choice(payload: bytes, offered: Sequence[Cipher]) -> Cipher:
    """The initiator's choice in message 3; ChaCha20-Poly1305 when it made none.

    Args:
        payload: message 3's payload.
        offered: what we put in our offer.

    Raises:
        HandshakeError: (``bad_handshake``) malformed items, or a choice that
            is not one byte or not a cipher we offered.
    """
    value = _items(payload).get(CHOICE)
    if value is None:
        return FALLBACK
    if len(value) != 1 or value[0] not in offered:
        raise _bad(f"the peer chose {value.hex() or 'nothing'}, which we did not offer")
    return Cipher(value[0])


def choose(ours: Sequence[Cipher], offer: Sequence[Cipher] | None) -> Cipher:
    """The initiator's pick: smallest sum of positions in both lists, ties to ``ours``.

    Args:
        ours: our preference, best first (includes ChaCha20-Poly1305).
        offer: the responder's offer, or None if it made none.

    Returns:
        The cipher for the channel.
    """
    if offer is None:
        return FALLBACK
    theirs = {cipher: rank for rank, cipher in enumerate(offer)}
    common = [(rank + theirs[cipher], rank, cipher) for rank, cipher in enumerate(ours) if cipher in theirs]
    # ChaCha20-Poly1305 is in both lists, so ``common`` is never empty.
    return min(common)[2]
