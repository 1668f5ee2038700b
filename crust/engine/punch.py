"""Hole punching for ``connect()``: TCP simultaneous open and UDP punching (RFC 5128 §3.3, §3.4).

Theory of operation.  The connection info we swapped names the other side's
punch endpoints: its TCP punch port's and its rUDP socket's mappings as its
observers saw them, and their local forms.  For one ``connect()``:

* **TCP** (``tcp_punch``): we dial each from *our* punch port while the other
  side dials ours from its own.  Each outgoing SYN opens our NAT for the
  other's; when they cross, the kernel joins them into one connection
  (simultaneous open) and both dials "connect".  Neither side accepted, so
  the secure handshake's roles go by PeerId: the greater one is the Noise
  initiator (PROTOCOL.md §7's chooser).  The kernel retransmits a pending SYN
  itself; a dial that fails early (a RST from a host that is not dialling
  yet) is re-dialled on :func:`~crust.nat.punch.retry_schedule`'s backoff
  until the connect's deadline.
* **UDP** (``udp_punch``): one :class:`~crust.nat.punch.UdpPunch` machine per
  connect sends authenticated probes from our rUDP socket until the connect's
  deadline (the peer's ``connect()`` may come many seconds after ours) and
  reports the address pair both sides agree on.  The side with the greater PeerId then
  opens an rUDP connection through it (the hole is open both ways, so a plain
  dial gets in and the other side accepts it like any other).  Probes that
  arrive before our own ``connect()`` starts (the peer was quicker) are kept,
  the newest ``EARLY_PROBES``, and fed to the punch when it starts: from a
  symmetric NAT such a probe is the only sign of the mapping to answer, and
  the peer's next round may be a second away.

What comes out is a candidate connection like a direct dial's: the secure
handshake expecting the peer's PeerId, then the ``ConnectRequest`` token
exchange and ``ChooseConnection`` of :mod:`~crust.engine.rendezvous`.
"""

from __future__ import annotations

from collections import deque

from ..crypto.mac import punch_key
from ..effects import SendDatagram
from ..errors import RemoteProtocolError
from ..handshake.states import Role
from ..ids import Endpoint, PeerId
from ..nat.probe import PunchProbe
from ..nat.punch import Punched, PunchFailed, UdpPunch, retry_schedule
from .core import Core
from .records import NEVER, Conn, Connect

__all__ = ["Punching", "MAX_TCP_PUNCH_TARGETS"]

MAX_TCP_PUNCH_TARGETS = 4  # TCP punch endpoints of one connection info dialled at once
EARLY_PROBES = 16  # probes kept that came before our connect() started (the newest)
EARLY_PROBE_AGE = 10.0  # seconds such a probe stays worth answering (NATs keep a UDP mapping 30 s+)


class _TcpTarget:
    """One TCP punch endpoint of one connect: the dial times left and the live attempt."""

    __slots__ = ("endpoint", "times", "conn", "last_error")

    def __init__(self, endpoint: Endpoint, times: list[float]) -> None:
        self.endpoint = endpoint
        self.times = times  # future dial times, soonest first
        self.conn: Conn | None = None
        self.last_error = "no answer"


class _Session:
    """The punching of one connect."""

    __slots__ = ("record", "tcp", "udp", "started")

    def __init__(self, record: Connect, started: float) -> None:
        self.record = record
        self.started = started
        self.tcp: list[_TcpTarget] = []
        self.udp: UdpPunch | None = None


