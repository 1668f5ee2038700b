"""The row type, the input helpers and the strategies the rows share."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Callable

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from crust.crypto.keys import KeyPair
from crust.handshake.secure import PREAMBLE
from crust.handshake.states import SecureInput
from crust.ids import CrustUser, Endpoint, PeerId, name_hash
from crust.wire.framing import encode_handshake_message
from crust.wire.messages import (
    CONNECT_TOKEN_SIZE, BootstrapDenied, BootstrapGranted, BootstrapRequest, ChooseConnection, ConnectRequest, Data,
    DenyReason, EchoAddrReq, EchoAddrResp, Goodbye, GoodbyeReason, Heartbeat, Message, PeerExchangeRequest,
    PeerExchangeResponse, SharedPeer,
)

# -- helpers --------------------------------------------------------------------------------


def pieces(data: bytes) -> list[bytes]:
    """``data`` cut at up to four places (maybe none, maybe empty pieces) that ``data`` itself seeds."""
    rng = random.Random(data)
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randrange(5)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


def chunks_of(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` split at the given (unsorted, possibly out-of-range) offsets."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def text(data: bytes) -> str:
    """Bytes as the text a user would paste: UTF-8, undecodable bytes kept as lone surrogates."""
    return data.decode("utf-8", "surrogateescape")


@st.composite
def mutants(draw: st.DrawFn, valid: SearchStrategy[bytes]) -> bytes:
    """A valid encoding after one to three edits: a bit flip, a cut, an extension, an insertion,
    a deletion, or a byte set to an edge value (0, 1, 0x7f, 0x80, 0xff)."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["flip", "truncate", "extend", "insert", "delete", "edge"]))
        at = draw(st.integers(0, len(data)))
        if op == "truncate":
            del data[at:]
        elif op == "extend":
            data += draw(st.binary(min_size=1, max_size=16))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 4))]
        elif data:
            i = at % len(data)
            data[i] = data[i] ^ (1 << draw(st.integers(0, 7))) if op == "flip" else draw(
                st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
    return bytes(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63) | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)


def json_objects(fields: dict[str, SearchStrategy[Any]]) -> SearchStrategy[bytes]:
    """JSON objects with any of ``fields`` (each a good value or any JSON), maybe an unknown one."""
    optional = {name: good | json_values for name, good in fields.items()}
    return st.fixed_dictionaries({}, optional={**optional, "extra": json_values}).map(
        lambda obj: json.dumps(obj).encode())


# -- shared strategies ------------------------------------------------------------------------

ip_hosts = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)
peer_ids = st.binary(min_size=32, max_size=32).map(PeerId)


def ip_endpoints(min_port: int = 0, transports: tuple[str, ...] = ("tcp", "udp")) -> SearchStrategy[Endpoint]:
    """IP-literal endpoints (what the wire can carry)."""
    return st.builds(Endpoint, ip_hosts, st.integers(min_port, 65535), st.sampled_from(transports))


endpoints = ip_endpoints()
listener_lists = st.lists(endpoints, max_size=6).map(tuple)
control_messages: SearchStrategy[Message] = st.one_of(
    st.builds(Heartbeat, st.integers(min_value=0, max_value=2**32 - 1), st.booleans()),
    st.builds(Goodbye, st.sampled_from(GoodbyeReason)),
    st.builds(BootstrapRequest, st.sampled_from(CrustUser), listener_lists, st.booleans()),
    st.builds(BootstrapGranted, listener_lists),
    st.builds(BootstrapDenied, st.sampled_from(DenyReason)),
    st.just(EchoAddrReq()),
    st.builds(EchoAddrResp, endpoints),
    st.builds(ConnectRequest, st.binary(min_size=CONNECT_TOKEN_SIZE, max_size=CONNECT_TOKEN_SIZE)),
    st.just(ChooseConnection()),
    st.just(PeerExchangeRequest()),
    st.builds(PeerExchangeResponse, st.lists(
        st.builds(SharedPeer, peer_ids, st.lists(endpoints, min_size=1, max_size=4).map(tuple)), max_size=3).map(tuple)),
)
data_messages = st.builds(Data, st.integers(min_value=0, max_value=255), st.binary(max_size=300), st.booleans())
all_messages = st.one_of(control_messages, data_messages)

# Hostile handshake input: noise, noise behind a correct preamble, well-framed handshake
# messages of any type and body, or a HELLO of our network with a random ephemeral key.
handshake_messages = st.builds(encode_handshake_message, st.integers(0, 255), st.binary(max_size=200))
handshake_garbage = st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=200).map(lambda b: PREAMBLE + b),
    st.lists(handshake_messages, max_size=4).map(lambda ms: PREAMBLE + b"".join(ms)),
    st.binary(min_size=64, max_size=64).map(
        lambda b: PREAMBLE + encode_handshake_message(SecureInput.HELLO, name_hash(None) + b[:32])),
)

# Keys are made once: each handshake still makes fresh ephemerals unless a row pins them.
STATIC_A, STATIC_B = KeyPair.generate(), KeyPair.generate()
EPHEMERAL_A, EPHEMERAL_B = KeyPair.generate(), KeyPair.generate()
KEY_1, KEY_2 = bytes(range(32)), bytes(range(1, 33))


# -- the row --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Decoder:
    """One decoder: see the module docstring for each field."""

    name: str
    decode: Callable[[bytes], Any]
    raises: tuple[type[BaseException], ...]
    covers: tuple[str, ...]
    values: SearchStrategy[Any] | None = None
    encode: Callable[[Any], bytes] | None = None
    expect: Callable[[Any], Any] = lambda value: value
    canonical: bool | None = None
    noise: SearchStrategy[bytes] = st.nothing()
    max_size: int = 300

    def inputs(self) -> SearchStrategy[tuple[str, Any]]:
        """``("valid", value)``, or ``("hostile", bytes)``: random, structured noise, or a mutant."""
        hostile = st.binary(max_size=self.max_size) | self.noise
        if self.values is not None:
            assert self.encode is not None
            hostile |= mutants(self.values.map(self.encode))
            return st.tuples(st.just("valid"), self.values) | st.tuples(st.just("hostile"), hostile)
        return st.tuples(st.just("hostile"), hostile)

    def __repr__(self) -> str:
        return self.name

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(self.name)  # hypothesis prints the row by name in a falsifying example
