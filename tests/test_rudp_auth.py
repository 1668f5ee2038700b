"""rUDP datagrams authenticated under the connection's path key (crust.rudp.auth), in virtual time.

Two RudpStreams on the simulated link of ``test_rudp`` (no sockets), keyed as
the engine keys them once the secure channel above is up: the handshake's
initiator first, the responder after the initiator's next datagram reached
it.  An attacker here is anyone who knows the ids and sequence numbers (on
the path): it forges RSTs, FINs and PATH answers without the key.
"""

from __future__ import annotations

import os

import pytest

from crust.crypto.kex import PATH_KEY_SIZE, NoiseXX
from crust.crypto.keys import KeyPair
from crust.errors import LocalProtocolError
from crust.rudp import HEADER_SIZE, Heard, RudpClosed, TimeWait, peek_ids
from crust.rudp.auth import PathAuth
from crust.rudp.packet import KEYED, PATH, PROBE, SYN_SIZE, TAG_SIZE, TAGGED, pack_path, pack_syn, parse_header

from .test_rudp import (ACK, ADDR, FIN, HEADER, ID_A, ID_B, ISN_A, ISN_B, MAGIC, PING, RST, Pair, connected_pair,
                        header, lost_reset, pattern, time_wait_answer)

pytestmark = pytest.mark.timeout(30)

KEY = bytes(range(32))


def _handshake() -> tuple[NoiseXX, NoiseXX]:
    init = NoiseXX(initiator=True, static=KeyPair.generate(), prologue=b"p")
    resp = NoiseXX(initiator=False, static=KeyPair.generate(), prologue=b"p")
    resp.read_message(init.write_message())
    init.read_message(resp.write_message())
    resp.read_message(init.write_message())
    return init, resp


def keyed_pair(key: bytes = KEY) -> Pair:
    """A connected pair keyed as crust keys it: A (initiator) first, B once A's KEYED datagram is in."""
    pair = connected_pair()
    pair.a.set_path_key(key)
    pair.transfer(100, 0)  # A's datagrams now say KEYED
    pair.b.set_path_key(key)
    pair.transfer(0, 100)  # and B's
    auth_a, auth_b = pair.a.path_auth, pair.b.path_auth
    assert auth_a is not None and auth_b is not None and auth_a.enforcing and auth_b.enforcing
    return pair


def forged(flags: int, dst: int, src: int, seq: int, ack: int, mark: int = 0, tail: bytes = b"") -> bytes:
    return HEADER.pack(MAGIC, flags, dst, src, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 65536, mark) + tail


def _rcv_nxt(pair: Pair, i: int) -> int:
    """The exact next seq stream ``i``'s peer has sent, as the wire says it (where an RST counts)."""
    received = len(pair.data[i])
    return ((ISN_A, ISN_B)[1 - i] + 1 + received) & 0xFFFFFFFF


# -- the key ---------------------------------------------------------------------------------------

def test_both_ends_derive_the_same_path_key_and_no_two_handshakes_share_one() -> None:
    init, resp = _handshake()
    assert init.path_key == resp.path_key and len(init.path_key) == PATH_KEY_SIZE
    other_init, _ = _handshake()
    assert other_init.path_key != init.path_key
    # Not a value anyone who saw the handshake could compute, nor a transport key.
    assert init.path_key not in (init.handshake_hash[:32], *init.split_keys())
    fresh = NoiseXX(initiator=True, static=KeyPair.generate(), prologue=b"p")
    with pytest.raises(LocalProtocolError):
        fresh.path_key


def test_a_path_key_must_be_32_bytes_and_is_set_once() -> None:
    stream = connected_pair().a
    with pytest.raises(ValueError):
        stream.set_path_key(bytes(31))
    with pytest.raises(TypeError):
        stream.set_path_key("k" * 32)  # type: ignore[arg-type]
    stream.set_path_key(KEY)
    with pytest.raises(ValueError):
        stream.set_path_key(KEY)


# -- the wire --------------------------------------------------------------------------------------

