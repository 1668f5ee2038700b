"""Rows for datagrams (NAT probes, punching, LAN beacons, rUDP) and the engine's doors for hostile bytes."""

from __future__ import annotations

import random

from hypothesis import strategies as st

from crust.config import Config
from crust.crypto.mac import punch_key
from crust.discovery import beacon
from crust.discovery.lan import LanBeacon
from crust.engine.engine import Engine
from crust.errors import RemoteProtocolError
from crust.ids import Endpoint, PeerId, name_hash
from crust.nat import probe
from crust.nat.punch import UdpPunch
from crust.rudp.events import RudpData
from crust.rudp.packet import (_VALID_FLAGS, ACK, COOKIE, COOKIE_SIZE, HEADER, MAGIC, MAX_PAYLOAD, PATH, PROBE, RST,
                               SYN, parse_header, peek_ids)
from crust.rudp.stream import RudpStream
from .base import STATIC_B, Decoder, endpoints, handshake_garbage, ip_endpoints, mutants, peer_ids, pieces
from .streams import first_flight

PUNCH_KEY = punch_key(bytes(16), bytes(range(16)))
PUNCH_FROM = Endpoint("198.51.100.2", 4000, "udp")
NAT_SOURCE = Endpoint("203.0.113.9", 9, "udp")


def _punch() -> UdpPunch:
    punch = UdpPunch(PUNCH_KEY, PeerId(b"\x02" * 32), PeerId(b"\x01" * 32), [PUNCH_FROM], max_datagrams=50)
    punch.start(0.0)
    return punch


def _receive_probe(data: bytes) -> bool:
    return _punch().receive_probe(data, PUNCH_FROM, 0.01)


def _signed_probe(fields: tuple[int, int, bool]) -> bytes:
    counter, ack, nominate = fields
    return probe.encode(probe.PunchProbe.sign(PUNCH_KEY, *_punch().route, counter, ack, nominate))


nonces_12 = st.binary(min_size=probe.NONCE_SIZE, max_size=probe.NONCE_SIZE)
probe_fields = st.tuples(st.integers(1, probe.MAX_COUNTER), st.integers(0, probe.MAX_COUNTER), st.booleans())
nat_datagrams = st.one_of(
    st.builds(probe.EchoRequest, nonces_12),
    st.builds(probe.EchoResponse, nonces_12, ip_endpoints(1, ("udp",))),
    st.builds(probe.PunchProbe, st.binary(min_size=8, max_size=8), st.binary(min_size=8, max_size=8),
              st.integers(1, probe.MAX_COUNTER), st.integers(0, probe.MAX_COUNTER), st.booleans(),
              st.binary(min_size=16, max_size=16)),
)

NAME_HASH = name_hash("fuzz")
SEEK_NONCE = bytes(range(16))
OUR_ID, THEIR_ID = PeerId(b"\x0a" * 32), PeerId(b"\x0b" * 32)
LAN_FROM = ("192.0.2.7", 5484)
beacon_replies = st.builds(beacon.Reply, st.just(SEEK_NONCE), st.just(NAME_HASH), peer_ids.filter(lambda p: p != OUR_ID),
                           st.lists(ip_endpoints().filter(lambda ep: ep.host not in ("0.0.0.0", "::")),
                                    max_size=6).map(tuple))
beacons = st.one_of(
    st.builds(beacon.Seek, st.binary(min_size=16, max_size=16), st.binary(min_size=32, max_size=32)),
    st.builds(beacon.Reply, st.binary(min_size=16, max_size=16), st.binary(min_size=32, max_size=32), peer_ids,
              st.lists(endpoints, max_size=6).map(tuple)),
)


def _encode_beacon(message: beacon.Seek | beacon.Reply) -> bytes:
    return beacon.encode_seek(message) if isinstance(message, beacon.Seek) else beacon.encode_reply(message)


def _beacon_machines(data: bytes) -> tuple[beacon.Reply | None, bytes | None]:
    """What a seeker makes of ``data`` (a new contact?), and what a responder answers."""
    seeker = beacon.BeaconSeeker(NAME_HASH, [LAN_FROM], SEEK_NONCE, 0.0, self_id=OUR_ID)
    responder = beacon.BeaconResponder(NAME_HASH, OUR_ID, [Endpoint("192.0.2.1", 5483)])
    return seeker.receive_datagram(data, LAN_FROM, 0.1), responder.receive_datagram(data, LAN_FROM)


