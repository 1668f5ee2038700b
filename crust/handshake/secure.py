"""SecureHandshake: preamble, then Noise XX, then a SecureChannel (PROTOCOL.md §2-§3).

Theory of operation.  Both sides first send the 8-byte preamble (magic and
protocol version); anything that is not crust is refused after 8 bytes.
Handshake messages are ``u8 type ‖ u16 length ‖ body``, at most
``MAX_HANDSHAKE_MESSAGE`` bytes, so a hostile peer can make us buffer only
a few hundred bytes before we give up on it.

* initiator → HELLO: network-name hash (in clear) ‖ Noise ``-> e``
* responder → NOISE: Noise ``<- e, ee, s, es`` with its cipher offer as the
  encrypted payload   (or REJECT(reason) and close)
* initiator → NOISE: Noise ``-> s, se`` with its cipher choice as the payload

The payloads agree on the transport AEAD (:mod:`crust.handshake.negotiate`
says how, and why no attacker can change the outcome); the channel is keyed
from Noise ``Split()`` with it.

The Noise prologue is the preamble plus the network-name hash, so peers of
different networks could never finish anyway; the hash in HELLO only makes
the failure say "wrong network" instead of "decrypt error".  The
initiator checks the responder's static key against the PeerId it expected
(if any) before it sends its own identity: a man in the middle learns
nothing.  Bytes that follow the last handshake message are the channel's
first frames (``trailing_data``, as in wsproto).
"""

from __future__ import annotations

import struct
from typing import Sequence

from ..channel import SecureChannel
from ..crypto.aead import Cipher
from ..crypto.kex import NoiseXX
from ..crypto.keys import KeyPair
from ..crypto.ranking import check_preference, preferred_ciphers
from ..errors import HandshakeError, LocalProtocolError, RemoteProtocolError
from ..ids import NAME_HASH_SIZE, PeerId
from ..wire.framing import HandshakeDecoder, encode_handshake_message
from .negotiate import choose, encode_choice, encode_offer, read_choice, read_offer
from .states import SECURE, Role, SecureInput, SecureState, transition

__all__ = ["SecureHandshake", "PREAMBLE", "PROTOCOL_VERSION", "MAGIC", "MAX_HANDSHAKE_MESSAGE", "RejectReason"]

MAGIC = b"\xc3CRUST"
PROTOCOL_VERSION = 1
PREAMBLE = MAGIC + struct.pack(">H", PROTOCOL_VERSION)
MAX_HANDSHAKE_MESSAGE = 512  # bytes; the largest real one is 96 + the cipher offer (5 bytes today)


class RejectReason:
    """REJECT reason codes (u8) and their names."""

    NETWORK_MISMATCH = 1
    NAMES = {NETWORK_MISMATCH: "network_mismatch"}


