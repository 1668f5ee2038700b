"""Watching a Service: ``wait_for_peer()``, ``lost_reason()`` and ``stats()``.

Both are answered on the reactor thread from what the Service already
knows: the engine's peers and the :class:`~crust.stats.Tally` that
``Service._account`` keeps.  A ``wait_for_peer()`` waiter is answered by
``_account`` *after* it has queued the events of the same round for the
callbacks, so ``on_new_peer`` for that peer is queued before the call
returns.  Neither depends on the dispatcher, so both work with
``dispatch="manual"`` too.
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections import OrderedDict

from .errors import PeerWaitTimeout, ServiceClosed
from .events import RelayStats
from .ids import PeerId
from .service_base import ServiceBase, check_peer_id, check_positive_timeout
from .stats import Stats, Tally

__all__ = ["Watching", "LOST_REASONS_KEPT"]

log = logging.getLogger("crust")
LOST_REASONS_KEPT = 1024  # peers whose last loss lost_reason() remembers (the oldest are forgotten)
TOO_LARGE = "closed by peer (message_too_large)"  # PeerLost.reason after a Goodbye(MESSAGE_TOO_LARGE)


class Watching(ServiceBase):
    """``wait_for_peer`` and ``stats`` of :class:`crust.Service`."""

    # All three: the reactor thread only (set up in Service.__init__ before it starts).
    _tally: Tally
    _peer_waiters: list[tuple[PeerId | None, concurrent.futures.Future[PeerId]]]
    _lost_reasons: OrderedDict[PeerId, str]

    def wait_for_peer(self, peer_id: PeerId | None = None, timeout: float | None = None) -> PeerId:
        """Block until a peer is connected (any, or ``peer_id``); return its PeerId.

        Returns at once when one is connected already (with ``peer_id=None``,
        one of those).  Otherwise returns when the next connection comes up;
        its ``on_new_peer`` callback has been queued by then, and runs before
        any ``on_message`` from that peer.  Works with ``dispatch="manual"``
        (it does not wait for callbacks to run) and from inside a callback.

        Args:
            peer_id: the peer to wait for; ``None`` for any peer.
            timeout: seconds (> 0) to wait at most; ``None`` waits until a peer
                comes or the Service closes.

        Raises:
            PeerWaitTimeout: no such peer connected within ``timeout`` seconds.
            ServiceClosed: the Service is (or was, during the wait) closed.
            TypeError / ValueError: bad ``peer_id`` or ``timeout``.
        """
        if peer_id is not None:
            check_peer_id(peer_id)
        limit = None if timeout is None else check_positive_timeout(timeout)
        if self._reactor.in_reactor_thread():
            raise RuntimeError("wait_for_peer() must not be called on the I/O thread")
        future: concurrent.futures.Future[PeerId] = concurrent.futures.Future()
        waiter = (peer_id, future)

        def register() -> None:
            connected = self._engine.peer_ids() if peer_id is None else \
                [peer_id] if self._engine.is_connected(peer_id) else []
            if connected:
                future.set_result(connected[0])
            else:
                self._peer_waiters.append(waiter)

        self._call(register)
        try:
            return future.result(limit)
        except concurrent.futures.CancelledError:
            raise ServiceClosed("the service closed while waiting for a peer") from None
        except concurrent.futures.TimeoutError:
            try:
                self._reactor.call_soon_threadsafe(self._forget_waiter, waiter)
            except ServiceClosed:
                pass
            which = "any peer" if peer_id is None else repr(peer_id)
            raise PeerWaitTimeout(f"no connection to {which} within {limit} s") from None

    def _forget_waiter(self, waiter: tuple[PeerId | None, concurrent.futures.Future[PeerId]]) -> None:
        if waiter in self._peer_waiters:
            self._peer_waiters.remove(waiter)

    def _peer_up(self, peer_id: PeerId) -> None:
        """Answer the waiters for ``peer_id`` or any peer (reactor; after the round's events were queued)."""
        waiting: list[tuple[PeerId | None, concurrent.futures.Future[PeerId]]] = []
        for wanted, future in self._peer_waiters:
            if wanted is None or wanted == peer_id:
                if not future.done():
                    future.set_result(peer_id)
            else:
                waiting.append((wanted, future))
        self._peer_waiters = waiting

    def lost_reason(self, peer_id: PeerId) -> str | None:
        """Why the latest connection to ``peer_id`` ended, in a few words; ``None`` if none has.

        Set before ``on_lost`` is queued, so an ``on_lost`` handler can ask.  For
        example ``"disconnected"``, ``"timed out"``, ``"closed by peer (closed)"``,
        ``"misbehaved: ..."``, or ``"closed by peer (message_too_large)"``: the
        peer refused a message we sent because it exceeded *its*
        ``max_message_size`` (smaller than ours); send it smaller messages.  The
        last :data:`LOST_REASONS_KEPT` peers lost are remembered.
        """
        check_peer_id(peer_id)
        return self._call(lambda: self._lost_reasons.get(peer_id))

    def _peer_lost(self, peer_id: PeerId, reason: str) -> None:
        """Remember why ``peer_id`` was lost (reactor); say what to do about an oversize message."""
        reasons = self._lost_reasons
        reasons.pop(peer_id, None)
        reasons[peer_id] = reason
        if len(reasons) > LOST_REASONS_KEPT:
            reasons.popitem(last=False)
        if reason == TOO_LARGE:
            log.warning("peer %r closed the connection: a message we sent exceeded its max_message_size, "
                        "which is smaller than ours (%d bytes); send it smaller messages, or give every node "
                        "the same max_message_size", peer_id, self._config.max_message_size)

    def relay_stats(self) -> RelayStats:
        """What this node relayed for peers that cannot reach each other (``Config.relay``): counts and sizes."""
        return self._call(self._engine.relay_stats)

    def stats(self) -> Stats:
        """A snapshot of the Service's counters (peers, bytes, drops, refusals, misbehaviour...).

        See :class:`crust.Stats` for every field.
        """
        def snapshot() -> Stats:
            engine = self._engine
            return self._tally.snapshot([engine.peer_info(p) for p in engine.peer_ids()], engine.refused())
        return self._call(snapshot)
