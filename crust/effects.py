"""Effects: orders flowing down from the engine to the I/O shell (imperative).

The shell is an interpreter of this small vocabulary; it never needs to
know what the bytes mean.  Completions come back as engine inputs
(``handle_connected``, ``receive_data``, ``handle_sent``, ``handle_closed``).
"""

from __future__ import annotations

from dataclasses import dataclass

from .ids import ConnId, Endpoint, PeerId

__all__ = ["Effect", "Dial", "Write", "Close", "SendCredit", "SendDatagram", "KeyPath"]


class Effect:
    """Base class of everything the engine asks the shell to do."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Dial(Effect):
    """Open a stream to ``endpoint``; report ``handle_connected`` or ``handle_closed`` for ``conn``.

    ``local_port`` (TCP only): dial from this port of ours, shared with our
    listener (``SO_REUSEPORT``), so the NAT mapping observers report for it
    is the one a hole punch meets.
    """

    conn: ConnId
    endpoint: Endpoint
    local_port: int | None = None


@dataclass(frozen=True, slots=True)
class Write(Effect):
    """Queue ``data`` on ``conn``; report bytes that reach the kernel with ``handle_sent``."""

    conn: ConnId
    data: bytes


@dataclass(frozen=True, slots=True)
class Close(Effect):
    """Close ``conn``: after flushing queued writes when ``flush``, at once otherwise.

    The engine has already forgotten ``conn``; no further input is expected for it.
    """

    conn: ConnId
    flush: bool = True


@dataclass(frozen=True, slots=True)
class SendCredit(Effect):
    """Bytes of queued messages to ``peer_id`` left the send queue, per priority.

    ``released`` holds ``(priority, nbytes)`` pairs; the shell gives that room
    back to ``send()`` callers that block on a full queue.
    """

    peer_id: PeerId
    released: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class SendDatagram(Effect):
    """Send one datagram from our rUDP socket (peer STUN, hole-punch probes); losing it is fine."""

    data: bytes
    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class KeyPath(Effect):
    """``conn`` (an rUDP stream) is secured: tag its datagrams with ``key`` (docs/protocol.md §14).

    ``key`` is the secure handshake's path key (``NoiseXX.path_key``), known
    to both ends only.  A stream that is not rUDP ignores it.
    """

    conn: ConnId
    key: bytes
