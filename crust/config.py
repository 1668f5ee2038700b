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

__all__ = ["Config", "FileSide", "lend_file_side", "MESSAGE_OVERHEAD", "UNFINISHED_MESSAGES", "unfinished_limit"]

MIB = 1024 * 1024
MAX_UPNP_LEASE = 604800  # seconds; IGD v2 caps a lease at one week (crust.nat.upnp.MAX_LEASE)

# What one hostile peer can make us hold is counted as it really costs (docs/security.md,
# "Denial-of-service bounds"): a message is its bytes plus this, so a flood of empty
# messages fills a queue as surely as a flood of big ones.  Measured on CPython 3.11: a
# received message waiting for its callback costs about 75 bytes beyond its payload, a
# queued outbound one about 200 (the send() batch tuple, the outbox entry, its timestamp).
MESSAGE_OVERHEAD = 256
"""Bytes every queue limit counts for one message on top of its payload."""

UNFINISHED_MESSAGES = 2
"""Max-size messages one connection may have half-sent at once (see :func:`unfinished_limit`)."""


def unfinished_limit(max_message_size: int) -> int:
    """Bytes a connection may hold in messages it has begun and not finished, both ways.

    The receiver drops a peer whose unfinished messages (each counted as its
    bytes so far plus ``MESSAGE_OVERHEAD``) would exceed it; the sender never
    starts cutting a message into chunks if the ones it has begun and not
    finished (each counted whole) would then exceed it.  Both ends derive it
    from ``max_message_size`` alone, so two nodes that agree on that agree on
    this, and an honest sender is never taken for a flood.
    """
    return UNFINISHED_MESSAGES * (max_message_size + MESSAGE_OVERHEAD)


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
    """Everything a :class:`crust.Service` can be told; ``Config()`` alone is a working node.

    Frozen: change a value with ``dataclasses.replace(config, field=value)``,
    which validates again.  A bad value raises :class:`crust.ConfigError`
    naming the field.  ``Config.load(path)`` / ``config.save(path)`` read and
    write the JSON file form (the original crust's field names are accepted).
    docs/api.md has the same list as a table.

    Attributes:
        hard_coded_contacts: bootstrap contacts: ``"host:port"`` strings, ``(host, port)`` tuples,
            Endpoints or :class:`crust.Contact` values (a Contact's PeerId is then verified by the
            handshake); stored as a tuple of Contacts (:attr:`contacts`).  Default: none.
        tcp_port: TCP listener port, 0..65535; 0 (default) picks a random free port each session.
        udp_port: UDP port of crust's reliable UDP and hole punching, 0..65535; 0 (default) = random.
        listen_host: IP address the listeners bind to.  Default ``"0.0.0.0"`` (every IPv4
            interface); ``"127.0.0.1"`` keeps a node on loopback.
        enable_tcp: use TCP (default True).  TCP is preferred when both transports work.
        enable_udp: use reliable UDP (default True).
        enable_upnp: ask the router (UPnP IGD) to forward our listener ports (default True;
            loopback listeners are never mapped).
        force_acceptor_port_in_ext_ep: advertise ``tcp_port`` on our external IP even when no peer
            has observed that port, as the original crust's option does (default False).
        upnp_lease: seconds each UPnP port mapping is leased for, 1..604800, rounded to whole
            seconds (default 3600.0); renewed at half-life, deleted on ``stop_listening()`` and
            ``close()``.  A crash leaves the router's entry until the lease ends, so a short lease
            cleans up sooner but costs more renewals.
        service_discovery_port: UDP port of the LAN beacon, 0..65535 (default 5484).
        service_discovery_targets: IP addresses LAN beacons are sent to; ``None`` (default) = the
            broadcast address of every IPv4 interface.  Tests use ``["127.255.255.255"]``.
        bootstrap_cache_path: JSON file of peers we were directly connected to, tried first when
            bootstrapping.  Default ``$XDG_CACHE_HOME/crust/bootstrap_cache.json`` (``~/.cache``
            when unset); ``None`` keeps no cache.
        whitelisted_node_ips: when set, the only Node IPs we deal with (default None: anyone): who may
            bootstrap off us as a Node, whom we bootstrap off, and the ``connect()`` candidates both
            ways.  Applied live from a watched config file (``Service(watch=path)``), to every peer.
        whitelisted_client_ips: when set, only these IPs may bootstrap off us as Clients
            (default None: anyone).  Re-read live like ``whitelisted_node_ips``.
        network_name: peers whose network name differs never connect to each other (default None,
            itself a network name).
        disable_external_reachability_requirement: skip the check that a Node bootstrapping off us
            is reachable from outside (we dial it back) (default False).
        heartbeat_interval: seconds of outbound silence after which a Heartbeat is sent; > 0
            (default 20.0).  Heartbeats also measure ``PeerInfo.rtt``.
        inactivity_timeout: seconds of inbound silence after which a peer is lost; must exceed
            ``heartbeat_interval`` (default 120.0).
        max_message_size: largest message ``send()`` accepts, in bytes, 1..2**30 (default 2 MiB);
            larger raises :class:`crust.MessageTooLarge`.
        relay: relay for peers that cannot reach each other directly (default False).  Only a
            node that listens offers it; the relay forwards end-to-end encrypted bytes it cannot
            read.  See docs/nat.md.
        relay_max_circuits: circuits relayed at once, >= 1 (default 16); one peer may open a
            quarter of them (at least one).  Each circuit holds at most ~1.1 MiB here.
        relay_max_bytes_per_s: bytes per second per relayed circuit, both directions together,
            >= 1 (default 1 MiB); the total is at most ``relay_max_circuits`` times this.
        handshake_timeout: seconds a new connection may take to finish its secure and bootstrap
            handshakes; > 0 (default 10.0).
        max_pending_handshakes: unfinished inbound handshakes kept at once, >= 1 (default 256);
            beyond it the oldest is dropped.
        max_pending_handshakes_per_ip: unfinished inbound handshakes kept per source IP, >= 1
            (default 32); beyond it that IP's oldest is dropped.
        max_peers: connected peers at once, >= 1 (default 4096); further bootstraps are denied and
            dials refused.
        bootstrap_timeout: seconds a ``bootstrap()`` (without ``timeout=``) or ``start_bootstrap()``
            run may take; > 0 (default 10.0).
        bootstrap_max_in_flight: bootstrap attempts running at once, >= 1 (default 8).
        bootstrap_stagger: seconds between starting two bootstrap attempts (happy-eyeballs
            style), >= 0 (default 0.25).
        send_queue_limit: bytes queued per peer and priority before ``send()`` blocks (priorities
            0 and 1) or old messages are dropped (priority >= 2); each message counts its payload
            plus ``MESSAGE_OVERHEAD`` (256); >= ``max_message_size`` (default 8 MiB).
        drop_after: seconds a droppable (priority >= 2) message may wait in the queue before it is
            discarded (reported by ``on_send_dropped``); > 0 (default 60.0).
        receive_backlog_limit: bytes of one peer's messages waiting for callbacks before we stop
            reading from it (we read again at half); each message counts its payload plus
            ``MESSAGE_OVERHEAD`` (256); >= ``max_message_size`` (default 8 MiB).
        service_discovery_window: seconds a LAN seek (before a bootstrap, or ``has_peers_on_lan``)
            waits for answers; > 0 (default 1.0).
        connect_timeout: seconds ``connect()`` / ``start_connect()`` try before giving up
            (``connect(timeout=)`` overrides); > 0 (default 30.0).
        peer_exchange: answer and ask peer-exchange requests, and let peers mention us to others
            (default True).
        target_peers: connections the Service keeps up by itself, bootstrapping off peers its peers
            tell it of (peer exchange), in the role of its last ``bootstrap()``; 0 (the default)
            = only what you connect yourself; 0 .. ``max_peers``.
        config_reload_interval: seconds between checks of the watched config file for a change
            (``Service(watch=path)``, or the default file a ``Service()`` without a config read);
            each check is one ``stat()``, a changed file is re-read; > 0 (default 1.0).
    """

    hard_coded_contacts: Sequence[Contact | EndpointLike] = ()
    tcp_port: int = 0
    udp_port: int = 0
    listen_host: str = "0.0.0.0"
    enable_tcp: bool = True
    enable_udp: bool = True
    enable_upnp: bool = True
    force_acceptor_port_in_ext_ep: bool = False
    upnp_lease: float = 3600.0
    service_discovery_port: int = 5484
    service_discovery_targets: tuple[str, ...] | None = None
    bootstrap_cache_path: str | None = field(default_factory=_default_bootstrap_cache_path)
    whitelisted_node_ips: Collection[str] | None = None
    whitelisted_client_ips: Collection[str] | None = None
    network_name: str | None = None
    disable_external_reachability_requirement: bool = False
    heartbeat_interval: float = 20.0
    inactivity_timeout: float = 120.0
    max_message_size: int = 2 * MIB
    relay: bool = False
    relay_max_circuits: int = 16
    relay_max_bytes_per_s: int = 1 * MIB

    handshake_timeout: float = 10.0
    max_pending_handshakes: int = 256
    max_pending_handshakes_per_ip: int = 32
    max_peers: int = 4096
    bootstrap_timeout: float = 10.0
    bootstrap_max_in_flight: int = 8
    bootstrap_stagger: float = 0.25
    send_queue_limit: int = 8 * MIB
    drop_after: float = 60.0
    receive_backlog_limit: int = 8 * MIB
    service_discovery_window: float = 1.0
    connect_timeout: float = 30.0
    peer_exchange: bool = True
    target_peers: int = 0
    config_reload_interval: float = 1.0

    @property
    def unfinished_limit(self) -> int:
        """Bytes of unfinished messages a connection may hold (:func:`unfinished_limit` of ``max_message_size``)."""
        return unfinished_limit(self.max_message_size)

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
        for contact in self.contacts:
            if contact.addr.port == 0:
                raise ConfigError(f"hard_coded_contacts: {contact.addr} has port 0, where no node listens; "
                                  "give the port the contact's start_listening() returned")
        for name in ("tcp_port", "udp_port", "service_discovery_port"):
            _check_int(name, getattr(self, name), 0, 65535)
        for name in ("enable_tcp", "enable_udp", "enable_upnp", "force_acceptor_port_in_ext_ep",
                     "disable_external_reachability_requirement", "relay", "peer_exchange"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be a bool, not {getattr(self, name)!r}")
        try:
            if not isinstance(self.listen_host, str):  # ip_address() would take an int
                raise TypeError
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
            _check_int(name, getattr(self, name), 1, 1 << 40)
        _check_queues_hold_a_message(self)
        _check_int("target_peers", self.target_peers, 0, self.max_peers)

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
        dev = data.get("dev")
        items = list(data.items())
        if isinstance(dev, dict):  # the original's nested dev section: its fields count as top-level ones
            items = [item for item in items if item[0] != "dev"] + list(dev.items())
        for key, value in items:
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
            raise ConfigError(f"unknown config field(s): {', '.join(sorted(map(str, unknown)))}")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form of this Config (lists for sets and tuples)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "hard_coded_contacts":
                value = [str(c.addr) if c.peer_id is None else {"addr": str(c.addr), "peer_id": str(c.peer_id)}
                         for c in value]
            elif isinstance(value, frozenset):
                value = sorted(value)
            elif isinstance(value, tuple):
                value = list(value)  # in order: service_discovery_targets loads back equal
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


def _check_queues_hold_a_message(cfg: Config) -> None:
    """Each queue limit must hold one whole message: say so once, naming every limit that is short."""
    size = cfg.max_message_size
    short = [(name, getattr(cfg, name)) for name in ("send_queue_limit", "receive_backlog_limit")
             if getattr(cfg, name) < size]
    if not short:
        return
    fields = " and ".join(f"{name} ({value})" for name, value in short)
    suggested = 4 * size  # the defaults' ratio: 8 MiB queues for 2 MiB messages
    settings = ", ".join(f"{name}={suggested}" for name, _ in short)
    raise ConfigError(
        f"max_message_size ({size}) exceeds {fields}: each limit must hold at least one whole message. "
        f"Raise {'it' if len(short) == 1 else 'them'} with it: Config(max_message_size={size}, {settings}) "
        f"(4x, as the defaults), or at least {size}")


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
