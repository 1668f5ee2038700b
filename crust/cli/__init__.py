"""The ``python -m crust`` command line (also installed as ``crust``).

One module per command, each with ``add_parser(commands)`` that registers
it and sets its ``run(args) -> int``:

* ``demo``: a multi-peer session on 127.0.0.1 (:mod:`crust.cli.demo`);
* ``info``: our identity, listeners, external addresses and NAT type (:mod:`crust.cli.info`);
* ``identity show|new``: identity files (:mod:`crust.cli.identity`);
* ``config check``: validate a config file (:mod:`crust.cli.config`);
* ``ping``: connect to a node and print its round-trip time (:mod:`crust.cli.ping`);
* ``chat``: a line chat with peers found on the LAN, by contact or by connection info (:mod:`crust.cli.chat`).

Only the public API (``import crust``) is used: each command doubles as an example.
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence

import crust

from . import chat, config, demo, identity, info, ping
from .common import CommandFailed, Parser

__all__ = ["main", "build_parser"]

COMMANDS = (demo, info, identity, config, ping, chat)


def build_parser(prog: str = "crust") -> Parser:
    """The argument parser of every command."""
    parser = Parser(prog=prog, description=f"crust {crust.__version__}: encrypted peer-to-peer networking.")
    parser.add_argument("--version", action="version", version=f"crust {crust.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "crust") -> int:
    """Run the command line; returns the exit status (0 done, 1 failed, 2 bad arguments, 130 interrupted)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    run: Callable[..., int] = args.run
    try:
        return run(args)
    except (CommandFailed, crust.CrustError) as exc:
        name = " ".join(filter(None, (prog, args.command, getattr(args, "action", None))))
        print(f"{name}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
