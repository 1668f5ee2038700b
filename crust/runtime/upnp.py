"""UPnP in the shell: miniupnpc behind the ``Igd`` interface, and the driver that runs an UpnpMapper.

:class:`MiniupnpcIgd` is the blocking IGD client (the ``miniupnpc`` extension,
which does SSDP and SOAP in C).  :class:`PortMapper` runs a
:class:`~crust.nat.upnp.UpnpMapper` with no thread of its own:

* the **reactor thread** (the one that runs ``call_at`` timers and
  ``call_soon_threadsafe`` closures) owns the mapper, the timer handles and
  the stop and settle callbacks.  :meth:`PortMapper.start`, :meth:`~PortMapper.stop`,
  :meth:`~PortMapper.refresh` and :meth:`~PortMapper.when_settled` must be
  called there (or before the reactor runs), and ``on_change`` and those
  callbacks run there;
* a **worker thread** (``submit``, the Service's pool) only carries out one
  action on the IGD and posts the outcome back with ``call_soon_threadsafe``.
  The mapper has at most one action in flight and the next is submitted only
  after the reactor took the last outcome, so the IGD object sees one call at
  a time, ordered by the reactor's queue, and needs no lock;
* **any thread** may read :attr:`PortMapper.endpoints` and
  :attr:`PortMapper.status`: immutable tuples that only the reactor thread
  replaces (whole), so a reader sees one snapshot or the next.

Nothing here raises into the reactor or into callbacks: IGD failures become
the mapper's status lines; a bug in the client or a callback is logged.  Each
of the mapper's reports (mapped, not mapped, lost, removed, "no IGD found")
is one INFO line on the ``crust`` logger.
"""

from __future__ import annotations

import functools
import itertools
import logging
from typing import Callable, Iterable, Protocol

import miniupnpc  # type: ignore[import-not-found]  # a C extension without stubs

from ..ids import Endpoint
from ..nat.igd import Action, Igd, IgdError, IgdNotFound, IgdRefused, MappingConflict
from ..nat.upnp import MapperState, UpnpMapper
from ..transport.reactor import callable_name

__all__ = ["MiniupnpcIgd", "PortMapper", "igd_error", "DISCOVER_DELAY_MS", "STOP_TIMEOUT", "SETTLE_TIMEOUT"]

log = logging.getLogger("crust")

# ms miniupnpc waits for SSDP answers, per device type it searches: an IGD is found in
# about this (it is also the M-SEARCH's MX, 1 s), "no IGD" takes 4x this (measured in the lab).
DISCOVER_DELAY_MS = 1000
STOP_TIMEOUT = 5.0  # seconds stop() waits for the IGD to delete our mappings
# Seconds a bootstrapping Node waits at most for a mapping attempt under way: no IGD takes
# 4 s, an IGD found ~1-2 s plus one SOAP call per action.
SETTLE_TIMEOUT = 8.0
_PUMP_LIMIT = 64  # actions started in one pump when each fails at once (a closed pool): bounded

# What miniupnpc's bare Exception texts mean (its strupnperror() table,
# miniupnpc 2.3).  Seen here (Debian 12, miniupnpc 2.3.3): with only `lo`,
# discover() raises "Miniupnpc Socket error" (sendto: ENETUNREACH); on a LAN
# where nothing answers it raises "Success" — the error code was never set.
_CLEARER = {
    "Success": "nothing answered",
    "Miniupnpc Socket error": "could not send SSDP (no multicast route?)",
    "Miniupnpc HTTP error": "no answer from the IGD (HTTP error)",
}
_CONFLICT = "ConflictInMappingEntry"  # UPnP error 718
_ALREADY_GONE = "NoSuchEntryInArray"  # UPnP error 714, on a delete: the lease ran out already


def igd_error(method: str, exc: BaseException) -> IgdError:
    """Turn what miniupnpc raised in ``method`` into the matching :class:`IgdError`.

    Args:
        method: ``"discover"``, ``"external_ip"``, ``"add"`` or ``"delete"``.
        exc: the exception (miniupnpc raises bare ``Exception`` with a text).
    """
    text = str(exc) or type(exc).__name__
    text = _CLEARER.get(text, text)
    if method == "discover":
        return IgdNotFound(text)
    if method == "add" and text == _CONFLICT:
        return MappingConflict(text)
    return IgdRefused(text)


