"""connect() through swapped connection info (issue 6), real Services on loopback."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import crust

from .livenet import WAIT, Net, Recorder


def connect_pair(a: crust.Service, b: crust.Service, timeout: float = WAIT) -> tuple[crust.PeerId, crust.PeerId]:
    """Both sides call connect() at about the same time with the other's (serialised) info."""
    a_info, b_info = a.prepare_connection_info(), b.prepare_connection_info()
    a_pub = crust.PubConnectionInfo.from_bytes(a_info.to_pub().to_bytes())  # swapped out of band
    b_pub = crust.PubConnectionInfo.from_json(b_info.to_pub().to_json())
    with ThreadPoolExecutor(2) as pool:
        at_a = pool.submit(a.connect, a_info, b_pub, timeout)
        at_b = pool.submit(b.connect, b_info, a_pub, timeout)
        return at_a.result(timeout + 5), at_b.result(timeout + 5)


def test_connect_self_is_refused(net: Net) -> None:
    a, ra, a_ep = net.listener()
    info = a.prepare_connection_info()
    with pytest.raises(crust.ConnectToSelf):
        a.connect(info, info.to_pub())


def test_direct_connect_two_peers_and_exchange_messages(net: Net) -> None:
    a, ra, _ = net.listener()
    b, rb, _ = net.listener()
    assert connect_pair(a, b) == (b.id, a.id)
    for rec, other in ((ra, b), (rb, a)):
        rec.wait(lambda: len(rec.new_peers) == 1, what="on_new_peer")
        assert [(p.id, p.origin) for p in rec.new_peers] == [(other.id, "connect")]
    a.send(b.id, b"hello b")
    b.send(a.id, b"hello a")
    rb.wait(lambda: rb.data_from(a.id) == [b"hello b"], what="A's message")
    ra.wait(lambda: ra.data_from(b.id) == [b"hello a"], what="B's message")
    assert len(a.peers()) == 1 and len(b.peers()) == 1
    # Already connected: returns at once.
    assert a.connect(a.prepare_connection_info(), b.prepare_connection_info().to_pub(), timeout=1.0) == b.id


def test_connect_when_only_one_side_listens(net: Net) -> None:
    a, ra, _ = net.listener()
    b = net.service()  # no listener: its info has no endpoints, A's dial must win... B dials A
    rb = Recorder(b)
    assert b.prepare_connection_info().to_pub().listeners == ()  # only its punch port, no listener
    assert connect_pair(a, b) == (b.id, a.id)
    rb.wait(lambda: len(rb.new_peers) == 1, what="on_new_peer at B")


def test_info_answered_by_another_identity_never_connects(net: Net) -> None:
    a, ra, _ = net.listener()
    impostor, ri, impostor_ep = net.listener()
    victim = crust.Identity.generate().peer_id
    forged = crust.PubConnectionInfo(victim, (impostor_ep,), bytes(16))
    with pytest.raises(crust.ConnectError) as failed:
        a.connect(a.prepare_connection_info(), forged, timeout=0.3)  # it waits out the timeout: keep it short
    assert failed.value.reasons[str(impostor_ep)] == "peer_id_mismatch"
    assert a.peers() == [] and impostor.peers() == []


def test_start_connect_failure_calls_on_connect_failure(net: Net) -> None:
    a, ra, _ = net.listener(handshake_timeout=0.5, connect_timeout=0.5)
    failed: list[crust.PeerId] = []
    done = threading.Event()
    a.on_connect_failure(lambda pid: (failed.append(pid), done.set()))
    ghost = crust.Identity.generate().peer_id
    a.start_connect(a.prepare_connection_info(), crust.PubConnectionInfo(ghost, (), bytes(16)))
    assert done.wait(WAIT)
    assert failed == [ghost]


def test_corrupted_info_is_a_value_error() -> None:
    info = crust.PubConnectionInfo(crust.Identity.generate().peer_id, (crust.Endpoint("127.0.0.1", 1),), bytes(16))
    data = bytearray(info.to_bytes())
    with pytest.raises(ValueError):
        crust.PubConnectionInfo.from_bytes(bytes(data[:-3]))
    data[3] = 99  # a future version
    with pytest.raises(ValueError, match="version"):
        crust.PubConnectionInfo.from_bytes(bytes(data))


def test_simultaneous_connect_and_bootstrap_end_with_one_connection(net: Net) -> None:
    a, ra, a_ep = net.listener()
    b, rb, _ = net.listener(hard_coded_contacts=[str(a_ep)])
    a_info, b_info = a.prepare_connection_info(), b.prepare_connection_info()
    with ThreadPoolExecutor(3) as pool:
        boot = pool.submit(b.bootstrap, timeout=WAIT)
        at_a = pool.submit(a.connect, a_info, b_info.to_pub(), WAIT)
        at_b = pool.submit(b.connect, b_info, a_info.to_pub(), WAIT)
        assert (boot.result(WAIT + 5), at_a.result(WAIT + 5), at_b.result(WAIT + 5)) == (a.id, b.id, a.id)
    ra.wait(lambda: len(ra.new_peers) >= 1, what="on_new_peer at A")
    rb.wait(lambda: len(rb.new_peers) >= 1, what="on_new_peer at B")
    assert (len(ra.new_peers), len(rb.new_peers), ra.lost, rb.lost) == (1, 1, [], []), (ra.new_peers, rb.new_peers)
    for i in range(20):
        a.send(b.id, b"%d" % i)
    rb.wait(lambda: len(rb.data_from(a.id)) == 20, what="messages over the surviving connection")
    assert rb.data_from(a.id) == [b"%d" % i for i in range(20)]
    assert len(a.peers()) == 1 and len(b.peers()) == 1
    assert ra.lost == [] and rb.lost == []


def test_ten_services_full_mesh(net: Net) -> None:
    services = [net.listener() for _ in range(10)]
    infos = [svc.prepare_connection_info() for svc, _, _ in services]
    pairs = [(i, j) for i in range(10) for j in range(i + 1, 10)]
    with ThreadPoolExecutor(16) as pool:
        calls = [pool.submit(services[x][0].connect, infos[x], infos[y].to_pub(), WAIT)
                 for i, j in pairs for x, y in ((i, j), (j, i))]
        assert all(call.result(WAIT + 5) for call in calls)
    for svc, rec, _ in services:
        rec.wait(lambda rec=rec: len(rec.new_peers) == 9, what="nine peers each")
        assert len({p.id for p in rec.new_peers}) == 9 and {p.origin for p in rec.new_peers} == {"connect"}
    payload = [bytes([k]) * (20 * 1024) for k in range(100)]
    for i, j in pairs:
        for x, y in ((i, j), (j, i)):
            for message in payload:
                services[x][0].send(services[y][0].id, message)
    for x, (svc, rec, _) in enumerate(services):
        for y, (other, _, _) in enumerate(services):
            if x != y:
                rec.wait(lambda rec=rec, other=other: len(rec.data_from(other.id)) == 100, timeout=60.0,
                         what="100 messages per pair")
                assert rec.data_from(other.id) == payload  # per-pair order kept
    first, rfirst, _ = services[0]
    first.close()
    for svc, rec, _ in services[1:]:
        rec.wait(lambda rec=rec: first.id in rec.lost, what="on_lost after close")
