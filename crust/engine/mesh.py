"""Mesh: keep ``target_peers`` connections by bootstrapping off the peers our peers tell us of.

Theory of operation.  With ``Config.target_peers`` above 0, a Service grows
its own mesh instead of leaving every connection to the application:

* *What we know.*  Peer exchange answers (the peer that let us in is asked
  at once; :mod:`~crust.engine.peer_exchange` says who is shared) give us
  contacts with PeerIds; the newest ``MAX_KNOWN`` peers are kept.
* *Growing.*  While we have fewer than ``target_peers`` peers (counting the
  attempts under way), each known peer we are not connected to gets a
  one-peer bootstrap run (its listeners as contacts, its PeerId expected),
  in the role of the application's last bootstrap, at most ``MAX_TRYING`` at
  a time.  A peer whose attempt failed waits ``RETRY_AFTER`` before the next.
* *Asking again.*  Every ``ASK_INTERVAL`` while below target, the peer we
  asked longest ago is asked for contacts again (answers are fresh samples at
  most every ``MIN_ANSWER_INTERVAL`` per asker, on the answering side).

Everything is an ordinary bootstrap, so the usual checks apply on both
sides (network, whitelists, reachability of a Node, the duplicate rule) and
two peers that dial each other end with one connection.
"""

from __future__ import annotations

from collections import OrderedDict

from ..ids import Contact, CrustUser, PeerId
from .core import Core
from .peers import Peers
from .records import NEVER
from .runs import Runs

__all__ = ["Mesh", "MAX_KNOWN", "MAX_TRYING", "RETRY_AFTER", "ASK_INTERVAL"]

MAX_KNOWN = 256  # peers whose contacts we keep for growing the mesh
MAX_TRYING = 4  # mesh bootstrap runs at once
RETRY_AFTER = 60.0  # seconds before a peer whose attempt failed is tried again
ASK_INTERVAL = 10.0  # seconds between two peer-exchange requests while below target


class Mesh:
    """Keeps the number of peers at ``target_peers`` (0: does nothing)."""

    def __init__(self, core: Core, peers: Peers, runs: Runs) -> None:
        self._core = core
        self._peers = peers
        self._runs = runs
        self.target = core.config.target_peers
        self.user = CrustUser.NODE  # the role of the application's last bootstrap
        self._known: OrderedDict[PeerId, list[Contact]] = OrderedDict()  # oldest first
        self._trying: dict[int, PeerId] = {}  # bootstrap run -> the peer it tries
        self._failed_at: dict[PeerId, float] = {}
        self._asked_at: dict[PeerId, float] = {}  # when we last asked each peer for contacts
        self._next_ask = NEVER
        peers.learned.append(self._on_learned)
        peers.established.append(lambda conn, peer_id: self.grow(core.now))
        runs.finished.append(self._on_run_finished)

    def bootstrapped(self, user: CrustUser, now: float) -> None:
        """The application bootstrapped as ``user``: mesh dials use that role from now on."""
        self.user = user
        if self.target:
            self._next_ask = now + ASK_INTERVAL

    def next_timer(self) -> float:
        """When to ask for contacts again (``NEVER`` when off or at target)."""
        return self._next_ask if self._below_target() else NEVER

    def handle_timer(self, now: float) -> None:
        """Ask the peer asked longest ago for contacts, and grow."""
        if now < self._next_ask or not self._below_target():
            return
        self._next_ask = now + ASK_INTERVAL
        table = self._peers.table
        if table:
            peer_id = min(table, key=lambda pid: self._asked_at.get(pid, float("-inf")))
            self._asked_at[peer_id] = now
            self._peers.ask_exchange(table[peer_id])
        self.grow(now)

    def grow(self, now: float) -> None:
        """Start a run to each known, unconnected peer while below target."""
        if not self._below_target():
            return
        trying = set(self._trying.values())
        for peer_id, contacts in list(self._known.items()):
            if not self._below_target() or len(self._trying) >= MAX_TRYING:
                return
            if (peer_id in self._peers.table or peer_id in trying or peer_id == self._core.id
                    or now - self._failed_at.get(peer_id, float("-inf")) < RETRY_AFTER):
                continue
            run = self._runs.start(contacts, blacklist=(), user=self.user, timeout=None, now=now)
            self._trying[run] = peer_id
            trying.add(peer_id)

    def _below_target(self) -> bool:
        return len(self._peers.table) + len(self._trying) < self.target

    def _on_learned(self, contacts: list[Contact]) -> None:
        for contact in contacts:
            if contact.peer_id is None:
                continue
            known = self._known.setdefault(contact.peer_id, [])
            if contact not in known:
                known.append(contact)
            self._known.move_to_end(contact.peer_id)
        while len(self._known) > MAX_KNOWN:
            self._known.popitem(last=False)
        self.grow(self._core.now)

    def _on_run_finished(self, run: int, peer_id: PeerId | None) -> None:
        tried = self._trying.pop(run, None)
        if tried is not None and peer_id is None:
            self._failed_at[tried] = self._core.now
            while len(self._failed_at) > MAX_KNOWN:
                del self._failed_at[next(iter(self._failed_at))]
