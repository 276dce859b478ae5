"""The control API: HTTP over the control socket (socket.py).

It is the one contract between the sidecar and its monitor and CLI; the JSON it answers is built in
status.py from the shapes in observe/shapes.py and documented in docs/control-api.md. It sees the
running sidecar only through its `Runtime`: status, node down/auto, failover, reload, events, metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from sidecar import metrics
from sidecar.config.problems import ConfigError, one_line
from sidecar.journal import reader
from sidecar.journal.paths import journal_path
from sidecar.nodes.node import NodeState
from sidecar.nodes.runtime import Runtime
from sidecar.nodes.upstream import Upstream
from sidecar.observe.shapes import FailoverJSON, ReloadJSON

from . import status as api
from .socket import bind_unix

log = logging.getLogger("llm_sidecar")


DROP_GRACE = 5.0  # seconds a dropped event reader has to take its last line before its connection is cut
GONE_CHECK_EVERY = 1.0  # seconds between checks that an idle event reader's client is still there


def _error(status: int, message: str, type_: str, **extra: object) -> web.Response:
    return web.json_response({"error": {"message": message, "type": type_, **extra}}, status=status)


def of_api(upstream: Upstream, node: NodeState) -> str:
    """Words naming the node's format, where nodes speak two (one format cannot stand in for the other)."""
    if len({n.config.api for n in upstream.nodes}) < 2:
        return ""
    return f" for {node.config.api} requests"


def _refuse(request: web.Request, status: int, message: str, type_: str = "invalid_request") -> web.Response:
    """A malformed request is the client's mistake, not ours: one WARNING line and a JSON error."""
    log.warning(
        "control socket: %s %s refused (%d): %s",
        request.method,
        one_line(request.raw_path[:200]),
        status,
        one_line(message),
    )
    return _error(status, message, type_)


_HTTP_ERRORS = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp answers an unknown path, a wrong method or an oversized body in plain text;
    clients of the control API read JSON errors."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _refuse(request, exc.status, exc.reason, _HTTP_ERRORS.get(exc.status, "invalid_request"))


class _ServerLog(logging.Logger):
    """aiohttp's server logger, for its errors outside any handler. A request that is not valid
    HTTP gets one WARNING line instead of an ERROR with a traceback; anything else, a bug, keeps it."""

    def __init__(self) -> None:
        super().__init__("aiohttp.server")
        self.parent = logging.getLogger("aiohttp.server")

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            first = str(exc_info.message).strip().splitlines()[:1] or [""]
            log.warning("control socket: malformed HTTP request refused (%d): %s", exc_info.code, one_line(first[0]))
        else:
            super().exception(msg, *args, exc_info=exc_info, **kwargs)


