"""Bounded reads of a child process's output, one line at a time.

Used by the namespace labs (tests/netlab.py) and by the tests that run the
command line and the examples as subprocesses: a read never blocks past its
deadline, so a silent or hung child fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import time
from typing import Any

__all__ = ["LineReader", "Program"]


class LineReader:
    """Bounded reads of a process's stdout, one line at a time (never blocks past a deadline)."""

    def __init__(self, proc: subprocess.Popen[bytes], name: str = "") -> None:
        assert proc.stdout is not None, "LineReader needs stdout=PIPE"
        self.proc = proc
        self.name = name or str(proc.pid)  # for failure messages
        self._fd = proc.stdout.fileno()
        self._buf = b""
        self._eof = False
        self.lines: list[str] = []  # every line read so far (for failure messages)

    def next_line(self, timeout: float) -> str | None:
        """The next line, or ``None`` at EOF or when ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        for _ in range(100_000):  # bounded; each round waits on select or ends
            if b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                text = line.decode(errors="replace")
                self.lines.append(text)
                return text
            if self._eof:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self._fd], [], [], left)
            if ready:
                chunk = os.read(self._fd, 65536)
                if chunk:
                    self._buf += chunk
                else:
                    self._eof = True
        return None

    def next_json(self, timeout: float) -> dict[str, Any] | None:
        """The next line that is a JSON object (other lines are kept but skipped)."""
        deadline = time.monotonic() + timeout
        for _ in range(10_000):
            line = self.next_line(max(0.0, deadline - time.monotonic()))
            if line is None:
                return None
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
        return None

    def wait_for(self, event: str, timeout: float) -> dict[str, Any] | None:
        """The next JSON line whose ``"event"`` is ``event`` (or ``"error"``), within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        for _ in range(10_000):
            msg = self.next_json(max(0.0, deadline - time.monotonic()))
            if msg is None or msg.get("event") in (event, "error"):
                return msg
        return None

    def drain(self, timeout: float) -> list[str]:
        """Read what is left until EOF or ``timeout`` s; returns every line read so far."""
        deadline = time.monotonic() + timeout
        for _ in range(100_000):
            if self.next_line(max(0.0, deadline - time.monotonic())) is None:
                break
        return self.lines


class Program:
    """A child program on pipes: :meth:`send` it lines, :meth:`expect` its output, :meth:`stop` it at the end.

    stderr is merged into stdout, so a traceback shows up in failure messages.
    Use it as a context manager: leaving the block stops the child (by its pid).
    """

    def __init__(self, argv: list[str], *, cwd: str | os.PathLike[str], env: dict[str, str], name: str = "") -> None:
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.reader = LineReader(self.proc, name=name)

    def __enter__(self) -> Program:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def send(self, line: str) -> None:
        """Write ``line`` and a newline to the child's stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def expect(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first line from now on that ``pattern`` matches (re.search); AssertionError with the output if none comes."""
        deadline = time.monotonic() + timeout
        for _ in range(100_000):  # bounded; each round reads a line or ends
            line = self.reader.next_line(max(0.0, deadline - time.monotonic()))
            if line is None:
                break
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"{self.reader.name}: no line matching {pattern!r} within {timeout} s; "
                             f"exit {self.proc.poll()}; output so far:\n" + "\n".join(self.reader.lines))

    def output(self) -> str:
        """Every line read so far."""
        return "\n".join(self.reader.lines)

    def stop(self, grace: float = 10.0) -> int:
        """Close stdin, wait up to ``grace`` seconds for the exit, then kill; returns the exit status."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(grace)
        self.reader.drain(1.0)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return self.proc.returncode
