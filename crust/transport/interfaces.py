"""This host's interfaces, as ``netifaces`` reports them: local addresses and broadcast targets.

Both questions are asked whenever they matter (when we listen, gather
connection info or seek on the LAN), never cached: interfaces come and go.
"""

from __future__ import annotations

import ipaddress

import netifaces  # type: ignore[import-untyped, unused-ignore]  # typed in netifaces-plus, not in netifaces

__all__ = ["broadcast_targets", "local_addresses"]


def local_addresses(bound: str) -> list[str]:
    """The addresses a socket bound to ``bound`` can be reached at: every interface's for a wildcard.

    Loopback addresses come last; a specific address is its own answer.
    """
    if bound not in ("0.0.0.0", "::"):
        return [bound]
    family = netifaces.AF_INET if bound == "0.0.0.0" else netifaces.AF_INET6
    found: list[str] = []
    for name in netifaces.interfaces():
        for entry in netifaces.ifaddresses(name).get(family, []):
            addr = str(entry.get("addr", "")).split("%")[0]
            if addr and addr not in found:
                found.append(addr)
    loopback = [a for a in found if ipaddress.ip_address(a).is_loopback]
    return [a for a in found if a not in loopback] + loopback or [bound]


def broadcast_targets() -> list[str]:
    """The broadcast address of every IPv4 interface that has one."""
    found: list[str] = []
    for name in netifaces.interfaces():
        for entry in netifaces.ifaddresses(name).get(netifaces.AF_INET, []):
            broadcast = entry.get("broadcast")
            if broadcast and broadcast not in found:
                found.append(str(broadcast))
    return found
