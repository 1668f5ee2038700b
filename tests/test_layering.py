"""The dependency rule of crust/ (ARCHITECTURE.md §4), executable.

Every ``crust/**/*.py`` is parsed with ``ast``; each import (relative ones
resolved against the file's package, ``if TYPE_CHECKING:`` ones included) is
mapped to a *unit*: the first component below ``crust`` (``wire``,
``channel``, ``engine``, ...).  A unit may import only the units its row allows.
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
    "files": {"errors"},  # atomic private-file writes for identity and cache files
    "identity": {"crypto", "errors", "ids", "files"},  # a KeyPair that can be saved and loaded
    "connection_info": DECL | {"wire"},  # row 5: the info swapped out of band for connect()
    "engine": DECL | {"wire", "crypto", "channel", "outbox", "handshake", "bootstrap", "discovery", "identity",
                      "connection_info"},  # row 6
    "rudp": BASE,  # reliable UDP: a sans-IO transport protocol, below the shell that carries its datagrams
    # the shell: knows no crust protocol
    "transport": {"errors", "config", "ids", "rudp"},
    "dispatch": {"errors", "ids", "events"},
}
# Above every row, unchecked: they wire the core to the shell.  sendgate is
# service's admission control for user threads (it blocks on a Condition), used
# only by service.py, so it sits with service rather than in the shell; links
# turns the engine's stream effects into socket calls for service.py, and
# contact_book keeps the bootstrap cache file (file I/O on the worker pool).
TOP = {"service", "sendgate", "lan", "links", "contact_book", "__init__", "__main__", "_version"}
SHELL = {"transport", "dispatch"}
SANS_IO = set(ALLOWED) - SHELL

IO_MODULES = {"socket", "select", "selectors", "threading", "queue", "time", "asyncio", "concurrent", "subprocess"}
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
