"""What users run first: ``python -m crust demo`` and the examples, as real subprocesses.

Each runs on 127.0.0.1 only, in its own interpreter (the suite's in-process
network guard does not reach it, so the command lines themselves keep to
loopback).
"""

from __future__ import annotations

import hashlib
import json
import os
import py_compile
import random
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import crust
from tests.lines import Program

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
    proc = run("-m", "crust", "demo", "--peers", "2", "--messages", "5", "--timeout", "0.001")  # 0 is refused
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


@pytest.mark.parametrize("name", ["chat.py", "chat_tk.py"])
def test_interactive_examples_compile(tmp_path: Path, name: str) -> None:
    py_compile.compile(str(ROOT / "examples" / name), cfile=str(tmp_path / "example.pyc"), doraise=True)


def test_readme_quickstart_is_examples_echo() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    source = (ROOT / "examples" / "echo.py").read_text(encoding="utf-8")
    code = source.split('"""', 2)[2].strip()  # echo.py without its docstring
    assert f"```python\n{code}\n```" in readme, "README's quickstart drifted from examples/echo.py"


def test_readme_opens_with_the_commands_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n(.*?)\n```", readme, flags=re.S)
    # The virtual environment first: the two commands after it need its python and pip.
    assert blocks[:3] == ["python3 -m venv .venv && . .venv/bin/activate",
                          "pip install -e . && python -m crust demo",
                          "pip install -e '.[test]' && python -m pytest -q"]
    first_content = readme.split("\n", 1)[1].lstrip()
    assert first_content.startswith("```sh\npython3 -m venv .venv && . .venv/bin/activate\n```")
    test_command = blocks[2].split(" && ", 1)[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(rf"^{re.escape(test_command)} \|\| status=\$\?$", ci, flags=re.M), \
        f".ci/run does not run the README's test command {test_command!r}"


# -- examples/file_transfer.py and examples/lan_party.py, as subprocesses on loopback ----------

def program(*args: str, cwd: Path, name: str) -> Program:
    return Program([sys.executable, *args], cwd=cwd, env=dict(os.environ, PYTHONPATH=str(ROOT)), name=name)


@pytest.mark.timeout(RUN_TIMEOUT + 30)
def test_file_transfer_sends_a_file_and_checks_its_hash(tmp_path: Path) -> None:
    data = random.Random(16).randbytes(3 * 1024 * 1024 + 12345)  # 13 chunks, the last one short
    (tmp_path / "big.bin").write_bytes(data)
    example = str(ROOT / "examples" / "file_transfer.py")
    with program(example, "receive", "--out", "downloads", "--timeout", "60", cwd=tmp_path, name="receiver") as rx:
        endpoint = rx.expect(r"^receiving on (127\.0\.0\.1:\d+)$", RUN_TIMEOUT).group(1)
        sender = subprocess.run([sys.executable, example, "send", "big.bin", endpoint], cwd=tmp_path,
                                env=dict(os.environ, PYTHONPATH=str(ROOT)), stdin=subprocess.DEVNULL,
                                capture_output=True, timeout=RUN_TIMEOUT)
        assert sender.returncode == 0, sender
        assert sender.stdout == f"sent big.bin ({len(data)} bytes); the receiver's sha256 matches\n".encode()
        bar = sender.stderr.split(b"\r")
        assert bar[-1].startswith(b"sending big.bin [" + b"#" * 30 + b"] 100%"), sender.stderr[-200:]
        assert len(bar) > 2, "the progress bar was drawn as the chunks went"
        rx.expect(rf"^received downloads/big.bin \({len(data)} bytes\), "
                  rf"sha256 {hashlib.sha256(data).hexdigest()} ok$", RUN_TIMEOUT)
        assert rx.stop() == 0, rx.output()
    assert (tmp_path / "downloads" / "big.bin").read_bytes() == data


@pytest.mark.timeout(RUN_TIMEOUT + 30)
def test_file_transfer_receiver_refuses_a_file_whose_hash_differs(tmp_path: Path) -> None:
    example = str(ROOT / "examples" / "file_transfer.py")
    with program(example, "receive", "--out", ".", "--timeout", "60", cwd=tmp_path, name="receiver") as rx:
        endpoint = rx.expect(r"^receiving on (127\.0\.0\.1:\d+)$", RUN_TIMEOUT).group(1)
        # A sender whose header promises other bytes than it sends (and a name that tries to escape).
        config = crust.Config(network_name="crust-file-transfer", listen_host="127.0.0.1", enable_upnp=False,
                              bootstrap_cache_path=None, hard_coded_contacts=[endpoint])
        answers: list[bytes] = []
        answered = threading.Event()
        with crust.Service(config) as svc:
            svc.on_message(lambda peer_id, data: (answers.append(data), answered.set()))
            receiver = svc.bootstrap(user=crust.CrustUser.CLIENT, timeout=RUN_TIMEOUT)
            header = {"name": "../escape.txt", "size": 5, "sha256": hashlib.sha256(b"hello").hexdigest()}
            svc.send(receiver, b"H" + json.dumps(header).encode())
            svc.send(receiver, b"D" + b"jello")
            assert answered.wait(RUN_TIMEOUT)
        assert json.loads(answers[0][1:]) == {"ok": False, "sha256": hashlib.sha256(b"jello").hexdigest()}
        rx.expect(r"^received \./escape\.txt \(5 bytes\), but its sha256 [0-9a-f]{64} is not the sender's", 10)
        assert rx.stop() == 1, rx.output()
    assert (tmp_path / "escape.txt").read_bytes() == b"jello" and not (tmp_path.parent / "escape.txt").exists()


@pytest.mark.timeout(RUN_TIMEOUT + 30)
def test_lan_party_guests_find_each_other_by_the_beacon(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])  # the party's own beacon port: no other test hears it
    example = str(ROOT / "examples" / "lan_party.py")
    guests: list[Program] = []
    try:
        for name in ("alice", "bob", "carol"):
            guest = program(example, "--name", name, "--host", "127.0.0.1", "--targets", "127.255.255.255",
                            "--port", port, cwd=tmp_path, name=name)
            guests.append(guest)
            guest.expect(rf"^{name} is at the party, listening on 127\.0\.0\.1:\d+", RUN_TIMEOUT)
        alice, bob, carol = guests
        # Each newcomer bootstraps off whoever answers its beacon, round after round: a full mesh.
        for guest, others in ((alice, {"bob", "carol"}), (bob, {"alice", "carol"}), (carol, {"alice", "bob"})):
            seen = {guest.expect(r"^met (\w+) \([0-9a-f]{8}\); \d so far$", RUN_TIMEOUT).group(1) for _ in others}
            assert seen == others, guest.output()
        for guest in guests:  # end of input: each leaves, naming whom it met
            assert guest.stop() == 0, guest.output()
        assert "alice leaves, having met bob, carol" in alice.output()
    finally:
        for guest in guests:
            guest.stop()


def test_mesh_example_ends_fully_meshed() -> None:
    done = run("examples/mesh.py")
    assert done.returncode == 0, explain(done)
    rows = done.stdout.strip().splitlines()
    assert len(rows) == 5 and all(row.count("'") == 8 for row in rows), explain(done)  # 4 peers each
