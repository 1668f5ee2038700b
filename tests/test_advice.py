"""Errors say what to do: coupled limits in one message, port 0 and non-positive timeouts refused, CLI too.

(The reachability denial's advice is checked where it happens, in
test_service.py's reachability test.)
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import crust

from .livenet import WAIT, Net

ROOT = Path(__file__).resolve().parent.parent


def test_raising_max_message_size_names_every_coupled_limit_at_once() -> None:
    big = 16 * 1024 * 1024
    with pytest.raises(crust.ConfigError) as info:
        crust.Config(max_message_size=big)
    text = str(info.value)
    assert "send_queue_limit (8388608)" in text and "receive_backlog_limit (8388608)" in text
    suggested = f"Config(max_message_size={big}, send_queue_limit={4 * big}, receive_backlog_limit={4 * big})"
    assert suggested in text
    crust.Config(max_message_size=big, send_queue_limit=4 * big, receive_backlog_limit=4 * big)  # the advice works
    with pytest.raises(crust.ConfigError) as info:
        crust.Config(max_message_size=big, send_queue_limit=4 * big)
    assert "receive_backlog_limit" in str(info.value) and "send_queue_limit" not in str(info.value)


@pytest.mark.parametrize("contact", ["127.0.0.1:0", ("127.0.0.1", 0), "udp://[::1]:0"])
def test_port_0_is_refused_as_a_contact(contact: object) -> None:
    with pytest.raises(crust.ConfigError, match="port 0"):
        crust.Config(hard_coded_contacts=[contact])


def test_non_positive_timeouts_are_refused_everywhere(net: Net) -> None:
    svc = net.service()
    info = svc.prepare_connection_info(timeout=5.0)
    theirs = net.service().prepare_connection_info(timeout=5.0).to_pub()
    calls = {
        "bootstrap": lambda t: svc.bootstrap(timeout=t),
        "connect": lambda t: svc.connect(info, theirs, timeout=t),
        "prepare_connection_info": lambda t: svc.prepare_connection_info(timeout=t),
        "has_peers_on_lan": lambda t: svc.has_peers_on_lan(timeout=t),
        "wait_for_peer": lambda t: svc.wait_for_peer(timeout=t),
        "close": lambda t: svc.close(timeout=t),
    }
    for name, call in calls.items():
        for bad in (0, -1, float("nan")):
            with pytest.raises(ValueError, match="positive"):
                call(bad)
        with pytest.raises(TypeError):
            call("1")
    for bad in (-1, float("nan")):  # zero means "do not wait" for these two
        with pytest.raises(ValueError):
            svc.run_callbacks(bad)
    assert not svc._closed  # a refused close() closed nothing


@pytest.mark.parametrize("argv", [
    ["demo", "--timeout", "-1"], ["demo", "--timeout", "0"], ["ping", "127.0.0.1:0"],
    ["ping", "127.0.0.1:5483", "--timeout", "0"], ["info", "--contact", "127.0.0.1:0"],
])
def test_the_cli_refuses_bad_timeouts_and_port_0_on_one_line(argv: list[str]) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "crust", *argv], capture_output=True, text=True, timeout=60,
                            env=env, cwd=ROOT)
    assert result.returncode == 2, result.stderr
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr


def test_a_message_over_the_receivers_limit_is_reported_to_the_sender_with_what_to_do(
        net: Net, caplog: pytest.LogCaptureFixture) -> None:
    small = 1024 * 1024
    a, ra, a_ep = net.listener(max_message_size=small, send_queue_limit=4 * small, receive_backlog_limit=4 * small)
    b, rb = net.client(str(a_ep))  # the default max_message_size: 2 MiB
    assert b.bootstrap(timeout=WAIT) == a.id
    reasons: list[str | None] = []
    asked = net.event()

    @b.on_lost
    def why(pid: crust.PeerId) -> None:
        reasons.append(b.lost_reason(pid))  # asked from inside on_lost
        asked.set()

    caplog.set_level(logging.WARNING, logger="crust")
    b.send(a.id, b"x" * (small + small // 2))
    ra.wait(lambda: len(ra.misbehaviour) == 1, what="A refusing the message")
    assert "exceeds 1048576 bytes" in ra.misbehaviour[0][1]
    rb.wait(lambda: rb.lost == [a.id], what="B losing A")
    assert asked.wait(WAIT)
    assert reasons == ["closed by peer (message_too_large)"]
    assert b.lost_reason(a.id) == "closed by peer (message_too_large)"
    advice = [r.getMessage() for r in caplog.records if "exceeded its max_message_size" in r.getMessage()]
    assert advice and "smaller messages" in advice[0] and "PeerId(" in advice[0]
    assert a.lost_reason(b.id) is not None and b.lost_reason(b.id) is None
