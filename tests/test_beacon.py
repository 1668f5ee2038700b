"""LAN beacons (crust.discovery.beacon): codec, seeker schedule and filters, responder."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crust.discovery.beacon import (
    MAGIC,
    MAX_DATAGRAM,
    MAX_LISTENERS,
    BeaconResponder,
    BeaconSeeker,
    Reply,
    Seek,
    decode_beacon,
    encode_reply,
    encode_seek,
)
from crust.errors import RemoteProtocolError
from crust.ids import Endpoint, PeerId, name_hash

NET = name_hash("lan-test")
OTHER_NET = name_hash("someone-else")
NONCE = bytes(range(16))
PID_A = PeerId(b"\xaa" * 32)
PID_B = PeerId(b"\xbb" * 32)
SELF = PeerId(b"\x01" * 32)
TARGETS = [("127.255.255.255", 40001), ("127.0.0.1", 40002)]
SENDER = ("127.0.0.1", 50000)
LISTENERS = (Endpoint("127.0.0.1", 5483), Endpoint("::1", 5483), Endpoint("10.0.0.7", 6000, "udp"))


def reply(pid: PeerId = PID_A, nonce: bytes = NONCE, net: bytes = NET, listeners: tuple[Endpoint, ...] = LISTENERS) -> bytes:
    return encode_reply(Reply(nonce, net, pid, listeners))


# -- codec ----------------------------------------------------------------------------

def test_seek_round_trip_and_layout() -> None:
    seek = Seek(NONCE, NET)
    data = encode_seek(seek)
    assert data == MAGIC + b"\x01\x01" + NONCE + NET
    assert decode_beacon(data) == seek


@pytest.mark.parametrize("listeners", [(), LISTENERS, tuple(Endpoint("::ffff:1.2.3.4", p) for p in range(MAX_LISTENERS))])
def test_reply_round_trip(listeners: tuple[Endpoint, ...]) -> None:
    r = Reply(NONCE, NET, PID_A, listeners)
    data = encode_reply(r)
    assert len(data) <= MAX_DATAGRAM
    assert decode_beacon(data) == r


def test_reply_refuses_bad_fields() -> None:
    with pytest.raises(ValueError):
        Reply(NONCE, NET, PID_A, (Endpoint("127.0.0.1", 1),) * (MAX_LISTENERS + 1))
    with pytest.raises(ValueError):
        Reply(NONCE, NET, PID_A, (Endpoint("example.com", 1),))
    with pytest.raises(ValueError):
        Seek(b"short", NET)
    with pytest.raises(ValueError):
        Seek(NONCE, b"\x00" * 31)


GOOD_SEEK = encode_seek(Seek(NONCE, NET))
GOOD_REPLY = reply()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        MAGIC,
        b"\xc3CRDX" + GOOD_SEEK[5:],  # bad magic
        MAGIC + b"\x02" + GOOD_SEEK[6:],  # version 2
        MAGIC + b"\x01\x03" + GOOD_SEEK[7:],  # unknown kind
        GOOD_SEEK[:-1],  # truncated
        GOOD_SEEK + b"\x00",  # trailing byte
        GOOD_REPLY[:-1],
        GOOD_REPLY + b"\x00",
        GOOD_REPLY[: 7 + 80] + bytes([MAX_LISTENERS + 1]) + GOOD_REPLY[7 + 81:],  # too many endpoints
        GOOD_REPLY[: 7 + 81] + b"\x07" + GOOD_REPLY[7 + 82:],  # unknown endpoint transport
        GOOD_REPLY[: 7 + 82] + b"\x05" + GOOD_REPLY[7 + 83:],  # unknown IP version
        GOOD_SEEK + b"\x00" * MAX_DATAGRAM,  # oversized
    ],
)
def test_malformed_raises_remote_protocol_error(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_beacon(data)


@settings(max_examples=500, deadline=None)
@given(st.one_of(
    st.binary(max_size=MAX_DATAGRAM + 8),
    st.binary(max_size=600).map(lambda tail: MAGIC + b"\x01" + tail),
    st.tuples(st.integers(0, len(GOOD_REPLY)), st.binary(max_size=64)).map(
        lambda cut: GOOD_REPLY[: cut[0]] + cut[1]),
))
def test_decode_raises_only_remote_protocol_error(data: bytes) -> None:
    try:
        beacon = decode_beacon(data)
    except RemoteProtocolError:
        return
    encoder = encode_seek if isinstance(beacon, Seek) else encode_reply
    assert encoder(beacon) == data  # type: ignore[arg-type]  # whatever decodes re-encodes exactly


# -- seeker -----------------------------------------------------------------------------

def test_seeker_retry_schedule_on_virtual_clock() -> None:
    t0 = 100.0
    seeker = BeaconSeeker(NET, TARGETS, NONCE, t0, window=1.0, retries=3)
    seek = encode_seek(Seek(NONCE, NET))
    sent: list[tuple[float, list[tuple[bytes, tuple[str, int]]]]] = []
    now = t0
    while not seeker.done(now):
        out = seeker.datagrams_to_send(now)
        if out:
            sent.append((now, out))
        now = seeker.get_timer()
    assert [when for when, _ in sent] == [t0, t0 + 0.25, t0 + 0.5]
    assert all(out == [(seek, TARGETS[0]), (seek, TARGETS[1])] for _, out in sent)
    assert now == seeker.deadline == t0 + 1.0
    assert seeker.datagrams_to_send(now + 5) == []


def test_seeker_sends_each_round_once() -> None:
    seeker = BeaconSeeker(NET, TARGETS, NONCE, 0.0, window=2.0, retries=2)
    assert len(seeker.datagrams_to_send(0.0)) == 2
    assert seeker.datagrams_to_send(0.0) == []
    assert seeker.get_timer() == 1.0
    assert seeker.datagrams_to_send(0.9) == []
    assert len(seeker.datagrams_to_send(1.0)) == 2
    assert seeker.get_timer() == 2.0


def test_late_seeker_collapses_overdue_rounds() -> None:
    seeker = BeaconSeeker(NET, TARGETS, NONCE, 0.0, window=1.0, retries=3)
    assert len(seeker.datagrams_to_send(0.6)) == len(TARGETS)  # rounds 0, .25 and .5 are all overdue: one burst
    assert seeker.datagrams_to_send(0.7) == []
    assert seeker.get_timer() == 1.0


def test_single_round_seeker() -> None:
    seeker = BeaconSeeker(NET, TARGETS, NONCE, 5.0, window=0.5, retries=1)
    assert len(seeker.datagrams_to_send(5.0)) == 2
    assert seeker.get_timer() == 5.5
    assert not seeker.done(5.49) and seeker.done(5.5)


@pytest.mark.parametrize("kwargs", [{"window": 0}, {"retries": 0}, {"nonce": b"x"}])
def test_seeker_refuses_bad_arguments(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"name_hash": NET, "targets": TARGETS, "nonce": NONCE, "now": 0.0} | kwargs
    with pytest.raises(ValueError):
        BeaconSeeker(**args)  # type: ignore[arg-type]


def test_seeker_accepts_first_reply_per_peer() -> None:
    seeker = BeaconSeeker(NET, TARGETS, NONCE, 0.0)
    got = seeker.receive_datagram(reply(PID_A), SENDER, 0.1)
    assert got == Reply(NONCE, NET, PID_A, LISTENERS)
    assert seeker.receive_datagram(reply(PID_A), SENDER, 0.2) is None  # duplicate (another round's answer)
    assert seeker.receive_datagram(reply(PID_A, listeners=()), SENDER, 0.2) is None
    got_b = seeker.receive_datagram(reply(PID_B), ("127.0.0.2", 5484), 0.3)
    assert got_b is not None and got_b.peer_id == PID_B
    assert seeker.found == {PID_A: got, PID_B: got_b}
    assert (seeker.duplicates, seeker.ignored, seeker.malformed) == (2, 0, 0)


def test_seeker_ignores_other_network_nonce_self_seeks_and_late_replies() -> None:
    seeker = BeaconSeeker(NET, TARGETS, NONCE, 0.0, window=1.0, self_id=SELF)
    assert seeker.receive_datagram(reply(net=OTHER_NET), SENDER, 0.1) is None
    assert seeker.receive_datagram(reply(nonce=b"\xff" * 16), SENDER, 0.1) is None
    assert seeker.receive_datagram(reply(pid=SELF), SENDER, 0.1) is None
    assert seeker.receive_datagram(encode_seek(Seek(NONCE, NET)), SENDER, 0.1) is None
    assert seeker.receive_datagram(reply(), SENDER, 1.0) is None  # window over
    assert seeker.ignored == 5 and seeker.found == {}


def test_seeker_counts_malformed_and_never_raises() -> None:
    seeker = BeaconSeeker(NET, TARGETS, NONCE, 0.0)
    for junk in (b"", b"hello", GOOD_REPLY[:-3], GOOD_REPLY + b"!"):
        assert seeker.receive_datagram(junk, SENDER, 0.1) is None
    assert seeker.malformed == 4 and seeker.found == {}


def test_seeker_fills_unspecified_listener_hosts_from_the_sender() -> None:
    seeker = BeaconSeeker(NET, TARGETS, NONCE, 0.0)
    listeners = (Endpoint("0.0.0.0", 5483), Endpoint("::", 5483), Endpoint("192.168.1.9", 7000))
    got = seeker.receive_datagram(reply(listeners=listeners), ("127.0.0.5", 5484), 0.1)
    assert got is not None
    assert got.listeners == (Endpoint("127.0.0.5", 5483), Endpoint("127.0.0.5", 5483), Endpoint("192.168.1.9", 7000))


# -- responder ----------------------------------------------------------------------------

def test_responder_answers_valid_seeks_of_its_network_only() -> None:
    responder = BeaconResponder(NET, PID_A, LISTENERS)
    answer = responder.receive_datagram(encode_seek(Seek(NONCE, NET)), SENDER)
    assert answer is not None and decode_beacon(answer) == Reply(NONCE, NET, PID_A, LISTENERS)
    assert responder.receive_datagram(encode_seek(Seek(NONCE, OTHER_NET)), SENDER) is None
    assert responder.receive_datagram(GOOD_REPLY, SENDER) is None
    assert responder.receive_datagram(b"\xc3CRDS\x01\x01", SENDER) is None
    assert responder.receive_datagram(b"", SENDER) is None
    assert (responder.answered, responder.ignored, responder.malformed) == (1, 2, 2)


def test_responder_listeners_are_settable_and_validated() -> None:
    responder = BeaconResponder(NET, PID_A)
    responder.listeners = [Endpoint("127.0.0.1", 9)]
    assert responder.listeners == (Endpoint("127.0.0.1", 9),)
    answer = responder.receive_datagram(encode_seek(Seek(NONCE, NET)), SENDER)
    assert answer is not None
    decoded = decode_beacon(answer)
    assert isinstance(decoded, Reply) and decoded.listeners == (Endpoint("127.0.0.1", 9),)
    with pytest.raises(ValueError):
        responder.listeners = [Endpoint("127.0.0.1", 9)] * (MAX_LISTENERS + 1)
    with pytest.raises(ValueError):
        responder.listeners = [Endpoint("localhost", 9)]
    assert responder.listeners == (Endpoint("127.0.0.1", 9),)


def test_seeker_and_responder_together() -> None:
    seeker = BeaconSeeker(NET, [("127.255.255.255", 5484)], NONCE, 0.0, self_id=SELF)
    responders = [BeaconResponder(NET, pid, LISTENERS) for pid in (PID_A, PID_B, SELF)]
    responders.append(BeaconResponder(OTHER_NET, PeerId(b"\x77" * 32), LISTENERS))
    new = []
    now = 0.0
    while not seeker.done(now):
        for data, _target in seeker.datagrams_to_send(now):
            for r in responders:
                answer = r.receive_datagram(data, SENDER)
                if answer is not None:
                    found = seeker.receive_datagram(answer, ("127.0.0.1", 5484), now)
                    if found is not None:
                        new.append(found.peer_id)
        now = seeker.get_timer()
    assert new == [PID_A, PID_B]
    assert set(seeker.found) == {PID_A, PID_B}


def test_responder_hides_loopback_listeners_from_seekers_on_other_hosts() -> None:
    name = bytes(32)
    lan_ep, lo_ep = Endpoint("10.77.0.1", 5483), Endpoint("127.0.0.1", 5483)
    responder = BeaconResponder(name, PeerId(bytes(range(32))), [lan_ep, lo_ep])
    seek = encode_seek(Seek(bytes(16), name))
    remote = decode_beacon(responder.receive_datagram(seek, ("10.77.0.2", 40000)) or b"")
    local = decode_beacon(responder.receive_datagram(seek, ("127.0.0.1", 40000)) or b"")
    assert isinstance(remote, Reply) and remote.listeners == (lan_ep,)
    assert isinstance(local, Reply) and local.listeners == (lan_ep, lo_ep)
