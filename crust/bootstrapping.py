"""Bootstrapping: joining the network through contacts (the Service's ``bootstrap`` methods).

A run tries the bootstrap cache's contacts, the hard-coded ones and (with
service discovery on) the peers that answer a LAN seek, staggered and
concurrently, in the engine; these methods resolve the hard-coded names
(blocking DNS, never on the reactor), start the run on the reactor and
turn its ``BootstrapFinished`` into the caller's answer or a callback.
"""

from __future__ import annotations

import concurrent.futures
import ipaddress
import logging
import socket
from typing import Callable, Iterable

from .discovery.beacon import Reply
from .errors import BootstrapFailed, ServiceClosed
from .events import BootstrapFinished
from .handlers import AsyncBootstrapFailed
from .ids import Contact, CrustUser, Endpoint, EndpointLike, PeerId, is_ip_literal
from .runtime.nat import SETTLE_TIMEOUT
from .service_base import CALL_MARGIN, ServiceBase, check_positive_timeout

__all__ = ["Bootstrapping"]

log = logging.getLogger("crust")


class Bootstrapping(ServiceBase):
    """``bootstrap``, ``start_bootstrap`` and ``stop_bootstrap`` of :class:`crust.Service`."""

    def bootstrap(self, blacklist: Iterable[EndpointLike] = (), user: CrustUser = CrustUser.NODE,
                  timeout: float | None = None) -> PeerId:
        """Join the network through ``hard_coded_contacts``; returns the first granting peer's id.

        Contacts are tried concurrently (staggered); the first granted wins.  A Node
        whose UPnP mapping attempt is still under way (right after :meth:`start_listening`)
        waits for it first, at most 8 s, so that its request announces the router's
        mapping, which the responder's reachability check dials.

        Raises:
            BootstrapFailed: no contact granted us; ``reasons`` names each contact's failure
                (``"network_mismatch"`` for a peer of another network).
        """
        self._check_open()
        timeout = self._config.bootstrap_timeout if timeout is None else check_positive_timeout(timeout)
        blacklist_list = _blacklist_entries(blacklist, user)
        contacts = self._contacts()
        future: concurrent.futures.Future[PeerId] = concurrent.futures.Future()

        self._call(lambda: self._begin_bootstrap(contacts, blacklist_list, user, timeout,
                                                 lambda run: self._bootstrap_waiters.__setitem__(run, future)))
        window = self._config.service_discovery_window if self._lan is not None else 0.0
        window += SETTLE_TIMEOUT if user is CrustUser.NODE and self._config.enable_upnp else 0.0
        try:
            return future.result(window + timeout + CALL_MARGIN)
        except concurrent.futures.CancelledError:
            raise ServiceClosed("the service closed during bootstrap") from None
        except concurrent.futures.TimeoutError:
            raise BootstrapFailed(f"bootstrap did not finish within {timeout} s") from None

    def start_bootstrap(self, blacklist: Iterable[EndpointLike] = (), user: CrustUser = CrustUser.NODE) -> None:
        """Like :meth:`bootstrap` without blocking: ``on_new_peer`` or ``on_bootstrap_failed`` follow."""
        self._check_open()
        entries = _blacklist_entries(blacklist, user)
        if all(is_ip_literal(c.addr.host) for c in self._config.contacts):
            self._start_async_bootstrap(self._contacts(), entries, user)
        else:  # DNS blocks: resolve on a worker thread, never the caller's or the reactor's
            self._worker().submit(lambda: self._start_async_bootstrap(self._contacts(), entries, user))

    def _start_async_bootstrap(self, contacts: list[Contact], blacklist: list[Endpoint | str],
                               user: CrustUser) -> None:
        try:
            self._call(lambda: self._begin_bootstrap(contacts, blacklist, user, None, self._async_runs.add))
        except ServiceClosed:
            pass

    def _begin_bootstrap(self, hard_coded: list[Contact], blacklist: list[Endpoint | str], user: CrustUser,
                         timeout: float | None, started: Callable[[int], object]) -> None:
        """Start a run on the reactor; with discovery on, after one LAN seek window (its finds join the run)."""
        def begin(lan: list[Contact]) -> None:
            if self._closed:
                return
            contacts = self._book.ordered(hard_coded, lan)
            run = self._engine.start_bootstrap(contacts, blacklist=blacklist, user=user, timeout=timeout,
                                               now=self._reactor.time())
            started(run)
            self._driver.pump()

        def seek() -> None:
            if self._lan is None:
                begin([])
            else:
                self._lan.seek_for_bootstrap(self._config.service_discovery_window,
                                             lambda replies: begin(_lan_contacts(replies)),
                                             others_known=bool(hard_coded) or self._book.knows_anyone())

        if user is CrustUser.NODE:
            # A Node's listeners face a reachability check (PROTOCOL.md §6.3): announce the
            # router's mapping, so first wait out a mapping attempt under way (bounded).
            self._nat.when_mapped(seek)
        else:
            seek()

    def stop_bootstrap(self) -> None:
        """Abandon running bootstrap attempts."""
        def stop() -> None:
            self._engine.stop_bootstrap(self._reactor.time())
            self._driver.pump()
        self._call(stop)

    def _contacts(self) -> list[Contact]:
        """The hard-coded contacts with host names resolved (blocking DNS; unresolvable ones dropped).

        Cached contacts go in front of these on the reactor thread, which owns the cache.
        """
        contacts = [_resolved(c) for c in self._config.contacts]
        return [c for c in contacts if c is not None]

    def _finish_bootstrap(self, done: BootstrapFinished) -> None:
        self._book.record_failures(done.failures)
        waiter = self._bootstrap_waiters.pop(done.run, None)
        if waiter is not None:
            if done.peer_id is not None:
                waiter.set_result(done.peer_id)
            else:
                reasons = dict(done.failures)
                msg = "bootstrap failed" if reasons else "bootstrap failed: no contacts to try"
                waiter.set_exception(BootstrapFailed(msg + _advice(reasons.values()), reasons))
        elif done.run in self._async_runs:
            self._async_runs.discard(done.run)
            if done.peer_id is None:
                advice = _advice(why for _, why in done.failures)
                if advice:
                    log.warning("bootstrap failed%s", advice)
                self._dispatcher.post(AsyncBootstrapFailed(done.failures))


