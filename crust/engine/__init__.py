"""The node as one sans-IO state machine: :class:`Engine` (``engine.py``), split by concern.

``core`` (connection table, timers, output sink), ``peers`` (duplicate rule,
liveness, flushing), ``admission`` (bootstrap requests to us), ``runs`` (our
bootstrap runs) and ``rendezvous`` (``connect()``) share one ``Core``.
``backpressure`` decides when the shell pauses and resumes reading a peer.
"""

from .engine import Engine
from .peers import WRITE_WINDOW

__all__ = ["Engine", "WRITE_WINDOW"]
