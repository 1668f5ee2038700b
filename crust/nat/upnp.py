"""UPnP port mapping (PROTOCOL.md §8), sans-IO: what to ask the router, and when.

The IGD client's interface and the actions live in :mod:`crust.nat.igd`
(re-exported here).

Theory of operation
-------------------
A :class:`UpnpMapper` asks an Internet Gateway Device (IGD) to forward our
listener ports to us, with a *lease*, and keeps a list of every mapping it
may hold so that it can delete them all again.  It does no I/O and reads no
clock: it hands out one :data:`Action` at a time for a blocking IGD client
(an :class:`Igd`) to carry out, and takes the outcome back with ``now``::

    mapper.start(listeners)
    while (action := mapper.next_action(now)) is not None:   # at most one in flight
        try:
            mapper.action_done(action.perform(igd), now)
        except IgdError as err:
            mapper.action_failed(err, now)
    ...and again once ``now`` reaches mapper.get_timer()

States (:class:`MapperState`) and who moves them:

* ``IDLE`` → ``start()`` → ``DISCOVERING``: one :class:`Discover` (SSDP).  No
  IGD is a normal outcome: ``FAILED`` with "no IGD found", and nothing more
  happens (no timer, no second discovery) until ``start()`` or ``refresh()``.
  Nothing to map (only loopback, IPv6 or public-address listeners: a public
  address needs no router) is ``FAILED`` at once, without a packet.
* ``DISCOVERING`` → ``READING_IP``: :class:`ReadExternalIp`; no usable
  address → ``FAILED`` with "no external IP".
* ``READING_IP`` → ``ACTIVE``: one :class:`AddMapping` per listener port
  (``tcp`` and ``udp``), each asking for ``lease`` seconds.  A conflict (the
  external port is forwarded to another host, UPnP error 718) tries another
  external port: our own port first, then random ones drawn from ``rng``, at
  most ``max_port_tries`` in all.  Any other refusal ends that mapping
  ("IGD refused: <text>").  A held mapping is renewed (the same AddMapping)
  at half its lease; a failed renewal is retried every ``RENEW_RETRY``
  seconds until the lease runs out, when the mapping is *lost*.  A conflict on
  renewal means another host took the port: the mapping searches afresh.
* any state → ``stop()`` → ``STOPPING``: one :class:`DeleteMapping` per entry
  of the cleanup list, then ``STOPPED``.  An action still in flight when
  ``stop()`` comes is awaited: an AddMapping that then succeeds is deleted too.
* ``start()`` while mappings are held stops first and starts again once the
  cleanup is done (``refresh()`` is ``start()`` with the same listeners).

Invariants: at most one action is in flight; ``get_timer()`` is ``None``
while one is (its outcome is the next input, so a driver cannot spin on a
past deadline); the cleanup list holds every ``(transport, external port)``
the IGD accepted from us and we have not deleted — a renewal that failed,
even with a conflict, keeps its entry, since the router may still hold it.
That is safe because a delete names the internal host and port, and the IGD
client removes only a mapping that still forwards there: we never delete a
port another host holds.  A crash leaves only leased mappings, which the
router drops when the lease ends.

Outputs: :attr:`UpnpMapper.endpoints` (our external endpoints, transport
``"tcp"``/``"udp"``), :attr:`UpnpMapper.status` (lines describing the present
state, for the user), :attr:`UpnpMapper.settling` (a first attempt is still
under way: what a bootstrapping Node waits out) and
:meth:`UpnpMapper.next_report` (one-off lines worth a log entry: a mapping
made, failed, lost or removed; no IGD found).
"""

from __future__ import annotations

import enum
import ipaddress
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

from ..config import MAX_UPNP_LEASE
from ..errors import LocalProtocolError
from ..ids import Endpoint, PeerId
from .igd import (Action, AddMapping, DeleteMapping, Discover, Igd, IgdError, IgdNotFound, IgdRefused,
                  MappingConflict, ReadExternalIp)