class MiniupnpcIgd:
    """:class:`~crust.nat.igd.Igd` over miniupnpc.  Blocking: use it on a worker, one call at a time.

    SSDP is multicast on the LAN: in tests run it only inside a network
    namespace (TESTLAB.md), never on the machine's real interfaces.
    """

    def __init__(self, discover_delay_ms: int = DISCOVER_DELAY_MS, multicast_if: str | None = None) -> None:
        """Configure discovery; nothing is sent before :meth:`discover`.

        Args:
            discover_delay_ms: how long to wait for SSDP answers; miniupnpc waits
                this long for each device type it searches (up to four when
                nothing answers, so "no IGD" takes up to 4x this).
            multicast_if: the IPv4 address of the interface to send SSDP from;
                None: the system's route for 239.255.255.250.

        Raises:
            ValueError: ``discover_delay_ms`` is not 1..60000.
        """
        if isinstance(discover_delay_ms, bool) or not isinstance(discover_delay_ms, int) or \
                not 1 <= discover_delay_ms <= 60000:
            raise ValueError(f"discover_delay_ms must be an int in 1..60000, not {discover_delay_ms!r}")
        self._delay_ms = discover_delay_ms
        self._multicast_if = multicast_if
        self._upnp: miniupnpc.UPnP | None = None  # the selected IGD; replaced by each discover()

    def discover(self) -> str:
        """Find an IGD by SSDP and select it; returns our LAN address towards it.

        Raises:
            IgdNotFound: nothing answered, or nothing that answered is an IGD.
        """
        self._upnp = None
        try:
            # localport 0: any source port (1 would bind 1900, which a local SSDP daemon may hold).
            upnp = miniupnpc.UPnP(multicastif=self._multicast_if, discoverdelay=self._delay_ms, localport=0)
            devices = upnp.discover()
        except Exception as exc:  # miniupnpc raises bare Exception
            raise igd_error("discover", exc) from exc
        if not devices:
            raise IgdNotFound("nothing answered")
        try:
            upnp.selectigd()
        except Exception as exc:
            raise IgdNotFound(f"{devices} UPnP device(s) answered, none a usable IGD ({exc})") from exc
        self._upnp = upnp
        return str(upnp.lanaddr)

    def external_ip(self) -> str:
        """The IGD's external address (``""`` when it has none).

        Raises:
            IgdRefused: no IGD selected, or it did not answer.
        """
        try:
            return str(self._selected().externalipaddress())
        except Exception as exc:
            raise igd_error("external_ip", exc) from exc

    def add(self, proto: str, external_port: int, internal_host: str, internal_port: int,
            description: str, lease: int) -> None:
        """AddPortMapping with a lease (IGD v1 ``NewLeaseDuration``); re-adding ours renews it.

        Raises:
            MappingConflict: another host holds ``external_port`` (error 718).
            IgdRefused: any other failure (e.g. 725 OnlyPermanentLeasesSupported: crust
                maps only with a lease, so such a router gets no mapping).
        """
        if lease < 1:
            raise IgdRefused("crust maps only with a lease")  # 0 would be permanent
        try:
            self._selected().addportmapping(external_port, proto.upper(), internal_host, internal_port,
                                            description, "", lease)
        except Exception as exc:
            raise igd_error("add", exc) from exc

    def delete(self, proto: str, external_port: int, internal_host: str, internal_port: int) -> None:
        """DeletePortMapping, only if the mapping still forwards to ``internal_host:internal_port``.

        Raises:
            IgdRefused: no IGD selected, or it refused or did not answer.
        """
        try:
            upnp = self._selected()
            # (client, port, description, enabled, lease) or None: none, or the query failed —
            # then the delete itself tells which.
            entry = upnp.getspecificportmapping(external_port, proto.upper())
            if entry is not None and (str(entry[0]), int(entry[1])) != (internal_host, internal_port):
                return  # our lease ran out and another host has the port now: not ours to delete
            upnp.deleteportmapping(external_port, proto.upper(), "")
        except Exception as exc:
            error = igd_error("delete", exc)
            if str(error) != _ALREADY_GONE:
                raise error from exc

    def _selected(self) -> miniupnpc.UPnP:
        if self._upnp is None:
            raise IgdRefused("no IGD selected (discover() first)")
        return self._upnp


