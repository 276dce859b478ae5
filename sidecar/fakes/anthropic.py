"""The fake provider speaking Anthropic's Messages API: `llm-sidecar fake-provider --api anthropic`.

It stands in for Anthropic and Anthropic-compatible providers as FakeProvider does for OpenAI-compatible ones, and
shares everything with it but the wire format: Behaviour (POST /_fake/behaviour) and its provider-wide FAULTS, the
fault models `fault-<name><tag>` with their "once" state (ANTHROPIC_FAULT_MODELS: FAULT_MODELS plus 529 and
529-once), CANONICAL answers to them, continuations, the prompt-cache simulation and the stats (GET /_fake/stats).

It serves POST /v1/messages (streamed with Anthropic's event sequence), POST /v1/messages/count_tokens and GET
/v1/models[/{id}], and answers errors as `{"type": "error", "error": {"type", "message"}, "request_id"}`. A trailing
assistant message is continued natively (the prefill). A request with `tools` and a tool_choice of type "any" or
"tool" gets a tool_use block (the named tool, else the first; input {}) when its answer would end normally. With
`api_key` set, a request to /v1 that carries that key neither as x-api-key nor as `Authorization: Bearer` (which
the anthropic SDK 2.x sends) gets 401 authentication_error. Keys are never stored: stats keep sha256 hashes of the
x-api-key values (api_key_sha256) and of the Authorization values (auth_sha256, as FakeProvider does), and the
anthropic-version and anthropic-beta values of the last 100 API requests (None where a request had none).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .core import (
    CANONICAL_PIECES,
    CONTINUE,
    FAULT_MODEL_PREFIX,
    FAULT_MODELS,
    FIXED_PROMPT_TOKENS,
    FOREVER,
    POLICY_ERROR,
    PREFILL_ERROR,
    REFUSE_PREFILL,
    STREAM_FAULTS,
    Behaviour,
    Stats,
    after_prefill,
    estimate_tokens,
    linger,
    trailing_assistant,
)
from .openai import FakeProvider

ANTHROPIC_FAULT_MODELS: dict[str, str] = {
    **FAULT_MODELS,
    "503": "always 503 overloaded_error",
    "529": "always 529 overloaded_error (Anthropic's overloaded status)",
    "529-once": "first request: 529 overloaded_error, then normal answers",
    "slow-first-token": "stream: message_start, content_block_start, pings for first_token_delay, then the words; "
    "else a late answer",
    "malformed": "stream: cut_after words, a broken JSON data line, clean end without message_stop; else normal",
    "error-event": "stream: cut_after words, an error event (overloaded_error), clean end without message_stop; "
    "else normal",
    "no-done": "stream: cut_after words, clean end without content_block_stop, message_delta or message_stop; "
    "else normal",
    "context": "400 invalid_request_error 'prompt is too long', even for continuations",
    "policy": "400 invalid_request_error from the safety system, even for continuations",
    "reject-prefill": "continuations (a trailing assistant message) get 400; normal answers otherwise",
}
# The error type Anthropic gives each status; others: api_error from 500 up, invalid_request_error below.
ERROR_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error", 403: "permission_error",
    404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
    503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error",
}  # fmt: skip
CONTEXT_MESSAGE = "prompt is too long: 250000 tokens > 200000 maximum"
POLICY_MESSAGE = str(POLICY_ERROR["message"])  # its "safety system" is one of attempt.POLICY_MARKERS
PREFILL_MESSAGE = str(PREFILL_ERROR["message"])
RATE_LIMIT_MESSAGE = "This request would exceed the rate limit for your organization"
OVERLOADED = {"type": "overloaded_error", "message": "Overloaded"}  # also the mid-stream error event's
MODELS = (("claude-sonnet-4-6", "Claude Sonnet 4.6"), ("claude-haiku-4-5", "Claude Haiku 4.5"))
MODEL_CREATED_AT = "2025-02-19T00:00:00Z"
_TOOL_CHOICES = ("any", "tool")
_BROKEN = b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, "delta": {"type"\n\n'


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def event(kind: str, data: dict[str, Any]) -> bytes:
    """One server-sent event in Anthropic's framing: an event line naming the data's type, then the data."""
    return b"event: " + kind.encode() + b"\ndata: " + json.dumps(data).encode() + b"\n\n"


def wanted_tool(body: dict[str, Any]) -> str | None:
    """The tool a request makes the fake call: with `tools` and tool_choice of type any (the first tool) or tool
    (the named one, if it is among them)."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if not (isinstance(tools, list) and tools and isinstance(choice, dict) and choice.get("type") in _TOOL_CHOICES):
        return None
    names = [str(t.get("name")) for t in tools if isinstance(t, dict) and t.get("name")]
    if not names:
        return None
    return str(choice["name"]) if choice.get("name") in names else names[0]


