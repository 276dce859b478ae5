"""What every fake does the same way, whatever API it speaks: the `/_fake/*` control routes, counting requests,
the simulated prompt cache, and the one flow from a request to its answer or its fault.

A format's request handler reads the body and hands `serve` a `Speaker`: that request's voice in its format,
which makes its errors and renders its answers. `serve` decides, the same way for every format and endpoint: a
fault model's fault (FAULT_MODELS, with its "once" state), a provider-wide fault (Behaviour.fail_rate), a
continuation of a trailing assistant message, or the plain answer; what is in an answer (text, tool calls,
reasoning) is plan.decide's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
from collections import OrderedDict
from typing import Any, Protocol

from aiohttp import web

from .core import (
    ANSWER,
    CANONICAL_PIECES,
    CONTINUE,
    FAULT_MODEL_PREFIX,
    FAULT_MODELS,
    FIXED_PROMPT_TOKENS,
    FOREVER,
    ONCE_FAULTS,
    PROMPT_CACHE_SIZE,
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
)
from .plan import Ask, Plan, decide
from .stream import cut, partial_body

# What Speaker.refuse is asked to say: the errors a fake gives, each format in its own shape.
UNKNOWN_MODEL, CONTEXT, POLICY, PREFILL, RATE_LIMIT, SERVER, FAILURE = (
    "unknown-model", "context", "policy", "prefill", "rate-limit", "server", "failure",
)  # fmt: skip


class Speaker(Protocol):
    """One request's answers and errors in its API format."""

    request: web.Request
    body: dict[str, Any]
    model: str
    stream: bool
    partial: bytes  # how a body of this format starts: what the drop fault sends of one before it cuts

    def ask(self) -> Ask: ...

    def prefill(self) -> dict[str, Any] | None:
        """The trailing assistant message the request asks to continue, as a chat message, or None."""
        ...

    def refuse(self, kind: str, status: int, headers: dict[str, str] | None = None) -> web.Response: ...

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
        """Answer with `plan`, as model `model` (default the request's): after `keepalive` seconds of SSE comments
        and, after the opening events, `wait` seconds of heartbeats (or that late, without a stream), ending as
        `ending` says (stop or a stream fault), or cut before delta number `drop_after`. `plain`: a plain model's
        answer, not a fault model's or a continuation (OpenAI's chat shapes the two a little apart)."""
        ...


