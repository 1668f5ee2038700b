"""Transport-cipher negotiation in the secure handshake (crust.handshake.negotiate, docs/protocol.md §3.3).

Every pair of preferences agrees on the documented cipher; a tampered offer
or choice fails the handshake (both are bound into the Noise transcript); a
peer that does not negotiate -- an older crust, or the noiseprotocol package
with its empty payloads -- gets ChaCha20-Poly1305.
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crust.crypto.aead import Cipher
from crust.crypto.kex import NoiseXX
from crust.crypto.keys import KeyPair
from crust.crypto.ranking import available_ciphers
from crust.errors import HandshakeError
from crust.handshake.negotiate import CHOICE, OFFER, choose, encode_choice, encode_offer, read_choice, read_offer
from crust.handshake.secure import MAX_HANDSHAKE_MESSAGE, PREAMBLE, SecureHandshake
from crust.handshake.states import SecureInput
from crust.ids import name_hash
from crust.wire.framing import HandshakeDecoder, encode_handshake_message
from crust.wire.messages import Data, Heartbeat

from tests.helpers import both_modes, feed, run_handshake, transfer
from tests.test_kex import noise_peer

CHACHA, GCM, OCB = Cipher.CHACHA20_POLY1305, Cipher.AES_256_GCM, Cipher.AES_256_OCB
NAME_HASH = name_hash(None)
PROLOGUE = PREAMBLE + NAME_HASH

pytestmark = pytest.mark.skipif(
    set(available_ciphers()) != {CHACHA, GCM, OCB},
    reason="this CPU lacks AES-NI or PCLMULQDQ: crust offers only ChaCha20-Poly1305 here",
)


def preferences() -> list[tuple[Cipher, ...]]:
    """Every valid preference: each subset holding ChaCha20-Poly1305, in every order (11 in all)."""
    found = []
    for extra in ([], [GCM], [OCB], [GCM, OCB]):
        found += itertools.permutations([CHACHA, *extra])
    return found


def pair(ours: Sequence[Cipher] | None, theirs: Sequence[Cipher] | None) -> tuple[SecureHandshake, SecureHandshake]:
    """An initiator preferring ``ours`` and a responder preferring ``theirs`` (None: the process default)."""
    return (
        SecureHandshake(initiator=True, static=KeyPair.generate(), name_hash=NAME_HASH, max_message_size=4096,
                        ciphers=ours),
        SecureHandshake(initiator=False, static=KeyPair.generate(), name_hash=NAME_HASH, max_message_size=4096,
                        ciphers=theirs),
    )


def expected_choice(initiator: Sequence[Cipher], responder: Sequence[Cipher]) -> Cipher:
    """docs/protocol.md §3.3 in words: lowest sum of positions; a tie goes to the initiator's order."""
    best: Cipher | None = None
    for cipher in initiator:
        if cipher in responder:
            score = initiator.index(cipher) + responder.index(cipher)
            if best is None or score < initiator.index(best) + responder.index(best):
                best = cipher
    assert best is not None
    return best


def assert_channels_work(a: SecureHandshake, b: SecureHandshake) -> None:
    assert a.channel is not None and b.channel is not None
    assert b.channel.receive_data(a.channel.encode(Heartbeat(7))) == [Heartbeat(7)]
    assert a.channel.receive_data(b.channel.encode(Data(1, b"x" * 3000))) == [Data(1, b"x" * 3000)]


# -- the rule -------------------------------------------------------------------------------

@pytest.mark.parametrize(("ours", "theirs", "chosen"), [
    ((OCB, GCM, CHACHA), (OCB, GCM, CHACHA), OCB),
    ((OCB, GCM, CHACHA), (CHACHA,), CHACHA),  # a peer without hardware AES offers only ChaCha
    ((OCB, GCM, CHACHA), (GCM, CHACHA, OCB), GCM),  # GCM 1 + 0 beats OCB 0 + 2: both sides count
    ((GCM, OCB, CHACHA), (OCB, GCM, CHACHA), GCM),  # a tie (1 + 0, 0 + 1): the initiator's order
    ((CHACHA, OCB, GCM), (GCM, OCB, CHACHA), CHACHA),  # all three score 2: the initiator's order
    ((CHACHA, OCB, GCM), (OCB, GCM, CHACHA), OCB),  # OCB 1 + 0 beats ChaCha 0 + 2
    ((OCB, CHACHA), None, CHACHA),  # no offer: a peer that does not negotiate
])
def test_choose(ours: tuple[Cipher, ...], theirs: tuple[Cipher, ...] | None, chosen: Cipher) -> None:
    assert choose(ours, theirs) is chosen


