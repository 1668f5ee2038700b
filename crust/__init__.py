"""crust: reliable, encrypted peer-to-peer connections with NAT traversal.

The public surface is exactly ``__all__`` below (see API.md); everything
else lives in private modules and may change.
"""

from ._version import __version__
from .config import Config
from .config_file import read_config_file  # also lends Config its file access (see crust.config)
from .connection_info import PrivConnectionInfo, PubConnectionInfo
from .errors import (
    BootstrapFailed, ConfigError, ConnectError, ConnectToSelf, CrustError, CrustTimeoutError, DecryptError,
    HandshakeError, ListenerError, LocalProtocolError, MessageTooLarge, PeerLostError, PeerNotFound, PeerWaitTimeout,
    ProtocolError, RemoteProtocolError, SendTimeout, ServiceClosed,
)
from .events import (
    BootstrapFinished, Event, MessageReceived, Misbehaved, Origin, PeerConnected, PeerInfo, PeerLost, RelayStats,
    SendDropped,
)
from .identity import Identity, InsecureKeyFileWarning
from .ids import Contact, CrustUser, Endpoint, PeerId
from .nat.observe import MappingBehaviour, NatInfo, TransportNat
from .outbox import DROP_PRIORITY as MSG_DROP_PRIORITY
from .service import Service
from .stats import Stats

__all__ = [
    "__version__",
    # the facade and its settings
    "Service", "Config", "read_config_file", "Identity", "MSG_DROP_PRIORITY",
    # value types
    "PeerId", "Endpoint", "Contact", "CrustUser", "PeerInfo", "PrivConnectionInfo", "PubConnectionInfo",
    "Origin", "NatInfo", "TransportNat", "MappingBehaviour", "Stats", "RelayStats",
    # events (what the callbacks report)
    "Event", "PeerConnected", "MessageReceived", "PeerLost", "BootstrapFinished", "SendDropped", "Misbehaved",
    # errors and warnings
    "CrustError", "ProtocolError", "LocalProtocolError", "RemoteProtocolError", "DecryptError", "HandshakeError",
    "ServiceClosed", "PeerNotFound", "PeerLostError", "MessageTooLarge", "CrustTimeoutError", "SendTimeout",
    "PeerWaitTimeout",
    "ConfigError", "ListenerError", "BootstrapFailed", "ConnectError", "ConnectToSelf", "InsecureKeyFileWarning",
]

# Show the public path in reprs, tracebacks and docs (trio's trick): crust.PeerId, not crust.ids.PeerId.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith("crust."):
        _obj.__module__ = "crust"
del _name, _obj
