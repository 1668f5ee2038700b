"""Bootstrap runs: the initiator side of a bootstrap (PROTOCOL.md §6).

Theory of operation.  A run owns a :class:`~crust.bootstrap.policy.Bootstrapper`
(which contacts to dial when, staggered, a bounded number in flight) and the
dials it started.  Each dial runs the secure handshake expecting the
contact's PeerId (when known), then sends ``BootstrapRequest``.  The first
grant wins and the other dials are closed; a denial or a failure is that
contact's reason.  A run ends with exactly one ``BootstrapFinished`` event:
the granting peer, or ``None`` with every contact's failure.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

from ..bootstrap.policy import Bootstrapper
from ..events import BootstrapFinished
from ..handshake.states import Role
from ..ids import ConnId, Contact, CrustUser, Endpoint, PeerId
from ..wire.messages import BootstrapDenied, DenyReason
from .core import Core
from .peers import Peers
from .records import NEVER, Conn, Run

__all__ = ["Runs"]


class Runs:
    """Every bootstrap run in progress."""

    def __init__(self, core: Core, peers: Peers) -> None:
        self._core = core
        self._peers = peers
        self._runs: dict[int, Run] = {}
        self._next_run = 0
        self.finished: list[Callable[[int, PeerId | None], None]] = []  # told of every run's end
        core.conn_failed.append(self._on_conn_failed)
        peers.established.append(self._on_established)

    def start(self, contacts: Sequence[Contact], *, blacklist: Iterable[Endpoint | str], user: CrustUser,
              timeout: float | None, now: float) -> int:
        """Start a run over ``contacts`` (IP literals only); returns its id."""
        core = self._core
        cfg = core.config
        self._next_run += 1
        # The node whitelist judges the nodes we bootstrap off as well as those that come to us, so a
        # reload of the list (Engine.update_whitelists) never drops a peer we were allowed to dial.
        refused = [contact for contact in contacts if not core.may_connect(contact.addr.host)]
        contacts = [contact for contact in contacts if core.may_connect(contact.addr.host)]
        policy = Bootstrapper(contacts, blacklist=[*blacklist, *core.banned_ips], stagger=cfg.bootstrap_stagger,
                              max_in_flight=cfg.bootstrap_max_in_flight,
                              deadline=now + (cfg.bootstrap_timeout if timeout is None else timeout), now=now)
        for contact in policy.skipped:
            policy.failures[str(contact.addr)] = "blacklisted"
        for contact in refused:
            policy.failures[str(contact.addr)] = "not whitelisted"
        run = self._runs[self._next_run] = Run(self._next_run, policy, user)
        self._pump(run, now)
        return run.id

    def stop(self) -> None:
        """Abandon every run (each reports ``BootstrapFinished`` with no peer)."""
        for run in list(self._runs.values()):
            run.policy.time_out()
            self._end(run, None)

    def clear(self) -> None:
        """Forget every run without a word (the engine is closing)."""
        self._runs.clear()

    def next_timer(self) -> float:
        """When the earliest run needs :meth:`handle_timer` (``NEVER`` if none)."""
        if not self._runs:  # the engine asks on every turn: the common case costs nothing
            return NEVER
        return min((due for run in self._runs.values() if (due := run.policy.get_timer()) is not None), default=NEVER)

    def handle_timer(self, now: float) -> None:
        """Start the dials that came due; end the runs whose deadline passed."""
        core = self._core
        for run in list(self._runs.values()):
            due = run.policy.get_timer()
            if due is not None and due <= now:
                if now >= run.policy.deadline:
                    run.policy.time_out()
                    for conn_id in run.dials.values():
                        if conn_id in core.conns:
                            core.close(core.conns[conn_id], flush=False)
                self._pump(run, now)

    def on_denied(self, conn: Conn, denied: BootstrapDenied) -> None:
        """The contact refused us (``conn`` is CLOSED by the table already)."""
        assert conn.peer_id is not None
        core = self._core
        if denied.reason is DenyReason.ALREADY_CONNECTED and conn.peer_id in self._peers.table:
            core.close(conn, flush=False)
            self._on_established(conn, conn.peer_id)
            return
        core.fail_conn(conn, f"denied: {denied.reason.name.lower()}")

    def _pump(self, run: Run, now: float) -> None:
        policy = run.policy
        for contact in policy.due(now):
            conn = self._core.dial(Role.INITIATOR, contact.addr, contact.peer_id, now)
            conn.contact, conn.run, conn.user = contact, run.id, run.user
            run.dials[contact] = conn.id
        if policy.finished and policy.winner is None:
            self._end(run, None)

    def _on_conn_failed(self, conn: Conn, reason: str, established: bool) -> None:
        if conn.run is None or established:
            return
        run = self._runs.get(conn.run)
        if run is not None and conn.contact is not None and conn.contact in run.policy.in_flight:
            run.policy.failed(conn.contact, reason)
            self._pump(run, self._core.now)

    def _on_established(self, conn: Conn, peer_id: PeerId) -> None:
        run = self._runs.get(conn.run) if conn.run is not None else None
        if run is None or conn.contact is None or conn.contact not in run.policy.in_flight:
            return
        core = self._core
        for other in run.policy.succeeded(conn.contact):
            other_conn = core.conns.get(run.dials.get(other, ConnId(0)))
            if other_conn is not None:
                core.close(other_conn, flush=False)
        self._end(run, peer_id)

    def _end(self, run: Run, peer_id: PeerId | None) -> None:
        if self._runs.pop(run.id, None) is None:
            return
        self._core.events.append(BootstrapFinished(run.id, peer_id, tuple(run.policy.failures.items())))
        for hook in self.finished:
            hook(run.id, peer_id)
