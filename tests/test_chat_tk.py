"""examples/chat_tk.py under a virtual X display: two windows, a line typed in one appears in the other.

Xvfb (``-nolisten tcp``: a Unix socket only) gives the display, xdotool types
real X key events into window B's input line, and the line must show up in
window A, which got it over crust.  A screenshot of both windows is saved
as ``chat_tk.png`` in the test's tmp_path (``--basetemp`` keeps it).

The tools come from .ci/run (Debian: xvfb, xdotool, imagemagick, and Tk
for Python's ``tkinter``).  Without them the test skips and says which is
missing; under CI=true it fails instead, since CI installs them.
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.lines import Program

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "chat_tk.py"
WAIT = 20.0  # seconds for each step a loaded machine may be slow at (start-up, bootstrap, a window mapping)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def missing_tools() -> list[str]:
    missing = [tool for tool in ("Xvfb", "xdotool", "import") if shutil.which(tool) is None]
    probe = subprocess.run([sys.executable, "-c", "import tkinter"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        missing.append(f"tkinter ({probe.stderr.strip().splitlines()[-1]})")
    return missing


@pytest.fixture
def display() -> Iterator[str]:
    """A fresh Xvfb display (its number chosen by Xvfb), stopped after the test."""
    missing = missing_tools()
    if missing:
        message = f"the Tk example test needs {', '.join(missing)} (.ci/run installs them)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    read_fd, write_fd = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(write_fd), "-nolisten", "tcp", "-screen", "0", "1000x340x24"],
                            pass_fds=(write_fd,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    os.close(write_fd)
    try:
        ready, _, _ = select.select([read_fd], [], [], WAIT)
        number = os.read(read_fd, 64).decode().strip() if ready else ""
        assert number.isdigit(), f"Xvfb did not report its display within {WAIT} s (exit {xvfb.poll()})"
        yield f":{number}"
    finally:
        os.close(read_fd)
        xvfb.terminate()
        try:
            xvfb.wait(10)
        except subprocess.TimeoutExpired:
            xvfb.kill()
            xvfb.wait(10)


def x_tool(display: str, *argv: str) -> str:
    proc = subprocess.run(list(argv), env=dict(os.environ, DISPLAY=display), capture_output=True, text=True,
                          timeout=WAIT)
    assert proc.returncode == 0, f"{argv}: exit {proc.returncode}: {proc.stderr}"
    return proc.stdout


def test_a_line_typed_in_one_window_appears_in_the_other(display: str, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), DISPLAY=display)
    seed_argv = [sys.executable, str(EXAMPLE), "--listen", "--port", "0", "--geometry", "480x320+0+0"]
    with Program(seed_argv, cwd=tmp_path, env=env, name="window A") as a:
        endpoint = a.expect(r"^\* listening on (127\.0\.0\.1:\d+)", WAIT).group(1)
        b_argv = [sys.executable, str(EXAMPLE), endpoint, "--geometry", "480x320+500+0"]
        with Program(b_argv, cwd=tmp_path, env=env, name="window B") as b:
            a_id = b.expect(r"^\* ([0-9a-f]{8}) joined$", WAIT).group(1)
            b_id = a.expect(r"^\* ([0-9a-f]{8}) joined$", WAIT).group(1)

            # Type into B's window with real X key events (XTEST), as a user would.
            window = x_tool(display, "xdotool", "search", "--sync", "--onlyvisible", "--name",
                            f"^crust chat {b_id}$").split()[0]
            x_tool(display, "xdotool", "windowfocus", "--sync", window)
            x_tool(display, "xdotool", "type", "--delay", "20", "hello from the keyboard")
            x_tool(display, "xdotool", "key", "Return")

            b.expect(rf"^{b_id}: hello from the keyboard$", WAIT)  # B shows its own line...
            a.expect(rf"^{b_id}: hello from the keyboard$", WAIT)  # ...and A got it over crust
            shot = tmp_path / "chat_tk.png"
            x_tool(display, "import", "-window", "root", str(shot))
            assert shot.stat().st_size > 1000, "the screenshot is empty"
            assert a_id != b_id
