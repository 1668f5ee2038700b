"""The shell's side of NAT traversal: sockets to be observed, UPnP on the worker pool, connection info.

Everything here runs on the reactor thread (the driver's), except what
:class:`~crust.runtime.upnp.PortMapper` hands to the worker pool; the
engine decides, this module only feeds it our sockets and the router's
answers, and gathers what :meth:`crust.Service.prepare_connection_info`
returns.

* :meth:`NatGlue.observe` binds our TCP punch port and rUDP socket (if not
  yet) and tells the engine about them and our interface addresses; the
  engine then asks peers where they see them (a changed address set, a new
  network, forgets earlier answers).
* :meth:`NatGlue.map_ports` asks the router (UPnP IGD) to forward our
  listener ports; mapped endpoints join what the engine announces.
* Callers of ``prepare_connection_info()`` wait (bounded, on their own
  thread) until every socket's external mapping is known or nobody can say:
  :meth:`NatGlue.wait` registers them, :meth:`NatGlue.wake` (after every
  pump) answers them.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import Callable

from ..config import Config
from ..connection_info import TOKEN_SIZE, PrivConnectionInfo
from ..crypto import random_token
from ..ids import Endpoint, PeerId
from ..nat.observe import NatInfo
from ..nat.upnp import UpnpMapper
from ..transport.interfaces import local_addresses
from ..transport.reactor import Reactor
from .upnp import SETTLE_TIMEOUT, MiniupnpcIgd, PortMapper
from .driver import Driver
from .streams import Streams

__all__ = ["NatGlue", "SETTLE_TIMEOUT"]

Submit = Callable[[Callable[[], object]], object]


class NatGlue:
    """Our sockets as the engine observes them, the router's port mappings, and our connection info."""

    def __init__(self, driver: Driver, streams: Streams, reactor: Reactor, config: Config, peer_id: PeerId,
                 submit: Submit) -> None:
        self._driver = driver
        self._streams = streams
        self._reactor = reactor
        self._config = config
        self._peer_id = peer_id
        self._submit = submit  # the Service's worker pool: miniupnpc blocks
        self.upnp: PortMapper | None = None  # maps our listeners while we listen (enable_upnp)
        self._waiters: list[concurrent.futures.Future[None]] = []  # prepare_connection_info() callers

    def observe(self) -> None:
        """Bind our punch port and rUDP socket if need be and have peers asked about them."""
        streams, engine = self._streams, self._driver.engine
        engine.set_sockets(tcp_port=streams.punch_port(), udp_port=streams.udp_port(),
                           local_ips=local_addresses(self._config.listen_host), now=self._driver.time())
        self._driver.pump()

    def info(self) -> NatInfo:
        """What we know now (re-reading our interface addresses first), with UPnP's status lines."""
        self.observe()
        known = self._driver.engine.nat_info(self._driver.time())
        return known if self.upnp is None else dataclasses.replace(known, notes=self.upnp.status)

    # -- UPnP ----------------------------------------------------------------------------

    def map_ports(self, listeners: list[Endpoint]) -> None:
        """Ask the router (UPnP IGD) to forward our listener ports, on the worker pool (PROTOCOL.md §8)."""
        if self.upnp is None:
            reactor = self._reactor
            mapper = UpnpMapper(self._peer_id, lease=round(self._config.upnp_lease))
            self.upnp = PortMapper(mapper, MiniupnpcIgd(), submit=self._submit,
                                   call_soon_threadsafe=reactor.call_soon_threadsafe, call_at=reactor.call_at,
                                   clock=reactor.time, on_change=self._on_mapped)
        self.upnp.start(listeners)

    def unmap(self, done: Callable[[], None] | None = None) -> None:
        """Delete every mapping we made (nothing listens there any more); ``done()`` once they are gone."""
        if self.upnp is not None:
            self.upnp.stop(done)
        elif done is not None:
            done()

    def when_mapped(self, then: Callable[[], None]) -> None:
        """Run ``then`` once a mapping attempt under way has ended (at most ``SETTLE_TIMEOUT``), or now."""
        if self.upnp is None:
            then()
        else:
            self.upnp.when_settled(then, SETTLE_TIMEOUT)

    def _on_mapped(self, endpoints: tuple[Endpoint, ...]) -> None:
        self._driver.engine.set_mapped(endpoints, self._driver.time())
        self._driver.pump()

    # -- connection info ----------------------------------------------------------------

    def wait(self, answered: concurrent.futures.Future[None]) -> None:
        """Set ``answered`` once our external mappings are known (see :meth:`wake`)."""
        self.observe()
        self._waiters.append(answered)
        self.wake()

    def wake(self) -> None:
        """Answer the waiters once every socket's external mapping is known, or nobody can say (no peers)."""
        if not self._waiters:
            return
        engine, cfg = self._driver.engine, self._config
        if engine.peer_ids():
            info = engine.nat_info(self._driver.time())
            kinds = [t for t, enabled in ((info.tcp, cfg.enable_tcp), (info.udp, cfg.enable_udp)) if enabled]
            if any(t.external is None for t in kinds):
                return
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def gather(self) -> PrivConnectionInfo:
        """Our connection info, with a fresh token (the engine knows every candidate)."""
        return self._driver.engine.connection_info(random_token(TOKEN_SIZE), self._driver.time())
