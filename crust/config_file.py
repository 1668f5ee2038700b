"""The config file: where it is looked for, and reading and writing it as JSON.

The file and environment half of :mod:`crust.config`, which is sans-IO:
``Config.load``, ``Config.save`` and the default ``bootstrap_cache_path``
come here (see :func:`crust.config.lend_file_side`, called at import), and
:func:`read_config_file` finds the default file through ``$CRUST_CONFIG``,
the running program's name and the per-user config directory.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from .config import Config, lend_file_side
from .errors import ConfigError
from .ids import Contact

__all__ = [
    "CONFIG_ENV_VAR", "default_bootstrap_cache_path", "load_config", "save_config", "config_file_candidates",
    "find_config_file", "read_config_file",
]

CONFIG_ENV_VAR = "CRUST_CONFIG"

log = logging.getLogger("crust")


def default_bootstrap_cache_path() -> str:
    """``$XDG_CACHE_HOME/crust/bootstrap_cache.json`` (``~/.cache`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "crust", "bootstrap_cache.json")


def load_config(path: str | os.PathLike[str], cls: type[Config] = Config) -> Config:
    """Read a JSON config file (what ``Config.load(path)`` does).

    Contacts may be ``"host:port"`` strings or ``{"addr": ..., "peer_id": ...}``
    objects, as :func:`save_config` writes them.

    Raises:
        ConfigError: unreadable file, bad JSON, unknown field or bad value.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deep
        raise ConfigError(f"cannot read config file {os.fspath(path)!r}: {exc}") from exc
    if isinstance(data, dict):
        contacts = data.get("hard_coded_contacts")
        if isinstance(contacts, list):
            try:
                data["hard_coded_contacts"] = [
                    Contact(c["addr"], c.get("peer_id")) if isinstance(c, dict) and "addr" in c else c
                    for c in contacts
                ]
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"hard_coded_contacts: {exc}") from None
    return cls.from_dict(data)


def save_config(config: Config, path: str | os.PathLike[str]) -> None:
    """Write ``config`` as pretty JSON, replacing the file atomically (what ``config.save(path)`` does)."""
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(config.to_dict(), fh, indent=2, sort_keys=True)
        fh.write("\n")
    os.replace(tmp, path)


class _FileSide:
    """This module, as the :class:`crust.config.FileSide` that ``Config`` borrows."""

    def load(self, cls: type[Config], path: str | os.PathLike[str]) -> Config:
        return load_config(path, cls)

    def save(self, config: Config, path: str | os.PathLike[str]) -> None:
        save_config(config, path)

    def default_bootstrap_cache_path(self) -> str:
        return default_bootstrap_cache_path()


lend_file_side(_FileSide())


# -- the default config file ------------------------------------------------------


def _user_config_dir() -> str:
    """``$XDG_CONFIG_HOME`` (``~/.config`` when unset); ``%APPDATA%`` on Windows when set."""
    if os.name == "nt" and os.environ.get("APPDATA"):
        return os.environ["APPDATA"]
    return os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")


def _program_config_file() -> str | None:
    """``<program name>.crust.config`` beside the running script, or None without a script."""
    argv0 = sys.argv[0] if sys.argv else ""
    if not argv0 or argv0 == "-c" or argv0 == "-":  # interactive, ``python -c``, stdin
        return None
    script = os.path.abspath(argv0)
    name = os.path.splitext(os.path.basename(script))[0]
    if not name:
        return None
    return os.path.join(os.path.dirname(script), f"{name}.crust.config")


def config_file_candidates() -> list[str]:
    """Where :func:`read_config_file` looks, in order (API.md "Config").

    ``$CRUST_CONFIG`` when set; ``<program name>.crust.config`` beside the
    running script (``sys.argv[0]``, extension dropped: ``app.py`` ->
    ``app.crust.config``); ``crust/crust.config`` in the per-user config dir
    (``$XDG_CONFIG_HOME``, else ``~/.config``).
    """
    out = []
    env = os.environ.get(CONFIG_ENV_VAR)
    if env:
        out.append(env)
    program = _program_config_file()
    if program is not None:
        out.append(program)
    out.append(os.path.join(_user_config_dir(), "crust", "crust.config"))
    return out


def find_config_file() -> str | None:
    """The first of :func:`config_file_candidates` that exists, or None.

    Raises:
        ConfigError: ``$CRUST_CONFIG`` is set but names no file (an explicit
            choice is never silently replaced by another file or by defaults).
    """
    env = os.environ.get(CONFIG_ENV_VAR)
    if env and not os.path.isfile(env):
        raise ConfigError(f"${CONFIG_ENV_VAR} names {env!r}, which is not a file")
    for path in config_file_candidates():
        if os.path.isfile(path):
            return path
    return None


def read_config_file() -> Config:
    """Load the default config file (see :func:`config_file_candidates`).

    When there is none, returns ``Config()`` and logs (INFO, logger
    ``"crust"``) every place it looked; no file is created.

    Raises:
        ConfigError: the file found cannot be read or is not a valid config
            (the message names the file and the problem), or ``$CRUST_CONFIG``
            names a missing file.
    """
    path = find_config_file()
    if path is None:
        log.info("no crust config file found (looked in %s); using defaults",
                 ", ".join(config_file_candidates()))
        return Config()
    log.info("reading crust config file %s", path)
    try:
        return Config.load(path)
    except ConfigError as exc:
        if path in str(exc):
            raise
        raise ConfigError(f"config file {path!r}: {exc}") from exc
