"""The suite's kind markers (tests/conftest.py): every test module has one, and the table agrees
with what each module really uses."""

from __future__ import annotations

import importlib
import pathlib

import pytest

from tests import conftest

TESTS = pathlib.Path(__file__).resolve().parent
MODULES = sorted(p.stem for p in TESTS.glob("test_*.py"))
# Where the table knowingly differs from what the imports suggest, and why.
EXCEPTIONS = {
    "test_rudp": "the sans-IO rUDP machine still lives under crust/transport/ (a shell package)",
    "test_typing": "runs mypy in a subprocess: a static check, marked slow only",
}


@pytest.mark.parametrize("name", MODULES)
def test_every_module_has_a_kind_that_matches_its_imports(name: str) -> None:
    module = importlib.import_module(f"tests.{name}")
    kind = conftest.kind_of(module)
    assert kind in conftest.MARKERS or name == "test_typing", (name, kind)
    if name not in EXCEPTIONS:
        assert kind == conftest._kind_by_imports(module), f"{name}: the table says {kind}"


def test_unit_tests_touch_no_io() -> None:
    for name in MODULES:
        module = importlib.import_module(f"tests.{name}")
        if conftest.kind_of(module) == "unit" and name not in EXCEPTIONS:
            used = {getattr(v, "__name__", "") for v in vars(module).values()}
            assert not used & {"socket", "threading", "subprocess", "time"}, name
