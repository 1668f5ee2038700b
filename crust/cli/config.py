"""``python -m crust config check FILE``: is a JSON config file valid, and what does it change?

On success it prints ``FILE: ok`` and every field whose value differs from
the default, as the Service will see it; on failure, the one-line reason
(the file, the field and what is wrong with it) and exit status 1.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import crust

from .common import CommandFailed

__all__ = ["add_parser"]


def add_parser(commands: Any) -> None:
    """Register ``config`` and its ``check`` subcommand with ``commands``."""
    parser = commands.add_parser("config", help="check a JSON config file",
                                 description="Work with crust's JSON config files (see docs/api.md, Config).")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check", help="validate a config file and show what it changes",
        description="Read FILE as crust.Config.load() does. Prints 'FILE: ok' and each setting that "
                    "differs from the default; exits 1 with the reason when the file is invalid.")
    check.add_argument("file", metavar="FILE", help="the JSON config file")
    check.set_defaults(run=run_check)


def run_check(args: argparse.Namespace) -> int:
    """Load the file; print what differs from the defaults."""
    try:
        config = crust.Config.load(args.file)
    except crust.ConfigError as exc:
        message = str(exc)
        raise CommandFailed(message if args.file in message else f"{args.file}: {message}") from None
    defaults = crust.Config().to_dict()
    changed = {name: value for name, value in config.to_dict().items() if value != defaults[name]}
    print(f"{args.file}: ok; {_count(len(changed))}")
    for name, value in changed.items():
        print(f"  {name} = {json.dumps(value)}")
    return 0


def _count(n: int) -> str:
    return "every setting is the default" if n == 0 else f"{n} setting{'s' if n > 1 else ''} differ from the default:"
