"""LAN discovery end to end on loopback (beacons to 127.255.255.255 only; the default
interface-broadcast path runs inside a namespace lab: test_lan_lab.py)."""

from __future__ import annotations

import socket

import crust
from crust.discovery.beacon import Reply, Seek, decode_beacon, encode_seek
from crust.ids import name_hash

from .livenet import WAIT, Net


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def lan(net: Net, port: int, **overrides: object) -> crust.Service:
    svc = net.service(service_discovery_port=port, service_discovery_targets=["127.255.255.255"],
                      service_discovery_window=0.5, **overrides)
    return svc


def test_a_contactless_client_bootstraps_off_a_lan_peer_of_its_network(net: Net) -> None:
    port = free_udp_port()
    seed = lan(net, port)
    seed.start_listening()
    seed.set_service_discovery_listen(True)
    stranger = lan(net, port, network_name="elsewhere")
    stranger.start_listening()
    stranger.set_service_discovery_listen(True)

    client = lan(net, port)
    client.start_service_discovery()
    assert client.has_peers_on_lan(timeout=0.5)
    assert client.bootstrap(user=crust.CrustUser.CLIENT, timeout=WAIT) == seed.id
    assert stranger.peers() == []


def test_no_answer_when_nobody_listens(net: Net) -> None:
    port = free_udp_port()
    quiet = lan(net, port)
    quiet.start_listening()
    quiet.start_service_discovery()  # seeks, but does not answer
    seeker = lan(net, port)
    assert seeker.has_peers_on_lan(timeout=0.3) is False
    seeker.start_service_discovery()
    try:
        seeker.bootstrap(timeout=1.0)
    except crust.BootstrapFailed as exc:
        assert "no contacts" in str(exc)
    else:
        raise AssertionError("bootstrapped with nobody answering")


def test_stopping_to_listen_stops_answers(net: Net) -> None:
    port = free_udp_port()
    seed = lan(net, port)
    seed.start_listening()
    seed.set_service_discovery_listen(True)
    seeker = lan(net, port)
    assert seeker.has_peers_on_lan(timeout=0.5)
    seed.set_service_discovery_listen(False)
    assert seeker.has_peers_on_lan(timeout=0.3) is False


def test_answers_to_one_source_are_rate_limited(net: Net) -> None:
    """A Reply is up to 8x a Seek: a burst of Seeks from one IP gets one answer, not one each."""
    port = free_udp_port()
    seed = lan(net, port)
    seed.start_listening()
    seed.set_service_discovery_listen(True)
    seeker = net.track(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    seeker.bind(("127.0.0.1", 0))
    seeker.settimeout(0.5)
    seek = encode_seek(Seek(bytes(16), name_hash(None)))
    for _ in range(5):  # far faster than one per 0.1 s
        seeker.sendto(seek, ("127.0.0.1", port))
    replies = []
    try:
        for _ in range(10):  # bounded: stops at the first 0.5 s of silence
            replies.append(seeker.recv(2048))
    except socket.timeout:
        pass
    assert len(replies) == 1 and isinstance(decode_beacon(replies[0]), Reply)
