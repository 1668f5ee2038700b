"""The node as one sans-IO state machine: :class:`Engine` (``engine.py``), split by concern.

``core`` (connection table, timers, output sink), ``peers`` (duplicate
rule, liveness, flushing), ``admission`` (bootstrap requests to us),
``runs`` (our bootstrap runs), ``rendezvous`` (``connect()``), ``punch``
(hole punching), ``external`` (our external addresses, address echoes),
``peer_exchange`` and ``mesh`` (contacts from peers, growing to
``target_peers``), ``circuits`` and ``relay`` (relayed connections, as an
end and as the relay; ``relay_routing`` says which a record is for) and
``upgrade`` (leaving a relay for a direct path) share one ``Core``.
``backpressure`` decides when the shell pauses and resumes reading a peer;
``limits`` sets the per-connection budgets.
"""

from .engine import Engine
from .peers import WRITE_WINDOW

__all__ = ["Engine", "WRITE_WINDOW"]
