"""crust.crypto.kex: Noise_XX_25519_ChaChaPoly_BLAKE2b against itself, a test vector and noiseprotocol."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crust.crypto.aead import Opener, Sealer
from crust.crypto.kex import MAX_HANDSHAKE_MESSAGE, PROTOCOL_NAME, NoiseXX
from crust.crypto.keys import KeyPair
from crust.errors import DecryptError, HandshakeError, LocalProtocolError, RemoteProtocolError

PROLOGUE = b"crust-test-prologue"


def make_pair(prologue_i: bytes = PROLOGUE, prologue_r: bytes = PROLOGUE) -> tuple[NoiseXX, NoiseXX, KeyPair, KeyPair]:
    si, sr = KeyPair.generate(), KeyPair.generate()
    return (
        NoiseXX(initiator=True, static=si, prologue=prologue_i),
        NoiseXX(initiator=False, static=sr, prologue=prologue_r),
        si,
        sr,
    )


def run_handshake(init: NoiseXX, resp: NoiseXX, payloads: tuple[bytes, bytes, bytes] = (b"", b"", b"")) -> list[bytes]:
    received = [resp.read_message(init.write_message(payloads[0]))]
    received.append(init.read_message(resp.write_message(payloads[1])))
    received.append(resp.read_message(init.write_message(payloads[2])))
    return received


# -- crust with itself -------------------------------------------------------------

def test_full_handshake_with_payloads() -> None:
    init, resp, si, sr = make_pair()
    assert init.is_initiator and not resp.is_initiator
    assert init.remote_static is None and resp.remote_static is None
    payloads = (b"hello from the initiator", b"", bytes(range(256)) * 10)
    assert run_handshake(init, resp, payloads) == list(payloads)
    assert init.complete and resp.complete
    assert init.handshake_hash == resp.handshake_hash
    assert len(init.handshake_hash) == 64
    assert init.split_keys() == resp.split_keys()
    k1, k2 = init.split_keys()
    assert len(k1) == len(k2) == 32 and k1 != k2
    assert init.remote_static == sr.public_bytes
    assert resp.remote_static == si.public_bytes


def test_remote_static_is_learned_in_the_right_message() -> None:
    init, resp, si, sr = make_pair()
    resp.read_message(init.write_message())
    assert resp.remote_static is None
    init.read_message(resp.write_message())
    assert init.remote_static == sr.public_bytes  # from message 2, before completion
    assert not init.complete
    resp.read_message(init.write_message())
    assert resp.remote_static == si.public_bytes


def test_message_sizes() -> None:
    init, resp, _, _ = make_pair()
    m0 = init.write_message(b"abc")
    assert len(m0) == 32 + 3
    assert m0[32:] == b"abc"  # Noise: the first payload travels in clear
    resp.read_message(m0)
    m1 = resp.write_message(b"abc")
    assert len(m1) == 32 + 48 + 3 + 16
    init.read_message(m1)
    assert len(init.write_message(b"abc")) == 48 + 3 + 16


def test_transport_both_ways() -> None:
    init, resp, _, _ = make_pair()
    run_handshake(init, resp)
    i_send, i_recv = init.split()
    r_send, r_recv = resp.split()
    assert isinstance(i_send, Sealer) and isinstance(i_recv, Opener)
    for i in range(5):
        assert r_recv.open(i_send.seal(b"to responder %d" % i)) == b"to responder %d" % i
        assert i_recv.open(r_send.seal(b"to initiator %d" % i)) == b"to initiator %d" % i
    # Each direction has its own key: a frame cannot be reflected back to its sender.
    with pytest.raises(DecryptError):
        i_recv.open(i_send.seal(b"reflected"))


def test_ephemeral_keys_are_fresh() -> None:
    hashes = set()
    for _ in range(3):
        init, resp, _, _ = make_pair()
        run_handshake(init, resp)
        hashes.add(init.handshake_hash)
    assert len(hashes) == 3


def test_different_prologue_fails_with_a_remote_error() -> None:
    init, resp, _, _ = make_pair(b"network-A", b"network-B")
    resp.read_message(init.write_message())  # message 1 carries nothing encrypted yet
    with pytest.raises(RemoteProtocolError) as info:
        init.read_message(resp.write_message())
    assert isinstance(info.value, DecryptError)
    with pytest.raises(LocalProtocolError):  # poisoned
        init.write_message()


def test_tampered_messages_fail() -> None:
    for index in range(3):
        init, resp, _, _ = make_pair()
        writers = [init, resp, init]
        readers = [resp, init, resp]
        for i in range(index):
            readers[i].read_message(writers[i].write_message(b"payload"))
        message = bytearray(writers[index].write_message(b"payload"))
        message[-1] ^= 0x80
        if index == 0:
            # Message 1's payload is only hashed; the damage shows in the next message.
            assert readers[0].read_message(bytes(message)) != b"payload"
            with pytest.raises(DecryptError):
                init.read_message(resp.write_message())
        else:
            with pytest.raises(DecryptError):
                readers[index].read_message(bytes(message))


# -- turn-taking and poisoning ----------------------------------------------------------

def test_out_of_turn_calls() -> None:
    init, resp, _, _ = make_pair()
    with pytest.raises(LocalProtocolError):
        init.read_message(b"\x00" * 32)
    with pytest.raises(LocalProtocolError):
        resp.write_message()
    m0 = init.write_message()
    with pytest.raises(LocalProtocolError):
        init.write_message()
    resp.read_message(m0)
    with pytest.raises(LocalProtocolError):
        resp.read_message(m0)
    # Out-of-turn calls change nothing: the handshake still completes.
    init.read_message(resp.write_message())
    resp.read_message(init.write_message())
    assert init.complete and resp.complete
    for machine in (init, resp):
        with pytest.raises(LocalProtocolError):
            machine.write_message()
        with pytest.raises(LocalProtocolError):
            machine.read_message(b"x" * 64)


def test_results_before_completion_are_refused() -> None:
    init, resp, _, _ = make_pair()
    for call in (lambda: init.handshake_hash, init.split, init.split_keys):
        with pytest.raises(LocalProtocolError):
            call()


def test_split_only_once() -> None:
    init, resp, _, _ = make_pair()
    run_handshake(init, resp)
    init.split()
    with pytest.raises(LocalProtocolError):
        init.split()
    assert init.split_keys() == resp.split_keys()  # the raw keys stay readable


def test_poisoned_after_a_remote_error() -> None:
    init, resp, _, _ = make_pair()
    with pytest.raises(HandshakeError):
        resp.read_message(b"short")
    for call in (lambda: resp.read_message(init.write_message()), resp.write_message, resp.split):
        with pytest.raises(LocalProtocolError):
            call()
    assert not resp.complete


def test_payload_too_large_is_a_local_error_and_changes_nothing() -> None:
    init, resp, _, _ = make_pair()
    with pytest.raises(LocalProtocolError):
        init.write_message(bytes(MAX_HANDSHAKE_MESSAGE - 31))
    resp.read_message(init.write_message(bytes(MAX_HANDSHAKE_MESSAGE - 32)))  # the largest allowed
    with pytest.raises(LocalProtocolError):
        resp.write_message(bytes(MAX_HANDSHAKE_MESSAGE - 95))
    init.read_message(resp.write_message(bytes(MAX_HANDSHAKE_MESSAGE - 96)))


def test_oversized_message_is_refused() -> None:
    _, resp, _, _ = make_pair()
    with pytest.raises(HandshakeError):
        resp.read_message(b"\x01" * (MAX_HANDSHAKE_MESSAGE + 1))


def test_low_order_ephemeral_is_refused_on_read() -> None:
    _, resp, _, _ = make_pair()
    with pytest.raises(HandshakeError) as info:
        resp.read_message(bytes(32) + b"payload")
    assert info.value.reason == "bad_key"


def test_argument_types() -> None:
    with pytest.raises(TypeError):
        NoiseXX(initiator=True, static=b"\x00" * 32, prologue=b"")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        NoiseXX(initiator=True, static=KeyPair.generate(), prologue="text")  # type: ignore[arg-type]
    init, _, _, _ = make_pair()
    with pytest.raises(TypeError):
        init.write_message("text")  # type: ignore[arg-type]


def test_repr_shows_no_secrets() -> None:
    static = KeyPair.generate()
    machine = NoiseXX(initiator=True, static=static, prologue=b"")
    assert static.private_bytes.hex() not in repr(machine)
    assert "initiator" in repr(machine)


# -- fuzzing: remote bytes raise only RemoteProtocolError -------------------------------------

STATIC_I = KeyPair(bytes(range(32)))
STATIC_R = KeyPair(bytes(range(32, 64)))


def _stage(index: int) -> tuple[NoiseXX, bytes]:
    """A machine about to read message ``index``, and the genuine message it expects."""
    init = NoiseXX(initiator=True, static=STATIC_I, prologue=PROLOGUE)
    resp = NoiseXX(initiator=False, static=STATIC_R, prologue=PROLOGUE)
    m0 = init.write_message(b"zero")
    if index == 0:
        return resp, m0
    resp.read_message(m0)
    m1 = resp.write_message(b"one")
    if index == 1:
        return init, m1
    init.read_message(m1)
    return resp, init.write_message(b"two")


def _read_only_raises_remote_errors(machine: NoiseXX, data: bytes) -> None:
    try:
        machine.read_message(data)
    except RemoteProtocolError:
        with pytest.raises(LocalProtocolError):  # and the machine is poisoned
            machine.read_message(data)


FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(index=st.integers(0, 2), data=st.binary(max_size=300))
def test_arbitrary_bytes(index: int, data: bytes) -> None:
    machine, _ = _stage(index)
    _read_only_raises_remote_errors(machine, data)


@FUZZ
@given(index=st.integers(0, 2), data=st.data())
def test_mutated_genuine_messages(index: int, data: st.DataObject) -> None:
    machine, genuine = _stage(index)
    message = bytearray(genuine)
    mutation = data.draw(st.sampled_from(["flip", "truncate", "extend"]))
    if mutation == "flip":
        position = data.draw(st.integers(0, len(message) - 1))
        message[position] ^= data.draw(st.integers(1, 255))
    elif mutation == "truncate":
        del message[data.draw(st.integers(0, len(message) - 1)):]
    else:
        message += data.draw(st.binary(min_size=1, max_size=40))
    _read_only_raises_remote_errors(machine, bytes(message))


# -- known answer: the cacophony test vector ------------------------------------------------
#
# Noise_XX_25519_ChaChaPoly_BLAKE2b from cacophony's vectors, as shipped in
# mcginty/snow tests/vectors/cacophony.txt (commit aabed3159deec0a0dfe3d5601c43322d84700c94).
# Messages 1-3 are the handshake, 4-6 transport messages: the vector keeps
# alternating senders, so message 4 is the responder's first.  (An older copy
# of that file, commit 62fbfae2, has the same messages but a handshake_hash
# taken one message early; this is the corrected value.)

VEC_PROLOGUE = bytes.fromhex("4a6f686e2047616c74")
VEC_INIT_STATIC = bytes.fromhex("e61ef9919cde45dd5f82166404bd08e38bceb5dfdfded0a34c8df7ed542214d1")
VEC_INIT_EPHEMERAL = bytes.fromhex("893e28b9dc6ca8d611ab664754b8ceb7bac5117349a4439a6b0569da977c464a")
VEC_RESP_STATIC = bytes.fromhex("4a3acbfdb163dec651dfa3194dece676d437029c62a408b4c5ea9114246e4893")
VEC_RESP_EPHEMERAL = bytes.fromhex("bbdb4cdbd309f1a1f2e1456967fe288cadd6f712d65dc7b7793d5e63da6b375b")
VEC_HANDSHAKE_HASH = bytes.fromhex(
    "8cf47d7b3cb5804c0109d48e8bcdbee2cbb65687d8ea2c92994ca361fb86151a"
    "d93627b98936cbb32de56e8abb21def3925011ac3e35db9cbeea73ab9a4392c2"
)
VEC_MESSAGES = [
    (
        "4c756477696720766f6e204d69736573",
        "ca35def5ae56cec33dc2036731ab14896bc4c75dbb07a61f879f8e3afa4c79444c756477696720766f6e204d69736573",
    ),
    (
        "4d757272617920526f746862617264",
        "95ebc60d2b1fa672c1f46a8aa265ef51bfe38e7ccb39ec5be34069f1448088430505b6745ce64a5f33f0e8e3b83f11ce"
        "8802bca507f4f2d8b564dbe277e1966116e132faa2dfd70b8b077b9f94b913df5056ae1319469b824a98d54bbaa82c"
        "325595587064f978c4b6d104f7596e6f",
    ),
    (
        "462e20412e20486179656b",
        "99579e1c1ee15e422a57ddd6b16d37087b17558e8369c18991b4b2ca3a824abf904cdcf5458b5431a75af034ca9e9b98"
        "2de039eaaf156775e2d580cd4e5ebae89c3f8cb2594b556d8a8169",
    ),
    ("4361726c204d656e676572", "fc56eea290b3f3a21aac0c70cd5787b5ee99be37d2f4d751329b55"),
    ("4a65616e2d426170746973746520536179", "bb31c9da10d5639a4cdb88a12f5c61de41bbc7df09bf75d94f8184fe4157f5c68f"),
    (
        "457567656e2042f6686d20766f6e2042617765726b",
        "f6199cadb152fb27f82be0a0891ec76a33598ae92a46cab2fb5a8ed5bf48b7f267f8370af7",
    ),
]


def test_cacophony_vector() -> None:
    init = NoiseXX(
        initiator=True,
        static=KeyPair(VEC_INIT_STATIC),
        prologue=VEC_PROLOGUE,
        ephemeral=KeyPair(VEC_INIT_EPHEMERAL),
    )
    resp = NoiseXX(
        initiator=False,
        static=KeyPair(VEC_RESP_STATIC),
        prologue=VEC_PROLOGUE,
        ephemeral=KeyPair(VEC_RESP_EPHEMERAL),
    )
    messages = [(bytes.fromhex(p), bytes.fromhex(c)) for p, c in VEC_MESSAGES]
    for index, (payload, ciphertext) in enumerate(messages[:3]):
        writer, reader = (init, resp) if index % 2 == 0 else (resp, init)
        assert writer.write_message(payload) == ciphertext, f"message {index + 1}"
        assert reader.read_message(ciphertext) == payload
    assert init.handshake_hash == resp.handshake_hash == VEC_HANDSHAKE_HASH
    assert init.remote_static == KeyPair(VEC_RESP_STATIC).public_bytes
    assert resp.remote_static == KeyPair(VEC_INIT_STATIC).public_bytes
    i_send, i_recv = init.split()
    r_send, r_recv = resp.split()
    for index, (payload, ciphertext) in enumerate(messages[3:], start=3):
        send, recv = (i_send, r_recv) if index % 2 == 0 else (r_send, i_recv)
        assert send.seal(payload) == ciphertext, f"message {index + 1}"
        assert recv.open(ciphertext) == payload


def test_protocol_name() -> None:
    assert PROTOCOL_NAME == b"Noise_XX_25519_ChaChaPoly_BLAKE2b"


# -- interop with the noiseprotocol package -----------------------------------------------------

def noise_peer(initiator: bool, static: KeyPair, prologue: bytes) -> Any:
    """A noiseprotocol connection (an independent implementation) ready to handshake."""
    noise_connection = pytest.importorskip("noise.connection")
    conn = noise_connection.NoiseConnection.from_name(PROTOCOL_NAME)
    if initiator:
        conn.set_as_initiator()
    else:
        conn.set_as_responder()
    conn.set_keypair_from_private_bytes(noise_connection.Keypair.STATIC, static.private_bytes)
    conn.set_prologue(prologue)
    conn.start_handshake()
    return conn


def _noise_cipher_keys(conn: Any) -> tuple[bytes, bytes]:
    """(send key, receive key) of a finished noiseprotocol connection."""
    proto = conn.noise_protocol
    return bytes(proto.cipher_state_encrypt.k), bytes(proto.cipher_state_decrypt.k)


@pytest.mark.parametrize("crust_is_initiator", [True, False], ids=["crust-initiator", "crust-responder"])
def test_interop_with_noiseprotocol(crust_is_initiator: bool) -> None:
    ours_static, theirs_static = KeyPair.generate(), KeyPair.generate()
    ours = NoiseXX(initiator=crust_is_initiator, static=ours_static, prologue=PROLOGUE)
    theirs = noise_peer(not crust_is_initiator, theirs_static, PROLOGUE)
    payloads = [b"first", b"second payload", b"third" * 100]
    for index, payload in enumerate(payloads):
        crust_writes = (index % 2 == 0) == crust_is_initiator
        if crust_writes:
            assert bytes(theirs.read_message(ours.write_message(payload))) == payload
        else:
            assert ours.read_message(bytes(theirs.write_message(payload))) == payload
    assert ours.complete and theirs.handshake_finished
    assert ours.handshake_hash == theirs.get_handshake_hash()
    assert ours.remote_static == theirs_static.public_bytes

    # Split(): our (k1, k2) against their cipher states.
    k1, k2 = ours.split_keys()
    their_send, their_recv = _noise_cipher_keys(theirs)
    if crust_is_initiator:
        assert (their_recv, their_send) == (k1, k2)
    else:
        assert (their_send, their_recv) == (k1, k2)

    sealer, opener = ours.split()
    for i in range(4):
        message = b"crust->noise %d" % i
        assert theirs.decrypt(sealer.seal(message)) == message
        message = b"noise->crust %d" % i
        assert opener.open(theirs.encrypt(message)) == message


@pytest.mark.parametrize("crust_is_initiator", [True, False], ids=["crust-initiator", "crust-responder"])
def test_interop_prologue_mismatch(crust_is_initiator: bool) -> None:
    ours = NoiseXX(initiator=crust_is_initiator, static=KeyPair.generate(), prologue=b"ours")
    theirs = noise_peer(not crust_is_initiator, KeyPair.generate(), b"theirs")
    if crust_is_initiator:
        theirs.read_message(ours.write_message())
        with pytest.raises(RemoteProtocolError):
            ours.read_message(bytes(theirs.write_message()))
    else:
        ours.read_message(bytes(theirs.write_message()))
        message = ours.write_message()
        invalid_tag = pytest.importorskip("cryptography.exceptions").InvalidTag
        with pytest.raises(invalid_tag):  # what noiseprotocol raises for a bad tag
            theirs.read_message(message)
