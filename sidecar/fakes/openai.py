"""The OpenAI-format fake provider (`FakeProvider`): chat completions, streamed or not, with every fault.

The class also holds what every format's fake does the same way (the `/_fake/*` control routes, fault
selection and its "once" state, the prompt cache); anthropic.py subclasses it for Anthropic's API.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import random
import time
from collections import OrderedDict
from typing import Any

from aiohttp import web

from .core import (
    ANSWER,
    CANONICAL_PIECES,
    CONTEXT_ERROR,
    CONTINUE,
    FAULT_MODEL_PREFIX,
    FAULT_MODELS,
    FIXED_PROMPT_TOKENS,
    FOREVER,
    ONCE_FAULTS,
    POLICY_ERROR,
    PREFILL_ERROR,
    PROMPT_CACHE_SIZE,
    RATE_LIMIT_ERROR,
    REFUSE_PREFILL,
    STREAM_FAULTS,
    Behaviour,
    Stats,
    after_prefill,
    estimate_tokens,
    fault_for_model,
    linger,
    prompt_prefixes,
    text_of,
    trailing_assistant,
)


def _chunk(cid: str, model: str, delta: dict[str, Any], finish: str | None) -> bytes:
    payload = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _usage(prompt: dict[str, Any], completion: int) -> dict[str, Any]:
    """A usage object from `prompt` (FakeProvider.prompt_usage) and the completion tokens, in OpenAI's key order."""
    details = {k: v for k, v in prompt.items() if k != "prompt_tokens"}
    tokens: int = prompt["prompt_tokens"]
    return {"prompt_tokens": tokens, "completion_tokens": completion, "total_tokens": tokens + completion, **details}


def _wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


