"""FakeIgd: an in-memory router behind the ``Igd`` interface, with leases on its own clock.

It keeps a mapping table the way an IGD does (a lease ends the entry; an
entry held by another host makes AddMapping fail with a conflict), records
every call, and can be told to fail the next calls of one kind.  Thread-safe,
so the driver tests can run it on worker threads and wait for its calls.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from crust.nat.igd import Action, IgdError, IgdNotFound, IgdRefused, MappingConflict
from crust.nat.upnp import UpnpMapper

LAN_IP = "10.1.0.2"
EXTERNAL_IP = "203.0.113.5"
OTHER_HOST = "10.1.0.99"


def wait_on(cond: threading.Condition, predicate: Callable[[], bool], timeout: float) -> bool:
    """Wait until ``predicate()`` holds (re-checked whenever ``cond`` is notified), at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    with cond:
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            cond.wait(left)
        return True


@dataclass
class Entry:
    host: str
    port: int
    description: str
    expires: float  # on the fake's clock; inf for a permanent entry


class FakeIgd:
    """An IGD in memory.  ``now`` is its virtual clock unless a ``clock`` is given."""

    def __init__(self, *, found: bool = True, lan_ip: str = LAN_IP, external_ip: str = EXTERNAL_IP,
                 clock: Callable[[], float] | None = None) -> None:
        self.found = found
        self.lan_ip = lan_ip
        self.external_ip_value = external_ip
        self.now = 0.0
        self._clock = clock
        self.table: dict[tuple[str, int], Entry] = {}
        self.calls: list[tuple[object, ...]] = []
        self.failed: list[tuple[object, ...]] = []  # the calls answered with an injected failure
        self.threads: set[str] = set()  # names of the threads that called us
        self.failures: dict[str, list[IgdError]] = {"discover": [], "external_ip": [], "add": [], "delete": []}
        self.conflict_all = False  # every AddMapping conflicts (a crowded router)
        self.gate: dict[str, threading.Event] = {}  # method -> event it waits for before answering
        self.blocked: list[str] = []  # methods that reached their gate
        self.cond = threading.Condition()

    # -- test controls ------------------------------------------------------------

    def time(self) -> float:
        return self._clock() if self._clock is not None else self.now

    def fail_next(self, method: str, error: IgdError, times: int = 1) -> None:
        with self.cond:
            self.failures[method].extend([error] * times)

    def take(self, proto: str, port: int, host: str = OTHER_HOST, lease: float = 3600) -> None:
        """Another host maps ``proto`` ``port`` (replacing whatever was there)."""
        with self.cond:
            self.table[proto, port] = Entry(host, port, "someone else", self.time() + lease)

    def live(self, host: str | None = LAN_IP) -> dict[tuple[str, int], Entry]:
        """Unexpired entries (of ``host``; None: of anyone)."""
        with self.cond:
            now = self.time()
            return {k: e for k, e in self.table.items() if e.expires > now and (host is None or e.host == host)}

    def count(self, method: str) -> int:
        with self.cond:
            return sum(1 for call in self.calls if call[0] == method)

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait (bounded) until ``predicate()`` holds; it is re-checked after every call."""
        return wait_on(self.cond, predicate, timeout)

    # -- the Igd interface -----------------------------------------------------------

    def _enter(self, method: str, *args: object) -> None:
        gate = self.gate.get(method)
        if gate is not None:
            with self.cond:
                self.blocked.append(method)
                self.cond.notify_all()
            gate.wait(10.0)  # bounded: a test that forgets to open the gate still ends
        with self.cond:
            self.threads.add(threading.current_thread().name)
            self.calls.append((method, *args))
            self.cond.notify_all()
            if self.failures[method]:
                self.failed.append(self.calls[-1])
                raise self.failures[method].pop(0)

    def discover(self) -> str:
        self._enter("discover")
        if not self.found:
            raise IgdNotFound("Success")
        return self.lan_ip

    def external_ip(self) -> str:
        self._enter("external_ip")
        return self.external_ip_value

    def add(self, proto: str, external_port: int, internal_host: str, internal_port: int,
            description: str, lease: int) -> None:
        self._enter("add", proto, external_port, internal_host, internal_port, description, lease)
        assert proto in ("tcp", "udp") and 1 <= lease, (proto, lease)  # never a permanent mapping
        with self.cond:
            held = self.live(None).get((proto, external_port))
            if self.conflict_all or (held is not None and held.host != internal_host):
                raise MappingConflict("ConflictInMappingEntry")
            self.table[proto, external_port] = Entry(internal_host, internal_port, description, self.time() + lease)
            self.cond.notify_all()

    def delete(self, proto: str, external_port: int, internal_host: str, internal_port: int) -> None:
        self._enter("delete", proto, external_port, internal_host, internal_port)
        with self.cond:
            entry = self.table.get((proto, external_port))
            if entry is not None and (entry.host, entry.port) == (internal_host, internal_port):
                del self.table[proto, external_port]
            self.cond.notify_all()


def drive(mapper: UpnpMapper, igd: FakeIgd, now: float, limit: int = 100) -> list[Action]:
    """Carry out every action the mapper has at ``now`` (the fake's clock is set to it); returns them."""
    igd.now = now
    done: list[Action] = []
    for _ in range(limit):
        action = mapper.next_action(now)
        if action is None:
            return done
        done.append(action)
        try:
            result = action.perform(igd)
        except IgdError as err:
            mapper.action_failed(err, now)
        else:
            mapper.action_done(result, now)
    raise AssertionError(f"mapper still had actions after {limit}: {done[-5:]}")


def reports(mapper: UpnpMapper) -> list[str]:
    out = []
    for _ in range(1000):
        line = mapper.next_report()
        if line is None:
            break
        out.append(line)
    return out


__all__ = ["FakeIgd", "Entry", "drive", "reports", "wait_on", "IgdRefused", "LAN_IP", "EXTERNAL_IP", "OTHER_HOST"]
