"""LanDiscovery: the LAN beacon's sockets and timers around the sans-IO seeker and responder.

Runs on the reactor thread.  Two UDP sockets:

* the *responder* socket, bound to ``0.0.0.0:service_discovery_port`` with
  SO_REUSEADDR/SO_REUSEPORT so several Services on one host can listen (on
  Linux a broadcast reaches every socket bound to the wildcard address, and
  a socket bound to ``127.0.0.1`` would hear none of them);
* the *seeker* socket, on a random port with SO_BROADCAST: Seeks leave from
  it and the Replies (unicast, to the Seek's source) come back to it.

A seek runs for one window; :class:`~crust.discovery.beacon.BeaconSeeker`
says when to resend, and the reactor's timers fire those moments.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import netifaces  # type: ignore[import-untyped]

from .crypto import random_token
from .discovery.beacon import NONCE_SIZE, BeaconResponder, BeaconSeeker, Reply
from .ids import Endpoint, PeerId
from .transport.reactor import Reactor
from .transport.udp import UdpSocket

__all__ = ["LanDiscovery", "broadcast_targets"]

log = logging.getLogger("crust")

_REPLY_INTERVAL = 0.1  # seconds between two Replies to one source IP (a seeker retries every window/4)
_MAX_TRACKED_SOURCES = 4096


def broadcast_targets() -> list[str]:
    """The broadcast address of every IPv4 interface that has one (netifaces)."""
    found: list[str] = []
    for name in netifaces.interfaces():
        for entry in netifaces.ifaddresses(name).get(netifaces.AF_INET, []):
            broadcast = entry.get("broadcast")
            if broadcast and broadcast not in found:
                found.append(str(broadcast))
    return found


class LanDiscovery:
    """The beacon for one Service.  Reactor thread only."""

    def __init__(self, reactor: Reactor, *, port: int, targets: Sequence[str] | None, name_hash: bytes,
                 peer_id: PeerId) -> None:
        """Open the seeker socket; nothing is answered until :meth:`set_listen`.

        Raises:
            ListenerError: the seeker socket could not be opened.
        """
        self._reactor = reactor
        self._port = port
        self._targets = list(targets) if targets is not None else None
        self._name_hash = name_hash
        self._peer_id = peer_id
        self._responder = BeaconResponder(name_hash, peer_id)
        self._listen_socket: UdpSocket | None = None
        self._seekers: list[tuple[BeaconSeeker, Callable[[list[Reply]], None]]] = []
        self._impatient: set[BeaconSeeker] = set()  # seeks that end at their first answer
        self._replied: dict[str, float] = {}  # source IP -> when we last answered it
        self._seek_socket = UdpSocket(reactor, "0.0.0.0", 0, self._on_reply, broadcast=True)

    def set_listeners(self, listeners: Sequence[Endpoint]) -> None:
        """What our Replies announce (at most the beacon's limit, TCP first)."""
        self._responder.listeners = [ep for ep in listeners if ep.transport == "tcp"][:16]

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
        targets = self._targets if self._targets is not None else broadcast_targets()
        if not targets:
            log.info("LAN discovery: no interface with a broadcast address; nothing to seek on")
        seeker = BeaconSeeker(self._name_hash, [(t, self._port) for t in targets], random_token(NONCE_SIZE),
                              self._reactor.time(), window, self_id=self._peer_id)
        self._seekers.append((seeker, on_done))
        if until_first:
            self._impatient.add(seeker)
        self._drive(seeker, on_done)

    def close(self) -> None:
        """Close both sockets; seeks in progress end at once with what they found."""
        for seeker, on_done in self._seekers:
            on_done(list(seeker.found.values()))
        self._seekers.clear()
        self._impatient.clear()
        self.set_listen(False)
        self._seek_socket.close()

    def _drive(self, seeker: BeaconSeeker, on_done: Callable[[list[Reply]], None]) -> None:
        if (seeker, on_done) not in self._seekers:
            return  # closed meanwhile
        now = self._reactor.time()
        for datagram, addr in seeker.datagrams_to_send(now):
            self._seek_socket.sendto(datagram, addr)
        if seeker.done(now):
            self._finish(seeker, on_done)
            return
        self._reactor.call_at(seeker.get_timer(), lambda: self._drive(seeker, on_done))

    def _finish(self, seeker: BeaconSeeker, on_done: Callable[[list[Reply]], None]) -> None:
        self._seekers.remove((seeker, on_done))
        self._impatient.discard(seeker)
        on_done(list(seeker.found.values()))

    def _on_reply(self, data: bytes, addr: tuple[str, int]) -> None:
        now = self._reactor.time()
        for seeker, on_done in list(self._seekers):
            if seeker.receive_datagram(data, addr, now) is not None and seeker in self._impatient:
                self._finish(seeker, on_done)

    def _on_seek(self, data: bytes, addr: tuple[str, int]) -> None:
        # A Reply is up to ~8x a Seek, and UDP sources can be forged: answer each source IP
        # at most once per _REPLY_INTERVAL so we cannot be used to amplify a flood.
        now = self._reactor.time()
        if now - self._replied.get(addr[0], float("-inf")) < _REPLY_INTERVAL:
            return
        if len(self._replied) >= _MAX_TRACKED_SOURCES:
            self._replied.clear()
        reply = self._responder.receive_datagram(data, addr)
        if reply is not None:
            self._replied[addr[0]] = now
        if reply is not None and self._listen_socket is not None:
            self._listen_socket.sendto(reply, addr)

