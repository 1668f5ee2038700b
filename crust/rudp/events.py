"""What an :class:`~crust.rudp.stream.RudpStream` reports to its owner (``take_events``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

__all__ = ["RudpConnected", "RudpData", "RudpSent", "RudpClosed", "RudpEvent"]


@dataclass(frozen=True, slots=True)
class RudpConnected:
    """The handshake finished: the stream is connected."""


@dataclass(frozen=True, slots=True)
class RudpData:
    """In-order stream bytes from the peer."""

    data: bytes


@dataclass(frozen=True, slots=True)
class RudpSent:
    """The peer acknowledged ``nbytes`` more of the bytes we wrote."""

    nbytes: int


@dataclass(frozen=True, slots=True)
class RudpClosed:
    """The stream is closed: ``error`` None for an orderly close, else why ("timed out"...)."""

    error: str | None


RudpEvent = Union[RudpConnected, RudpData, RudpSent, RudpClosed]
