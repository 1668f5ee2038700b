"""connect() through punch candidates only, between real Services on loopback.

Neither side listens, so the only ways in are the ones connect() punches:
the UDP punch (authenticated probes, then rUDP through the hole) and the TCP
simultaneous open.  On loopback there is no NAT, so the UDP punch must win
and the TCP one is the candidate that failed; the NAT behaviours themselves
are tested in the namespace lab (test_nat_lab.py).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

import crust

from .livenet import WAIT, Net, Recorder


def swap_and_connect(a: crust.Service, b: crust.Service, timeout: float) -> list[crust.PeerId]:
    a_info, b_info = a.prepare_connection_info(), b.prepare_connection_info()
    a_pub = crust.PubConnectionInfo.from_bytes(a_info.to_pub().to_bytes())
    b_pub = crust.PubConnectionInfo.from_json(b_info.to_pub().to_json())
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(a.connect, a_info, b_pub, timeout), pool.submit(b.connect, b_info, a_pub, timeout)]
        return [f.result(timeout + WAIT) for f in futures]


def test_two_non_listening_services_connect_by_udp_punch(net: Net) -> None:
    a, b = (net.service(enable_udp=True, enable_tcp=False) for _ in range(2))
    ra, rb = Recorder(a), Recorder(b)
    info = a.prepare_connection_info()
    assert info.listeners == () and info.tcp_punch == ()
    assert [ep.transport for ep in info.udp_punch] == ["udp"]
    assert swap_and_connect(a, b, WAIT) == [b.id, a.id]
    for rec, other in ((ra, b), (rb, a)):
        rec.wait(lambda: len(rec.new_peers) == 1, what="on_new_peer")
        assert [(p.id, p.origin, p.transport) for p in rec.new_peers] == [(other.id, "connect", "udp")]
    a.send(b.id, b"through the hole")
    rb.wait(lambda: rb.data_from(a.id) == [b"through the hole"], what="the message")


def test_a_punch_that_nobody_answers_names_each_candidate(net: Net) -> None:
    a = net.service(enable_udp=True)
    silent = net.service(enable_udp=True)
    theirs = silent.prepare_connection_info().to_pub()  # it never calls connect(): nobody answers
    with pytest.raises(crust.ConnectError) as failed:
        a.connect(a.prepare_connection_info(), theirs, timeout=2.0)
    reasons = failed.value.reasons
    assert reasons["udp-punch"].startswith("no answer from 1 candidate"), reasons
    tcp_punch = f"tcp-punch {theirs.tcp_punch[0]}"
    assert tcp_punch in reasons and "after" in reasons[tcp_punch], reasons
