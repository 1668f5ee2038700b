"""The engine's records: one per connection, per peer and per bootstrap run.

Plain mutable slots objects, owned by :class:`~crust.engine.Engine`'s concerns (on the
reactor thread); they hold state and make no decisions.
"""

from __future__ import annotations

from collections import deque

from ..bootstrap.policy import Bootstrapper
from ..channel import SecureChannel
from ..events import Origin
from ..handshake.secure import SecureHandshake
from ..handshake.states import ExchangeState, Role
from ..ids import ConnId, Contact, CrustUser, Endpoint, PeerId
from ..outbox import Outbox
from ..wire.messages import BootstrapRequest
from .limits import RequestRate

__all__ = ["Conn", "Peer", "Run", "Circuit", "NEVER"]

NEVER = float("inf")


class Conn:
    """One byte stream and the machines running on it."""

    __slots__ = ("id", "role", "remote", "state", "handshake", "channel", "peer_id", "contact", "run", "user",
                 "deadline", "last_rx", "last_tx", "unsent", "bytes_in", "bytes_out", "paused", "scheduled",
                 "connected", "listeners", "probe_for", "probes", "request", "shareable", "connect_for",
                 "connect_token", "session_id", "echo", "local", "via", "echoes_answered", "circuit")

    def __init__(self, conn_id: ConnId, role: Role, remote: Endpoint, now: float) -> None:
        self.id = conn_id
        self.role = role
        self.remote = remote
        self.state = ExchangeState.SECURING
        self.handshake: SecureHandshake | None = None
        self.channel: SecureChannel | None = None
        self.peer_id: PeerId | None = None
        self.contact: Contact | None = None  # the bootstrap contact this dial serves
        self.run: int | None = None  # the bootstrap run it belongs to
        self.user = CrustUser.NODE  # the role the initiator asks for / the requester took
        self.listeners: tuple[Endpoint, ...] = ()
        self.deadline = NEVER  # handshake + exchange must finish by then
        self.last_rx = now
        self.last_tx = now
        self.unsent = 0  # bytes written to the shell, not yet reported sent
        self.bytes_in = 0
        self.bytes_out = 0
        self.paused = False
        self.scheduled = NEVER  # earliest timer-heap entry pending for this conn
        self.connected = role is Role.RESPONDER
        self.probe_for: ConnId | None = None  # a reachability dial-back: the request it checks
        self.probes: set[ConnId] = set()  # a request under check: its dial-backs still running
        self.request: BootstrapRequest | None = None  # the request waiting for the check
        self.shareable = True  # the requester allows peer exchange to mention it
        self.connect_for: PeerId | None = None  # a connect candidate we dialled: the peer it must reach
        self.connect_token: bytes | None = None  # a parked ConnectRequest's token (responder)
        self.session_id = b""  # the Noise handshake hash: both ends know it, no two connections share it
        self.echo = False  # an observer connection: asks the peer which address it sees us at, then closes
        self.local: Endpoint | None = None  # our end of the stream, as the shell reported it
        self.via = remote.transport  # how a connect candidate was made: tcp, udp, tcp-punch, udp-punch
        self.echoes_answered = 0  # EchoAddrReq answered before a grant (limits.PRE_GRANT_ECHOES)
        self.circuit: Circuit | None = None  # a relayed connection: the circuit it runs over (no socket)


class Circuit:
    """Our end of a relay circuit: the peer link it rides on and its flow-control window.

    ``queue`` holds bytes the connection wrote that wait for window
    (``in_flight`` sent on, not yet acknowledged by the far end);
    ``to_ack`` counts bytes we took and have not acknowledged yet.
    """

    __slots__ = ("carrier", "number", "relay", "peer", "queue", "queued", "in_flight", "to_ack")

    def __init__(self, carrier: Conn, number: int, relay: PeerId, peer: PeerId) -> None:
        self.carrier = carrier  # the established connection to the relay
        self.number = number  # the circuit's number on that connection
        self.relay = relay
        self.peer = peer  # who must answer at the far end
        self.queue: deque[bytes | memoryview] = deque()
        self.queued = 0
        self.in_flight = 0
        self.to_ack = 0


class Peer:
    """An authenticated, granted remote node and what we queue for it."""

    __slots__ = ("id", "conn", "outbox", "user", "origin", "rtt", "probe_seq", "probe_sent_at", "shareable",
                 "exchange_asked", "exchange_answered_at", "requests", "relays_for_us", "draining")

    def __init__(self, peer_id: PeerId, conn: Conn, outbox: Outbox, origin: Origin, now: float) -> None:
        self.id = peer_id
        self.conn: Conn | None = conn  # None while a duplicate swap is under way
        self.outbox = outbox
        self.user = conn.user
        self.origin = origin
        self.rtt: float | None = None
        self.probe_seq = 0
        self.probe_sent_at: float | None = None  # an unanswered heartbeat is outstanding
        self.shareable = conn.shareable  # it did not opt out of peer exchange
        self.exchange_asked = False  # we sent a PeerExchangeRequest it has not answered
        self.exchange_answered_at = float("-inf")  # when we last answered its request
        self.requests = RequestRate(now)  # the control requests it makes of us
        self.relays_for_us = False  # it sent RelayOffer: it will open circuits for us
        self.draining: Conn | None = None  # a relayed connection we moved off: nothing new goes out until it is acked


class Connect:
    """One ``connect()`` in progress: the peer, both tokens, our dials and their failures."""

    __slots__ = ("peer_id", "our_token", "their_token", "dials", "failures", "deadline", "held", "hold_until",
                 "relays", "relay_at", "upgrade")

    def __init__(self, peer_id: PeerId, our_token: bytes, their_token: bytes, deadline: float) -> None:
        self.peer_id = peer_id
        self.our_token = our_token  # what the peer's dials must present
        self.their_token = their_token  # what our dials present
        self.dials: set[ConnId] = set()
        self.failures: dict[str, str] = {}
        self.deadline = deadline
        self.held: Conn | None = None  # a UDP candidate the chooser holds while a TCP one may still win
        self.hold_until = NEVER
        self.relays: tuple[PeerId, ...] = ()  # relays to open circuits through, once ``relay_at`` comes
        self.relay_at = NEVER
        self.upgrade = False  # moving a relayed peer to a direct connection (engine.upgrade): no event at the end


class Run:
    """One bootstrap run: its schedule and the dials it started."""

    __slots__ = ("id", "policy", "user", "dials")

    def __init__(self, run_id: int, policy: Bootstrapper, user: CrustUser) -> None:
        self.id = run_id
        self.policy = policy
        self.user = user
        self.dials: dict[Contact, ConnId] = {}