class FakeBase:
    fault_models: dict[str, str] = FAULT_MODELS  # the fault models this dialect knows

    def __init__(self, name: str = "fake", behaviour: Behaviour | None = None, seed: int | None = None) -> None:
        self.name = name
        self.behaviour = behaviour or Behaviour()
        self.stats = Stats()
        self.random = random.Random(seed)
        self.seen: dict[str, int] = {}  # requests per fault model string, for the "once" faults
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
        """The API this provider serves: each format's class adds its own."""

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

    # ------------------------------------------------------------------ requests

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
        """The prompt part of the usage of an answer to `body`: prompt_cache(its model, its prompt_messages)."""
        messages = None if body is None else self.prompt_messages(body)
        if body is None or messages is None:  # a probe or an embedding: no conversation to cache
            return {"prompt_tokens": FIXED_PROMPT_TOKENS}
        return self.prompt_cache(body.get("model"), messages)

    def prompt_cache(self, model: Any, messages: Any) -> dict[str, Any]:
        """The prompt part of the usage of an answer to `messages`, called once per request when its answer starts.

        With prompt_cache off it is the fixed FIXED_PROMPT_TOKENS. With it on: the estimate of the messages and the
        estimate of the longest prefix this provider has seen as cached_tokens; then every prefix of this request is
        remembered. Lookup and remembering happen together when the answer starts, as a real provider's cache holds
        the prompt once prefill is done, before the first token; a request refused before that (429, 5xx, 400,
        reset, hang) was never processed, so it neither counts nor fills the cache.
        """
        if not self.behaviour.prompt_cache:
            return {"prompt_tokens": FIXED_PROMPT_TOKENS}
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

    def pick_fault(self, model: str, continuing: bool) -> str | None:
        """Count a request for fault model `model` and say what it gets: None for a model not in fault_models, else
        the fault's name, or ANSWER, CONTINUE or REFUSE_PREFILL. `continuing`: the request asks to continue a
        trailing assistant message. The one place every dialect decides this."""
        self.seen[model] = self.seen.get(model, 0) + 1
        self.stats.fault_requests[model] = self.stats.fault_requests.get(model, 0) + 1
        name = fault_for_model(model, self.fault_models)
        if name is None or name in ("context", "policy"):
            return name  # these two fail continuations as well
        if continuing:
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

    def plain_pieces(self) -> list[str]:
        """A plain model's answer: "Hello from <name>:" and Behaviour.chunks words."""
        return [f"Hello from {self.name}:", *(f" word{i}" for i in range(self.behaviour.chunks))]

    # ------------------------------------------------------------------ the flow

    async def serve(self, sp: Speaker) -> web.StreamResponse:
        """Answer the request `sp` speaks for; a client that left meanwhile (a proxy that cancelled a hedge, say)
        is no error of the fake's: a real provider stops generating then, and so does this."""
        try:
            return await self._serve(sp)
        except ConnectionResetError:  # aiohttp's ClientConnectionResetError too
            return web.Response(status=499)

    async def _serve(self, sp: Speaker) -> web.StreamResponse:
        self.stats.models_seen.append(sp.model)
        del self.stats.models_seen[:-100]
        if isinstance(sp.body.get("model"), str) and sp.model.startswith(FAULT_MODEL_PREFIX):
            return await self.fault_model(sp)  # fail_rate does not apply: the model decides
        if self._failing():
            return await self.fail(sp)
        b = self.behaviour
        tail = b.tail_rate > 0 and self.random.random() < b.tail_rate
        await asyncio.sleep(b.tail_latency if tail else b.latency)
        pieces = self.plain_pieces()
        prefill = sp.prefill()
        if prefill is not None:
            return await self.continuation(sp, pieces, prefill)
        return await sp.answer(decide(sp.ask(), pieces, self.behaviour.chunks), plain=True)

    async def continuation(self, sp: Speaker, pieces: list[str], prefill: dict[str, Any]) -> web.StreamResponse:
        """Continue `prefill` with the rest of `pieces`, unless Behaviour.continuation refuses it (400)."""
        text = self.accept_continuation(prefill)
        if text is None:
            return sp.refuse(PREFILL, 400)
        rest = after_prefill(pieces, text)
        return await sp.answer(Plan(text=tuple(rest), text_tokens=len(rest)))

    async def fault_model(self, sp: Speaker) -> web.StreamResponse:
        """The one dispatch for the fault models (FAULT_MODELS, or a dialect's own table)."""
        b = self.behaviour
        prefill = sp.prefill()
        name = self.pick_fault(sp.model, prefill is not None)
        if name is None:
            return sp.refuse(UNKNOWN_MODEL, 404)
        await asyncio.sleep(b.latency)
        if name in (CONTEXT, POLICY):
            return sp.refuse(name, 400)
        if name == REFUSE_PREFILL:
            return sp.refuse(PREFILL, 400)
        if name == CONTINUE and prefill is not None:
            return await self.continuation(sp, CANONICAL_PIECES, prefill)
        if name.startswith("429"):
            retry = {"429-long": "60", "429-noheader": None}.get(name, "1")
            return sp.refuse(RATE_LIMIT, 429, {"Retry-After": retry} if retry else {})
        if name in ("500-once", "503", "529", "529-once"):
            return sp.refuse(SERVER, int(name[:3]))
        if name == "hang":
            await linger(sp.request, FOREVER)
            cut(sp.request)
            return web.Response()  # never reaches the client
        if name.startswith("reset"):
            cut(sp.request)
            return web.Response()  # aiohttp sees the closed transport and drops it
        wait = b.first_token_delay if name == "slow-first-token" else 0.0
        ending = name if name in STREAM_FAULTS else "stop"
        plan = decide(sp.ask(), CANONICAL_PIECES, len(CANONICAL_PIECES))
        return await sp.answer(plan, ending=ending, wait=wait)

    async def fail(self, sp: Speaker) -> web.StreamResponse:
        """A request that Behaviour.fail_rate picked to fail as Behaviour.fault says."""
        b = self.behaviour
        request = sp.request
        self.stats.failed += 1
        if b.fault == "error":
            return sp.refuse(FAILURE, b.status)
        if b.fault == "rate_limit":
            return sp.refuse(RATE_LIMIT, 429, {"Retry-After": f"{b.retry_after:g}"})
        if b.fault in ("hang", "silent"):
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream" if sp.stream else "application/json"}
            )
            if b.fault == "silent":
                await response.prepare(request)
            await linger(request, FOREVER)
            cut(request)
            return response
        if b.fault == "close":
            cut(request)
            return web.Response()
        plan = decide(sp.ask(), self.plain_pieces(), b.chunks)
        if b.fault == "keepalive":
            return await sp.answer(plan, keepalive=b.keepalive_for, plain=True, model="keepalive")
        if sp.stream:  # drop: cut the connection mid-answer
            return await sp.answer(plan, drop_after=b.drop_after, plain=True, model="drop")
        return await partial_body(request, sp.partial)
