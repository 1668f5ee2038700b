"""External address discovery by voting (peer STUN), and the public :class:`NatInfo`.

Theory of operation
-------------------
We cannot see our own NAT; our peers can.  Each answer to an echo request
(``EchoAddrResp`` on a TCP connection, :class:`~crust.nat.probe.EchoResponse`
on the rUDP socket) is an *observation*: observer X at IP ``observer_ip``
saw our socket of kind ``"tcp"`` or ``"udp"``, bound locally at ``local``,
arrive from ``observed``.  :class:`NatObserver` keeps the newest observation
per ``(kind, observer IP, local)`` and turns them into a verdict per kind:

* *One vote per observer IP.*  Many PeerIds on one host are one witness, so a
  single machine cannot outvote the rest by making up identities.
* *The group.*  Observations of different local sockets say nothing about
  each other's mappings, so only the local endpoint seen by the most observer
  IPs is judged (ties: the most recently heard).
* *External endpoint*: the ``observed`` endpoint with the most votes (ties:
  the most recently heard).  It is **confirmed** when at least two observer
  IPs agree and they are a strict majority, so with three or more observers a
  single liar cannot plant a false address; one observer's word is still
  used, but unconfirmed, and two that disagree leave it unconfirmed.
* *Mapping behaviour* (RFC 4787 terms): ``NONE`` when the external endpoint
  is our local one (no NAT); ``UNKNOWN`` with fewer than two observer IPs;
  ``ENDPOINT_INDEPENDENT`` when a confirmed majority of observers at
  different IPs see the same endpoint; otherwise ``DEPENDENT`` (they see
  different ports or addresses: an address- or port-dependent, "symmetric",
  NAT, where the mapping the other side of a punch meets is not the one we
  can advertise).
* *Time.*  A vote counts for ``ttl`` seconds (mappings change and NATs
  reboot); ``since`` is when the current external endpoint was first seen by
  the observers that now vote for it.  :meth:`NatObserver.reset` forgets
  everything (the local address set changed: a new network).

*Asking.*  :meth:`NatObserver.pick` chooses whom to ask: observers at IPs
with no vote younger than ``ttl / 2`` and no request in flight, until
``target`` distinct IPs are covered; :meth:`NatObserver.next_check` says
when the next vote needs refreshing, expires, or a request times out.  Memory is bounded:
at most ``max_observers`` votes and as many requests in flight per kind (the
stalest are dropped).

``local`` must be the concrete address the observed socket used (for TCP,
``getsockname()`` of the connection); a wildcard host (``0.0.0.0``) never
equals an observed one, so it could not detect "no NAT".  Everything is
sans-IO: the caller passes ``now`` (seconds on its monotonic clock).
"""

from __future__ import annotations

import bisect
import enum
import ipaddress
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

from ..ids import Endpoint, PeerId

__all__ = ["KINDS", "MappingBehaviour", "TransportNat", "NatInfo", "NatObserver"]

KINDS = ("tcp", "udp")
"""The socket kinds observed: our TCP punch/listener port and our rUDP socket."""


class MappingBehaviour(enum.Enum):
    """How our NAT maps one socket, as far as the observers can tell (RFC 4787 §4.1)."""

    NONE = "none"
    """Observers see our local endpoint: no NAT (or a 1:1 NAT keeping ports)."""
    ENDPOINT_INDEPENDENT = "endpoint-independent"
    """Observers at different IPs see the same external endpoint: it can be advertised."""
    DEPENDENT = "dependent"
    """Observers see different external endpoints: each destination gets its own (symmetric NAT)."""
    UNKNOWN = "unknown"
    """Fewer than two observer IPs have answered."""


@dataclass(frozen=True, slots=True)
class TransportNat:
    """What crust knows of its NAT for one transport's socket.

    Attributes:
        external: our endpoint as observers see it (``None``: nobody answered yet).
        local: the local socket endpoint it maps (``None`` with ``external``).
        mapping: how the NAT maps that socket.
        confirmed: at least two observer IPs, a strict majority, agree on ``external``.
        observers: distinct observer IPs behind this verdict.
        since: when the observers now agreeing first saw ``external`` (the
            Service's monotonic clock, seconds), or ``None``.
    """

    external: Endpoint | None = None
    local: Endpoint | None = None
    mapping: MappingBehaviour = MappingBehaviour.UNKNOWN
    confirmed: bool = False
    observers: int = 0
    since: float | None = None


@dataclass(frozen=True, slots=True)
class NatInfo:
    """What crust knows about the NAT in front of it (``Service.nat_info()``).

    Attributes:
        tcp: our TCP listener/punch port as seen from outside.
        udp: our rUDP socket as seen from outside.
        notes: human-readable status lines (UPnP results and the like), in order.
    """

    tcp: TransportNat = TransportNat()
    udp: TransportNat = TransportNat()
    notes: tuple[str, ...] = ()


