"""Every decoder in crust in one table: what it reads, what it may raise, and its valid inputs.

A *decoder* is an entry point that turns bytes or text from outside into values: the wire
codecs, the stream and datagram machines that read hostile input, and the parsers of what a
user hands us (connection info, config and identity files, the bootstrap cache).  Each
:class:`Decoder` row says

* ``decode``: a callable(bytes) that runs the decoder on one input.  Stream decoders get the
  bytes in pieces, cut where a ``Random`` seeded by the input says (:func:`pieces`): the cuts
  vary from input to input, yet a failing input reproduces;
* ``raises``: the only exceptions it may raise, whatever the bytes (``()``: none; such
  decoders count and drop, and return ``None`` for "refused");
* ``values`` / ``encode`` / ``expect``: valid values and their encodings;
  ``decode(encode(v)) == expect(v)`` (``v`` itself by default), and mutations of those
  encodings (bit flips, truncation, extension, ...) are fuzz input too;
* ``canonical``: True when whatever decodes re-encodes to the very same bytes; False when a
  decoded value need only survive ``decode(encode(value))``; None when outputs are not values
  that ``encode`` takes;
* ``noise``: structured hostile input beyond random bytes (a right magic, then junk);
* ``covers``: the package's entry points the row exercises.  tests/test_decoder_fuzz.py scans
  the package (:func:`entry_points`) and fails when one is neither covered nor in ``EXEMPT``.

The rows live by kind in :mod:`.streams`, :mod:`.datagrams` and :mod:`.user`; the row type and
the strategies they share in :mod:`.base`.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from typing import Any, Iterator

import crust
from .base import (
    KEY_1, KEY_2, STATIC_A, STATIC_B, Decoder, all_messages, chunks_of, control_messages, endpoints, pieces,
)
from .datagrams import DATAGRAMS, ENGINE, PUNCH_KEY
from .streams import HANDSHAKE, WIRE
from .user import USER

__all__ = [
    "DECODERS", "EXEMPT", "Decoder", "entry_points", "pieces", "chunks_of",
    "KEY_1", "KEY_2", "PUNCH_KEY", "STATIC_A", "STATIC_B", "all_messages", "control_messages", "endpoints",
]

DECODERS: tuple[Decoder, ...] = (*WIRE, *HANDSHAKE, *DATAGRAMS, *ENGINE, *USER)

# -- the scan --------------------------------------------------------------------------------------

# Public names that read outside input.  `open` is the AEAD's (no other public `open` exists).
ENTRY_POINT = re.compile(r"(decode\w*|pull_\w+|from_\w+|loads?|load_\w+|parse\w*|peek_\w+|read_\w+|receive_\w+"
                         r"|next_(frame|message|batch)|feed|open)")
# Entry points that match but need no row of their own, and why.
EXEMPT = {
    "crust.config.FileSide.load": "a Protocol stub; config_file's load_config (row config.file) is the body",
    "crust.config_file.read_config_file": "finds the file, then Config.load: the parsing is row config.file",
    "crust.cli.common.load_identity": "Identity.load (row identity.file) plus the CLI's error printing",
    "crust.runtime.driver.Driver.receive_data": "forwards a stream's bytes to Engine.receive_data (row engine)",
    "crust.runtime.driver.Driver.receive_datagram": "forwards a datagram to Engine.receive_datagram (row engine)",
    "crust.crypto.aes.Context.open": "a Protocol stub; its bodies are rows crypto.aead.open[...] and crypto.ocb.open",
}


def _defined_in(value: object, module: Any) -> bool:
    """True when ``value`` (a function or class) is written in ``module``'s file.

    Not ``__module__``: crust/__init__ relabels the public classes as ``crust``'s.
    """
    if inspect.isclass(value):
        functions = [getattr(member, "__func__", member) for member in vars(value).values()]
    else:
        functions = [value]
    return any(inspect.isfunction(f) and f.__code__.co_filename == module.__file__ for f in functions)


def entry_points() -> Iterator[str]:
    """Every public function or method of crust whose name says it reads outside input."""
    for info in pkgutil.walk_packages(crust.__path__, "crust."):
        if info.name == "crust.__main__":
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if name.startswith("_") or not _defined_in(value, module):
                continue
            if inspect.isfunction(value) and ENTRY_POINT.fullmatch(name):
                yield f"{module.__name__}.{name}"
            elif inspect.isclass(value):
                for attr in dir(value):
                    member = inspect.getattr_static(value, attr)
                    function = getattr(member, "__func__", member)
                    if (not attr.startswith("_") and ENTRY_POINT.fullmatch(attr) and inspect.isfunction(function)
                            and function.__module__.startswith("crust.")):
                        yield f"{module.__name__}.{name}.{attr}"
