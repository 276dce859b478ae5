"""What a running sidecar holds: the loaded config, the upstream and the event hub."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable

from . import __version__
from .config import Config, ConfigError, load
from .events import EventHub
from .upstream import Upstream
from .watchdog import SendWatch

log = logging.getLogger("llm_sidecar")


class Runtime:
    def __init__(self, config: Config, events: EventHub | None = None) -> None:
        self.events = events or EventHub()
        self.config = config
        self.upstream = Upstream(config, self.events)
        self.started = time.time()
        self.started_monotonic = time.monotonic()
        self.config_loaded_at = self.started
        self.pid = os.getpid()
        self.version = __version__
        self.control_socket = ""
        self._retiring: asyncio.Future[None] | None = None
        self.on_reload: Callable[[], None] | None = None
        self.send_watch = SendWatch()

    def _retire(self, old: Upstream) -> None:
        """Close the old sessions once their in-flight requests are done (bounded)."""

        async def close_when_idle() -> None:
            deadline = time.monotonic() + self.config.upstream.timeout.read + 5
            while any(n.stats.in_flight for n in old.nodes) and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            await old.close()

        self._retiring = asyncio.ensure_future(close_when_idle())

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started_monotonic

    async def reload(self) -> Config:
        """Re-read the config file; on any error keep the running config and raise."""
        try:
            config = load(self.config.path)
        except ConfigError as exc:
            self.events.publish("config", ok=False, path=self.config.path, error=exc.to_dict())
            log.error("reload failed, keeping the running config: %s", exc)
            raise
        if (config.server.host, config.server.port) != (self.config.server.host, self.config.server.port):
            log.warning("reload: [server].listen changes take effect on restart")
        old = self.upstream
        new = Upstream(config, self.events, previous=old.nodes)
        # Sessions of nodes that survive are moved over; in-flight requests keep
        # the old Upstream object they started with.
        same_timeouts = config.upstream.timeout == self.config.upstream.timeout
        kept = {n.name: n for n in old.nodes}
        for node in new.nodes:
            previous = kept.get(node.name)
            if same_timeouts and previous is not None and previous.config.url == node.config.url:
                node.session, previous.session = previous.session, None
        await new.start()
        self.upstream = new
        self.config = config
        self.config_loaded_at = time.time()
        self._retire(old)
        if self.on_reload is not None:
            self.on_reload()
        self.events.publish("config", ok=True, path=config.path, nodes=[n.name for n in new.nodes])
        log.info("config reloaded from %s (%d nodes)", config.path, len(new.nodes))
        return config
