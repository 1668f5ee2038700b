"""LanDiscovery: the LAN beacon's two sockets; the :class:`~crust.runtime.driver.Driver` pumps the beacon.

Runs on the reactor thread.  Two UDP sockets:

* the *responder* socket, bound to ``0.0.0.0:service_discovery_port`` with
  SO_REUSEADDR/SO_REUSEPORT so several Services on one host can listen (on
  Linux a broadcast reaches every socket bound to the wildcard address, and
  a socket bound to ``127.0.0.1`` would hear none of them);
* the *seeker* socket, on a random port with SO_BROADCAST: Seeks leave from
  it and the Replies (unicast, to the Seek's source) come back to it.

What to send, when, and what to answer are decided by the sans-IO
:class:`~crust.discovery.lan.LanBeacon` (seek windows, ending at the first
answer, the reply rate limit).  The node's driver pumps it beside the
engine, under the node's one timer; this class is its
:class:`~crust.runtime.driver.BeaconPort` (Seeks out, ended seeks to their
callers) and feeds it what the sockets receive.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

from ..crypto import random_token
from ..discovery.beacon import NONCE_SIZE, Reply
from ..discovery.lan import LanBeacon
from ..ids import Endpoint, PeerId
from ..transport.interfaces import broadcast_targets
from ..transport.reactor import Reactor
from ..transport.udp import UdpSocket
from .driver import Address, Driver

__all__ = ["LanDiscovery"]

log = logging.getLogger("crust")


class LanDiscovery:
    """The beacon's sockets for one Service.  Reactor thread only."""

    def __init__(self, reactor: Reactor, driver: Driver, *, port: int, targets: Sequence[str] | None,
                 name_hash: bytes, peer_id: PeerId) -> None:
        """Open the seeker socket and hand the beacon to ``driver``; nothing is answered until :meth:`set_listen`.

        Raises:
            ListenerError: the seeker socket could not be opened.
        """
        self._reactor = reactor
        self._driver = driver
        self._port = port
        self._targets = list(targets) if targets is not None else None
        self._beacon = LanBeacon(name_hash, peer_id)
        self._listen_socket: UdpSocket | None = None
        self._on_done: dict[int, Callable[[list[Reply]], None]] = {}  # seek id -> its caller's callback
        self._seek_socket = UdpSocket(reactor, "0.0.0.0", 0, self._on_reply, broadcast=True)
        driver.attach_beacon(self._beacon, self)

    def set_listeners(self, listeners: Sequence[Endpoint]) -> None:
        """What our Replies announce (the TCP listeners, at most the beacon's limit)."""
        self._beacon.set_listeners(listeners)

    def set_listen(self, listen: bool) -> None:
        """Answer Seeks (``True``) or stop answering.

        Raises:
            ListenerError: the discovery port could not be bound.
        """
        if listen and self._listen_socket is None:
            self._listen_socket = UdpSocket(self._reactor, "0.0.0.0", self._port, self._on_seek, reuse_port=True)
        elif not listen and self._listen_socket is not None:
            self._listen_socket.close()
            self._listen_socket = None

    def seek(self, window: float, on_done: Callable[[list[Reply]], None], *, until_first: bool = False) -> None:
        """Look for peers for ``window`` seconds; then ``on_done(replies)`` (in the order they came).

        With ``until_first``, the seek ends at the first answer instead.
        """
        seek_id = self._beacon.seek(self._seek_targets(), random_token(NONCE_SIZE), self._reactor.time(), window,
                                    until_first=until_first)
        self._started(seek_id, on_done)

    def seek_for_bootstrap(self, window: float, on_done: Callable[[list[Reply]], None], *,
                           others_known: bool) -> None:
        """The seek in front of a bootstrap run (:meth:`LanBeacon.seek_for_bootstrap` decides how long)."""
        seek_id = self._beacon.seek_for_bootstrap(self._seek_targets(), random_token(NONCE_SIZE),
                                                  self._reactor.time(), window, others_known=others_known)
        self._started(seek_id, on_done)

    def close(self) -> None:
        """Close both sockets; seeks in progress end at once with what they found."""
        self._beacon.close()
        self._driver.pump()  # reports the ended seeks
        self._driver.attach_beacon(None)
        self.set_listen(False)
        self._seek_socket.close()

    # -- the driver's BeaconPort ------------------------------------------------------------

    def send_seek(self, datagram: bytes, addr: Address) -> None:
        """Send one Seek from the seeker socket."""
        self._seek_socket.sendto(datagram, addr)

    def seek_done(self, seek_id: int, replies: list[Reply]) -> None:
        """Hand an ended seek's Replies to whoever started it."""
        self._on_done.pop(seek_id)(replies)

    # -- inputs -----------------------------------------------------------------------------

    def _seek_targets(self) -> list[tuple[str, int]]:
        targets = self._targets if self._targets is not None else broadcast_targets()
        if not targets:
            log.info("LAN discovery: no interface with a broadcast address; nothing to seek on")
        return [(t, self._port) for t in targets]

    def _started(self, seek_id: int, on_done: Callable[[list[Reply]], None]) -> None:
        self._on_done[seek_id] = on_done
        self._driver.pump()

    def _on_reply(self, data: bytes, addr: tuple[str, int]) -> None:
        self._beacon.receive_reply(data, addr, self._reactor.time())
        self._driver.pump()

    def _on_seek(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self._beacon.receive_seek(data, addr, self._reactor.time())
        if reply is not None and self._listen_socket is not None:
            self._listen_socket.sendto(reply, addr)
