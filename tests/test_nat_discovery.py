"""External address discovery (peer STUN) between real Services on loopback.

On loopback there is no NAT, so every observer must report our own local
endpoint, and the mapping comes out as NONE: the same code path a NATed
node takes, with a known right answer.  The NAT behaviours themselves are
tested against the kernel's NAT in the namespace lab (test_nat_lab.py).
"""

from __future__ import annotations

import socket
import time

import pytest

import crust
from crust.crypto.keys import KeyPair
from crust.engine import Engine
from crust.events import ListenersChanged
from crust.nat import probe
from crust.nat.observe import MappingBehaviour, NatInfo

from .livenet import WAIT, Net


def wait_for_nat(svc: crust.Service, ready: str, timeout: float = WAIT) -> NatInfo:
    """Poll ``nat_info()`` (a bounded number of times) until ``ready`` ("tcp", "udp" or both) is known."""
    deadline = time.monotonic() + timeout
    while True:
        info = svc.nat_info()
        if all(getattr(info, kind).external is not None for kind in ready.split()):
            return info
        assert time.monotonic() < deadline, f"no external {ready} endpoint within {timeout} s: {info}"
        time.sleep(0.02)


def test_peers_report_our_punch_port_and_rudp_socket(net: Net) -> None:
    a, a_tcp, a_udp = listening(net)
    b, b_tcp, b_udp = listening(net, hard_coded_contacts=[str(a_tcp)])
    assert b.bootstrap(timeout=WAIT) == a.id
    info = wait_for_nat(b, "tcp udp")
    # TCP: observed from B's punch port (not its listener, not an ephemeral port).
    assert info.tcp.external is not None and info.tcp.external.host == "127.0.0.1"
    assert info.tcp.external == info.tcp.local
    assert info.tcp.external.port != b_tcp.port
    assert info.tcp.mapping is MappingBehaviour.NONE
    # UDP: the rUDP socket itself, as A saw it.
    assert info.udp.external == crust.Endpoint("127.0.0.1", b_udp.port, "udp")
    assert info.udp.mapping is MappingBehaviour.NONE
    assert info.udp.observers == info.tcp.observers == 1 and not info.udp.confirmed
    # A asked B as well (B is its peer now, with listeners it announced).
    assert wait_for_nat(a, "tcp udp").udp.external == a_udp


def listening(net: Net, **overrides: object) -> tuple[crust.Service, crust.Endpoint, crust.Endpoint]:
    """A Service listening on TCP and rUDP, with its two loopback endpoints."""
    svc = net.service(enable_udp=True, **overrides)
    endpoints = svc.start_listening()
    tcp, udp = (next(ep for ep in endpoints if ep.transport == kind) for kind in ("tcp", "udp"))
    return svc, tcp, udp


def test_echo_request_is_answered_with_no_more_bytes_than_it_had(net: Net) -> None:
    a, _, target = listening(net)
    sock = net.track(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(WAIT)
    request = probe.encode(probe.EchoRequest(b"\x01" * probe.NONCE_SIZE))
    sock.sendto(request, (target.host, target.port))
    answer, source = sock.recvfrom(2048)
    assert source == (target.host, target.port)
    assert len(answer) <= len(request)
    response = probe.decode(answer)
    assert response == probe.EchoResponse(b"\x01" * probe.NONCE_SIZE, crust.Endpoint(*sock.getsockname(), "udp"))


def test_an_answer_nobody_asked_for_is_ignored(net: Net) -> None:
    a, _, target = listening(net)
    sock = net.track(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(WAIT)
    forged = probe.EchoResponse(b"\x02" * probe.NONCE_SIZE, crust.Endpoint("203.0.113.9", 4444, "udp"))
    sock.sendto(probe.encode(forged), (target.host, target.port))
    sock.sendto(b"\xc3CRNP garbage", (target.host, target.port))
    # A's socket handles datagrams in order: once this is answered, the forgery was handled too.
    sock.sendto(probe.encode(probe.EchoRequest(b"\x03" * probe.NONCE_SIZE)), (target.host, target.port))
    assert probe.decode(sock.recvfrom(2048)[0]).nonce == b"\x03" * probe.NONCE_SIZE  # type: ignore[union-attr]
    info = a.nat_info()
    assert info.udp.external is None and info.udp.observers == 0


def announced(force: bool, listeners: list[crust.Endpoint]) -> list[crust.Endpoint]:
    """What an engine announces after one observer saw its rUDP socket at 203.0.113.5:6000."""
    engine = Engine(static=KeyPair.generate(), config=crust.Config(bootstrap_cache_path=None,
                                                                   force_acceptor_port_in_ext_ep=force))
    engine.set_listeners(listeners)
    observer = crust.PeerId(bytes(32))
    engine._external.observer.observe("udp", observer, "198.51.100.1", crust.Endpoint("10.0.0.2", 6000, "udp"),
                                      crust.Endpoint("203.0.113.5", 6000, "udp"), 1.0)
    return engine.listeners(1.0)


def test_external_endpoints_are_announced_only_for_transports_we_listen_on() -> None:
    tcp, udp = crust.Endpoint("10.0.0.2", 5000), crust.Endpoint("10.0.0.2", 6000, "udp")
    assert announced(False, [tcp]) == [tcp]
    assert announced(False, [tcp, udp]) == [tcp, udp, crust.Endpoint("203.0.113.5", 6000, "udp")]
    assert announced(False, []) == []  # not listening: nothing to announce


def test_force_acceptor_port_puts_the_listener_port_on_every_external_ip() -> None:
    tcp, udp = crust.Endpoint("10.0.0.2", 5000), crust.Endpoint("10.0.0.2", 6000, "udp")
    assert announced(True, [tcp, udp]) == [tcp, crust.Endpoint("203.0.113.5", 5000), udp,
                                           crust.Endpoint("203.0.113.5", 6000, "udp")]


def test_a_new_network_forgets_every_observation() -> None:
    engine = Engine(static=KeyPair.generate(), config=crust.Config(bootstrap_cache_path=None))
    engine.set_sockets(tcp_port=4000, udp_port=6000, local_ips=["10.0.0.2"], now=1.0)
    engine._external.observer.observe("udp", crust.PeerId(bytes(32)), "198.51.100.1",
                                      crust.Endpoint("10.0.0.2", 6000, "udp"),
                                      crust.Endpoint("203.0.113.5", 6000, "udp"), 1.0)
    engine.set_sockets(tcp_port=4000, udp_port=6000, local_ips=["10.0.0.2"], now=2.0)  # same network
    assert engine.nat_info(2.0).udp.external == crust.Endpoint("203.0.113.5", 6000, "udp")
    engine.set_sockets(tcp_port=4000, udp_port=6000, local_ips=["192.168.7.20"], now=3.0)  # moved
    assert engine.nat_info(3.0).udp.external is None


def test_a_mapped_endpoint_changes_what_we_announce_once() -> None:
    engine = Engine(static=KeyPair.generate(), config=crust.Config(bootstrap_cache_path=None))
    local = crust.Endpoint("10.0.0.2", 5000)
    engine.set_listeners([local])
    mapped = crust.Endpoint("203.0.113.5", 41000)
    engine.set_mapped([mapped], 1.0)
    engine.set_mapped([mapped], 2.0)  # the same again: nothing new to announce
    changes = [e.endpoints for e in engine.take_events() if isinstance(e, ListenersChanged)]
    assert changes == [(local,), (local, mapped)]