class Punching:
    """Every connect's punch attempts, by peer."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self._sessions: dict[PeerId, _Session] = {}
        self.tcp_port: int | None = None  # our punch port (set by the engine with the sockets)
        self.udp_ready = False  # we have an rUDP socket to punch from
        # Probes no punch of ours took yet, with their source and arrival: the peer's connect()
        # may start before ours, and a probe from a mapping its NAT made just for us (a symmetric
        # NAT) is the only way we learn that mapping (see start()).
        self._early: deque[tuple[PunchProbe, Endpoint, float]] = deque(maxlen=EARLY_PROBES)
        core.conn_failed.append(self._on_conn_failed)

    def start(self, record: Connect, *, tcp_punch: tuple[Endpoint, ...], udp_punch: tuple[Endpoint, ...],
              now: float) -> None:
        """Begin punching towards ``record.peer_id``'s punch endpoints."""
        session = self._sessions[record.peer_id] = _Session(record, now)
        if self.tcp_port is not None:
            for endpoint in tcp_punch[:MAX_TCP_PUNCH_TARGETS]:
                target = _TcpTarget(endpoint, retry_schedule(now, record.deadline))
                session.tcp.append(target)
        if self.udp_ready and udp_punch:
            key = punch_key(record.our_token, record.their_token)
            # Probing lasts as long as the connect: the peer's connect() may come seconds after ours
            # (the schedule backs off to one round a second; max_datagrams bounds the whole punch).
            punch = session.udp = UdpPunch(key, self._core.id, record.peer_id, udp_punch,
                                           timeout=max(record.deadline - now, 0.1))
            punch.start(now)
            # The peer started first: its probes that came meanwhile are answered now, rather than
            # after its next round (up to a second later).  They are authenticated by the machine.
            early = [e for e in self._early if e[0].sender == punch.route[0] and e[0].receiver == punch.route[1]]
            for item in early:
                self._early.remove(item)
                probe, source, at = item
                if now - at <= EARLY_PROBE_AGE:
                    self._feed(punch, probe, source, now)
        self.handle_timer(now)

    def stop(self, peer_id: PeerId, now: float, *, failed: bool = False) -> None:
        """The connect ended: stop punching (live candidate connections are the rendezvous's to close).

        With ``failed``, every punch not yet judged gets its reason in the record first.
        """
        session = self._sessions.pop(peer_id, None)
        if session is None or not failed:
            return
        failures = session.record.failures
        if session.udp is not None and not session.udp.done:
            session.udp.handle_timer(max(now, session.started + session.udp.timeout))  # its deadline: fail it
            self._drain(session, now)
        waited = now - session.started
        for target in session.tcp:
            failures.setdefault(f"tcp-punch {target.endpoint}", f"{target.last_error} (after {waited:.1f} s)")

    # -- time and datagrams ---------------------------------------------------------------

    def next_timer(self) -> float:
        """The earliest re-dial or probe round (``NEVER`` if none)."""
        soonest = NEVER
        for session in self._sessions.values():
            for target in session.tcp:
                if target.conn is None and target.times:
                    soonest = min(soonest, target.times[0])
            if session.udp is not None:
                due = session.udp.get_timer()
                if due is not None:
                    soonest = min(soonest, due)
        return soonest

    def handle_timer(self, now: float) -> None:
        """Dial what came due; run every UDP punch."""
        for session in list(self._sessions.values()):
            for target in session.tcp:
                if target.conn is None and target.times and target.times[0] <= now:
                    self._dial(session, target, now)
            if session.udp is not None:
                session.udp.handle_timer(now)
                self._drain(session, now)

    def receive_probe(self, probe: PunchProbe, source: Endpoint, now: float) -> None:
        """A hole-punch probe arrived on our rUDP socket."""
        for session in self._sessions.values():
            punch = session.udp
            if punch is not None and punch.route == (probe.sender, probe.receiver):
                self._feed(punch, probe, source, now)
                self._drain(session, now)
                return
        self._early.append((probe, source, now))  # perhaps for a connect() of ours about to start

    @staticmethod
    def _feed(punch: UdpPunch, probe: PunchProbe, source: Endpoint, now: float) -> None:
        try:
            punch.receive_probe(probe, source, now)
        except RemoteProtocolError:
            pass  # malformed: counted by the machine

    def _drain(self, session: _Session, now: float) -> None:
        punch = session.udp
        assert punch is not None
        core = self._core
        for data, endpoint in punch.datagrams_to_send(now):
            core.effects.append(SendDatagram(data, endpoint))
        for event in punch.take_events():
            record = session.record
            if isinstance(event, PunchFailed):
                record.failures["udp-punch"] = event.reason.removeprefix("udp-punch: ")
            elif isinstance(event, Punched) and punch.controlling:
                # The hole is open both ways: the greater PeerId opens rUDP through it.
                conn = core.dial(Role.INITIATOR, event.endpoint, record.peer_id, now)
                conn.connect_for, conn.via = record.peer_id, "udp-punch"
                record.dials.add(conn.id)

    # -- TCP ---------------------------------------------------------------------------------

    def _dial(self, session: _Session, target: _TcpTarget, now: float) -> None:
        core, record = self._core, session.record
        del target.times[0]
        while target.times and target.times[0] <= now:
            del target.times[0]  # missed while an attempt was pending: the kernel retried for us
        role = Role.INITIATOR if core.id > record.peer_id else Role.RESPONDER
        conn = core.dial(role, target.endpoint, record.peer_id, now, local_port=self.tcp_port)
        conn.connect_for, conn.via = record.peer_id, "tcp-punch"
        conn.deadline = record.deadline
        record.dials.add(conn.id)
        target.conn = conn

    def _on_conn_failed(self, conn: Conn, reason: str, established: bool) -> None:
        if conn.via != "tcp-punch" or conn.connect_for is None:
            return
        session = self._sessions.get(conn.connect_for)
        if session is None:
            return
        for target in session.tcp:
            if target.conn is conn:
                target.conn = None
                target.last_error = reason
                if not target.times:  # no re-dial left: this is the candidate's failure
                    waited = self._core.now - session.started
                    session.record.failures[f"tcp-punch {target.endpoint}"] = f"{reason} (after {waited:.1f} s)"
                return
