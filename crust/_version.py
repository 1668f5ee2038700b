"""The single place the version lives (read by setup.py and crust.__version__)."""

__version__ = "0.1.0"
