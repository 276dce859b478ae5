"""A controllable OpenAI-compatible provider that can fail in every way a real one does.

Users point the sidecar at it to test their agent's resilience; our tests and
the demo use it as the stand-in for real providers. Its behaviour can be changed
while it runs: `POST /_fake/behaviour` with a JSON object of the fields below.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

FAULTS = ("error", "rate_limit", "hang", "silent", "drop", "close", "keepalive")


@dataclass
class Behaviour:
    fault: str = "error"  # what a failing request does, one of FAULTS
    fail_rate: float = 0.0  # share of requests that fail (1.0 = outage)
    status: int = 500  # for fault "error"
    retry_after: float = 1.0  # for fault "rate_limit"
    latency: float = 0.0  # seconds before the first byte of every answer
    chunks: int = 5  # SSE chunks per streamed answer
    chunk_delay: float = 0.0  # seconds between chunks
    drop_after: int = 2  # for fault "drop": SSE chunks sent before the connection is cut
    keepalive_for: float = 1.0  # for fault "keepalive": seconds of ": keep-alive" before data
    faults_on_models: bool = True  # whether /v1/models (the health probe) fails too

    def update(self, changes: dict[str, Any]) -> None:
        names = {f.name: f for f in dataclasses.fields(self)}
        for key, value in changes.items():
            if key not in names:
                raise ValueError(f"unknown field {key!r}")
            if key == "fault" and value not in FAULTS:
                raise ValueError(f"fault must be one of {', '.join(FAULTS)}")
            current = getattr(self, key)
            setattr(self, key, type(current)(value))


@dataclass
class Stats:
    requests: int = 0
    chat: int = 0
    models: int = 0
    failed: int = 0
    models_seen: list[str] = field(default_factory=list)
    auth_sha256: list[str] = field(default_factory=list)  # hashes only: the fake never keeps keys
    with_cookie: int = 0  # requests that carried a Cookie header
    paths: list[str] = field(default_factory=list)  # the last 100 request paths


def _chunk(cid: str, model: str, delta: dict[str, Any], finish: str | None) -> bytes:
    payload = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


class FakeProvider:
    def __init__(self, name: str = "fake", behaviour: Behaviour | None = None, seed: int | None = None) -> None:
        self.name = name
        self.behaviour = behaviour or Behaviour()
        self.stats = Stats()
        self.random = random.Random(seed)
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.app.router.add_post("/{prefix:.+}/v1/chat/completions", self.chat)  # behind a path prefix
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_post("/_fake/behaviour", self.set_behaviour)
        self.app.router.add_get("/_fake/behaviour", self.get_behaviour)
        self.app.router.add_get("/_fake/stats", self.get_stats)
        self.app.router.add_route("*", "/v1/{tail:.*}", self.other)

    # ------------------------------------------------------------------ control

    async def set_behaviour(self, request: web.Request) -> web.Response:
        try:
            self.behaviour.update(await request.json())
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(dataclasses.asdict(self.behaviour))

    async def get_behaviour(self, request: web.Request) -> web.Response:
        return web.json_response(dataclasses.asdict(self.behaviour))

    async def get_stats(self, request: web.Request) -> web.Response:
        return web.json_response(dataclasses.asdict(self.stats))

    # ------------------------------------------------------------------ API

    def _count(self, request: web.Request) -> None:
        self.stats.requests += 1
        self.stats.paths.append(request.path_qs)
        del self.stats.paths[:-100]
        if "Cookie" in request.headers:
            self.stats.with_cookie += 1
        auth = request.headers.get("Authorization")
        if auth:
            digest = hashlib.sha256(auth.encode()).hexdigest()
            if digest not in self.stats.auth_sha256:
                self.stats.auth_sha256.append(digest)

    def _failing(self, is_probe: bool = False) -> bool:
        b = self.behaviour
        if is_probe and not b.faults_on_models:
            return False
        return b.fail_rate > 0 and self.random.random() < b.fail_rate

    async def models(self, request: web.Request) -> web.StreamResponse:
        self._count(request)
        self.stats.models += 1
        if self._failing(is_probe=True):
            return await self._fail(request, stream=False)
        await asyncio.sleep(self.behaviour.latency)
        data = [{"id": m, "object": "model", "owned_by": self.name} for m in ("gpt-4o-mini", "deepseek-chat")]
        return web.json_response({"object": "list", "data": data})

    async def other(self, request: web.Request) -> web.Response:
        self._count(request)
        return web.json_response(
            {"error": {"message": f"unknown path {request.path}", "type": "invalid_request_error", "code": None}},
            status=404,
        )

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self._count(request)
        self.stats.chat += 1
        try:
            body = await request.json()
            model = body["model"]
        except (ValueError, KeyError, TypeError, RecursionError):
            return web.json_response(
                {"error": {"message": "body must be JSON with a model", "type": "invalid_request_error", "code": None}},
                status=400,
            )
        self.stats.models_seen.append(str(model))
        del self.stats.models_seen[:-100]
        stream = bool(body.get("stream"))
        if self._failing():
            return await self._fail(request, stream)
        await asyncio.sleep(self.behaviour.latency)
        if stream:
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return await self._stream(request, str(model), usage, keepalive=0.0)
        b = self.behaviour
        text = " ".join(f"word{i}" for i in range(b.chunks))
        return web.json_response(
            {
                "id": f"chatcmpl-{self.name}-{self.stats.chat}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": f"Hello from {self.name}: {text}"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 7, "completion_tokens": b.chunks, "total_tokens": 7 + b.chunks},
            },
            # Like a CDN in front of a real provider; a proxy must not replay it for others.
            headers={"x-fake-provider": self.name, "Set-Cookie": "__cf_bm=fake-session; Path=/; HttpOnly"},
        )

    async def _stream(
        self, request: web.Request, model: str, usage: bool, keepalive: float, drop_after: int | None = None
    ) -> web.StreamResponse:
        b = self.behaviour
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "x-fake-provider": self.name}
        )
        await response.prepare(request)
        deadline = time.monotonic() + keepalive
        while time.monotonic() < deadline:
            await response.write(b": keep-alive\n\n")
            await asyncio.sleep(min(0.2, keepalive))
        cid = f"chatcmpl-{self.name}-{self.stats.chat}"
        for i in range(b.chunks + 1):
            if drop_after is not None and i >= drop_after:  # counts the role chunk too
                self._cut(request)
                return response
            if i == 0:
                await response.write(
                    _chunk(cid, model, {"role": "assistant", "content": f"Hello from {self.name}:"}, None)
                )
                continue
            if b.chunk_delay:
                await asyncio.sleep(b.chunk_delay)
            await response.write(_chunk(cid, model, {"content": f" word{i - 1}"}, None))
        await response.write(_chunk(cid, model, {}, "stop"))
        if usage:
            payload = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [],
                "usage": {"prompt_tokens": 7, "completion_tokens": b.chunks, "total_tokens": 7 + b.chunks},
            }
            await response.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def _cut(self, request: web.Request) -> None:
        transport = request.transport
        if transport is not None:
            transport.abort()

    async def _fail(self, request: web.Request, stream: bool) -> web.StreamResponse:
        b = self.behaviour
        self.stats.failed += 1
        fault = b.fault
        if fault == "error":
            return web.json_response(
                {"error": {"message": f"{self.name} simulated failure", "type": "server_error", "code": None}},
                status=b.status,
            )
        if fault == "rate_limit":
            return web.json_response(
                {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}},
                status=429,
                headers={"Retry-After": f"{b.retry_after:g}"},
            )
        if fault == "hang":
            await asyncio.sleep(3600)
        if fault == "close":
            self._cut(request)
            raise asyncio.CancelledError
        if fault == "silent":
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream" if stream else "application/json"}
            )
            await response.prepare(request)
            await asyncio.sleep(3600)
            return response
        if fault == "keepalive":
            return await self._stream(request, "keepalive", False, keepalive=b.keepalive_for)
        # drop: cut the connection mid-answer
        if stream:
            return await self._stream(request, "drop", False, keepalive=0.0, drop_after=b.drop_after)
        response = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b'{"id": "partial", "choices": [')
        self._cut(request)
        return response


async def start(
    name: str, host: str, port: int, behaviour: Behaviour | None = None
) -> tuple[FakeProvider, web.AppRunner]:
    provider = FakeProvider(name, behaviour)
    runner = web.AppRunner(provider.app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return provider, runner


def serve_forever(name: str, host: str, port: int, behaviour: Behaviour) -> None:
    provider = FakeProvider(name, behaviour)
    web.run_app(provider.app, host=host, port=port, access_log=None, print=None, shutdown_timeout=0.5)
