"""The Service's callbacks: registering (and removing) the user's handlers with the dispatcher.

Each ``on_*`` method registers a handler for one event type, with the
function that turns the event into the handler's arguments; the dispatcher
(:mod:`crust.dispatch`) calls them on its thread, or in :meth:`run_callbacks`
with ``dispatch="manual"``.

Typing.  Each ``on_*`` method takes a handler whose parameters are exactly
the callback's (the ``*Handler`` aliases below), so mypy rejects a handler
of the wrong shape (``svc.on_lost(lambda: None)``) and types a lambda's
parameters (``lambda peer_id, reason: ...`` gets a ``PeerId`` and a
``str``).  It returns the handler itself (so it works as a decorator),
typed as the alias rather than as a TypeVar bound to it: a TypeVar would
keep a decorated function's own type but leave lambdas' parameters
untyped.  Handlers return ``object``: whatever they return is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Callable, TypeVar

from .events import Event, MessageReceived, Misbehaved, PeerConnected, PeerInfo, PeerLost, SendDropped
from .ids import PeerId
from .service_base import ServiceBase, check_timeout

__all__ = [
    "Callbacks", "AsyncBootstrapFailed", "ConnectFailed", "NewPeerHandler", "MessageHandler", "LostHandler",
    "BootstrapFailedHandler", "ConnectFailureHandler", "MisbehaviourHandler", "SendDroppedHandler",
]

NewPeerHandler = Callable[[PeerInfo], object]
"""``on_new_peer``: ``handler(info)``."""
MessageHandler = Callable[[PeerId, bytes], object]
"""``on_message``: ``handler(peer_id, data)``."""
LostHandler = Callable[[PeerId], object]
"""``on_lost``: ``handler(peer_id)``."""
BootstrapFailedHandler = Callable[[], object]
"""``on_bootstrap_failed``: ``handler()``."""
ConnectFailureHandler = Callable[[PeerId], object]
"""``on_connect_failure``: ``handler(peer_id)``."""
MisbehaviourHandler = Callable[[PeerId, str], object]
"""``on_misbehaviour``: ``handler(peer_id, reason)``."""
SendDroppedHandler = Callable[[PeerId, int, int], object]
"""``on_send_dropped``: ``handler(peer_id, priority, count)``."""

F = TypeVar("F", bound=Callable[..., object])


@dataclass(frozen=True, slots=True)
class AsyncBootstrapFailed(Event):
    """A ``start_bootstrap()`` run ended with no peer (shell-only event)."""

    failures: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class ConnectFailed(Event):
    """A ``start_connect()`` to ``peer_id`` failed (shell-only event)."""

    peer_id: PeerId


class Callbacks(ServiceBase):
    """The ``on_*`` registration methods and :meth:`run_callbacks` of :class:`crust.Service`."""

    def _register(self, event_type: type[Event], handler: F, args: Callable[[Any], tuple[object, ...]]) -> F:
        if not callable(handler):
            raise TypeError(f"callback must be callable, not {type(handler).__name__}")
        self._check_open()
        self._dispatcher.add_handler(event_type, handler, args)
        return handler

    def on_new_peer(self, handler: NewPeerHandler) -> NewPeerHandler:
        """Call ``handler(info: PeerInfo)`` when a peer connects.  Usable as a decorator."""
        return self._register(PeerConnected, handler, lambda e: (e.info,))

    def on_message(self, handler: MessageHandler) -> MessageHandler:
        """Call ``handler(peer_id, data)`` for every message, per peer in the order sent."""
        # attrgetter builds the (peer_id, data) tuple in C: it runs once per message.
        return self._register(MessageReceived, handler, attrgetter("peer_id", "data"))

    def on_lost(self, handler: LostHandler) -> LostHandler:
        """Call ``handler(peer_id)`` when a connected peer is gone (also after our own disconnect())."""
        return self._register(PeerLost, handler, lambda e: (e.peer_id,))

    def on_bootstrap_failed(self, handler: BootstrapFailedHandler) -> BootstrapFailedHandler:
        """Call ``handler()`` when a :meth:`start_bootstrap` run ends with no peer."""
        return self._register(AsyncBootstrapFailed, handler, lambda e: ())

    def on_connect_failure(self, handler: ConnectFailureHandler) -> ConnectFailureHandler:
        """Call ``handler(peer_id)`` when a ``start_connect()`` fails."""
        return self._register(ConnectFailed, handler, lambda e: (e.peer_id,))

    def on_misbehaviour(self, handler: MisbehaviourHandler) -> MisbehaviourHandler:
        """Call ``handler(peer_id, reason)`` when a peer broke the protocol (it is then dropped)."""
        return self._register(Misbehaved, handler, lambda e: (e.peer_id, e.reason))

    def on_send_dropped(self, handler: SendDroppedHandler) -> SendDroppedHandler:
        """Call ``handler(peer_id, priority, count)`` when droppable queued messages were discarded."""
        return self._register(SendDropped, handler, lambda e: (e.peer_id, e.priority, e.count))

    def remove_handler(self, handler: Callable[..., object]) -> bool:
        """Stop calling ``handler``: remove every registration of it, from every callback.

        Once this returns, no call of ``handler`` begins (one already running
        on the delivering thread finishes), even for an event whose delivery
        has already started.  Safe from any thread, a handler included.

        Args:
            handler: a function given to an ``on_*`` method (compared with ``==``,
                so ``obj.method`` matches an earlier ``obj.method``).

        Returns:
            Whether it was registered.
        """
        self._check_open()
        return self._dispatcher.remove_handler(handler)

    def run_callbacks(self, timeout: float = 0.0) -> int:
        """Manual dispatch: run queued callbacks on this thread; returns how many events were delivered.

        Waits up to ``timeout`` seconds (>= 0; 0 does not wait) for a first event.
        """
        check_timeout(timeout)
        self._check_open()
        return self._dispatcher.run_callbacks(timeout)
