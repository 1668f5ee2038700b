"""Socket addresses for the transport pumps: IP literals in, ``(host, port)`` out, never DNS."""

from __future__ import annotations

import socket
from typing import Any

__all__ = ["SockAddr", "resolve", "host_port"]

SockAddr = tuple[Any, ...]  # (host, port) for IPv4, (host, port, flowinfo, scope_id) for IPv6


def resolve(host: str, port: int, kind: int, passive: bool) -> tuple[int, SockAddr]:
    """Turn an IP literal into (family, sockaddr) for a ``kind`` socket without ever touching DNS.

    AI_NUMERICHOST makes getaddrinfo fail fast on a hostname instead of
    blocking the reactor on a resolver; resolving names is the caller's job.
    """
    flags = socket.AI_NUMERICHOST | (socket.AI_PASSIVE if passive else 0)
    infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, kind, 0, flags)
    family, _type, _proto, _canon, sockaddr = infos[0]
    return int(family), sockaddr


def host_port(sockaddr: SockAddr) -> tuple[str, int]:
    """The ``(host, port)`` of a socket address of either family."""
    return (str(sockaddr[0]), int(sockaddr[1]))
