"""Keep-alive and idle timeout of an rUDP stream: when to PING, and when the peer counts as gone.

Theory of operation
-------------------
A connected stream that sent nothing for ``keepalive_interval`` sends a
PING, which the peer answers with an ACK: both directions of the NAT mapping
see traffic and each side hears the other.  An unanswered PING is repeated
after an RTO, doubling up to ``keepalive_interval``, as TCP's keepalive
probes are, so that a few lost datagrams in a row cannot starve a live peer
into the idle timeout.  ``idle_timeout`` with nothing heard ends the stream.
"""

from __future__ import annotations

__all__ = ["Keepalive"]


class Keepalive:
    """When we last heard the peer and last sent, and when the next PING is due.

    Attributes:
        interval: seconds of our silence before a PING.
        idle_timeout: seconds of the peer's silence before the stream ends.
        last_heard: when a valid datagram last came from the peer.
        last_sent: when we last sent anything.
    """

    __slots__ = ("interval", "idle_timeout", "last_heard", "last_sent", "_ping_at", "_ping_retry")

    def __init__(self, interval: float, idle_timeout: float, now: float) -> None:
        self.interval = interval
        self.idle_timeout = idle_timeout
        self.last_heard = now
        self.last_sent = now
        self._ping_at = now  # when the last PING left
        self._ping_retry = 0.0  # seconds before an unanswered PING is repeated

    def idle_deadline(self) -> float:
        """When the peer's silence ends the stream."""
        return self.last_heard + self.idle_timeout

    def ping_deadline(self) -> float:
        """When the next PING is due."""
        if self._ping_at <= self.last_heard:  # our last PING was answered (or the peer spoke since)
            return self.last_sent + self.interval
        return self._ping_at + self._ping_retry  # unanswered: retry sooner

    def on_ping_sent(self, now: float, rto: float) -> None:
        """A PING left: a repeat of an unanswered one waits twice as long as the last."""
        unanswered = self._ping_at > self.last_heard
        self._ping_retry = min(self._ping_retry * 2, self.interval) if unanswered else rto
        self._ping_at = now
