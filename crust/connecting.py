"""Connect: rendezvous through connection info swapped out of band (the Service's ``connect`` methods).

``prepare_connection_info`` gathers every way to reach us (asking connected
peers where they see us first); ``connect`` / ``start_connect`` hand both
sides' candidates to the engine, which dials them all at once, and turn its
``ConnectFinished`` into the caller's answer or a callback.
"""

from __future__ import annotations

import concurrent.futures
import time

from .connection_info import PrivConnectionInfo, PubConnectionInfo
from .errors import ConnectError, ConnectToSelf, ServiceClosed
from .events import ConnectFinished
from .handlers import ConnectFailed
from .ids import PeerId
from .service_base import CALL_MARGIN, ServiceBase, check_positive_timeout

__all__ = ["Connecting", "NAT_WAIT"]

NAT_WAIT = 2.0  # seconds prepare_connection_info() waits for peers to say where they see us


class Connecting(ServiceBase):
    """``prepare_connection_info``, ``connect`` and ``start_connect`` of :class:`crust.Service`."""

    def prepare_connection_info(self, timeout: float | None = None) -> PrivConnectionInfo:
        """Our PeerId, every way to reach us and a fresh connect token, to swap out of band.

        The info names our listeners (local addresses, loopback ones only when
        nothing else exists; external ones we were told of or UPnP mapped), our
        TCP punch port and our rUDP socket, each as observers see it and
        locally.  Binding those sockets and asking connected peers where they
        see them may take a moment: we wait up to ``NAT_WAIT`` seconds (never
        beyond ``timeout``) for the answers when we have peers to ask.
        """
        limit = CALL_MARGIN if timeout is None else check_positive_timeout(timeout)
        deadline = time.monotonic() + limit
        answered: concurrent.futures.Future[None] = concurrent.futures.Future()

        self._call(lambda: self._nat.wait(answered), limit)
        try:
            answered.result(max(0.0, min(NAT_WAIT, deadline - time.monotonic())))
        except concurrent.futures.TimeoutError:
            pass  # what we know by now will do; the peer's own candidates may still reach us
        finally:
            answered.cancel()
        return self._call(self._nat.gather, max(0.0, deadline - time.monotonic()))

    def connect(self, ours: PrivConnectionInfo, theirs: PubConnectionInfo, timeout: float | None = None) -> PeerId:
        """Connect to the peer whose info we got out of band; it calls ``connect`` with ours.

        Every candidate is dialled at once and the peer's dials count too; exactly
        one connection survives and both sides see ``on_new_peer(origin="connect")``
        once.  Already connected: returns at once.

        Raises:
            ConnectToSelf: ``theirs`` is our own info.
            ConnectError: no candidate connected within ``timeout`` (default ``connect_timeout``);
                ``reasons`` names each candidate's failure.
        """
        timeout = self._config.connect_timeout if timeout is None else check_positive_timeout(timeout)
        future: concurrent.futures.Future[PeerId] = concurrent.futures.Future()
        self._start_connect(ours, theirs, timeout, future)
        try:
            return future.result(timeout + CALL_MARGIN)
        except concurrent.futures.CancelledError:
            raise ServiceClosed("the service closed during connect") from None
        except concurrent.futures.TimeoutError:
            raise ConnectError(f"connect to {theirs.peer_id!r} did not finish within {timeout} s") from None

    def start_connect(self, ours: PrivConnectionInfo, theirs: PubConnectionInfo) -> None:
        """Like :meth:`connect` without blocking: ``on_new_peer`` or ``on_connect_failure`` follow."""
        self._start_connect(ours, theirs, self._config.connect_timeout, None)

    def _start_connect(self, ours: PrivConnectionInfo, theirs: PubConnectionInfo, timeout: float,
                       future: concurrent.futures.Future[PeerId] | None) -> None:
        if not isinstance(ours, PrivConnectionInfo):
            raise TypeError(f"ours must be a crust.PrivConnectionInfo, not {type(ours).__name__}")
        if not isinstance(theirs, PubConnectionInfo):
            raise TypeError(f"theirs must be a crust.PubConnectionInfo, not {type(theirs).__name__}")
        if ours.peer_id != self.id:
            raise ValueError("ours was prepared by another Service (its peer_id is not ours)")
        if theirs.peer_id == self.id:
            raise ConnectToSelf("the connection info is our own: cannot connect to ourselves")
        self._check_open()

        def start() -> None:
            if future is not None:
                self._connect_waiters.setdefault(theirs.peer_id, []).append(future)
            else:
                self._async_connects.add(theirs.peer_id)
            self._engine.start_connect(theirs.peer_id, theirs.listeners, tcp_punch=theirs.tcp_punch,
                                       udp_punch=theirs.udp_punch, their_token=theirs.token, our_token=ours.token,
                                       timeout=timeout, their_relays=theirs.relays, our_relays=ours.relays,
                                       now=self._reactor.time())
            self._driver.pump()

        self._call(start)

    def _finish_connect(self, done: ConnectFinished) -> None:
        reasons = dict(done.failures)
        for waiter in self._connect_waiters.pop(done.peer_id, []):
            if done.connected:
                waiter.set_result(done.peer_id)
            else:
                waiter.set_exception(ConnectError(f"could not connect to {done.peer_id!r}", reasons))
        if done.peer_id in self._async_connects:
            self._async_connects.discard(done.peer_id)
            if not done.connected:
                self._dispatcher.post(ConnectFailed(done.peer_id))
