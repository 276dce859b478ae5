"""A controllable OpenAI-compatible provider that can fail in every way a real one does.

Users point the sidecar at it to test their agent's resilience; our tests and
the demo use it as the stand-in for real providers. Its behaviour can be changed
while it runs: `POST /_fake/behaviour` with a JSON object of the fields below.

Besides those provider-wide settings, a request can pick its own fault by model
name (see FAULT_MODELS): `fault-500-once-t7` gets fault `500-once`, and the whole
model string is the key for "once" state, so every test can use a fresh key.
Those answers carry CANONICAL (unless the request's tools or tool results make them a tool call or a quote of
the results: plan.py), so a test can check exactly what a proxy in front stitched together. A request whose
last message is from the assistant asks to continue it (see `Behaviour.continuation`). With
`Behaviour.prompt_cache` on, the fake also simulates a per-node prompt cache (see `FakeBase.prompt_cache`), so a
test can tell whether a proxy keeps a conversation on the node that has already seen its prefix.

This module is what every format's fake shares: the behaviour, stats, fault tables and canonical answer;
base.py the flow from a request to its answer or fault, plan.py (with tools.py) what an answer holds (text,
tool calls from the request's tool schemas, reasoning) and stream.py how it is sent or broken. openai.py serves
OpenAI's API (chat.py, responses.py, embeddings.py), anthropic.py Anthropic's Messages API (messages.py) on the
same footing, and serve.py picks one by its api name and runs it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

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
# on this provider. The stream faults (cut, stall, malformed, error-event, no-done) send the opening events and the
# first `cut_after` deltas (words, reasoning pieces or argument fragments: stream.py) before failing; without
# "stream", cut sends part of the JSON body (short of its Content-Length)
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
ONCE_FAULTS = ("429-once", "429-long", "429-noheader", "500-once", "reset-once", "529-once")  # 529-once: Anthropic only
STREAM_FAULTS = ("cut", "stall", "malformed", "error-event", "no-done")
FOREVER = 3600.0  # "never", for hang and stall: long enough for any test, and they stop when the client leaves

CONTEXT_ERROR = {
    "message": "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens. "
    "Please reduce the length of the messages.",
    "type": "invalid_request_error",
    "param": "messages",
    "code": "context_length_exceeded",
}
POLICY_ERROR = {
    "message": "Your request was rejected as a result of our safety system.",
    "type": "invalid_request_error",
    "param": None,
    "code": "content_policy_violation",
}
PREFILL_ERROR = {
    "message": "continuing a partial assistant message is not supported",
    "type": "invalid_request_error",
    "param": "messages",
    "code": "unsupported_prefill",
}
RATE_LIMIT_ERROR = {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}

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


# What FakeBase.pick_fault says besides a fault model's name.
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
    tail_rate: float = 0.0  # share of chat answers that wait tail_latency instead (a first-token tail)
    tail_latency: float = 0.0
    chunks: int = 5  # SSE chunks per streamed answer
    chunk_delay: float = 0.0  # seconds between chunks
    drop_after: int = 2  # for fault "drop": SSE chunks sent before the connection is cut
    keepalive_for: float = 1.0  # for fault "keepalive": seconds of ": keep-alive" before data
    faults_on_models: bool = True  # whether /v1/models (the health probe) fails too
    first_token_delay: float = 20.0  # for model fault "slow-first-token": seconds of keep-alive before the words
    cut_after: int = 8  # for the model stream faults (cut, stall, ...): words sent before the fault
    continuation: str = "prefill"  # how a trailing assistant message must look to be continued, one of CONTINUATIONS
    prompt_cache: bool = False  # simulate a per-node prompt cache: estimated prompt tokens, cached_tokens in usage
    responses: bool = True  # the OpenAI fake serves the Responses API (/v1/responses); off, it is chat-only (404)

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
    chat: int = 0  # requests to the chat endpoint (/v1/chat/completions, Anthropic's /v1/messages)
    responses: int = 0  # requests to POST /v1/responses
    embeddings: int = 0  # requests to POST /v1/embeddings
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


def listed(value: Any) -> list[Any]:
    """`value` if it is a list, else none: a request's lists as the fake reads them, whatever a client sent."""
    return value if isinstance(value, list) else []


def trailing_assistant(body: dict[str, Any]) -> dict[str, Any] | None:
    """The last message if it is the assistant's, i.e. the request asks to continue it."""
    messages = body.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict):
        last: dict[str, Any] = messages[-1]
        if last.get("role") == "assistant":
            return last
    return None


def text_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def after_prefill(pieces: list[str], prefill: str) -> list[str]:
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


async def linger(request: web.Request, seconds: float) -> None:
    """Sleep up to `seconds`, but stop once the client has gone: aiohttp doesn't cancel handlers on disconnect."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        await asyncio.sleep(min(0.1, left))
