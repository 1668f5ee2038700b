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
It is assembled from one mixin per concern, each over
:class:`~crust.service_base.ServiceBase` (the shared fields and helpers):
:mod:`~crust.handlers` (callbacks), :mod:`~crust.listening` (listeners and
the LAN beacon), :mod:`~crust.bootstrapping`, :mod:`~crust.connecting`,
:mod:`~crust.config_watch` and :mod:`~crust.watching` (``wait_for_peer``,
``lost_reason``, ``stats``); this module keeps the lifecycle, peers and
messages, and the reactor side.

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
import functools
import logging
import os
import threading
import time
from collections import OrderedDict
from typing import Callable

from .bootstrapping import Bootstrapping
from .config import Config
from .config_file import find_config_file, read_config_file
from .config_watch import ConfigWatch, file_version
from .connecting import NAT_WAIT, Connecting
from .crypto.ranking import measure_preference
from .dispatch import Dispatcher
from .engine import Engine
from .engine.backpressure import message_costs
from .errors import MessageTooLarge, ServiceClosed
from .events import (
    BootstrapFinished, ConnectFinished, ContactsLearned, Event, ListenersChanged, MessageReceived, PeerConnected,
    PeerInfo, PeerLost,
)
from .handlers import Callbacks
from .listening import Listening
from .identity import Identity
from .contact_book import ContactBook
from .runtime.driver import Driver
from .runtime.flow import Flow
from .runtime.lan import LanDiscovery
from .runtime.nat import NatGlue
from .runtime.streams import Streams
from .ids import Contact, CrustUser, PeerId, is_ip_literal
from .service_base import check_peer_id as _check_peer_id, check_positive_timeout
from .service_base import check_timeout as _check_timeout
from .stats import Tally
from .transport.reactor import Reactor
from .watching import Watching

__all__ = ["Service", "NAT_WAIT"]

log = logging.getLogger("crust")