__all__ = [
    "LEASE", "MAX_LEASE", "MAX_PORT_TRIES", "RENEW_RETRY",
    "IgdError", "IgdNotFound", "IgdRefused", "MappingConflict", "Igd",
    "Discover", "ReadExternalIp", "AddMapping", "DeleteMapping", "Action",
    "MapperState", "UpnpMapper",
]

LEASE = 3600  # seconds asked for each mapping; renewed at half of it
MAX_LEASE = MAX_UPNP_LEASE  # seconds; IGD v2 (WANIPConnection:2 §2.3.16) caps a lease at one week
MAX_PORT_TRIES = 4  # external ports tried per mapping: our own, then three random ones
RENEW_RETRY = 60.0  # seconds between renewal attempts once one failed
# Alternative external ports come from the unprivileged range (miniupnpd's
# stock config allows only 1024-65535).
_ALT_PORT_LOW, _ALT_PORT_HIGH = 1024, 65535
_MAX_DRAWS = 32  # random draws per alternative port before giving up on finding an untried one


# -- states ----------------------------------------------------------------------------

class MapperState(enum.Enum):
    """What the mapper is doing (named for what it awaits, except the terminal ones)."""

    IDLE = "idle"
    DISCOVERING = "discovering"
    READING_IP = "reading_ip"
    ACTIVE = "active"
    FAILED = "failed"
    STOPPING = "stopping"
    STOPPED = "stopped"


class _Input(enum.Enum):
    START = "start"
    FOUND = "found"
    NOT_FOUND = "not_found"
    GOT_IP = "got_ip"
    NO_IP = "no_ip"
    STOP = "stop"
    CLEANED = "cleaned"


_S, _I = MapperState, _Input
_RESTING = (_S.IDLE, _S.FAILED, _S.STOPPED)  # nothing held, nothing in flight (bar a stale result)
_BUSY = (_S.DISCOVERING, _S.READING_IP, _S.ACTIVE)
_TRANSITIONS: dict[tuple[MapperState, _Input], MapperState] = {
    **{(s, _I.START): _S.DISCOVERING for s in _RESTING},
    **{(s, _I.STOP): _S.STOPPED for s in _RESTING},
    **{(s, _I.START): _S.STOPPING for s in _BUSY},  # clean up first, then start again
    **{(s, _I.STOP): _S.STOPPING for s in _BUSY},
    (_S.STOPPING, _I.START): _S.STOPPING,
    (_S.STOPPING, _I.STOP): _S.STOPPING,
    (_S.STOPPING, _I.CLEANED): _S.STOPPED,
    (_S.DISCOVERING, _I.FOUND): _S.READING_IP,
    (_S.DISCOVERING, _I.NOT_FOUND): _S.FAILED,
    (_S.READING_IP, _I.GOT_IP): _S.ACTIVE,
    (_S.READING_IP, _I.NO_IP): _S.FAILED,
}


def _transition(state: MapperState, event: _Input) -> MapperState:
    try:
        return _TRANSITIONS[state, event]
    except KeyError:
        raise LocalProtocolError(f"UpnpMapper: {event.value} is not allowed in state {state.value}") from None


@dataclass(slots=True)
class _Mapping:
    """One listener port and what the IGD holds for it."""

    transport: str
    internal_host: str  # "" until discovery says which LAN address the IGD sees
    internal_port: int
    tried: list[int] = field(default_factory=list)  # external ports asked for in this search
    external_port: int | None = None  # the port the IGD holds for us (None: not mapped)
    due: float | None = -math.inf  # when to send the next AddMapping; None: nothing to send
    expires_at: float = math.inf  # end of the held lease
    failure: str | None = None  # why it is not (or no longer) mapped

    @property
    def local(self) -> str:
        host = self.internal_host or "?"
        return f"{self.transport} {host}:{self.internal_port}"


def _reason(err: IgdError) -> str:
    if isinstance(err, IgdNotFound):
        return "no IGD found"
    if isinstance(err, IgdRefused):
        return f"IGD refused: {err}"
    return f"IGD client failed: {err}"


