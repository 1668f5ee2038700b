"""crust's I/O shell: a selector reactor, TCP pumps and a UDP socket.

Nothing in this package knows crust's protocol; it moves bytes, runs timers
and carries calls between threads.  Only ``crust.runtime`` puts it together
with the engine (ARCHITECTURE.md §4).
"""

from __future__ import annotations

from .reactor import Reactor, TimerHandle
from .tcp import TcpStream
from .tcp_listener import TcpListener
from .udp import UdpSocket

__all__ = ["Reactor", "TimerHandle", "TcpListener", "TcpStream", "UdpSocket"]