def _lan_beacon(data: bytes) -> bytes | None:
    lan = LanBeacon(NAME_HASH, OUR_ID)
    lan.set_listeners([Endpoint("192.0.2.1", 5483)])
    lan.seek([LAN_FROM], SEEK_NONCE, 0.0, 1.0, until_first=True)
    lan.receive_reply(data, LAN_FROM, 0.1)
    return lan.receive_seek(data, LAN_FROM, 0.1)


def _rudp_header(data: bytes) -> tuple[int, int, int, int, int, int, tuple[bytes, ...], bytes] | None:
    """The parsed datagram, or None when it is not rUDP or is malformed (counted and dropped)."""
    header = parse_header(data)
    ids = peek_ids(data)
    assert (header is None) == (ids is None)
    if header is None or header[7] < 0:
        return None
    flags, dst, src, seq, ack, window, nsack, payload_at = header
    sacks = tuple(data[HEADER.size + 8 * i:HEADER.size + 8 * i + 8] for i in range(nsack))
    return flags, dst, src, seq, ack, window, sacks, data[payload_at:]


def _rudp_datagram(value: tuple[int, int, int, int, int, int, tuple[bytes, ...], bytes]) -> bytes:
    flags, dst, src, seq, ack, window, sacks, payload = value
    return HEADER.pack(MAGIC, flags, dst, src, seq, ack, window, len(sacks)) + b"".join(sacks) + payload


u32 = st.integers(0, 2**32 - 1)
# A SYN (without ACK) and a COOKIE carry exactly a cookie and no SACK blocks, and only a COOKIE has src 0;
# a PROBE carries padding and no SACK blocks, its answer (PROBE | ACK) neither.
_exact = (SYN, COOKIE)
rudp_datagrams = st.sampled_from(sorted(_VALID_FLAGS)).flatmap(lambda flags: st.tuples(
    st.just(flags), u32, st.just(0) if flags == COOKIE else st.integers(1, 2**32 - 1), u32, u32, u32,
    st.just(()) if flags in _exact or flags & PROBE else st.lists(st.binary(min_size=8, max_size=8),
                                                                   max_size=3).map(tuple),
    st.binary(min_size=COOKIE_SIZE, max_size=COOKIE_SIZE) if flags in _exact
    else st.just(b"") if flags & (SYN | RST | PATH) or flags == PROBE | ACK else st.binary(max_size=MAX_PAYLOAD)))

RUDP_A, RUDP_B, ISN_A, ISN_B = 0xA1A1A1A1, 0xB2B2B2B2, 0xFFFFFFF0, 0x7FFFFFF0


def _rudp_pair() -> tuple[RudpStream, RudpStream]:
    """Two streams through their handshake (ids and ISNs fixed, so every pair is the same)."""
    a, b = RudpStream(RUDP_A, ISN_A, 0.0), RudpStream(RUDP_B, ISN_B, 0.0)
    a.connect(0.0)
    for _ in range(3):  # SYN, SYN-ACK, ACK
        for datagram in a.datagrams_to_send(0.0):
            b.receive_datagram(datagram, 0.0)
        for datagram in b.datagrams_to_send(0.0):
            a.receive_datagram(datagram, 0.0)
    assert a.connected and b.connected
    return a, b


def _rudp_established(data: bytes) -> bytes:
    """What an established stream delivers when ``data`` arrives (it never raises)."""
    _, b = _rudp_pair()
    b.receive_datagram(data, 0.1)
    b.datagrams_to_send(0.1)
    return b"".join(e.data for e in b.take_events() if isinstance(e, RudpData))


def _rudp_segment(payload: bytes) -> bytes:
    a, _ = _rudp_pair()
    a.write(payload)
    return a.datagrams_to_send(0.1)[0]


def _rudp_listening(data: bytes) -> int:
    """How many datagrams a fresh stream answers ``data`` with (a SYN gets its SYN-ACK)."""
    stream = RudpStream(RUDP_B, ISN_B, 0.0)
    stream.receive_datagram(data, 0.0)
    return len(stream.datagrams_to_send(0.0))