class FakeProvider:
    fault_models: dict[str, str] = FAULT_MODELS  # the fault models this dialect knows

    def __init__(self, name: str = "fake", behaviour: Behaviour | None = None, seed: int | None = None) -> None:
        self.name = name
        self.behaviour = behaviour or Behaviour()
        self.stats = Stats()
        self.random = random.Random(seed)
        self.seen: dict[str, int] = {}  # chat requests per fault model string, for the "once" faults
        # The simulated prompt cache: prefix keys (see prompt_prefixes), least recently used first. Per instance, as
        # a real provider's cache is per node: a conversation spread over two nodes loses it.
        self.cached_prefixes: OrderedDict[str, None] = OrderedDict()
        self.cache_capacity = PROMPT_CACHE_SIZE
        self.app = web.Application()
        self.app.router.add_post("/_fake/behaviour", self.set_behaviour)
        self.app.router.add_get("/_fake/behaviour", self.get_behaviour)
        self.app.router.add_get("/_fake/stats", self.get_stats)
        self.add_api_routes()

    def add_api_routes(self) -> None:
        """The API this provider serves; a dialect's subclass replaces them."""
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.app.router.add_post("/{prefix:.+}/v1/chat/completions", self.chat)  # behind a path prefix
        self.app.router.add_get("/v1/models", self.models)
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

    def prompt_usage(self, body: dict[str, Any] | None) -> dict[str, Any]:
        """The prompt part of the usage of an answer to `body`, called once per request when its answer starts.

        With prompt_cache off it is the fixed FIXED_PROMPT_TOKENS. With it on: the estimate of the messages and the
        estimate of the longest prefix this provider has seen as cached_tokens; then every prefix of this request is
        remembered. Lookup and remembering happen together when the answer starts, as a real provider's cache holds
        the prompt once prefill is done, before the first token; a request refused before that (429, 5xx, 400,
        reset, hang) was never processed, so it neither counts nor fills the cache. `body` None (a /v1/models probe
        answered by a fault's stream) has no prompt.
        """
        if body is None or not self.behaviour.prompt_cache:
            return {"prompt_tokens": FIXED_PROMPT_TOKENS}
        model, messages = body.get("model"), self.prompt_messages(body)
        prefixes = prompt_prefixes(model, messages) if isinstance(messages, list) else []
        tokens = estimate_tokens(messages)
        cached = next((estimate for key, estimate in reversed(prefixes) if key in self.cached_prefixes), 0)
        cached = min(cached, tokens)
        for key, _ in prefixes:
            self.cached_prefixes[key] = None
            self.cached_prefixes.move_to_end(key)  # a hit counts as a use, as in an LRU
        while len(self.cached_prefixes) > self.cache_capacity:
            self.cached_prefixes.popitem(last=False)
        self.stats.prompt_tokens += tokens
        self.stats.cached_tokens += cached
        return {"prompt_tokens": tokens, "prompt_tokens_details": {"cached_tokens": cached}}

    def prompt_messages(self, body: dict[str, Any]) -> Any:
        """What of a request's body is its prompt, for the token estimate and the prompt cache: its messages."""
        return body.get("messages")

    def pick_fault(self, body: dict[str, Any], model: str) -> str | None:
        """Count a request for fault model `model` and say what it gets: None for a model not in fault_models, else
        the fault's name, or ANSWER, CONTINUE or REFUSE_PREFILL. The one place every dialect decides this."""
        self.seen[model] = self.seen.get(model, 0) + 1
        self.stats.fault_requests[model] = self.stats.fault_requests.get(model, 0) + 1
        name = fault_for_model(model, self.fault_models)
        if name is None or name in ("context", "policy"):
            return name  # these two fail continuations as well
        if trailing_assistant(body) is not None:
            # Any other fault is skipped, so a test can continue on the node that just failed it.
            return REFUSE_PREFILL if name == "reject-prefill" else CONTINUE
        if name in ONCE_FAULTS and self.seen[model] > 1:
            return ANSWER
        return name

    def accept_continuation(self, prefill: dict[str, Any]) -> str | None:
        """The text to continue if `prefill` comes in this provider's dialect (counted in stats), else None."""
        dialect = self.behaviour.continuation
        if dialect == "prefill":
            accepted = "prefix" not in prefill
        else:
            accepted = dialect == "prefix" and prefill.get("prefix") is True
        if not accepted:
            return None
        text = text_of(prefill)
        self.stats.continuations += 1
        self.stats.last_prefill = text[:200]
        return text

    def _failing(self, is_probe: bool = False) -> bool:
        b = self.behaviour
        if is_probe and not b.faults_on_models:
            return False
        return b.fail_rate > 0 and self.random.random() < b.fail_rate

    async def models(self, request: web.Request) -> web.StreamResponse:
        self._count(request)
        self.stats.models += 1
        if self._failing(is_probe=True):
            return await self._fail(request, None, stream=False)
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
        if isinstance(model, str) and model.startswith(FAULT_MODEL_PREFIX):
            return await self._fault_model(request, body, model)  # fail_rate does not apply: the model decides
        if self._failing():
            return await self._fail(request, body, stream)
        await asyncio.sleep(self.behaviour.latency)
        prefill = trailing_assistant(body)
        if prefill is not None:
            pieces = [f"Hello from {self.name}:", *(f" word{i}" for i in range(self.behaviour.chunks))]
            return await self._continue(request, body, str(model), pieces, prefill)
        if stream:
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return await self._stream(request, body, str(model), usage, keepalive=0.0)
        b = self.behaviour
        text = " ".join(f"word{i}" for i in range(b.chunks))
        prompt = self.prompt_usage(body)
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
                "usage": _usage(prompt, b.chunks),
            },
            # Like a CDN in front of a real provider; a proxy must not replay it for others.
            headers={"x-fake-provider": self.name, "Set-Cookie": "__cf_bm=fake-session; Path=/; HttpOnly"},
        )

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any] | None,
        model: str,
        usage: bool,
        keepalive: float,
        drop_after: int | None = None,
    ) -> web.StreamResponse:
        b = self.behaviour
        prompt = self.prompt_usage(body)
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
                "usage": _usage(prompt, b.chunks),
            }
            await response.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    # ------------------------------------------------------------------ faults by model, continuations

    def _error(self, status: int, error: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
        return web.json_response(
            {"error": error}, status=status, headers={"x-fake-provider": self.name, **(headers or {})}
        )

    async def _fault_model(self, request: web.Request, body: dict[str, Any], model: str) -> web.StreamResponse:
        """The one dispatch for FAULT_MODELS."""
        b = self.behaviour
        name = self.pick_fault(body, model)
        if name is None:
            return self._error(
                404,
                {
                    "message": f"unknown fault model {model!r}",
                    "type": "invalid_request_error",
                    "code": "model_not_found",
                },
            )
        await asyncio.sleep(b.latency)
        if name == "context":
            return self._error(400, CONTEXT_ERROR)
        if name == "policy":
            return self._error(400, POLICY_ERROR)
        if name == REFUSE_PREFILL:
            return self._error(400, PREFILL_ERROR)
        prefill = trailing_assistant(body)
        if name == CONTINUE and prefill is not None:
            return await self._continue(request, body, model, CANONICAL_PIECES, prefill)
        if name.startswith("429"):
            retry = {"429-long": {"Retry-After": "60"}, "429-noheader": {}}.get(name, {"Retry-After": "1"})
            return self._error(429, RATE_LIMIT_ERROR, retry)
        if name in ("500-once", "503"):
            status = int(name[:3])
            return self._error(
                status, {"message": f"{self.name} simulated {status}", "type": "server_error", "code": None}
            )
        if name == "hang":
            await linger(request, FOREVER)
            self._cut(request)
            return web.Response()  # never reaches the client
        if name.startswith("reset"):
            self._cut(request)
            return web.Response()  # aiohttp sees the closed transport and drops it
        stream, usage = bool(body.get("stream")), _wants_usage(body)
        wait = b.first_token_delay if name == "slow-first-token" else 0.0
        ending = name if name in STREAM_FAULTS else "stop"
        return await self._answer(request, body, model, CANONICAL_PIECES, stream, usage, ending=ending, wait=wait)

    async def _continue(
        self, request: web.Request, body: dict[str, Any], model: str, pieces: list[str], prefill: dict[str, Any]
    ) -> web.StreamResponse:
        """Answer a request to continue `prefill` with the rest of `pieces`, if it comes in this provider's dialect."""
        text = self.accept_continuation(prefill)
        if text is None:
            return self._error(400, PREFILL_ERROR)
        stream, usage = bool(body.get("stream")), _wants_usage(body)
        return await self._answer(request, body, model, after_prefill(pieces, text), stream, usage)

    async def _answer(
        self,
        request: web.Request,
        body: dict[str, Any],
        model: str,
        pieces: list[str],
        stream: bool,
        usage: bool,
        ending: str = "stop",
        wait: float = 0.0,
    ) -> web.StreamResponse:
        """Answer with `pieces`: after `wait` seconds (of keep-alive, if streamed), ending as `ending` says."""
        b = self.behaviour
        cid = f"chatcmpl-{self.name}-{self.stats.chat}"
        tokens = _usage(self.prompt_usage(body), len(pieces))
        if not stream:
            await linger(request, wait)
            message = {"role": "assistant", "content": "".join(pieces)}
            payload = {
                "id": cid,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                "usage": tokens,
            }
            if ending not in ("cut", "stall"):
                return web.json_response(payload, headers={"x-fake-provider": self.name})
            return await self._broken_body(
                request, json.dumps(payload).encode(), {"x-fake-provider": self.name}, ending
            )
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "x-fake-provider": self.name}
        )
        await response.prepare(request)
        try:
            await response.write(_chunk(cid, model, {"role": "assistant", "content": ""}, None))
            deadline = time.monotonic() + wait
            while (left := deadline - time.monotonic()) > 0:
                await response.write(b": keep-alive\n\n")
                await asyncio.sleep(min(0.2, left))
            sent = pieces if ending == "stop" else pieces[: b.cut_after]
            for piece in sent:
                if b.chunk_delay:
                    await asyncio.sleep(b.chunk_delay)
                await response.write(_chunk(cid, model, {"content": piece}, None))
            if ending in ("cut", "stall"):
                if ending == "stall":
                    await linger(request, FOREVER)
                self._cut(request)
                return response
            if ending == "malformed":
                await response.write(b'data: {"choices": [{"delta": {"content"\n\n')
            elif ending == "error-event":
                error = {"message": "internal error", "type": "server_error", "code": None}
                await response.write(b"data: " + json.dumps({"error": error}).encode() + b"\n\n")
            elif ending == "stop":
                await response.write(_chunk(cid, model, {}, "stop"))
                if usage:
                    final = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
                    final |= {"choices": [], "usage": tokens}
                    await response.write(b"data: " + json.dumps(final).encode() + b"\n\n")
                await response.write(b"data: [DONE]\n\n")
            await response.write_eof()  # no-done, malformed, error-event: a clean end all the same
        except ConnectionResetError:
            pass  # the client left; nothing to tell it
        return response

    async def _broken_body(
        self, request: web.Request, data: bytes, headers: dict[str, str], ending: str
    ) -> web.StreamResponse:
        """A JSON answer that breaks: "cut" sends half of it (short of its Content-Length) and aborts, "stall"
        sends the headers and goes silent."""
        headers = {**headers, "Content-Type": "application/json", "Content-Length": str(len(data))}
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        if ending == "cut":
            await response.write(data[: len(data) // 2])
        else:
            await linger(request, FOREVER)
        self._cut(request)
        return response

    def _cut(self, request: web.Request) -> None:
        transport = request.transport
        if transport is not None:
            transport.abort()

    async def _fail(self, request: web.Request, body: dict[str, Any] | None, stream: bool) -> web.StreamResponse:
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
            return await self._stream(request, body, "keepalive", False, keepalive=b.keepalive_for)
        # drop: cut the connection mid-answer
        if stream:
            return await self._stream(request, body, "drop", False, keepalive=0.0, drop_after=b.drop_after)
        response = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b'{"id": "partial", "choices": [')
        self._cut(request)
        return response
