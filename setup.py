"""Kept for tools that look for a setup.py; every setting is in pyproject.toml (PEP 621)."""

from setuptools import setup

setup()