@dataclass
class AnthropicStats(Stats):
    count_tokens: int = 0  # requests to /v1/messages/count_tokens
    api_key_sha256: list[str] = field(default_factory=list)  # hashes of the x-api-key values seen, each once
    anthropic_versions: list[str | None] = field(default_factory=list)  # per API request, the last 100
    anthropic_betas: list[str | None] = field(default_factory=list)  # per API request, the last 100


class AnthropicFake(FakeProvider):
    """FakeProvider's Anthropic dialect. `api_key`, if set, is the key every /v1 request must carry."""

    fault_models = ANTHROPIC_FAULT_MODELS
    stats: AnthropicStats

    def __init__(
        self,
        name: str = "fake",
        behaviour: Behaviour | None = None,
        seed: int | None = None,
        api_key: str | None = None,
    ) -> None:
        super().__init__(name, behaviour, seed)
        self.stats = AnthropicStats()
        self.api_key = api_key

    def add_api_routes(self) -> None:
        router = self.app.router
        router.add_post("/v1/messages", self.chat)
        router.add_post("/v1/messages/count_tokens", self.count_tokens)
        router.add_post("/{prefix:.+}/v1/messages", self.chat)  # behind a path prefix
        router.add_post("/{prefix:.+}/v1/messages/count_tokens", self.count_tokens)
        router.add_get("/v1/models", self.models)
        router.add_get("/v1/models/{model_id}", self.model)
        router.add_route("*", "/v1/{tail:.*}", self.other)

    # ------------------------------------------------------------------ requests

    def _count(self, request: web.Request) -> None:
        super()._count(request)
        key = request.headers.get("x-api-key")
        if key:
            digest = hashlib.sha256(key.encode()).hexdigest()
            if digest not in self.stats.api_key_sha256:
                self.stats.api_key_sha256.append(digest)
        self.stats.anthropic_versions.append(request.headers.get("anthropic-version"))
        self.stats.anthropic_betas.append(request.headers.get("anthropic-beta"))
        del self.stats.anthropic_versions[:-100], self.stats.anthropic_betas[:-100]

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self.api_key is None:
            return None
        headers = request.headers
        if headers.get("x-api-key") == self.api_key or headers.get("Authorization") == f"Bearer {self.api_key}":
            return None
        return self.error(401, "invalid x-api-key")

    def error(self, status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
        """An error in Anthropic's shape, its type from ERROR_TYPES, with a request id in body and header."""
        request_id = f"req_{self.name}_{self.stats.requests}"
        payload = {"type": "error", "error": {"type": error_type(status), "message": message}, "request_id": request_id}
        return web.json_response(
            payload, status=status, headers={"x-fake-provider": self.name, "request-id": request_id, **(headers or {})}
        )

    async def _body(self, request: web.Request) -> dict[str, Any] | None:
        try:
            body = await request.json()
        except (ValueError, RecursionError):
            return None
        return body if isinstance(body, dict) and "model" in body else None

    def prompt_messages(self, body: dict[str, Any]) -> Any:
        """The messages, after the system prompt as a message of its own if there is one (Anthropic's top-level
        `system`), so that both count and a changed system prompt misses the cache."""
        messages, system = body.get("messages"), body.get("system")
        if system and isinstance(messages, list):
            return [{"role": "system", "content": system}, *messages]
        return messages

    def anthropic_usage(self, body: dict[str, Any] | None, output_tokens: int) -> dict[str, int]:
        """Usage as Anthropic counts it: input_tokens is what was not read from the (simulated) prompt cache."""
        prompt = self.prompt_usage(body)
        cached: int = prompt.get("prompt_tokens_details", {}).get("cached_tokens", 0)
        return {
            "input_tokens": prompt["prompt_tokens"] - cached,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": cached,
        }

    # ------------------------------------------------------------------ API

    async def models(self, request: web.Request) -> web.StreamResponse:
        self._count(request)
        self.stats.models += 1
        if (refused := self._unauthorized(request)) is not None:
            return refused
        if self._failing(is_probe=True):
            return await self._fail(request, None, stream=False)
        await asyncio.sleep(self.behaviour.latency)
        data = [{"type": "model", "id": m, "display_name": d, "created_at": MODEL_CREATED_AT} for m, d in MODELS]
        return web.json_response(
            {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
        )

    async def model(self, request: web.Request) -> web.StreamResponse:
        self._count(request)
        self.stats.models += 1
        if (refused := self._unauthorized(request)) is not None:
            return refused
        wanted = request.match_info["model_id"]
        for model, display in MODELS:
            if model == wanted:
                return web.json_response(
                    {"type": "model", "id": model, "display_name": display, "created_at": MODEL_CREATED_AT}
                )
        return self.error(404, f"model: {wanted}")

    async def other(self, request: web.Request) -> web.Response:
        self._count(request)
        return self.error(404, f"unknown path {request.path}")

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        """`{"input_tokens": N}`: the prompt tokens a message would report (FIXED_PROMPT_TOKENS with prompt_cache
        off), without touching the cache. Provider-wide faults apply, fault models don't."""
        self._count(request)
        self.stats.count_tokens += 1
        if (refused := self._unauthorized(request)) is not None:
            return refused
        body = await self._body(request)
        if body is None:
            return self.error(400, "body must be JSON with a model")
        if self._failing():
            return await self._fail(request, body, stream=False)
        await asyncio.sleep(self.behaviour.latency)
        tokens = estimate_tokens(self.prompt_messages(body)) if self.behaviour.prompt_cache else FIXED_PROMPT_TOKENS
        return web.json_response({"input_tokens": tokens}, headers={"x-fake-provider": self.name})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/messages."""
        self._count(request)
        self.stats.chat += 1
        if (refused := self._unauthorized(request)) is not None:
            return refused
        body = await self._body(request)
        if body is None:
            return self.error(400, "body must be JSON with a model")
        model = body["model"]
        self.stats.models_seen.append(str(model))
        del self.stats.models_seen[:-100]
        stream = bool(body.get("stream"))
        if isinstance(model, str) and model.startswith(FAULT_MODEL_PREFIX):
            return await self._fault_model(request, body, model)  # fail_rate does not apply: the model decides
        if self._failing():
            return await self._fail(request, body, stream)
        b = self.behaviour
        await asyncio.sleep(b.latency)
        pieces = self.plain_pieces()
        prefill = trailing_assistant(body)
        if prefill is not None:
            return await self._continue(request, body, str(model), pieces, prefill)
        return await self._reply(request, body, str(model), pieces, stream, output_tokens=b.chunks)

    # ------------------------------------------------------------------ faults, continuations, answers

    def plain_pieces(self) -> list[str]:
        """A plain model's answer, as FakeProvider's: "Hello from <name>:" and Behaviour.chunks words."""
        return [f"Hello from {self.name}:", *(f" word{i}" for i in range(self.behaviour.chunks))]

    async def _fault_model(self, request: web.Request, body: dict[str, Any], model: str) -> web.StreamResponse:
        """The one dispatch for ANTHROPIC_FAULT_MODELS."""
        b = self.behaviour
        name = self.pick_fault(body, model)
        if name is None:
            return self.error(404, f"model: {model}")
        await asyncio.sleep(b.latency)
        if name in ("context", "policy", REFUSE_PREFILL):
            return self.error(400, {"context": CONTEXT_MESSAGE, "policy": POLICY_MESSAGE}.get(name, PREFILL_MESSAGE))
        prefill = trailing_assistant(body)
        if name == CONTINUE and prefill is not None:
            return await self._continue(request, body, model, CANONICAL_PIECES, prefill)
        if name.startswith("429"):
            retry = {"429-long": {"retry-after": "60"}, "429-noheader": {}}.get(name, {"retry-after": "1"})
            return self.error(429, RATE_LIMIT_MESSAGE, retry)
        if name in ("500-once", "503", "529", "529-once"):
            status = int(name[:3])
            return self.error(status, "Internal server error" if status == 500 else "Overloaded")
        if name == "hang":
            await linger(request, FOREVER)
            self._cut(request)
            return web.Response()  # never reaches the client
        if name.startswith("reset"):
            self._cut(request)
            return web.Response()  # aiohttp sees the closed transport and drops it
        wait = b.first_token_delay if name == "slow-first-token" else 0.0
        ending = name if name in STREAM_FAULTS else "stop"
        return await self._reply(request, body, model, CANONICAL_PIECES, bool(body.get("stream")), ending, wait)

    async def _continue(
        self, request: web.Request, body: dict[str, Any], model: str, pieces: list[str], prefill: dict[str, Any]
    ) -> web.StreamResponse:
        """Continue the prefill with the rest of `pieces`, unless Behaviour.continuation refuses it (400)."""
        text = self.accept_continuation(prefill)
        if text is None:
            return self.error(400, PREFILL_MESSAGE)
        rest = after_prefill(pieces, text)
        return await self._reply(request, body, model, rest, bool(body.get("stream")), tools=False)

    async def _fail(self, request: web.Request, body: dict[str, Any] | None, stream: bool) -> web.StreamResponse:
        """A request that Behaviour.fail_rate picked to fail as Behaviour.fault says."""
        b = self.behaviour
        self.stats.failed += 1
        pieces = self.plain_pieces()
        if b.fault == "error":
            return self.error(b.status, f"{self.name} simulated failure")
        if b.fault == "rate_limit":
            return self.error(429, RATE_LIMIT_MESSAGE, {"retry-after": f"{b.retry_after:g}"})
        if b.fault in ("hang", "silent"):
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream" if stream else "application/json"}
            )
            if b.fault == "silent":
                await response.prepare(request)
            await linger(request, FOREVER)
            self._cut(request)
            return response
        if b.fault == "close":
            self._cut(request)
            return web.Response()
        if b.fault == "keepalive":
            return await self._reply(
                request, body, "keepalive", pieces, stream, output_tokens=b.chunks, keepalive=b.keepalive_for
            )
        if stream:  # drop: cut the connection mid-answer
            return await self._reply(request, body, "drop", pieces, stream, drop_after=b.drop_after)
        response = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b'{"id": "msg_partial", "type": "message", "content": [')
        self._cut(request)
        return response

    async def _reply(
        self,
        request: web.Request,
        body: dict[str, Any] | None,
        model: str,
        pieces: list[str],
        stream: bool,
        ending: str = "stop",
        wait: float = 0.0,
        *,
        output_tokens: int | None = None,
        tools: bool = True,
        keepalive: float = 0.0,
        drop_after: int | None = None,
    ) -> web.StreamResponse:
        """Answer with the text `pieces` (or a tool_use block, see wanted_tool): after `wait` seconds (of pings, if
        streamed; `keepalive` seconds of SSE comments come before any event), ending as `ending` says (stop or one of
        the stream faults), or cut after `drop_after` content_block_delta events (the text of as many OpenAI chunks)."""
        mid = f"msg_{self.name}_{self.stats.chat}"
        tool = wanted_tool(body) if body is not None and tools and ending == "stop" else None
        usage = self.anthropic_usage(body, len(pieces) if output_tokens is None else output_tokens)
        block: dict[str, Any] = {"type": "text", "text": "".join(pieces)}
        if tool is not None:
            block = {"type": "tool_use", "id": f"toolu_{self.name}_{self.stats.chat}", "name": tool, "input": {}}
        stop_reason = "end_turn" if tool is None else "tool_use"
        message: dict[str, Any] = {
            "id": mid,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [block],
        }
        message |= {"stop_reason": stop_reason, "stop_sequence": None, "usage": usage}
        headers = {"x-fake-provider": self.name, "request-id": f"req_{self.name}_{self.stats.requests}"}
        if not stream:
            await linger(request, wait + keepalive)
            if ending not in ("cut", "stall"):
                # Like a CDN in front of a real provider; a proxy must not replay it for others.
                return web.json_response(message, headers=headers | {"Set-Cookie": "__cf_bm=fake-session; Path=/"})
            return await self._broken_body(request, json.dumps(message).encode(), headers, ending)
        response = web.StreamResponse(
            headers=headers | {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError):  # the client left; nothing to tell it
            await self._events(request, response, message, pieces, ending, wait, keepalive, drop_after)
        return response

    async def _events(
        self,
        request: web.Request,
        response: web.StreamResponse,
        message: dict[str, Any],
        pieces: list[str],
        ending: str,
        wait: float,
        keepalive: float,
        drop_after: int | None,
    ) -> None:
        """The event stream of `message` (see _reply), in Anthropic's order."""
        b = self.behaviour
        deadline = time.monotonic() + keepalive
        while (left := deadline - time.monotonic()) > 0:
            await response.write(b": keep-alive\n\n")
            await asyncio.sleep(min(0.2, left))
        block = message["content"][0]
        start = message | {"content": [], "stop_reason": None, "usage": message["usage"] | {"output_tokens": 1}}
        await response.write(event("message_start", {"type": "message_start", "message": start}))
        first = block | {"text": ""} if block["type"] == "text" else block
        await response.write(
            event("content_block_start", {"type": "content_block_start", "index": 0, "content_block": first})
        )
        await response.write(event("ping", {"type": "ping"}))
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(0.2, left))
            await response.write(event("ping", {"type": "ping"}))
        if block["type"] == "tool_use":
            deltas = [{"type": "input_json_delta", "partial_json": json.dumps(block["input"])}]
        else:
            sent = pieces if ending == "stop" else pieces[: b.cut_after]
            deltas = [{"type": "text_delta", "text": piece} for piece in sent]
        for i, delta in enumerate(deltas):
            if drop_after is not None and i >= drop_after:
                self._cut(request)
                return
            if b.chunk_delay:
                await asyncio.sleep(b.chunk_delay)
            await response.write(
                event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
            )
        if ending in ("cut", "stall"):
            if ending == "stall":
                await linger(request, FOREVER)
            self._cut(request)
            return
        if ending == "malformed":
            await response.write(_BROKEN)
        elif ending == "error-event":
            await response.write(event("error", {"type": "error", "error": OVERLOADED}))
        elif ending == "stop":
            await response.write(event("content_block_stop", {"type": "content_block_stop", "index": 0}))
            end: dict[str, Any] = {"stop_reason": message["stop_reason"], "stop_sequence": None}
            usage = {"output_tokens": message["usage"]["output_tokens"]}
            await response.write(event("message_delta", {"type": "message_delta", "delta": end, "usage": usage}))
            await response.write(event("message_stop", {"type": "message_stop"}))
        await response.write_eof()  # no-done, malformed, error-event: a clean end all the same
