"""The node as one sans-IO state machine: :class:`Engine` (see ``node.py``)."""

from .node import WRITE_WINDOW, Engine

__all__ = ["Engine", "WRITE_WINDOW"]
