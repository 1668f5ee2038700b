"""The secure handshake's cryptography: Noise_XX_25519_ChaChaPoly_BLAKE2b.

Theory of operation
-------------------
Noise XX (Noise spec rev 34, §7.5) lets two peers that know nothing of each
other authenticate their long-term X25519 keys and agree on two transport
keys, in three messages::

    -> e                  initiator sends a fresh ephemeral key
    <- e, ee, s, es       responder: its ephemeral, then its static key, encrypted
    -> s, se              initiator: its static key, encrypted

Each token updates a *SymmetricState* (§5.2): ``h``, a BLAKE2b hash of the
whole transcript (starting with the protocol name and the prologue), and
``ck``, a chaining key.  Every Diffie-Hellman result (``ee``, ``es``, ``se``)
is fed to ``MixKey``, which runs HKDF (§4.3, HMAC-BLAKE2b) over ``ck`` and
installs a fresh key in the *CipherState* (§5.1).  From the first ``MixKey``
on, static keys and payloads are encrypted with ChaCha20-Poly1305 using
``h`` as associated data, so any difference in what the two sides saw
(including the prologue, which carries crust's network-name hash) makes the
next decryption fail.  After the third message ``Split()`` derives
``(k1, k2)``: the initiator sends with ``k1`` and receives with ``k2``.
Beside them, :attr:`NoiseXX.path_key` is ``HMAC-BLAKE2b(ck, "crust rudp
path v1")`` cut to 32 bytes: a secret of the two ends only (``ck`` has
mixed every DH; the transcript hash ``h`` would not do, anyone who saw the
handshake can compute it), independent of the transport keys (``Split()``
keys its HMAC with ``ck`` over an empty input).  rUDP tags its datagrams
with it (``crust.rudp.auth``).

:class:`NoiseXX` is one side's HandshakeState (§5.3): a small machine whose
only state is the index of the next message.  The initiator writes messages
0 and 2 and reads message 1; the responder does the opposite.  A message
that cannot be parsed or authenticated raises a ``RemoteProtocolError``
subclass and leaves the machine in ``ERROR``: every later call raises
``LocalProtocolError``.  Calling out of turn raises ``LocalProtocolError``
and changes nothing.  Nothing here does I/O: bytes in, bytes out.
"""

from __future__ import annotations

import enum
import hashlib
import hmac

from crust.crypto import aead
from crust.crypto.aead import Cipher, Opener, Sealer
from crust.crypto.keys import KEY_SIZE, KeyPair, check_public_key
from crust.errors import DecryptError, HandshakeError, LocalProtocolError, RemoteProtocolError

__all__ = ["PROTOCOL_NAME", "MAX_HANDSHAKE_MESSAGE", "PATH_KEY_SIZE", "NoiseXX"]

PROTOCOL_NAME = b"Noise_XX_25519_ChaChaPoly_BLAKE2b"
MAX_HANDSHAKE_MESSAGE = 65535  # bytes; Noise §3: no Noise message is longer

HASHLEN = 64  # bytes: BLAKE2b-512
DHLEN = KEY_SIZE  # bytes: an X25519 public key
TAGLEN = aead.TAG_SIZE
PATH_KEY_SIZE = 32  # bytes: a BLAKE2s key (crust.rudp.auth)
_PATH_LABEL = b"crust rudp path v1"

# The XX pattern (Noise §7.5) as data, so read and write walk the same table.
_XX: tuple[tuple[str, ...], ...] = (
    ("e",),
    ("e", "ee", "s", "es"),
    ("s", "se"),
)


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    # RFC 2104 with BLAKE2b's 128-byte block, exactly as Noise §4.3 asks;
    # the keyed mode built into BLAKE2 would give different bytes.
    return hmac.new(key, data, hashlib.blake2b).digest()


