"""Service(config, watch=path): a changed config file's whitelists reach live peers; a broken edit is skipped."""

from __future__ import annotations

import logging
import pathlib
import threading
import time
from typing import Any

import pytest

import crust

from .livenet import WAIT, Net


def _write(path: pathlib.Path, settings: dict[str, Any], **changes: Any) -> None:
    crust.Config.from_dict(dict(settings, **changes)).save(path)


def test_editing_the_watched_whitelist_drops_a_peer_it_now_excludes(
        net: Net, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "node.json"
    settings = dict(net.config().to_dict(), config_reload_interval=0.05)
    _write(path, settings)
    a = crust.Service(crust.Config.load(path), watch=path)
    net.services.append(a)
    lost = net.event()
    a.on_lost(lambda peer_id: lost.set())
    a_ep = a.start_listening()[0]
    b, rb = net.client(str(a_ep))
    assert b.bootstrap(timeout=WAIT) == a.id

    # A broken edit is logged and skipped: the peer stays.
    caplog.set_level(logging.WARNING, logger="crust")
    path.write_text("{ not json")
    assert _wait_for(lambda: any("was not applied" in r.getMessage() for r in caplog.records))
    assert a.is_connected(b.id)

    _write(path, settings, whitelisted_node_ips=["127.0.0.1"])  # still admits B
    _write(path, settings, whitelisted_node_ips=["127.0.0.9"], max_peers=7)
    assert lost.wait(WAIT), "A kept a peer its new whitelist excludes"
    rb.wait(lambda: rb.lost == [a.id], what="B seeing the Goodbye")
    assert not a.is_connected(b.id)
    assert any("max_peers" in r.getMessage() for r in caplog.records)  # not applied live, and it says so
    with pytest.raises(crust.BootstrapFailed) as failed:
        b.bootstrap(timeout=WAIT)
    assert failed.value.reasons == {str(a_ep): "denied: node_not_whitelisted"}


def test_watch_alone_reads_the_file_and_checks_its_argument(net: Net, tmp_path: pathlib.Path) -> None:
    path = tmp_path / "node.json"
    _write(path, net.config().to_dict(), network_name="from-the-file")
    svc = crust.Service(watch=str(path))
    net.services.append(svc)
    assert svc._config.network_name == "from-the-file"
    with pytest.raises(TypeError, match="watch"):
        crust.Service(net.config(), watch=3)  # type: ignore[arg-type]
    with pytest.raises(crust.ConfigError):
        crust.Service(watch=tmp_path / "missing.json")


def _wait_for(predicate: Any, timeout: float = WAIT) -> bool:
    """Bounded wait for a log record (no event fires for a skipped reload)."""
    deadline = time.monotonic() + timeout
    tick = threading.Event()
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        tick.wait(0.02)
    return True
