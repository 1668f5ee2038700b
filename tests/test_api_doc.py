"""docs/api.md and ``help(crust.Config)`` keep up with the code.

The reference must name every public name (``crust.__all__``), every
``Config`` field (in its table), every public ``Service`` method and every
callback; ``Config``'s own docstring, which ``help()`` shows, must describe
every field in an ``Attributes:`` section, in field order.  Add a name or a
field without documenting it and this module fails.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import re
from pathlib import Path

import pytest

import crust

ROOT = Path(__file__).resolve().parent.parent
API_MD = ROOT / "docs" / "api.md"
FIELDS = [f.name for f in dataclasses.fields(crust.Config)]


@pytest.fixture(scope="module")
def doc() -> str:
    return API_MD.read_text(encoding="utf-8")


def section(doc: str, heading: str) -> str:
    """The text of ``## heading`` up to the next ``## ``."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", doc, flags=re.M | re.S)
    assert match, f"docs/api.md has no '## {heading}' section"
    return match.group(1)


def test_every_public_name_is_documented(doc: str) -> None:
    missing = [name for name in crust.__all__ if not re.search(rf"`crust\.{re.escape(name)}[`(]", doc)]
    assert not missing, f"docs/api.md does not document {missing} (write `crust.NAME` where it is described)"


def test_the_doc_names_nothing_that_is_not_public(doc: str) -> None:
    named = set(re.findall(r"`crust\.([A-Za-z_]\w*)", doc)) - {"__all__"}
    stale = sorted(name for name in named - set(crust.__all__) if importlib.util.find_spec(f"crust.{name}") is None)
    assert not stale, f"docs/api.md documents crust.{stale}, which crust.__all__ does not export"


def test_every_config_field_has_a_row(doc: str) -> None:
    rows = re.findall(r"^\| `(\w+)` \| ", section(doc, "Config"), flags=re.M)
    assert rows == FIELDS, "docs/api.md's Config table must list every field once, in field order"


def test_every_service_method_and_callback_is_documented(doc: str) -> None:
    service = section(doc, "Service")
    public = [name for name, _ in inspect.getmembers(crust.Service) if not name.startswith("_")]
    missing = [name for name in public if not re.search(rf"^\| `{name}[`(]", service, flags=re.M)]
    assert not missing, f"docs/api.md's Service tables lack {missing}"
    callbacks = [name for name in public if name.startswith("on_")]
    assert len(callbacks) >= 7
    for name in callbacks:
        row = re.search(rf"^\| `{name}` \| `handler\(.*\) -> None` \| .+ \|$", service, flags=re.M)
        assert row, f"the callback table must give {name}'s handler signature"


def test_config_docstring_describes_every_field_for_help() -> None:
    doc = crust.Config.__doc__ or ""
    assert "\n    Attributes:\n" in doc
    attributes = doc.split("\n    Attributes:\n", 1)[1]
    described = re.findall(r"^        (\w+): \S", attributes, flags=re.M)
    assert described == FIELDS, "Config's Attributes section must describe every field once, in field order"
    for name in FIELDS:
        text = re.search(rf"^        {name}: (.*?)(?=^        \w+: |\Z)", attributes, flags=re.M | re.S)
        assert text and "default" in text.group(1).lower(), f"Config docstring: {name} does not give its default"


def test_help_shows_the_field_docs() -> None:
    import pydoc
    rendered = pydoc.render_doc(crust.Config, renderer=pydoc.plaintext)
    for name in FIELDS:
        assert re.search(rf"^ \|      {name}: ", rendered, flags=re.M), f"help(crust.Config) does not show {name}"


def test_errors_table_gives_each_error_its_real_bases(doc: str) -> None:
    errors = section(doc, "Errors and warnings")
    for name in crust.__all__:
        obj = getattr(crust, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            row = re.search(rf"^\| `crust\.{name}` \| ([^|]+) \|", errors, flags=re.M)
            assert row, f"no row for crust.{name}"
            bases = [b.strip(" `") for b in row.group(1).split(",")]
            assert bases == public_bases(obj), f"crust.{name}: the doc says {bases}"


def public_bases(cls: type) -> list[str]:
    """The names of ``cls``'s bases, a private base replaced by its own (crust.CandidatesFailed is private)."""
    out: list[str] = []
    for base in cls.__bases__:
        if base.__module__.split(".")[0] == "crust" and base.__name__ not in crust.__all__:
            out += [name for name in public_bases(base) if name not in out]
        else:
            out.append(base.__name__)
    return out
