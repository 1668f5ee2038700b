"""The dependency rule of crust/ (ARCHITECTURE.md §4), executable.

Every ``crust/**/*.py`` is parsed with ``ast``; each import (relative ones
resolved against the file's package, ``if TYPE_CHECKING:`` ones included) is
mapped to a *unit*: the first component below ``crust`` (``wire``,
``channel``, ``engine``, ...).  A unit may import only the units its row allows.

Sans-IO units must also *do* no I/O that an import check cannot see, since
``os``, ``sys``, ``io`` and ``pathlib`` have pure parts too: :func:`io_uses`
flags reading and writing files, the environment, the terminal and the
program's arguments (the list is ``IO_BUILTINS``, ``IO_NAMES`` and
``PATH_IO_METHODS`` below).  Logging is allowed: where records go is the
application's choice, not the protocol's.
"""

from __future__ import annotations

import ast
import pathlib
from typing import Iterator

import pytest

import crust

CRUST = pathlib.Path(crust.__file__).resolve().parent
PACKAGE = "crust"  # the unit name for ``import crust`` / ``from crust import X`` with X not a submodule

BASE = {"errors", "ids"}  # row 0
DECL = BASE | {"config", "events", "effects"}  # rows 0-1
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "ids": set(),
    "config": BASE,
    "events": BASE,
    "effects": BASE,
    "wire": BASE,  # row 2
    "crypto": BASE,  # row 2
    "channel": DECL | {"wire", "crypto"},  # row 3
    "outbox": DECL | {"wire", "channel"},  # row 3
    "handshake": DECL | {"wire", "crypto", "channel", "outbox"},  # row 4
    "bootstrap": DECL,  # row 5
    "discovery": DECL | {"wire"},  # row 5: LAN beacons (wire.buffer's endpoint codec)
    "nat": DECL | {"wire", "crypto"},  # row 5: probe codec (wire.buffer), probe MACs (crypto.mac), UPnP leases
    "connection_info": DECL | {"wire"},  # row 5: the info swapped out of band for connect()
    "engine": DECL | {"wire", "crypto", "channel", "outbox", "handshake", "bootstrap", "discovery", "nat",
                      "connection_info"},  # row 6
    "rudp": BASE,  # reliable UDP: a sans-IO transport protocol, below the shell that carries its datagrams
    # the shell: knows no crust protocol
    "transport": {"errors", "config", "ids", "rudp"},
    "dispatch": {"errors", "ids", "events"},
    # the shell's wiring: drives the engine (and the LAN beacon) over the transport, UPnP through
    # miniupnpc on the worker pool (runtime/upnp.py), gathers connection info; knows no facade
    "runtime": DECL | {"engine", "discovery", "transport", "crypto", "outbox", "nat", "connection_info"},
}
# Above every row, unchecked: they wire the core to the shell.  service is the
# facade over runtime; contact_book keeps the bootstrap cache file (file I/O on the worker pool).
# The files crust keeps are top-level too: config_file (the JSON config file and
# the environment it is found through; crust.config stays a pure dataclass),
# identity (a crypto.keys.KeyPair saved and loaded) and files (atomic
# private-file writes for both identity and cache).  cli is the command line
# (``python -m crust``): a user of the public API, like the examples.
# The facade's parts (service_base, handlers, listening, bootstrapping, connecting, config_watch,
# watching) are service's mixins; stats holds what Service.stats() returns.
TOP = {"service", "service_base", "handlers", "listening", "bootstrapping", "connecting", "config_watch", "watching",
       "stats", "contact_book", "config_file", "identity", "files", "__init__", "__main__", "_version", "cli"}
SHELL = {"transport", "dispatch", "runtime"}
SANS_IO = set(ALLOWED) - SHELL

IO_MODULES = {"socket", "select", "selectors", "threading", "queue", "time", "asyncio", "concurrent", "subprocess",
              "tempfile", "shutil", "glob", "fileinput", "mmap", "getpass"}
