"""Suite-wide guards: loopback-only traffic, no leaked crust threads, timeouts, warnings as errors.

Every test in the suite runs under these rules; a test that breaks one fails
rather than quietly leaving a thread, a socket or a packet on a real network.
"""

from __future__ import annotations

import gc
import inspect
import ipaddress
import socket
import threading
import time
from typing import Any, Iterator

import pytest

from crust.transport.reactor import Reactor
from crust.runtime.upnp import MiniupnpcIgd
from tests.livenet import Net

DEFAULT_TEST_TIMEOUT = 60  # seconds; a test that needs more says so with its own mark


# -- markers: every test gets one kind by its module, so `pytest -m unit` runs the fast core ----

MARKERS = {
    "unit": "sans-IO codecs, state machines and static checks: no socket, thread or clock (fast)",
    "sim": "engine scenarios on SimNet's virtual clock and network (tests/simnet.py)",
    "e2e": "real Services, sockets, threads or subprocesses on loopback",
    "lab": "network-namespace labs (need root; skip with a reason otherwise, run under CI=true)",
    "slow": "takes seconds on its own (mypy, example programs, lossy labs, big meshes)",
}
# The kind of each test module.  A module missing here is a lab by its name (test_*_lab.py,
# test_natlab.py) or else judged by what it imports (see _kind_by_imports).
KIND_BY_MODULE = {
    **dict.fromkeys([
        "test_aead", "test_backpressure", "test_beacon", "test_bootstrap_cache", "test_bootstrap_policy",
        "test_buffer", "test_channel", "test_config_file", "test_connection_info", "test_errors", "test_exports",
        "test_framing", "test_fuzz", "test_handshake_bootstrap", "test_handshake_secure", "test_handshake_states",
        "test_identity", "test_ids", "test_kex", "test_keys", "test_lan_beacon", "test_layering", "test_markers",
        "test_messages",
        "test_outbox", "test_rudp",
    ], "unit"),
    **dict.fromkeys(["test_engine", "test_engine_network", "test_simnet"], "sim"),
    **dict.fromkeys([
        "test_bootstrap_e2e", "test_connect", "test_dispatch", "test_examples", "test_hostile",
        "test_lan_loopback", "test_reactor", "test_rudp_service", "test_service", "test_tcp", "test_udp",
    ], "e2e"),
    "test_typing": None,  # runs mypy over the package: a tool, not a test of behaviour (marked slow only)
}
SLOW_MODULES = {"test_typing", "test_examples"}
SLOW_TESTS = {  # test functions that take seconds on their own
    "test_ten_services_full_mesh",
    "test_a_slow_callback_pauses_reading_and_blocks_the_sender",
    "test_a_slow_callback_over_rudp_closes_the_window_and_blocks_the_sender",
    "test_rudp_delivers_every_byte_in_order_across_a_lossy_link",
}
_E2E_IMPORTS = {"socket", "threading", "subprocess", "tests.livenet", "crust.service", "crust.transport"}


def _kind_by_imports(module: Any) -> str:
    """A module's kind from what it uses: labs, SimNet, sockets/threads/Services, else pure."""
    used = set()
    for value in vars(module).values():
        name = value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", None)
        if isinstance(name, str):
            used.add(name)
    if any(name.startswith(("tests.netlab", "tests.natlab")) for name in used):
        return "lab"
    if "tests.simnet" in used:
        return "sim"
    if any(name == prefix or name.startswith(prefix + ".") for name in used for prefix in _E2E_IMPORTS):
        return "e2e"
    return "unit"


def kind_of(module: Any) -> str | None:
    """The kind marker of a test module (None: none of the four)."""
    name = module.__name__.rpartition(".")[2]
    if name in KIND_BY_MODULE:
        return KIND_BY_MODULE[name]
    if name.endswith("_lab") or name == "test_natlab":
        return "lab"
    return _kind_by_imports(module)


