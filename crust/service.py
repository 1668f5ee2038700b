"""Service: the public facade: validation, futures, lifecycle (ARCHITECTURE.md §6).

Theory of operation.  The reactor thread (``crust-io``) owns the engine and
every socket.  The engine's :class:`~crust.runtime.driver.Driver` feeds it
every input and, after each, *pumps*: it carries out the effects on the
:class:`~crust.runtime.streams.Streams`, hands ``SendCredit`` to the send
gates, gives the events to :meth:`Service._on_events` (the shell's
bookkeeping: gates, receive backlog, bootstrap and connect futures, the
contact book) which posts them to the dispatcher (``crust-dispatch``), and
arms one timer for the engine's and the LAN beacon's next deadline.  This
class checks arguments, runs the rest on the reactor and waits for answers.

``send()`` is the hot path: it validates, then :class:`~crust.runtime.flow.Flow`
waits at the peer's send gate only while that priority's queue is full
and puts the message in the reactor's send inbox; a burst of sends costs
one posted call, one wakeup and one pump, and a lone message is sealed
and written within that call.  Inbound, a slow ``on_message`` pauses
reading its peer instead of growing memory (``receive_backlog_limit``).

Threads and handoffs.  Work crosses between threads through exactly two
queues, one per direction:

* into the reactor: its call queue (``Reactor.call_soon_threadsafe``).
  User threads post commands there (``_call`` waits on a ``Future`` for the
  answer), the delivering thread posts its delivery reports, and worker
  threads (DNS, the contact cache, UPnP, config file reads) post their
  results.  ``send()`` puts its message in a
  :class:`~crust.transport.reactor.Inbox` that rides on this same queue:
  the first message of a burst posts one drain call, which hands the
  reactor every message waiting (so the inbox is how messages travel, not
  another way in; a message never overtakes the calls its thread posts
  after it, and the commands a user posts before it wait for their answer);
* out of the reactor: the dispatcher's event queue (``Dispatcher.post_many``),
  from which the delivering thread runs the user's callbacks.

A ``Future`` set on the reactor is the answer to a call, not a third queue.
Two pieces of state are shared under a lock instead of handed over: each
peer's :class:`~crust.runtime.flow.SendGate` (senders wait on its
Condition; the reactor releases credit) and the dispatcher's handler table
(copy-on-write under its lock).

Who owns what.  Every field more than one thread touches has one owner (the
only thread that writes it) or a lock:

* the reactor thread only (others reach them through ``_call``):
  ``_engine``, ``_driver``, ``_streams``, ``_lan``, ``_nat`` (its port mapper and
  waiters), ``_book``, ``_bootstrap_waiters``, ``_connect_waiters``,
  ``_async_runs``, ``_async_connects``.  Exceptions, each once the reactor
  cannot race: ``bootstrap()`` reads whether ``_lan`` is set (a reference
  read), and ``close()`` cancels the waiters after the reactor thread has
  stopped;
* ``_flow``: the send gates (written on the reactor, read by any thread),
  the receive backlog (reactor) and the delivery tally (the delivering
  thread); its module docstring says which is whose;
* ``_book``'s one shared field, the cache text a queued worker write will
  take, is guarded by the book's own lock;
* ``_config``: replaced whole on the reactor (config reload), its reference
  read by any thread;
* ``_closed``: written under ``_close_lock``, read by any thread;
* ``_workers``: ``_workers_lock``;
* set once in ``__init__`` and only read afterwards: ``_identity``,
  ``_reactor``, ``_dispatcher``, ``_config_file``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import ipaddress
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, TypeVar

from .config import Config
from .config_file import find_config_file, read_config_file
from .crypto.ranking import measure_preference
from .dispatch import Dispatcher
from .engine import Engine
from .engine.backpressure import message_cost
from .errors import BootstrapFailed, ConfigError, ConnectError, ConnectToSelf, CrustTimeoutError, MessageTooLarge, ServiceClosed
from .connection_info import PrivConnectionInfo, PubConnectionInfo
from .events import BootstrapFinished, ConnectFinished, ContactsLearned, Event, ListenersChanged, MessageReceived, Misbehaved, PeerConnected, PeerInfo, PeerLost, SendDropped
from .discovery.beacon import Reply
from .identity import Identity
from .nat.observe import NatInfo
from .contact_book import ContactBook
from .runtime.driver import Driver
from .runtime.flow import Flow
from .runtime.lan import LanDiscovery
from .runtime.nat import SETTLE_TIMEOUT, NatGlue
from .runtime.streams import Streams
from .ids import Contact, CrustUser, Endpoint, EndpointLike, PeerId, is_ip_literal, name_hash
from .transport.reactor import Reactor

__all__ = ["Service"]

log = logging.getLogger("crust")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
_CALL_MARGIN = 5.0  # seconds a blocking call waits beyond the engine's own deadline
NAT_WAIT = 2.0  # seconds prepare_connection_info() waits for peers to say where they see us


@dataclass(frozen=True, slots=True)
class _AsyncBootstrapFailed(Event):
    """A ``start_bootstrap()`` run ended with no peer (shell-only event)."""

    failures: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class _ConnectFailed(Event):
    """A ``start_connect()`` to ``peer_id`` failed (shell-only event; connect arrives with NAT traversal)."""

    peer_id: PeerId


class Service:
    """A crust node: listens, bootstraps, connects and carries messages to peers.

    Args:
        config: settings; ``Config()`` when omitted.
        identity: our long-term key pair; a fresh one when omitted.
        dispatch: ``"thread"`` (callbacks run on the ``crust-dispatch`` thread)
            or ``"manual"`` (the application calls :meth:`run_callbacks`).

    Raises:
        TypeError / ValueError: bad arguments.
    """

    def __init__(self, config: Config | None = None, identity: Identity | None = None, *,
                 dispatch: str = "thread") -> None:
        config_file: str | None = None
        if config is None:
            # The default file (API.md's search order); without one, defaults (and a log line).
            config_file = find_config_file()
            config = read_config_file()
        if not isinstance(config, Config):
            raise TypeError(f"config must be a crust.Config, not {type(config).__name__}")
        if identity is None:
            identity = Identity.generate()
        if not isinstance(identity, Identity):
            raise TypeError(f"identity must be a crust.Identity, not {type(identity).__name__}")
        if dispatch not in ("thread", "manual"):
            raise ValueError(f"dispatch must be 'thread' or 'manual', not {dispatch!r}")
        self._config = config
        self._identity = identity
        # Rank the transport ciphers by their cost on this machine: once per process, a few ms.
        measure_preference(time.perf_counter)
        self._engine = Engine(static=identity, config=config)
        self._reactor = reactor = Reactor("crust-io")
        # The reactor side: the engine's driver, its streams, flow control (see the module docstring).
        self._driver = driver = Driver(self._engine, reactor)
        self._streams = Streams(reactor, driver, config)
        self._nat = NatGlue(driver, self._streams, reactor, config, identity.peer_id,
                            submit=lambda fn: self._worker().submit(fn))
        self._flow = Flow(reactor, driver, self._streams, send_queue_limit=config.send_queue_limit,
                          receive_backlog_limit=config.receive_backlog_limit)
        driver.attach(self._streams, on_events=self._on_events, on_credit=self._flow.credit)
        self._dispatcher = Dispatcher(manual=dispatch == "manual", name="crust-dispatch",
                                      on_delivered=self._flow.delivered)
        self._workers: concurrent.futures.ThreadPoolExecutor | None = None
        self._workers_lock = threading.Lock()
        self._bootstrap_waiters: dict[int, concurrent.futures.Future[PeerId]] = {}
        self._async_runs: set[int] = set()
        self._connect_waiters: dict[PeerId, list[concurrent.futures.Future[PeerId]]] = {}
        self._async_connects: set[PeerId] = set()
        self._book = ContactBook(config.bootstrap_cache_path, lambda fn: self._worker().submit(fn))
        self._lan: LanDiscovery | None = None  # reactor-owned; started by start_service_discovery()
        self._closed = False
        self._close_lock = threading.Lock()
        self._config_file = config_file
        self._reactor.start()
        if config_file is not None:
            self._reactor.call_soon_threadsafe(self._schedule_config_reload)
        self._dispatcher.start()

    # -- lifecycle --------------------------------------------------------------

    @property
    def id(self) -> PeerId:
        """Our PeerId (the public key of our identity)."""
        return self._identity.peer_id

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<crust.Service {self.id!r}{' closed' if self._closed else ''}>"

    def close(self, timeout: float = 5.0) -> None:
        """Say Goodbye to every peer, close every socket and join every thread.  Idempotent.

        Remote peers see ``on_lost`` at once.  Callbacks queued before the close
        still run (thread mode); afterwards every method raises ServiceClosed.
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._flow.close()  # first, so that the final flush's credit cannot admit a blocked send()
        flushed = threading.Event()
        try:
            self._reactor.call_soon_threadsafe(self._shutdown_on_reactor, flushed)
        except ServiceClosed:
            flushed.set()
        flushed.wait(timeout)
        try:
            self._reactor.call_soon_threadsafe(self._streams.abort)
        except ServiceClosed:
            pass
        self._reactor.stop(timeout)
        for waiter in list(self._bootstrap_waiters.values()):
            waiter.cancel()
        for waiters in list(self._connect_waiters.values()):
            for connect_waiter in waiters:
                connect_waiter.cancel()
        self._dispatcher.close(timeout)
        with self._workers_lock:
            workers = self._workers
        if workers is not None:
            workers.shutdown(wait=True)  # lets a queued cache write finish

    def _shutdown_on_reactor(self, flushed: threading.Event) -> None:
        if self._lan is not None:
            self._lan.close()
        self._engine.close(self._reactor.time())
        self._driver.pump()
        self._driver.close()
        # The engine's Close effects have just started every stream's flush: wait for those too,
        # and for the router to forget our port mappings.
        pending = [2]

        def one_done() -> None:
            pending[0] -= 1
            if pending[0] == 0:
                flushed.set()

        self._nat.unmap(one_done)
        self._streams.shutdown(one_done)

    def _check_open(self) -> None:
        if self._closed:
            raise ServiceClosed("the service is closed")

    def _call(self, fn: Callable[[], T], timeout: float | None = _CALL_MARGIN) -> T:
        """Run ``fn`` on the reactor thread and return its result (or raise its exception)."""
        self._check_open()
        return self._reactor.call(fn, timeout)

    # -- callbacks ---------------------------------------------------------------

    def _register(self, event_type: type[Event], handler: F, args: Callable[[Any], tuple[object, ...]]) -> F:
        if not callable(handler):
            raise TypeError(f"callback must be callable, not {type(handler).__name__}")
        self._check_open()
        self._dispatcher.add_handler(event_type, handler, args)
        return handler

    def on_new_peer(self, handler: F) -> F:
        """Call ``handler(info: PeerInfo)`` when a peer connects.  Usable as a decorator."""
        return self._register(PeerConnected, handler, lambda e: (e.info,))

    def on_message(self, handler: F) -> F:
        """Call ``handler(peer_id, data)`` for every message, per peer in the order sent."""
        return self._register(MessageReceived, handler, lambda e: (e.peer_id, e.data))

    def on_lost(self, handler: F) -> F:
        """Call ``handler(peer_id)`` when a connected peer is gone (also after our own disconnect())."""
        return self._register(PeerLost, handler, lambda e: (e.peer_id,))

    def on_bootstrap_failed(self, handler: F) -> F:
        """Call ``handler()`` when a :meth:`start_bootstrap` run ends with no peer."""
        return self._register(_AsyncBootstrapFailed, handler, lambda e: ())

    def on_connect_failure(self, handler: F) -> F:
        """Call ``handler(peer_id)`` when a ``start_connect()`` fails."""
        return self._register(_ConnectFailed, handler, lambda e: (e.peer_id,))

    def on_misbehaviour(self, handler: F) -> F:
        """Call ``handler(peer_id, reason)`` when a peer broke the protocol (it is then dropped)."""
        return self._register(Misbehaved, handler, lambda e: (e.peer_id, e.reason))

    def on_send_dropped(self, handler: F) -> F:
        """Call ``handler(peer_id, priority, count)`` when droppable queued messages were discarded."""
        return self._register(SendDropped, handler, lambda e: (e.peer_id, e.priority, e.count))

    def run_callbacks(self, timeout: float = 0.0) -> int:
        """Manual dispatch: run queued callbacks on this thread; returns how many events were delivered."""
        self._check_open()
        return self._dispatcher.run_callbacks(timeout)

    # -- listening -------------------------------------------------------------

    def start_listening(self) -> list[Endpoint]:
        """Accept connections (on ``config.tcp_port``, random by default); returns our endpoints.

        Raises:
            ListenerError: the port could not be bound.
        """
        return self._call(self._start_listening)

    def _start_listening(self) -> list[Endpoint]:
        if self._streams.endpoints:
            return self._engine.listeners(self._reactor.time())  # already listening: local and external
        endpoints = self._streams.listen()
        self._engine.set_listeners(endpoints)
        self._nat.observe()
        if self._config.enable_upnp:
            self._nat.map_ports(endpoints)
        if self._lan is not None:
            self._lan.set_listeners(endpoints)
        log.info("listening on %s", ", ".join(map(str, endpoints)))
        return endpoints

    def nat_info(self) -> NatInfo:
        """What peers have told us about our NAT: external TCP and UDP endpoints, mapping behaviour, since when.

        Peers are asked from the moment we listen, prepare connection info or
        first call this (which then answers with what little is known yet),
        and again whenever a new peer connects while fewer than three
        observer IPs have answered; answers count for 10 minutes.  Each call
        also re-reads our interface addresses: when they changed (a new
        network), every earlier answer is forgotten and peers are asked anew.
        """
        return self._call(self._nat.info)

    def stop_listening(self) -> None:
        """Stop accepting new connections; existing ones stay."""
        def stop() -> None:
            self._streams.stop_listening()
            self._engine.set_listeners(())
            self._nat.unmap()  # nothing listens there any more
        self._call(stop)

    def set_accept_bootstrap(self, accept: bool) -> None:
        """Whether peers may bootstrap off us (default True)."""
        if not isinstance(accept, bool):
            raise TypeError("accept must be a bool")
        self._call(lambda: setattr(self._engine, "accept_bootstrap", accept))

    # -- bootstrap --------------------------------------------------------------

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
        timeout = self._config.bootstrap_timeout if timeout is None else _check_timeout(timeout)
        blacklist_list = _blacklist_entries(blacklist, user)
        contacts = self._contacts()
        future: concurrent.futures.Future[PeerId] = concurrent.futures.Future()

        self._call(lambda: self._begin_bootstrap(contacts, blacklist_list, user, timeout,
                                                 lambda run: self._bootstrap_waiters.__setitem__(run, future)))
        window = self._config.service_discovery_window if self._lan is not None else 0.0
        window += SETTLE_TIMEOUT if user is CrustUser.NODE and self._config.enable_upnp else 0.0
        try:
            return future.result(window + timeout + _CALL_MARGIN)
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

    def _worker(self) -> concurrent.futures.ThreadPoolExecutor:
        """The pool for blocking calls (DNS, UPnP, cache writes), started on first use."""
        with self._workers_lock:
            if self._workers is None:
                # A running pool stays usable while close() runs: it deletes our UPnP mappings there.
                self._check_open()
                self._workers = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="crust-worker")
            return self._workers

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

    # -- peers and messages ----------------------------------------------------

    def send(self, peer_id: PeerId, data: bytes | bytearray | memoryview, priority: int = 0,
             timeout: float | None = None) -> None:
        """Queue ``data`` for ``peer_id``; blocks only while that priority's queue is full.

        Thread-safe, and safe inside callbacks.  Per peer and priority,
        messages arrive whole, in order, exactly once while the peer stays
        connected; priorities ≥ ``MSG_DROP_PRIORITY`` may be dropped (reported
        through ``on_send_dropped``).

        Raises:
            TypeError / ValueError: bad arguments.
            MessageTooLarge: ``len(data) > max_message_size``.
            PeerNotFound: not connected to ``peer_id``.
            SendTimeout: the queue stayed full for ``timeout`` seconds.
            PeerLostError: the peer was lost while we waited.
        """
        if not isinstance(peer_id, PeerId):
            raise TypeError(f"peer_id must be a crust.PeerId, not {type(peer_id).__name__}")
        if isinstance(data, bytes):
            payload = data
        elif isinstance(data, (bytearray, memoryview)):
            payload = bytes(data)  # a private copy: the caller may reuse its buffer at once
        else:
            raise TypeError(f"data must be bytes-like, not {type(data).__name__}")
        if type(priority) is not int:
            raise TypeError(f"priority must be an int, not {type(priority).__name__}")
        if not 0 <= priority <= 255:
            raise ValueError(f"priority must be in 0..255, not {priority}")
        if len(payload) > self._config.max_message_size:
            raise MessageTooLarge(f"message of {len(payload)} bytes exceeds max_message_size "
                                  f"({self._config.max_message_size})")
        if timeout is not None:
            timeout = _check_timeout(timeout)
        self._check_open()
        if self._reactor.in_reactor_thread():
            raise RuntimeError("send() must not be called on the I/O thread")
        self._flow.send(peer_id, priority, payload, timeout)

    def disconnect(self, peer_id: PeerId) -> bool:
        """Close the connection to ``peer_id`` (it sees ``on_lost`` at once); returns whether there was one."""
        _check_peer_id(peer_id)
        def disconnect() -> bool:
            found = self._engine.disconnect(peer_id, self._reactor.time())
            self._driver.pump()
            return found
        return self._call(disconnect)

    def ban(self, *peers_or_ips: PeerId | str) -> None:
        """Disconnect these peers (PeerIds or IP strings) and refuse them for the rest of the session."""
        ids = [p for p in peers_or_ips if isinstance(p, PeerId)]
        ips = [p for p in peers_or_ips if not isinstance(p, PeerId)]
        for ip in ips:
            if not isinstance(ip, str) or not is_ip_literal(ip):
                raise ValueError(f"ban() takes PeerIds or IP address strings, not {ip!r}")
        def ban() -> None:
            self._engine.ban(ids, ips, self._reactor.time())
            self._driver.pump()
        self._call(ban)

    def is_connected(self, peer_id: PeerId) -> bool:
        """True while ``peer_id`` is a connected peer."""
        _check_peer_id(peer_id)
        self._check_open()
        return self._flow.is_connected(peer_id)

    def peers(self) -> list[PeerInfo]:
        """A snapshot of every connected peer."""
        return self._call(lambda: [self._engine.peer_info(p) for p in self._engine.peer_ids()])

    def peer_info(self, peer_id: PeerId) -> PeerInfo:
        """A snapshot of one peer.  Raises PeerNotFound."""
        _check_peer_id(peer_id)
        return self._call(lambda: self._engine.peer_info(peer_id))

    def get_peer_ip_addr(self, peer_id: PeerId) -> str:
        """The IP address ``peer_id`` is connected from.  Raises PeerNotFound."""
        return self.peer_info(peer_id).addr.host

    def is_peer_hard_coded(self, peer_id: PeerId) -> bool:
        """True when the peer's IP is one of our hard-coded contacts' (as in the original)."""
        ip = self.get_peer_ip_addr(peer_id)
        return any(c.addr.host == ip or (c.peer_id == peer_id) for c in self._config.contacts)

    def is_peer_whitelisted(self, peer_id: PeerId) -> bool:
        """True when the whitelist for the peer's role (node or client) is unset or holds its IP."""
        info = self.peer_info(peer_id)
        cfg = self._config
        whitelist = cfg.whitelisted_client_ips if info.user is CrustUser.CLIENT else cfg.whitelisted_node_ips
        return whitelist is None or info.addr.host in whitelist

    # -- the reactor side --------------------------------------------------------

    def _on_events(self, events: list[Event]) -> None:
        """After every pump round: account for the engine's events, post them, answer NAT waiters."""
        if events:
            self._account(events)
        self._nat.wake()

    def _account(self, events: list[Event]) -> None:
        backlog: dict[PeerId, int] = {}
        post: list[Event] = []
        for event in events:
            if type(event) is MessageReceived:  # the hot path: a type check is ~6x cheaper than `match`
                backlog[event.peer_id] = backlog.get(event.peer_id, 0) + message_cost(event.data)
                post.append(event)
                continue
            match event:
                case PeerConnected(info):
                    self._flow.opened(info.id)
                    if info.origin == "bootstrap_connect":  # we dialled it: a contact worth keeping
                        self._book.record_success(Contact(info.addr, info.id), time.time())
                case PeerLost(peer_id, _):
                    self._flow.lost(peer_id)
                case BootstrapFinished():
                    self._finish_bootstrap(event)
                    continue
                case ContactsLearned(_, contacts):
                    self._book.learn(contacts)
                    continue
                case ConnectFinished():
                    self._finish_connect(event)
                    continue
                case ListenersChanged(endpoints):
                    if self._lan is not None:  # the LAN beacon tells seekers what we announce
                        self._lan.set_listeners(endpoints)
                    continue
            post.append(event)
        if backlog:
            self._flow.received(backlog)
        self._dispatcher.post_many(post)

    # -- connect (rendezvous through swapped connection info) ---------------------------

    def prepare_connection_info(self, timeout: float | None = None) -> PrivConnectionInfo:
        """Our PeerId, every way to reach us and a fresh connect token, to swap out of band.

        The info names our listeners (local addresses, loopback ones only when
        nothing else exists; external ones we were told of or UPnP mapped), our
        TCP punch port and our rUDP socket, each as observers see it and
        locally.  Binding those sockets and asking connected peers where they
        see them may take a moment: we wait up to ``NAT_WAIT`` seconds (never
        beyond ``timeout``) for the answers when we have peers to ask.
        """
        limit = _CALL_MARGIN if timeout is None else _check_timeout(timeout)
        deadline = time.monotonic() + limit
        answered: concurrent.futures.Future[None] = concurrent.futures.Future()

        self._call(lambda: self._nat.wait(answered), limit)
        try:
            answered.result(max(0.0, min(NAT_WAIT, deadline - time.monotonic())))
        except concurrent.futures.TimeoutError:
            pass  # what we know by now will do; the peer's own candidates may still reach us
        finally:
            answered.cancel()
        return self._call(self._nat.gather, max(0.0, deadline - time.monotonic()))

    def connect(self, ours: PrivConnectionInfo, theirs: PubConnectionInfo, timeout: float | None = None) -> PeerId:
        """Connect to the peer whose info we got out of band; it calls ``connect`` with ours.

        Every candidate is dialled at once and the peer's dials count too; exactly
        one connection survives and both sides see ``on_new_peer(origin="connect")``
        once.  Already connected: returns at once.

        Raises:
            ConnectToSelf: ``theirs`` is our own info.
            ConnectError: no candidate connected within ``timeout`` (default ``connect_timeout``);
                ``reasons`` names each candidate's failure.
        """
        timeout = self._config.connect_timeout if timeout is None else _check_timeout(timeout)
        future: concurrent.futures.Future[PeerId] = concurrent.futures.Future()
        self._start_connect(ours, theirs, timeout, future)
        try:
            return future.result(timeout + _CALL_MARGIN)
        except concurrent.futures.CancelledError:
            raise ServiceClosed("the service closed during connect") from None
        except concurrent.futures.TimeoutError:
            raise ConnectError(f"connect to {theirs.peer_id!r} did not finish within {timeout} s") from None

    def start_connect(self, ours: PrivConnectionInfo, theirs: PubConnectionInfo) -> None:
        """Like :meth:`connect` without blocking: ``on_new_peer`` or ``on_connect_failure`` follow."""
        self._start_connect(ours, theirs, self._config.connect_timeout, None)

    def _start_connect(self, ours: PrivConnectionInfo, theirs: PubConnectionInfo, timeout: float,
                       future: concurrent.futures.Future[PeerId] | None) -> None:
        if not isinstance(ours, PrivConnectionInfo):
            raise TypeError(f"ours must be a crust.PrivConnectionInfo, not {type(ours).__name__}")
        if not isinstance(theirs, PubConnectionInfo):
            raise TypeError(f"theirs must be a crust.PubConnectionInfo, not {type(theirs).__name__}")
        if ours.peer_id != self.id:
            raise ValueError("ours was prepared by another Service (its peer_id is not ours)")
        if theirs.peer_id == self.id:
            raise ConnectToSelf("the connection info is our own: cannot connect to ourselves")
        self._check_open()

        def start() -> None:
            if future is not None:
                self._connect_waiters.setdefault(theirs.peer_id, []).append(future)
            else:
                self._async_connects.add(theirs.peer_id)
            self._engine.start_connect(theirs.peer_id, theirs.listeners, tcp_punch=theirs.tcp_punch,
                                       udp_punch=theirs.udp_punch, their_token=theirs.token, our_token=ours.token,
                                       timeout=timeout, now=self._reactor.time())
            self._driver.pump()

        self._call(start)

    def _finish_connect(self, done: ConnectFinished) -> None:
        reasons = dict(done.failures)
        for waiter in self._connect_waiters.pop(done.peer_id, []):
            if done.connected:
                waiter.set_result(done.peer_id)
            else:
                waiter.set_exception(ConnectError(f"could not connect to {done.peer_id!r}", reasons))
        if done.peer_id in self._async_connects:
            self._async_connects.discard(done.peer_id)
            if not done.connected:
                self._dispatcher.post(_ConnectFailed(done.peer_id))

    # -- LAN discovery -----------------------------------------------------------------

    def start_service_discovery(self) -> None:
        """Start the LAN beacon: bootstraps then also try peers that answer on the LAN.

        Seeks go to ``service_discovery_targets`` (default: every interface's
        broadcast address) on ``service_discovery_port``.  Answering other
        seekers is separate: :meth:`set_service_discovery_listen`.

        Raises:
            ListenerError: the beacon's socket could not be opened.
        """
        self._call(self._ensure_lan)

    def set_service_discovery_listen(self, listen: bool) -> None:
        """Answer (``True``) or ignore LAN seekers; starts the beacon if needed.

        Raises:
            ListenerError: ``service_discovery_port`` could not be bound.
        """
        if not isinstance(listen, bool):
            raise TypeError("listen must be a bool")
        self._call(lambda: self._ensure_lan().set_listen(listen))

    def has_peers_on_lan(self, timeout: float = 1.0) -> bool:
        """Seek for ``timeout`` seconds: did any peer of our network answer?  Starts the beacon if needed."""
        timeout = _check_timeout(timeout)
        future: concurrent.futures.Future[bool] = concurrent.futures.Future()
        self._call(lambda: self._ensure_lan().seek(timeout, lambda replies: future.set_result(bool(replies)),
                                                   until_first=True))
        try:
            return future.result(timeout + _CALL_MARGIN)
        except concurrent.futures.TimeoutError:
            raise CrustTimeoutError("the LAN seek did not finish") from None

    def _ensure_lan(self) -> LanDiscovery:
        if self._lan is None:
            cfg = self._config
            self._lan = LanDiscovery(self._reactor, self._driver, port=cfg.service_discovery_port,
                                     targets=cfg.service_discovery_targets, name_hash=name_hash(cfg.network_name),
                                     peer_id=self.id)
            self._lan.set_listeners(self._engine.listeners(self._reactor.time()))
        return self._lan

    def _finish_bootstrap(self, done: BootstrapFinished) -> None:
        self._book.record_failures(done.failures)
        waiter = self._bootstrap_waiters.pop(done.run, None)
        if waiter is not None:
            if done.peer_id is not None:
                waiter.set_result(done.peer_id)
            else:
                reasons = dict(done.failures)
                msg = "bootstrap failed" if reasons else "bootstrap failed: no contacts to try"
                waiter.set_exception(BootstrapFailed(msg, reasons))
        elif done.run in self._async_runs:
            self._async_runs.discard(done.run)
            if done.peer_id is None:
                self._dispatcher.post(_AsyncBootstrapFailed(done.failures))

    def _schedule_config_reload(self) -> None:
        self._reactor.call_later(self._config.config_reload_interval, self._reload_config)

    def _reload_config(self) -> None:
        """Re-read the config file on a worker; apply changed whitelists on the reactor."""
        path = self._config_file
        if path is None or self._closed:
            return

        def load() -> None:
            try:
                fresh = Config.load(path)
            except ConfigError as exc:
                log.warning("config file %s not reloaded: %s", path, exc)
                fresh = None
            try:
                self._reactor.call_soon_threadsafe(self._apply_config, fresh)
            except ServiceClosed:
                pass

        try:
            self._worker().submit(load)
        except (ServiceClosed, RuntimeError):
            pass

    def _apply_config(self, fresh: Config | None) -> None:
        if self._closed:
            return
        cfg = self._config
        if fresh is not None and (fresh.whitelisted_node_ips, fresh.whitelisted_client_ips) != (
                cfg.whitelisted_node_ips, cfg.whitelisted_client_ips):
            log.info("config file %s: applying new whitelists", self._config_file)
            self._config = dataclasses.replace(cfg, whitelisted_node_ips=fresh.whitelisted_node_ips,
                                               whitelisted_client_ips=fresh.whitelisted_client_ips)
            self._engine.update_whitelists(fresh.whitelisted_node_ips, fresh.whitelisted_client_ips,
                                           self._reactor.time())
            self._driver.pump()
        self._schedule_config_reload()



# -- helpers -----------------------------------------------------------------------


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


def _check_peer_id(peer_id: object) -> None:
    if not isinstance(peer_id, PeerId):
        raise TypeError(f"peer_id must be a crust.PeerId, not {type(peer_id).__name__}")


def _check_timeout(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if not timeout >= 0:
        raise ValueError(f"timeout must be >= 0, not {timeout}")
    return float(timeout)


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