IO_BUILTINS = {"open", "print", "input"}
# Dotted names that are I/O however they are used (called, read, passed on);
# each also covers everything below it (``os.environ`` covers ``os.environ.get``).
IO_NAMES = {
    "builtins.open", "builtins.print", "builtins.input", "io.open", "io.open_code", "io.FileIO",
    # the environment and the process
    "os.environ", "os.environb", "os.getenv", "os.getenvb", "os.putenv", "os.unsetenv", "os.getcwd", "os.chdir",
    "os.getpid", "os.urandom", "os.system", "os.popen", "sys.argv", "sys.stdin", "sys.stdout", "sys.stderr",
    # files and directories
    "os.open", "os.fdopen", "os.read", "os.write", "os.close", "os.replace", "os.rename", "os.renames",
    "os.remove", "os.unlink", "os.rmdir", "os.removedirs", "os.mkdir", "os.makedirs", "os.fsync", "os.fdatasync",
    "os.chmod", "os.fchmod", "os.chown", "os.stat", "os.lstat", "os.fstat", "os.listdir", "os.scandir", "os.walk",
    "os.truncate", "os.ftruncate", "os.link", "os.symlink", "os.readlink", "os.access",
    "os.path.exists", "os.path.lexists", "os.path.isfile", "os.path.isdir", "os.path.islink", "os.path.ismount",
    "os.path.getsize", "os.path.getmtime", "os.path.getatime", "os.path.getctime", "os.path.realpath",
    "os.path.abspath", "os.path.expanduser", "os.path.expandvars", "os.path.samefile",
    # concrete paths do I/O (PurePath does none)
    "pathlib.Path", "pathlib.PosixPath", "pathlib.WindowsPath",
}
# Methods of pathlib paths that do I/O, flagged on any object: a Path handed
# in as an argument never shows its type.  (``open``, ``exists``, ``replace``
# ... are left out: str.replace and Opener.open are pure.)
PATH_IO_METHODS = {"read_text", "read_bytes", "write_text", "write_bytes", "unlink", "mkdir", "rmdir", "touch",
                   "iterdir", "rglob", "symlink_to", "hardlink_to", "is_file", "is_dir", "samefile"}
CRYPTO_ONLY = {"Crypto", "secrets"}  # pycryptodome, and the OS CSPRNG: crypto/ is the quarantine
# files.py writes key and cache files; it draws its temp-file names from ``secrets``.
# That randomness is file-system hygiene, not protocol behaviour (which stays
# reproducible because only crypto/ draws key material), so it is allowed there.
CRYPTO_ONLY_EXEMPT = {("files", "secrets")}


def unit_of_file(path: pathlib.Path) -> str:
    return path.relative_to(CRUST).parts[0].removesuffix(".py")


def package_parts(path: pathlib.Path) -> list[str]:
    """The dotted package a file's relative imports start from."""
    # crust/wire/framing.py -> crust.wire; crust/wire/__init__.py -> crust.wire too
    return [PACKAGE, *path.relative_to(CRUST).parts[:-1]]


def _crust_unit(module: list[str], names: list[str]) -> Iterator[str]:
    if len(module) > 1:
        yield module[1]
        return
    for name in names:  # ``from crust import x`` / ``from .. import x``: x may be a unit
        yield name if (CRUST / name).is_dir() or (CRUST / f"{name}.py").is_file() else PACKAGE