@dataclass(slots=True)
class _Vote:
    observer_id: PeerId
    observed: Endpoint
    first: float  # when this observer first saw ``observed`` (kept while it keeps seeing it)
    last: float


def _canonical_ip(text: str) -> str | None:
    """``text`` as a canonical IP (IPv4-mapped IPv6 unwrapped), or None if it is no IP."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


def canonical_endpoint(endpoint: Endpoint, kind: str) -> Endpoint | None:
    """``endpoint`` with a canonical IP host and transport ``kind``; None for a hostname or port 0."""
    host = _canonical_ip(endpoint.host)
    if host is None or endpoint.port == 0:
        return None
    return Endpoint(host, endpoint.port, kind)


def _check_kind(kind: object) -> str:
    if kind not in KINDS:
        raise ValueError(f"socket kind must be one of {KINDS}, not {kind!r}")
    return str(kind)


class NatObserver:
    """Votes on our external endpoints and NAT mapping behaviour (see the module docstring).

    Attributes:
        ignored: observations dropped because an address in them was no IP or had port 0.
    """

    def __init__(self, *, ttl: float = 600.0, target: int = 3, ask_timeout: float = 10.0,
                 max_observers: int = 16) -> None:
        """Create an observer with no votes.

        Args:
            ttl: seconds a vote counts.
            target: distinct observer IPs to keep asking for, per kind (≥ 1;
                3 lets a majority outvote one liar).
            ask_timeout: seconds before an unanswered request no longer blocks
                asking that IP again.
            max_observers: votes (and requests in flight) kept per kind.

        Raises:
            ValueError: a value out of range.
        """
        if not ttl > 0 or not ask_timeout > 0:
            raise ValueError(f"ttl and ask_timeout must be > 0, got {ttl} and {ask_timeout}")
        if target < 1 or max_observers < target:
            raise ValueError(f"need 1 <= target <= max_observers, got {target} and {max_observers}")
        self.ttl = ttl
        self.target = target
        self.ask_timeout = ask_timeout
        self.max_observers = max_observers
        self.ignored = 0
        self._votes: dict[str, dict[tuple[str, Endpoint], _Vote]] = {kind: {} for kind in KINDS}
        self._asked: dict[str, dict[str, float]] = {kind: {} for kind in KINDS}
        self._times: list[float] | None = []  # every time a vote ages or a request times out, sorted; None: stale

    def reset(self) -> None:
        """Forget every vote and request: the network changed, old observations mean nothing."""
        for kind in KINDS:
            self._votes[kind].clear()
            self._asked[kind].clear()
        self._times = None

    # -- input ------------------------------------------------------------------------------

    def observe(self, kind: str, observer_id: PeerId, observer_ip: str, local: Endpoint,
                observed: Endpoint, now: float) -> bool:
        """Record that ``observer_id`` at ``observer_ip`` saw our ``kind`` socket at ``local`` as ``observed``.

        Args:
            kind: ``"tcp"`` or ``"udp"``.
            observer_id: who answered.
            observer_ip: the IP we reached the observer at (its vote's identity).
            local: our socket's concrete local endpoint.
            observed: what the observer reported (remote data: bad values are ignored).
            now: the current time.

        Returns:
            False if the observation was ignored (an address that is no IP, or port 0).

        Raises:
            TypeError: ``observer_id``, ``local`` or ``observed`` has the wrong type.
            ValueError: ``kind`` is not a known socket kind.
        """
        kind = _check_kind(kind)
        if not isinstance(observer_id, PeerId):
            raise TypeError(f"observer_id must be a PeerId, not {type(observer_id).__name__}")
        if not isinstance(local, Endpoint) or not isinstance(observed, Endpoint):
            raise TypeError("local and observed must be Endpoints")
        ip = _canonical_ip(observer_ip) if isinstance(observer_ip, str) else None
        local_ep, observed_ep = canonical_endpoint(local, kind), canonical_endpoint(observed, kind)
        if ip is None or local_ep is None or observed_ep is None:
            self.ignored += 1
            return False
        self._prune(kind, now)
        self._asked[kind].pop(ip, None)
        self._times = None
        votes = self._votes[kind]
        old = votes.get((ip, local_ep))
        first = old.first if old is not None and old.observed == observed_ep else now
        votes[(ip, local_ep)] = _Vote(observer_id, observed_ep, first, now)
        if len(votes) > self.max_observers:
            del votes[min(votes, key=lambda key: votes[key].last)]
        return True

    # -- output -----------------------------------------------------------------------------

    def transport(self, kind: str, now: float) -> TransportNat:
        """The verdict for one socket kind at ``now``.

        Raises:
            ValueError: ``kind`` is not a known socket kind.
        """
        kind = _check_kind(kind)
        self._prune(kind, now)
        votes = self._votes[kind]
        if not votes:
            return TransportNat()
        # The local socket most observer IPs have seen; ties go to the freshest.
        by_local: dict[Endpoint, list[_Vote]] = {}
        for (_, local), vote in votes.items():
            by_local.setdefault(local, []).append(vote)
        local, group = max(by_local.items(), key=lambda item: (len(item[1]), max(v.last for v in item[1])))
        tally = Counter(v.observed for v in group)
        newest = {v.observed: v.last for v in sorted(group, key=lambda v: v.last)}
        external = max(tally, key=lambda ep: (tally[ep], newest[ep]))
        count, total = tally[external], len(group)
        confirmed = count >= 2 and 2 * count > total
        if external == local:
            mapping = MappingBehaviour.NONE
        elif total < 2:
            mapping = MappingBehaviour.UNKNOWN
        elif confirmed:
            mapping = MappingBehaviour.ENDPOINT_INDEPENDENT
        else:
            mapping = MappingBehaviour.DEPENDENT
        since = min(v.first for v in group if v.observed == external)
        return TransportNat(external, local, mapping, confirmed, total, since)

    def nat_info(self, now: float, notes: Iterable[str] = ()) -> NatInfo:
        """Both verdicts as a :class:`NatInfo`, with ``notes`` (e.g. UPnP status lines) attached."""
        return NatInfo(self.transport("tcp", now), self.transport("udp", now), tuple(notes))

    # -- asking -----------------------------------------------------------------------------

    def wanted(self, kind: str, now: float) -> bool:
        """True while fewer than ``target`` observer IPs have a recent vote or a request in flight.

        Raises:
            ValueError: ``kind`` is not a known socket kind.
        """
        kind = _check_kind(kind)
        self._prune(kind, now)
        return len(self._covered(kind, now)) < self.target

    def pick(self, kind: str, observers: Iterable[tuple[PeerId, str]], now: float) -> list[PeerId]:
        """Choose whom to send an echo request now, and remember that we asked.

        Args:
            kind: ``"tcp"`` or ``"udp"``.
            observers: ``(peer_id, ip)`` of the peers we could ask (connected
                peers, hard-coded contacts), best first.
            now: the current time.

        Returns:
            At most one peer per IP, only IPs not already covered, no more than
            it takes to reach ``target`` covered IPs; possibly empty.

        Raises:
            ValueError: ``kind`` is not a known socket kind.
        """
        kind = _check_kind(kind)
        self._prune(kind, now)
        covered = self._covered(kind, now)
        asked = self._asked[kind]
        chosen: list[PeerId] = []
        for peer_id, raw_ip in observers:
            ip = _canonical_ip(raw_ip) if isinstance(raw_ip, str) else None
            if len(covered) >= self.target:
                break
            if ip is None or ip in covered:
                continue
            covered.add(ip)
            asked[ip] = now
            self._times = None
            chosen.append(peer_id)
        while len(asked) > self.max_observers:
            del asked[min(asked, key=asked.__getitem__)]
        return chosen

    def next_check(self, now: float) -> float | None:
        """The next time after ``now`` at which a vote ages, expires or a request times out, or None.

        Call :meth:`pick` (and refresh :meth:`nat_info`) then.  Only future
        times are returned, so a caller with nobody to ask does not spin.
        """
        if self._times is None:  # rebuilt only after a change: the engine asks on every turn
            times = [t for votes in self._votes.values() for vote in votes.values()
                     for t in (vote.last + self.ttl / 2, vote.last + self.ttl)]
            times += [at + self.ask_timeout for asked in self._asked.values() for at in asked.values()]
            self._times = sorted(times)
        i = bisect.bisect_right(self._times, now)
        return self._times[i] if i < len(self._times) else None

    # -- internals --------------------------------------------------------------------------

    def _covered(self, kind: str, now: float) -> set[str]:
        """Observer IPs with a vote younger than ``ttl / 2`` or a request in flight."""
        fresh = {ip for (ip, _), vote in self._votes[kind].items() if vote.last + self.ttl / 2 > now}
        return fresh | set(self._asked[kind])

    def _prune(self, kind: str, now: float) -> None:
        votes, asked = self._votes[kind], self._asked[kind]
        for key in [key for key, vote in votes.items() if vote.last + self.ttl <= now]:
            del votes[key]
            self._times = None
        for ip in [ip for ip, at in asked.items() if at + self.ask_timeout <= now]:
            del asked[ip]
            self._times = None
