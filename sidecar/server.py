"""Process lifecycle: bind, serve the proxy (listener/), run the checks, stop gracefully."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from sidecar.config.problems import ConfigError
from sidecar.config.schema import Config
from sidecar.listener.acceptor import Acceptor
from sidecar.listener.bind import StartupError, bind_tcp
from sidecar.listener.connection import Limits
from sidecar.listener.server import HTTPServer
from sidecar.nodes.checker import ActiveChecker
from sidecar.nodes.prober import RecoveryProber
from sidecar.nodes.runtime import Runtime
from sidecar.proxy.app import ProxyApp
from sidecar.spend import recorder as spend
from sidecar.telemetry.start import start as start_traces

from .watch import ConfigWatcher, watched_file

log = logging.getLogger("llm_sidecar")


FD_RESERVE = 64  # descriptors kept for the control socket, logs, probes and the listener
FD_LIMIT_CAP = 65536  # when the hard limit is unlimited


class Server:
    """The proxy's HTTP server (listener/server.py) on a socket we bound: our accept, the connection cap, a stop.

    The benchmark's upstream and floor use it too, so every path is served alike.
    """

    def __init__(self, app: Any, limits: Limits) -> None:
        self.app = app
        self.limits = limits
        self.should_exit = False
        self.exit = asyncio.Event()
        self.http: HTTPServer | None = None

    def stop(self) -> None:
        """Stop accepting; requests in flight go on (see Stopper)."""
        self.should_exit = True
        self.exit.set()

    async def serve(self, sock: socket.socket) -> None:
        http = self.http = HTTPServer(self.app, replace(self.limits, max_connections=connection_cap(self.limits)))
        acceptor = http.listener = Acceptor(sock, http.protocol, http)
        sweep = asyncio.ensure_future(http.sweep())
        try:
            await self.exit.wait()
        finally:
            sweep.cancel()
            acceptor.close()
            sock.close()  # refuse new connections at once, rather than leave them in the backlog
            http.stop_accepting_requests()
            await http.wait_idle()
            http.close_all()

    @contextlib.contextmanager
    def signals(self, handler: Callable[[int], None] | None = None) -> Iterator[None]:
        """SIGINT/SIGTERM go to `handler` (default: stop), on the loop, from before the port opens."""
        if threading.current_thread() is not threading.main_thread():
            yield  # e.g. the demo behind the monitor: its owner stops it
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, handler or (lambda _sig: self.stop()), sig)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


def connection_cap(limits: Limits) -> int:
    """max_connections, and no more than the open-file limit allows (each proxied request holds two)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return limits.max_connections
    return min(limits.max_connections, max(16, (soft - FD_RESERVE) // 2))


def limits_of(config: Config) -> Limits:
    s = config.server
    return Limits(
        max_header_bytes=s.max_header_bytes,
        header_timeout=s.header_timeout,
        body_timeout=s.body_timeout,
        keepalive_timeout=s.keepalive_timeout,
        max_connections=s.max_connections,
    )


class Stopper:
    """The first SIGINT/SIGTERM stops new requests and gives those in flight `grace` seconds;
    a second signal, or the end of the grace, ends them at once with a clear error
    (an SSE error event for a stream, a 503 JSON error for an answer not yet started)."""

    def __init__(self, server: Any, app: ProxyApp, grace: float) -> None:
        self.server = server
        self.app = app
        self.grace = grace
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None

    def signal(self, sig: int) -> None:
        if not self.server.should_exit:
            self.server.stop()
            n = len(self.app.inflight)
            if n:
                log.info(
                    "stopping: waiting for %d in-flight request(s) (up to %gs); Ctrl-C again to stop now", n, self.grace
                )
            self.timer = asyncio.get_running_loop().call_later(self.grace, self.now)
        else:
            self.now()

    def now(self) -> None:
        if self.task is None:
            self.task = asyncio.ensure_future(self._now())

    async def _now(self) -> None:
        count = await self.app.stop_requests()
        if count:
            log.warning("stopped now: %d request(s) still in flight were ended with an error", count)

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()


@contextlib.contextmanager
def reload_on_hangup(runtime: Runtime) -> Iterator[None]:
    """SIGHUP re-reads the config file, as daemons do. Its default action killed the process at once,
    cutting every request in flight and leaving the control socket file behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()

    def hangup() -> None:
        task = loop.create_task(reload_quietly(runtime))
        pending.add(task)  # held until done: the loop keeps only a weak reference
        task.add_done_callback(pending.discard)

    loop.add_signal_handler(signal.SIGHUP, hangup)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


async def reload_quietly(runtime: Runtime) -> None:
    log.info("SIGHUP: reloading %s", runtime.config.path)
    with contextlib.suppress(ConfigError):  # logged and published by reload; the running config stays
        await runtime.reload()


def raise_fd_limit() -> None:
    """Every proxied request holds two descriptors: use all the hard limit allows."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard if hard != resource.RLIM_INFINITY else max(soft, FD_LIMIT_CAP)
        if soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            log.info("open file limit raised from %d to %d", soft, target)
    except (ValueError, OSError) as exc:
        log.warning("could not raise the open file limit: %s", exc)


def ignore_file_size_signal() -> None:
    """Under a file size limit (RLIMIT_FSIZE) a write past it raises SIGXFSZ, whose default kills the process:
    ignored, the write fails with EFBIG instead, and the journal treats it as a full disk."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


async def serve(config: Config, *, control_socket: Path | None = None, grace: float = 30.0) -> None:
    """Run until SIGINT/SIGTERM; in-flight requests get `grace` seconds to finish."""
    raise_fd_limit()
    ignore_file_size_signal()
    runtime = Runtime(config)
    traces = start_traces(config.telemetry, runtime.version)  # None with traces off (sidecar/telemetry/)
    app = ProxyApp(runtime, None if traces is None else traces.tracing)
    # Signals are handled before the port opens: a client that can connect may signal us at once.
    server = Server(app, limits_of(config))
    stopper = Stopper(server, app, grace)
    with server.signals(stopper.signal), reload_on_hangup(runtime):
        try:
            await _serve(runtime, server, control_socket)
        finally:
            stopper.cancel()
            if traces is not None:
                await traces.close()


async def _serve(runtime: Runtime, server: Any, control_socket: Path | None) -> None:
    config = runtime.config
    control = None
    if control_socket is not None:
        from sidecar.control.server import ControlServer

        control = ControlServer(runtime, control_socket)
        await control.start()
    # The proxy port opens last, so a client that can connect finds the control API too.
    try:
        sock = bind_tcp(config.server.host, config.server.port)
    except StartupError:
        if control is not None:
            await control.stop()
        raise
    recorder = spend.start(runtime)  # opens the journal and reads spend back before the first request
    checker = ActiveChecker(runtime)
    checker.sync()
    prober = RecoveryProber(runtime)
    prober.start()
    watchdog = asyncio.ensure_future(runtime.send_watch.run())
    file = watched_file(config)  # None for a config built in memory (the demo's): no file to watch
    watcher = ConfigWatcher(runtime, file) if file is not None else None

    def on_reload() -> None:
        checker.sync()
        if watcher is not None:
            watcher.sync()  # [server] watch may have changed

    runtime.on_reload = on_reload
    nodes = ", ".join(f"{n.name}(priority {n.priority}, weight {n.weight})" for n in config.upstream.nodes)
    log.info("llm-sidecar %s listening on http://%s/v1 -> %s", runtime.version, config.server.listen, nodes)
    for node in config.upstream.nodes:
        if node.url_had_v1:
            log.info(
                "node %s: the /v1 at the end of its url is dropped (each request's path brings its own)", node.name
            )
    if control is not None:
        log.info("control socket %s", control.path)
    if watcher is not None:
        watcher.start()
    tune_gc()
    try:
        await server.serve(sock)
    finally:
        log.info("stopping")
        watchdog.cancel()
        if watcher is not None:
            await watcher.close()
        await checker.close()
        await prober.close()
        if control is not None:
            await control.stop()
        await runtime.close()
        sock.close()
        await asyncio.to_thread(recorder.close)  # after the last request: its record is written too


def tune_gc() -> None:
    """Collect young objects every 20,000 allocations instead of every 700.

    A request leaves reference cycles behind (aiohttp's response and connection,
    futures, exceptions), and everything in flight is young. At the default
    threshold, with 256 requests in flight, collections cost more than the rest of
    the sidecar's own work put together (measured ~190 µs per request; ~5 µs with
    this). Objects from start-up are frozen first, so full collections skip them.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def run(config: Config, *, control_socket: Path | None = None, grace: float = 30.0) -> None:
    """Blocking entry point with uvloop, the fastest loop for this load."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(config, control_socket=control_socket, grace=grace))
