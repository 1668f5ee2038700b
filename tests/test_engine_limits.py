"""The engine's per-peer limits (crust/engine/limits.py), pinned without sockets or a clock.

A hand-driven peer (:class:`Hand`) speaks to one Engine with crust's own
sans-IO classes: it completes a real handshake and then misbehaves in
exactly one way.  The real-socket versions of these attacks, with memory
and round-trip measurements, are in test_flood.py; here the rules are
pinned exactly: what a link not yet granted may send, when limits change
(between two frames of one read), the control-request rate, and the
answers a peer that never reads leaves queued.
"""

from __future__ import annotations

import dataclasses

from crust.channel import MAX_FRAME_PLAINTEXT, SecureChannel, data_record_header
from crust.config import Config
from crust.crypto.keys import KeyPair
from crust.effects import Close, Dial, Write
from crust.engine import Engine
from crust.engine.limits import CONTROL_BURST, CONTROL_RATE, PRE_GRANT_FRAME
from crust.engine.peers import WRITE_WINDOW
from crust.events import MessageReceived, Misbehaved, PeerConnected, PeerLost
from crust.handshake.secure import SecureHandshake
from crust.ids import Contact, CrustUser, Endpoint, name_hash
from crust.wire.messages import (
    BootstrapGranted, BootstrapRequest, EchoAddrReq, EchoAddrResp, Heartbeat, Message, encode_record,
)
from tests.simnet import SimNet

CFG = Config(bootstrap_cache_path=None, disable_external_reachability_requirement=True)
THEM = Endpoint("10.0.0.9", 40000)


class Hand:
    """A peer driven by hand against ``engine``: the initiator of an accepted connection, or the
    responder of one the engine dialled."""

    def __init__(self, engine: Engine, *, initiator: bool = True) -> None:
        self.engine = engine
        self.static = KeyPair.generate()
        self.handshake = SecureHandshake(initiator=initiator, static=self.static, name_hash=name_hash(None),
                                         max_message_size=CFG.max_message_size)
        self.channel: SecureChannel | None = None
        self.inbox: list[Message] = []
        self.closed = False
        self.conn = engine.handle_accepted(THEM, 0.0) if initiator else None

    def pump(self, now: float = 0.0) -> None:
        """Take the engine's writes to us (and notice its Close)."""
        for effect in self.engine.take_effects():
            if isinstance(effect, Write) and effect.conn == self.conn:
                if self.channel is None:
                    self.handshake.receive_data(effect.data)
                    if self.handshake.complete:
                        self.channel = self.handshake.channel
                        assert self.channel is not None
                        self.inbox += self.channel.receive_data(self.handshake.trailing_data)
                else:
                    self.inbox += self.channel.receive_data(effect.data)
            elif isinstance(effect, Close) and effect.conn == self.conn:
                self.closed = True

    def secure(self) -> None:
        assert self.conn is not None
        for _ in range(4):
            out = self.handshake.data_to_send()
            if out:
                self.engine.receive_data(self.conn, out, 0.0)
            self.pump()
            if self.channel is not None and not out:
                return
        raise AssertionError("handshake did not finish")

    def bootstrap(self) -> None:
        self.secure()
        self.send(BootstrapRequest(CrustUser.CLIENT, ()))
        assert any(isinstance(m, BootstrapGranted) for m in self.inbox)
        assert any(isinstance(e, PeerConnected) for e in self.engine.take_events())

    def wire(self, plaintext: bytes) -> bytes:
        """One sealed frame holding ``plaintext`` (records)."""
        assert self.channel is not None
        return self.channel.seal([plaintext])

    def send(self, *messages: Message, now: float = 0.0) -> None:
        self.feed(self.wire(b"".join(encode_record(m) for m in messages)), now)

    def feed(self, data: bytes, now: float = 0.0) -> None:
        assert self.conn is not None
        self.engine.receive_data(self.conn, data, now)
        self.pump(now)


def engine(config: Config = CFG) -> Engine:
    return Engine(static=KeyPair.generate(), config=config)


def floods(events: list[object]) -> list[Misbehaved]:
    return [e for e in events if isinstance(e, Misbehaved) and e.reason.startswith("flood")]


# -- before a grant: the smallest budget -------------------------------------------------------

def test_an_observer_connection_gets_one_answer_and_a_second_question_closes_it() -> None:
    a = engine()
    hand = Hand(a)
    hand.secure()
    hand.send(EchoAddrReq())
    assert hand.inbox == [EchoAddrResp(THEM)] and not hand.closed
    hand.send(EchoAddrReq(), EchoAddrReq())
    assert hand.inbox == [EchoAddrResp(THEM)] and hand.closed
    assert a.connection_count() == 0 and a.take_events() == []  # no peer: nothing to report


