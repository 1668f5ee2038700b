"""The package metadata: pyproject.toml is its one home, and installing needs no compiler.

setup.py is kept only for tools that look for one, so it must not carry
metadata of its own that could drift from pyproject.toml.  ``.ci/run``
proves the no-compiler promise by downloading every runtime dependency with
``--only-binary=:all:``; this module checks the promise is stated where CI
reads it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

import crust

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    with open(ROOT / "pyproject.toml", "rb") as fh:
        data: dict[str, Any] = tomllib.load(fh)
    return data


def test_the_version_lives_in_one_place(project: dict[str, Any]) -> None:
    assert project["project"]["dynamic"] == ["version"]
    assert "version" not in project["project"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "crust._version.__version__"}
    from crust._version import __version__
    assert crust.__version__ == __version__


def test_pep_621_metadata_is_complete(project: dict[str, Any]) -> None:
    meta = project["project"]
    for key in ("name", "description", "readme", "license", "requires-python", "classifiers", "urls",
                "dependencies", "optional-dependencies"):
        assert meta.get(key), f"pyproject.toml [project] lacks {key}"
    assert meta["name"] == "crust"
    assert meta["readme"] == "README.md" and (ROOT / "README.md").is_file()
    assert set(meta["optional-dependencies"]) == {"test", "bench"}
    assert {"pytest", "pytest-timeout", "hypothesis", "mypy"} <= {
        re.split(r"[<>=!~ \[]", dep)[0] for dep in meta["optional-dependencies"]["test"]}
    assert meta["scripts"]["crust"] == "crust.cli:main"


def test_runtime_dependencies_are_the_wheel_shipping_ones(project: dict[str, Any]) -> None:
    names = [re.split(r"[<>=!~ \[]", dep)[0].lower() for dep in project["project"]["dependencies"]]
    assert names == ["pycryptodome", "cffi", "netifaces-plus", "miniupnpc"]
    assert "netifaces" not in names  # no wheels for current Pythons: it needs a compiler


def test_setup_py_carries_no_metadata_of_its_own() -> None:
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Name) and node.func.id == "setup"]
    assert len(calls) == 1
    assert not calls[0].args and not calls[0].keywords, "setup.py must leave the metadata to pyproject.toml"


def test_ci_installs_the_dependencies_from_wheels_only() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    download = ci.index("pip download")
    assert "--only-binary=:all:" in ci[download:ci.index("\n", download)]
    assert '["project"]["dependencies"]' in ci  # the list comes from pyproject.toml, not a copy
    assert download < ci.index("-e '.[test]'")


def test_the_virtual_environment_is_ignored() -> None:
    assert ".venv/" in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
