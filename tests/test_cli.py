"""``python -m crust``: every command, run as a real subprocess on loopback.

The commands that start a node read a config file written here that keeps
them on 127.0.0.1 (no UPnP, LAN beacons to 127.255.255.255 on a port of
their own, no bootstrap cache).  The nodes they talk to are Services in this
process (tests/livenet.py) or other command-line processes.
"""

from __future__ import annotations

import ast
import json
import os
import re
import select
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import crust
from tests.lines import Program
from tests.livenet import Net, Recorder

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 60  # seconds per subprocess
NETWORK = "cli-test"
HEX64 = r"[0-9a-f]{64}"

pytestmark = pytest.mark.slow


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT))  # this checkout, even if another crust is installed


def cli(*args: str, cwd: Path = ROOT, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crust", *args], cwd=cwd, env=env(), input=stdin,
                          stdin=None if stdin is not None else subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def loopback_config(path: Path, **fields: Any) -> Path:
    """A config file that keeps a node on loopback."""
    data = dict(listen_host="127.0.0.1", enable_upnp=False, service_discovery_targets=["127.255.255.255"],
                service_discovery_port=free_udp_port(), service_discovery_window=0.5, bootstrap_cache_path=None,
                network_name=NETWORK, **fields)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def seed(net: Net, **overrides: Any) -> tuple[crust.Service, Recorder, crust.Endpoint]:
    """A listening Service in this process, on the CLI tests' network, TCP and UDP."""
    svc = net.service(network_name=NETWORK, enable_udp=True, heartbeat_interval=0.2, **overrides)
    rec = Recorder(svc)
    endpoint = svc.start_listening()[0]
    assert endpoint.host == "127.0.0.1" and endpoint.transport == "tcp"
    return svc, rec, endpoint


# -- the parser: --version, --help, bad arguments ------------------------------------------

def test_version() -> None:
    proc = cli("--version")
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout == f"crust {crust.__version__}\n"


COMMANDS = [[], ["demo"], ["info"], ["identity"], ["identity", "show"], ["identity", "new"], ["config"],
            ["config", "check"], ["ping"], ["chat"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_help_everywhere(command: list[str]) -> None:
    proc = cli(*command, "--help")
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout.startswith(f"usage: {' '.join(['python -m crust', *command])} "), explain(proc)
    assert proc.stderr == ""


BAD = [
    (["bogus"], "invalid choice: 'bogus'"),
    (["demo", "--peers", "0"], "--peers: must be at least 1, not 0"),
    (["demo", "--timeout", "soon"], "--timeout: not a number of seconds"),
    (["ping"], "required: ENDPOINT"),
    (["ping", "not-an-endpoint"], "ENDPOINT: not an endpoint"),
    (["ping", "127.0.0.1:1", "--count", "x"], "--count: not a whole number"),
    (["identity"], "required: ACTION"),
    (["identity", "frob"], "invalid choice: 'frob'"),
    (["config", "check"], "required: FILE"),
    (["info", "--wait", "-1"], "--wait: must be 0 or more seconds"),
    (["chat", "--contact", "127.0.0.1"], "--contact: not an endpoint"),
]


@pytest.mark.parametrize("args, reason", BAD, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_bad_arguments_are_one_line_and_exit_2(args: list[str], reason: str) -> None:
    proc = cli(*args)
    assert proc.returncode == 2, explain(proc)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, explain(proc)
    assert lines[0].startswith("python -m crust") and reason in lines[0], explain(proc)


def test_no_command_prints_the_command_list() -> None:
    proc = cli()
    assert proc.returncode == 2, explain(proc)
    for command in ("demo", "info", "identity", "config", "ping", "chat"):
        assert re.search(rf"^    {command} ", proc.stdout, flags=re.M), explain(proc)


# -- identity ------------------------------------------------------------------------------

def test_identity_new_then_show(tmp_path: Path) -> None:
    proc = cli("identity", "new", "node.key", cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    peer_id = re.fullmatch(rf"peer id  ({HEX64})\nfile     node.key \(mode 0600\)\n", proc.stdout)
    assert peer_id, explain(proc)
    key = tmp_path / "node.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert str(crust.Identity.load(key).peer_id) == peer_id.group(1)  # the file holds the printed identity

    proc = cli("identity", "show", "node.key", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", explain(proc)
    assert proc.stdout.startswith(f"peer id  {peer_id.group(1)}\n")

    # No silent replacement: the old identity would be lost.
    proc = cli("identity", "new", "node.key", cwd=tmp_path)
    assert proc.returncode == 1, explain(proc)
    assert proc.stderr == "python -m crust identity new: node.key exists; add --force to replace it " \
                          "(its old identity is then lost)\n"
    assert str(crust.Identity.load(key).peer_id) == peer_id.group(1)
    proc = cli("identity", "new", "node.key", "--force", cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert peer_id.group(1) not in proc.stdout


def test_identity_show_warns_about_a_readable_key_and_fails_on_a_bad_file(tmp_path: Path) -> None:
    crust.Identity.generate().save(tmp_path / "open.key")
    os.chmod(tmp_path / "open.key", 0o644)
    proc = cli("identity", "show", "open.key", cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert proc.stderr.startswith("warning: identity file 'open.key' has mode 0644"), explain(proc)
    assert "(mode 0644)" in proc.stdout

    (tmp_path / "junk.key").write_text("hello\n")
    proc = cli("identity", "show", "junk.key", cwd=tmp_path)
    assert proc.returncode == 1, explain(proc)
    assert proc.stderr.startswith("python -m crust identity show: identity file 'junk.key' is corrupt"), explain(proc)
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1


# -- config check --------------------------------------------------------------------------

def test_config_check_lists_what_differs_from_the_defaults(tmp_path: Path) -> None:
    (tmp_path / "good.json").write_text(json.dumps({"network_name": "lan", "tcp_acceptor_port": 5483}))
    proc = cli("config", "check", "good.json", cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    assert proc.stdout == ("good.json: ok; 2 settings differ from the default:\n"
                           "  tcp_port = 5483\n  network_name = \"lan\"\n"), explain(proc)
    (tmp_path / "empty.json").write_text("{}")
    proc = cli("config", "check", "empty.json", cwd=tmp_path)
    assert proc.stdout == "empty.json: ok; every setting is the default\n", explain(proc)


@pytest.mark.parametrize("content, reason", [
    ('{"listen_host": "nope"}', "bad.json: listen_host must be an IP address, not 'nope'"),
    ('{"tcp_prot": 1}', "bad.json: unknown config field(s): tcp_prot"),
    ('{"heartbeat_interval": 200}', "inactivity_timeout (120.0) must exceed heartbeat_interval (200)"),
    ("{", "cannot read config file 'bad.json'"),
])
def test_config_check_reports_the_error_on_one_line(tmp_path: Path, content: str, reason: str) -> None:
    (tmp_path / "bad.json").write_text(content)
    proc = cli("config", "check", "bad.json", cwd=tmp_path)
    assert proc.returncode == 1, explain(proc)
    assert proc.stdout == "" and len(proc.stderr.splitlines()) == 1, explain(proc)
    assert proc.stderr.startswith("python -m crust config check: ") and reason in proc.stderr, explain(proc)


# -- ping ----------------------------------------------------------------------------------

def test_ping_prints_round_trip_times_as_the_given_identity(net: Net, tmp_path: Path) -> None:
    svc, rec, endpoint = seed(net)
    config = loopback_config(tmp_path / "node.json")
    identity = crust.Identity.generate()
    identity.save(tmp_path / "me.key")
    proc = cli("ping", str(endpoint), "--config", str(config), "--identity", "me.key", "--count", "3",
               "--interval", "0.1", "--peer-id", str(svc.id), cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    lines = proc.stdout.splitlines()
    assert re.fullmatch(rf"connected to {str(svc.id)[:8]} at {re.escape(str(endpoint))} over tcp in [0-9.]+ ms "
                        r"\(handshakes included\)", lines[0]), explain(proc)
    rtts = [float(m.group(1)) for line in lines[1:4] if (m := re.fullmatch(r"rtt ([0-9.]+) ms \(seq \d\)", line))]
    assert len(rtts) == 3 and all(0 < rtt < 1000 for rtt in rtts), explain(proc)
    assert re.fullmatch(rf"3 round trips to {str(svc.id)[:8]}: min [0-9.]+ / avg [0-9.]+ / max [0-9.]+ ms", lines[4])
    assert [info.id for info in rec.new_peers] == [identity.peer_id]  # it ran as the saved identity


def test_ping_fails_on_one_line(net: Net, tmp_path: Path) -> None:
    svc, _, endpoint = seed(net)
    config = loopback_config(tmp_path / "node.json")
    other = str(crust.Identity.generate().peer_id)
    proc = cli("ping", str(endpoint), "--config", str(config), "--peer-id", other, "--timeout", "5", cwd=tmp_path)
    assert proc.returncode == 1, explain(proc)
    assert proc.stderr.startswith(f"python -m crust ping: cannot reach {endpoint}: bootstrap failed"), explain(proc)
    assert len(proc.stderr.splitlines()) == 1
    proc = cli("ping", str(endpoint), "--config", str(config), "--network", "elsewhere", "--timeout", "5",
               cwd=tmp_path)
    assert proc.returncode == 1, explain(proc)


# -- info ----------------------------------------------------------------------------------

def parse_info(stdout: str) -> dict[str, str]:
    return {key: value for key, value in (re.split(r"\s{2,}", line, maxsplit=1) for line in stdout.splitlines())}


def test_info_shows_identity_listeners_and_what_a_peer_sees(net: Net, tmp_path: Path) -> None:
    svc, _, endpoint = seed(net)
    config = loopback_config(tmp_path / "node.json")
    proc = cli("info", "--config", str(config), "--contact", str(endpoint), "--wait", "10", cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    info = parse_info(proc.stdout)
    assert info["crust"] == f"{crust.__version__}, network {NETWORK}"
    assert re.fullmatch(HEX64, info["peer id"])
    assert re.fullmatch(r"127\.0\.0\.1:\d+, udp://127\.0\.0\.1:\d+", info["listening"]), explain(proc)
    assert info["peers"] == f"1 peer: {str(svc.id)[:8]} at {endpoint} over tcp", explain(proc)
    # On loopback the peer sees our own sockets: no NAT, but one observer cannot confirm it.
    assert re.match(r"external 127\.0\.0\.1:\d+ \(local 127\.0\.0\.1:\d+\), mapping none, unconfirmed by 1 observer",
                    info["tcp"]), explain(proc)
    assert re.match(r"external udp://127\.0\.0\.1:\d+ \(local udp://127\.0\.0\.1:\d+\), mapping none",
                    info["udp"]), explain(proc)
    assert info["nat type"] == "none: peers see our own address"
    assert info["upnp"] == "off (enable_upnp is false)"


def test_info_without_peers_knows_only_the_local_side(tmp_path: Path) -> None:
    config = loopback_config(tmp_path / "node.json", enable_udp=False)
    proc = cli("info", "--config", str(config), "--wait", "2", cwd=tmp_path)
    assert proc.returncode == 0, explain(proc)
    info = parse_info(proc.stdout)
    assert info["peers"] == "none (bootstrap failed: no contacts to try)", explain(proc)
    assert re.fullmatch(r"127\.0\.0\.1:\d+", info["listening"])
    assert info["udp"] == "disabled"
    assert info["nat type"] == "unknown: no peer has said where it sees us"


# -- chat ----------------------------------------------------------------------------------

def chat(tmp_path: Path, config: Path, *args: str, name: str) -> Program:
    return Program([sys.executable, "-m", "crust", "chat", "--config", str(config), *args], cwd=tmp_path,
                   env=env(), name=name)


def started(program: Program) -> tuple[str, str]:
    """(short id, connection info) from a chat's first lines."""
    me = program.expect(r"^\* you are ([0-9a-f]{8}), listening on 127\.0\.0\.1:\d+", 20).group(1)
    info = program.expect(r"^\* connection info: ([A-Za-z0-9_-]+)$", 10).group(1)
    return me, info


def test_chats_find_each_other_on_the_lan_and_talk(tmp_path: Path) -> None:
    config = loopback_config(tmp_path / "lan.json")
    with chat(tmp_path, config, name="a") as a:
        a_id, _ = started(a)
        a.expect(r"^\* no peer found", 20)  # nobody else yet: a waits to be found
        with chat(tmp_path, config, name="b") as b:
            b_id, _ = started(b)
            b.expect(rf"^\* {a_id} joined \(bootstrap_connect, tcp 127\.0\.0\.1:\d+\)$", 20)
            a.expect(rf"^\* {b_id} joined \(bootstrap_accept, tcp 127\.0\.0\.1:\d+\)$", 20)
            b.send("hello from b \x1b[31m")
            a.expect(rf"^<{b_id}> hello from b \ufffd\[31m$", 10)  # the escape never reaches a terminal
            a.send("/peers")
            a.expect(r"^peer\s+addr\s+transport\s+origin\s+rtt ms$", 10)
            a.expect(rf"^{b_id}\s+127\.0\.0\.1:\d+\s+tcp\s+bootstrap_accept\s", 10)
            b.send("/quit")
            b.expect(r"^\* bye$", 10)
            assert b.stop() == 0, b.output()
        a.expect(rf"^\* {b_id} left$", 10)
        a.send("/nonsense")
        a.expect(r"^\* unknown command /nonsense; commands: /connect <info>", 10)
    assert a.proc.returncode == 0, a.output()  # end of input ends the chat too


def test_chats_connect_by_swapping_connection_info(tmp_path: Path) -> None:
    config = loopback_config(tmp_path / "direct.json")
    with chat(tmp_path, config, "--no-lan", name="c") as c, chat(tmp_path, config, "--no-lan", name="d") as d:
        c_id, c_info = started(c)
        d_id, d_info = started(d)
        c.send("/connect not-connection-info")
        c.expect(r"^\* cannot connect: not connection info", 10)
        c.send(f"/connect {c_info}")
        c.expect(r"^\* cannot connect: .*ourselves", 10)
        # The JSON form works too.
        d_json = crust.PubConnectionInfo.from_bytes(_unb64(d_info)).to_json()
        c.send(f"/connect {d_json}")
        c.expect(rf"^\* connecting to {d_id}; it must /connect to your info too$", 10)
        d.send(f"/connect {c_info}")
        c.expect(rf"^\* {d_id} joined \(connect, ", 30)
        d.expect(rf"^\* {c_id} joined \(connect, ", 30)
        d.send("straight through")
        c.expect(rf"^<{d_id}> straight through$", 10)


def _unb64(text: str) -> bytes:
    import base64
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -- demo's progress line, and the CLI's own layering -----------------------------------------

def demo_stderr(*args: str, tty: bool = False) -> bytes:
    """Run the demo; its stderr as bytes (a pseudo-terminal's output with ``tty``)."""
    master, slave = os.openpty() if tty else (-1, -1)
    try:
        proc = subprocess.run([sys.executable, "-m", "crust", "demo", *args], cwd=ROOT, env=env(),
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=slave if tty else subprocess.PIPE, timeout=RUN_TIMEOUT)
        assert proc.returncode == 0, proc.stderr
        if not tty:
            return proc.stderr
        out = b""
        for _ in range(1000):  # bounded: the child has exited, only what it wrote is left to read
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                break
            out += os.read(master, 65536)
        return out
    finally:
        if tty:
            os.close(master)
            os.close(slave)


def test_demo_progress_line_only_when_asked_or_on_a_terminal() -> None:
    for stderr in (demo_stderr("--peers", "2", "--messages", "50", "--progress"),
                   demo_stderr("--peers", "2", "--messages", "50", tty=True)):
        assert b"\rbootstrapping: 0/2 peers connected" in stderr, stderr
        assert b"\recho" in stderr and b"echoed 100/100" in stderr, stderr
        assert stderr.endswith(b"\r"), "the progress line is cleared at the end"
    assert demo_stderr("--peers", "1", "--messages", "5") == b""  # a pipe gets no carriage returns
    assert demo_stderr("--peers", "1", "--messages", "5", "--no-progress", tty=True) == b""


def test_the_cli_uses_only_the_public_api() -> None:
    for path in sorted((ROOT / "crust" / "cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert node.module.split(".")[0] != "crust", f"{path.name}: from {node.module} import ..."
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 1, f"{path.name}: relative import above crust.cli"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name == "crust" or not alias.name.startswith("crust."), f"{path.name}: {alias.name}"