UNREACHABLE = "denied: failed_external_reachability"
"""A contact's reason when it could not dial us back (PROTOCOL.md §6.3)."""


def _advice(reasons: Iterable[str]) -> str:
    """What to do about the failures ``reasons`` name, as a clause to append ("" when there is nothing to say)."""
    if UNREACHABLE in reasons:
        return (": the contacts could not connect back to this node, and a CrustUser.NODE must be reachable."
                " Call start_listening() first (on a port the contacts can reach: forwarded, UPnP-mapped or public),"
                " or bootstrap(user=CrustUser.CLIENT) if this node need not accept connections")
    return ""


def _blacklist_entries(blacklist: Iterable[EndpointLike], user: object) -> list[Endpoint | str]:
    """Validate bootstrap arguments; bare IPs stay strings (they ban every port of that IP)."""
    if not isinstance(user, CrustUser):
        raise TypeError(f"user must be a crust.CrustUser, not {type(user).__name__}")
    if isinstance(blacklist, (str, bytes, Endpoint)):
        raise TypeError("blacklist must be an iterable of endpoints or IPs, not a single one")
    entries: list[Endpoint | str] = []
    for entry in blacklist:
        if isinstance(entry, str) and is_ip_literal(entry):
            entries.append(str(ipaddress.ip_address(entry)))
        else:
            entries.append(Endpoint.coerce(entry))
    return entries


def _lan_contacts(replies: list[Reply]) -> list[Contact]:
    """Dial targets from beacon replies; each carries the PeerId the handshake must prove."""
    return [Contact(ep, reply.peer_id) for reply in replies for ep in reply.listeners]



def _resolved(contact: Contact) -> Contact | None:
    """``contact`` with its host resolved to an IP (DNS blocks: callers run off the reactor)."""
    if is_ip_literal(contact.addr.host):
        return contact
    try:
        infos = socket.getaddrinfo(contact.addr.host, contact.addr.port, type=socket.SOCK_STREAM)
    except OSError as err:
        log.warning("cannot resolve bootstrap contact %s: %s", contact.addr, err)
        return None
    host = str(infos[0][4][0])
    return Contact(Endpoint(host, contact.addr.port, contact.addr.transport), contact.peer_id)
