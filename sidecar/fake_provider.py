"""A controllable OpenAI-compatible provider that can fail in every way a real one does.

Users point the sidecar at it to test their agent's resilience; our tests and
the demo use it as the stand-in for real providers. Its behaviour can be changed
while it runs: `POST /_fake/behaviour` with a JSON object of the fields below.

Besides those provider-wide settings, a request can pick its own fault by model
name (see FAULT_MODELS): `fault-500-once-t7` gets fault `500-once`, and the whole
model string is the key for "once" state, so every test can use a fresh key.
Those answers always carry CANONICAL, so a test can check exactly what a proxy
in front stitched together. A request whose last message is from the assistant
asks to continue it (see `Behaviour.continuation`). With `Behaviour.prompt_cache` on, the
fake also simulates a per-node prompt cache (see `FakeProvider.prompt_usage`), so a test can tell
whether a proxy keeps a conversation on the node that has already seen its prefix.

This module is the OpenAI dialect and what every dialect shares (behaviour, stats, fault selection and its "once"
state, the prompt cache); `sidecar/fake_anthropic.py` serves Anthropic's Messages API on the same footing.
`provider_class`, `start` and `serve_forever` pick one by its api name (see APIS).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import random
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .dialect import APIS_SPOKEN

FAULTS = ("error", "rate_limit", "hang", "silent", "drop", "close", "keepalive")
CONTINUATIONS = ("prefill", "prefix", "none")  # the dialects for continuing a partial assistant message

# Every answer to a fault model is this text, so a test can compare what a client got with it exactly.
CANONICAL_WORDS = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    "india", "juliet", "kilo", "lima", "mike", "november", "oscar", "papa",
    "quebec", "romeo", "sierra", "tango", "uniform", "victor", "whiskey", "xray",
)  # fmt: skip
CANONICAL = " ".join(CANONICAL_WORDS)
# The streamed pieces: their concatenation is CANONICAL, one word per chunk.
CANONICAL_PIECES = [CANONICAL_WORDS[0], *(" " + w for w in CANONICAL_WORDS[1:])]

FAULT_MODEL_PREFIX = "fault-"
# Faults chosen per request by model `fault-<name><tag>`; "first" means the first request for the full model string
# on this provider. The stream faults (cut, stall, malformed, error-event, no-done) send the role chunk and the first
# `cut_after` words before failing; without "stream", cut sends part of the JSON body (short of its Content-Length)
# and aborts, stall sends the headers and goes silent, and malformed, error-event and no-done answer normally.
# A continuation request (see Behaviour.continuation) ignores the fault, except for context and policy.
FAULT_MODELS: dict[str, str] = {
    "429-once": "first request: 429 with Retry-After: 1, then normal answers",
    "429-long": "first request: 429 with Retry-After: 60, then normal answers",
    "429-noheader": "first request: 429 without Retry-After, then normal answers",
    "429": "always 429 with Retry-After: 1",
    "500-once": "first request: 500, then normal answers",
    "503": "always 503",
    "reset": "connection aborted before any response headers",
    "reset-once": "first request: connection aborted before headers, then normal answers",
    "hang": "never answers (no headers)",
    "slow-first-token": "stream: role chunk, keep-alive comments for first_token_delay, then the words; else a late answer",
    "cut": "stream: cut_after words, then the connection is aborted; else a truncated JSON body",
    "stall": "stream: cut_after words, then silence; else headers, then silence",
    "malformed": "stream: cut_after words, a broken JSON data line, clean end without [DONE]; else normal",
    "error-event": "stream: cut_after words, an error event, clean end without [DONE]; else normal",
    "no-done": "stream: cut_after words, clean end without finish_reason or [DONE]; else normal",
    "context": "400 context_length_exceeded, even for continuations",
    "policy": "400 content_policy_violation, even for continuations",
    "reject-prefill": "continuations get 400 unsupported_prefill; normal answers otherwise",
}
_ONCE = ("429-once", "429-long", "429-noheader", "500-once", "reset-once", "529-once")  # 529-once: Anthropic only
_STREAM_FAULTS = ("cut", "stall", "malformed", "error-event", "no-done")
_FOREVER = 3600.0  # "never", for hang and stall: long enough for any test, and they stop when the client leaves

_CONTEXT_ERROR = {
    "message": "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens. "
    "Please reduce the length of the messages.",
    "type": "invalid_request_error",
    "param": "messages",
    "code": "context_length_exceeded",
}
_POLICY_ERROR = {
    "message": "Your request was rejected as a result of our safety system.",
    "type": "invalid_request_error",
    "param": None,
    "code": "content_policy_violation",
}
_PREFILL_ERROR = {
    "message": "continuing a partial assistant message is not supported",
    "type": "invalid_request_error",
    "param": "messages",
    "code": "unsupported_prefill",
}
_RATE_LIMIT_ERROR = {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}

# Prefix hashes one provider remembers for its simulated prompt cache, least recently used first out: bounded so a
# long soak test through the fake can't grow it without limit, and far more than any test's conversations need.
PROMPT_CACHE_SIZE = 50_000
# The prompt tokens every answer reports while prompt_cache is off; tests compare exact usage dicts against it.
FIXED_PROMPT_TOKENS = 7


def estimate_tokens(value: Any) -> int:
    """The fake's token estimate for the JSON `value` (a request's messages): about 4 characters a token, at least 1.

    Deterministic, so a test can compute the expected numbers from the messages it sent."""
    return max(1, len(json.dumps(value)) // 4)


def prompt_prefixes(model: Any, messages: list[Any]) -> list[tuple[str, int]]:
    """For k = 1..len(messages): the cache key of `messages[:k]` and its token estimate.

    The key is the sha256 of `json.dumps([model, messages[:k]], sort_keys=True)`: the model is part of it because a
    provider caches per model, and sort_keys makes it independent of how a client ordered a message's fields. Both are
    built from each message's serialization once, so a conversation of n messages costs O(n), not O(n²); the result
    is exactly what serializing every prefix would give (json.dumps joins list items with ", ", and key order does
    not change a serialization's length).
    """
    parts = [json.dumps(m, sort_keys=True) for m in messages]
    digest = hashlib.sha256(("[" + json.dumps(model, sort_keys=True) + ", [").encode())
    length = 2  # the brackets of json.dumps(messages[:k])
    prefixes: list[tuple[str, int]] = []
    for k, part in enumerate(parts):
        digest.update(((", " if k else "") + part).encode())
        length += len(part) + (2 if k else 0)
        key = digest.copy()
        key.update(b"]]")
        prefixes.append((key.hexdigest(), max(1, length // 4)))
    return prefixes


def fault_for_model(model: str, table: dict[str, str] = FAULT_MODELS) -> str | None:
    """The name in `table` a model selects: the longest one its rest starts with (the remainder is a tag)."""
    if not model.startswith(FAULT_MODEL_PREFIX):
        return None
    rest = model[len(FAULT_MODEL_PREFIX) :]
    return max((name for name in table if rest.startswith(name)), key=len, default=None)


# What FakeProvider.pick_fault says besides a fault model's name.
ANSWER = "answer"  # a "once" fault already spent: answer normally
CONTINUE = "continue"  # a continuation, which skips the fault
REFUSE_PREFILL = "refuse-prefill"  # a continuation asked of a reject-prefill model


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
    first_token_delay: float = 20.0  # for model fault "slow-first-token": seconds of keep-alive before the words
    cut_after: int = 8  # for the model stream faults (cut, stall, ...): words sent before the fault
    continuation: str = "prefill"  # how a trailing assistant message must look to be continued, one of CONTINUATIONS
    prompt_cache: bool = False  # simulate a per-node prompt cache: estimated prompt tokens, cached_tokens in usage

    def __post_init__(self) -> None:
        if self.continuation not in CONTINUATIONS:
            raise ValueError(f"continuation must be one of {', '.join(CONTINUATIONS)}")

    def update(self, changes: dict[str, Any]) -> None:
        names = {f.name: f for f in dataclasses.fields(self)}
        for key, value in changes.items():
            if key not in names:
                raise ValueError(f"unknown field {key!r}")
            if key == "fault" and value not in FAULTS:
                raise ValueError(f"fault must be one of {', '.join(FAULTS)}")
            if key == "continuation" and value not in CONTINUATIONS:
                raise ValueError(f"continuation must be one of {', '.join(CONTINUATIONS)}")
            current = getattr(self, key)
            if isinstance(current, bool) and isinstance(value, str):
                raise ValueError(f"{key} must be true or false")  # bool("false") would silently turn it on
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
    fault_requests: dict[str, int] = field(default_factory=dict)  # chat requests per fault model string
    continuations: int = 0  # accepted requests to continue a partial assistant message
    last_prefill: str = ""  # the partial assistant message of the last one, at most 200 characters
    # With prompt_cache on: estimated prompt tokens and the cached part of them, summed over the requests answered,
    # so a test can compute a node's cached share as cached_tokens / prompt_tokens.
    prompt_tokens: int = 0
    cached_tokens: int = 0


def _chunk(cid: str, model: str, delta: dict[str, Any], finish: str | None) -> bytes:
    payload = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _trailing_assistant(body: dict[str, Any]) -> dict[str, Any] | None:
    """The last message if it is the assistant's, i.e. the request asks to continue it."""
    messages = body.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        last: dict[str, Any] = messages[-1]
        if last.get("role") == "assistant":
            return last
    return None


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _rest(pieces: list[str], prefill: str) -> list[str]:
    """The pieces still to send after `prefill`, split at the same boundaries; all of them if it isn't a prefix."""
    if not "".join(pieces).startswith(prefill):
        return list(pieces)  # like a model that ignores what it is asked to continue
    rest: list[str] = []
    done = 0
    for piece in pieces:
        if done + len(piece) > len(prefill):
            rest.append(piece[max(0, len(prefill) - done) :])
        done += len(piece)
    return rest


def _usage(prompt: dict[str, Any], completion: int) -> dict[str, Any]:
    """A usage object from `prompt` (FakeProvider.prompt_usage) and the completion tokens, in OpenAI's key order."""
    details = {k: v for k, v in prompt.items() if k != "prompt_tokens"}
    tokens: int = prompt["prompt_tokens"]
    return {"prompt_tokens": tokens, "completion_tokens": completion, "total_tokens": tokens + completion, **details}


def _wants_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


async def _linger(request: web.Request, seconds: float) -> None:
    """Sleep up to `seconds`, but stop once the client has gone: aiohttp doesn't cancel handlers on disconnect."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(min(0.1, left))


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
        if _trailing_assistant(body) is not None:
            # Any other fault is skipped, so a test can continue on the node that just failed it.
            return REFUSE_PREFILL if name == "reject-prefill" else CONTINUE
        if name in _ONCE and self.seen[model] > 1:
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
        text = _text_of(prefill)
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
        prefill = _trailing_assistant(body)
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
            return self._error(400, _CONTEXT_ERROR)
        if name == "policy":
            return self._error(400, _POLICY_ERROR)
        if name == REFUSE_PREFILL:
            return self._error(400, _PREFILL_ERROR)
        prefill = _trailing_assistant(body)
        if name == CONTINUE and prefill is not None:
            return await self._continue(request, body, model, CANONICAL_PIECES, prefill)
        if name.startswith("429"):
            retry = {"429-long": {"Retry-After": "60"}, "429-noheader": {}}.get(name, {"Retry-After": "1"})
            return self._error(429, _RATE_LIMIT_ERROR, retry)
        if name in ("500-once", "503"):
            status = int(name[:3])
            return self._error(
                status, {"message": f"{self.name} simulated {status}", "type": "server_error", "code": None}
            )
        if name == "hang":
            await _linger(request, _FOREVER)
            self._cut(request)
            return web.Response()  # never reaches the client
        if name.startswith("reset"):
            self._cut(request)
            return web.Response()  # aiohttp sees the closed transport and drops it
        stream, usage = bool(body.get("stream")), _wants_usage(body)
        wait = b.first_token_delay if name == "slow-first-token" else 0.0
        ending = name if name in _STREAM_FAULTS else "stop"
        return await self._answer(request, body, model, CANONICAL_PIECES, stream, usage, ending=ending, wait=wait)

    async def _continue(
        self, request: web.Request, body: dict[str, Any], model: str, pieces: list[str], prefill: dict[str, Any]
    ) -> web.StreamResponse:
        """Answer a request to continue `prefill` with the rest of `pieces`, if it comes in this provider's dialect."""
        text = self.accept_continuation(prefill)
        if text is None:
            return self._error(400, _PREFILL_ERROR)
        stream, usage = bool(body.get("stream")), _wants_usage(body)
        return await self._answer(request, body, model, _rest(pieces, text), stream, usage)

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
            await _linger(request, wait)
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
                    await _linger(request, _FOREVER)
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
            await _linger(request, _FOREVER)
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


APIS = APIS_SPOKEN


def provider_class(api: str = "openai") -> type[FakeProvider]:
    """The fake for API dialect `api`, one of APIS: FakeProvider, or fake_anthropic.AnthropicFake."""
    if api == "openai":
        return FakeProvider
    if api == "anthropic":
        from .fake_anthropic import AnthropicFake

        return AnthropicFake
    raise ValueError(f"api must be one of {', '.join(APIS)}")


async def start(
    name: str, host: str, port: int, behaviour: Behaviour | None = None, api: str = "openai"
) -> tuple[FakeProvider, web.AppRunner]:
    provider = provider_class(api)(name, behaviour)
    runner = web.AppRunner(provider.app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    return provider, runner


def serve_forever(name: str, host: str, port: int, behaviour: Behaviour, api: str = "openai") -> None:
    provider = provider_class(api)(name, behaviour)
    web.run_app(provider.app, host=host, port=port, access_log=None, print=None, shutdown_timeout=0.5)
