"""Relayed connections (issue 14): three real Services on loopback, A and B meeting through R.

The connection infos are stripped of every direct candidate, so the only way
A and B can meet is the relay they are both connected to: what the NAT lab
does with real symmetric NATs (tests/test_relay_lab.py), here in a second.
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import crust

from crust.engine.upgrade import UPGRADE_FIRST

from .livenet import WAIT, Net, block_on_message

pytestmark = pytest.mark.e2e


def _relay_only(info: crust.PrivConnectionInfo) -> crust.PubConnectionInfo:
    """The public half with its direct candidates dropped: only the relays remain."""
    return crust.PubConnectionInfo(info.peer_id, (), info.token, relays=info.relays)


def _info_naming(svc: crust.Service, relay: crust.PeerId) -> crust.PrivConnectionInfo:
    """``svc``'s connection info once it names ``relay`` (its RelayOffer arrives right after the grant)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:  # bounded: the offer is one message behind the grant
        info = svc.prepare_connection_info(timeout=1.0)
        if relay in info.relays:
            return info
    raise AssertionError(f"{svc.id} never learnt that {relay} relays for it")


class World:
    def __init__(self, net: Net, ends: dict[str, Any] | None = None, **relay_config: Any) -> None:
        self.r, self.rr, r_ep = net.listener(relay=True, **relay_config)
        self.r_ep = r_ep
        self.a, self.ra = net.client(str(r_ep), **(ends or {}))
        self.b, self.rb = net.client(str(r_ep), **(ends or {}))
        for svc in (self.a, self.b):
            assert svc.bootstrap(user=crust.CrustUser.CLIENT, timeout=WAIT) == self.r.id
        self.a_info = _info_naming(self.a, self.r.id)
        self.b_info = _info_naming(self.b, self.r.id)

    def connect(self, timeout: float = WAIT) -> tuple[crust.PeerId, crust.PeerId]:
        with ThreadPoolExecutor(2) as pool:
            at_a = pool.submit(self.a.connect, self.a_info, _relay_only(self.b_info), timeout)
            at_b = pool.submit(self.b.connect, self.b_info, _relay_only(self.a_info), timeout)
            return at_a.result(timeout + 5), at_b.result(timeout + 5)


def test_info_names_the_relay_only_where_relaying_is_on(net: Net) -> None:
    plain, _, plain_ep = net.listener()
    client, _ = net.client(str(plain_ep))
    assert client.bootstrap(user=crust.CrustUser.CLIENT, timeout=WAIT) == plain.id
    assert client.prepare_connection_info(timeout=1.0).relays == ()
    world = World(net)
    assert world.a_info.relays == (world.r.id,)


def test_two_peers_meet_through_a_relay_and_exchange_messages(net: Net) -> None:
    w = World(net)
    assert w.connect() == (w.b.id, w.a.id)
    for rec, svc, other in ((w.ra, w.a, w.b), (w.rb, w.b, w.a)):
        rec.wait(lambda: any(p.id == other.id for p in rec.new_peers), what="on_new_peer for the relayed peer")
        info = svc.peer_info(other.id)
        assert info.transport == "relay" and info.origin == "connect"
    w.a.send(w.b.id, b"through the relay")
    w.b.send(w.a.id, b"and back")
    w.rb.wait(lambda: w.rb.data_from(w.a.id) == [b"through the relay"], what="A's message at B")
    w.ra.wait(lambda: w.ra.data_from(w.b.id) == [b"and back"], what="B's message at A")
    stats = w.r.relay_stats()
    assert stats.circuits == 1 and stats.opened == 1 and stats.bytes_relayed > 0
    # The relay is a peer of both ends, not of their connection: it never learns A and B are peers.
    assert {p.id for p in w.r.peers()} == {w.a.id, w.b.id}


def test_five_megabytes_both_ways_arrive_byte_exact_and_the_relay_sees_only_ciphertext(net: Net) -> None:
    w = World(net, relay_max_bytes_per_s=64 * 1024 * 1024)
    w.connect()
    marker = b"PLAINTEXT-MARKER-" * 4
    blob = marker + os.urandom(5 * 1024 * 1024 - len(marker))
    chunks = [blob[i:i + 256 * 1024] for i in range(0, len(blob), 256 * 1024)]
    for chunk in chunks:
        w.a.send(w.b.id, chunk)
        w.b.send(w.a.id, chunk)
    for rec, sender in ((w.rb, w.a), (w.ra, w.b)):
        rec.wait(lambda: sum(map(len, rec.data_from(sender.id))) >= len(blob), timeout=60, what="5 MB")
        assert hashlib.sha256(b"".join(rec.data_from(sender.id))).digest() == hashlib.sha256(blob).digest()
    stats = w.r.relay_stats()
    assert stats.bytes_relayed > 2 * len(blob)  # every byte both ways, plus framing and AEAD tags
    assert w.r.peers() and all(p.transport == "tcp" for p in w.r.peers())


