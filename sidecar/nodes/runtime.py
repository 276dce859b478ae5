"""What a running sidecar holds: the loaded config, the current upstream generation and the event hub."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable

from sidecar import __version__
from sidecar.config.envfile import Environment
from sidecar.config.load import load, read_text
from sidecar.config.problems import ConfigError
from sidecar.config.schema import Config
from sidecar.observe.events import EventHub
from sidecar.observe.record import Desk, Recorder

from .budget import Budgets
from .transport import AiohttpTransport, Transport
from .upstream import Upstream
from .watchdog import SendWatch

log = logging.getLogger("llm_sidecar")

TransportFactory = Callable[[Config, SendWatch], Transport]


def file_digest(path: str) -> str:
    """A digest of what the config file holds: its text, or why it cannot be read (gone, a directory,
    unreadable, not UTF-8). A file that stays unreadable the same way digests the same, so the watch
    reports it once, not at every change in its directory (the sidecar's own log file may be there)."""
    try:
        what = b"text\n" + read_text(path).encode()
    except ConfigError as exc:
        what = b"unreadable\n" + exc.message.encode()
    return hashlib.sha256(what).hexdigest()


class Runtime:
    def __init__(
        self,
        config: Config,
        events: EventHub | None = None,
        transport: TransportFactory = AiohttpTransport,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.events = events or EventHub()
        self.config = config
        self.send_watch = SendWatch()
        self.transport = transport
        self.clock = clock
        self.budgets = Budgets()  # nodes out for budget, the sidecar's spent budget (set by spend/recorder.py)
        self.desk = Desk()  # a request's bodies on their way to the journal, when it keeps them
        self.recorder: Recorder | None = None  # spend and the journal's drops, once the process records them
        self.upstream = Upstream(
            config, self.events, transport(config, self.send_watch), clock=clock, budgets=self.budgets
        )
        self.started = time.time()
        self.started_monotonic = time.monotonic()
        self.config_loaded_at = self.started
        self.pid = os.getpid()
        self.version = __version__
        self.control_socket = ""
        self.on_reload: Callable[[], None] | None = None
        # What the last reload (or the start) read from the file, loaded or refused: a save that leaves
        # the content as it was (a touch, a no-op save) is not reloaded by the file watcher (sidecar/watch.py).
        self.config_digest = file_digest(config.path)
        self.reload_lock = asyncio.Lock()  # reloads (file watcher, SIGHUP, control API) one at a time
        self.closing: set[asyncio.Task[None]] = set()

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started_monotonic

    def acquire(self) -> Upstream:
        """The current generation, held until `release`: a reload will not close it under a request."""
        upstream = self.upstream
        upstream.refs += 1
        return upstream

    def release(self, upstream: Upstream) -> None:
        upstream.refs -= 1
        if upstream.retired and upstream.refs == 0:
            self._close(upstream)

    def _close(self, upstream: Upstream) -> None:
        task = asyncio.ensure_future(upstream.close())
        self.closing.add(task)
        task.add_done_callback(self.closing.discard)

    def apply(self, config: Config) -> Upstream:
        """Switch to a new generation; the old one closes when its last request ends."""
        old = self.upstream
        transport = self.transport(config, self.send_watch)
        new = Upstream(
            config, self.events, transport, old.nodes, self.clock, old.pins, old.held, old.owners, self.budgets
        )
        self.upstream = new
        self.config = config
        self.config_loaded_at = time.time()
        old.retired = True
        if old.refs == 0:
            self._close(old)
        if self.on_reload is not None:
            self.on_reload()
        return new

    async def reload(self) -> Config:
        """Re-read the config file; on any error keep the running config and raise.

        Logs once and publishes a `config` event whatever the outcome; callers log nothing more."""
        async with self.reload_lock:
            return self._reload()

    def _reload(self) -> Config:
        path = self.config.path
        # Read before loading: if the file changes in between, the watcher sees a digest that differs
        # from this one and loads it again (never the other way round, a change it would skip).
        self.config_digest = file_digest(path)
        try:
            # A variable missing here is missing from the environment the sidecar started with: its error says so.
            config = load(path, Environment(os.environ, running=True))
        except ConfigError as exc:
            self.events.publish("config", ok=False, path=path, error=exc.to_dict())
            # One line whatever the file holds: the first problem, and how many more (`check` lists them).
            log.error("reload failed, keeping the running config: %s", exc.summary())
            raise
        # Read once, when the listener and the control socket start.
        at_start = (
            "listen control_socket max_header_bytes header_timeout body_timeout keepalive_timeout max_connections"
        )
        was, now = self.config.server, config.server
        later = [key for key in at_start.split() if getattr(was, key) != getattr(now, key)]
        if later:
            log.warning("reload: changes to [server] %s take effect on restart", ", ".join(later))
        if self.config.telemetry != config.telemetry:
            log.warning("reload: changes to [telemetry] take effect on restart")
        new = self.apply(config)
        self.events.publish("config", ok=True, path=config.path, nodes=[n.name for n in new.nodes])
        log.info("config reloaded from %s (%d nodes)", config.path, len(new.nodes))
        return config

    async def close(self) -> None:
        """Close the current generation and wait for retired ones being closed."""
        self.upstream.retired = True
        if self.upstream.refs == 0:
            self._close(self.upstream)
        if self.closing:
            await asyncio.wait(list(self.closing), timeout=5)
