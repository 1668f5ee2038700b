#!/usr/bin/env python3
"""OCB open (and seal) per frame, this tree against another, interleaved in one process.

Usage::

    python bench/open_ab.py --against /tmp/before          # a worktree of an older commit
    python bench/open_ab.py --against /tmp/before --sizes 100,6000,65547 --rounds 60

Two processes on a shared 2-core machine move by 20-50 % between runs, which
hides a change of a microsecond per frame.  Here both trees' ``OcbKey`` run
in the same process, round after round in turn (A B A B ...), on the same
ciphertext; each round times ``--batch`` calls, and the table gives the
minimum, first quartile and median over the rounds.  The other tree's
``crust/crypto/ocb.py`` is loaded from its file (it imports only
pycryptodome), so the rest of crust is this tree's.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from crust.crypto import ocb  # noqa: E402

NONCE = bytes(12)


def _load(tree: str) -> Any:
    """``tree``'s crust/crypto/ocb.py as a module of its own."""
    path = os.path.join(tree, "crust", "crypto", "ocb.py")
    spec = importlib.util.spec_from_file_location("ocb_against", path) if os.path.isfile(path) else None
    if spec is None or spec.loader is None:
        raise SystemExit(f"no crust/crypto/ocb.py under {tree}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _time(call: Callable[[], object], batch: int) -> float:
    start = time.perf_counter()
    for _ in range(batch):
        call()
    return (time.perf_counter() - start) / batch * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--against", required=True, metavar="TREE", help="another checkout of crust")
    ap.add_argument("--sizes", default="100,6000,65547", help="plaintext bytes per frame, comma-separated "
                    "(65547: a 64 KiB message's frame)")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--batch", type=int, default=200, help="calls per timed round")
    args = ap.parse_args(argv)
    other = _load(args.against)
    if not (ocb.AVAILABLE and other.AVAILABLE):
        raise SystemExit("pycryptodome's OCB core cannot be called directly here (ocb.AVAILABLE is False)")
    key = bytes(range(32))
    keys = {"this": ocb.OcbKey(key), "against": other.OcbKey(key)}
    print(f"per frame, µs: min / q1 / median of {args.rounds} interleaved rounds of {args.batch} calls")
    for size in (int(s) for s in args.sizes.split(",")):
        sealed = keys["this"].seal(NONCE, b"", bytes(size))
        # A view at an offset, as the frame decoder hands frames over.
        frame = memoryview(b"\0\0\0\0" + sealed)[4:]
        if keys["against"].open(NONCE, b"", frame) != keys["this"].open(NONCE, b"", frame):
            raise SystemExit("the two trees open the same frame differently")
        for op in ("open", "seal"):
            times: dict[str, list[float]] = {name: [] for name in keys}
            calls = {name: (lambda k=k: k.open(NONCE, b"", frame)) if op == "open" else
                     (lambda k=k: k.seal(NONCE, b"", frame[:size])) for name, k in keys.items()}
            for _ in range(args.rounds):
                for name, call in calls.items():
                    times[name].append(_time(call, args.batch))
            cells = []
            for name, got in times.items():
                got.sort()
                cells.append(f"{name} {got[0]:7.2f} / {got[len(got) // 4]:7.2f} / {statistics.median(got):7.2f}")
            print(f"{op} {size:>6} B   " + "   ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
