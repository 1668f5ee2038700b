"""Sans-IO LAN discovery: the beacon codec, its seeker and responder machines, and a node's LanBeacon."""

from __future__ import annotations

from .beacon import (
    MAX_DATAGRAM,
    MAX_LISTENERS,
    NONCE_SIZE,
    BeaconResponder,
    BeaconSeeker,
    Reply,
    Seek,
    decode_beacon,
    encode_reply,
    encode_seek,
)
from .lan import LanBeacon

__all__ = [
    "MAX_DATAGRAM",
    "MAX_LISTENERS",
    "NONCE_SIZE",
    "BeaconResponder",
    "BeaconSeeker",
    "LanBeacon",
    "Reply",
    "Seek",
    "decode_beacon",
    "encode_reply",
    "encode_seek",
]
