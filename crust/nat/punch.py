"""UDP hole punching on crust's one UDP socket (:class:`UdpPunch`), and TCP re-dial times.

Theory of operation
-------------------
Both sides of a ``connect()`` run a :class:`UdpPunch` at about the same time,
each with the other's UDP candidates (its rUDP socket's observed external
mapping and local addresses, from the swapped connection info) and the punch
key both derive from the two connect tokens.  Each side sends authenticated
:class:`~crust.nat.probe.PunchProbe` datagrams to every candidate: outgoing
probes open our NAT's mapping and filter towards the other side, so once both
have sent, probes get through (the pairs that can: TESTLAB.md's matrix).

*Probes.*  Every probe carries a fresh ``counter``; we remember which
destination each counter went to.  A probe's ``ack`` is the newest counter we
heard *from the address it is sent to* (0: nothing yet, the "heard you" flag
unset).  A probe that verifies and arrives from address S with an ack we sent
*to S* proves a working path both ways through S.  Binding the ack to the
address is what stops a replayed probe from proving a path to where it was
replayed from (see :mod:`crust.nat.probe`).

*Learning addresses.*  A probe that verifies but comes from an address that
is no candidate is the other side behind a NAT that gave it a new mapping
for us (a symmetric NAT: the address our observers saw is not the one we
meet).  Such addresses join the targets ("peer-reflexive", as in ICE), up to
``max_learned``: that is how full-cone and restricted NATs punch through to
symmetric ones.

*Agreeing on one path.*  The side with the greater PeerId *controls* (as in
PROTOCOL.md §7).  It reports :class:`Punched` for the first address S that
proves a path, then sends a short *tail* of ``tail`` probes to S with the
*nominate* flag, ``tail_interval`` apart, and answers any later probe from S
with another nomination while it is fed.  The controlled side reports
:class:`Punched` only for the address a nominating probe with a valid ack
came from.  So both sides settle on the same pair of addresses, the one the
rUDP simultaneous open that follows must use.

*Answering.*  A probe from S that shows S has not heard us yet (the
controlled side: any probe before the nomination) is answered at once, not at
the next round, so the punch completes within a round trip once both sides
run; answers to one address are at least ``reply_gap`` apart, and a replaying
attacker can make us send no more than one probe per probe it sends.

*Schedule.*  Rounds to every target at ``start``, then after
``first_interval`` growing by ``backoff`` up to ``max_interval`` (0, 0.1,
0.25, 0.48, 0.81, 1.3, 2.1 s, ... by default), until ``start + timeout``:
then :class:`PunchFailed` with the reason.  Every datagram counts against
``max_datagrams``, so the whole punch sends a bounded number of probes.

Driving it (the caller does I/O): :meth:`UdpPunch.start`, then feed each
probe addressed to :attr:`UdpPunch.route` to :meth:`~UdpPunch.receive_probe`,
call :meth:`~UdpPunch.handle_timer` at :meth:`~UdpPunch.get_timer`, and after
every call send :meth:`~UdpPunch.datagrams_to_send` and drain
:meth:`~UdpPunch.take_events`.  Keep feeding a punched controlling machine
until the rUDP connection is up (it answers late probes with nominations).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterable, Union

from ..crypto.mac import short_id
from ..errors import LocalProtocolError, RemoteProtocolError
from ..ids import Endpoint, PeerId
from .observe import canonical_endpoint
from .probe import PunchProbe, decode, encode

__all__ = ["Punched", "PunchFailed", "PunchEvent", "UdpPunch", "retry_schedule"]


@dataclass(frozen=True, slots=True)
class Punched:
    """Probes cross both ways with ``endpoint``: open the rUDP connection to it now."""

    endpoint: Endpoint


@dataclass(frozen=True, slots=True)
class PunchFailed:
    """The punch ran out of time; ``reason`` says how far it got."""

    reason: str


PunchEvent = Union[Punched, PunchFailed]


class _State(enum.Enum):
    IDLE = "idle"
    PUNCHING = "punching"
    PUNCHED = "punched"
    FAILED = "failed"


class UdpPunch:
    """One side of one UDP hole punch (see the module docstring).

    Attributes:
        route: ``(sender, receiver)`` short ids of the probes meant for this
            machine: the caller's key for demultiplexing probes.
        controlling: True on the side with the greater PeerId.
        endpoint: the punched address, once :class:`Punched` was reported.
        malformed: datagrams that did not decode.
        rejected: probes for our route whose MAC did not verify.
        ignored: probes before :meth:`start`, after the end, for another
            route, or from one address too many.
    """

    def __init__(
        self,
        key: bytes,
        ours: PeerId,
        theirs: PeerId,
        candidates: Iterable[Endpoint],
        *,
        timeout: float = 8.0,
        max_candidates: int = 8,
        max_learned: int = 4,
        first_interval: float = 0.1,
        backoff: float = 1.5,
        max_interval: float = 1.0,
        tail: int = 4,
        tail_interval: float = 0.1,
        reply_gap: float = 0.05,
        max_datagrams: int = 300,
    ) -> None:
        """Prepare a punch; nothing is sent before :meth:`start`.

        Args:
            key: the punch key, :func:`crust.crypto.mac.punch_key` of both connect tokens.
            ours: our PeerId.
            theirs: the other side's PeerId.
            candidates: the other side's UDP endpoints, best first (external
                mappings before local addresses); duplicates are dropped and
                only the first ``max_candidates`` kept.
            timeout: seconds from :meth:`start` to give up.
            max_candidates: candidates kept.
            max_learned: addresses not among the candidates that may join the
                targets when an authentic probe comes from them.
            first_interval, backoff, max_interval: the round schedule.
            tail: nominating probes the controlling side sends once punched.
            tail_interval: seconds between them.
            reply_gap: minimum seconds between immediate answers to one address.
            max_datagrams: probes this punch may send in all.

        Raises:
            TypeError: a PeerId or candidate of the wrong type.
            ValueError: a candidate that is not a UDP IP-literal endpoint with a
                port, ``ours == theirs``, or a setting out of range.
        """
        if not isinstance(ours, PeerId) or not isinstance(theirs, PeerId):
            raise TypeError("ours and theirs must be PeerIds")
        if ours == theirs:
            raise ValueError("cannot punch a hole to ourselves")
        if not (timeout > 0 and first_interval > 0 and backoff >= 1 and max_interval >= first_interval
                and tail_interval > 0 and reply_gap >= 0):
            raise ValueError("timeout and intervals must be positive, backoff >= 1, max_interval >= first_interval")
        if min(max_candidates, max_learned, tail, max_datagrams) < 0:
            raise ValueError("counts must not be negative")
        self._key = key
        self._ours = short_id(key, ours)
        self._theirs = short_id(key, theirs)
        self.route = (self._theirs, self._ours)
        self.controlling = ours > theirs
        self._targets: list[Endpoint] = []
        for candidate in candidates:
            if not isinstance(candidate, Endpoint):
                raise TypeError(f"candidates must be Endpoints, not {type(candidate).__name__}")
            endpoint = canonical_endpoint(candidate, "udp")
            if candidate.transport != "udp" or endpoint is None:
                raise ValueError(f"candidate {candidate} is not a UDP IP-literal endpoint with a port")
            if endpoint not in self._targets and len(self._targets) < max_candidates:
                self._targets.append(endpoint)
        self._n_candidates = len(self._targets)
        self._max_learned = max_learned
        self.timeout = timeout
        self._first_interval, self._backoff, self._max_interval = first_interval, backoff, max_interval
        self._tail, self._tail_interval = tail, tail_interval
        self._reply_gap = reply_gap
        self._budget = max_datagrams

        self._state = _State.IDLE
        self.endpoint: Endpoint | None = None
        self._deadline = 0.0
        self._next_round: float | None = None
        self._interval = first_interval
        self._tail_left = 0
        self._next_tail: float | None = None
        self._counter = 0
        self._sent_to: dict[int, Endpoint] = {}  # our counter -> where that probe went
        self._heard: dict[Endpoint, int] = {}  # address -> newest counter heard from it
        self._proven: list[Endpoint] = []  # addresses whose probes acked one we sent them
        self._last_answer: dict[Endpoint, float] = {}
        self._pending: dict[Endpoint, None] = {}  # destinations of the next datagrams_to_send, in order
        self._events: list[PunchEvent] = []
        self.malformed = self.rejected = self.ignored = 0

    # -- inputs ---------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin: the first round goes out with the next :meth:`datagrams_to_send`.

        Raises:
            LocalProtocolError: already started.
        """
        if self._state is not _State.IDLE:
            raise LocalProtocolError("UdpPunch.start() called twice")
        self._state = _State.PUNCHING
        self._deadline = now + self.timeout
        self._next_round = now

    def receive_probe(self, probe: bytes | PunchProbe, source: Endpoint, now: float) -> bool:
        """Handle a datagram (or a decoded probe) that arrived from ``source``.

        Returns:
            True if it was an authentic probe of this punch; False if it was
            counted and dropped (malformed, forged, for another punch, too late).

        Raises:
            TypeError: ``source`` is not an Endpoint.
        """
        if not isinstance(source, Endpoint):
            raise TypeError(f"source must be an Endpoint, not {type(source).__name__}")
        self.handle_timer(now)  # a probe that arrives after the deadline does not save the punch
        accepted = self._accept(probe, source)
        if accepted is None:
            return False
        message, addr = accepted
        self._heard[addr] = max(self._heard.get(addr, 0), message.counter)
        proven = message.ack != 0 and self._sent_to.get(message.ack) == addr
        if proven and addr not in self._proven:
            self._proven.append(addr)
        if self._state is _State.PUNCHED:
            if self.controlling and addr == self.endpoint:
                self._answer(addr, now)  # the controlled side has not seen a nomination yet
            return True  # the controlled side is done: answering would only start a ping-pong
        if proven and (self.controlling or message.nominate):
            self._punched(addr, now)
        elif not self.controlling or not proven:
            self._answer(addr, now)
        return True

    def handle_timer(self, now: float) -> None:
        """Act on every deadline that has passed (early calls are harmless)."""
        if self._state is _State.PUNCHING:
            if now >= self._deadline:
                self._fail()
                return
            if self._next_round is not None and now >= self._next_round:
                for target in self._targets:
                    self._pending[target] = None
                self._next_round = now + self._interval
                self._interval = min(self._interval * self._backoff, self._max_interval)
                if self._next_round >= self._deadline:
                    self._next_round = None
        elif self._state is _State.PUNCHED and self._next_tail is not None and now >= self._next_tail:
            assert self.endpoint is not None
            self._pending[self.endpoint] = None
            self._tail_left -= 1
            self._next_tail = now + self._tail_interval if self._tail_left > 0 else None

    # -- outputs --------------------------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Endpoint]]:
        """The probes to send now, each with its destination (runs due timers first)."""
        self.handle_timer(now)
        out: list[tuple[bytes, Endpoint]] = []
        for target in self._pending:
            if self._budget <= 0:
                break
            self._budget -= 1
            self._counter += 1
            self._sent_to[self._counter] = target
            nominate = self._state is _State.PUNCHED and self.controlling and target == self.endpoint
            probe = PunchProbe.sign(self._key, self._ours, self._theirs, self._counter,
                                    self._heard.get(target, 0), nominate)
            out.append((encode(probe), target))
        self._pending.clear()
        return out

    def get_timer(self) -> float | None:
        """The absolute time of the next deadline, or None."""
        if self._state is _State.PUNCHING:
            return self._deadline if self._next_round is None else min(self._next_round, self._deadline)
        if self._state is _State.PUNCHED:
            return self._next_tail
        return None

    def take_events(self) -> list[PunchEvent]:
        """Every event since the last call, in order (at most one :class:`Punched` or :class:`PunchFailed`)."""
        events, self._events = self._events, []
        return events

    @property
    def done(self) -> bool:
        """True once the punch has succeeded or failed."""
        return self._state is _State.PUNCHED or self._state is _State.FAILED

    # -- internals ------------------------------------------------------------------------------

    def _accept(self, probe: bytes | PunchProbe, source: Endpoint) -> tuple[PunchProbe, Endpoint] | None:
        """The probe and canonical ``source`` if it is an authentic probe we take from there; else count it."""
        if not isinstance(probe, PunchProbe):
            try:
                decoded = decode(probe)
            except RemoteProtocolError:
                self.malformed += 1
                return None
            if not isinstance(decoded, PunchProbe):
                self.ignored += 1
                return None
            probe = decoded
        if (probe.sender, probe.receiver) != self.route or self._state in (_State.IDLE, _State.FAILED):
            self.ignored += 1
            return None
        if not probe.verify(self._key):
            self.rejected += 1
            return None
        addr = canonical_endpoint(source, "udp")
        if addr is not None and addr not in self._targets:
            if self._state is _State.PUNCHED or len(self._targets) >= self._n_candidates + self._max_learned:
                addr = None
            else:
                self._targets.append(addr)  # peer-reflexive: the other side's NAT mapping towards us
        if addr is None:
            self.ignored += 1
            return None
        return probe, addr

    def _answer(self, addr: Endpoint, now: float) -> None:
        last = self._last_answer.get(addr)
        if last is None or now - last >= self._reply_gap:
            self._last_answer[addr] = now
            self._pending[addr] = None

    def _punched(self, addr: Endpoint, now: float) -> None:
        self._state = _State.PUNCHED
        self.endpoint = addr
        self._events.append(Punched(addr))
        self._pending.clear()  # the other targets need no more probes
        if self.controlling and self._tail > 0:
            self._tail_left = self._tail
            self._next_tail = now
            self.handle_timer(now)

    def _fail(self) -> None:
        self._state = _State.FAILED
        self._pending.clear()
        timeout = f"{self.timeout:g} s"
        if not self._heard:
            n = self._n_candidates
            reason = f"udp-punch: no answer from {n} candidate{'' if n == 1 else 's'} in {timeout}"
        elif not self._proven:
            heard = ", ".join(map(str, self._heard))
            reason = f"udp-punch: heard the peer from {heard} but it never heard us in {timeout}"
        else:
            reason = f"udp-punch: {self._proven[0]} heard us but never nominated a path in {timeout}"
        self._events.append(PunchFailed(reason))


