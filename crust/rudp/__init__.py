"""Reliable UDP (PROTOCOL.md §10): a sans-IO machine that gives a UDP path TCP-like stream semantics.

Split as aioquic splits QUIC: ``packet`` is the wire format (one header
parser for the socket's demultiplexer and the stream), ``recovery`` the RTT
estimator, SACK scoreboard, NewReno and the RTO, ``receive`` reassembly and
the receive window, ``stream`` the connection machine (:class:`RudpStream`;
its handshake, resets and path challenges are ``control``'s, the tags that
authenticate them under the secure channel's path key ``auth``'s) and
``events`` what it reports; ``cookie`` (stateless SYN cookies) and
``timewait`` (closed connections remembered briefly) serve the socket that
carries many streams.  Nothing here reads a clock or touches a
socket: ``crust.transport.udp`` carries the datagrams.
"""

from __future__ import annotations

from .cookie import COOKIE_PERIOD, CookieJar
from .events import RudpClosed, RudpConnected, RudpData, RudpEvent, RudpSent
from .packet import COOKIE_SIZE, HEADER_SIZE, MAGIC, MAX_DATAGRAM, MAX_PAYLOAD, MAX_SACK_BLOCKS, SYN_SIZE, peek_ids
from .recovery import INITIAL_RTO, MAX_RTO, MAX_RTO_RETRIES, MIN_RTO, RttEstimator
from .path import Heard
from .pmtu import Pmtu
from .stream import RudpStream
from .timewait import TIME_WAIT, TimeWait

__all__ = [
    "MAGIC",
    "MAX_PAYLOAD",
    "MAX_SACK_BLOCKS",
    "HEADER_SIZE",
    "MAX_DATAGRAM",
    "COOKIE_SIZE",
    "SYN_SIZE",
    "peek_ids",
    "RudpConnected",
    "RudpData",
    "RudpSent",
    "RudpClosed",
    "RudpEvent",
    "INITIAL_RTO",
    "MIN_RTO",
    "MAX_RTO",
    "MAX_RTO_RETRIES",
    "RttEstimator",
    "RudpStream",
    "Heard",
    "Pmtu",
    "COOKIE_PERIOD",
    "CookieJar",
    "TIME_WAIT",
    "TimeWait",
]
