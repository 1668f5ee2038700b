"""Sans-IO NAT traversal: probe datagrams, external-address voting and UDP hole punching.

* :mod:`crust.nat.probe`: the peer-STUN and punch-probe datagrams (``encode``/``decode``);
* :mod:`crust.nat.observe`: :class:`NatObserver` votes on our external endpoints, :class:`NatInfo`;
* :mod:`crust.nat.punch`: :class:`UdpPunch`, one side of a UDP hole punch, and ``retry_schedule``.
"""

from __future__ import annotations

from .observe import MappingBehaviour, NatInfo, NatObserver, TransportNat
from .probe import EchoRequest, EchoResponse, PunchProbe
from .punch import Punched, PunchEvent, PunchFailed, UdpPunch, retry_schedule

__all__ = [
    "EchoRequest",
    "EchoResponse",
    "MappingBehaviour",
    "NatInfo",
    "NatObserver",
    "PunchEvent",
    "PunchFailed",
    "PunchProbe",
    "Punched",
    "TransportNat",
    "UdpPunch",
    "retry_schedule",
]