class _Cancellable(Protocol):
    def cancel(self) -> None:
        """Stop the timer."""


class PortMapper:
    """Runs an UpnpMapper on a reactor and a worker pool (threads: see the module docstring)."""

    def __init__(self, mapper: UpnpMapper, igd: Igd, *,
                 submit: Callable[[Callable[[], None]], object],
                 call_soon_threadsafe: Callable[[Callable[[], None]], object],
                 call_at: Callable[[float, Callable[[], None]], _Cancellable],
                 clock: Callable[[], float],
                 on_change: Callable[[tuple[Endpoint, ...]], object] | None = None,
                 stop_timeout: float = STOP_TIMEOUT) -> None:
        """Wire a mapper to its threads; nothing runs before :meth:`start`.

        Args:
            mapper: the decisions (an idle :class:`UpnpMapper`).
            igd: the blocking client (:class:`MiniupnpcIgd`, or anything with the ``Igd`` methods).
            submit: runs a callable on a worker thread (e.g. ``lambda fn: service._worker().submit(fn)``);
                may raise once the pool is shut down.
            call_soon_threadsafe: runs a callable on the reactor thread; may raise once it stops.
            call_at: ``Reactor.call_at``: a timer on the reactor thread, with ``cancel()``.
            clock: ``Reactor.time``, the clock ``call_at`` uses.
            on_change: called on the reactor thread with our external endpoints whenever they change.
            stop_timeout: seconds :meth:`stop` waits for the deletions before calling back anyway.

        Raises:
            TypeError, ValueError: a bad argument.
        """
        if not isinstance(mapper, UpnpMapper):
            raise TypeError(f"mapper must be an UpnpMapper, not {type(mapper).__name__}")
        if not isinstance(stop_timeout, (int, float)) or not 0 < stop_timeout <= 300:
            raise ValueError(f"stop_timeout must be in (0, 300] seconds, not {stop_timeout!r}")
        self._mapper = mapper
        self._igd = igd
        self._submit = submit
        self._post = call_soon_threadsafe
        self._call_at = call_at
        self._clock = clock
        self._on_change = on_change
        self._stop_timeout = float(stop_timeout)
        # Reactor thread only:
        self._timer: _Cancellable | None = None
        self._timer_at = float("inf")
        self._stop_waiters: list[Callable[[], object]] = []
        self._settle_waiters: dict[int, tuple[Callable[[], object], _Cancellable]] = {}  # when_settled()
        self._settle_keys = itertools.count()
        self._give_up: _Cancellable | None = None
        # Written by the reactor thread only (whole tuples), read from any thread:
        self._endpoints: tuple[Endpoint, ...] = ()
        self._status: tuple[str, ...] = mapper.status

    # -- reactor thread -------------------------------------------------------------------

    def start(self, listeners: Iterable[Endpoint]) -> None:
        """Map these listener endpoints (reactor thread).  Discovery runs once per start.

        Raises:
            TypeError: a listener is not an Endpoint.
        """
        self._mapper.start(listeners)
        self._pump()

    def refresh(self) -> None:
        """Discover the IGD again and redo the mappings, e.g. after a network change (reactor thread).

        Raises:
            LocalProtocolError: :meth:`start` was never called.
        """
        self._mapper.refresh()
        self._pump()

    def stop(self, done: Callable[[], object] | None = None) -> None:
        """Delete every mapping we made (reactor thread); then call ``done()`` on the reactor thread.

        ``done`` runs once the deletions are over, or after ``stop_timeout``
        seconds if the IGD is slow (a deletion still in flight then finishes
        later, if the reactor still runs; otherwise the lease ends the mapping).
        """
        self._mapper.stop()
        if done is not None:
            self._stop_waiters.append(done)
        if self._give_up is None and self._mapper.state is MapperState.STOPPING:
            self._give_up = self._call_at(self._clock() + self._stop_timeout, self._on_give_up)
        self._pump()

    def when_settled(self, fn: Callable[[], object], timeout: float = SETTLE_TIMEOUT) -> None:
        """Call ``fn()`` on the reactor thread once no mapping attempt is under way (reactor thread).

        At once when none is; else when the attempt ends (mapped, refused, no
        IGD, stopped) or after ``timeout`` seconds, whichever comes first.
        """
        if not self._mapper.settling:
            self._call_back(fn)
            return
        key = next(self._settle_keys)

        def give_up() -> None:
            if self._settle_waiters.pop(key, None) is not None:
                log.info("upnp: still no answer from the IGD after %g s; going on without a mapping", timeout)
                self._call_back(fn)

        self._settle_waiters[key] = (fn, self._call_at(self._clock() + timeout, give_up))

    @property
    def mapper(self) -> UpnpMapper:
        """The decisions being run (reactor thread only)."""
        return self._mapper

    # -- any thread -------------------------------------------------------------------------

    @property
    def endpoints(self) -> tuple[Endpoint, ...]:
        """Our mapped external endpoints (any thread)."""
        return self._endpoints

    @property
    def status(self) -> tuple[str, ...]:
        """Lines saying what UPnP is doing or why it failed, e.g. ``("upnp: no IGD found",)`` (any thread)."""
        return self._status

    # -- internals (reactor thread unless said otherwise) -----------------------------------------

    def _pump(self) -> None:
        """Start the next action if one is due, then publish, log and re-arm the timer."""
        for _ in range(_PUMP_LIMIT):
            now = self._clock()
            action = self._mapper.next_action(now)
            if action is None:
                break
            try:
                self._submit(functools.partial(self._perform, action))
                break  # its outcome pumps again
            except Exception as exc:  # the pool is shut down: the action fails here and now
                self._mapper.action_failed(IgdError(f"no worker thread ({exc!r})"), now)
        self._publish()
        self._arm_timer()
        if self._stop_waiters and self._mapper.state is not MapperState.STOPPING:
            self._finish_stop()
        if self._settle_waiters and not self._mapper.settling:
            waiters, self._settle_waiters = self._settle_waiters, {}
            for fn, timer in waiters.values():
                timer.cancel()
                self._call_back(fn)

    def _perform(self, action: Action) -> None:
        """Worker thread: one blocking IGD call; the outcome goes back to the reactor thread."""
        result: str | None = None
        error: IgdError | None = None
        try:
            result = action.perform(self._igd)
        except IgdError as exc:
            error = exc
        except Exception as exc:  # a bug in the client must not kill the machine: it fails the action
            log.warning("upnp: the IGD client raised on %s", type(action).__name__, exc_info=True)
            error = IgdError(repr(exc))
        try:
            self._post(lambda: self._outcome(result, error))
        except Exception:  # the reactor is stopping: the lease takes care of what we hold
            log.debug("upnp: reactor gone, outcome of %s dropped", type(action).__name__)

    def _outcome(self, result: str | None, error: IgdError | None) -> None:
        now = self._clock()
        if error is None:
            self._mapper.action_done(result, now)
        else:
            self._mapper.action_failed(error, now)
        self._pump()

    def _publish(self) -> None:
        for _ in range(1000):  # a handful per input; bounded all the same
            line = self._mapper.next_report()
            if line is None:
                break
            log.info("%s", line)
        self._status = self._mapper.status
        endpoints = self._mapper.endpoints
        if endpoints != self._endpoints:
            self._endpoints = endpoints
            if self._on_change is not None:
                self._call_back(self._on_change, endpoints)

    def _arm_timer(self) -> None:
        when = self._mapper.get_timer()
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_at = None, float("inf")
        if when is not None:
            self._timer, self._timer_at = self._call_at(when, self._on_timer), when

    def _on_timer(self) -> None:
        self._timer, self._timer_at = None, float("inf")
        self._pump()

    def _on_give_up(self) -> None:
        self._give_up = None
        if self._stop_waiters:
            log.info("upnp: the IGD did not finish removing our mappings within %g s; "
                     "what is left ends with its lease", self._stop_timeout)
            self._finish_stop()

    def _finish_stop(self) -> None:
        if self._give_up is not None:
            self._give_up.cancel()
            self._give_up = None
        waiters, self._stop_waiters = self._stop_waiters, []
        for done in waiters:
            self._call_back(done)

    @staticmethod
    def _call_back(fn: Callable[..., object], *args: object) -> None:
        try:
            fn(*args)
        except Exception:  # the integrator's callback: its bug, logged, never the reactor's
            log.exception("upnp: callback %s raised", callable_name(fn))
