"""bench/open_ab.py runs: both trees' OcbKey open the same frame, and the table comes out."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from crust.crypto import ocb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not ocb.AVAILABLE, reason="pycryptodome's OCB core cannot be called directly here")
def test_open_ab_against_this_tree() -> None:
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "open_ab.py"), "--against", ROOT,
                          "--sizes", "100,65547", "--rounds", "2", "--batch", "2"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    lines = [line.split() for line in out.splitlines()[1:]]
    assert [(words[0], words[1]) for words in lines] == [("open", "100"), ("seal", "100"), ("open", "65547"),
                                                           ("seal", "65547")]
    assert all("this" in words and "against" in words for words in lines)


def test_open_ab_refuses_a_tree_without_ocb(tmp_path: object) -> None:
    run = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "open_ab.py"), "--against", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "no crust/crypto/ocb.py under" in run.stderr