def test_version_2_datagrams_are_not_rudp_and_marks_are_checked() -> None:
    syn = pack_syn(ID_A, ISN_A, 65536, None)
    old = bytes([0xC6]) + syn[1:]  # the same SYN in version 2
    assert peek_ids(syn) is not None and peek_ids(old) is None and parse_header(old) is None
    assert MAGIC == 0xC7
    assert parse_header(syn[:22] + bytes([KEYED]) + syn[23:])[7] == -1  # type: ignore[index]  # a SYN has no marks
    probe = HEADER.pack(MAGIC, PROBE, ID_B, ID_A, 1, 0, 0, TAGGED) + bytes(100)
    assert parse_header(probe)[7] == -1  # type: ignore[index]  # a probe's size is its meaning: no tag
    assert parse_header(forged(ACK, ID_B, ID_A, 0, 0, TAGGED, bytes(TAG_SIZE - 1)))[7] == -1  # type: ignore[index]
    tagged_rst = forged(RST, ID_B, ID_A, 0, 0, TAGGED | KEYED, bytes(TAG_SIZE))
    assert parse_header(tagged_rst)[7] == len(tagged_rst) - TAG_SIZE  # type: ignore[index]  # a tag is no payload
    assert parse_header(forged(ACK, ID_B, ID_A, 0, 0, 4))[7] == -1  # type: ignore[index]  # n > 3
    assert len(syn) == SYN_SIZE


def test_an_unkeyed_stream_strips_a_tag_unchecked_and_delivers_the_payload() -> None:
    pair = connected_pair()
    b = pair.b
    data = forged(ACK, ID_B, ID_A, ISN_A + 1, ISN_B + 1, TAGGED | KEYED, b"hello" + os.urandom(TAG_SIZE))
    b.receive_datagram(data, pair.now)
    pair.service(1)
    assert bytes(pair.data[1]) == b"hello" and b.unauthenticated == 0


# -- what a keyed stream refuses -------------------------------------------------------------------

def test_a_keyed_stream_drops_untagged_and_forged_resets_and_takes_the_peers_own() -> None:
    pair = keyed_pair()
    a, b = pair.a, pair.b
    exact = _rcv_nxt(pair, 1)
    ack = (ISN_B + 1 + len(pair.data[0])) & 0xFFFFFFFF
    b.receive_datagram(forged(RST | ACK, ID_B, ID_A, exact, ack), pair.now)  # untagged, exactly right
    b.receive_datagram(forged(RST | ACK, ID_B, ID_A, exact, ack, TAGGED | KEYED, os.urandom(TAG_SIZE)), pair.now)
    other = PathAuth(bytes(32), enforce=True)  # another connection's key
    b.receive_datagram(other.seal(forged(RST | ACK, ID_B, ID_A, exact, ack, KEYED)), pair.now)
    assert b.connected and b.unauthenticated == 3 and not pair.closed_with(1)
    pair.transfer(3000, 3000)  # still carries everything
    a.abort(pair.now)
    [rst] = a.datagrams_to_send(pair.now)
    assert header(rst)[7] & TAGGED and len(rst) == HEADER_SIZE + TAG_SIZE
    b.receive_datagram(rst, pair.now)
    assert b.closed and b.take_events()[-1] == RudpClosed("connection reset by peer")


def test_a_keyed_stream_drops_a_forged_fin_and_still_closes_in_order() -> None:
    pair = keyed_pair()
    a, b = pair.a, pair.b
    exact = _rcv_nxt(pair, 1)
    ack = (ISN_B + 1 + len(pair.data[0])) & 0xFFFFFFFF
    b.receive_datagram(forged(ACK | FIN, ID_B, ID_A, exact, ack, KEYED), pair.now)
    b.receive_datagram(forged(ACK | FIN, ID_B, ID_A, exact, ack, TAGGED | KEYED, os.urandom(TAG_SIZE)), pair.now)
    assert b.unauthenticated == 2
    assert not any(header(d)[1] & FIN for d in b.datagrams_to_send(pair.now))  # it did not answer with its FIN
    sent, _ = pair.transfer(5000, 0)
    assert bytes(pair.data[1]).endswith(sent)  # the forged FIN ended nothing
    a.close(pair.now)
    pair.service(0)
    pair.run(lambda: a.closed and b.closed, max_steps=1000)
    assert pair.closed_with(0) == [None] and pair.closed_with(1) == [None]


