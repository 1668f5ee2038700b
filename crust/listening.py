"""Listening and LAN discovery: the Service's listeners, what peers see of us, and the LAN beacon."""

from __future__ import annotations

import concurrent.futures
import logging

from .errors import CrustTimeoutError
from .ids import Endpoint, name_hash
from .nat.observe import NatInfo
from .runtime.lan import LanDiscovery
from .service_base import CALL_MARGIN, ServiceBase, check_positive_timeout

__all__ = ["Listening"]

log = logging.getLogger("crust")


class Listening(ServiceBase):
    """``start_listening``, ``stop_listening``, ``nat_info``, ``set_accept_bootstrap`` and the LAN beacon's methods."""

    def start_listening(self) -> list[Endpoint]:
        """Accept connections (on ``config.tcp_port``, random by default); returns our endpoints.

        Raises:
            ListenerError: the port could not be bound.
        """
        return self._call(self._start_listening)

    def _start_listening(self) -> list[Endpoint]:
        if self._streams.endpoints:
            return self._engine.listeners(self._reactor.time())  # already listening: local and external
        endpoints = self._streams.listen()
        self._engine.set_listeners(endpoints)
        self._nat.observe()
        if self._config.enable_upnp:
            self._nat.map_ports(endpoints)
        if self._lan is not None:
            self._lan.set_listeners(endpoints)
        log.info("listening on %s", ", ".join(map(str, endpoints)))
        return endpoints

    def nat_info(self) -> NatInfo:
        """What peers have told us about our NAT: external TCP and UDP endpoints, mapping behaviour, since when.

        Peers are asked from the moment we listen, prepare connection info or
        first call this (which then answers with what little is known yet),
        and again whenever a new peer connects while fewer than three
        observer IPs have answered; answers count for 10 minutes.  Each call
        also re-reads our interface addresses: when they changed (a new
        network), every earlier answer is forgotten and peers are asked anew.
        """
        return self._call(self._nat.info)

    def stop_listening(self) -> None:
        """Stop accepting new connections; existing ones stay."""
        def stop() -> None:
            self._streams.stop_listening()
            self._engine.set_listeners(())
            self._nat.unmap()  # nothing listens there any more
        self._call(stop)

    def set_accept_bootstrap(self, accept: bool) -> None:
        """Whether peers may bootstrap off us (default True)."""
        if not isinstance(accept, bool):
            raise TypeError("accept must be a bool")
        self._call(lambda: setattr(self._engine, "accept_bootstrap", accept))

    def start_service_discovery(self) -> None:
        """Start the LAN beacon: bootstraps then also try peers that answer on the LAN.

        Seeks go to ``service_discovery_targets`` (default: every interface's
        broadcast address) on ``service_discovery_port``.  Answering other
        seekers is separate: :meth:`set_service_discovery_listen`.

        Raises:
            ListenerError: the beacon's socket could not be opened.
        """
        self._call(self._ensure_lan)

    def set_service_discovery_listen(self, listen: bool) -> None:
        """Answer (``True``) or ignore LAN seekers; starts the beacon if needed.

        Raises:
            ListenerError: ``service_discovery_port`` could not be bound.
        """
        if not isinstance(listen, bool):
            raise TypeError("listen must be a bool")
        self._call(lambda: self._ensure_lan().set_listen(listen))

    def has_peers_on_lan(self, timeout: float = 1.0) -> bool:
        """Seek for ``timeout`` seconds (> 0): did any peer of our network answer?  Starts the beacon if needed."""
        timeout = check_positive_timeout(timeout)
        future: concurrent.futures.Future[bool] = concurrent.futures.Future()
        self._call(lambda: self._ensure_lan().seek(timeout, lambda replies: future.set_result(bool(replies)),
                                                   until_first=True))
        try:
            return future.result(timeout + CALL_MARGIN)
        except concurrent.futures.TimeoutError:
            raise CrustTimeoutError("the LAN seek did not finish") from None

    def _ensure_lan(self) -> LanDiscovery:
        if self._lan is None:
            cfg = self._config
            self._lan = LanDiscovery(self._reactor, self._driver, port=cfg.service_discovery_port,
                                     targets=cfg.service_discovery_targets, name_hash=name_hash(cfg.network_name),
                                     peer_id=self.id)
            self._lan.set_listeners(self._engine.listeners(self._reactor.time()))
        return self._lan
