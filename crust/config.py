"""Configuration: one frozen, validated dataclass holding every default.

A ``Config`` is immutable (like urllib3's ``Retry``): change a value with
``dataclasses.replace(cfg, field=value)``, which validates again.  Every
field has a default, so ``Config()`` is a working node.

Timings that tests shorten (heartbeat, inactivity, handshake, bootstrap)
are fields here rather than module constants, so no test needs a sleep or
a monkeypatch to exercise them.

This module is sans-IO (the engine imports it).  The file and the
environment -- ``Config.load``, ``Config.save`` and the default
``bootstrap_cache_path`` -- belong to :mod:`crust.config_file`, a top-level
module, which this one cannot import (arrows point down only).  So
``config_file`` lends them: it calls :func:`lend_file_side` when it is
imported, and ``crust/__init__`` imports it, which Python runs before any
code outside crust can reach this module.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any, Collection, Iterable, Protocol, Sequence

from .errors import ConfigError
from .ids import Contact, Endpoint, EndpointLike

__all__ = ["Config", "FileSide", "lend_file_side"]

MIB = 1024 * 1024
MAX_UPNP_LEASE = 604800  # seconds; IGD v2 caps a lease at one week (crust.nat.upnp.MAX_LEASE)


class FileSide(Protocol):
    """What :class:`Config` borrows from :mod:`crust.config_file`: the file system and the environment."""

    def load(self, cls: type[Config], path: str | os.PathLike[str]) -> Config:
        """Read the JSON config file at ``path`` into a ``cls``."""

    def save(self, config: Config, path: str | os.PathLike[str]) -> None:
        """Write ``config`` to ``path`` as JSON."""

    def default_bootstrap_cache_path(self) -> str:
        """The per-user bootstrap cache file."""


_file_side: FileSide | None = None


def lend_file_side(side: FileSide) -> None:
    """Give :class:`Config` its file and environment access (called by :mod:`crust.config_file`)."""
    global _file_side
    _file_side = side


def _files() -> FileSide:
    if _file_side is None:  # only if crust/__init__ did not run, which Python never allows
        raise RuntimeError("crust.config_file has not lent Config its file access")
    return _file_side


def _default_bootstrap_cache_path() -> str:
    return _files().default_bootstrap_cache_path()


# The original crust's JSON names (crust-original.md §1.4) map onto ours.
_ORIGINAL_NAMES = {
    "tcp_acceptor_port": "tcp_port",
    "bootstrap_cache_name": "bootstrap_cache_path",
}


@dataclass(frozen=True)
class Config:
    """Everything a :class:`crust.Service` can be told.  See API.md for the meaning of each field."""

    hard_coded_contacts: Sequence[Contact | EndpointLike] = ()
    """Bootstrap contacts: ``"host:port"`` strings, ``(host, port)``, Endpoints or :class:`crust.Contact`
    values; stored as a tuple of Contacts (read them typed through :attr:`contacts`)."""
    tcp_port: int = 0
    """TCP acceptor port; 0 picks a random free port each session."""
    udp_port: int = 0
    """UDP port for reliable UDP and hole punching; 0 = random."""
    listen_host: str = "0.0.0.0"
    """Local address the listeners bind to (``"127.0.0.1"`` keeps a node on loopback)."""
    enable_tcp: bool = True
    enable_udp: bool = True
    enable_upnp: bool = True
    force_acceptor_port_in_ext_ep: bool = False
    upnp_lease: float = 3600.0
    """Seconds each UPnP port mapping is leased for (1..604800, rounded to whole seconds); crust renews
    it at half-life and deletes it on ``stop_listening()``/``close()``.  A crash leaves the router's
    entry until the lease ends, so a short lease cleans up sooner but costs more renewals."""
    service_discovery_port: int = 5484
    service_discovery_targets: tuple[str, ...] | None = None
    """Where LAN beacons go; ``None`` = every interface's broadcast address."""
    bootstrap_cache_path: str | None = field(default_factory=_default_bootstrap_cache_path)
    whitelisted_node_ips: Collection[str] | None = None
    whitelisted_client_ips: Collection[str] | None = None
    network_name: str | None = None
    disable_external_reachability_requirement: bool = False
    heartbeat_interval: float = 20.0
    """Seconds of outbound silence after which we send a Heartbeat."""
    inactivity_timeout: float = 120.0
    """Seconds of inbound silence after which a peer is lost."""
    max_message_size: int = 2 * MIB
    relay: bool = False
    relay_max_circuits: int = 16
    relay_max_bytes_per_s: int = 1 * MIB

    handshake_timeout: float = 10.0
    """Seconds a new connection may take to finish its secure and bootstrap handshakes."""
    max_pending_handshakes: int = 256
    """Unfinished inbound handshakes kept at once; beyond it the oldest is dropped."""
    max_pending_handshakes_per_ip: int = 32
    """Unfinished inbound handshakes kept per source IP; beyond it that IP's oldest is dropped."""
    max_peers: int = 4096
    """Connected peers at once; further bootstraps are denied and dials refused."""
    bootstrap_timeout: float = 10.0
    """Default timeout of ``bootstrap()`` and of a ``start_bootstrap()`` run."""
    bootstrap_max_in_flight: int = 8
    """Bootstrap attempts running at once."""
    bootstrap_stagger: float = 0.25
    """Seconds between starting two bootstrap attempts (happy-eyeballs style)."""
    send_queue_limit: int = 8 * MIB
    """Bytes queued per peer and priority before ``send()`` blocks (or drops, priority >= 2)."""
    drop_after: float = 60.0
    """Seconds a droppable (priority >= 2) message may wait before it is discarded."""
    receive_backlog_limit: int = 8 * MIB
    """Bytes of one peer's messages waiting for callbacks before we stop reading from it."""
    service_discovery_window: float = 1.0
    """Seconds a LAN seek (before a bootstrap, or ``has_peers_on_lan``) waits for answers."""
    connect_timeout: float = 30.0
    """Seconds ``connect()``/``start_connect()`` try before giving up (``connect(timeout=)`` overrides)."""
    peer_exchange: bool = True
    """Answer and ask peer-exchange requests (and let peers mention us to others)."""
    config_reload_interval: float = 30.0
    """Seconds between re-reads of the config file a ``Service()`` without a config was built from."""

    @property
    def contacts(self) -> tuple[Contact, ...]:
        """``hard_coded_contacts`` as validated Contacts (what ``__post_init__`` stored)."""
        return self.hard_coded_contacts  # type: ignore[return-value]

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        contacts = self.hard_coded_contacts
        if isinstance(contacts, (str, Contact, Endpoint)) or not isinstance(contacts, Iterable):
            raise ConfigError(f"hard_coded_contacts must be a list of contacts, not {contacts!r}")
        try:
            set_(self, "hard_coded_contacts", tuple(Contact.coerce(c) for c in contacts))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"hard_coded_contacts: {exc}") from None
        for name in ("tcp_port", "udp_port", "service_discovery_port"):
            _check_int(name, getattr(self, name), 0, 65535)
        for name in ("enable_tcp", "enable_udp", "enable_upnp", "force_acceptor_port_in_ext_ep",
                     "disable_external_reachability_requirement", "relay", "peer_exchange"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be a bool, not {getattr(self, name)!r}")
        try:
            ipaddress.ip_address(self.listen_host)
        except (TypeError, ValueError):
            raise ConfigError(f"listen_host must be an IP address, not {self.listen_host!r}") from None
        if self.service_discovery_targets is not None:
            set_(self, "service_discovery_targets", _ip_tuple("service_discovery_targets", self.service_discovery_targets))
        for name in ("whitelisted_node_ips", "whitelisted_client_ips"):
            value = getattr(self, name)
            if value is not None:
                set_(self, name, frozenset(_ip_tuple(name, value)))
        if self.network_name is not None and not isinstance(self.network_name, str):
            raise ConfigError(f"network_name must be a str or None, not {self.network_name!r}")
        if self.bootstrap_cache_path is not None and not isinstance(self.bootstrap_cache_path, (str, os.PathLike)):
            raise ConfigError(f"bootstrap_cache_path must be a path or None, not {self.bootstrap_cache_path!r}")
        for name in ("heartbeat_interval", "inactivity_timeout", "handshake_timeout", "bootstrap_timeout",
                     "drop_after", "config_reload_interval", "service_discovery_window", "connect_timeout"):
            _check_positive_float(name, getattr(self, name))
        _check_float(self, "bootstrap_stagger", 0.0)
        if isinstance(self.upnp_lease, bool) or not isinstance(self.upnp_lease, (int, float)) \
                or not 1 <= self.upnp_lease <= MAX_UPNP_LEASE:
            raise ConfigError(f"upnp_lease must be 1..{MAX_UPNP_LEASE} seconds, not {self.upnp_lease!r}")
        if self.inactivity_timeout <= self.heartbeat_interval:
            raise ConfigError(
                f"inactivity_timeout ({self.inactivity_timeout}) must exceed heartbeat_interval "
                f"({self.heartbeat_interval}), or idle peers would be lost"
            )
        _check_int("max_message_size", self.max_message_size, 1, 1 << 30)
        for name in ("relay_max_circuits", "relay_max_bytes_per_s", "max_pending_handshakes",
                     "max_pending_handshakes_per_ip", "max_peers", "bootstrap_max_in_flight"):
            _check_int(name, getattr(self, name), 1, 1 << 40)
        for name in ("send_queue_limit", "receive_backlog_limit"):
            _check_int(name, getattr(self, name), self.max_message_size, 1 << 40)

    # -- JSON file form -------------------------------------------------------

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Build a Config from a JSON object; the original crust's field names are accepted.

        Raises:
            ConfigError: an unknown field (named in the message) or a bad value.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a JSON object, not {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        unknown = []
        for key, value in data.items():
            if key == "dev" and isinstance(value, dict):  # the original's nested dev section
                kwargs.update(value)
                continue
            name = _ORIGINAL_NAMES.get(key, key)
            if name not in known:
                unknown.append(key)
                continue
            if value is None and name in ("tcp_port", "udp_port"):
                value = 0
            elif value is None and name == "service_discovery_port":
                value = 5484
            kwargs[name] = value
        if unknown:
            raise ConfigError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form of this Config (lists for sets and tuples)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "hard_coded_contacts":
                value = [str(c.addr) if c.peer_id is None else {"addr": str(c.addr), "peer_id": str(c.peer_id)}
                         for c in value]
            elif isinstance(value, (tuple, frozenset)):
                value = sorted(value)
            elif isinstance(value, os.PathLike):
                value = os.fspath(value)
            out[f.name] = value
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Config:
        """Read a JSON config file (:func:`crust.config_file.load_config` does).

        Raises:
            ConfigError: unreadable file, bad JSON, unknown field or bad value.
        """
        return _files().load(cls, path)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write this Config as pretty JSON, replacing the file atomically (:func:`crust.config_file.save_config`)."""
        _files().save(self, path)


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an int, not {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{name} must be in {low}..{high}, not {value}")


def _check_positive_float(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")


def _check_float(cfg: Config, name: str, low: float) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
        raise ConfigError(f"{name} must be a number >= {low}, not {value!r}")


def _ip_tuple(name: str, values: object) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise ConfigError(f"{name} must be a list of IP addresses, not {values!r}")
    out = []
    for value in values:
        try:
            out.append(str(ipaddress.ip_address(value)))
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: {value!r} is not an IP address") from None
    return tuple(out)
