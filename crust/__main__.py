"""``python -m crust``: the command line (see :mod:`crust.cli`; ``python -m crust --help`` lists the commands)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m crust"))
