"""Suite-wide guards: loopback-only traffic, no leaked crust threads, timeouts, warnings as errors.

Every test in the suite runs under these rules; a test that breaks one fails
rather than quietly leaving a thread, a socket or a packet on a real network.
"""

from __future__ import annotations

import gc
import ipaddress
import socket
import threading
import time
from typing import Any, Iterator

import pytest

from crust.transport.reactor import Reactor
from crust.upnp_client import MiniupnpcIgd
from tests.livenet import Net

DEFAULT_TEST_TIMEOUT = 60  # seconds; a test that needs more says so with its own mark


def pytest_configure(config: pytest.Config) -> None:
    # Warnings are errors: an unclosed socket (ResourceWarning) fails the test that leaked it.
    config.addinivalue_line("filterwarnings", "error")
    config.addinivalue_line("markers", "timeout(seconds): per-test time limit (pytest-timeout)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TEST_TIMEOUT))


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
