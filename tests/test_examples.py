"""What users run first: ``python -m crust demo`` and the examples, as real subprocesses.

Each runs on 127.0.0.1 only, in its own interpreter (the suite's in-process
network guard does not reach it, so the command lines themselves keep to
loopback).
"""

from __future__ import annotations

import os
import py_compile
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 60  # seconds per subprocess


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # this checkout, even if another crust is installed
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
        capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


@pytest.mark.timeout(RUN_TIMEOUT + 10)
def test_demo_runs_and_prints_one_row_per_peer() -> None:
    proc = run("-m", "crust", "demo", "--peers", "3", "--messages", "20")
    assert proc.returncode == 0, explain(proc)
    lines = proc.stdout.splitlines()
    header = [i for i, line in enumerate(lines) if line.split()[:4] == ["peer", "addr", "transport", "origin"]]
    assert len(header) == 1, explain(proc)
    assert "rtt ms" in lines[header[0]] and "bytes sent" in lines[header[0]], explain(proc)
    rows = []
    for line in lines[header[0] + 1:]:
        if not line.strip():
            break
        rows.append(line.split())
    assert len(rows) == 3, explain(proc)
    for peer, addr, transport, origin, rtt, sent, received in rows:
        assert re.fullmatch(r"[0-9a-f]{8}", peer)
        assert addr.startswith("127.0.0.1:")
        assert origin == "bootstrap_accept"
        assert rtt == "-" or float(rtt) >= 0
        assert int(sent.replace(",", "")) > 0 and int(received.replace(",", "")) > 0
    assert len({row[0] for row in rows}) == 3  # three different peers
    assert [row[2] for row in rows] == ["tcp", "udp", "tcp"]  # peers alternate between the seed's endpoints
    assert "3 peers sent 20 messages each; 60 echoes came back" in proc.stdout, explain(proc)


@pytest.mark.timeout(RUN_TIMEOUT + 10)
def test_demo_timeout_fails_with_a_message() -> None:
    proc = run("-m", "crust", "demo", "--peers", "2", "--messages", "5", "--timeout", "0")
    assert proc.returncode == 1, explain(proc)
    assert proc.stderr.startswith("python -m crust demo: "), explain(proc)
    assert len(proc.stderr.splitlines()) == 1, explain(proc)


def test_no_command_prints_usage() -> None:
    proc = run("-m", "crust")
    assert proc.returncode == 2, explain(proc)
    assert "usage: python -m crust" in proc.stdout and "demo" in proc.stdout, explain(proc)


def test_help() -> None:
    proc = run("-m", "crust", "--help")
    assert proc.returncode == 0, explain(proc)
    assert "demo" in proc.stdout
    proc = run("-m", "crust", "demo", "--help")
    assert proc.returncode == 0, explain(proc)
    assert "--peers" in proc.stdout and "--messages" in proc.stdout


def test_demo_rejects_bad_arguments() -> None:
    proc = run("-m", "crust", "demo", "--peers", "0")
    assert proc.returncode == 2, explain(proc)
    assert "--peers" in proc.stderr


@pytest.mark.timeout(RUN_TIMEOUT + 10)
def test_echo_example() -> None:
    proc = run("examples/echo.py")
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout == "echo: hello\n", explain(proc)


def test_chat_example_compiles(tmp_path: Path) -> None:
    py_compile.compile(str(ROOT / "examples" / "chat.py"), cfile=str(tmp_path / "chat.pyc"), doraise=True)


def test_readme_quickstart_is_examples_echo() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    source = (ROOT / "examples" / "echo.py").read_text(encoding="utf-8")
    code = source.split('"""', 2)[2].strip()  # echo.py without its docstring
    assert f"```python\n{code}\n```" in readme, "README's quickstart drifted from examples/echo.py"


def test_readme_opens_with_the_commands_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n(.*?)\n```", readme, flags=re.S)
    assert blocks[:2] == ["pip install -e . && python -m crust demo",
                          "pip install -e '.[test]' && python -m pytest -q"]
    first_content = readme.split("\n", 1)[1].lstrip()
    assert first_content.startswith("```sh\npip install -e . && python -m crust demo\n```")
    test_command = blocks[1].split(" && ", 1)[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(rf"^{re.escape(test_command)} \|\| status=\$\?$", ci, flags=re.M), \
        f".ci/run does not run the README's test command {test_command!r}"