class Service(Callbacks, Listening, Bootstrapping, Connecting, ConfigWatch, Watching):
    """A crust node: listens, bootstraps, connects and carries messages to peers.

    Args:
        config: settings; when omitted, read from ``watch`` if given, else from
            the default config file (:func:`crust.read_config_file`; ``Config()``
            when there is none), which is then watched.
        identity: our long-term key pair; a fresh one when omitted.
        dispatch: ``"thread"`` (callbacks run on the ``crust-dispatch`` thread)
            or ``"manual"`` (the application calls :meth:`run_callbacks`).
        watch: a JSON config file to follow (usually the one ``config`` was
            loaded from): every ``config_reload_interval`` seconds the Service
            checks whether it changed (one ``stat()``), and when it did re-reads
            it and applies its whitelists to every live peer (peers they now
            exclude are dropped and see ``on_lost``).  Other changed fields are
            logged and wait for the next start.

    Raises:
        TypeError / ValueError: bad arguments.
        ConfigError: ``config`` omitted and the file (``watch`` or the default one) is invalid.
    """

    def __init__(self, config: Config | None = None, identity: Identity | None = None, *,
                 dispatch: str = "thread", watch: str | os.PathLike[str] | None = None) -> None:
        if watch is not None and not isinstance(watch, (str, os.PathLike)):
            raise TypeError(f"watch must be a config file path or None, not {type(watch).__name__}")
        config_file = None if watch is None else os.fspath(watch)
        if config is None and config_file is None:
            config_file = find_config_file()  # the default file (API.md's search order), watched
        # The version before the read: a change racing with it is seen at the first check.
        config_version = None if config_file is None else file_version(config_file)
        if config is None and watch is not None:
            config = Config.load(watch)
        elif config is None:
            config = read_config_file()  # without a default file: defaults (and a log line)
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
        self._peer_waiters = []
        self._lost_reasons = OrderedDict()
        self._tally = Tally()
        # Reactor thread only: what this turn's pumps have for the dispatcher (see _account).
        self._handover: list[Event] = []
        self._handover_answers: list[Callable[[], None]] = []
        self._handover_due = False
        self._book = ContactBook(config.bootstrap_cache_path, lambda fn: self._worker().submit(fn))
        self._lan: LanDiscovery | None = None  # reactor-owned; started by start_service_discovery()
        self._closed = False
        self._close_lock = threading.Lock()
        self._config_file = config_file
        self._config_version = config_version
        self._reactor.start()
        if config_file is not None:
            self._reactor.call_soon_threadsafe(self._schedule_config_reload)
        self._dispatcher.start()

    # -- lifecycle --------------------------------------------------------------

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<crust.Service {self.id!r}{' closed' if self._closed else ''}>"

    def close(self, timeout: float = 5.0) -> None:
        """Say Goodbye to every peer, close every socket and join every thread, within ``timeout`` in all.

        Remote peers see ``on_lost`` at once.  Callbacks queued before the close
        still run (thread mode); afterwards every method raises ServiceClosed.
        Idempotent.

        One deadline bounds every stage: flushing what peers have not taken yet
        (a peer that does not read is then cut off), stopping the I/O thread,
        the callbacks still queued and the worker pool.  The flush may use all
        but a reserve (a quarter of ``timeout``, at most 0.5 s) that the other
        stages share, so the I/O thread always has time to close every socket.
        A callback still running when the time is up (one that blocks, say)
        keeps the dispatcher thread until it returns; ``close`` does not wait
        for it and logs a warning.

        Args:
            timeout: seconds (> 0) the whole close may take.

        Raises:
            TypeError / ValueError: ``timeout`` is not a positive number.
        """
        limit = check_positive_timeout(timeout)
        deadline = time.monotonic() + limit
        with self._close_lock:
            if self._closed:
                return
            self._closed = True

        def left(reserve: float = 0.0) -> float:
            return max(0.0, deadline - reserve - time.monotonic())

        self._flow.close()  # first, so that the final flush's credit cannot admit a blocked send()
        flushed = threading.Event()
        try:
            self._reactor.call_soon_threadsafe(self._shutdown_on_reactor, flushed)
        except ServiceClosed:
            flushed.set()
        if not flushed.wait(left(reserve=min(0.5, limit / 4))):
            log.info("closing: some peers had not taken everything queued for them within %.1f s; "
                     "their connections are closed without it", limit)
        try:
            self._reactor.call_soon_threadsafe(self._streams.abort)
        except ServiceClosed:
            pass
        self._reactor.stop(left())
        for waiter in list(self._bootstrap_waiters.values()):
            waiter.cancel()
        for waiters in list(self._connect_waiters.values()):
            for connect_waiter in waiters:
                connect_waiter.cancel()
        for _, peer_waiter in list(self._peer_waiters):
            peer_waiter.cancel()
        self._dispatcher.close(left())
        with self._workers_lock:
            workers = self._workers
        if workers is not None:
            workers.shutdown(wait=False)  # a queued cache write still runs; we wait for it below, bounded
            for thread in list(getattr(workers, "_threads", ())):
                thread.join(left())

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
        # The hot path: the usual exact types and a service that is open, each a C-level check; any
        # other input goes through _check_send (every check, in order, with its own error).
        if (type(peer_id) is PeerId and type(data) is bytes and type(priority) is int and 0 <= priority <= 255
                and timeout is None and len(data) <= self._config.max_message_size and not self._closed):
            payload = data
        else:
            payload, timeout = self._check_send(peer_id, data, priority, timeout)
        if self._reactor.in_reactor_thread():
            raise RuntimeError("send() must not be called on the I/O thread")
        self._flow.send(peer_id, priority, payload, timeout)

    def _check_send(self, peer_id: object, data: object, priority: object,
                    timeout: float | None) -> tuple[bytes, float | None]:
        """``send()``'s arguments checked one by one: its payload (a private copy of a buffer) and timeout."""
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
        return payload, timeout

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
        """Book-keep one round of events; queue them for the callbacks at the end of the reactor turn.

        The events of every pump in a turn go to the dispatcher together, as
        the turn's last call before ``select()``: a woken delivering thread
        runs only once the reactor lets go of the GIL, so handing over earlier
        would wake it only to wait for the rest of the turn (and on two
        cores, to take the reactor's core meanwhile).  The answers
        (``bootstrap()``, ``connect()``, ``wait_for_peer()``) wait until the
        events are queued: when such a call returns, ``on_new_peer`` for its
        peer is already queued, ahead of anything that peer sends.
        """
        backlog, received, received_bytes = message_costs(events)
        answers: list[Callable[[], None]] = []
        if received == len(events):  # only messages, the hot path (counted above): all posted, as they are
            post = events
        else:  # a type check is ~6x cheaper than _keep_book's `match`
            post = [event for event in events if type(event) is MessageReceived or self._keep_book(event, answers)]
        if received:
            self._tally.count_messages(received, received_bytes)
        if backlog:
            self._flow.received(backlog)
        if post or answers:
            self._handover += post
            self._handover_answers += answers
            if not self._handover_due:
                self._handover_due = True
                self._reactor.call_soon(self._hand_over)

    def _keep_book(self, event: Event, answers: list[Callable[[], None]]) -> bool:
        """_account's part for an event other than a message; returns whether it goes to the dispatcher."""
        self._tally.count(event)
        match event:
            case PeerConnected(info):
                self._flow.opened(info.id)
                if info.origin == "bootstrap_connect":  # we dialled it: a contact worth keeping
                    self._book.record_success(Contact(info.addr, info.id), time.time())
                if self._peer_waiters:
                    answers.append(functools.partial(self._peer_up, info.id))
            case PeerLost(peer_id, reason):
                self._flow.lost(peer_id)
                self._peer_lost(peer_id, reason)
            case BootstrapFinished():
                answers.append(functools.partial(self._finish_bootstrap, event))
                return False
            case ContactsLearned(_, contacts):
                self._book.learn(contacts)
                return False
            case ConnectFinished():
                answers.append(functools.partial(self._finish_connect, event))
                return False
            case ListenersChanged(endpoints):
                if self._lan is not None:  # the LAN beacon tells seekers what we announce
                    self._lan.set_listeners(endpoints)
                return False
        return True

    def _hand_over(self) -> None:
        """The end of a reactor turn: the turn's events to the dispatcher, then the answers waiting for them."""
        self._handover_due = False
        events, self._handover = self._handover, []
        answers, self._handover_answers = self._handover_answers, []
        self._dispatcher.post_many(events)
        for answer in answers:
            answer()
