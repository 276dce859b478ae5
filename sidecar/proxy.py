"""The proxy as a raw ASGI app: no framework on the hot path, so the server is swappable.

A request is read whole (bounded by max_body_bytes), then tried on up to
`retries + 1` nodes. Only once an attempt has produced real bytes does
anything reach the client; after that a broken upstream ends the stream with an
SSE error event instead of a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import json
import logging
import secrets
import time
from typing import Any

from yarl import URL

from .attempt import Failed, Ready, attempt
from .errors import Send, send_error, send_json
from .exchange import MODEL_RE, STREAM_RE, BadBody, BodyRewriter, Exchange
from .health import Failure, Source
from .relay import give_up, relay
from .runtime import Runtime
from .upstream import NodeState, Upstream

access_log = logging.getLogger("llm_sidecar.access")
log = logging.getLogger("llm_sidecar")

# Never forwarded upstream: hop-by-hop headers, and the client's own credentials.
REQUEST_DROP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer",
        b"upgrade", b"host", b"content-length", b"expect", b"authorization", b"proxy-authorization",
        b"x-api-key", b"api-key", b"x-request-id",
    }
)  # fmt: skip


class ClientGone(Exception):
    pass


async def read_body(receive: Any, limit: int) -> bytes | None:
    """The whole request body, or None when it exceeds `limit`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class ProxyApp:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        # Request ids: a random per-process prefix and a counter (no syscall per request).
        self.id_prefix = secrets.token_hex(4)
        self.id_counter = itertools.count(1)
        self.urls: dict[tuple[str, str], URL] = {}

    def next_id(self) -> str:
        return f"{self.id_prefix}{next(self.id_counter):08x}"

    def url(self, base: str, suffix: str) -> URL:
        """Upstream URLs, parsed once per node and path (yarl parsing is not free)."""
        key = (base, suffix)
        url = self.urls.get(key)
        if url is None:
            if len(self.urls) > 1024:
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
        if path == "/healthz":
            await self.healthz(send)
            return
        if not path.startswith("/v1/"):
            await send_error(
                send,
                404,
                f"unknown path {path!r}: the sidecar serves /v1/* and /healthz",
                "invalid_request_error",
                "not_found",
            )
            return
        server = self.runtime.config.server
        rid = ""
        auth = b""
        declared = -1
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = value.decode("latin-1")[:128]
            elif name == b"authorization":
                auth = value
            elif name == b"content-length" and value.isdigit():
                declared = int(value)
        rid = rid or self.next_id()
        rid_header = (b"x-request-id", rid.encode("latin-1"))
        if server.api_key is not None and not hmac.compare_digest(auth, b"Bearer " + server.api_key.encode()):
            await send_error(
                send,
                401,
                "invalid or missing sidecar API key",
                "invalid_request_error",
                "invalid_api_key",
                [rid_header],
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
            )
            return
        match = MODEL_RE.search(body)
        ex = Exchange(
            rid=rid,
            method=scope["method"],
            path=path,
            model=match.group(1).decode("utf-8", "replace") if match else None,
            stream=STREAM_RE.search(body) is not None,
            started=time.monotonic(),
        )
        try:
            await self.forward(scope, receive, send, body, ex)
        except Exception:
            # A bug must still end the request with a clear error, and not take the sidecar down.
            log.exception("request %s failed inside the sidecar", ex.rid)
            ex.status, ex.error = 500, "internal error in the sidecar"
            with contextlib.suppress(RuntimeError):  # the response had already started
                await send_error(
                    send,
                    500,
                    "internal error in llm-sidecar (see its log)",
                    "server_error",
                    "internal_error",
                    [rid_header],
                )
        finally:
            self.finish(ex)

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

    def finish(self, ex: Exchange) -> None:
        record = self.runtime.events.emit(ex.record(time.monotonic()))
        if access_log.isEnabledFor(logging.INFO):
            access_log.info("request", extra={"access": record})

    async def forward(self, scope: dict[str, Any], receive: Any, send: Send, body: bytes, ex: Exchange) -> None:
        upstream: Upstream = self.runtime.upstream  # one config for the whole request
        config = upstream.config.upstream
        budget = config.retries + 1
        t = config.timeout
        send_limit = t.connect + t.send + t.read
        watch = self.runtime.send_watch
        deadline = upstream.clock() + config.retry_timeout if config.retry_timeout else None
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        query: bytes = scope["query_string"]
        suffix = raw_path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        base_headers = [
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"] if k not in REQUEST_DROP
        ]
        base_headers.append(("X-Request-Id", ex.rid))
        rewriter = BodyRewriter(body)
        tried: set[int] = set()
        last: Failed | None = None
        timed_out = False
        while len(tried) < budget:
            choice = upstream.choose(tried)
            if choice is None:
                break
            tried.add(choice.index)
            node = upstream.nodes[choice.index]
            try:
                node_body = rewriter.for_node(node)
            except BadBody as exc:
                ex.status, ex.error = 400, str(exc)
                await send_error(
                    send, 400, str(exc), "invalid_request_error", "invalid_json", [(b"x-request-id", ex.rid.encode())]
                )
                return
            headers = base_headers if node.auth is None else [*base_headers, ("Authorization", node.auth)]
            url = self.url(node.config.url, suffix)
            node.stats.in_flight += 1
            started = upstream.clock()
            try:
                pending = attempt(
                    node, ex.method, url, headers, node_body, node.config.checks.retry_statuses, send_limit, watch
                )
                if deadline is None:
                    outcome = await pending
                else:
                    try:
                        async with asyncio.timeout(max(0.0, deadline - started)):
                            outcome = await pending
                    except TimeoutError:
                        outcome, timed_out = Failed(Failure.TIMEOUT, "retry_timeout exceeded"), True
                if isinstance(outcome, Ready):
                    ok = await relay(receive, send, upstream, node, outcome, ex, len(tried))
                    stats = node.stats
                    stats.finished(upstream.clock(), upstream.clock() - started, ok)
                    stats.tokens_in += ex.tokens_in or 0
                    stats.tokens_out += ex.tokens_out or 0
                    return
            finally:
                node.stats.in_flight -= 1
            node.stats.finished(upstream.clock(), upstream.clock() - started, False)
            self.failed(upstream, node, outcome, ex)
            last = outcome
            if timed_out:
                break
        await give_up(send, ex, last, tried, timed_out, upstream)

    def failed(self, upstream: Upstream, node: NodeState, outcome: Failed, ex: Exchange) -> None:
        ex.attempts.append({"node": node.name, "reason": outcome.reason})
        upstream.failure(node, Source.PASSIVE, outcome.kind, outcome.reason)
        if outcome.retry_after:
            upstream.block(node, outcome.retry_after)
