"""The proxy as a raw ASGI app: no framework on the hot path, so the server is swappable.

A request is checked (method, path, key, body size), read whole (bounded by
max_body_bytes), and handed to the policy loop (forward.py), which tries nodes
until one answers. A client that leaves, or a sidecar that stops, interrupts
the request at once (interrupt.py): this module turns that into the right end.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
import time
from typing import Any, TypeVar

from yarl import URL

from sidecar import metrics
from sidecar.formats.dialect import OPENAI, VERSION_HEADER, api_of, stream_error
from sidecar.formats.errors import Send, send_error, send_json
from sidecar.formats.translate.ir import form_of
from sidecar.nodes.runtime import Runtime
from sidecar.telemetry.context import Tracing

from . import estimate
from . import models as catalog
from .capture import Capture
from .exchange import STREAM_RE, Exchange, model_of
from .forward import forward
from .hedge import HedgeBudget
from .inbound import (
    ALLOW_HEADER,
    ALLOWED_METHODS,
    PATH_TRICK,
    ClientGone,
    client_key_ok,
    client_request_id,
    path_is_safe,
    read_body,
    request_drop,
    streams,
)  # fmt: skip
from .interrupt import Interrupt, Reason
from .poison import Suspects
from .refusals import doubled_v1, refuse_over_budget

access_log = logging.getLogger("llm_sidecar.access")
log = logging.getLogger("llm_sidecar")

URL_CACHE_SIZE = 1024
T = TypeVar("T")
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before its answer
DOUBLED_V1 = "/v1/v1/"  # a base URL with /v1 under a client that adds /v1: no API has this path


class ProxyApp:
    def __init__(self, runtime: Runtime, tracing: Tracing | None = None) -> None:
        self.runtime = runtime
        self.tracing = tracing  # None with traces off
        # Request ids: a random per-process prefix and a counter (no syscall per request).
        self.id_prefix = secrets.token_hex(4)
        self.id_counter = itertools.count(1)
        self.urls: dict[tuple[str, str], URL] = {}
        self.inflight: set[Interrupt] = set()
        self.suspects = Suspects()  # request fingerprints found to cause their own failures (poison.py)
        self.hedges = HedgeBudget()  # hedged first tokens over the last minute (hedge.py)
        self.metrics = metrics.attach(runtime)  # counts from the event hub from now on (sidecar/metrics/)

    def next_id(self) -> str:
        return f"{self.id_prefix}{next(self.id_counter):08x}"

    def url(self, base: str, suffix: str) -> URL:
        """Upstream URLs, parsed once per node and path (yarl parsing is not free)."""
        key = (base, suffix)
        url = self.urls.get(key)
        if url is None:
            if len(self.urls) > URL_CACHE_SIZE:
                self.urls.clear()
            url = self.urls[key] = URL(base + suffix, encoded=True)
        return url

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        elif scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def http(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        path: str = scope["path"]
        api = api_of(path)
        if scope["method"] not in ALLOWED_METHODS:
            await send_error(
                send,
                405,
                f"method {scope['method'][:16]!r} is not allowed: the sidecar serves GET, POST and DELETE",
                "invalid_request_error",
                "method_not_allowed",
                [ALLOW_HEADER],
                api,
            )
            return
        if path == "/healthz":
            await self.healthz(send)
            return
        if not path.startswith("/v1/"):
            if path == self.runtime.config.server.metrics_path and path:  # off when "" (see sidecar/metrics/)
                await metrics.answer(self.runtime, scope, send, self.authorized(scope))
                return
            await send_error(
                send,
                404,
                f"unknown path {path!r}: the sidecar serves /v1/* and /healthz",
                "invalid_request_error",
                "not_found",
            )
            return
        raw_path: bytes = scope.get("raw_path") or path.encode()
        # GET /v1/models[/{id}] is answered here, never sent on: an encoded slash in the id
        # (the openai SDK sends meta-llama%2FLlama-3-8B) cannot mislead a node. Dot segments still can't pass.
        model_id = catalog.requested(scope["method"], path)
        if not path_is_safe(path, raw_path) and (model_id is None or PATH_TRICK.search(path) is not None):
            await send_error(
                send,
                400,
                "invalid path: dot segments, encoded slashes and backslashes are not allowed",
                "invalid_request_error",
                "invalid_path",
                api=api,
            )
            return
        server = self.runtime.config.server
        rid = None
        auth = b""
        x_api_key: bytes | None = None
        anthropic_client = False
        declared = -1
        connection: list[bytes] = []
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = client_request_id(value)
            elif name == b"authorization":
                auth = value
            elif name == b"x-api-key":  # how Anthropic's clients send a key
                x_api_key = value
            elif name == VERSION_HEADER:
                anthropic_client = True
            elif name == b"content-length" and value.isdigit():
                declared = int(value)
            elif name == b"connection":
                connection.append(value)
        client_id = rid
        rid = rid or self.next_id()
        if anthropic_client:
            api = api_of(path, anthropic_client)
        rid_header = (b"x-request-id", rid.encode("latin-1"))
        if server.api_key is not None and not client_key_ok(server.api_key.encode(), auth, x_api_key):
            await send_error(
                send,
                401,
                "invalid or missing sidecar API key",
                "invalid_request_error",
                "invalid_api_key",
                [rid_header],
                api=api,
            )
            return
        limit = server.max_body_bytes
        try:
            body = None if declared > limit else await read_body(receive, limit)
        except ClientGone:
            return  # nobody left to answer
        if body is None:
            await send_error(
                send,
                413,
                f"request body exceeds max_body_bytes ({limit} bytes)",
                "invalid_request_error",
                "request_too_large",
                [rid_header],
                api=api,
            )
            return
        if model_id is not None:  # after the key check: the list is no business of keyless clients
            await catalog.answer(self.runtime, model_id, send, [rid_header], anthropic_client)
            return
        ex = Exchange(
            rid=rid,
            method=scope["method"],
            path=path,
            model=model_of(body),
            stream=STREAM_RE.search(body) is not None and streams(body),
            started=time.monotonic(),
            api=api,
            client_id=client_id,
            form=form_of(scope["method"], path, api == OPENAI),
        )
        if self.tracing is not None:
            ex.trace = self.tracing.begin(scope["headers"], ex.started, body)
        if path.startswith(DOUBLED_V1):
            await doubled_v1(send, ex, rid_header, anthropic_client, self.runtime.config.server.listen)
            self.finish(ex)  # logged and shown: Claude Code itself shows only a generic 404 message
            return
        interrupt = Interrupt(send)
        interrupt.watch(receive, scope)
        self.inflight.add(interrupt)
        upstream = self.runtime.acquire()  # one generation for the whole request, kept open until it ends
        limit = self.runtime.desk.limit
        capture = None if not limit else Capture(interrupt.send, self.runtime.desk, body, scope["headers"])
        try:
            budgets = self.runtime.budgets
            if (budgets.sidecar is not None or budgets.nodes) and await refuse_over_budget(
                upstream, ex, capture or send
            ):
                return
            drop = request_drop(connection)
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"] if k not in drop]
            headers.append(("X-Request-Id", ex.rid))
            counted = estimate.here(upstream, ex)  # a count no node of its format can give (estimate.py)
            reply: Send = capture or interrupt.send
            if counted is not None:
                await estimate.answer(reply, ex, counted, body)
            else:
                if ex.trace is not None:
                    reply = ex.trace.watch(reply)
                await forward(
                    upstream, scope, reply, body, ex, headers, self.url, interrupt.task, self.suspects, self.hedges
                )
        except asyncio.CancelledError:
            if interrupt.reason is None or interrupt.task is None:
                raise  # not ours to handle
            interrupt.task.uncancel()
            await self.interrupted(interrupt, ex)
        except Exception:
            # A bug must still end the request with a clear error, and not take the sidecar down.
            log.exception("request %s failed inside the sidecar", ex.rid)
            ex.status, ex.error = 500, "internal error in the sidecar"
            if not interrupt.started:
                await send_error(
                    send, 500, "internal error in llm-sidecar (see its log)", "server_error", "internal_error",
                    [rid_header], ex.api,
                )  # fmt: skip
            elif not interrupt.complete:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.runtime.release(upstream)
            interrupt.close()
            self.inflight.discard(interrupt)
            self.finish(ex, capture)

    def authorized(self, scope: dict[str, Any]) -> bool:
        """The request carries the sidecar's own key (bearer or x-api-key), or none is set."""
        key = self.runtime.config.server.api_key
        if key is None:
            return True
        headers = dict(scope["headers"])
        return client_key_ok(key.encode(), headers.get(b"authorization", b""), headers.get(b"x-api-key"))

    async def interrupted(self, interrupt: Interrupt, ex: Exchange) -> None:
        """End a request whose client left (nothing to send) or that the sidecar's stop cut short."""
        if interrupt.reason is Reason.CLIENT_GONE:
            ex.status, ex.error = CLIENT_CLOSED_REQUEST, "client disconnected"
            return
        ex.error = "sidecar stopped before the answer was complete"
        send = interrupt._send
        with contextlib.suppress(Exception):  # the client may be gone too
            if not interrupt.started:
                ex.status = 503
                await send_error(
                    send, 503, "llm-sidecar is stopping; retry against a running sidecar", "server_error",
                    "sidecar_stopping", [(b"x-request-id", ex.rid.encode("latin-1"))], ex.api,
                )  # fmt: skip
            elif not interrupt.complete:
                body = b""
                if ex.stream:
                    body = stream_error(ex.error, "server_error", "sidecar_stopping", api=ex.api, status=503)
                await send({"type": "http.response.body", "body": body, "more_body": False})

    async def stop_requests(self) -> int:
        """Interrupt every request in flight (the stop's grace is over) and let each end cleanly."""
        interrupts = list(self.inflight)
        for interrupt in interrupts:
            interrupt.interrupt(Reason.SHUTDOWN)
        tasks = [i.task for i in interrupts if i.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=2)
        return len(interrupts)

    async def healthz(self, send: Send) -> None:
        upstream = self.runtime.upstream
        now = upstream.clock()
        usable = [n.name for n in upstream.nodes if n.health.available(now)]
        status = 200 if usable else 503
        serving = upstream.serving()
        payload = {
            "status": "ok" if usable else "unavailable",
            "healthy_nodes": usable,
            "serving": serving and serving.name,
        }
        await send_json(send, status, json.dumps(payload).encode())

    def finish(self, ex: Exchange, capture: Capture | None = None) -> None:
        record = ex.record(time.monotonic())
        if ex.trace is not None:
            ex.trace.end(record)  # it names the trace (trace_id, span_id): the journal keeps them too
        if capture is None:
            self.runtime.events.emit(record)
        else:  # the recorder, observing the event, takes the bodies from the desk (observe/record.py)
            desk = self.runtime.desk
            desk.hand(record, capture.bodies)
            try:
                self.runtime.events.emit(record)
            finally:
                desk.clear()
        if access_log.isEnabledFor(logging.INFO):
            access_log.info("request", extra={"access": record})