def test_a_relay_at_its_circuit_limit_refuses_with_the_reason(net: Net) -> None:
    w = World(net, relay_max_circuits=1)
    w.connect()
    third, _ = net.client(str(w.r_ep))
    assert third.bootstrap(user=crust.CrustUser.CLIENT, timeout=WAIT) == w.r.id
    third_info = _info_naming(third, w.r.id)
    with ThreadPoolExecutor(2) as pool:
        at_third = pool.submit(third.connect, third_info, _relay_only(w.a_info), 3.0)
        at_a = pool.submit(w.a.connect, w.a.prepare_connection_info(timeout=1.0), _relay_only(third_info), 3.0)
        reasons = {}
        for future in (at_third, at_a):
            with pytest.raises(crust.ConnectError) as failed:
                future.result(10)
            reasons.update(failed.value.reasons)
    # The greater PeerId opens the circuit (both infos name R); its ConnectError carries the relay's reason.
    assert any("at its circuit limit (relay_max_circuits)" in why for why in reasons.values()), reasons
    assert dict(w.r.relay_stats().refused).get("too_many_circuits", 0) >= 1


def test_the_relay_closing_loses_the_relayed_peer_on_both_ends(net: Net) -> None:
    w = World(net)
    w.connect()
    w.r.close()
    for rec, other in ((w.ra, w.b), (w.rb, w.a)):
        rec.wait(lambda: other.id in rec.lost, what="on_lost for the relayed peer")
    assert not w.a.is_connected(w.b.id) and not w.b.is_connected(w.a.id)


def test_a_relayed_pair_moves_to_a_direct_connection_losing_nothing(net: Net) -> None:
    # The infos A and B swapped named only the relay.  Then A starts listening (as when a NAT gets a
    # port mapping): the upgrade offer sent over the relayed connection names that listener, B dials
    # it, and the pair moves over while both stream numbered messages, which must arrive each once,
    # in order.
    w = World(net, relay_max_bytes_per_s=256 * 1024)  # a slow relay: a long tail is in flight at the move
    w.connect()
    assert w.a.peer_info(w.b.id).transport == "relay"
    sent = {w.a: 0, w.b: 0}

    def send_both() -> None:
        for svc, other in ((w.a, w.b), (w.b, w.a)):
            svc.send(other.id, sent[svc].to_bytes(4, "big") + os.urandom(int.from_bytes(os.urandom(2), "big") % 3000))
            sent[svc] += 1

    for _ in range(400):  # a burst still on its way through the relay when the move comes
        send_both()
    w.a.start_listening()  # A offers the upgrade at once (where it accepts changed)
    deadline = time.monotonic() + UPGRADE_FIRST + WAIT
    while time.monotonic() < deadline:  # bounded: until both see the direct connection (or the deadline)
        send_both()
        if all(s.peer_info(o.id).transport == "tcp" for s, o in ((w.a, w.b), (w.b, w.a))):
            break
        time.sleep(0.002)  # pace the stream so the move happens mid-stream, not after a burst
    assert w.a.peer_info(w.b.id).transport == w.b.peer_info(w.a.id).transport == "tcp"
    for _ in range(50):  # and a little more over the direct connection
        for svc, other in ((w.a, w.b), (w.b, w.a)):
            svc.send(other.id, sent[svc].to_bytes(4, "big"))
            sent[svc] += 1
    for rec, sender in ((w.rb, w.a), (w.ra, w.b)):
        rec.wait(lambda: len(rec.data_from(sender.id)) >= sent[sender], what="every numbered message")
        numbers = [int.from_bytes(m[:4], "big") for m in rec.data_from(sender.id)]
        assert numbers == list(range(sent[sender])), "lost, duplicated or reordered across the move"
    assert not w.ra.lost and not w.rb.lost  # the move is not a loss
    assert w.r.relay_stats().circuits == 0  # and the relay let go of the circuit


def test_a_slow_reader_at_one_end_blocks_the_sender_not_the_relay(net: Net) -> None:
    # B's callback stalls: its backlog fills, its engine stops acknowledging the circuit, A's window
    # closes and A's send() times out.  What waits is bounded at every hop, and all of it arrives once
    # B reads again, in order.
    chunk = 64 * 1024
    ends = dict(max_message_size=chunk, receive_backlog_limit=chunk, send_queue_limit=4 * chunk)
    w = World(net, ends=ends, relay_max_bytes_per_s=64 * 1024 * 1024)
    w.connect()
    hold = net.event()
    blocked = block_on_message(w.b, hold)

    sent = 0
    limit = 512  # 32 MiB: far more than the window, the backlog and the queue together
    with pytest.raises(crust.SendTimeout):
        while sent < limit:
            w.a.send(w.b.id, sent.to_bytes(4, "big") + bytes(chunk - 4), priority=1, timeout=0.5)
            sent += 1
    assert blocked.is_set()
    # Send queue (4) + circuit window (8) + relay-side and socket buffers + backlog: a few dozen, not 512.
    assert 4 <= sent < 64, sent
    assert w.r.relay_stats().bytes_relayed < 64 * chunk * 2
    hold.set()
    w.rb.wait(lambda: len(w.rb.data_from(w.a.id)) == sent, timeout=20.0, what="every queued message")
    assert [int.from_bytes(d[:4], "big") for d in w.rb.data_from(w.a.id)] == list(range(sent))
