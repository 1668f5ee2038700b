"""The interface between :class:`~crust.nat.upnp.UpnpMapper` and a blocking IGD client.

The mapper decides; an :class:`Igd` (e.g. :class:`crust.runtime.upnp.MiniupnpcIgd`,
or a fake in tests) carries out one :data:`Action` at a time with
``action.perform(igd)`` and reports what came of it.  Every failure an IGD
client reports is an :class:`IgdError` subclass; the mapper turns them into
the reasons users read ("no IGD found", "IGD refused: <text>").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Union

from ..errors import CrustError

__all__ = [
    "IgdError", "IgdNotFound", "IgdRefused", "MappingConflict", "Igd",
    "Discover", "ReadExternalIp", "AddMapping", "DeleteMapping", "Action",
]


# -- the IGD client's interface ----------------------------------------------------

class IgdError(CrustError):
    """The IGD client could not carry out an action; ``str()`` says why."""


class IgdNotFound(IgdError):
    """Discovery found no usable IGD (nothing answered, or no answer was an IGD)."""


class IgdRefused(IgdError):
    """The IGD answered with an error, or did not answer a request."""


class MappingConflict(IgdRefused):
    """The external port is already forwarded to another host (UPnP error 718, ConflictInMappingEntry)."""


class Igd(Protocol):
    """A blocking IGD client (e.g. :class:`crust.runtime.upnp.MiniupnpcIgd`).  One call at a time.

    Every method raises only :class:`IgdError` subclasses.
    """

    def discover(self) -> str:
        """Find the IGD; returns our LAN address as the IGD sees it (``""`` if unknown).

        Raises:
            IgdNotFound: nothing suitable answered.
        """

    def external_ip(self) -> str:
        """The IGD's external IPv4 address.

        Raises:
            IgdRefused: the IGD did not tell.
        """

    def add(self, proto: str, external_port: int, internal_host: str, internal_port: int,
            description: str, lease: int) -> None:
        """Forward ``proto`` (``"tcp"``/``"udp"``) ``external_port`` to ``internal_host:internal_port``.

        Adding what we already hold renews it.

        Raises:
            MappingConflict: the external port is forwarded to another host.
            IgdRefused: any other failure.
        """

    def delete(self, proto: str, external_port: int, internal_host: str, internal_port: int) -> None:
        """Remove the mapping of ``proto`` ``external_port`` if it still forwards to ``internal_host:internal_port``.

        A mapping that is gone, or that now forwards to another host (our lease
        ran out and the port was given away), is left alone, and is no error.

        Raises:
            IgdRefused: the IGD refused or did not answer.
        """


# -- actions -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Discover:
    """Find the IGD (blocks for the client's discovery delay)."""

    def perform(self, igd: Igd) -> str | None:
        """Carry the action out on ``igd``; returns what :meth:`UpnpMapper.action_done` takes."""
        return igd.discover()


@dataclass(frozen=True, slots=True)
class ReadExternalIp:
    """Ask the IGD for its external address."""

    def perform(self, igd: Igd) -> str | None:
        """Carry the action out on ``igd``; returns what :meth:`UpnpMapper.action_done` takes."""
        return igd.external_ip()


@dataclass(frozen=True, slots=True)
class AddMapping:
    """Add (or renew) one port mapping."""

    transport: str
    external_port: int
    internal_host: str
    internal_port: int
    description: str
    lease: int

    def perform(self, igd: Igd) -> str | None:
        """Carry the action out on ``igd``; returns what :meth:`UpnpMapper.action_done` takes."""
        igd.add(self.transport, self.external_port, self.internal_host, self.internal_port,
                self.description, self.lease)
        return None


@dataclass(frozen=True, slots=True)
class DeleteMapping:
    """Remove one port mapping we made."""

    transport: str
    external_port: int
    internal_host: str
    internal_port: int

    def perform(self, igd: Igd) -> str | None:
        """Carry the action out on ``igd``; returns what :meth:`UpnpMapper.action_done` takes."""
        igd.delete(self.transport, self.external_port, self.internal_host, self.internal_port)
        return None


Action = Union[Discover, ReadExternalIp, AddMapping, DeleteMapping]
