"""Limits: what one peer may make us hold or do, and the control-request rate.

Theory of operation.  Every resource a peer can grow is bounded where it
is held, counted as it costs (docs/security.md, "Denial-of-service
bounds"); this module holds the numbers the engine applies to a
connection as it moves on, and the one piece of state the bounds need:

* A connection *not yet granted* (still securing, or secured and stating
  its purpose) gets the smallest budget: frames of at most
  ``PRE_GRANT_FRAME`` bytes (every message it may send fits in one), no
  unfinished message at all, and ``PRE_GRANT_ECHOES`` answered
  ``EchoAddrReq`` (an observer connection asks once, then closes).  More
  than that is a ``flood:`` protocol error: the link is closed.
* A *granted* connection (it carries a peer) gets full-size frames and
  :func:`crust.config.unfinished_limit`.  The control requests it makes of
  us (heartbeat probes, ``EchoAddrReq``, ``PeerExchangeRequest``) draw on a
  :class:`RequestRate` token bucket: a burst of ``CONTROL_BURST``, refilled
  at ``CONTROL_RATE`` a second.  An honest peer asks about once a
  heartbeat interval; a peer that asks faster is dropped and reported
  (``on_misbehaviour(peer, "flood: ...")``), which bounds the work its
  questions cost us per byte it sends.  The answers go through the peer's
  outbox, one per kind (:meth:`crust.outbox.Outbox.push_control`), so they
  wait for the write window like everything else.
"""

from __future__ import annotations

from ..channel import MAX_FRAME_PLAINTEXT, SecureChannel
from ..config import Config

__all__ = ["PRE_GRANT_FRAME", "PRE_GRANT_ECHOES", "CONTROL_BURST", "CONTROL_RATE", "RequestRate",
           "limit_pre_grant", "limit_granted"]

PRE_GRANT_FRAME = 4096  # plaintext bytes per frame before a grant: BootstrapRequest with 32 listeners is < 1 KiB
PRE_GRANT_ECHOES = 1  # EchoAddrReq answered on a connection before it is granted
CONTROL_BURST = 64  # control requests a peer may make at once
CONTROL_RATE = 32.0  # ... and per second over time (an honest peer: one per heartbeat interval)


def limit_pre_grant(channel: SecureChannel) -> None:
    """Hold a just-secured connection to the smallest budget until it is granted."""
    channel.set_limits(max_frame=PRE_GRANT_FRAME, unfinished=0)


def limit_granted(channel: SecureChannel, config: Config) -> None:
    """Give a granted connection the full budget: full-size frames, unfinished messages up to the limit."""
    channel.set_limits(max_frame=MAX_FRAME_PLAINTEXT, unfinished=config.unfinished_limit)


class RequestRate:
    """A token bucket for one peer's control requests: ``CONTROL_BURST`` at once, ``CONTROL_RATE`` a second.

    Args:
        now: when the bucket starts (full).
    """

    __slots__ = ("_tokens", "_at")

    def __init__(self, now: float) -> None:
        self._tokens = float(CONTROL_BURST)
        self._at = now

    def take(self, now: float) -> bool:
        """Count one request at ``now``; False when the peer asked too often."""
        tokens = min(float(CONTROL_BURST), self._tokens + max(0.0, now - self._at) * CONTROL_RATE)
        self._at = max(self._at, now)
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True
