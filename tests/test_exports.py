"""The public surface of ``crust``, pinned (trio's test_exports).

Changing what ``import crust`` offers must be a deliberate act: add the name
here, in ``crust/__init__.py`` and in the docs, or the suite fails.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

import crust

# The documented surface (API.md), in crust/__init__.py's order.
EXPORTS = [
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

# Names API.md promises that are not built yet; each moves into EXPORTS when it lands.
PLANNED: list[str] = []

# Every top-level name API.md mentions.
API_MD_NAMES = [
    "Service", "Config", "Identity", "PeerId", "Endpoint", "Contact", "CrustUser", "PeerInfo", "MSG_DROP_PRIORITY",
    "CrustError", "ServiceClosed", "PeerNotFound", "MessageTooLarge", "SendTimeout", "ListenerError",
    "BootstrapFailed", "ConnectError", "ConnectToSelf", "PrivConnectionInfo", "PubConnectionInfo",
    "read_config_file",
]


def test_all_is_the_documented_list() -> None:
    assert crust.__all__ == EXPORTS


def test_every_export_exists() -> None:
    for name in crust.__all__:
        assert hasattr(crust, name), name


def test_api_md_names_are_exported_or_planned() -> None:
    missing = [name for name in API_MD_NAMES if name not in EXPORTS and name not in PLANNED]
    assert not missing
    landed = [name for name in PLANNED if hasattr(crust, name)]
    assert not landed, f"{landed} exist now: move them from PLANNED to EXPORTS"


def test_version() -> None:
    from crust._version import __version__

    assert crust.__version__ == __version__
    assert all(part.isdigit() for part in __version__.split(".")[:3])


def test_exported_classes_claim_the_crust_module() -> None:
    classes = [getattr(crust, name) for name in crust.__all__ if isinstance(getattr(crust, name), type)]
    assert classes
    wrong = {cls.__name__: cls.__module__ for cls in classes if cls.__module__ != "crust"}
    assert not wrong


def test_errors_derive_from_crust_error() -> None:
    errors = [getattr(crust, name) for name in crust.__all__
              if isinstance(getattr(crust, name), type) and issubclass(getattr(crust, name), BaseException)]
    for cls in errors:
        if cls is crust.InsecureKeyFileWarning:
            assert issubclass(cls, UserWarning)
        else:
            assert issubclass(cls, crust.CrustError), cls
    # The builtins a Python user would catch (API.md: timeouts are TimeoutErrors, bad input ValueErrors).
    assert issubclass(crust.SendTimeout, TimeoutError)
    assert issubclass(crust.CrustTimeoutError, TimeoutError)
    assert issubclass(crust.MessageTooLarge, ValueError)
    assert issubclass(crust.ConfigError, ValueError)
    assert issubclass(crust.PeerNotFound, KeyError)


def _samples() -> list[Any]:
    pid = crust.PeerId(bytes(range(32)))
    addr = crust.Endpoint("127.0.0.1", 5483)
    info = crust.PeerInfo(id=pid, addr=addr, transport="tcp", user=crust.CrustUser.NODE, origin="connect")
    return [
        crust.Config(),
        pid,
        addr,
        crust.Contact(addr, pid),
        info,
        crust.PeerConnected(info),
        crust.MessageReceived(pid, b"data"),
        crust.PeerLost(pid, "closed"),
        crust.BootstrapFinished(1, pid),
        crust.SendDropped(pid, 2, 1),
        crust.Misbehaved(pid, "garbage"),
        crust.PrivConnectionInfo(pid, (addr,), bytes(16)),
        crust.PubConnectionInfo(pid, (addr,), bytes(16)),
    ]


@pytest.mark.parametrize("value", _samples(), ids=lambda v: type(v).__name__)
def test_value_types_are_frozen(value: Any) -> None:
    if isinstance(value, crust.PeerId):  # a bytes subclass with no instance dict: immutable as bytes are
        with pytest.raises(AttributeError):
            value.raw = bytes(32)
        with pytest.raises(AttributeError):
            value.anything = 1
        return
    assert dataclasses.is_dataclass(value)
    assert getattr(type(value), "__dataclass_params__").frozen
    first = dataclasses.fields(value)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):  # an AttributeError
        setattr(value, first, getattr(value, first))


def test_value_types_are_hashable() -> None:
    for value in _samples():
        hash(value)
