"""The NAT-traversal datagrams crust sends on its one UDP socket besides rUDP (sans-IO codec).

Three messages share the rUDP socket (``transport.udp.RudpSocket`` hands
every datagram that :func:`crust.rudp.peek_ids` refuses to its
``on_other``; rUDP owns first byte ``0xC7``, these start with ``0xC3``):

* **peer STUN** (:class:`EchoRequest` / :class:`EchoResponse`): "from which
  address do you see me?".  Any crust node answers a request with the source
  address it saw, echoing the 12-byte nonce (an off-path forger must guess it).
  The request is padded to the size of the largest response, so an answer to
  a spoofed source is never bigger than what the spoofer sent: a crust node is
  no amplifier.
* **hole-punch probe** (:class:`PunchProbe`), authenticated with a keyed MAC
  under the *punch key* (:func:`crust.crypto.mac.punch_key` of both connect
  tokens, which only the two peers know).

Wire format (big-endian)::

    header        b"\\xc3CRNP" ‖ u8 version (1) ‖ u8 type                       7 bytes
    EchoRequest   type 1: nonce[12] ‖ zero padding[20]                          39 bytes
    EchoResponse  type 2: nonce[12] ‖ observed endpoint (udp, port ≠ 0)      27 | 39 bytes
    PunchProbe    type 3: sender[8] ‖ receiver[8] ‖ u8 flags ‖ u32 counter
                          ‖ u32 ack ‖ tag[16]                                   48 bytes

Endpoints use :meth:`crust.wire.buffer.Buffer.push_endpoint`'s encoding
(IPv6 makes the 20-byte maximum the padding matches).  ``flags`` bit 0 is
*nominate*, the other bits must be 0.  ``tag`` is the MAC of every byte before
it, header included.  Every encoding is canonical: a different version, type,
length, non-zero padding or flag bit is malformed, and :func:`decode` raises
:class:`~crust.errors.RemoteProtocolError` (and nothing else) for any input
that is not exactly what :func:`encode` makes.

What the probe MAC protects, and what it does not
--------------------------------------------------
*Protects*: only someone who knows both connect tokens can make a probe that
verifies, so strays, scanners and other punches (other tokens) are dropped,
and nobody without the key can say "I heard you" (``ack``) or nominate a path.
The short ids (:func:`crust.crypto.mac.short_id`) name sender and receiver
without revealing PeerIds to the path, and keep a reflected probe (our own
bounced back) from passing as the other side's.

*Does not protect*: freshness or origin.  A captured probe can be replayed,
from any source address, any number of times within the punch.  The MAC cannot
bind a probe to an address (NATs rewrite addresses; that is the point), so
:class:`crust.nat.punch.UdpPunch` does: ``ack`` names the ``counter`` of a
probe *we* sent, and we accept it only from the address we sent that counter
to.  A replay from elsewhere carries an ack we never sent there and can at
most make us probe that address a bounded number of times; it cannot make us
report a punched path to it.  Nor is anything secret: ids, counters and flags
are visible.  None of this is identity: the Noise handshake that follows on
the punched path proves who is at the other end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from ..crypto.mac import SHORT_ID_SIZE, TAG_SIZE, mac, verify
from ..errors import BufferReadError, RemoteProtocolError
from ..ids import Endpoint, check_bytes, is_ip_literal
from ..wire.buffer import Buffer

__all__ = [
    "MAGIC",
    "VERSION",
    "NONCE_SIZE",
    "HEADER_SIZE",
    "ECHO_REQUEST_SIZE",
    "PROBE_SIZE",
    "MAX_COUNTER",
    "EchoRequest",
    "EchoResponse",
    "PunchProbe",
    "NatDatagram",
    "encode",
    "decode",
]

MAGIC = b"\xc3CRNP"  # "crust NAT probe"; 0xC3 never starts an rUDP datagram (0xC7)
VERSION = 1
NONCE_SIZE = 12
HEADER_SIZE = len(MAGIC) + 2
_MAX_ENDPOINT_SIZE = 2 + 16 + 2  # transport, IP version, IPv6 address, port
ECHO_REQUEST_SIZE = HEADER_SIZE + NONCE_SIZE + _MAX_ENDPOINT_SIZE  # = the largest EchoResponse
PROBE_SIZE = HEADER_SIZE + 2 * SHORT_ID_SIZE + 1 + 4 + 4 + TAG_SIZE
MAX_COUNTER = 2**32 - 1

_TYPE_ECHO_REQUEST = 1
_TYPE_ECHO_RESPONSE = 2
_TYPE_PUNCH_PROBE = 3
_FLAG_NOMINATE = 0x01


def _check_uint32(what: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not low <= value <= MAX_COUNTER:
        raise ValueError(f"{what} must be in {low}..{MAX_COUNTER}, got {value}")


@dataclass(frozen=True, slots=True)
class EchoRequest:
    """Peer STUN: "tell me the source address you see", with a fresh random nonce."""

    nonce: bytes  # NONCE_SIZE bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "nonce", check_bytes("nonce", self.nonce, NONCE_SIZE))


@dataclass(frozen=True, slots=True)
class EchoResponse:
    """Peer STUN answer: the request with ``nonce`` came from ``observed`` (a UDP endpoint)."""

    nonce: bytes
    observed: Endpoint

    def __post_init__(self) -> None:
        object.__setattr__(self, "nonce", check_bytes("nonce", self.nonce, NONCE_SIZE))
        ep = self.observed
        if not isinstance(ep, Endpoint):
            raise TypeError(f"observed must be an Endpoint, not {type(ep).__name__}")
        if ep.transport != "udp" or ep.port == 0 or not is_ip_literal(ep.host):
            raise ValueError(f"observed must be a UDP IP-literal endpoint with a port, not {ep}")

    @classmethod
    def answer(cls, request: EchoRequest, source: Endpoint) -> EchoResponse:
        """The response to ``request``, which arrived from ``source``."""
        return cls(request.nonce, source)


@dataclass(frozen=True, slots=True)
class PunchProbe:
    """A hole-punch probe (see the module docstring for what its MAC protects).

    Build one with :meth:`sign`; check one from the network with :meth:`verify`.

    Attributes:
        sender: the sender's 8-byte short id in this punch.
        receiver: the receiver's.
        counter: the sender's probe number, 1.., unique per probe in a punch.
        ack: the counter of the newest probe the sender heard from the address
            this probe is sent to; 0 = nothing heard from there ("heard you" unset).
        nominate: the controlling side says "this is the path"
            (:class:`crust.nat.punch.UdpPunch`).
        tag: the MAC of the encoded probe up to the tag.
    """

    sender: bytes
    receiver: bytes
    counter: int
    ack: int
    nominate: bool
    tag: bytes

    def __post_init__(self) -> None:
        object.__setattr__(self, "sender", check_bytes("sender", self.sender, SHORT_ID_SIZE))
        object.__setattr__(self, "receiver", check_bytes("receiver", self.receiver, SHORT_ID_SIZE))
        _check_uint32("counter", self.counter, 1)
        _check_uint32("ack", self.ack, 0)
        if not isinstance(self.nominate, bool):
            raise TypeError(f"nominate must be a bool, not {type(self.nominate).__name__}")
        object.__setattr__(self, "tag", check_bytes("tag", self.tag, TAG_SIZE))

    @property
    def heard(self) -> bool:
        """The "heard you" flag: the sender heard a probe from where this one went."""
        return self.ack != 0

    @classmethod
    def sign(cls, key: bytes, sender: bytes, receiver: bytes, counter: int, ack: int = 0,
             nominate: bool = False) -> PunchProbe:
        """A probe with its tag computed under ``key`` (the punch key).

        Raises:
            TypeError, ValueError: a field out of range (see the attributes).
        """
        unsigned = cls(sender, receiver, counter, ack, nominate, bytes(TAG_SIZE))
        return cls(sender, receiver, counter, ack, nominate, mac(key, _signed_part(unsigned)))

    def verify(self, key: bytes) -> bool:
        """True if the tag is right for these fields under ``key`` (constant time)."""
        return verify(key, _signed_part(self), self.tag)


NatDatagram = Union[EchoRequest, EchoResponse, PunchProbe]
"""Every message :func:`decode` can return."""


def _signed_part(probe: PunchProbe) -> bytes:
    buf = _header(_TYPE_PUNCH_PROBE)
    buf.push_bytes(probe.sender)
    buf.push_bytes(probe.receiver)
    buf.push_uint8(_FLAG_NOMINATE if probe.nominate else 0)
    buf.push_uint32(probe.counter)
    buf.push_uint32(probe.ack)
    return buf.data()


def _header(kind: int) -> Buffer:
    buf = Buffer()
    buf.push_bytes(MAGIC)
    buf.push_uint8(VERSION)
    buf.push_uint8(kind)
    return buf


def encode(message: NatDatagram) -> bytes:
    """The datagram for ``message``.

    Raises:
        TypeError: ``message`` is not one of the three message types.
    """
    if isinstance(message, PunchProbe):
        return _signed_part(message) + message.tag
    if isinstance(message, EchoRequest):
        buf = _header(_TYPE_ECHO_REQUEST)
        buf.push_bytes(message.nonce)
        buf.push_bytes(bytes(_MAX_ENDPOINT_SIZE))
        return buf.data()
    if isinstance(message, EchoResponse):
        buf = _header(_TYPE_ECHO_RESPONSE)
        buf.push_bytes(message.nonce)
        buf.push_endpoint(message.observed)
        return buf.data()
    raise TypeError(f"cannot encode {type(message).__name__} as a NAT datagram")


def decode(data: bytes | bytearray | memoryview) -> NatDatagram:
    """Parse one datagram; a :class:`PunchProbe` comes back *unverified* (call :meth:`~PunchProbe.verify`).

    Raises:
        RemoteProtocolError: the datagram is not exactly a version-1 NAT
            datagram (and nothing else, whatever the bytes).
    """
    if len(data) > ECHO_REQUEST_SIZE + PROBE_SIZE:  # cheap refusal before copying anything big
        raise RemoteProtocolError(f"NAT datagram of {len(data)} bytes is too long")
    buf = Buffer(data)
    if buf.remaining < HEADER_SIZE or buf.pull_bytes(len(MAGIC)) != MAGIC:
        raise RemoteProtocolError("not a crust NAT datagram (bad magic or too short)")
    version = buf.pull_uint8()
    if version != VERSION:
        raise RemoteProtocolError(f"unsupported NAT datagram version {version}")
    kind = buf.pull_uint8()
    try:
        message: NatDatagram
        if kind == _TYPE_ECHO_REQUEST:
            message = EchoRequest(buf.pull_bytes(NONCE_SIZE))
            if buf.pull_bytes(_MAX_ENDPOINT_SIZE) != bytes(_MAX_ENDPOINT_SIZE):
                raise RemoteProtocolError("echo request padding is not zero")
        elif kind == _TYPE_ECHO_RESPONSE:
            message = EchoResponse(buf.pull_bytes(NONCE_SIZE), buf.pull_endpoint())
        elif kind == _TYPE_PUNCH_PROBE:
            sender, receiver = buf.pull_bytes(SHORT_ID_SIZE), buf.pull_bytes(SHORT_ID_SIZE)
            flags = buf.pull_uint8()
            if flags & ~_FLAG_NOMINATE:
                raise RemoteProtocolError(f"punch probe has unknown flags {flags:#04x}")
            counter, ack = buf.pull_uint32(), buf.pull_uint32()
            message = PunchProbe(sender, receiver, counter, ack, bool(flags), buf.pull_bytes(TAG_SIZE))
        else:
            raise RemoteProtocolError(f"unknown NAT datagram type {kind}")
    except BufferReadError as err:
        raise RemoteProtocolError(f"truncated NAT datagram: {err}") from None
    except (ValueError, TypeError) as err:  # a value type refused what the bytes said
        raise RemoteProtocolError(f"malformed NAT datagram: {err}") from None
    if not buf.eof():
        raise RemoteProtocolError(f"{buf.remaining} trailing bytes after a NAT datagram")
    return message