class SecureHandshake:
    """One side of the secure handshake over one byte stream.

    Drive it with :meth:`receive_data` and send what :meth:`data_to_send`
    returns.  When :attr:`complete`, take :attr:`channel`, :attr:`peer_id`
    and :attr:`trailing_data`.  After an error the machine is dead; send
    whatever :meth:`data_to_send` still holds (a REJECT), then close.

    Args:
        initiator: True for the side that dialled.
        static: our long-term key pair.
        name_hash: the network-name hash (32 bytes).
        max_message_size: the channel's largest message.
        expected_peer: the initiator aborts unless the responder is this peer.
        ciphers: our transport-cipher preference, best first; by default
            this process's measured one
            (:func:`crust.crypto.ranking.preferred_ciphers`).

    Raises:
        LocalProtocolError: ``name_hash`` is not 32 bytes.
        TypeError, ValueError: ``ciphers`` is not a valid preference
            (:func:`crust.crypto.ranking.check_preference`).
    """

    def __init__(
        self,
        *,
        initiator: bool,
        static: KeyPair,
        name_hash: bytes,
        max_message_size: int,
        expected_peer: PeerId | None = None,
        ciphers: Sequence[Cipher] | None = None,
    ) -> None:
        if len(name_hash) != NAME_HASH_SIZE:
            raise LocalProtocolError("name hash must be 32 bytes")
        self._ciphers = preferred_ciphers() if ciphers is None else check_preference(ciphers)
        self._role = Role.INITIATOR if initiator else Role.RESPONDER
        self._static = static
        self._name_hash = name_hash
        self._expected = expected_peer
        self._max_message_size = max_message_size
        self._noise = NoiseXX(initiator=initiator, static=static, prologue=PREAMBLE + name_hash)
        self._state = SecureState.EXPECT_PREAMBLE
        self._preamble = bytearray()
        self._decoder = HandshakeDecoder(MAX_HANDSHAKE_MESSAGE)
        self._out = bytearray(PREAMBLE)
        self._failed = False
        self.channel: SecureChannel | None = None
        self.peer_id: PeerId | None = None
        self.session_id = b""  # set when complete: the Noise handshake hash
        self.path_key = b""  # set when complete: the secret rUDP tags its datagrams with (NoiseXX.path_key)
        self.cipher: Cipher | None = None  # set when complete: the negotiated transport AEAD
        self.trailing_data = b""
        if initiator:
            self._out += encode_handshake_message(SecureInput.HELLO, name_hash + self._noise.write_message())

    @property
    def complete(self) -> bool:
        """True once the channel is ready."""
        return self._state is SecureState.DONE

    @property
    def state(self) -> SecureState:
        """What the machine waits for."""
        return self._state

    def data_to_send(self) -> bytes:
        """Bytes to write to the stream now (possibly empty)."""
        out = bytes(self._out)
        self._out.clear()
        return out

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the stream.

        Raises:
            HandshakeError: the peer is not crust, speaks another version or
                network, is not who we expected, or sent a bad message
                (``reason`` names which).
        """
        if self._failed:
            raise LocalProtocolError("handshake already failed")
        if self._state is SecureState.DONE:
            raise LocalProtocolError("handshake already complete; feed the channel")
        try:
            self._receive(data)
        except RemoteProtocolError as exc:
            self._failed = True
            if isinstance(exc, HandshakeError) and exc.reason != "protocol":
                raise
            # One name for "malformed handshake", whichever layer noticed (crypto.kex's
            # errors carry the generic default reason).
            raise HandshakeError(str(exc), reason="bad_handshake") from exc
        except LocalProtocolError as exc:  # a table miss caused by the peer's input (h11's re-label)
            self._failed = True
            raise HandshakeError(f"unexpected handshake message: {exc}", reason="bad_handshake") from exc

    def _receive(self, data: bytes) -> None:
        if self._state is SecureState.EXPECT_PREAMBLE:
            need = len(PREAMBLE) - len(self._preamble)
            self._preamble += data[:need]
            data = data[need:]
            if len(self._preamble) < len(PREAMBLE):
                if not PREAMBLE.startswith(bytes(self._preamble[: len(MAGIC)])):
                    raise HandshakeError("peer does not speak crust", reason="not_crust")
                return
            self._check_preamble(bytes(self._preamble))
            self._state = transition(SECURE, (self._role, self._state, SecureInput.PREAMBLE))
        self._decoder.receive_data(data)
        while self._state is not SecureState.DONE and (message := self._decoder.next_message()) is not None:
            kind, body = message
            if kind == SecureInput.REJECT:
                reason = RejectReason.NAMES.get(body[0] if body else -1, "rejected")
                raise HandshakeError(f"peer rejected the handshake: {reason}", reason=reason)
            try:
                event = SecureInput(kind)
            except ValueError:
                raise HandshakeError(f"unknown handshake message type {kind}", reason="bad_handshake") from None
            next_state = transition(SECURE, (self._role, self._state, event))
            getattr(self, f"_on_{event.name.lower()}")(body)
            self._state = next_state
        if self._state is SecureState.DONE:
            self.trailing_data = self._decoder.take_rest()

    def _check_preamble(self, preamble: bytes) -> None:
        if not preamble.startswith(MAGIC):
            raise HandshakeError("peer does not speak crust", reason="not_crust")
        (version,) = struct.unpack(">H", preamble[len(MAGIC):])
        if version != PROTOCOL_VERSION:
            raise HandshakeError(
                f"peer speaks crust protocol version {version}, we speak {PROTOCOL_VERSION}",
                reason="version_mismatch",
            )

    def _on_hello(self, body: bytes) -> None:
        their_hash, noise1 = body[:NAME_HASH_SIZE], body[NAME_HASH_SIZE:]
        if len(their_hash) != NAME_HASH_SIZE:
            raise HandshakeError("HELLO too short", reason="bad_handshake")
        if their_hash != self._name_hash:
            self._out += encode_handshake_message(SecureInput.REJECT, bytes([RejectReason.NETWORK_MISMATCH]))
            raise HandshakeError("peer belongs to another network", reason="network_mismatch")
        self._noise.read_message(noise1)  # message 1's payload: empty (a later version may fill it)
        offer = encode_offer(self._ciphers)
        self._out += encode_handshake_message(SecureInput.NOISE, self._noise.write_message(offer))

    def _on_noise(self, body: bytes) -> None:
        payload = self._noise.read_message(body)
        remote = self._noise.remote_static
        assert remote is not None  # Noise XX delivers s in message 2 and 3
        peer_id = PeerId(remote)
        if remote == self._static.public_bytes:
            raise HandshakeError("connected to ourselves", reason="self_connect")
        if self._role is Role.INITIATOR:
            if self._expected is not None and peer_id != self._expected:
                # Checked before we reveal our own static key in message 3.
                raise HandshakeError(
                    f"peer at this address is {peer_id!r}, expected {self._expected!r}", reason="peer_id_mismatch"
                )
            offer = read_offer(payload)
            cipher = choose(self._ciphers, offer)
            # No choice for a responder that offered nothing: it would not read one.
            choice = b"" if offer is None else encode_choice(cipher)
            self._out += encode_handshake_message(SecureInput.NOISE, self._noise.write_message(choice))
        else:
            cipher = read_choice(payload, self._ciphers)
        sealer, opener = self._noise.split(cipher)
        self.cipher = cipher
        self.session_id = self._noise.handshake_hash  # the same on both sides, unique per connection
        self.path_key = self._noise.path_key
        self.peer_id = peer_id
        self.channel = SecureChannel(sealer, opener, max_message_size=self._max_message_size)