def test_payload_bytes() -> None:
    assert encode_offer([OCB, GCM, CHACHA]) == bytes([OFFER, 3, 3, 2, 1])
    assert encode_choice(GCM) == bytes([CHOICE, 1, 2])
    assert read_offer(encode_offer([OCB, CHACHA])) == (OCB, CHACHA)
    assert read_choice(encode_choice(OCB), (OCB, CHACHA)) is OCB


@pytest.mark.parametrize(("payload", "offer"), [
    (b"", None),  # an older crust or a plain Noise peer: no offer at all
    (bytes([9, 2, 0xAA, 0xBB]), None),  # only an item of a kind we do not know
    (bytes([9, 0, OFFER, 2, 1, 3]), (CHACHA, OCB)),  # unknown items are skipped
    (bytes([OFFER, 3, 200, 1, 2]), (CHACHA, GCM)),  # so are cipher ids we do not know
    (bytes([CHOICE, 1, 3, OFFER, 1, 1]), (CHACHA,)),  # a choice in message 2 means nothing
])
def test_read_offer(payload: bytes, offer: tuple[Cipher, ...] | None) -> None:
    assert read_offer(payload) == offer


@pytest.mark.parametrize(("payload", "match"), [
    (bytes([OFFER]), "truncated item header"),
    (bytes([OFFER, 3, 1, 2]), "runs past"),
    (bytes([OFFER, 1, 1, OFFER, 1, 1]), "repeated"),
    (bytes([OFFER, 2, 1, 1]), "offered twice"),
    (bytes([OFFER, 2, 2, 3]), "lacks chacha20-poly1305"),
    (bytes([OFFER, 0]), "lacks chacha20-poly1305"),
])
def test_bad_offers(payload: bytes, match: str) -> None:
    with pytest.raises(HandshakeError, match=match) as info:
        read_offer(payload)
    assert info.value.reason == "bad_handshake"


@pytest.mark.parametrize(("payload", "chosen"), [
    (b"", CHACHA),  # a peer that does not negotiate
    (bytes([7, 1, 0]), CHACHA),
    (bytes([CHOICE, 1, 3]), OCB),
])
def test_read_choice(payload: bytes, chosen: Cipher) -> None:
    assert read_choice(payload, (OCB, GCM, CHACHA)) is chosen


@pytest.mark.parametrize("payload", [bytes([CHOICE, 1, 2]), bytes([CHOICE, 1, 9]), bytes([CHOICE, 2, 1, 3]),
                                     bytes([CHOICE, 0]), bytes([CHOICE, 1])])
def test_bad_choices(payload: bytes) -> None:
    with pytest.raises(HandshakeError) as info:
        read_choice(payload, (OCB, CHACHA))  # GCM (2) was not offered; 9 is no cipher
    assert info.value.reason == "bad_handshake"


@given(st.binary(max_size=40))
def test_hostile_payloads_raise_only_handshake_errors(payload: bytes) -> None:
    for parse in (read_offer, lambda p: read_choice(p, (OCB, GCM, CHACHA))):
        try:
            parse(payload)
        except HandshakeError:
            pass


# -- whole handshakes ---------------------------------------------------------------------------

def test_every_pair_of_preferences_agrees_on_the_documented_cipher() -> None:
    seen = set()
    for ours, theirs in itertools.product(preferences(), repeat=2):
        a, b = pair(ours, theirs)
        run_handshake(a, b)
        assert a.cipher is b.cipher is expected_choice(ours, theirs), (ours, theirs)
        assert a.channel is not None and a.channel.cipher is a.cipher
        assert_channels_work(a, b)
        seen.add(a.cipher)
    assert seen == {CHACHA, GCM, OCB}


@both_modes
def test_default_preference_and_message_sizes(one_byte: bool) -> None:
    a, b = pair(None, None)
    transfer(a, b, one_byte=one_byte)
    flight = b.data_to_send()
    offer_size = 2 + len(available_ciphers())
    assert len(flight) == 8 + 3 + 32 + 48 + offer_size + 16  # preamble, header, e, s, offer, tag
    feed(a.receive_data, flight, one_byte=one_byte)
    assert len(a.data_to_send()) == 3 + 48 + 3 + 16  # header, s, choice, tag
    assert a.cipher is not None and a.cipher in available_ciphers()
    assert b.cipher is None  # the responder learns the choice from message 3