def imported(path: pathlib.Path, source: str | None = None) -> Iterator[tuple[str, str, int]]:
    """``("crust", unit, line)`` or ``("ext", top-level module, line)`` for each import in ``path``."""
    tree = ast.parse(source if source is not None else path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == PACKAGE:
                    yield "crust", parts[1] if len(parts) > 1 else PACKAGE, node.lineno
                else:
                    yield "ext", parts[0], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = package_parts(path)
                if node.level > len(package):
                    raise AssertionError(f"{path}:{node.lineno}: relative import climbs above crust/")
                module = package[: len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            else:
                assert node.module is not None
                module = node.module.split(".")
            if module[0] == PACKAGE:
                for unit in _crust_unit(module, [a.name for a in node.names]):
                    yield "crust", unit, node.lineno
            elif module[0] != "__future__":
                yield "ext", module[0], node.lineno


def _dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
    """``os.environ.get`` for an expression naming it through any import alias, else None."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in aliases:
        return None
    return ".".join([aliases[node.id], *reversed(parts)])


def io_uses(path: pathlib.Path, source: str | None = None) -> Iterator[tuple[str, int]]:
    """``(what, line)`` for each file, environment or terminal access in ``path`` (see the module docstring)."""
    tree = ast.parse(source if source is not None else path.read_text(encoding="utf-8"), str(path))
    aliases: dict[str, str] = {}  # local name -> the dotted name it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    aliases[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    found: set[tuple[str, int]] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in IO_BUILTINS \
                and node.id not in aliases:
            found.add((node.id, node.lineno))
        elif isinstance(node, (ast.Name, ast.Attribute)):
            name = _dotted(node, aliases)
            if name is not None:
                parts = name.split(".")
                for i in range(1, len(parts) + 1):
                    if ".".join(parts[:i]) in IO_NAMES:
                        found.add((".".join(parts[:i]), node.lineno))
                        break
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in PATH_IO_METHODS:
            found.add((f".{node.func.attr}()", node.lineno))
    yield from sorted(found, key=lambda item: (item[1], item[0]))


def source_files() -> list[pathlib.Path]:
    files = sorted(CRUST.rglob("*.py"))
    assert len(files) > 20, f"found only {len(files)} files under {CRUST}"
    return files


# -- the resolver itself ---------------------------------------------------------------

RESOLVER_CASES: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("channel.py", "from .crypto.aead import Opener", [("crust", "crypto")]),
    ("wire/framing.py", "from ..errors import X\nfrom .buffer import Buffer", [("crust", "errors"), ("crust", "wire")]),
    ("crypto/kex.py", "from crust.crypto import aead", [("crust", "crypto")]),
    ("crypto/kex.py", "from . import aead", [("crust", "crypto")]),
    ("handshake/secure.py", "from .. import ids, channel", [("crust", "ids"), ("crust", "channel")]),
    ("handshake/secure.py", "from .. import Service", [("crust", PACKAGE)]),
    ("handshake/__init__.py", "from .states import SECURE", [("crust", "handshake")]),
    ("wire/__init__.py", "from ..errors import X", [("crust", "errors")]),
    ("ids.py", "import crust.wire.buffer", [("crust", "wire")]),
    ("ids.py", "import crust", [("crust", PACKAGE)]),
    ("ids.py", "import os.path, socket", [("ext", "os"), ("ext", "socket")]),
    ("ids.py", "from concurrent.futures import Future", [("ext", "concurrent")]),
    ("ids.py", "from __future__ import annotations", []),
    ("ids.py", "def f():\n    import time\n", [("ext", "time")]),  # lazy imports count too
    ("ids.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .engine import Engine\n",
     [("ext", "typing"), ("crust", "engine")]),
]


def test_resolver() -> None:
    for where, source, expected in RESOLVER_CASES:
        got = [(kind, name) for kind, name, _ in imported(CRUST / where, source)]
        assert got == expected, (where, source)


def test_resolver_refuses_imports_above_crust() -> None:
    with pytest.raises(AssertionError, match="above crust"):
        list(imported(CRUST / "ids.py", "from .. import something"))


def test_the_table_has_no_cycles() -> None:
    # Allowed edges point strictly down: no unit may (transitively) import itself.
    def below(unit: str, seen: frozenset[str] = frozenset()) -> set[str]:
        assert unit not in seen, f"cycle through {sorted(seen | {unit})}"
        out: set[str] = set()
        for dep in ALLOWED[unit]:
            out |= {dep} | below(dep, seen | {unit})
        return out

    for unit in ALLOWED:
        assert unit not in below(unit)


# -- the rule ----------------------------------------------------------------------------

def test_every_unit_is_classified() -> None:
    units = {unit_of_file(p) for p in source_files()}
    unknown = units - set(ALLOWED) - TOP
    assert not unknown, f"new unit(s) {sorted(unknown)}: give them a row in test_layering.ALLOWED (or TOP)"


def test_units_import_only_lower_rows() -> None:
    violations = []
    for path in source_files():
        unit = unit_of_file(path)
        if unit in TOP:
            continue
        for kind, name, line in imported(path):
            if kind == "crust" and name != unit and name not in ALLOWED[unit]:
                violations.append(f"{path.relative_to(CRUST.parent)}:{line}: {unit} may not import {name}")
    assert not violations, "\n".join(violations)


def test_sans_io_units_import_no_io_modules() -> None:
    violations = []
    for path in source_files():
        unit = unit_of_file(path)
        if unit not in SANS_IO:
            continue
        for kind, name, line in imported(path):
            if kind == "ext" and name in IO_MODULES:
                violations.append(f"{path.relative_to(CRUST.parent)}:{line}: sans-IO {unit} imports {name}")
    assert not violations, "\n".join(violations)


IO_CASES: list[tuple[str, list[str]]] = [
    ("open('key')", ["open"]),
    ("print('hello')", ["print"]),
    ("x = input()", ["input"]),
    ("import builtins\nbuiltins.open('x')", ["builtins.open"]),
    ("import io\nio.open('x')", ["io.open"]),
    ("import os\nos.environ.get('HOME')", ["os.environ"]),
    ("import os\nhome = os.environ['HOME']", ["os.environ"]),
    ("from os import environ as env\nenv.get('HOME')", ["os.environ"]),
    ("from os import getenv\ngetenv('CRUST_CONFIG')", ["os.getenv"]),
    ("import os\nos.putenv('A', 'b')", ["os.putenv"]),
    ("import os as _os\n_os.replace('a.tmp', 'a')", ["os.replace"]),
    ("import os\nos.rename('a', 'b'); os.remove('b'); os.fsync(3)", ["os.fsync", "os.remove", "os.rename"]),
    ("import os.path\nos.path.isfile('x')", ["os.path.isfile"]),
    ("from os.path import expanduser\nexpanduser('~')", ["os.path.expanduser"]),
    ("import sys\nname = sys.argv[0]", ["sys.argv"]),
    ("import sys\nsys.stderr.write('x')", ["sys.stderr"]),
    ("import pathlib\npathlib.Path('x').read_text()", [".read_text()", "pathlib.Path"]),
    ("from pathlib import Path\nPath('x').write_bytes(b'')", [".write_bytes()", "pathlib.Path"]),
    ("def f(p):\n    p.unlink()\n    p.mkdir()", [".mkdir()", ".unlink()"]),
    ("def f():\n    import os\n    return os.getpid()", ["os.getpid"]),  # lazy imports count too
]
PURE_CASES = [
    "import os\nname = os.fspath(p)\nos.path.join('a', 'b')\nos.name\nisinstance(p, os.PathLike)",
    "import io\nbuf = io.BytesIO()",
    "plaintext = self._opener.open(frame)",
    "'a.b'.replace('.', '/')",
    "from pathlib import PurePath\nPurePath('a') / 'b'",
    "import sys\nsys.maxsize",
    "import logging\nlogging.getLogger('crust').info('x')",
]


@pytest.mark.parametrize("source, expected", IO_CASES)
def test_io_check_catches_planted_io(source: str, expected: list[str]) -> None:
    assert sorted(what for what, _ in io_uses(CRUST / "ids.py", source)) == expected


@pytest.mark.parametrize("source", PURE_CASES)
def test_io_check_passes_pure_code(source: str) -> None:
    assert list(io_uses(CRUST / "ids.py", source)) == []


def test_sans_io_units_do_no_file_or_environment_io() -> None:
    violations = []
    for path in source_files():
        unit = unit_of_file(path)
        if unit not in SANS_IO:
            continue
        for what, line in io_uses(path):
            violations.append(f"{path.relative_to(CRUST.parent)}:{line}: sans-IO {unit} uses {what}")
    assert not violations, "\n".join(violations)


def test_the_file_keepers_really_do_file_io() -> None:
    # Guards the guard: the check must see the I/O of the modules that were moved out of the core for it.
    doers = {unit_of_file(p) for p in source_files() if any(io_uses(p))}
    assert {"config_file", "identity", "files"} <= doers
    assert not doers & SANS_IO


def test_only_crypto_imports_pycryptodome_and_secrets() -> None:
    violations = []
    for path in source_files():
        unit = unit_of_file(path)
        if unit == "crypto":
            continue
        for kind, name, line in imported(path):
            if kind == "ext" and name in CRYPTO_ONLY and (unit, name) not in CRYPTO_ONLY_EXEMPT:
                violations.append(f"{path.relative_to(CRUST.parent)}:{line}: {unit} imports {name}")
    assert not violations, "\n".join(violations)


def test_crypto_really_is_where_pycryptodome_lives() -> None:
    # Guards the guard: if crypto/ stopped importing Crypto, the quarantine test would prove nothing.
    users = {unit_of_file(p) for p in source_files() for kind, name, _ in imported(p) if (kind, name) == ("ext", "Crypto")}
    assert users == {"crypto"}
