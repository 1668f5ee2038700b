"""mypy checks the shape of callback handlers: a handler with the wrong parameters is a type error.

One mypy run over two snippets: handlers of the right shape (as decorators
and as calls, returning anything) must pass, and each wrong one must be
reported on its own line.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

GOOD = '''
from __future__ import annotations
import crust

def use(svc: crust.Service, out: list[object]) -> None:
    @svc.on_new_peer
    def hello(info: crust.PeerInfo) -> None:
        out.append(info.id)

    hello(crust.PeerInfo(crust.Identity.generate().peer_id, crust.Endpoint("127.0.0.1", 1), "tcp",
                         crust.CrustUser.NODE, crust.Origin.CONNECT))  # the decorator kept its type
    svc.on_message(lambda peer_id, data: out.append(data))
    svc.on_lost(out.append)
    svc.on_bootstrap_failed(lambda: None)
    svc.on_connect_failure(lambda peer_id: None)
    svc.on_misbehaviour(lambda peer_id, reason: out.append(reason.upper()))
    svc.on_send_dropped(lambda peer_id, priority, count: out.append(priority + count))
    svc.remove_handler(hello)
'''

# Each line that must fail ends with "# wrong".
BAD = '''
from __future__ import annotations
import crust

def use(svc: crust.Service) -> None:
    svc.on_lost(lambda: None)  # wrong
    svc.on_message(lambda peer_id: None)  # wrong
    svc.on_new_peer(lambda peer_id, data: None)  # wrong
    svc.on_bootstrap_failed(lambda peer_id: None)  # wrong
    svc.on_misbehaviour(lambda peer_id, reason: reason + 1)  # wrong

    def takes_str(text: str) -> None:
        pass
    svc.on_connect_failure(takes_str)  # wrong
    svc.on_send_dropped(takes_str)  # wrong
'''


@pytest.mark.timeout(300)
def test_mypy_rejects_handlers_of_the_wrong_shape(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("mypy", reason="mypy comes with the [test] extra")
    (tmp_path / "good.py").write_text(GOOD)
    (tmp_path / "bad.py").write_text(BAD)
    env = dict(os.environ, MYPYPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-error-summary", "--cache-dir", str(tmp_path / "cache"),
         "good.py", "bad.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=280, env=env,
    )
    output = result.stdout + result.stderr
    errors = re.findall(r"^(good|bad)\.py:(\d+): error", output, flags=re.M)
    assert not [e for e in errors if e[0] == "good"], output
    wrong = {n for n, line in enumerate(BAD.splitlines(), 1) if line.endswith("# wrong")}
    reported = {int(line) for name, line in errors if name == "bad"}
    assert reported == wrong, output