class ControlServer:
    def __init__(self, runtime: Runtime, path: Path) -> None:
        self.runtime = runtime
        self.path = path
        self.runner: web.AppRunner | None = None
        self.inode: int | None = None
        app = web.Application(middlewares=[_json_errors])
        app.router.add_get("/v1/status", self.status)
        app.router.add_get("/v1/events", self.events)
        app.router.add_get("/v1/requests/{id}", self.request_detail)
        app.router.add_post("/v1/nodes/{name}/down", self.node_down)
        app.router.add_post("/v1/nodes/{name}/auto", self.node_auto)
        app.router.add_post("/v1/failover", self.failover)
        app.router.add_post("/v1/reload", self.reload)
        app.router.add_get("/metrics", self.prometheus)
        self.app = app

    async def start(self) -> None:
        sock = bind_unix(self.path)
        self.inode = os.stat(self.path).st_ino
        self.runtime.control_socket = str(self.path)
        self.runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=1.0, logger=_ServerLog()
        )
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

    async def request_detail(self, request: web.Request) -> web.Response:
        """One finished request: from the events the sidecar still holds, else from the journal's file."""
        rid = request.match_info["id"]
        for event in reversed(self.runtime.events.recent):
            if event.get("type") == "request" and event.get("id") == rid:
                return web.json_response(reader.detail(event, "recent"))
        journal = self.runtime.config.journal
        found = None
        if journal.enabled:
            with contextlib.suppress(reader.NoJournal, sqlite3.Error):
                found = await asyncio.to_thread(reader.lookup, journal_path(journal), rid)
        if found is None:
            where = "the recent events or the journal" if journal.enabled else "the recent events (the journal is off)"
            return _error(404, f"no request {one_line(rid[:128])!r} in {where}", "not_found")
        return web.json_response(found)

    async def prometheus(self, request: web.Request) -> web.Response:
        """Prometheus metrics, the same as the proxy listener's metrics_path (which may be off); no key."""
        body, content_type = metrics.exposition(metrics.attach(self.runtime))
        return web.Response(body=body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})

    async def events(self, request: web.Request) -> web.StreamResponse:
        """NDJSON events for at most `max_event_subscribers` readers at once (503 past it), so idle or
        stuck readers cannot pile up cost in the proxy's loop. A reader the hub drops for not reading gets
        `DROP_GRACE` seconds to take its final `missed` line, then its connection is cut: a peer that
        never reads would otherwise hold the connection and its unsent bytes forever."""
        hub = self.runtime.events
        cap = self.runtime.config.server.max_event_subscribers
        if len(hub.subscribers) >= cap:
            return _error(
                503,
                f"too many event stream readers: {cap} are attached ([server].max_event_subscribers); "
                "close one or raise the limit",
                "overloaded",
            )
        # Attached before the first await, so concurrent requests cannot all pass the check above.
        sub = hub.attach(replay=request.query.get("replay", "1") != "0")
        loop = asyncio.get_running_loop()
        transport = request.transport
        if transport is not None:

            def cut_later() -> None:  # runs in the publisher: only arms a timer
                loop.call_later(DROP_GRACE, transport.abort)

            sub.on_drop = cut_later

        watch: asyncio.TimerHandle | None = None

        def check_gone() -> None:
            # aiohttp does not tell a waiting handler that its client left: without this, a reader
            # that disconnects while no events flow would hold its slot until the next event.
            nonlocal watch
            if request.transport is None or request.transport.is_closing():
                hub.close(sub)
            else:
                watch = loop.call_later(GONE_CHECK_EVERY, check_gone)

        watch = loop.call_later(GONE_CHECK_EVERY, check_gone)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "Cache-Control": "no-cache"})
        try:
            with contextlib.suppress(ConnectionError):
                await response.prepare(request)
                async for batch in hub.batches(sub):
                    for chunk in hub.chunks(batch):  # a replay or a burst in a few writes, each line encoded once
                        await response.write(chunk)
        finally:
            if watch is not None:
                watch.cancel()
            hub.detach(sub)
        if sub.dropped:
            response.force_close()
            log.warning("dropped an event stream reader: it missed %d events in a row", hub.drop_after)
        return response

    async def node_down(self, request: web.Request) -> web.Response:
        """Drain a node. Refused (409) when it is the last usable one, unless the body is {"force": true}."""
        force = False
        if request.can_read_body:
            try:
                payload = json.loads(await request.read())
            except (ValueError, RecursionError):
                return _refuse(request, 400, 'body must be JSON, like {"force": true}')
            if not isinstance(payload, dict) or set(payload) - {"force"} or not isinstance(payload.get("force"), bool):
                return _refuse(request, 400, 'body must be a JSON object with only "force" (true/false)')
            force = payload["force"]
        return self._manual(request, down=True, force=force)

    async def node_auto(self, request: web.Request) -> web.Response:
        return self._manual(request, down=False)

    def _manual(self, request: web.Request, down: bool, force: bool = False) -> web.Response:
        upstream = self.runtime.upstream
        node = upstream.by_name.get(request.match_info["name"])
        if node is None:
            names = ", ".join(upstream.by_name)
            return _refuse(request, 404, f"no node named {request.match_info['name']!r} (nodes: {names})", "not_found")
        if down and not node.health.manual_down:
            # Of its own format: a node of the other one cannot take its requests.
            others = [
                n
                for n in upstream.nodes
                if n is not node and n.config.api == node.config.api and not n.health.manual_down
            ]
            if not others or (node.health.healthy and not any(n.health.healthy for n in others)):
                # Not drained, the others would still be tried (panic mode); all drained, every request gets 503.
                why = (
                    "every other node is down by hand, so with it down every request would get 503"
                    if not others
                    else "no other node is healthy to take traffic"
                )
                if not force:
                    return _error(
                        409,
                        f"refused: {node.name} is the last usable node{of_api(upstream, node)}: {why}; nothing was changed "
                        f"(to drain it anyway: llm-sidecar node down --force {node.name})",
                        "conflict",
                    )
                log.warning("node %s: drained with --force although it was the last usable node: %s", node.name, why)
        upstream.set_manual(node, down)
        return web.json_response(api.manual_answer(self.runtime, node))

    async def failover(self, request: web.Request) -> web.Response:
        """Drain the serving node. With `{"node": NAME}` only if NAME still serves (409 otherwise),
        so an operator who confirmed a failover away from NAME never drains another node."""
        named: str | None = None
        if request.can_read_body:
            try:
                # Bytes, not request.json(): a bogus charset would raise LookupError. RecursionError: [[[[...
                payload = json.loads(await request.read())
            except (ValueError, RecursionError):
                return _refuse(request, 400, 'body must be JSON, like {"node": "openai"}')
            if not isinstance(payload, dict) or set(payload) - {"node"}:
                return _refuse(request, 400, 'body must be a JSON object with only "node", like {"node": "openai"}')
            named = payload.get("node")
            if named is not None and not isinstance(named, str):
                return _refuse(request, 400, "node must be a string")
        upstream = self.runtime.upstream
        # A named node is compared with what serves its own format (a mixed config serves one of each).
        named_node = upstream.by_name.get(named) if named is not None else None
        current = upstream.serving(named_node.config.api if named_node is not None else None)
        now = upstream.clock()
        if current is None:
            return _error(409, "no node is serving: every node is manually down", "conflict")
        if named is not None and named != current.name:
            return _error(
                409, f"refused: {named} no longer serves ({current.name} does now); nothing was changed", "conflict"
            )
        api_ = current.config.api
        others = [n for n in upstream.nodes if n is not current and n.config.api == api_ and n.health.available(now)]
        if not others:
            return _error(
                409,
                f"refused: no other node{of_api(upstream, current)} is healthy to take traffic, "
                f"so {current.name} keeps serving",
                "conflict",
            )
        upstream.set_manual(current, True)
        log.warning("manual failover away from %s over the control socket", current.name)
        serving = upstream.serving(api_)
        answer: FailoverJSON = {"down": current.name, "serving": serving.name if serving else None}
        return web.json_response(answer)

    async def reload(self, request: web.Request) -> web.Response:
        try:
            config = await self.runtime.reload()
        except ConfigError as exc:
            # message, file and key: the first problem (summary() says how many more); errors: all, bounded.
            return _error(
                400,
                exc.summary(),
                "config_error",
                file=exc.file,
                key=exc.key,
                errors=exc.to_dict()["errors"],
                more=exc.hidden,
            )
        answer: ReloadJSON = {"ok": True, "config_path": config.path, "nodes": [n.name for n in config.upstream.nodes]}
        return web.json_response(answer)
