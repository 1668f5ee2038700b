"""Config watch: following the config file a Service was built from, and applying its whitelists live.

Theory of operation.  A watched file (``Service(..., watch=path)``, or the
default file a ``Service()`` without a config read) is checked every
``config_reload_interval`` seconds on the reactor's timer: one ``stat()``,
compared with what the last check saw (modification time, size and inode,
so an atomic replace counts even within one mtime tick).  Only a change
sends the read and the parse to the worker pool (never the reactor: a file
read may block); the result comes back on the reactor, which applies the
new whitelists to every live peer, whatever its origin (the engine drops
the ones they exclude; they see ``on_lost``).  Other changed fields need a
new Service and are named in a log line.  A file that fails to load is
logged and skipped; the next change is tried again.  No thread of its own:
a timer, a stat and, on a change, one worker task.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from .config import Config
from .errors import ConfigError, ServiceClosed
from .service_base import ServiceBase

__all__ = ["ConfigWatch", "file_version"]

log = logging.getLogger("crust")

FileVersion = tuple[int, int, int] | None
LIVE_FIELDS = ("whitelisted_node_ips", "whitelisted_client_ips")  # what a running Service applies from the file


def file_version(path: str | os.PathLike[str]) -> FileVersion:
    """What tells one version of a file from the next: (mtime in ns, size, inode); None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


class ConfigWatch(ServiceBase):
    """The watched config file's change check (reactor timer) and re-read (worker)."""

    _config_version: FileVersion  # the reactor thread only (set in Service.__init__ before it starts)

    def _schedule_config_reload(self) -> None:
        self._reactor.call_later(self._config.config_reload_interval, self._check_config_file)

    def _check_config_file(self) -> None:
        """On the reactor: re-read the file if it changed since the last check, else look again later."""
        path = self._config_file
        if path is None or self._closed:
            return
        version = file_version(path)
        if version is None or version == self._config_version:
            self._schedule_config_reload()  # unchanged, or gone for now (an editor's save in progress)
            return
        self._config_version = version

        def load() -> None:
            try:
                fresh = Config.load(path)
            except ConfigError as exc:
                log.warning("config file %s changed but was not applied: %s", path, exc)
                fresh = None
            try:
                self._reactor.call_soon_threadsafe(self._apply_config, fresh)
            except ServiceClosed:
                pass

        try:
            self._worker().submit(load)
        except (ServiceClosed, RuntimeError):
            pass

    def _apply_config(self, fresh: Config | None) -> None:
        if self._closed:
            return
        cfg = self._config
        if fresh is not None:
            ignored = [f.name for f in dataclasses.fields(Config) if f.name not in LIVE_FIELDS
                       and f.name != "config_reload_interval" and getattr(fresh, f.name) != getattr(cfg, f.name)]
            if ignored:
                log.warning("config file %s: %s changed; a running Service applies only the whitelists "
                            "(and config_reload_interval), the rest on its next start", self._config_file,
                            ", ".join(ignored))
            changes = {name: getattr(fresh, name) for name in LIVE_FIELDS + ("config_reload_interval",)
                       if getattr(fresh, name) != getattr(cfg, name)}
            if changes:
                self._config = cfg = dataclasses.replace(cfg, **changes)
            if any(name in changes for name in LIVE_FIELDS):
                log.info("config file %s: applying new whitelists", self._config_file)
                self._engine.update_whitelists(cfg.whitelisted_node_ips, cfg.whitelisted_client_ips,
                                               self._reactor.time())
                self._driver.pump()
        self._schedule_config_reload()
