"""A small STUN server (and client codec) for the NAT lab (tests/natlab.py).

Answers Binding Requests (RFC 5389) on two IPv4 addresses x two ports, and
honours the RFC 3489 CHANGE-REQUEST attribute (answer from the other address
and/or port), which is what RFC 5780-style NAT classification and miniupnpd's
``ext_perform_stun`` need.  Every success response carries MAPPED-ADDRESS (for
RFC 3489 clients such as miniupnpd 2.3), XOR-MAPPED-ADDRESS (when the request
has the RFC 5389 magic cookie), RESPONSE-ORIGIN/SOURCE-ADDRESS and
OTHER-ADDRESS/CHANGED-ADDRESS.  Anything else is counted and ignored.

Run inside the lab's internet namespace::

    python tests/stun_server.py --addresses 198.51.100.1,198.51.100.2 --ports 3478,3479 --lifetime 300

It prints ``{"event": "ready", ...}`` once all four sockets are bound, and runs
until ``--lifetime`` seconds pass or its stdin closes (its parent is gone).

The codec half (:func:`binding_request`, :func:`parse_response`) is imported
by the lab's probe scripts (tests/nat_probe.py).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import secrets
import select
import socket
import struct
import sys
import time
from typing import Any

MAGIC = 0x2112A442
BINDING_REQUEST = 0x0001
BINDING_SUCCESS = 0x0101
HEADER = struct.Struct("!HHI12s")  # type, length, magic cookie, transaction id (96 bits)

MAPPED_ADDRESS = 0x0001
CHANGE_REQUEST = 0x0003
SOURCE_ADDRESS = 0x0004  # RFC 3489; RESPONSE-ORIGIN in RFC 5780
CHANGED_ADDRESS = 0x0005  # RFC 3489; OTHER-ADDRESS in RFC 5780
XOR_MAPPED_ADDRESS = 0x0020
RESPONSE_ORIGIN = 0x802B
OTHER_ADDRESS = 0x802C
CHANGE_IP = 0x04
CHANGE_PORT = 0x02

Address = tuple[str, int]


# -- codec ---------------------------------------------------------------------

def binding_request(change_ip: bool = False, change_port: bool = False,
                    txid: bytes | None = None) -> tuple[bytes, bytes]:
    """A Binding Request (with CHANGE-REQUEST when asked); returns ``(datagram, transaction id)``."""
    txid = txid if txid is not None else secrets.token_bytes(12)
    flags = (CHANGE_IP if change_ip else 0) | (CHANGE_PORT if change_port else 0)
    attrs = struct.pack("!HHI", CHANGE_REQUEST, 4, flags) if flags else b""
    return HEADER.pack(BINDING_REQUEST, len(attrs), MAGIC, txid) + attrs, txid


def _attributes(data: bytes) -> dict[int, bytes]:
    """The TLV attributes after the 20-byte header (first of each type wins); ValueError if malformed."""
    if len(data) < HEADER.size:
        raise ValueError("shorter than a STUN header")
    _type, length, _magic, _txid = HEADER.unpack_from(data)
    if length % 4 or HEADER.size + length > len(data):
        raise ValueError("bad STUN message length")
    attrs: dict[int, bytes] = {}
    pos, end = HEADER.size, HEADER.size + length
    for _ in range(64):  # bounded: a sane message has a handful
        if pos + 4 > end:
            break
        kind, size = struct.unpack_from("!HH", data, pos)
        value = data[pos + 4:pos + 4 + size]
        if len(value) != size:
            raise ValueError("attribute runs past the message")
        attrs.setdefault(kind, value)
        pos += 4 + (size + 3) // 4 * 4
    return attrs


def _encode_address(kind: int, address: Address, xor: bool = False) -> bytes:
    ip = int(ipaddress.IPv4Address(address[0]))
    port = address[1]
    if xor:
        ip ^= MAGIC
        port ^= MAGIC >> 16
    return struct.pack("!HHBBHI", kind, 8, 0, 1, port, ip)


def _decode_address(value: bytes, xor: bool = False) -> Address:
    if len(value) != 8 or value[1] != 1:
        raise ValueError("not an IPv4 address attribute")
    _zero, _family, port, ip = struct.unpack("!BBHI", value)
    if xor:
        ip ^= MAGIC
        port ^= MAGIC >> 16
    return str(ipaddress.IPv4Address(ip)), port


def parse_response(data: bytes, txid: bytes) -> dict[str, Address] | None:
    """The addresses in a Binding Success for ``txid``: keys ``mapped``, ``origin``, ``other``.

    Returns ``None`` for anything else (another transaction, not a success, malformed).
    """
    try:
        kind, _length, _magic, got = HEADER.unpack_from(data)
        if kind != BINDING_SUCCESS or got != txid:
            return None
        attrs = _attributes(data)
        found: dict[str, Address] = {}
        if XOR_MAPPED_ADDRESS in attrs:
            found["mapped"] = _decode_address(attrs[XOR_MAPPED_ADDRESS], xor=True)
        elif MAPPED_ADDRESS in attrs:
            found["mapped"] = _decode_address(attrs[MAPPED_ADDRESS])
        for key, kinds in (("origin", (RESPONSE_ORIGIN, SOURCE_ADDRESS)), ("other", (OTHER_ADDRESS, CHANGED_ADDRESS))):
            for k in kinds:
                if k in attrs:
                    found[key] = _decode_address(attrs[k])
                    break
        return found if "mapped" in found else None
    except (ValueError, struct.error):
        return None


def parse_request(data: bytes) -> tuple[int, bytes, int] | None:
    """``(magic cookie, transaction id, CHANGE-REQUEST flags)`` of a Binding Request, else ``None``."""
    try:
        kind, _length, magic, txid = HEADER.unpack_from(data)
        if kind != BINDING_REQUEST:
            return None
        attrs = _attributes(data)
    except (ValueError, struct.error):
        return None
    flags = 0
    if len(attrs.get(CHANGE_REQUEST, b"")) == 4:
        flags = struct.unpack("!I", attrs[CHANGE_REQUEST])[0] & (CHANGE_IP | CHANGE_PORT)
    return magic, txid, flags


def binding_response(magic: int, txid: bytes, source: Address, origin: Address, other: Address) -> bytes:
    """A Binding Success telling ``source`` what it looks like.

    Args:
        magic: the request's magic cookie (XOR-MAPPED-ADDRESS only for RFC 5389 clients).
        txid: the request's transaction id.
        source: who sent the request (what the client's NAT mapped it to).
        origin: the address and port the response leaves from.
        other: the server's alternate address and port (RFC 5780 OTHER-ADDRESS).
    """
    body = _encode_address(MAPPED_ADDRESS, source)
    if magic == MAGIC:
        body += _encode_address(XOR_MAPPED_ADDRESS, source, xor=True)
    body += _encode_address(SOURCE_ADDRESS, origin) + _encode_address(CHANGED_ADDRESS, other)
    body += _encode_address(RESPONSE_ORIGIN, origin) + _encode_address(OTHER_ADDRESS, other)
    return HEADER.pack(BINDING_SUCCESS, len(body), magic, txid) + body


# -- server --------------------------------------------------------------------

def serve(addresses: list[str], ports: list[int], lifetime: float) -> dict[str, int]:
    """Answer Binding Requests until ``lifetime`` s pass or stdin closes; returns counters."""
    socks: dict[tuple[int, int], socket.socket] = {}
    for i, ip in enumerate(addresses):
        for j, port in enumerate(ports):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((ip, port))
            socks[i, j] = s
    where = {s: key for key, s in socks.items()}
    counts = {"answered": 0, "ignored": 0}
    print(json.dumps({"event": "ready", "addresses": addresses, "ports": ports}), flush=True)
    stdin = sys.stdin.fileno()
    deadline = time.monotonic() + lifetime
    try:
        for _ in range(10_000_000):  # bounded; each round waits in select
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([stdin, *where], [], [], left)
            if stdin in ready and not os.read(stdin, 4096):
                break  # parent gone
            for sock in where:
                if sock in ready:
                    _answer(sock, where[sock], socks, addresses, ports, counts)
    finally:
        for s in socks.values():
            s.close()
    return counts


def _answer(s: socket.socket, key: tuple[int, int], socks: dict[tuple[int, int], socket.socket],
            addresses: list[str], ports: list[int], counts: dict[str, int]) -> None:
    try:
        data, source = s.recvfrom(2048)
    except OSError:
        counts["ignored"] += 1
        return
    request = parse_request(data)
    if request is None:
        counts["ignored"] += 1
        return
    magic, txid, flags = request
    i, j = key
    ri = 1 - i if flags & CHANGE_IP else i
    rj = 1 - j if flags & CHANGE_PORT else j
    answer = binding_response(magic, txid, source, (addresses[ri], ports[rj]), (addresses[1 - i], ports[1 - j]))
    try:
        socks[ri, rj].sendto(answer, source)
        counts["answered"] += 1
    except OSError:
        counts["ignored"] += 1


def main(argv: list[str] | None = None) -> int:
    """Command line entry point (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--addresses", required=True, help="two IPv4 addresses, comma-separated")
    ap.add_argument("--ports", default="3478,3479", help="two ports, comma-separated")
    ap.add_argument("--lifetime", type=float, default=300.0)
    args = ap.parse_args(argv)
    addresses = args.addresses.split(",")
    ports = [int(p) for p in args.ports.split(",")]
    if len(addresses) != 2 or len(ports) != 2:
        ap.error("need exactly two addresses and two ports")
    counts = serve(addresses, ports, args.lifetime)
    print(json.dumps({"event": "stopped", **counts}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
