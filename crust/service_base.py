"""What every part of the Service facade shares: its fields, the reactor call, the argument checks.

:class:`crust.Service` is assembled from mixins, one concern each
(``handlers``, ``bootstrapping``, ``connecting``, ``config_watch``); they all
derive from :class:`ServiceBase`, which declares the fields
``Service.__init__`` sets (``crust/service.py``'s module docstring says which
thread owns which) and the few helpers every mixin calls.
"""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Callable, TypeVar

from .config import Config
from .contact_book import ContactBook
from .dispatch import Dispatcher
from .engine import Engine
from .errors import ServiceClosed
from .identity import Identity
from .ids import PeerId
from .runtime.driver import Driver
from .runtime.flow import Flow
from .runtime.lan import LanDiscovery
from .runtime.nat import NatGlue
from .runtime.streams import Streams
from .transport.reactor import Reactor

__all__ = ["ServiceBase", "CALL_MARGIN", "check_peer_id", "check_timeout", "check_positive_timeout"]

T = TypeVar("T")
CALL_MARGIN = 5.0  # seconds a blocking call waits beyond the engine's own deadline


class ServiceBase:
    """The fields and helpers the Service mixins share (set up by ``Service.__init__``)."""

    _config: Config
    _identity: Identity
    _engine: Engine
    _reactor: Reactor
    _driver: Driver
    _streams: Streams
    _nat: NatGlue
    _flow: Flow
    _dispatcher: Dispatcher
    _workers: concurrent.futures.ThreadPoolExecutor | None
    _workers_lock: threading.Lock
    _bootstrap_waiters: dict[int, concurrent.futures.Future[PeerId]]
    _async_runs: set[int]
    _connect_waiters: dict[PeerId, list[concurrent.futures.Future[PeerId]]]
    _async_connects: set[PeerId]
    _book: ContactBook
    _lan: LanDiscovery | None
    _closed: bool
    _close_lock: threading.Lock
    _config_file: str | None

    @property
    def id(self) -> PeerId:
        """Our PeerId (the public key of our identity)."""
        return self._identity.peer_id

    def _check_open(self) -> None:
        if self._closed:
            raise ServiceClosed("the service is closed")

    def _call(self, fn: Callable[[], T], timeout: float | None = CALL_MARGIN) -> T:
        """Run ``fn`` on the reactor thread and return its result (or raise its exception)."""
        self._check_open()
        return self._reactor.call(fn, timeout)

    def _worker(self) -> concurrent.futures.ThreadPoolExecutor:
        """The pool for blocking calls (DNS, UPnP, cache writes), started on first use."""
        with self._workers_lock:
            if self._workers is None:
                # A running pool stays usable while close() runs: it deletes our UPnP mappings there.
                self._check_open()
                self._workers = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="crust-worker")
            return self._workers


def check_peer_id(peer_id: object) -> None:
    """Raise TypeError unless ``peer_id`` is a :class:`~crust.PeerId`."""
    if not isinstance(peer_id, PeerId):
        raise TypeError(f"peer_id must be a crust.PeerId, not {type(peer_id).__name__}")


def check_timeout(timeout: object) -> float:
    """``timeout`` as a float of seconds; TypeError / ValueError unless it is a number ``>= 0``."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if not timeout >= 0:
        raise ValueError(f"timeout must be >= 0, not {timeout}")
    return float(timeout)


def check_positive_timeout(timeout: object) -> float:
    """``timeout`` as a float of seconds; TypeError / ValueError unless it is a number ``> 0``.

    For calls that wait for something to happen, where no wait at all could
    only fail: a zero, negative or NaN ``timeout`` is a mistake, said so.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout}")
    return float(timeout)