def _tamper_every_byte(region: range, flight: int) -> None:
    """Flip each byte in ``region`` of handshake flight ``flight`` (2: NOISE2, 3: NOISE3) in a fresh handshake."""
    for index in region:
        a, b = pair((OCB, GCM, CHACHA), (GCM, OCB, CHACHA))
        transfer(a, b)
        if flight == 2:
            data = bytearray(b.data_to_send())
            data[index] ^= 0x01
            victim = a
        else:
            transfer(b, a)
            data = bytearray(a.data_to_send())
            data[index] ^= 0x80
            victim = b
        with pytest.raises(HandshakeError) as info:
            victim.receive_data(bytes(data))
        assert info.value.reason == "bad_handshake", index
        assert victim.channel is None and victim.cipher is None
        if victim is a:
            assert a.data_to_send() == b""  # no message 3: the initiator never reveals itself


def test_a_tampered_offer_fails_the_handshake() -> None:
    # NOISE2 = preamble 8, header 3, e 32, encrypted s 48, then the offer (5) and its tag (16).
    _tamper_every_byte(range(8 + 3 + 32 + 48, 8 + 3 + 32 + 48 + 5 + 16), flight=2)


def test_a_tampered_choice_fails_the_handshake() -> None:
    # NOISE3 = header 3, encrypted s 48, then the choice (3) and its tag (16).
    _tamper_every_byte(range(3 + 48, 3 + 48 + 3 + 16), flight=3)


# -- peers driven by hand: a raw Noise machine (ours or noiseprotocol's) in crust's framing --------

class RawPeer:
    """One side of crust's handshake framing around any Noise XX object with write/read_message.

    It sends exactly the payloads a test gives it, so it plays an older crust
    (empty payloads), the noiseprotocol package, or a peer that lies.
    """

    def __init__(self, noise: Any) -> None:
        self.noise = noise
        self.decoder = HandshakeDecoder(MAX_HANDSHAKE_MESSAGE)
        self.preamble_seen = False

    def send(self, payload: bytes, *, first: bool = False) -> bytes:
        body = bytes(self.noise.write_message(payload))
        if first:  # the initiator's HELLO carries the name hash in clear
            return PREAMBLE + encode_handshake_message(SecureInput.HELLO, NAME_HASH + body)
        return encode_handshake_message(SecureInput.NOISE, body)

    def receive(self, data: bytes) -> bytes:
        """The payload of the one handshake message in ``data``."""
        if not self.preamble_seen:
            assert data[:8] == PREAMBLE
            data, self.preamble_seen = data[8:], True
        self.decoder.receive_data(data)
        message = self.decoder.next_message()
        assert message is not None
        kind, body = message
        if kind == SecureInput.HELLO:
            assert body[:32] == NAME_HASH
            body = body[32:]
        return bytes(self.noise.read_message(body))


def raw_responder(payload2: bytes, crust_prefers: Sequence[Cipher] = (OCB, GCM, CHACHA)) -> tuple[SecureHandshake, RawPeer]:
    """A crust initiator that has sent HELLO and received a raw NOISE2 with ``payload2``."""
    a = SecureHandshake(initiator=True, static=KeyPair.generate(), name_hash=NAME_HASH, max_message_size=1024,
                        ciphers=crust_prefers)
    raw = RawPeer(NoiseXX(initiator=False, static=KeyPair.generate(), prologue=PROLOGUE))
    assert raw.receive(a.data_to_send()) == b""
    a.receive_data(PREAMBLE + raw.send(payload2))
    return a, raw


def raw_initiator(payload3: bytes) -> tuple[SecureHandshake, RawPeer, bytes]:
    """A crust responder that got a raw HELLO; returns it, the raw peer, and the offer it made."""
    b = SecureHandshake(initiator=False, static=KeyPair.generate(), name_hash=NAME_HASH, max_message_size=1024,
                        ciphers=(OCB, GCM, CHACHA))
    raw = RawPeer(NoiseXX(initiator=True, static=KeyPair.generate(), prologue=PROLOGUE))
    b.receive_data(raw.send(b"", first=True))
    offer = raw.receive(b.data_to_send())
    return b, raw, offer


