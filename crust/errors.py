"""Every exception crust raises, and nothing else.

The tree is shallow on purpose (trio, httpcore): catch ``CrustError`` for
"anything crust", or one leaf.  At most one builtin is mixed into a class so
that ``except TimeoutError`` and ``except ValueError`` work idiomatically.

Who is at fault is part of the name (h11): ``LocalProtocolError`` means *we*
drove a machine wrongly (a bug), ``RemoteProtocolError`` means the peer sent
something it must not.  Remote faults never reach user code as exceptions:
the engine turns them into a lost peer plus an ``on_misbehaviour`` report.
"""

from __future__ import annotations

from typing import Mapping

__all__ = [
    "CrustError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "BufferReadError",
    "DecryptError",
    "OversizeMessage",
    "HandshakeError",
    "ServiceClosed",
    "PeerNotFound",
    "PeerLostError",
    "MessageTooLarge",
    "CrustTimeoutError",
    "SendTimeout",
    "PeerWaitTimeout",
    "ConfigError",
    "ListenerError",
    "CandidatesFailed",
    "BootstrapFailed",
    "ConnectError",
    "ConnectToSelf",
]


class CrustError(Exception):
    """Base class of every exception raised by crust."""


class ProtocolError(CrustError):
    """A protocol rule was broken.  Abstract: raise one of the two subclasses."""

    def __init__(self, msg: str) -> None:
        if type(self) is ProtocolError:
            raise TypeError("ProtocolError is abstract; raise Local- or RemoteProtocolError")
        super().__init__(msg)


class LocalProtocolError(ProtocolError):
    """We drove a protocol machine in a way it does not allow (a bug in crust or its caller)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol: the connection is dropped."""


class BufferReadError(RemoteProtocolError):
    """A decoder ran past the end of its input or met an impossible value."""


class DecryptError(RemoteProtocolError):
    """An AEAD frame failed authentication (tampered, replayed, reordered or foreign)."""


class OversizeMessage(RemoteProtocolError):
    """The peer sent a message larger than our ``max_message_size`` (it is told so in its Goodbye)."""


class HandshakeError(RemoteProtocolError):
    """The secure or bootstrap handshake failed; ``reason`` is a short machine-readable word."""

    def __init__(self, msg: str, reason: str = "protocol") -> None:
        super().__init__(msg)
        self.reason = reason


class ServiceClosed(CrustError):
    """The Service was closed; no method may be called on it any more."""


class PeerNotFound(CrustError, KeyError):
    """No connected peer has that id (never connected, or already lost)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "peer not found"


class PeerLostError(CrustError):
    """The peer was lost while a blocking call waited on it."""


class MessageTooLarge(CrustError, ValueError):
    """``send()`` was given more than ``Config.max_message_size`` bytes."""


class CrustTimeoutError(CrustError, TimeoutError):
    """A blocking crust call ran out of time."""


class SendTimeout(CrustTimeoutError):
    """``send()`` waited ``timeout`` seconds for room in the peer's outbound queue."""


class PeerWaitTimeout(CrustTimeoutError):
    """``wait_for_peer(timeout=)`` saw no (such) peer connect within ``timeout`` seconds."""


class ConfigError(CrustError, ValueError):
    """A configuration value or file is invalid; the message names the field."""


class ListenerError(CrustError):
    """A listener could not be started (port in use, no permission, transport disabled)."""


class CandidatesFailed(CrustError):
    """An operation tried several candidates and none worked; ``reasons`` says why for each.

    The shared base of :class:`BootstrapFailed` (the candidates are contacts)
    and :class:`ConnectError` (the candidates are a peer's endpoints), so a
    caller can report either the same way.

    Attributes:
        reasons: each candidate tried (as text) mapped to why it failed.
    """

    def __init__(self, msg: str, reasons: Mapping[str, str] | None = None) -> None:
        """
        Args:
            msg: what failed; each reason is appended as ``(candidate: why; ...)``.
            reasons: each candidate tried, mapped to its failure (none: an empty dict).
        """
        self.reasons: dict[str, str] = dict(reasons or {})
        if self.reasons:
            detail = "; ".join(f"{candidate}: {why}" for candidate, why in self.reasons.items())
            msg = f"{msg} ({detail})"
        super().__init__(msg)


class BootstrapFailed(CandidatesFailed):
    """No bootstrap contact granted us a connection; ``reasons`` maps each contact to its failure."""


class ConnectError(CandidatesFailed):
    """``connect()`` found no working candidate; ``reasons`` maps each candidate to its failure."""


class ConnectToSelf(ConnectError):
    """``connect()`` was asked to connect a Service to itself."""
