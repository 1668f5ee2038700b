"""Config reload: re-reading the config file a Service was built from and applying its whitelists."""

from __future__ import annotations

import dataclasses
import logging

from .config import Config
from .errors import ConfigError, ServiceClosed
from .service_base import ServiceBase

__all__ = ["ConfigWatch"]

log = logging.getLogger("crust")


class ConfigWatch(ServiceBase):
    """The config file's periodic re-read (reactor timer, file read on a worker)."""

    def _schedule_config_reload(self) -> None:
        self._reactor.call_later(self._config.config_reload_interval, self._reload_config)

    def _reload_config(self) -> None:
        """Re-read the config file on a worker; apply changed whitelists on the reactor."""
        path = self._config_file
        if path is None or self._closed:
            return

        def load() -> None:
            try:
                fresh = Config.load(path)
            except ConfigError as exc:
                log.warning("config file %s not reloaded: %s", path, exc)
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
        if fresh is not None and (fresh.whitelisted_node_ips, fresh.whitelisted_client_ips) != (
                cfg.whitelisted_node_ips, cfg.whitelisted_client_ips):
            log.info("config file %s: applying new whitelists", self._config_file)
            self._config = dataclasses.replace(cfg, whitelisted_node_ips=fresh.whitelisted_node_ips,
                                               whitelisted_client_ips=fresh.whitelisted_client_ips)
            self._engine.update_whitelists(fresh.whitelisted_node_ips, fresh.whitelisted_client_ips,
                                           self._reactor.time())
            self._driver.pump()
        self._schedule_config_reload()
