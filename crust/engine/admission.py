"""Admission: the responder side of a bootstrap, reachability dial-back included.

Theory of operation.  A ``BootstrapRequest`` puts the connection in
``JUDGING_BOOTSTRAP``; the checks run in PROTOCOL.md §6.3's order (ban,
accepting, network, whitelist, capacity: :func:`judge_bootstrap`), then the
duplicate rule.  A Node must also prove it is reachable from outside: we
dial back up to ``MAX_REACHABILITY_PROBES`` of the listeners it announced
(``CHECKING_REACHABILITY``), expecting its PeerId; the first dial-back whose
secure handshake completes grants the request, and the request is denied
once every dial-back failed.  The budget is half the handshake timeout, so
the requester (whose own deadline started earlier) hears the answer before
it gives up.
"""

from __future__ import annotations

from ..events import Origin
from ..handshake.bootstrap import judge_bootstrap
from ..handshake.states import Decision, Role
from ..ids import ConnId, CrustUser, tcp_first
from ..wire.messages import MAX_LISTENERS, BootstrapDenied, BootstrapGranted, BootstrapRequest, DenyReason
from .core import Core
from .peers import Peers
from .records import Conn

__all__ = ["Admission", "MAX_REACHABILITY_PROBES"]

MAX_REACHABILITY_PROBES = 4  # listeners of a bootstrapping Node dialled back at once


class Admission:
    """Decides bootstrap requests made to us."""

    def __init__(self, core: Core, peers: Peers) -> None:
        self._core = core
        self._peers = peers
        self.accepting = True  # set_accept_bootstrap()
        core.conn_failed.append(self._on_conn_failed)

    def on_request(self, conn: Conn, request: BootstrapRequest, now: float) -> None:
        """Judge ``request`` (``conn`` is in JUDGING_BOOTSTRAP): grant, deny or check reachability."""
        core, peers = self._core, self._peers
        cfg = core.config
        deny = DenyReason.BANNED if core.is_banned(conn.peer_id, conn.remote) else judge_bootstrap(
            request, remote_ip=conn.remote.host, accepting=self.accepting,
            node_whitelist=cfg.whitelisted_node_ips, client_whitelist=cfg.whitelisted_client_ips,
            is_new_peer=conn.peer_id not in peers.table, peer_count=len(peers.table), max_peers=cfg.max_peers)
        if deny is None and not peers.wins_duplicate(conn):
            deny = DenyReason.ALREADY_CONNECTED
        if deny is None and request.user is CrustUser.NODE and not cfg.disable_external_reachability_requirement:
            self._check_reachability(conn, request, now)
            return
        self._answer(conn, request, deny, now)

    def _answer(self, conn: Conn, request: BootstrapRequest, deny: DenyReason | None, now: float) -> None:
        core = self._core
        if deny is None and not self._peers.wins_duplicate(conn):  # again: a check may have taken seconds
            deny = DenyReason.ALREADY_CONNECTED
        if deny is not None:
            core.refused += 1
            core.move(conn, Decision.DENY)
            core.send_control(conn, BootstrapDenied(deny))
            core.close(conn, flush=True)
            return
        core.move(conn, Decision.GRANT)
        conn.user = request.user
        conn.listeners = request.listeners
        conn.shareable = request.shareable
        core.send_control(conn, BootstrapGranted(core.listeners[:MAX_LISTENERS]))
        self._peers.establish(conn, Origin.BOOTSTRAP_ACCEPT, now)

    def _check_reachability(self, conn: Conn, request: BootstrapRequest, now: float) -> None:
        """Dial back the Node's listeners (PROTOCOL.md §6.3); grant once one answers as that PeerId."""
        core = self._core
        listeners = tcp_first(request.listeners)[:MAX_REACHABILITY_PROBES]
        if not listeners:
            self._answer(conn, request, DenyReason.FAILED_EXTERNAL_REACHABILITY, now)
            return
        core.move(conn, Decision.CHECK_REACHABILITY)
        conn.request = request
        budget = core.config.handshake_timeout / 2
        for endpoint in listeners:
            probe = core.dial(Role.INITIATOR, endpoint, conn.peer_id, now)
            probe.probe_for = conn.id
            probe.deadline = now + budget
            core.schedule(probe, probe.deadline)  # earlier than the handshake deadline dial() scheduled
            conn.probes.add(probe.id)

    def on_probe_secured(self, probe: Conn) -> None:
        """A dial-back finished its handshake as the requester: it is reachable."""
        assert probe.probe_for is not None
        self._core.move(probe, Decision.SECURED_PROBE)
        self._core.close(probe, flush=True)
        self._checked(probe.probe_for, probe.id, reachable=True)

    def _on_conn_failed(self, conn: Conn, reason: str, established: bool) -> None:
        if conn.probe_for is not None:
            self._checked(conn.probe_for, conn.id, reachable=False)

    def _checked(self, request_id: ConnId, probe_id: ConnId, *, reachable: bool) -> None:
        core = self._core
        conn = core.conns.get(request_id)
        if conn is None or conn.request is None or probe_id not in conn.probes:
            return  # the requester left, or an earlier probe already decided
        conn.probes.discard(probe_id)
        if not reachable and conn.probes:
            return  # other listeners may still answer
        request, conn.request = conn.request, None
        for other in conn.probes:
            if other in core.conns:
                core.close(core.conns[other], flush=False)
        conn.probes.clear()
        deny = None if reachable else DenyReason.FAILED_EXTERNAL_REACHABILITY
        self._answer(conn, request, deny, core.now)
