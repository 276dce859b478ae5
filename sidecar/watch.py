"""Re-read the config file when it is saved ([server] watch, on by default).

The file's directory is watched, not the file: editors that save by writing a temporary file and
renaming it over the old one (vim, emacs, VS Code, `sed -i`) replace the inode a file watch would hold,
and a file deleted then created again is seen too. A change is acted on SETTLE seconds after it is seen,
so an editor's truncate-write-close (or a script's several writes) is one reload; a save that leaves the
content as it was when last read (a touch, a no-op save) is not reloaded. A broken file, or a path that
cannot be read (a directory, a FIFO, no permission), is refused by Runtime.reload with one error line and
a `config` event, once while it stays so, and the running config stays; so does it while the file is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
from pathlib import Path

from sidecar.config.problems import ConfigError
from sidecar.config.schema import Config
from sidecar.nodes.runtime import Runtime, file_digest

log = logging.getLogger("llm_sidecar")

SETTLE = 0.25  # seconds from a change to reading the file, for the rest of the save to land
STEP_MS = 50  # the watch thread's tick: changes are grouped until a tick brings none; it sees a stop
DEBOUNCE_MS = 1600  # the longest changes are grouped, however busy the directory
STOP_WAIT = 5.0  # seconds close() waits for the watch thread


def watched_file(config: Config) -> Path | None:
    """The file the config was loaded from (load() records it absolute); None for a config built in
    memory, such as the demo's ("<demo>") or Config's default ("<memory>"), which has no file."""
    path = Path(config.path)
    return path if path.is_absolute() else None


class ConfigWatcher:
    """Watches the running config's file while its [server] watch is true: `sync` after each reload."""

    def __init__(self, runtime: Runtime, path: Path, *, settle: float = SETTLE) -> None:
        self.runtime = runtime
        self.path = path
        self.directories = self.targets()
        self.settle = settle
        self.task: asyncio.Task[None] | None = None
        self.stop_event: asyncio.Event | None = None
        self.running: set[asyncio.Task[None]] = set()  # stopping ones included, awaited by close()
        self.missing = False

    def start(self) -> None:
        """At start-up: watch if [server] watch is true, and say so either way (one line)."""
        if self.runtime.config.server.watch:
            self.sync()
        else:
            log.info("not watching %s ([server] watch = false): reload with `llm-sidecar reload` or SIGHUP", self.path)

    def sync(self) -> None:
        """Start or stop watching as the running config's [server] watch says. Never waits: it runs
        inside a reload, which may be this watcher's own."""
        want = self.runtime.config.server.watch
        if want and (self.task is None or self.task.done()):
            quiet = logging.getLogger("watchfiles")  # it logs every batch of changes at info
            quiet.setLevel(max(logging.WARNING, logging.getLogger().level))
            self.stop_event = asyncio.Event()
            self.task = asyncio.get_running_loop().create_task(self._watch(self.stop_event))
            self.running.add(self.task)
            self.task.add_done_callback(self.running.discard)
            log.info("watching %s: a saved edit is loaded ([server] watch = false turns this off)", self.path)
        elif not want and self.task is not None:
            self._stop()
            log.info("stopped watching %s ([server] watch = false)", self.path)

    def _restart(self) -> None:
        """Watch `directories` in a new task; the calling one ends (its watch closes as it returns)."""
        self.stop_event = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._watch(self.stop_event))
        self.running.add(self.task)
        self.task.add_done_callback(self.running.discard)

    def _stop(self) -> None:
        if self.stop_event is not None:
            self.stop_event.set()
        self.task = self.stop_event = None

    async def close(self) -> None:
        """Stop watching and wait for the watch thread to end (it looks at the stop event every STEP_MS)."""
        self._stop()
        if not self.running:
            return
        tasks = list(self.running)
        _, late = await asyncio.wait(tasks, timeout=STOP_WAIT)
        for task in late:  # not expected: cancelling waits for the thread's own timeout
            task.cancel()
        if late:
            await asyncio.wait(late, timeout=STOP_WAIT)

    def targets(self) -> list[str]:
        """The directories to watch: the file's own, and where a symlinked config (dotfiles) really lives.

        Every change in them counts, not only the file's name: Kubernetes updates a ConfigMap volume by
        swapping a `..data` symlink to a new directory and deleting the old one, and the file's name never
        changes. Changes to other files cost one read of the config, and are skipped as unchanged.
        """
        files = {os.path.normpath(self.path)}
        with contextlib.suppress(OSError, RuntimeError):
            files.add(os.path.normpath(self.path.resolve()))
        return sorted({os.path.dirname(f) for f in files})

    async def _watch(self, stop: asyncio.Event) -> None:
        try:
            from watchfiles import awatch  # here: `run` with watch = false never imports it
        except ImportError as exc:  # a build that left it out: say so, serve on
            log.warning("not watching %s: %s; reload with `llm-sidecar reload` or SIGHUP", self.path, exc)
            return
        changes = awatch(
            *self.directories,
            watch_filter=None,
            debounce=DEBOUNCE_MS,
            step=STEP_MS,
            stop_event=stop,
            recursive=False,
        )
        # Runs once this task waits for its first batch, so with the watch in place (awatch sets it up
        # before its first wait): a save made between loading the file and now is loaded then.
        asyncio.get_running_loop().call_soon(self._catch_up, stop)
        try:
            # It ends by itself once `stop` is set; aclosing frees its thread whatever happens.
            async with contextlib.aclosing(changes):
                async for _batch in changes:
                    # Changes while this waits come as the next batch: read then, the content is
                    # what was just loaded, so it is skipped.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.settle)
                    if not stop.is_set():
                        await self.changed()
                    if self.targets() != self.directories:  # the symlink now leads elsewhere: watch there
                        self.directories = self.targets()
                        self._restart()
                        return
        except Exception as exc:  # e.g. the inotify watch limit: the sidecar serves on, unwatched
            why = str(exc) or type(exc).__name__
            log.warning("stopped watching %s: %s; reload with `llm-sidecar reload` or SIGHUP", self.path, why)
            if self.task is asyncio.current_task():
                self.task = self.stop_event = None

    def _catch_up(self, stop: asyncio.Event) -> None:
        if not stop.is_set():
            task = asyncio.get_running_loop().create_task(self.changed())
            self.running.add(task)
            task.add_done_callback(self.running.discard)

    async def changed(self) -> None:
        """The file (or its directory entry) changed: reload if its content differs from what was read last."""
        digest = file_digest(str(self.path))
        if not os.path.exists(self.path):  # gone, or a symlink to nothing (os.path: never raises)
            if not self.missing:
                self.missing = True
                log.warning("%s is gone; the running config stays until a file is saved there again", self.path)
            return
        if self.missing:
            self.missing = False
            if digest == self.runtime.config_digest:
                log.info("%s is back, unchanged", self.path)
                return
            log.info("%s is back", self.path)
        if digest == self.runtime.config_digest:
            return  # saved as it was, or unreadable as it was: nothing to do, nothing to say
        with contextlib.suppress(OSError):
            info = self.path.stat()
            if stat.S_ISREG(info.st_mode) and info.st_size == 0:
                # Truncated by a save in place whose write has not landed yet (a busy machine can hold it
                # past SETTLE); that write brings another change. An empty file is never a config anyway.
                # (A FIFO's size is 0 too, but no write will come: it is refused below like a directory.)
                log.debug("%s is empty: waiting for its content", self.path)
                return
        log.info("%s changed: reloading", self.path)
        with contextlib.suppress(ConfigError):  # logged once and published by reload; the running config stays
            await self.runtime.reload()