def _syn(_: None) -> bytes:
    stream = RudpStream(RUDP_A, ISN_A, 0.0)
    stream.connect(0.0)
    return stream.datagrams_to_send(0.0)[0]


DATAGRAMS = (
    Decoder("nat.probe", probe.decode, (RemoteProtocolError,), ("crust.nat.probe.decode",),
            nat_datagrams, probe.encode, canonical=True,
            noise=st.binary(max_size=60).map(lambda b: probe.MAGIC + b"\x01" + b), max_size=100),
    Decoder("nat.punch.receive_probe", _receive_probe, (), ("crust.nat.punch.UdpPunch.receive_probe",),
            probe_fields, _signed_probe, expect=lambda _: True, max_size=100),
    Decoder("discovery.beacon", beacon.decode_beacon, (RemoteProtocolError,), ("crust.discovery.beacon.decode_beacon",),
            beacons, _encode_beacon, canonical=True,
            noise=st.binary(max_size=100).map(lambda b: beacon.MAGIC + b"\x01" + b)),
    Decoder("discovery.beacon.machines", _beacon_machines, (), (
        "crust.discovery.beacon.BeaconSeeker.receive_datagram", "crust.discovery.beacon.BeaconResponder.receive_datagram"),
        beacon_replies, beacon.encode_reply, expect=lambda reply: (reply, None)),
    Decoder("discovery.lan", _lan_beacon, (), (
        "crust.discovery.lan.LanBeacon.receive_seek", "crust.discovery.lan.LanBeacon.receive_reply"),
        st.binary(min_size=16, max_size=16), lambda nonce: beacon.encode_seek(beacon.Seek(nonce, NAME_HASH)),
        expect=lambda nonce: beacon.encode_reply(beacon.Reply(nonce, NAME_HASH, OUR_ID, (Endpoint("192.0.2.1", 5483),)))),
    Decoder("rudp.packet", _rudp_header, (), ("crust.rudp.packet.parse_header", "crust.rudp.packet.peek_ids"),
            rudp_datagrams, _rudp_datagram, canonical=True, max_size=1300),
    Decoder("rudp.stream.established", _rudp_established, (), ("crust.rudp.stream.RudpStream.receive_datagram",),
            st.binary(min_size=1, max_size=MAX_PAYLOAD), _rudp_segment, max_size=1300,
            noise=rudp_datagrams.map(_rudp_datagram)),
    Decoder("rudp.stream.listening", _rudp_listening, (), ("crust.rudp.stream.RudpStream.receive_datagram",),
            st.none(), _syn, expect=lambda _: 1, max_size=1300, noise=rudp_datagrams.map(_rudp_datagram)),
)


# -- the engine's doors for hostile bytes --------------------------------------------------------

ENGINE_CONFIG = Config(bootstrap_cache_path=None, enable_upnp=False, listen_host="127.0.0.1")
ENGINE_REMOTE = Endpoint("127.0.0.2", 40000)


def _engine_stream(data: bytes) -> None:
    engine = Engine(static=STATIC_B, config=ENGINE_CONFIG, rng=random.Random(0))
    conn = engine.handle_accepted(ENGINE_REMOTE, 0.0)
    assert conn is not None
    for piece in pieces(data):
        engine.receive_data(conn, piece, 0.01)
    engine.take_effects(), engine.take_events()


def _engine_datagram(data: bytes) -> None:
    engine = Engine(static=STATIC_B, config=ENGINE_CONFIG, rng=random.Random(0))
    engine.receive_datagram(data, NAT_SOURCE, 0.01)
    engine.take_effects(), engine.take_events()


ENGINE = (
    Decoder("engine.receive_data", _engine_stream, (), ("crust.engine.engine.Engine.receive_data",),
            noise=handshake_garbage | st.none().map(first_flight)),
    Decoder("engine.receive_datagram", _engine_datagram, (), (
        "crust.engine.engine.Engine.receive_datagram", "crust.engine.punch.Punching.receive_probe",
        "crust.engine.external.ExternalAddresses.receive_datagram"),
        noise=nat_datagrams.map(probe.encode) | mutants(nat_datagrams.map(probe.encode)), max_size=100),
)