def _usable_ipv4(text: object, *, allow_unspecified: bool = False) -> str | None:
    """``text`` as a canonical IPv4 address, or None when it is not one we can use."""
    if not isinstance(text, str):
        return None
    try:
        addr = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if addr.version != 4 or addr.is_loopback or (addr.is_unspecified and not allow_unspecified):
        return None
    return str(addr)


class UpnpMapper:
    """The lease machine for one Service's listener ports (see the module's theory of operation)."""

    def __init__(self, peer_id: PeerId, *, lease: int = LEASE, max_port_tries: int = MAX_PORT_TRIES,
                 rng: random.Random | None = None) -> None:
        """Make an idle mapper.

        Args:
            peer_id: ours; its short form names our mappings ("crust 1a2b3c4d tcp").
            lease: seconds each mapping is asked for (1..604800); renewed at half of it.
            max_port_tries: external ports tried per mapping before giving up (1..16).
            rng: draws alternative external ports; default: seeded from ``peer_id``, so
                runs are reproducible and two peers on one LAN draw different ports.

        Raises:
            TypeError, ValueError: an argument is of the wrong type or out of range.
        """
        if not isinstance(peer_id, PeerId):
            raise TypeError(f"peer_id must be a PeerId, not {type(peer_id).__name__}")
        if isinstance(lease, bool) or not isinstance(lease, int):
            raise TypeError(f"lease must be an int (seconds), not {type(lease).__name__}")
        if not 1 <= lease <= MAX_LEASE:
            # 0 would ask for a permanent mapping, which outlives a crash: never.
            raise ValueError(f"lease must be 1..{MAX_LEASE} seconds, not {lease}")
        if isinstance(max_port_tries, bool) or not isinstance(max_port_tries, int) or not 1 <= max_port_tries <= 16:
            raise ValueError(f"max_port_tries must be an int in 1..16, not {max_port_tries!r}")
        if rng is not None and not isinstance(rng, random.Random):
            raise TypeError(f"rng must be a random.Random, not {type(rng).__name__}")
        self._label = bytes(peer_id)[:4].hex()
        self._lease = lease
        self._max_tries = max_port_tries
        self._rng = rng if rng is not None else random.Random(bytes(peer_id))
        self._state = MapperState.IDLE
        self._wanted: list[tuple[str, str, int]] = []  # (transport, host or "", port) of the last start()
        self._public = False  # the last start() skipped a listener on a public (global) address
        self._restart: list[tuple[str, str, int]] | None = None  # start() waiting for the cleanup
        self._mappings: list[_Mapping] = []
        # (transport, external port) -> (internal host, port) it forwards to, oldest first
        self._cleanup: dict[tuple[str, int], tuple[str, int]] = {}
        self._inflight: tuple[Action, _Mapping | None] | None = None
        self._lan_ip = ""
        self._external_ip = ""
        self._failure: str | None = None
        self._reports: deque[str] = deque()

    def __repr__(self) -> str:
        return f"<UpnpMapper {self._label} {self._state.value} mappings={len(self._cleanup)}>"

    # -- commands --------------------------------------------------------------------

    def start(self, listeners: Iterable[Endpoint]) -> None:
        """Map these listener endpoints' ports (private IPv4 only: loopback, IPv6 and public ones are skipped).

        An unspecified host (``0.0.0.0``) is mapped from the LAN address the IGD
        sees.  A listener on a public (global) address needs no router's help:
        with only those, the mapper fails at once with "not needed", sending
        nothing.  Mappings of an earlier start are deleted first.

        Raises:
            TypeError: a listener is not an Endpoint.
        """
        wanted: list[tuple[str, str, int]] = []
        public = False
        for ep in listeners:
            if not isinstance(ep, Endpoint):
                raise TypeError(f"listeners must be Endpoints, not {type(ep).__name__}")
            host = _usable_ipv4(ep.host, allow_unspecified=True)
            if host is not None and ipaddress.ip_address(host).is_global:
                public = True  # the internet reaches it without a router's help
                continue
            if host is None or ep.port == 0:
                continue  # IPv6, loopback or a name: no IGD maps those for us
            entry = (ep.transport, "" if host == "0.0.0.0" else host, ep.port)
            if entry not in wanted:
                wanted.append(entry)
        self._start(wanted, public)

    def _start(self, wanted: list[tuple[str, str, int]], public: bool) -> None:
        self._wanted = wanted
        self._public = public
        self._state = _transition(self._state, _Input.START)
        if self._state is MapperState.STOPPING:
            self._restart = wanted
            self._finish_stop_if_clean()
        else:
            self._begin(wanted)

    def refresh(self) -> None:
        """Discover the IGD again and redo every mapping (e.g. after a network change).

        Raises:
            LocalProtocolError: :meth:`start` was never called.
        """
        if self._state is MapperState.IDLE:
            raise LocalProtocolError("UpnpMapper.refresh() before start()")
        self._start(self._wanted, self._public)

    def stop(self) -> None:
        """Delete every mapping we made, then rest in ``STOPPED``.  Idempotent."""
        self._restart = None
        self._state = _transition(self._state, _Input.STOP)
        self._finish_stop_if_clean()

    # -- the IGD client's side -------------------------------------------------------------

    def next_action(self, now: float) -> Action | None:
        """The next action for the IGD client, or None (one is in flight, or nothing is due).

        Also retires leases that ran out by ``now``.  The caller must report the
        outcome with :meth:`action_done` or :meth:`action_failed`.
        """
        if self._inflight is not None:
            return None
        action: Action | None = None
        mapping: _Mapping | None = None
        if self._state is MapperState.DISCOVERING:
            action = Discover()
        elif self._state is MapperState.READING_IP:
            action = ReadExternalIp()
        elif self._state is MapperState.ACTIVE:
            self._expire(now)
            mapping = next((m for m in self._mappings if m.due is not None and m.due <= now), None)
            if mapping is not None:
                action = self._add_action(mapping)
        elif self._state is MapperState.STOPPING and self._cleanup:
            (transport, port), (host, internal_port) = next(iter(self._cleanup.items()))
            action = DeleteMapping(transport, port, host, internal_port)
        if action is not None:
            self._inflight = (action, mapping)
        return action

    def action_done(self, result: str | None, now: float) -> None:
        """The in-flight action succeeded; ``result`` is what its ``perform()`` returned.

        Raises:
            LocalProtocolError: no action is in flight.
        """
        action, mapping = self._take_inflight()
        if isinstance(action, Discover):
            if self._state is MapperState.DISCOVERING:
                self._lan_ip = _usable_ipv4(result) or ""
                self._state = _transition(self._state, _Input.FOUND)
        elif isinstance(action, ReadExternalIp):
            if self._state is MapperState.READING_IP:
                ip = _usable_ipv4(result)
                if ip is None:
                    self._fail("no external IP", _Input.NO_IP)
                else:
                    self._external_ip = ip
                    self._activate()
        elif isinstance(action, AddMapping):
            self._cleanup[action.transport, action.external_port] = (action.internal_host, action.internal_port)
            if mapping is not None and self._state is MapperState.ACTIVE:
                self._mapped(mapping, action, now)
        else:
            del self._cleanup[action.transport, action.external_port]
            self._reports.append(f"upnp: removed {action.transport} {self._external_ip}:{action.external_port}")
        self._finish_stop_if_clean()

    def action_failed(self, error: IgdError, now: float) -> None:
        """The in-flight action failed with ``error``.

        Raises:
            TypeError: ``error`` is not an IgdError.
            LocalProtocolError: no action is in flight.
        """
        if not isinstance(error, IgdError):
            raise TypeError(f"error must be an IgdError, not {type(error).__name__}")
        action, mapping = self._take_inflight()
        if isinstance(action, Discover):
            if self._state is MapperState.DISCOVERING:
                self._fail("no IGD found", _Input.NOT_FOUND)
        elif isinstance(action, ReadExternalIp):
            if self._state is MapperState.READING_IP:
                self._fail(f"no external IP ({_reason(error)})", _Input.NO_IP)
        elif isinstance(action, AddMapping):
            if mapping is not None and self._state is MapperState.ACTIVE:
                self._add_failed(mapping, action, error, now)
        else:
            # One attempt only: the lease removes what the router still holds.
            del self._cleanup[action.transport, action.external_port]
            self._reports.append(f"upnp: could not remove {action.transport} {self._external_ip}:"
                                 f"{action.external_port} ({_reason(error)}); it lapses with its lease")
        self._finish_stop_if_clean()

    def get_timer(self) -> float | None:
        """When :meth:`next_action` next has something to do; None while an action is in flight or nothing is timed."""
        if self._inflight is not None or self._state is not MapperState.ACTIVE:
            return None
        times = [m.due for m in self._mappings if m.due is not None]
        times += [m.expires_at for m in self._mappings if m.external_port is not None]
        return min(times, default=None)

    # -- outputs ----------------------------------------------------------------------------

    @property
    def state(self) -> MapperState:
        """The machine's state."""
        return self._state

    @property
    def failure(self) -> str | None:
        """Why the mapper is ``FAILED`` ("no IGD found", "no external IP", "nothing to map", "not needed"), else None."""
        return self._failure if self._state is MapperState.FAILED else None

    @property
    def settling(self) -> bool:
        """True while a start's first attempt is under way: finding the IGD, or a port neither mapped nor refused yet.

        What a bootstrapping Node waits for, so that it announces the mapping
        the responder's reachability check needs (PROTOCOL.md §6.3).
        """
        state = self._state
        if state is MapperState.STOPPING:
            return self._restart is not None
        if state is MapperState.ACTIVE:
            return any(m.external_port is None and m.failure is None for m in self._mappings)
        return state in (MapperState.DISCOVERING, MapperState.READING_IP)

    @property
    def busy(self) -> bool:
        """True while an action is in flight."""
        return self._inflight is not None

    @property
    def cleanup(self) -> tuple[tuple[str, int], ...]:
        """Every ``(transport, external port)`` the IGD may hold for us, oldest first."""
        return tuple(self._cleanup)

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """Our mapped external endpoints (only while ``ACTIVE``)."""
        if self._state is not MapperState.ACTIVE:
            return ()
        return tuple(Endpoint(self._external_ip, m.external_port, m.transport)
                     for m in self._mappings if m.external_port is not None)

    @property
    def status(self) -> tuple[str, ...]:
        """Lines describing the present state, e.g. ``"upnp: no IGD found"``."""
        state = self._state
        if state is MapperState.DISCOVERING:
            return ("upnp: looking for an IGD",)
        if state is MapperState.READING_IP:
            return ("upnp: IGD found, asking for its external IP",)
        if state is MapperState.FAILED:
            return (f"upnp: {self._failure}",)
        if state is MapperState.STOPPING:
            return (f"upnp: removing {len(self._cleanup)} mapping(s)",)
        if state is MapperState.STOPPED:
            return ("upnp: stopped",)
        if state is MapperState.ACTIVE:
            return tuple(self._line(m) for m in self._mappings)
        return ()

    def next_report(self) -> str | None:
        """The next one-off line worth logging (mapped, not mapped, lost, removed, no IGD), or None."""
        return self._reports.popleft() if self._reports else None

    # -- internals ----------------------------------------------------------------------------

    def _begin(self, wanted: list[tuple[str, str, int]]) -> None:
        self._mappings = [_Mapping(t, host, port) for t, host, port in wanted]
        self._lan_ip = self._external_ip = ""
        if not self._mappings:
            self._fail("not needed (we listen on a public address)" if self._public
                       else "nothing to map (no IPv4 listener)", _Input.NOT_FOUND)

    def _fail(self, reason: str, event: _Input) -> None:
        self._state = _transition(self._state, event)
        self._failure = reason
        self._reports.append(f"upnp: {reason}")

    def _activate(self) -> None:
        self._state = _transition(self._state, _Input.GOT_IP)
        for m in self._mappings:
            if not m.internal_host:
                m.internal_host = self._lan_ip
            if not m.internal_host:
                m.due, m.failure = None, "the IGD did not say which LAN address it sees"
                self._reports.append(self._line(m))

    def _add_action(self, m: _Mapping) -> AddMapping:
        if m.external_port is not None:
            port = m.external_port  # renewal
        else:
            port = self._candidate(m)
            m.tried.append(port)
        m.due = None  # until the outcome says when next
        return AddMapping(m.transport, port, m.internal_host, m.internal_port,
                          f"crust {self._label} {m.transport}", self._lease)

    def _candidate(self, m: _Mapping) -> int:
        if m.internal_port not in m.tried:
            return m.internal_port
        port = self._rng.randint(_ALT_PORT_LOW, _ALT_PORT_HIGH)
        for _ in range(_MAX_DRAWS):  # 64k ports and a handful tried: the first draw nearly always does
            if port not in m.tried:
                break
            port = self._rng.randint(_ALT_PORT_LOW, _ALT_PORT_HIGH)
        return port

    def _mapped(self, m: _Mapping, action: AddMapping, now: float) -> None:
        first = m.external_port is None
        m.external_port = action.external_port
        m.expires_at = now + self._lease
        m.due = now + self._lease / 2
        m.failure = None
        if first:
            self._reports.append(self._line(m))

    def _add_failed(self, m: _Mapping, action: AddMapping, error: IgdError, now: float) -> None:
        if m.external_port is not None:  # a renewal
            if isinstance(error, MappingConflict):
                self._reports.append(f"upnp: {m.transport} {self._external_ip}:{m.external_port} was taken "
                                     f"by another host; looking for another port")
                m.tried, m.due = [m.external_port], now  # a fresh search, that port excluded
                m.external_port, m.expires_at = None, math.inf
                return
            m.failure = _reason(error)
            retry = now + RENEW_RETRY
            m.due = retry if retry < m.expires_at else None
            self._reports.append(f"upnp: renewing {m.transport} {self._external_ip}:{m.external_port} failed "
                                 f"({m.failure}); " + ("retrying" if m.due is not None else "it lapses soon"))
            return
        if isinstance(error, MappingConflict) and len(m.tried) < self._max_tries:
            m.due = now
            return
        if isinstance(error, MappingConflict):
            m.failure = f"external port(s) {', '.join(map(str, m.tried))} taken by other hosts"
        else:
            m.failure = _reason(error)
        self._reports.append(self._line(m))

    def _expire(self, now: float) -> None:
        for m in self._mappings:
            if m.external_port is not None and m.expires_at <= now:
                m.failure = f"lease ran out ({m.failure or 'not renewed'})"
                m.external_port, m.expires_at, m.due = None, math.inf, None
                self._reports.append(self._line(m))

    def _line(self, m: _Mapping) -> str:
        if m.external_port is not None:
            return (f"upnp: mapped {m.local} -> {self._external_ip}:{m.external_port}, "
                    f"lease {self._lease} s (renewed every {self._lease / 2:g} s)")
        if m.failure is not None:
            return f"upnp: {m.local} not mapped: {m.failure}"
        return f"upnp: mapping {m.local}"

    def _take_inflight(self) -> tuple[Action, _Mapping | None]:
        if self._inflight is None:
            raise LocalProtocolError("UpnpMapper: an outcome arrived but no action is in flight")
        inflight, self._inflight = self._inflight, None
        return inflight

    def _finish_stop_if_clean(self) -> None:
        if self._state is not MapperState.STOPPING or self._inflight is not None or self._cleanup:
            return
        self._state = _transition(self._state, _Input.CLEANED)
        self._mappings = []
        restart, self._restart = self._restart, None
        if restart is not None:
            self._state = _transition(self._state, _Input.START)
            self._begin(restart)