def test_a_responder_that_makes_no_offer_gets_chacha_and_no_choice() -> None:
    a, raw = raw_responder(b"")
    assert a.complete and a.cipher is CHACHA
    assert raw.receive(a.data_to_send()) == b""  # an older peer is sent nothing it would not expect


def test_an_initiator_that_makes_no_choice_gets_chacha() -> None:
    b, raw, offer = raw_initiator(b"")
    assert read_offer(offer) == (OCB, GCM, CHACHA)
    b.receive_data(raw.send(b""))
    assert b.complete and b.cipher is CHACHA


def test_a_responder_offering_unknown_ciphers_too_still_agrees() -> None:
    a, raw = raw_responder(bytes([OFFER, 3, 77, 2, 1]))
    assert a.cipher is GCM
    assert raw.receive(a.data_to_send()) == encode_choice(GCM)


@pytest.mark.parametrize("payload2", [bytes([OFFER, 1, 3]), bytes([OFFER, 2, 1, 1]), bytes([OFFER, 5, 1])])
def test_an_authenticated_but_invalid_offer_fails(payload2: bytes) -> None:
    with pytest.raises(HandshakeError) as info:
        raw_responder(payload2)
    assert info.value.reason == "bad_handshake"


@pytest.mark.parametrize("payload3", [encode_choice(GCM)[:2] + b"\x09", bytes([CHOICE, 1, 2, CHOICE, 1, 2])])
def test_an_authenticated_but_invalid_choice_fails(payload3: bytes) -> None:
    b, raw, _ = raw_initiator(b"")
    with pytest.raises(HandshakeError) as info:
        b.receive_data(raw.send(payload3))
    assert info.value.reason == "bad_handshake" and b.channel is None


def test_a_choice_the_responder_did_not_offer_fails() -> None:
    b = SecureHandshake(initiator=False, static=KeyPair.generate(), name_hash=NAME_HASH, max_message_size=1024,
                        ciphers=(CHACHA,))
    raw = RawPeer(NoiseXX(initiator=True, static=KeyPair.generate(), prologue=PROLOGUE))
    b.receive_data(raw.send(b"", first=True))
    assert read_offer(raw.receive(b.data_to_send())) == (CHACHA,)
    with pytest.raises(HandshakeError, match="did not offer"):
        b.receive_data(raw.send(encode_choice(OCB)))


# -- interop: the noiseprotocol package, whose payloads are empty --------------------------------

def test_interop_noiseprotocol_initiator_gets_chacha() -> None:
    theirs = noise_peer(True, KeyPair.generate(), PROLOGUE)
    raw = RawPeer(theirs)
    b = SecureHandshake(initiator=False, static=KeyPair.generate(), name_hash=NAME_HASH, max_message_size=1024,
                        ciphers=(OCB, GCM, CHACHA))
    b.receive_data(raw.send(b"", first=True))
    assert read_offer(raw.receive(b.data_to_send())) == (OCB, GCM, CHACHA)  # read, and ignored by them
    b.receive_data(raw.send(b""))
    assert b.complete and b.cipher is CHACHA and b.channel is not None
    # Their transport phase is plain Noise ChaChaPoly: each side reads the other's frames.
    records = bytes(theirs.decrypt(b.channel.encode(Heartbeat(3))[4:]))  # crust -> noiseprotocol
    reply = bytes(theirs.encrypt(records))  # noiseprotocol -> crust: the same records back
    assert b.channel.receive_data(len(reply).to_bytes(4, "big") + reply) == [Heartbeat(3)]


def test_interop_noiseprotocol_responder_gets_chacha() -> None:
    theirs = noise_peer(False, KeyPair.generate(), PROLOGUE)
    raw = RawPeer(theirs)
    a = SecureHandshake(initiator=True, static=KeyPair.generate(), name_hash=NAME_HASH, max_message_size=1024,
                        ciphers=(OCB, GCM, CHACHA))
    assert raw.receive(a.data_to_send()) == b""
    a.receive_data(PREAMBLE + raw.send(b""))
    assert a.complete and a.cipher is CHACHA and a.channel is not None
    assert raw.receive(a.data_to_send()) == b""
    frame = a.channel.encode(Data(0, b"hello noise"))
    assert bytes(theirs.decrypt(frame[4:]))[-11:] == b"hello noise"