def _hkdf2(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """Noise ``HKDF(chaining_key, input_key_material, 2)`` (§4.3)."""
    temp_key = _hmac(chaining_key, ikm)
    output1 = _hmac(temp_key, b"\x01")
    output2 = _hmac(temp_key, output1 + b"\x02")
    return output1, output2


class _CipherState:
    """Noise CipherState (§5.1) for the handshake: a key (or none) and a counter."""

    __slots__ = ("k", "n")

    def __init__(self) -> None:
        self.k: bytes | None = None
        self.n = 0

    def initialize_key(self, key: bytes) -> None:
        self.k = key
        self.n = 0

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self.k is None:
            return plaintext
        if self.n >= aead.MAX_NONCE:  # unreachable in a 3-message handshake; kept for the spec
            raise LocalProtocolError("handshake nonce exhausted")
        ciphertext = aead.encrypt(self.k, self.n, ad, plaintext)
        self.n += 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self.k is None:
            return ciphertext
        if self.n >= aead.MAX_NONCE:
            raise DecryptError("handshake nonce exhausted")
        plaintext = aead.decrypt(self.k, self.n, ad, ciphertext)  # DecryptError on a bad tag
        self.n += 1
        return plaintext


class _SymmetricState:
    """Noise SymmetricState (§5.2): chaining key ``ck``, transcript hash ``h``, and a CipherState."""

    __slots__ = ("ck", "h", "cs")

    def __init__(self, protocol_name: bytes) -> None:
        # InitializeSymmetric: a name that fits in HASHLEN is zero-padded, not hashed.
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            self.h = _hash(protocol_name)
        self.ck = self.h
        self.cs = _CipherState()

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = _hkdf2(self.ck, ikm)
        self.cs.initialize_key(temp_k[:aead.KEY_SIZE])  # HASHLEN 64: truncate to 32 bytes

    def mix_hash(self, data: bytes) -> None:
        self.h = _hash(self.h + data)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cs.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cs.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)  # the ciphertext, not the plaintext: §5.2
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        temp_k1, temp_k2 = _hkdf2(self.ck, b"")
        return temp_k1[:aead.KEY_SIZE], temp_k2[:aead.KEY_SIZE]


class _State(enum.Enum):
    """Where a NoiseXX machine is; the message index lives beside it."""

    HANDSHAKING = "handshaking"
    COMPLETE = "complete"
    ERROR = "error"


