"""ContactBook: where a Service's bootstrap contacts come from, and the peers worth remembering.

Bootstrap tries contacts in one order (PROTOCOL.md §6): the bootstrap cache
(peers we were directly connected to, in this or an earlier session, with
their PeerIds), then the hard-coded contacts, then peers the LAN beacon
found, then hints learned by peer exchange (newest first).  The book keeps
the cache and the learned hints, records each outbound success, drops a
cached contact that failed for a real reason, and writes the cache file.

The book belongs to the reactor thread.  File reads happen once, at
construction (before the reactor runs); writes go to ``submit`` (the
Service's worker pool), coalesced: while one write is queued, later changes
only replace the text it will write.  That text is the one field two
threads touch (the reactor puts it, the worker takes it): ``_pending_lock``
guards it.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Callable, Iterable

from .bootstrap.cache import BootstrapCache
from .errors import ConfigError, CrustError
from .files import write_private_file
from .ids import Contact, Endpoint

__all__ = ["ContactBook"]

log = logging.getLogger("crust")

_MAX_CACHE_FILE = 4 * 1024 * 1024  # bytes; 1500 entries take ~200 KiB
# Bootstrap failure reasons that say nothing about the contact itself.
_NOT_A_FAILURE = frozenset({"blacklisted", "not tried before the timeout"})


class ContactBook:
    """The bootstrap cache and the peer-exchange hints of one Service (reactor thread only)."""

    def __init__(self, cache_path: str | None, submit: Callable[[Callable[[], None]], object]) -> None:
        """Load the cache file (a missing, unreadable or corrupt one gives an empty cache, logged).

        Args:
            cache_path: the cache file; None keeps nothing on disk.
            submit: runs a callable on a worker thread; may raise RuntimeError
                (or a CrustError) once the Service is closing.
        """
        self._path = cache_path
        self._submit = submit
        self._cache = _load_cache(cache_path)
        self._learned: OrderedDict[tuple[str, int], Contact] = OrderedDict()
        self._pending_text: str | None = None  # the newest dump waiting for the worker to write it
        self._pending_lock = threading.Lock()  # guards _pending_text: the reactor puts, the worker takes

    def __len__(self) -> int:
        """How many cached contacts there are."""
        return len(self._cache)

    def ordered(self, hard_coded: Iterable[Contact], lan: Iterable[Contact]) -> list[Contact]:
        """Every contact to try, in bootstrap order: cache, hard-coded, LAN, learned (newest first)."""
        return self._cache.contacts() + list(hard_coded) + list(lan) + self.learned

    @property
    def learned(self) -> list[Contact]:
        """The peer-exchange hints, newest first."""
        return list(reversed(self._learned.values()))

    def knows_anyone(self) -> bool:
        """True if the cache or the learned hints hold a contact."""
        return bool(len(self._cache) or self._learned)

    def record_success(self, contact: Contact, wall_time: float) -> None:
        """We dialled ``contact`` and it granted us: remember it first, and write the file."""
        self._cache.record_success(contact, wall_time)
        self._save()

    def record_failures(self, failures: Iterable[tuple[str, str]]) -> None:
        """Forget cached contacts that failed for a reason about themselves (not a blacklist, say)."""
        before = len(self._cache)
        for addr, why in failures:
            if why not in _NOT_A_FAILURE:
                self._cache.record_failure(Endpoint.parse(addr))
        if len(self._cache) != before:
            self._save()

    def learn(self, contacts: Iterable[Contact]) -> None:
        """Keep peer-exchange hints (newest last here, tried newest first), bounded like the cache."""
        for contact in contacts:
            key = (contact.addr.host, contact.addr.port)
            self._learned.pop(key, None)
            self._learned[key] = contact
        while len(self._learned) > BootstrapCache.MAX_ENTRIES:
            self._learned.popitem(last=False)

    def _save(self) -> None:
        """Write the cache on a worker thread (file I/O never runs on the reactor); writes coalesce."""
        path = self._path
        if path is None:
            return
        text = self._cache.dumps()
        with self._pending_lock:
            # A write is queued and has not taken its text yet (taking it needs this lock): it takes ours.
            pending = self._pending_text is not None
            self._pending_text = text
        if pending:
            return  # the queued write will take the newest text

        def write() -> None:
            with self._pending_lock:  # worker thread
                text, self._pending_text = self._pending_text, None
            if text is not None:
                try:
                    write_private_file(path, text.encode("utf-8"), what="bootstrap cache", make_dirs=True)
                except ConfigError as exc:
                    log.warning("%s", exc)

        try:
            self._submit(write)
        except (CrustError, RuntimeError):  # closing: the worker pool is gone, and so is the need to write
            with self._pending_lock:
                self._pending_text = None


def _load_cache(path: str | None) -> BootstrapCache:
    """The bootstrap cache at ``path``: empty when there is none; a bad file is logged and replaced later."""
    if path is None:
        return BootstrapCache()
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read(_MAX_CACHE_FILE)
    except FileNotFoundError:
        return BootstrapCache()
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("cannot read bootstrap cache %s (%s); starting with an empty one", path, exc)
        return BootstrapCache()
    try:
        cache = BootstrapCache.loads(text)
    except ConfigError as exc:
        log.warning("bootstrap cache %s is corrupt (%s); it will be replaced", path, exc)
        return BootstrapCache()
    if cache.skipped:
        log.warning("bootstrap cache %s: skipped %d malformed entries", path, cache.skipped)
    return cache
