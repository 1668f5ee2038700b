"""The UPnP shell: PortMapper on a real Reactor and worker pool, and the real miniupnpc inside namespaces.

* PortMapper runs against tests/fake_igd.py's in-memory router on a real
  :class:`~crust.transport.reactor.Reactor` and a real thread pool, in real
  (short) time: which thread does what, renewal, bounded stop, failures that
  must not escape.
* :class:`~crust.runtime.upnp.MiniupnpcIgd` runs for real only inside a lab
  network namespace (tests/netlab.py, tests/upnp_probe.py): SSDP is multicast
  and must never leave through this machine's own interfaces.

Against a real IGD (miniupnpd on a NAT lab router), with a whole crust
Service: tests/test_upnp_lab.py (mapping, reachability through it, renewal of
a short lease, a conflict moving us to another port, deletion on
stop_listening() and close(), no IGD).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import sys
import threading
import time
from typing import Any, Callable, Iterator

import pytest

from crust.errors import LocalProtocolError
from crust.ids import Endpoint, PeerId
from crust.nat.igd import IgdNotFound, IgdRefused, MappingConflict
from crust.nat.upnp import MapperState, UpnpMapper
from crust.transport.reactor import Reactor
from crust.runtime.upnp import MiniupnpcIgd, PortMapper, igd_error
from tests.fake_igd import EXTERNAL_IP, LAN_IP, FakeIgd, wait_on
from tests.netlab import Lab, LineReader, expect_event, lab_or_skip

pytestmark = pytest.mark.timeout(30)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = os.path.join(REPO, "tests", "upnp_probe.py")
PEER = PeerId(bytes(range(32)))
TCP = Endpoint("0.0.0.0", 40000)
UDP = Endpoint("0.0.0.0", 40001, "udp")
BOTH = (Endpoint(EXTERNAL_IP, 40000), Endpoint(EXTERNAL_IP, 40001, "udp"))
WAIT = 5.0  # seconds any one expected thing may take here


@pytest.fixture
def pool() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    workers = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="crust-worker")
    yield workers
    workers.shutdown(wait=True)


class Harness:
    """A PortMapper on ``reactor`` and ``pool``; counts the outcomes posted back so tests can wait for them."""

    def __init__(self, reactor: Reactor, pool: concurrent.futures.ThreadPoolExecutor, igd: FakeIgd, *,
                 lease: int = 3600, stop_timeout: float = 5.0,
                 submit: Callable[[Callable[[], None]], object] | None = None,
                 on_change: Callable[[tuple[Endpoint, ...]], object] | None = None) -> None:
        self.reactor, self.igd = reactor, igd
        self.changes: list[tuple[tuple[Endpoint, ...], bool]] = []  # (endpoints, ran on the reactor thread)
        self.posted = 0
        self.cond = threading.Condition()
        self.futures: list[concurrent.futures.Future[None]] = []
        self.stops: list[str] = []  # thread names stop callbacks ran on

        def default_submit(fn: Callable[[], None]) -> object:
            future = pool.submit(fn)
            self.futures.append(future)
            return future

        def changed(endpoints: tuple[Endpoint, ...]) -> None:
            with self.cond:
                self.changes.append((endpoints, reactor.in_reactor_thread()))
                self.cond.notify_all()
            if on_change is not None:
                on_change(endpoints)

        self.pm = PortMapper(UpnpMapper(PEER, lease=lease), igd, submit=submit or default_submit,
                             call_soon_threadsafe=self._post, call_at=reactor.call_at, clock=reactor.time,
                             on_change=changed, stop_timeout=stop_timeout)

    def _post(self, fn: Callable[[], None]) -> None:
        self.reactor.call_soon_threadsafe(fn)
        with self.cond:
            self.posted += 1
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
        return wait_on(self.cond, predicate, timeout)

    def settled(self, outcomes: int) -> None:
        """Wait until ``outcomes`` results were posted back and the reactor has run them."""
        assert self.wait(lambda: self.posted >= outcomes), f"only {self.posted} outcomes posted"
        self.on_reactor(lambda: None)  # the reactor's queue is FIFO: the posts ran before this

    def on_reactor(self, fn: Callable[[], Any]) -> Any:
        return self.reactor.call(fn, WAIT)

    def start(self, *listeners: Endpoint) -> None:
        self.on_reactor(lambda: self.pm.start(listeners))

    def stop(self) -> threading.Event:
        done = threading.Event()

        def stopped() -> None:
            self.stops.append(threading.current_thread().name)
            done.set()

        self.on_reactor(lambda: self.pm.stop(stopped))
        return done


def crust_info(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "crust" and r.levelno >= logging.INFO]


# -- PortMapper with an in-memory IGD ------------------------------------------------------------

def test_maps_on_worker_threads_and_reports_on_the_reactor(reactor: Reactor, pool: Any,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="crust")
    h = Harness(reactor, pool, FakeIgd(clock=reactor.time))
    h.start(TCP, UDP)
    assert h.wait(lambda: len(h.changes) == 2)
    assert h.changes == [(BOTH[:1], True), (BOTH, True)]  # one change per new mapping, on the reactor
    assert h.pm.endpoints == BOTH  # readable from this (user) thread
    assert h.pm.status == (
        f"upnp: mapped tcp {LAN_IP}:40000 -> {EXTERNAL_IP}:40000, lease 3600 s (renewed every 1800 s)",
        f"upnp: mapped udp {LAN_IP}:40001 -> {EXTERNAL_IP}:40001, lease 3600 s (renewed every 1800 s)")
    assert crust_info(caplog) == list(h.pm.status)
    assert h.igd.threads and all(name.startswith("crust-worker") for name in h.igd.threads)
    assert not reactor.in_reactor_thread()  # this test thread is a user thread
    done = h.stop()
    assert done.wait(WAIT) and h.stops == ["crust-io"]
    assert h.igd.live() == {} and h.pm.endpoints == () and h.changes[-1] == ((), True)
    assert crust_info(caplog)[2:] == [f"upnp: removed tcp {EXTERNAL_IP}:40000", f"upnp: removed udp {EXTERNAL_IP}:40001"]


def test_renews_at_half_the_lease_on_the_reactors_timers(reactor: Reactor, pool: Any) -> None:
    h = Harness(reactor, pool, FakeIgd(clock=reactor.time), lease=1)
    h.start(TCP, UDP)
    assert h.wait(lambda: len(h.changes) == 2)
    t0 = time.monotonic()
    assert h.igd.wait_for(lambda: h.igd.count("add") >= 2 + 2 * 2, WAIT), h.igd.calls
    elapsed = time.monotonic() - t0
    assert 0.9 <= elapsed < 3.0, f"two renewal rounds of a 1 s lease took {elapsed:.2f} s"
    assert set(h.igd.live()) == {("tcp", 40000), ("udp", 40001)}  # no lease ever lapsed
    assert len(h.changes) == 2  # renewals change nothing anyone sees
    assert h.stop().wait(WAIT) and h.igd.live() == {}


def test_no_igd_is_one_info_line_and_no_more_work(reactor: Reactor, pool: Any,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="crust")
    h = Harness(reactor, pool, FakeIgd(found=False, clock=reactor.time))
    h.start(TCP, UDP)
    h.settled(1)
    state, timer, busy = h.on_reactor(lambda: (h.pm.mapper.state, h.pm.mapper.get_timer(), h.pm.mapper.busy))
    assert (state, timer, busy) == (MapperState.FAILED, None, False)  # nothing left that could run again
    assert h.pm.status == ("upnp: no IGD found",) and h.pm.endpoints == ()
    assert crust_info(caplog) == ["upnp: no IGD found"]
    assert h.igd.count("discover") == 1 and h.changes == []
    assert h.stop().wait(WAIT)


def test_when_settled_calls_back_once_the_first_attempt_is_over(reactor: Reactor, pool: Any) -> None:
    igd = FakeIgd(clock=reactor.time)
    gate = igd.gate["add"] = threading.Event()
    calls: list[tuple[str, tuple[Endpoint, ...]]] = []
    try:
        h = Harness(reactor, pool, igd)

        def note() -> None:
            calls.append((threading.current_thread().name, h.pm.endpoints))

        h.on_reactor(lambda: h.pm.when_settled(note))
        assert calls == [("crust-io", ())]  # nothing under way: at once
        h.start(TCP, UDP)
        h.on_reactor(lambda: h.pm.when_settled(note, 30.0))
        assert igd.wait_for(lambda: igd.blocked == ["add"], WAIT) and len(calls) == 1  # waits out the mapping
    finally:
        gate.set()
    assert h.wait(lambda: len(h.changes) == 2)
    h.on_reactor(lambda: None)
    assert calls[1] == ("crust-io", BOTH)  # called once both ports are mapped, with them published
    assert h.stop().wait(WAIT) and len(calls) == 2


@pytest.mark.parametrize("ending", ["timeout", "stop"])
def test_when_settled_is_bounded_when_the_igd_hangs(reactor: Reactor, pool: Any, ending: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="crust")
    igd = FakeIgd(clock=reactor.time)
    gate = igd.gate["discover"] = threading.Event()
    called = threading.Event()
    count: list[float] = []
    try:
        h = Harness(reactor, pool, igd, stop_timeout=0.3)
        h.start(TCP)
        t0 = time.monotonic()
        h.on_reactor(lambda: h.pm.when_settled(lambda: (count.append(time.monotonic() - t0), called.set()),
                                                0.3 if ending == "timeout" else 30.0))
        assert igd.wait_for(lambda: igd.blocked == ["discover"], WAIT)
        if ending == "stop":
            h.stop()
        assert called.wait(WAIT)
        assert count[0] < 2.0 and (ending == "stop" or count[0] >= 0.25)
    finally:
        gate.set()
    h.settled(1)  # the late answer settles nothing twice
    assert len(count) == 1
    gave_up = [m for m in crust_info(caplog) if "going on without a mapping" in m]
    assert len(gave_up) == (1 if ending == "timeout" else 0), crust_info(caplog)
    assert h.stop().wait(WAIT)


def test_stop_is_bounded_when_the_igd_hangs(reactor: Reactor, pool: Any) -> None:
    igd = FakeIgd(clock=reactor.time)
    gate = igd.gate["discover"] = threading.Event()
    try:
        h = Harness(reactor, pool, igd, stop_timeout=0.3)
        h.start(TCP)
        assert igd.wait_for(lambda: igd.blocked == ["discover"], WAIT)
        t0 = time.monotonic()
        done = h.stop()
        assert done.wait(WAIT)
        assert 0.25 <= time.monotonic() - t0 < 2.0
    finally:
        gate.set()
    h.settled(1)  # the late discovery answer is taken, and ignored
    assert h.on_reactor(lambda: h.pm.mapper.state) is MapperState.STOPPED
    assert igd.count("add") == 0 and h.stops == ["crust-io"]


def test_an_add_that_finishes_after_stop_gave_up_is_deleted_then(reactor: Reactor, pool: Any) -> None:
    igd = FakeIgd(clock=reactor.time)
    gate = igd.gate["add"] = threading.Event()
    try:
        h = Harness(reactor, pool, igd, stop_timeout=0.2)
        h.start(TCP)
        assert igd.wait_for(lambda: igd.blocked == ["add"], WAIT)
        assert h.stop().wait(WAIT)  # gave up waiting: the add still hangs
    finally:
        gate.set()
    assert igd.wait_for(lambda: igd.count("delete") == 1, WAIT)
    assert igd.live() == {} and h.stops == ["crust-io"] and h.pm.endpoints == ()


def test_failures_never_raise_into_the_reactor_or_callbacks(reactor: Reactor, pool: Any,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="crust")

    class Buggy(FakeIgd):
        def add(self, *args: Any) -> None:
            if args[0] == "udp":
                raise RuntimeError("boom")  # not an IgdError: a bug in the client
            super().add(*args)

    def bad_callback(*args: object) -> None:
        raise ValueError("callback bug")

    h = Harness(reactor, pool, Buggy(clock=reactor.time), on_change=bad_callback)
    h.start(TCP, UDP)
    h.settled(4)  # discover, external ip, add tcp, add udp
    assert h.pm.endpoints == BOTH[:1]
    assert h.pm.status[1] == f"upnp: udp {LAN_IP}:40001 not mapped: IGD client failed: RuntimeError('boom')"
    assert any(r.levelno == logging.WARNING and r.exc_info for r in caplog.records)  # the client's bug, with traceback
    assert any("callback" in r.getMessage() and r.exc_info for r in caplog.records)  # the callback's bug
    done = threading.Event()
    h.on_reactor(lambda: h.pm.stop(bad_callback))
    h.on_reactor(lambda: h.pm.stop(done.set))
    assert done.wait(WAIT) and reactor.running  # the reactor lives on


def test_a_closed_worker_pool_fails_quietly(reactor: Reactor, pool: Any) -> None:
    def closed(fn: Callable[[], None]) -> object:
        raise RuntimeError("cannot schedule new futures after shutdown")

    h = Harness(reactor, pool, FakeIgd(), submit=closed)
    h.start(TCP)
    assert h.pm.status == ("upnp: no IGD found",)
    assert h.stop().wait(WAIT)


def test_an_outcome_after_the_reactor_stopped_is_dropped_quietly(pool: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="crust")
    reactor = Reactor()
    reactor.start()
    igd = FakeIgd()
    gate = igd.gate["discover"] = threading.Event()
    try:
        h = Harness(reactor, pool, igd)
        h.start(TCP)
        assert igd.wait_for(lambda: igd.blocked == ["discover"], WAIT)
    finally:
        reactor.stop()
        gate.set()
    assert h.futures[0].result(WAIT) is None  # the worker ended cleanly
    assert any("reactor gone" in r.getMessage() for r in caplog.records)


def test_bad_arguments_are_refused(reactor: Reactor) -> None:
    args: dict[str, Any] = dict(submit=lambda fn: None, call_soon_threadsafe=lambda fn: None,
                                call_at=reactor.call_at, clock=reactor.time)
    with pytest.raises(TypeError, match="UpnpMapper"):
        PortMapper(object(), FakeIgd(), **args)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stop_timeout"):
        PortMapper(UpnpMapper(PEER), FakeIgd(), stop_timeout=0, **args)
    pm = PortMapper(UpnpMapper(PEER), FakeIgd(), **args)
    with pytest.raises(LocalProtocolError, match="before start"):
        pm.refresh()


# -- MiniupnpcIgd without a network --------------------------------------------------------------

@pytest.mark.parametrize("method, text, kind, message", [
    ("discover", "Success", IgdNotFound, "nothing answered"),
    ("discover", "Miniupnpc Socket error", IgdNotFound, "could not send SSDP (no multicast route?)"),
    ("add", "ConflictInMappingEntry", MappingConflict, "ConflictInMappingEntry"),
    ("add", "Action not authorized", IgdRefused, "Action not authorized"),
    ("add", "OnlyPermanentLeasesSupported", IgdRefused, "OnlyPermanentLeasesSupported"),
    ("external_ip", "Miniupnpc HTTP error", IgdRefused, "no answer from the IGD (HTTP error)"),
    ("delete", "", IgdRefused, "Exception"),
])
def test_miniupnpc_texts_become_clear_errors(method: str, text: str, kind: type, message: str) -> None:
    error = igd_error(method, Exception(text))
    assert type(error) is kind and str(error) == message


def test_miniupnpc_igd_refuses_before_discovery_and_permanent_leases() -> None:
    igd = MiniupnpcIgd()  # nothing is sent before discover()
    with pytest.raises(IgdRefused, match="discover"):
        igd.external_ip()
    with pytest.raises(IgdRefused, match="discover"):
        igd.add("tcp", 40000, LAN_IP, 40000, "crust x tcp", 3600)
    with pytest.raises(IgdRefused, match="discover"):
        igd.delete("tcp", 40000, LAN_IP, 40000)
    with pytest.raises(IgdRefused, match="only with a lease"):
        igd.add("tcp", 40000, LAN_IP, 40000, "crust x tcp", 0)
    with pytest.raises(ValueError, match="discover_delay_ms"):
        MiniupnpcIgd(0)


# -- the real miniupnpc, inside namespaces only ------------------------------------------------------

DELAY_MS = 500
DISCOVERY_BOUND = 4 * DELAY_MS / 1000 + 2.0  # miniupnpc searches up to 4 device types, + interpreter start


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from lab_or_skip("crustupnp")


def probe(lab: Lab, host: str, *args: str) -> dict[str, Any]:
    t0 = time.monotonic()
    done = lab.exec(host, [sys.executable, PROBE, *args], timeout=DISCOVERY_BOUND + 10)
    took = time.monotonic() - t0
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert done.returncode == 0 and lines, f"probe failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    assert took < DISCOVERY_BOUND + 3, f"probe took {took:.1f} s"
    return dict(lines[-1])


def test_real_discovery_in_a_namespace_with_only_lo_finds_no_igd(lab: Lab) -> None:
    lab.add_ns("h")
    got = probe(lab, "h", "discover", "--delay-ms", str(DELAY_MS))
    assert got["event"] == "discover" and got["ok"] is False, got
    assert got["type"] == "IgdNotFound" and got["message"] == "could not send SSDP (no multicast route?)"
    assert got["elapsed"] < DISCOVERY_BOUND


def test_real_discovery_on_a_lab_lan_without_igd_finds_none(lab: Lab) -> None:
    h1, h2 = lab.build_lan(2, subnet="10.78.0.0/24")
    assert h1.ip and h2.ip
    listener = LineReader(lab.run("h2", [sys.executable, PROBE, "listen-ssdp", "--ip", h2.ip,
                                         "--timeout", str(DISCOVERY_BOUND + 5)]), "ssdp-listener")
    expect_event(lab, listener, "ready", WAIT)
    got = probe(lab, "h1", "discover", "--delay-ms", str(DELAY_MS), "--multicast-if", h1.ip)
    assert got["ok"] is False and got["type"] == "IgdNotFound" and got["message"] == "nothing answered", got
    heard = expect_event(lab, listener, "ssdp", WAIT)
    assert heard["line"] == "M-SEARCH * HTTP/1.1" and heard["from"] == h1.ip  # it really searched, in the lab


def test_real_port_mapper_without_igd_logs_one_info_line_and_stops(lab: Lab) -> None:
    lab.add_ns("h")
    got = probe(lab, "h", "portmapper", "--delay-ms", str(DELAY_MS))
    assert got["event"] == "result", got
    assert [msg for level, msg in got["logs"] if level >= logging.INFO] == ["upnp: no IGD found"]
    assert got["status"] == ["upnp: no IGD found"] and got["endpoints"] == []
    assert (got["state"], got["timer"], got["busy"], got["stopped"]) == ("failed", None, False, True)
