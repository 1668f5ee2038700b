"""External addresses: asking peers where they see us (peer STUN), for both transports.

Theory of operation.  Behind a NAT we cannot see our own external endpoint;
the peers we are connected to can.  :class:`~crust.nat.observe.NatObserver`
decides whom to ask and votes on the answers; this module does the asking:

* **TCP**: an *observer connection* from our punch port (``Dial.local_port``;
  a port of its own, not the listener's) to the peer's TCP listener.  After the
  secure handshake it sends ``EchoAddrReq`` (``EXPECT_ECHO``), takes the
  ``EchoAddrResp`` and closes.  Asking *from the punch port* matters: it is
  that port's mapping a hole punch meets, not an ephemeral one's.
* **UDP**: a stateless :class:`~crust.nat.probe.EchoRequest` from our rUDP
  socket to the peer's UDP listener; the answer must come back from the
  address we asked, with our nonce, or it is ignored.

Whom to ask: every connected peer whose listener we know at the address we
reach it at (its ``conn.remote`` host), best first.  We ask when a peer
arrives, when the observer says a vote needs refreshing, and when someone
wants fresh candidates (``prepare_connection_info``).  Anyone may ask *us*:
a UDP echo request is answered with a response no larger than it (no
amplification), and ``EchoAddrReq`` is answered on any connection.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Callable

from ..connection_info import PrivConnectionInfo
from ..crypto import random_token
from ..effects import SendDatagram
from ..events import ListenersChanged
from ..errors import RemoteProtocolError
from ..handshake.states import Decision, ExchangeState, Role
from ..ids import Endpoint, PeerId, tcp_first
from ..nat import probe
from ..nat.observe import NatInfo, NatObserver
from ..wire.messages import EchoAddrReq, EchoAddrResp
from .core import Core
from .limits import PRE_GRANT_ECHOES
from .peers import Peers
from .records import NEVER, Conn

__all__ = ["ExternalAddresses"]

log = logging.getLogger("crust")

_MAX_PENDING_ECHOES = 16  # UDP echo requests awaiting an answer (the observer caps whom it asks too)


class ExternalAddresses:
    """Our external TCP and UDP endpoints as peers see them, and the NAT behaviour behind them."""

    def __init__(self, core: Core, peers: Peers) -> None:
        self._core = core
        self._peers = peers
        self.observer = NatObserver()
        self.tcp_port: int | None = None  # our TCP punch port, once bound
        self.udp_port: int | None = None  # our rUDP socket's port, once bound
        self.local_ips: tuple[str, ...] = ()  # our interface addresses (to tell "no NAT" on UDP)
        self._echoes: dict[bytes, tuple[PeerId, Endpoint]] = {}  # nonce -> (observer, where we asked)
        self.mapped: tuple[Endpoint, ...] = ()  # external endpoints a router maps to our listeners (UPnP)
        self._announced: tuple[Endpoint, ...] = ()  # what the last ListenersChanged said
        self.changed: list[Callable[[float], None]] = []  # told when where we accept changed (now)
        # Peers that announced a listener of each kind, in arrival order: whom we can ask.  Kept here
        # so that asking costs a lookup, not a scan of every peer (a hub of Clients, who announce
        # none, would scan its whole table for every newcomer).
        self._listening: dict[str, dict[PeerId, None]] = {"tcp": {}, "udp": {}}
        peers.established.append(self._on_established)

    def nat_info(self, now: float) -> NatInfo:
        """What we know now."""
        return self.observer.nat_info(now)

    def external_endpoints(self, now: float) -> list[Endpoint]:
        """Our observed external endpoints, TCP first, that differ from the local ones."""
        info = self.nat_info(now)
        return [t.external for t in (info.tcp, info.udp) if t.external is not None and t.external != t.local]

    def check_announced(self, now: float) -> None:
        """Report ``ListenersChanged`` if what we announce is not what we last announced."""
        announced = tuple(self.announced(self._core.listeners, now))
        if announced != self._announced:
            self._announced = announced
            self._core.events.append(ListenersChanged(announced))
            for hook in self.changed:
                hook(now)

    def announced(self, listeners: tuple[Endpoint, ...], now: float) -> list[Endpoint]:
        """Where we accept: ``listeners`` (local), then their external forms, TCP first.

        An observed external endpoint counts for a transport we listen on (the
        TCP one maps our listener's own port); UPnP mappings join through
        ``mapped``.  ``force_acceptor_port_in_ext_ep`` (the original's option)
        also announces the listener's port on every external IP we know of,
        observed or not.
        """
        if not listeners:
            return []
        transports = {ep.transport for ep in listeners}
        found = list(listeners)
        extra = [*self.mapped, *(ep for ep in self.external_endpoints(now) if ep.transport in transports)]
        tcp_ports = {ep.port for ep in listeners if ep.transport == "tcp"}
        if self._core.config.force_acceptor_port_in_ext_ep and tcp_ports:
            port = min(tcp_ports)
            extra += [Endpoint(ep.host, port) for ep in extra if ep.host not in {e.host for e in listeners}]
        for endpoint in extra:
            if endpoint not in found:
                found.append(endpoint)
        return tcp_first(found)

    def connection_info(self, token: bytes, relays: list[PeerId], now: float) -> PrivConnectionInfo:
        """Our connection info: listeners, each punch socket as observed and locally, and ``relays``.

        A punch socket's observed external endpoint comes first: it is what the
        other side's probes and SYNs must aim at; the local addresses serve a
        peer behind the same NAT (or none).  Loopback addresses are left out
        unless they are all we have (a loopback test).
        """
        core = self._core
        nat = self.nat_info(now)
        local_ips = _outside_first(list(self.local_ips))
        punch: dict[str, list[Endpoint]] = {"tcp": [], "udp": []}
        for kind, port, seen in (("tcp", self.tcp_port, nat.tcp), ("udp", self.udp_port, nat.udp)):
            if port is None:
                continue
            if seen.external is not None:
                punch[kind].append(Endpoint(seen.external.host, seen.external.port, kind))
            punch[kind] += [Endpoint(ip, port, kind) for ip in local_ips]
        listeners = self.announced(core.listeners, now)
        outside = [ep for ep in listeners if not ipaddress.ip_address(ep.host).is_loopback]
        return PrivConnectionInfo.gather(core.id, token, listeners=outside or listeners, tcp_punch=punch["tcp"],
                                         udp_punch=punch["udp"], relays=relays)

    # -- asking ------------------------------------------------------------------------

    def refresh(self, now: float) -> None:
        """Ask the observers the vote still needs, over each transport we have a socket for."""
        if self.tcp_port is not None and self.observer.wanted("tcp", now):
            for observer_id in self.observer.pick("tcp", self._observers("tcp"), now):
                self._ask_tcp(observer_id, now)
        if self.udp_port is not None and self.observer.wanted("udp", now):
            for observer_id in self.observer.pick("udp", self._observers("udp"), now):
                self._ask_udp(observer_id)

    def next_timer(self, now: float) -> float:
        """When votes age or requests time out (``NEVER`` if nothing is pending)."""
        due = self.observer.next_check(now)
        return NEVER if due is None else due

    def _on_established(self, conn: Conn, peer_id: PeerId) -> None:
        for kind, listening in self._listening.items():
            if self._listener_of(peer_id, kind) is not None:
                listening[peer_id] = None
        self.refresh(self._core.now)

    def _observers(self, kind: str) -> list[tuple[PeerId, str]]:
        found, listening = [], self._listening[kind]
        for peer_id in list(listening):
            peer = self._peers.table.get(peer_id)
            # A relayed peer sees us through the relay, at the relay's address: it cannot observe us.
            if peer is None or peer.conn is None or peer.conn.circuit is not None or self._listener_of(peer_id, kind) is None:
                del listening[peer_id]  # gone, or no longer usable; a new connection puts it back
                continue
            found.append((peer_id, peer.conn.remote.host))
        return found

    def _listener_of(self, peer_id: PeerId, kind: str) -> Endpoint | None:
        """The peer's ``kind`` listener at the IP we reach it at, if it announced one."""
        peer = self._peers.table.get(peer_id)
        if peer is None or peer.conn is None:
            return None
        conn = peer.conn
        known = (conn.remote, *conn.listeners) if conn.role is Role.INITIATOR else conn.listeners
        return next((ep for ep in known if ep.transport == kind and ep.host == conn.remote.host), None)

    def _ask_tcp(self, observer_id: PeerId, now: float) -> None:
        target = self._listener_of(observer_id, "tcp")
        assert target is not None and self.tcp_port is not None
        conn = self._core.dial(Role.INITIATOR, target, observer_id, now, local_port=self.tcp_port)
        conn.echo = True

    def _ask_udp(self, observer_id: PeerId) -> None:
        target = self._listener_of(observer_id, "udp")
        assert target is not None
        nonce = random_token(probe.NONCE_SIZE)
        self._echoes[nonce] = (observer_id, target)
        while len(self._echoes) > _MAX_PENDING_ECHOES:
            del self._echoes[next(iter(self._echoes))]  # the oldest: dicts keep insertion order
        self._core.effects.append(SendDatagram(probe.encode(probe.EchoRequest(nonce)), target))

    # -- answers -----------------------------------------------------------------------

    def on_echo_secured(self, conn: Conn) -> None:
        """An observer connection is secured: ask."""
        self._core.move(conn, Decision.SECURED_ECHO)
        self._core.send_control(conn, EchoAddrReq())

    def on_echo_request(self, conn: Conn, now: float) -> None:
        """Tell a peer where we see it: through its outbox, or at once (once) before a grant.

        Raises:
            RemoteProtocolError: a flood (asked too often).
        """
        if conn.state is ExchangeState.ESTABLISHED:
            self._peers.on_echo_request(conn, now)
            return
        # An observer connection asks once and closes.  More is an attempt to make us seal
        # a frame per 5-byte record: the link is closed, not answered.
        if conn.echoes_answered >= PRE_GRANT_ECHOES:
            raise RemoteProtocolError(f"flood: more than {PRE_GRANT_ECHOES} EchoAddrReq before a grant")
        conn.echoes_answered += 1
        self._core.send_control(conn, EchoAddrResp(conn.remote))

    def on_echo_response(self, conn: Conn, response: EchoAddrResp, now: float) -> None:
        """The observer told us where it sees our punch port (``conn`` is CLOSED by the table)."""
        self._core.close(conn, flush=True)
        assert conn.peer_id is not None
        local = conn.local or Endpoint(self._primary_ip(response.addr.host), self.tcp_port or 0)
        self.observer.observe("tcp", conn.peer_id, conn.remote.host, local,
                              Endpoint(response.addr.host, response.addr.port), now)
        self.check_announced(now)

    def receive_datagram(self, message: probe.EchoRequest | probe.EchoResponse, remote: Endpoint, now: float) -> None:
        """Answer a peer-STUN request, or take the answer to ours."""
        if isinstance(message, probe.EchoRequest):
            reply = probe.EchoResponse.answer(message, Endpoint(remote.host, remote.port, "udp"))
            self._core.effects.append(SendDatagram(probe.encode(reply), remote))
        elif isinstance(message, probe.EchoResponse):
            asked = self._echoes.get(message.nonce)
            if asked is None or (asked[1].host, asked[1].port) != (remote.host, remote.port):
                return  # not our question, or not from where we asked it
            del self._echoes[message.nonce]
            local = Endpoint(self._primary_ip(message.observed.host), self.udp_port or 0, "udp")
            self.observer.observe("udp", asked[0], remote.host, local, message.observed, now)
            self.check_announced(now)

    def _primary_ip(self, observed_host: str) -> str:
        """Our local IP for a socket bound to every interface: the observed one if it is ours."""
        if observed_host in self.local_ips or not self.local_ips:
            return observed_host
        return self.local_ips[0]


def _outside_first(addresses: list[str]) -> list[str]:
    """Non-loopback addresses only, unless loopback is all there is (a loopback test)."""
    outside = [a for a in addresses if not ipaddress.ip_address(a).is_loopback]
    return outside or addresses
