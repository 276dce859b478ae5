"""The proxy as a raw ASGI app: no framework on the hot path, so the server is swappable.

A request is read whole (bounded by max_body_bytes), then tried on up to
`retries + 1` nodes. Only once an attempt has produced real bytes does
anything reach the client; after that a broken upstream ends the stream with an
SSE error event instead of a hang.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from yarl import URL

from .attempt import Failed, Ready, attempt, describe
from .errors import Send, error_json, send_error, send_json
from .health import Failure, Source
from .runtime import Runtime
from .upstream import NodeState, Upstream

access_log = logging.getLogger("llm_sidecar.access")

# Never forwarded upstream: hop-by-hop headers, and the client's own credentials.
REQUEST_DROP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer",
        b"upgrade", b"host", b"content-length", b"expect", b"authorization", b"proxy-authorization",
        b"x-api-key", b"api-key", b"x-request-id",
    }
)  # fmt: skip
RESPONSE_DROP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"content-length",
    }
)
# Cheap peeks at the body, for the log only; the body is parsed only to rewrite it.
MODEL_RE = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')
STREAM_RE = re.compile(rb'"stream"\s*:\s*true')
PROMPT_TOKENS_RE = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
COMPLETION_TOKENS_RE = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')


class ClientGone(Exception):
    pass


class BadBody(Exception):
    pass


@dataclass
class Exchange:
    """One client request, as logged and published when it ends."""

    rid: str
    method: str
    path: str
    model: str | None
    stream: bool
    started: float
    attempts: list[dict[str, str]] = field(default_factory=list)
    node: str | None = None
    status: int = 0
    first_byte: float | None = None
    first_token: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    error: str | None = None

    def record(self, now: float) -> dict[str, Any]:
        def ms(t: float | None) -> float | None:
            return None if t is None else round((t - self.started) * 1000, 2)

        return {
            "id": self.rid,
            "method": self.method,
            "path": self.path,
            "model": self.model,
            "node": self.node,
            "status": self.status,
            "attempts": len(self.attempts) + (1 if self.node else 0),
            "failed": self.attempts,
            "stream": self.stream,
            "ttfb_ms": ms(self.first_byte),
            "ttft_ms": ms(self.first_token),
            "total_ms": ms(now),
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "error": self.error,
        }


def count_tokens(ex: Exchange, data: bytes) -> None:
    if b'"usage"' not in data:
        return
    prompt = PROMPT_TOKENS_RE.search(data)
    completion = COMPLETION_TOKENS_RE.search(data)
    if prompt:
        ex.tokens_in = int(prompt.group(1))
    if completion:
        ex.tokens_out = int(completion.group(1))


class BodyRewriter:
    """Parses the JSON body once, on the first node that rewrites the model."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.parsed: dict[str, Any] | None = None

    def for_node(self, node: NodeState) -> bytes:
        models = node.config.models
        if not models or not self.body:
            return self.body
        if self.parsed is None:
            try:
                parsed = json.loads(self.body)
            except ValueError as exc:
                raise BadBody(f"request body is not valid JSON ({exc})") from None
            if not isinstance(parsed, dict):
                raise BadBody("request body must be a JSON object")
            self.parsed = parsed
        model = self.parsed.get("model")
        if not isinstance(model, str):
            return self.body
        target = node.config.rewrite_model(model)
        if target == model:
            return self.body
        return json.dumps({**self.parsed, "model": target}, ensure_ascii=False, separators=(",", ":")).encode()


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
        rid = rid or secrets.token_hex(8)
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
        body = None if declared > limit else await self._body(receive, limit)
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
        finally:
            self.finish(ex)

    async def _body(self, receive: Any, limit: int) -> bytes | None:
        try:
            return await read_body(receive, limit)
        except ClientGone:
            return b""

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
        record = self.runtime.events.publish("request", **ex.record(time.monotonic()))
        if access_log.isEnabledFor(logging.INFO):
            access_log.info("request", extra={"access": record})

    async def forward(self, scope: dict[str, Any], receive: Any, send: Send, body: bytes, ex: Exchange) -> None:
        upstream: Upstream = self.runtime.upstream  # one config for the whole request
        config = upstream.config.upstream
        budget = config.retries + 1
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
            url = URL(node.config.url + suffix, encoded=True)
            node.stats.in_flight += 1
            started = upstream.clock()
            try:
                if deadline is None:
                    outcome = await attempt(node, ex.method, url, headers, node_body, node.config.checks.retry_statuses)
                else:
                    try:
                        async with asyncio.timeout(max(0.0, deadline - started)):
                            outcome = await attempt(
                                node, ex.method, url, headers, node_body, node.config.checks.retry_statuses
                            )
                    except TimeoutError:
                        outcome, timed_out = Failed(Failure.TIMEOUT, "retry_timeout exceeded"), True
                if isinstance(outcome, Ready):
                    ok = await self.relay(receive, send, upstream, node, outcome, ex, len(tried))
                    node.stats.finished(upstream.clock(), upstream.clock() - started, ok)
                    return
            finally:
                node.stats.in_flight -= 1
            node.stats.finished(upstream.clock(), upstream.clock() - started, False)
            self.failed(upstream, node, outcome, ex)
            last = outcome
            if timed_out:
                break
        await self.give_up(send, ex, last, tried, timed_out, upstream)

    def failed(self, upstream: Upstream, node: NodeState, outcome: Failed, ex: Exchange) -> None:
        ex.attempts.append({"node": node.name, "reason": outcome.reason})
        upstream.failure(node, Source.PASSIVE, outcome.kind, outcome.reason)
        if outcome.retry_after:
            upstream.block(node, outcome.retry_after)

    async def give_up(
        self, send: Send, ex: Exchange, last: Failed | None, tried: set[int], timed_out: bool, upstream: Upstream
    ) -> None:
        extra = [
            (b"x-request-id", ex.rid.encode("latin-1")),
            (b"x-llm-sidecar-attempts", str(len(tried)).encode()),
            (b"x-should-retry", b"false"),
        ]
        why = "; ".join(f"{a['node']}: {a['reason']}" for a in ex.attempts)
        if last is not None and last.status and not timed_out:
            # The provider's own error tells the client most (e.g. its rate limit).
            ex.status, ex.error = last.status, f"all attempts failed ({why})"
            headers = [(k, v) for k, v in last.headers or [] if k.lower() not in RESPONSE_DROP]
            headers += [(b"content-length", str(len(last.body)).encode()), *extra]
            await send({"type": "http.response.start", "status": last.status, "headers": headers})
            await send({"type": "http.response.body", "body": last.body})
            return
        if not tried:
            ex.status, ex.error = 503, "no upstream node is available (all are manually down)"
            await send_error(send, 503, ex.error, "upstream_error", "no_upstream", extra[:2])
            return
        status, code = (504, "upstream_timeout") if timed_out else (502, "upstream_unavailable")
        ex.status, ex.error = status, f"all upstream attempts failed: {why}"
        await send_json(send, status, error_json(ex.error, "upstream_error", code), extra)

    async def relay(
        self, receive: Any, send: Send, upstream: Upstream, node: NodeState, ready: Ready, ex: Exchange, attempts: int
    ) -> bool:
        """Forward a ready response; returns False when the upstream broke mid-stream."""
        response = ready.response
        ex.node, ex.status = node.name, response.status
        ex.first_byte, ex.first_token = ready.first_byte, ready.first_token
        headers = [(k, v) for k, v in response.raw_headers if k.lower() not in RESPONSE_DROP]
        headers += [
            (b"x-llm-sidecar-node", node.name.encode()),
            (b"x-llm-sidecar-attempts", str(attempts).encode()),
        ]
        if not ready.stream:
            count_tokens(ex, ready.body)
            headers.append((b"content-length", str(len(ready.body)).encode()))
            await send({"type": "http.response.start", "status": response.status, "headers": headers})
            await send({"type": "http.response.body", "body": ready.body})
            upstream.success(node, Source.PASSIVE)
            return True
        ex.stream = True
        if b'"usage"' in ready.body:
            count_tokens(ex, ready.body)
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": ready.body, "more_body": True})
        content = response.content
        # The server drops writes to a closed client silently; this tells us it left,
        # so the upstream stops generating (and billing) tokens nobody reads.
        gone = asyncio.ensure_future(receive())
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    break
                if b'"usage"' in chunk:
                    count_tokens(ex, chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if gone.done():
                    response.close()
                    ex.error = "client disconnected mid-stream"
                    return True
        except Exception as exc:  # any upstream fault must end the stream cleanly
            kind, reason = describe(exc)
            response.close()
            ex.error = f"stream interrupted: {reason}"
            upstream.failure(node, Source.PASSIVE, kind, ex.error)
            event = error_json(
                f"upstream {node.name} failed mid-stream: {reason}", "upstream_error", "stream_interrupted"
            )
            await send({"type": "http.response.body", "body": b"\n\ndata: " + event + b"\n\n", "more_body": False})
            return False
        finally:
            gone.cancel()
        response.release()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        upstream.success(node, Source.PASSIVE)
        return True
