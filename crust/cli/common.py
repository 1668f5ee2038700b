"""What every ``python -m crust`` command shares: the parser class, argument types, node options, output helpers.

Exit statuses: 0 done, 1 the command failed (a :class:`CommandFailed` or a
:class:`crust.CrustError`, reported on one line), 2 bad arguments (one
line, from :class:`Parser`), 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from typing import Any, Callable, Collection, NoReturn, Sequence, TextIO

import crust

__all__ = [
    "CommandFailed", "Parser", "Progress", "add_node_options", "count", "endpoint", "identity_from", "left",
    "load_identity", "node_config", "plural", "printable", "seconds", "short", "table",
]


class CommandFailed(Exception):
    """A command could not do its job; the message says what went wrong (exit status 1)."""


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is reported on one line (and exit status 2), not usage plus error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def count(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value
    return parse


def seconds(text: str) -> float:
    """An argparse type: a number of seconds, zero or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0:  # also refuses NaN
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, not {text}")
    return value


def timeout(text: str) -> float:
    """An argparse type: a timeout, more than zero seconds."""
    value = seconds(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return value


def endpoint(text: str) -> crust.Endpoint:
    """An argparse type: ``host:port``, ``tcp://host:port`` or ``udp://host:port`` (a real port, not 0)."""
    try:
        parsed = crust.Endpoint.parse(text)
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"not an endpoint ({exc}): {text!r}") from None
    if parsed.port == 0:
        raise argparse.ArgumentTypeError(f"port 0 is no node's port: {text!r} (give the port the node listens on)")
    return parsed


def add_node_options(parser: argparse.ArgumentParser) -> None:
    """The options of every command that runs a Service: its config file, identity and network."""
    group = parser.add_argument_group("node options")
    group.add_argument("--config", metavar="FILE",
                       help="JSON config file (default: crust's own search: $CRUST_CONFIG, then the "
                            "user config dir; defaults when there is none)")
    group.add_argument("--identity", metavar="FILE",
                       help="identity file to run as (see 'identity new'; default: a fresh identity)")
    group.add_argument("--network", metavar="NAME",
                       help="network name (peers of other networks are refused); overrides the config")


def node_config(args: argparse.Namespace, **overrides: Any) -> crust.Config:
    """The Config a command's Service runs with: ``--config`` (or the default file), then ``--network``, then ``overrides``.

    Raises:
        crust.ConfigError: the file or an override is invalid.
    """
    config = crust.Config.load(args.config) if args.config else crust.read_config_file()
    if args.network is not None:
        overrides.setdefault("network_name", args.network)
    return dataclasses.replace(config, **overrides) if overrides else config


def identity_from(args: argparse.Namespace, stderr: TextIO | None = None) -> crust.Identity | None:
    """The ``--identity`` file's identity (None without the option); warnings go to stderr as one line each."""
    if not args.identity:
        return None
    return load_identity(args.identity, stderr)


def load_identity(path: str, stderr: TextIO | None = None) -> crust.Identity:
    """``Identity.load(path)``, reporting an InsecureKeyFileWarning as a ``warning:`` line instead of a traceback."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", crust.InsecureKeyFileWarning)
        identity = crust.Identity.load(path)
    for warning in caught:
        print(f"warning: {warning.message}", file=stderr or sys.stderr)
    return identity


class Progress:
    """One status line on stderr, rewritten in place (``\\r``) at most ten times a second.

    ``enabled=None`` shows it only when stderr is a terminal, so logs and
    pipes get no carriage returns; :meth:`done` clears it.
    """

    INTERVAL = 0.1  # seconds between two redraws

    def __init__(self, enabled: bool | None = None, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self.enabled = self._stream.isatty() if enabled is None else enabled
        self._shown = 0  # width of what is on the line now
        self._last = 0.0

    def update(self, text: str, force: bool = False) -> None:
        """Show ``text`` (unless the last redraw was under ``INTERVAL`` ago and not ``force``)."""
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last < self.INTERVAL):
            return
        self._last = now
        self._stream.write("\r" + text.ljust(self._shown))
        self._stream.flush()
        self._shown = len(text)

    def done(self) -> None:
        """Clear the line, so what is printed next starts at column 0."""
        if self.enabled and self._shown:
            self._stream.write("\r" + " " * self._shown + "\r")
            self._stream.flush()
            self._shown = 0


def left(deadline: float) -> float:
    """Seconds until ``deadline`` (a ``time.monotonic()`` value), never negative."""
    return max(0.0, deadline - time.monotonic())


def plural(n: int, one: str, many: str | None = None) -> str:
    """``"1 peer"``, ``"3 peers"``."""
    return f"{n} {one if n == 1 else many or one + 's'}"


def short(peer_id: crust.PeerId) -> str:
    """The first 8 hex digits of a PeerId: enough to tell peers apart on screen."""
    return str(peer_id)[:8]


def printable(text: str) -> str:
    """``text`` with control characters replaced, so a peer cannot drive our terminal with escapes."""
    return "".join(ch if ch.isprintable() else "\ufffd" for ch in text)


def table(rows: Sequence[Sequence[str]], right: Collection[int] = ()) -> str:
    """Rows as aligned columns, two spaces apart; the columns numbered in ``right`` align right (numbers)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
