"""Sans-IO LAN discovery: the beacon codec and its seeker and responder machines."""

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

__all__ = [
    "MAX_DATAGRAM",
    "MAX_LISTENERS",
    "NONCE_SIZE",
    "BeaconResponder",
    "BeaconSeeker",
    "Reply",
    "Seek",
    "decode_beacon",
    "encode_reply",
    "encode_seek",
]
