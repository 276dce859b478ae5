"""The fake provider speaking Anthropic's Messages API: `llm-sidecar fake-provider --api anthropic`.

It stands in for Anthropic and Anthropic-compatible providers as FakeProvider does for OpenAI-compatible ones, and
shares everything with it but the wire format: Behaviour (POST /_fake/behaviour) and its provider-wide FAULTS, the
fault models `fault-<name><tag>` with their "once" state (ANTHROPIC_FAULT_MODELS: FAULT_MODELS plus 529 and
529-once), CANONICAL answers to them, continuations, tool calls and reasoning (plan.py), the prompt-cache
simulation and the stats (GET /_fake/stats).

It serves POST /v1/messages (messages.py: tool_use from the tools' schemas, thinking, Anthropic's event sequence),
POST /v1/messages/count_tokens and GET /v1/models[/{id}], and answers errors as `{"type": "error", "error": {"type",
"message"}, "request_id"}`. A trailing assistant message is continued natively (the prefill). With `api_key` set, a
request to /v1 that carries that key neither as x-api-key nor as `Authorization: Bearer` (which the anthropic SDK
2.x sends) gets 401 authentication_error. Keys are never stored: stats keep sha256 hashes of the x-api-key values
(api_key_sha256) and of the Authorization values (auth_sha256, as FakeProvider does), and the anthropic-version and
anthropic-beta values of the last 100 API requests (None where a request had none).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .base import CONTEXT, POLICY, PREFILL, RATE_LIMIT, SERVER, UNKNOWN_MODEL
from .core import (
    FAULT_MODELS,
    FIXED_PROMPT_TOKENS,
    POLICY_ERROR,
    PREFILL_ERROR,
    Behaviour,
    Stats,
    estimate_tokens,
    linger,
    trailing_assistant,
)
from .messages import Shape, events_of, message, messages_ask, signature
from .openai import FakeProvider
from .plan import Ask, Plan
from .stream import broken_body, event_stream, send

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
MODELS = (("claude-sonnet-4-6", "Claude Sonnet 4.6"), ("claude-haiku-4-5", "Claude Haiku 4.5"))
MODEL_CREATED_AT = "2025-02-19T00:00:00Z"


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


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
            return await self.fail_probe(request)
        await asyncio.sleep(self.behaviour.latency)
        data = [{"type": "model", "id": m, "display_name": d, "created_at": MODEL_CREATED_AT} for m, d in MODELS]
        return web.json_response(
            {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
        )

    async def fail_probe(self, request: web.Request) -> web.StreamResponse:
        return await self.fail(MessagesSpeaker(self, request, {"model": "probe"}, stream=False))

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
            return await self.fail(MessagesSpeaker(self, request, body, stream=False))
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
        return await self.serve(MessagesSpeaker(self, request, body))


class MessagesSpeaker:
    """A request to POST /v1/messages (base.Speaker); `stream` False for count_tokens, which never streams."""

    partial = b'{"id": "msg_partial", "type": "message", "content": ['

    def __init__(self, fake: AnthropicFake, request: web.Request, body: dict[str, Any], stream: bool = True) -> None:
        self.fake, self.request, self.body = fake, request, body
        self.model = str(body["model"])
        self.stream = stream and bool(body.get("stream"))

    def ask(self) -> Ask:
        return messages_ask(self.body)

    def prefill(self) -> dict[str, Any] | None:
        return trailing_assistant(self.body)

    def refuse(self, kind: str, status: int, headers: dict[str, str] | None = None) -> web.Response:
        messages = {
            UNKNOWN_MODEL: f"model: {self.model}",
            CONTEXT: CONTEXT_MESSAGE,
            POLICY: POLICY_MESSAGE,
            PREFILL: PREFILL_MESSAGE,
            RATE_LIMIT: RATE_LIMIT_MESSAGE,
            SERVER: "Internal server error" if status == 500 else "Overloaded",
        }
        return self.fake.error(status, messages.get(kind, f"{self.fake.name} simulated failure"), headers)

    async def answer(
        self,
        plan: Plan,
        *,
        ending: str = "stop",
        wait: float = 0.0,
        keepalive: float = 0.0,
        drop_after: int | None = None,
        plain: bool = False,
        model: str | None = None,
    ) -> web.StreamResponse:
        fake = self.fake
        n = f"{fake.name}_{fake.stats.chat}"
        tool_ids = tuple(f"toolu_{n}_{i}" for i in range(len(plan.calls)))
        usage = fake.anthropic_usage(self.body, plan.output_tokens)
        shape = Shape(f"msg_{n}", model or self.model, tool_ids, signature(fake.name, "".join(plan.reasoning)), usage)
        headers = {"x-fake-provider": fake.name, "request-id": f"req_{fake.name}_{fake.stats.requests}"}
        if not self.stream:
            await linger(self.request, wait + keepalive)
            if ending in ("cut", "stall"):
                return await broken_body(self.request, json.dumps(message(plan, shape)).encode(), headers, ending)
            # Like a CDN in front of a real provider; a proxy must not replay it for others.
            return web.json_response(
                message(plan, shape), headers=headers | {"Set-Cookie": "__cf_bm=fake-session; Path=/"}
            )
        response = await event_stream(self.request, headers)
        await send(self.request, response, events_of(plan, shape), fake.behaviour, ending, wait, keepalive, drop_after)
        return response
