"""Helpers for the end-to-end tests: real ``crust.Service``s over real sockets on 127.0.0.1.

* :class:`Net` builds Services (and raw sockets) and closes every one of them
  at teardown, after setting every :meth:`Net.event` so that no callback a
  test left blocked can hold a dispatcher thread open.
* :class:`Recorder` collects one Service's callbacks; :meth:`Recorder.wait`
  is the one way tests wait for them (a condition with a timeout: never a
  sleep loop).
* :class:`RawPeer` speaks crust by hand with the sans-IO classes over a
  blocking socket, so hostile tests can complete a real handshake and then
  misbehave (or go silent).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Callable, TypeVar

import crust
from crust.channel import SecureChannel
from crust.crypto.keys import KeyPair
from crust.handshake.secure import SecureHandshake
from crust.ids import name_hash
from crust.wire.messages import BootstrapGranted, BootstrapRequest, Message
from tests.helpers import WAIT

M = TypeVar("M")
MIB = 1024 * 1024
KIB = 1024

# Every Service in these tests stays on loopback, keeps no cache file and has no NAT helpers.
BASE_CONFIG: dict[str, Any] = dict(
    listen_host="127.0.0.1",
    bootstrap_cache_path=None,
    # Most test clients do not listen; the reachability tests turn the check back on.
    disable_external_reachability_requirement=True,
    enable_upnp=False,
    enable_udp=False,
    service_discovery_targets=["127.255.255.255"],
    handshake_timeout=2.0,
    bootstrap_timeout=5.0,
    bootstrap_stagger=0.05,
)


class Recorder:
    """Everything one Service's callbacks reported, in order, with bounded waits."""

    def __init__(self, svc: crust.Service, *, keep_messages: bool = True) -> None:
        self.svc = svc
        self._cond = threading.Condition()
        self.new_peers: list[crust.PeerInfo] = []
        self.messages: list[tuple[crust.PeerId, bytes]] = []
        self.lost: list[crust.PeerId] = []
        self.dropped: list[tuple[crust.PeerId, int, int]] = []
        self.misbehaviour: list[tuple[crust.PeerId, str]] = []
        self.bootstrap_failed = 0
        svc.on_new_peer(lambda info: self._add(self.new_peers, info))
        if keep_messages:  # flood tests receive millions: they count bytes instead of keeping them
            svc.on_message(lambda pid, data: self._add(self.messages, (pid, data)))
        svc.on_lost(lambda pid: self._add(self.lost, pid))
        svc.on_send_dropped(lambda pid, prio, count: self._add(self.dropped, (pid, prio, count)))
        svc.on_misbehaviour(lambda pid, why: self._add(self.misbehaviour, (pid, why)))
        svc.on_bootstrap_failed(self._bootstrap_failed)

    def _add(self, items: list[Any], item: Any) -> None:
        with self._cond:
            items.append(item)
            self._cond.notify_all()

    def _bootstrap_failed(self) -> None:
        with self._cond:
            self.bootstrap_failed += 1
            self._cond.notify_all()

    def notify(self) -> None:
        """Wake waiters (for predicates that look at state outside this recorder)."""
        with self._cond:
            self._cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float = WAIT, what: str = "a callback") -> float:
        """Wait (bounded) until ``predicate()`` holds; returns the seconds it took.  Fails the test on timeout."""
        start = time.monotonic()
        with self._cond:
            ok = self._cond.wait_for(predicate, timeout)
        assert ok, f"timed out after {timeout} s waiting for {what}"
        return time.monotonic() - start

    def poll(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Like :meth:`wait`, but returns False on timeout instead of failing the test."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def data_from(self, peer_id: crust.PeerId) -> list[bytes]:
        with self._cond:
            return [data for pid, data in self.messages if pid == peer_id]

    def count(self) -> int:
        with self._cond:
            return len(self.messages)


def block_on_message(svc: crust.Service, hold: threading.Event) -> threading.Event:
    """Make ``svc``'s on_message block on ``hold`` (from its first message on); returns 'blocked' Event."""
    blocked = threading.Event()

    @svc.on_message
    def slow(pid: crust.PeerId, data: bytes) -> None:
        blocked.set()
        assert hold.wait(30.0), "test never released the slow callback"

    return blocked


class Net:
    """A set of Services and sockets that a test builds; all closed at teardown."""

    def __init__(self) -> None:
        self.services: list[crust.Service] = []
        self.events: list[threading.Event] = []
        self.sockets: list[socket.socket] = []

    def config(self, **overrides: Any) -> crust.Config:
        return crust.Config(**{**BASE_CONFIG, **overrides})

    def service(self, *, dispatch: str = "thread", identity: crust.Identity | None = None,
                **overrides: Any) -> crust.Service:
        svc = crust.Service(self.config(**overrides), identity, dispatch=dispatch)
        self.services.append(svc)
        return svc

    def listener(self, transport: str = "tcp", *, keep_messages: bool = True,
                 **overrides: Any) -> tuple[crust.Service, Recorder, crust.Endpoint]:
        """A listening Service, its Recorder and its (only, loopback) endpoint of ``transport``."""
        svc = self.service(**overrides)
        rec = Recorder(svc, keep_messages=keep_messages)
        endpoints = svc.start_listening()
        assert endpoints and all(ep.host == "127.0.0.1" and ep.transport == transport for ep in endpoints)
        return svc, rec, endpoints[0]

    def client(self, contact: Any, **overrides: Any) -> tuple[crust.Service, Recorder]:
        svc = self.service(hard_coded_contacts=[contact], **overrides)
        return svc, Recorder(svc)

    def pair(self, a_cfg: dict[str, Any] | None = None, b_cfg: dict[str, Any] | None = None) -> Pair:
        """A listens, B bootstraps off A; returns once both saw ``on_new_peer``."""
        a, ra, a_ep = self.listener(**(a_cfg or {}))
        b, rb = self.client(str(a_ep), **(b_cfg or {}))
        assert b.bootstrap(timeout=WAIT) == a.id
        ra.wait(lambda: len(ra.new_peers) == 1, what="A's on_new_peer")
        rb.wait(lambda: len(rb.new_peers) == 1, what="B's on_new_peer")
        return Pair(a, b, ra, rb, a_ep)

    def event(self) -> threading.Event:
        """An Event that teardown sets, so a callback blocked on it cannot outlive the test."""
        ev = threading.Event()
        self.events.append(ev)
        return ev

    def track(self, sock: socket.socket) -> socket.socket:
        self.sockets.append(sock)
        return sock

    def raw_connect(self, endpoint: crust.Endpoint, source_ip: str | None = None,
                    rcvbuf: int | None = None) -> socket.socket:
        """A plain TCP connection to ``endpoint`` (optionally from another loopback address).

        ``rcvbuf``: a small receive buffer, for a peer that stops reading (the kernel then holds little).
        """
        sock = self.track(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        sock.settimeout(WAIT)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source_ip is not None:
            sock.bind((source_ip, 0))
        sock.connect((endpoint.host, endpoint.port))
        return sock

    def deaf_server(self) -> tuple[socket.socket, str]:
        """A listening socket that never accepts or answers: the kernel completes TCP connects to it."""
        sock = self.track(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        return sock, f"127.0.0.1:{sock.getsockname()[1]}"

    def close(self) -> None:
        for ev in self.events:
            ev.set()
        errors = []
        for svc in reversed(self.services):
            try:
                svc.close()
            except Exception as exc:  # keep closing the others; report at the end
                errors.append(exc)
        for sock in self.sockets:
            sock.close()
        if errors:
            raise errors[0]


class Pair:
    """Two connected Services: ``a`` listened, ``b`` bootstrapped off it."""

    def __init__(self, a: crust.Service, b: crust.Service, ra: Recorder, rb: Recorder, a_ep: crust.Endpoint) -> None:
        self.a, self.b, self.ra, self.rb, self.a_ep = a, b, ra, rb, a_ep


def refused_address() -> str:
    """``host:port`` on loopback where nothing listens (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def wait_closed_by_peer(sock: socket.socket, timeout: float) -> float:
    """Read and discard until the peer closes (EOF or reset); returns the seconds it took.

    Fails the test if the socket is still open after ``timeout`` seconds.
    """
    start = time.monotonic()
    deadline = start + timeout
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"peer did not close the connection within {timeout} s"
        sock.settimeout(min(remaining, 0.25))
        try:
            if not sock.recv(65536):
                return time.monotonic() - start
        except (socket.timeout, BlockingIOError):
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - start


def still_open(sock: socket.socket, window: float) -> bool:
    """True if the peer has not closed ``sock`` within ``window`` seconds (data is read and discarded).

    This proves an *absence*, so it must wait the whole window.
    """
    try:
        wait_closed_by_peer(sock, window)
    except AssertionError:
        return True
    return False


class RawPeer:
    """A hand-driven crust initiator over a blocking socket (for hostile and silent-peer tests)."""

    def __init__(self, sock: socket.socket, *, network_name: str | None = None,
                 static: KeyPair | None = None) -> None:
        self.sock = sock
        self.static = static if static is not None else KeyPair.generate()
        self.peer_id = self.static.peer_id
        self.handshake = SecureHandshake(initiator=True, static=self.static, name_hash=name_hash(network_name),
                                         max_message_size=2 * MIB)
        self.channel: SecureChannel | None = None
        self.inbox: list[Message] = []

    def secure(self, timeout: float = WAIT) -> None:
        """Run the secure handshake to completion (the responder then expects our purpose)."""
        deadline = time.monotonic() + timeout
        hs = self.handshake
        self.sock.sendall(hs.data_to_send())
        while not hs.complete:
            hs.receive_data(self._recv(deadline))
            out = hs.data_to_send()
            if out:
                self.sock.sendall(out)
        self.channel = hs.channel
        if hs.trailing_data:
            self.inbox += self.channel.receive_data(hs.trailing_data)  # type: ignore[union-attr]

    def send(self, *messages: Message) -> None:
        assert self.channel is not None
        self.sock.sendall(self.channel.encode(*messages))

    def expect(self, kind: type[M], timeout: float = WAIT) -> M:
        """Read until a message of type ``kind`` arrives (others are kept in ``inbox``)."""
        assert self.channel is not None
        deadline = time.monotonic() + timeout
        while True:
            for i, message in enumerate(self.inbox):
                if isinstance(message, kind):
                    del self.inbox[i]
                    return message
            self.inbox += self.channel.receive_data(self._recv(deadline))

    def bootstrap(self, user: crust.CrustUser = crust.CrustUser.NODE) -> None:
        """Secure the connection and get a bootstrap grant: the responder now has us as a peer."""
        self.secure()
        self.send(BootstrapRequest(user, ()))
        self.expect(BootstrapGranted)

    def _recv(self, deadline: float) -> bytes:
        remaining = deadline - time.monotonic()
        assert remaining > 0, "raw peer: timed out waiting for the responder"
        self.sock.settimeout(remaining)
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the responder closed the connection")
        return data
