"""The control API: HTTP over a Unix socket that only this user can open.

It is the one contract between the sidecar and its monitor/CLI; the JSON it
answers is built in `api.py` and documented in README. The socket is bound
here rather than by the server library, so its mode is 0600 from the start
(uvicorn's `uds=` would chmod it 0666), and a live sidecar on the same path is
refused rather than robbed of its socket.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
from pathlib import Path

from aiohttp import web

from . import api
from .config import ConfigError
from .runtime import Runtime
from .server import StartupError
from .shapes import FailoverJSON, ReloadJSON

log = logging.getLogger("llm_sidecar")


def socket_is_live(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def bind_unix(path: Path) -> socket.socket:
    """Bind `path` with mode 0600 in a 0700 directory; replace only a stale socket."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot create {path.parent}: {exc.strerror or exc}") from None
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise StartupError(f"control socket path {path} exists and is not a socket")
        if socket_is_live(path):
            raise StartupError(
                f"another llm-sidecar is running on control socket {path}; stop it or use --control-socket"
            )
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot bind control socket {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(64)
    sock.setblocking(False)
    return sock


def _error(status: int, message: str, type_: str, **extra: object) -> web.Response:
    return web.json_response({"error": {"message": message, "type": type_, **extra}}, status=status)


class ControlServer:
    def __init__(self, runtime: Runtime, path: Path) -> None:
        self.runtime = runtime
        self.path = path
        self.runner: web.AppRunner | None = None
        self.inode: int | None = None
        app = web.Application()
        app.router.add_get("/v1/status", self.status)
        app.router.add_get("/v1/events", self.events)
        app.router.add_post("/v1/nodes/{name}/down", self.node_down)
        app.router.add_post("/v1/nodes/{name}/auto", self.node_auto)
        app.router.add_post("/v1/failover", self.failover)
        app.router.add_post("/v1/reload", self.reload)
        self.app = app

    async def start(self) -> None:
        sock = bind_unix(self.path)
        self.inode = os.stat(self.path).st_ino
        self.runtime.control_socket = str(self.path)
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self.runner.setup()
        await web.SockSite(self.runner, sock).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        # Remove the socket only if it is still ours (not a newer sidecar's).
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == self.inode:
                self.path.unlink()

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(api.status(self.runtime))

    async def events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache"})
        await response.prepare(request)
        replay = request.query.get("replay", "1") != "0"
        with contextlib.suppress(ConnectionError):
            async for event in self.runtime.events.subscribe(replay=replay):
                await response.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")
        return response

    async def node_down(self, request: web.Request) -> web.Response:
        return self._manual(request, down=True)

    async def node_auto(self, request: web.Request) -> web.Response:
        return self._manual(request, down=False)

    def _manual(self, request: web.Request, down: bool) -> web.Response:
        node = self.runtime.upstream.by_name.get(request.match_info["name"])
        if node is None:
            names = ", ".join(self.runtime.upstream.by_name)
            return _error(404, f"no node named {request.match_info['name']!r} (nodes: {names})", "not_found")
        self.runtime.upstream.set_manual(node, down)
        if down:
            log.warning("node %s drained by hand over the control socket", node.name)
        else:
            log.info("node %s given back to automatic health checks over the control socket", node.name)
        return web.json_response(api.manual_answer(self.runtime, node))

    async def failover(self, request: web.Request) -> web.Response:
        """Drain the serving node. With `{"node": NAME}` only if NAME still serves (409 otherwise),
        so an operator who confirmed a failover away from NAME never drains another node."""
        named: str | None = None
        if request.can_read_body:
            try:
                payload = await request.json()
            except ValueError:
                return _error(400, 'body must be JSON, like {"node": "openai"}', "invalid_request")
            named = payload.get("node") if isinstance(payload, dict) else None
            if named is not None and not isinstance(named, str):
                return _error(400, "node must be a string", "invalid_request")
        upstream = self.runtime.upstream
        current = upstream.serving()
        now = upstream.clock()
        if current is None:
            return _error(409, "no node is serving: every node is manually down", "conflict")
        if named is not None and named != current.name:
            return _error(
                409, f"refused: {named} no longer serves ({current.name} does now); nothing was changed", "conflict"
            )
        others = [n for n in upstream.nodes if n is not current and n.health.available(now)]
        if not others:
            return _error(
                409,
                f"refused: no other node is healthy to take traffic, so {current.name} keeps serving",
                "conflict",
            )
        upstream.set_manual(current, True)
        log.warning("manual failover away from %s over the control socket", current.name)
        serving = upstream.serving()
        answer: FailoverJSON = {"down": current.name, "serving": serving.name if serving else None}
        return web.json_response(answer)

    async def reload(self, request: web.Request) -> web.Response:
        try:
            config = await self.runtime.reload()
        except ConfigError as exc:
            return _error(400, str(exc), "config_error", file=exc.file, key=exc.key)
        answer: ReloadJSON = {"ok": True, "config_path": config.path, "nodes": [n.name for n in config.upstream.nodes]}
        return web.json_response(answer)
