"""BootstrapCache: the peers we were directly connected to, as JSON text (PROTOCOL.md §6.4).

Theory of operation.  The cache is an ordered set of contacts keyed by
``(host, port)``, most recently successful first.  Every contact carries
the peer's PeerId (a contact without one is refused with ``ValueError``), so
a later reconnection to a cached address is authenticated: a different key
answering there fails the secure handshake.  :meth:`record_success` moves a
contact to the front (replacing what was cached for that address, PeerId
included) and trims the oldest beyond :attr:`MAX_ENTRIES`;
:meth:`record_failure` drops the address.

This module is sans-IO: it neither reads the clock nor touches files.  The
caller passes ``when`` (seconds since the epoch) and moves the text of
:meth:`dumps` / :meth:`loads` to and from disk (atomically: temp file +
rename).  A file that is not a cache at all (bad JSON, wrong version, wrong
shape) makes :meth:`loads` raise :class:`~crust.errors.ConfigError`, so the
caller can log it and start empty, replacing the file on the next write.
A single malformed entry in an otherwise good file is skipped and counted in
:attr:`skipped`, so one bad line does not cost the rest of the cache.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..ids import Contact, Endpoint, PeerId

__all__ = ["BootstrapCache", "CacheEntry", "CACHE_VERSION"]

CACHE_VERSION = 1


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One cached peer: where it was, who it was, and when we last reached it."""

    contact: Contact
    """Always has a ``peer_id``."""
    last_success: float
    """Seconds since the epoch of the last successful direct connection."""


def _key(addr: Endpoint) -> tuple[str, int]:
    return (addr.host, addr.port)


def _check_when(when: object) -> float:
    try:
        if isinstance(when, bool) or not isinstance(when, (int, float)):
            raise TypeError
        seconds = float(when)  # OverflowError for an int beyond float range
        if not math.isfinite(seconds):
            raise OverflowError
    except (TypeError, OverflowError):
        raise ValueError(f"last_success must be a finite number of seconds, not {when!r:.80}") from None
    return seconds


class BootstrapCache:
    """Most-recent-first contacts of peers we connected to directly, at most :attr:`MAX_ENTRIES`."""

    MAX_ENTRIES = 1500

    def __init__(self) -> None:
        self._entries: OrderedDict[tuple[str, int], CacheEntry] = OrderedDict()  # first = most recent
        self.skipped = 0
        """Malformed entries :meth:`loads` dropped (0 for a cache built in memory)."""

    def record_success(self, contact: Contact, when: float) -> None:
        """Put ``contact`` at the front, replacing any entry for its ``(host, port)``.

        Raises:
            ValueError: ``contact`` has no ``peer_id`` or ``when`` is not a finite number.
        """
        if not isinstance(contact, Contact):
            raise TypeError(f"record_success needs a Contact, not {type(contact).__name__}")
        if contact.peer_id is None:
            raise ValueError(f"a cached contact needs its PeerId: {contact.addr} has none")
        entry = CacheEntry(contact, _check_when(when))
        key = _key(contact.addr)
        self._entries.pop(key, None)
        self._entries[key] = entry
        self._entries.move_to_end(key, last=False)
        while len(self._entries) > self.MAX_ENTRIES:
            self._entries.popitem(last=True)

    def record_failure(self, addr: Endpoint) -> None:
        """Forget the contact at ``addr``'s ``(host, port)`` (no-op when it is not cached)."""
        self._entries.pop(_key(addr), None)

    def contacts(self) -> list[Contact]:
        """The cached contacts, most recent first."""
        return [entry.contact for entry in self._entries.values()]

    def entries(self) -> list[CacheEntry]:
        """The cached entries (contact and last success), most recent first."""
        return list(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<BootstrapCache {len(self._entries)} contacts>"

    # -- JSON form ------------------------------------------------------------

    def dumps(self) -> str:
        """The cache as JSON text (``{"version": 1, "contacts": [...]}``, most recent first)."""
        contacts = [
            {"addr": str(e.contact.addr), "peer_id": str(e.contact.peer_id), "last_success": e.last_success}
            for e in self._entries.values()
        ]
        return json.dumps({"version": CACHE_VERSION, "contacts": contacts}, indent=1, allow_nan=False) + "\n"

    @classmethod
    def loads(cls, text: str) -> BootstrapCache:
        """Parse :meth:`dumps` output.

        Malformed entries are skipped and counted in :attr:`skipped`; later
        duplicates of an address and entries beyond :attr:`MAX_ENTRIES` are dropped.

        Raises:
            ConfigError: ``text`` is not a version-1 cache (bad JSON, wrong version or shape).
        """
        if not isinstance(text, str):
            raise ConfigError(f"bootstrap cache must be JSON text, not {type(text).__name__}")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise ConfigError(f"bootstrap cache is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"bootstrap cache must be a JSON object, not {type(data).__name__}")
        version = data.get("version")
        if isinstance(version, bool) or version != CACHE_VERSION:
            raise ConfigError(f"bootstrap cache version must be {CACHE_VERSION}, not {version!r}")
        contacts = data.get("contacts")
        if not isinstance(contacts, list):
            raise ConfigError(f"bootstrap cache 'contacts' must be a list, not {type(contacts).__name__}")
        cache = cls()
        for item in contacts:
            entry = _parse_entry(item)
            if entry is None:
                cache.skipped += 1
                continue
            key = _key(entry.contact.addr)
            if key not in cache._entries and len(cache._entries) < cls.MAX_ENTRIES:
                cache._entries[key] = entry  # the file is most recent first already
        return cache


def _parse_entry(item: Any) -> CacheEntry | None:
    if not isinstance(item, dict):
        return None
    addr, peer_id, when = item.get("addr"), item.get("peer_id"), item.get("last_success")
    if not isinstance(addr, str) or not isinstance(peer_id, str):
        return None
    try:
        return CacheEntry(Contact(Endpoint.parse(addr), PeerId.from_str(peer_id)), _check_when(when))
    except (TypeError, ValueError):
        return None