class NoiseXX:
    """One side of a Noise_XX_25519_ChaChaPoly_BLAKE2b handshake (see the module docstring).

    Args:
        initiator: True for the side that sends the first message.
        static: our long-term key pair; the peer learns its public key.
        prologue: bytes both sides must agree on (crust puts the magic, the
            version and the network-name hash here); never sent.
        ephemeral: a fixed ephemeral key pair, for test vectors only.  Without
            it a fresh one is generated when it is first needed.

    Raises:
        TypeError: an argument has the wrong type.
    """

    __slots__ = (
        "_initiator", "_s", "_e", "_rs", "_re", "_ss", "_index", "_state",
        "_h", "_keys", "_split_done", "_path_key",
    )

    def __init__(
        self,
        *,
        initiator: bool,
        static: KeyPair,
        prologue: bytes,
        ephemeral: KeyPair | None = None,
    ) -> None:
        if not isinstance(static, KeyPair):
            raise TypeError(f"static must be a KeyPair, not {type(static).__name__}")
        if ephemeral is not None and not isinstance(ephemeral, KeyPair):
            raise TypeError(f"ephemeral must be a KeyPair or None, not {type(ephemeral).__name__}")
        if not isinstance(prologue, (bytes, bytearray, memoryview)):
            raise TypeError(f"prologue must be bytes, not {type(prologue).__name__}")
        self._initiator = bool(initiator)
        self._s = static
        self._e = ephemeral
        self._rs: bytes | None = None
        self._re: bytes | None = None
        # Initialize() (§5.3): protocol name, then the prologue; XX has no pre-messages.
        self._ss: _SymmetricState | None = _SymmetricState(PROTOCOL_NAME)
        self._ss.mix_hash(bytes(prologue))
        self._index = 0  # the next message of _XX to be written or read
        self._state = _State.HANDSHAKING
        self._h = b""
        self._keys: tuple[bytes, bytes] | None = None
        self._split_done = False
        self._path_key = b""

    # -- queries -------------------------------------------------------------

    @property
    def complete(self) -> bool:
        """True once all three messages have been written or read successfully."""
        return self._state is _State.COMPLETE

    @property
    def is_initiator(self) -> bool:
        """True for the side that sends the first message."""
        return self._initiator

    @property
    def remote_static(self) -> bytes | None:
        """The peer's static public key (its PeerId bytes) once received, else None.

        The initiator learns it from the second message, the responder from the
        third.  It is authenticated only when :attr:`complete` is True.
        """
        return self._rs

    @property
    def handshake_hash(self) -> bytes:
        """The final transcript hash ``h`` (64 bytes), identical on both sides.

        Raises:
            LocalProtocolError: the handshake is not complete.
        """
        self._require_complete("handshake_hash")
        return self._h

    @property
    def path_key(self) -> bytes:
        """A ``PATH_KEY_SIZE``-byte secret both ends derive, for rUDP's datagram tags (module docstring).

        Raises:
            LocalProtocolError: the handshake is not complete.
        """
        self._require_complete("path_key")
        return self._path_key

    @property
    def is_write_turn(self) -> bool:
        """True when the next call must be :meth:`write_message`."""
        return self._state is _State.HANDSHAKING and (self._index % 2 == 0) == self._initiator

    # -- messages ------------------------------------------------------------

    def write_message(self, payload: bytes = b"") -> bytes:
        """Produce our next handshake message, carrying ``payload``.

        The payload of the first message travels in clear (only hashed); the
        later two are encrypted.

        Args:
            payload: application bytes to send along.

        Returns:
            The message to send to the peer (at most ``MAX_HANDSHAKE_MESSAGE`` bytes).

        Raises:
            LocalProtocolError: it is not our turn, the handshake is complete or
                failed, or the payload would make the message too long.  The
                machine is unchanged.
            TypeError: ``payload`` is not bytes-like.
        """
        self._expect_turn(writing=True)
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
        payload = bytes(payload)
        size = self._message_overhead(self._index) + len(payload)
        if size > MAX_HANDSHAKE_MESSAGE:
            raise LocalProtocolError(f"handshake message would be {size} bytes (max {MAX_HANDSHAKE_MESSAGE})")
        ss = self._ss
        assert ss is not None  # HANDSHAKING implies a SymmetricState
        out = bytearray()
        try:
            for token in _XX[self._index]:
                if token == "e":
                    if self._e is None:
                        self._e = KeyPair.generate()
                    out += self._e.public_bytes
                    ss.mix_hash(self._e.public_bytes)
                elif token == "s":
                    out += ss.encrypt_and_hash(self._s.public_bytes)
                else:
                    ss.mix_key(self._dh(token))
            out += ss.encrypt_and_hash(payload)
        except RemoteProtocolError:
            # Only a DH with a bad remote key can get here, and read_message
            # already checks each key on arrival; poison the machine anyway.
            self._fail()
            raise
        self._advance()
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        """Consume the peer's next handshake message and return its payload.

        Args:
            message: exactly one handshake message, as the peer's
                :meth:`write_message` produced it.

        Returns:
            The payload the peer sent.

        Raises:
            HandshakeError: the message is too short or too long, or carries a
                bad public key.  The machine is poisoned.
            DecryptError: the encrypted part does not authenticate (wrong
                prologue, tampering, a different protocol).  The machine is poisoned.
            LocalProtocolError: it is not our turn to read, or the handshake
                is complete or has failed.  The machine is unchanged.
            TypeError: ``message`` is not bytes-like.
        """
        self._expect_turn(writing=False)
        if not isinstance(message, (bytes, bytearray, memoryview)):
            raise TypeError(f"message must be bytes, not {type(message).__name__}")
        data = bytes(message)
        ss = self._ss
        assert ss is not None
        try:
            if len(data) > MAX_HANDSHAKE_MESSAGE:
                raise HandshakeError(f"handshake message of {len(data)} bytes exceeds {MAX_HANDSHAKE_MESSAGE}")
            minimum = self._message_overhead(self._index)
            if len(data) < minimum:
                raise HandshakeError(f"handshake message {self._index} is {len(data)} bytes, needs at least {minimum}")
            pos = 0
            for token in _XX[self._index]:
                if token == "e":
                    re = data[pos:pos + DHLEN]
                    pos += DHLEN
                    check_public_key(re)  # early, so a bad key fails here, not in our reply
                    self._re = re
                    ss.mix_hash(re)
                elif token == "s":
                    # Encrypted whenever a key is set, which in XX is always the case.
                    length = DHLEN + (TAGLEN if ss.cs.k is not None else 0)
                    rs = ss.decrypt_and_hash(data[pos:pos + length])
                    pos += length
                    check_public_key(rs)
                    self._rs = rs
                else:
                    ss.mix_key(self._dh(token))
            payload = ss.decrypt_and_hash(data[pos:])
        except RemoteProtocolError:
            self._fail()
            raise
        except ValueError as exc:
            # Defence in depth for the contract "remote bytes raise only
            # RemoteProtocolError": pycryptodome reports bad input as ValueError.
            self._fail()
            raise HandshakeError(f"malformed handshake message: {exc}") from None
        self._advance()
        return payload

    # -- transport keys --------------------------------------------------------

    def split_keys(self) -> tuple[bytes, bytes]:
        """The raw ``(k1, k2)`` of Noise ``Split()``: k1 protects initiator→responder.

        For tests and interop checks; use :meth:`split` for real traffic.

        Raises:
            LocalProtocolError: the handshake is not complete.
        """
        if self._state is not _State.COMPLETE or self._keys is None:
            raise LocalProtocolError("split keys exist only once the handshake is complete")
        return self._keys

    def split(self, cipher: Cipher = Cipher.CHACHA20_POLY1305) -> tuple[Sealer, Opener]:
        """The transport ciphers for our sending and our receiving direction.

        The initiator sends with ``k1`` and receives with ``k2``; the responder
        the other way round.  This may be called once: a second pair of
        ciphers would reuse the same nonces with the same keys.

        Args:
            cipher: the transport AEAD both ends agreed on.  The handshake
                itself always ran ChaChaPoly; with the default the transport
                phase is exactly Noise's.

        Returns:
            ``(sealer, opener)``.

        Raises:
            LocalProtocolError: the handshake is not complete, or split() was
                already called.
            TypeError: ``cipher`` is not a :class:`~crust.crypto.aead.Cipher`.
        """
        k1, k2 = self.split_keys()
        if self._split_done:
            raise LocalProtocolError("split() may be called only once per handshake (nonce reuse)")
        send, receive = (k1, k2) if self._initiator else (k2, k1)
        sealer, opener = Sealer(send, cipher=cipher), Opener(receive, cipher=cipher)
        self._split_done = True
        return sealer, opener

    # -- internals ---------------------------------------------------------------

    def _require_complete(self, what: str) -> None:
        if self._state is not _State.COMPLETE:
            raise LocalProtocolError(f"{what} is defined only once the handshake is complete")

    def _expect_turn(self, *, writing: bool) -> None:
        if self._state is _State.ERROR:
            raise LocalProtocolError("handshake already failed; start a new one")
        if self._state is _State.COMPLETE:
            raise LocalProtocolError("handshake is complete; use split() for transport messages")
        if self.is_write_turn != writing:
            wanted = "read_message" if writing else "write_message"
            raise LocalProtocolError(f"out of turn: message {self._index} needs {wanted}()")

    @staticmethod
    def _message_overhead(index: int) -> int:
        """Bytes message ``index`` has besides its payload (and the minimum valid size)."""
        # Static keys and payloads get a tag once a key is set: after "ee", i.e. from
        # message 1's "s" on.  Message 0 has no key, so its payload is bare.
        return (DHLEN, DHLEN + (DHLEN + TAGLEN) + TAGLEN, (DHLEN + TAGLEN) + TAGLEN)[index]

    def _dh(self, token: str) -> bytes:
        """The DH a token calls for, from this side's point of view (§7.1)."""
        e, s, re, rs = self._e, self._s, self._re, self._rs
        assert e is not None and re is not None  # every DH token follows both "e" tokens
        if token == "ee":
            return e.dh(re)
        # "es": initiator's ephemeral with responder's static; "se" the reverse.
        ours_is_ephemeral = (token == "es") == self._initiator
        if ours_is_ephemeral:
            assert rs is not None
            return e.dh(rs)
        return s.dh(re)

    def _advance(self) -> None:
        self._index += 1
        if self._index == len(_XX):
            ss = self._ss
            assert ss is not None
            self._h = ss.h
            self._keys = ss.split()
            self._path_key = _hmac(ss.ck, _PATH_LABEL)[:PATH_KEY_SIZE]
            # Drop the handshake secrets (chaining key, ephemeral) as soon as
            # they are no longer needed; §5.3 says the HandshakeState may be deleted.
            self._ss = None
            self._e = None
            self._state = _State.COMPLETE

    def _fail(self) -> None:
        self._state = _State.ERROR
        self._ss = None
        self._e = None

    def __repr__(self) -> str:
        role = "initiator" if self._initiator else "responder"
        return f"<NoiseXX {role} {self._state.value} message={self._index}>"
