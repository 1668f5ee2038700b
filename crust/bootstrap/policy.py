"""Bootstrapper: one bootstrap run's contact schedule (PROTOCOL.md §6).

Theory of operation.  Contacts are tried in the order given (the engine
passes cache, then hard-coded, then discovered contacts), without
duplicates and minus the blacklist.  Attempts are staggered like happy
eyeballs (RFC 8305 §5): a new attempt starts ``stagger`` seconds after the
previous one, or at once when one fails, and never more than
``max_in_flight`` at a time.  So a deaf contact costs at most one stagger,
and a thousand contacts never mean a thousand sockets.  The run ends at
the first success, when every contact has failed, or at ``deadline``.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from typing import Iterable, Sequence

from ..ids import Contact, Endpoint

__all__ = ["Bootstrapper", "is_blacklisted"]


def is_blacklisted(endpoint: Endpoint, blacklist: Iterable[Endpoint | str]) -> bool:
    """True when ``endpoint`` or its bare IP is on ``blacklist``."""
    for entry in blacklist:
        if isinstance(entry, Endpoint):
            if entry.host == endpoint.host and entry.port == endpoint.port:
                return True
        elif entry == endpoint.host:
            return True
    return False


class Bootstrapper:
    """Decides which contact to dial next and when a run is over."""

    def __init__(
        self,
        contacts: Sequence[Contact],
        *,
        blacklist: Iterable[Endpoint | str] = (),
        stagger: float,
        max_in_flight: int,
        deadline: float,
        now: float,
    ) -> None:
        blacklist = [_normalise(entry) for entry in blacklist]
        seen: set[tuple[str, int]] = set()
        self._queue: deque[Contact] = deque()
        self.skipped: list[Contact] = []
        for contact in contacts:
            key = (contact.addr.host, contact.addr.port)
            if key in seen:
                continue
            seen.add(key)
            if is_blacklisted(contact.addr, blacklist):
                self.skipped.append(contact)
            else:
                self._queue.append(contact)
        self._stagger = stagger
        self._max_in_flight = max_in_flight
        self.deadline = deadline
        self._next_start = now
        self.in_flight: set[Contact] = set()
        self.failures: dict[str, str] = {}
        self.winner: Contact | None = None

    @property
    def finished(self) -> bool:
        """True after a success, or when nothing is left to try."""
        return self.winner is not None or (not self._queue and not self.in_flight)

    def due(self, now: float) -> list[Contact]:
        """Contacts to dial now; each is then in flight until reported."""
        started = []
        while (self._queue and self.winner is None and len(self.in_flight) < self._max_in_flight
               and now >= self._next_start and now < self.deadline):
            contact = self._queue.popleft()
            self.in_flight.add(contact)
            started.append(contact)
            self._next_start = now + self._stagger
        return started

    def failed(self, contact: Contact, reason: str) -> None:
        """``contact`` did not work out; the next one may start at once."""
        self.in_flight.discard(contact)
        self.failures[str(contact.addr)] = reason
        self._next_start = min(self._next_start, 0.0)

    def succeeded(self, contact: Contact) -> set[Contact]:
        """``contact`` granted us; returns the other attempts, which the caller cancels."""
        self.in_flight.discard(contact)
        self.winner = contact
        others, self.in_flight = self.in_flight, set()
        self._queue.clear()
        return others

    def time_out(self) -> None:
        """The deadline passed: every attempt still running has failed."""
        for contact in self.in_flight:
            self.failures[str(contact.addr)] = "timed out"
        for contact in self._queue:
            self.failures[str(contact.addr)] = "not tried before the timeout"
        self.in_flight = set()
        self._queue.clear()

    def get_timer(self) -> float | None:
        """The next moment :meth:`due` could start something, or the deadline."""
        if self.finished:
            return None
        if self._queue and len(self.in_flight) < self._max_in_flight:
            return min(max(self._next_start, 0.0), self.deadline)
        return self.deadline


def _normalise(entry: Endpoint | str) -> Endpoint | str:
    if isinstance(entry, Endpoint):
        return entry
    try:
        return str(ipaddress.ip_address(entry))
    except ValueError:
        return Endpoint.parse(entry)