def test_before_a_grant_a_frame_over_the_pre_grant_size_closes_the_link() -> None:
    a = engine()
    hand = Hand(a)
    hand.secure()
    hand.feed(hand.wire(encode_record(Heartbeat(1, echo=True)) * (PRE_GRANT_FRAME // 10 + 1)))
    assert hand.closed and a.connection_count() == 0


def test_before_a_grant_an_unfinished_message_closes_the_link() -> None:
    a = engine()
    hand = Hand(a)
    hand.secure()
    hand.feed(hand.wire(data_record_header(0, 100, False) + bytes(100)))
    assert hand.closed and a.connection_count() == 0


def test_after_the_grant_full_frames_and_unfinished_messages_are_fine() -> None:
    a = engine()
    hand = Hand(a)
    hand.bootstrap()
    chunk = MAX_FRAME_PLAINTEXT - 256 - 7
    hand.feed(hand.wire(data_record_header(3, chunk, False) + bytes(chunk)))
    hand.feed(hand.wire(data_record_header(3, 10, True) + bytes(10)))
    assert [len(e.data) for e in a.take_events() if isinstance(e, MessageReceived)] == [chunk + 10]
    assert not hand.closed


def test_data_right_behind_the_grant_in_the_same_read_is_taken_under_the_granted_limits() -> None:
    """The limits change between two frames of one read: the grant's frame, then full-size data."""
    a = engine()
    a.start_bootstrap([Contact(THEM)], now=0.0)
    (dial,) = [e for e in a.take_effects() if isinstance(e, Dial)]
    hand = Hand(a, initiator=False)
    hand.conn = dial.conn
    a.handle_connected(dial.conn, 0.0)
    hand.pump()
    for _ in range(4):  # the engine initiates: answer until both sides are secured
        out = hand.handshake.data_to_send()
        if out:
            a.receive_data(dial.conn, out, 0.0)
        hand.pump()
    assert any(isinstance(m, BootstrapRequest) for m in hand.inbox)
    chunk = MAX_FRAME_PLAINTEXT - 256 - 7
    one_read = (hand.wire(encode_record(BootstrapGranted()))
                + hand.wire(data_record_header(0, chunk, False) + bytes(chunk))
                + hand.wire(data_record_header(0, 5, True) + b"hello"))
    hand.feed(one_read)
    events = a.take_events()
    assert [len(e.data) for e in events if isinstance(e, MessageReceived)] == [chunk + 5]
    assert not hand.closed and not floods(events)


# -- a granted peer: the control-request rate ------------------------------------------------

def test_control_requests_over_the_burst_are_a_flood_reported_once() -> None:
    a = engine()
    hand = Hand(a)
    hand.bootstrap()
    hand.send(*[Heartbeat(i) for i in range(CONTROL_BURST)], EchoAddrReq())  # one over the burst
    events = a.take_events()
    assert len(floods(events)) == 1 and [e.peer_id for e in events if isinstance(e, PeerLost)] == [hand.static.peer_id]
    assert hand.closed


def test_control_requests_at_the_rate_are_answered_for_ever() -> None:
    a = engine()
    hand = Hand(a)
    hand.bootstrap()
    now = 0.0
    for i in range(int(CONTROL_RATE) * 20):  # 20 s of probes at the sustained rate
        now += 1.0 / CONTROL_RATE
        hand.send(Heartbeat(i), now=now)
    assert not floods(a.take_events()) and not hand.closed
    assert Heartbeat(int(CONTROL_RATE) * 20 - 1, echo=True) in hand.inbox


def test_a_peer_that_asks_and_never_reads_leaves_one_answer_of_each_kind() -> None:
    a = engine()
    hand = Hand(a)
    hand.bootstrap()
    peer_id = hand.static.peer_id
    # Fill the write window: our writes are never reported sent (the peer does not read).
    for _ in range(WRITE_WINDOW // (64 * 1024) + 2):
        a.send(peer_id, 0, bytes(64 * 1024), 0.0)
    a.take_effects()
    now = 0.0
    for i in range(3000):  # within the rate, for a long time
        now += 1.0 / CONTROL_RATE
        hand.send(Heartbeat(i) if i % 2 else EchoAddrReq(), now=now)
        a.handle_timer(now)
    outbox = a._peers.table[peer_id].outbox
    assert outbox.queued_control <= 3  # our probe, our echo of theirs, our EchoAddrResp
    assert not floods(a.take_events())


def test_honest_peers_heartbeating_fast_are_never_a_flood() -> None:
    fast = dataclasses.replace(CFG, heartbeat_interval=0.05, inactivity_timeout=1.0)
    net = SimNet(latency=0.001)
    a, b = net.add("a", fast), net.add("b", fast)
    b.engine.start_bootstrap([Contact(net.listen("a"))], now=net.now)
    net.advance(30.0)
    assert b.engine.is_connected(a.engine.id) and a.engine.is_connected(b.engine.id)
    assert not [e for e in a.events + b.events if isinstance(e, (Misbehaved, PeerLost))]
