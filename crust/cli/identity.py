"""``python -m crust identity show|new FILE``: a node's long-term identity file.

``new`` generates a key pair and saves it (mode 0600; an existing file is
replaced only with ``--force``); ``show`` loads one.  Both print the PeerId
other nodes will know it by.  Run a command as that identity with
``--identity FILE``.
"""

from __future__ import annotations

import argparse
import os
import stat
from typing import Any

import crust

from .common import CommandFailed, load_identity

__all__ = ["add_parser"]


def add_parser(commands: Any) -> None:
    """Register ``identity`` and its two subcommands with ``commands``."""
    parser = commands.add_parser(
        "identity", help="create or show an identity file (a node's long-term key pair)",
        description="A node's identity is an X25519 key pair; its public key is the node's PeerId. "
                    "Commands that run a node take --identity FILE to run as a saved identity.")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print the PeerId of an identity file",
                              description="Load an identity file and print its PeerId. Warns when group or "
                                          "others can read the private key.")
    show.add_argument("file", metavar="FILE", help="the identity file")
    show.set_defaults(run=run_show)
    new = actions.add_parser("new", help="generate an identity and save it (mode 0600)",
                             description="Generate a fresh identity, save it to FILE (mode 0600, written "
                                         "atomically) and print its PeerId.")
    new.add_argument("file", metavar="FILE", help="where to save it")
    new.add_argument("--force", action="store_true", help="replace FILE if it exists")
    new.set_defaults(run=run_new)


def run_show(args: argparse.Namespace) -> int:
    """Print the PeerId (and the file's mode) of an identity file."""
    identity = load_identity(args.file)
    _describe(identity, args.file)
    return 0


def run_new(args: argparse.Namespace) -> int:
    """Generate and save an identity; refuse to replace a file without ``--force``."""
    if os.path.lexists(args.file) and not args.force:
        raise CommandFailed(f"{args.file} exists; add --force to replace it (its old identity is then lost)")
    identity = crust.Identity.generate()
    identity.save(args.file)
    _describe(identity, args.file)
    return 0


def _describe(identity: crust.Identity, path: str) -> None:
    mode = stat.S_IMODE(os.stat(path).st_mode)
    print(f"peer id  {identity.peer_id}")
    print(f"file     {path} (mode {mode:04o})")