def test_only_the_tagged_answer_to_a_keyed_path_challenge_proves_the_path() -> None:
    pair = keyed_pair()
    a, b = pair.a, pair.b
    nonce = bytes(range(12))
    challenge = b.path_challenge(nonce)
    assert header(challenge)[1] == PATH and len(challenge) == HEADER_SIZE  # moves nothing: no tag, no growth
    # Whoever received the challenge knows the nonce; without the key its answers prove nothing.
    answer_untagged = pack_path(PATH | ACK, ID_B, ID_A, nonce)
    answer_forged = answer_untagged[:22] + bytes([TAGGED | KEYED]) + os.urandom(TAG_SIZE)
    assert b.receive_datagram(answer_untagged, pair.now) is Heard.NOTHING
    assert b.receive_datagram(answer_forged, pair.now) is Heard.NOTHING
    assert b.unauthenticated == 2
    a.receive_datagram(challenge, pair.now)
    [answer] = [d for d in a.datagrams_to_send(pair.now) if header(d)[1] & PATH]
    assert header(answer)[7] & TAGGED and answer[10:22] == nonce
    assert b.receive_datagram(answer, pair.now) is Heard.PATH
    pair.transfer(2000, 2000)


# -- when tags are required --------------------------------------------------------------------------

def test_tags_are_required_only_once_the_peer_has_said_keyed() -> None:
    pair = connected_pair()
    a, b = pair.a, pair.b
    a.set_path_key(KEY)  # the initiator keys first; B has no key yet and cannot tag
    auth = a.path_auth
    assert auth is not None and not auth.enforcing
    exact = _rcv_nxt(pair, 0)
    a.receive_datagram(forged(ACK | PING, ID_A, ID_B, exact, ISN_A + 1), pair.now)  # B's, before B keyed
    assert a.connected and a.unauthenticated == 0 and not auth.enforcing
    pair.transfer(100, 0)
    b.set_path_key(KEY)  # B saw A's KEYED: it requires tags at once
    auth_b = b.path_auth
    assert auth_b is not None and auth_b.enforcing
    a.receive_datagram(forged(RST, ID_A, ID_B, exact, 0), pair.now)  # untagged, and A not strict yet: taken
    assert a.closed and a.take_events()[-1] == RudpClosed("connection reset by peer")


def test_before_keying_the_token_rules_are_unchanged() -> None:
    pair = connected_pair()
    b = pair.b
    b.receive_datagram(forged(RST, ID_B, ID_A, _rcv_nxt(pair, 1), 0), pair.now)
    assert b.closed and b.unauthenticated == 0 and b.path_auth is None


# -- TIME_WAIT ----------------------------------------------------------------------------------------

def test_time_wait_tags_the_reset_of_a_keyed_connection_and_never_answers_with_more_bytes() -> None:
    pair = keyed_pair()
    b = pair.b
    tw, data = lost_reset(pair, b"are you there? " * 4)
    ping = forged(ACK | PING, ID_A, ID_B, 0, 0, KEYED)
    assert time_wait_answer(tw, ping, pair.now) is None  # 23 bytes: a 39-byte RST would be more
    rst = time_wait_answer(tw, data, pair.now)
    assert rst is not None and len(rst) <= len(data) and header(rst)[7] & TAGGED
    b.receive_datagram(rst, pair.now)
    assert b.closed and b.unauthenticated == 0 and b.take_events()[-1] == RudpClosed("connection reset by peer")


def test_a_peer_that_lost_its_key_cannot_reset_a_keyed_stream() -> None:
    """The trade-off: a peer that crashed and restarted resets with no tag; it is noticed by silence instead."""
    pair = keyed_pair()
    b = pair.b
    tw = TimeWait()
    tw.add(ID_A, ADDR, ID_B, None, pair.now)  # the restarted peer's memory has no key (at best)
    b.write(b"x" * 100)
    [data] = b.datagrams_to_send(pair.now)
    rst = time_wait_answer(tw, data, pair.now)
    assert rst is not None
    b.receive_datagram(rst, pair.now)
    assert b.connected and b.unauthenticated == 1
    pair.link.cut = True
    pair.run(lambda: b.closed, max_steps=10_000)
    assert pair.closed_with(1) == ["timed out"]


def test_a_keyed_stream_marks_every_datagram_and_tags_exactly_fin_rst_and_path() -> None:
    pair = keyed_pair()
    a = pair.a
    a.write(pattern(3000))
    a.close(pair.now)
    out = a.datagrams_to_send(pair.now) + [a.path_challenge(bytes(12))]
    assert out and all(header(d)[7] & KEYED for d in out)
    assert all(bool(header(d)[7] & TAGGED) == bool(header(d)[1] & (FIN | RST)) for d in out)  # not a challenge
    assert {header(d)[1] for d in out} >= {ACK, ACK | FIN, PATH}