def retry_schedule(start: float, deadline: float, *, first_gap: float = 0.5, backoff: float = 2.0,
                   max_gap: float = 4.0) -> list[float]:
    """When to (re)dial a TCP simultaneous open from our punch port: ``start``, then with backoff.

    The kernel retransmits the SYNs of a pending ``connect()`` itself, so
    while an attempt is pending nothing should be re-dialled.  An attempt can
    however end *early*: the other host (no NAT, or a NAT that rejects rather
    than drops) answers our SYN with a RST while its punch socket is not yet
    bound (the sides start up to 1.5 s apart), or the 4-tuple is briefly
    unavailable after a failed attempt.  Only then does the caller dial again,
    at the next time from this list that has not passed; no time is at or
    after ``deadline``.

    Args:
        start: when the connect starts.
        deadline: when it gives up.
        first_gap: seconds from ``start`` to the second dial; each later gap
            is ``backoff`` times the one before, at most ``max_gap``.

    Returns:
        Increasing dial times (``[start, start + 0.5, start + 1.5, start + 3.5, ...]``
        by default); empty if ``deadline <= start``.

    Raises:
        ValueError: ``first_gap <= 0``, ``backoff < 1`` or ``max_gap < first_gap``.
    """
    if not (first_gap > 0 and backoff >= 1 and max_gap >= first_gap):
        raise ValueError("need first_gap > 0, backoff >= 1 and max_gap >= first_gap")
    times: list[float] = []
    when, gap = start, first_gap
    while when < deadline:
        times.append(when)
        when += gap
        gap = min(gap * backoff, max_gap)
    return times