def pytest_configure(config: pytest.Config) -> None:
    # Warnings are errors: an unclosed socket (ResourceWarning) fails the test that leaked it.
    config.addinivalue_line("filterwarnings", "error")
    # Except one, raised outside any test: when a hypothesis test fails, its pytest plugin imports
    # libcst (to suggest an explicit-example patch), whose import trips mypy_extensions' TypedDict
    # deprecation.  As an error there, inside a report hook, it became an INTERNALERROR that hid
    # the falsifying example; ignored, the failure is reported normally.
    config.addinivalue_line(
        "filterwarnings", r"ignore:mypy_extensions\.TypedDict is deprecated:DeprecationWarning:libcst\.")
    config.addinivalue_line("markers", "timeout(seconds): per-test time limit (pytest-timeout)")
    for marker, meaning in MARKERS.items():
        config.addinivalue_line("markers", f"{marker}: {meaning}")


def pytest_collection_finish(session: pytest.Session) -> None:
    # Everything imported so far lives for the whole session: move it out of the collector's
    # sight, so the per-test collection below scans only what tests create (~70 ms -> ~1 ms).
    gc.collect()
    gc.freeze()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The deep fuzz (10,000 examples per decoder) runs only when asked for (-m slow): the
    # default run leaves it out, rather than reporting it skipped.
    if "slow" not in (config.getoption("markexpr") or ""):
        deep = [item for item in items if getattr(item, "originalname", "") == "test_decoder_fuzz_deep"]
        if deep:
            config.hook.pytest_deselected(items=deep)
            items[:] = [item for item in items if item not in deep]
    kinds: dict[Any, str | None] = {}
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TEST_TIMEOUT))
        module = getattr(item, "module", None)
        if module is None:
            continue
        if module not in kinds:
            kinds[module] = kind_of(module)
        kind = kinds[module]
        if kind is not None:
            item.add_marker(kind)
        module_name = module.__name__.rpartition(".")[2]
        if module_name in SLOW_MODULES or getattr(item, "originalname", item.name) in SLOW_TESTS:
            item.add_marker("slow")


# -- loopback-only network guard ----------------------------------------------

def _is_loopback_address(address: Any) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX paths
        return True
    if not isinstance(address, tuple) or not address:
        return False
    host = address[0]
    if isinstance(host, bytes):
        host = host.decode()
    if host in ("", "<broadcast>"):
        return False
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


class NonLoopbackTraffic(AssertionError):
    """A test tried to reach an address outside 127.0.0.0/8 and ::1."""


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any connect/sendto to a non-loopback address (namespace labs run in subprocesses)."""
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex
    original_sendto = socket.socket.sendto

    def check(address: Any) -> None:
        if not _is_loopback_address(address):
            raise NonLoopbackTraffic(f"test tried to reach non-loopback address {address!r}")

    def connect(self: socket.socket, address: Any) -> None:
        check(address)
        return original_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(address)
        return original_connect_ex(self, address)

    def sendto(self: socket.socket, data: Any, *args: Any) -> int:
        check(args[-1])
        return original_sendto(self, data, *args)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket.socket, "sendto", sendto)

    def no_ssdp(self: object) -> str:
        # miniupnpc multicasts from C, past the socket guard: SSDP only ever runs in lab namespaces
        # (subprocesses), so an in-process discovery is a test that would reach the real LAN.
        raise NonLoopbackTraffic("UPnP discovery (SSDP multicast) outside a lab namespace")

    monkeypatch.setattr(MiniupnpcIgd, "discover", no_ssdp)


# -- no leaked threads ---------------------------------------------------------

THREAD_PREFIX = "crust-"
THREAD_GRACE = 2.0  # seconds a finished test's threads get to finish exiting


def _crust_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX) and t.is_alive()]


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a ``crust-*`` thread running (close() must join them all)."""
    before = set(_crust_threads())
    yield
    deadline = time.monotonic() + THREAD_GRACE
    leaked = [t for t in _crust_threads() if t not in before]
    for thread in leaked:
        thread.join(max(0.0, deadline - time.monotonic()))
    leaked = [t.name for t in _crust_threads() if t not in before]
    gc.collect()  # surface unclosed-socket ResourceWarnings in the test that caused them
    assert not leaked, f"test leaked crust threads: {leaked}"


@pytest.fixture
def reactor() -> Iterator[Reactor]:
    """A running Reactor, stopped after the test."""
    r = Reactor()
    r.start()
    yield r
    r.stop()


@pytest.fixture
def net() -> Iterator[Net]:
    """Real Services and raw sockets on loopback, all closed after the test (tests/livenet.py)."""
    n = Net()
    try:
        yield n
    finally:
        n.close()
