"""One client request as it is logged and published, and its body on the way to a node."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sidecar.formats.dialect import ANTHROPIC, COUNT, OPENAI, AnthropicUsage, Api, count_of
from sidecar.formats.translate.ir import Form
from sidecar.nodes.node import NodeState
from sidecar.telemetry.context import Trace

# Cheap peeks at the body, for the log only; the body is parsed only to rewrite it.
MODEL_RE = re.compile(rb'"model"\s*:\s*"([^"\\]{1,200})"')
STREAM_RE = re.compile(rb'"stream"\s*:\s*true')
# A count is a bounded run of digits (dialect.COUNT): int() of an endless one would raise mid-answer.
PROMPT_TOKENS_RE = re.compile(rb'"prompt_tokens"\s*:\s*' + COUNT)
COMPLETION_TOKENS_RE = re.compile(rb'"completion_tokens"\s*:\s*' + COUNT)
# OpenAI's usage.prompt_tokens_details.cached_tokens, DeepSeek's prompt_cache_hit_tokens, Anthropic's.
CACHED_TOKENS_RE = re.compile(rb'"(?:cached_tokens|prompt_cache_hit_tokens|cache_read_input_tokens)"\s*:\s*' + COUNT)
# OpenAI's usage.completion_tokens_details.reasoning_tokens (part of completion_tokens): for the journal.
REASONING_TOKENS_RE = re.compile(rb'"reasoning_tokens"\s*:\s*' + COUNT)


def model_of(body: bytes) -> str | None:
    """The request's model: the top-level `"model"` of its JSON body. One peek finds it; a body naming a model
    twice (`metadata.model` before the real one, say) is parsed, so a client cannot pass one model off as
    another to the learned limits, per-model health and recovery probes."""
    found = MODEL_RE.finditer(body)
    first = next(found, None)
    if first is None:
        return None
    if next(found, None) is not None:
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):
            return None
        model = parsed.get("model") if isinstance(parsed, dict) else None
        return model[:200] if isinstance(model, str) else None
    return first.group(1).decode("utf-8", "replace")


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
    api: Api = OPENAI  # the request's format, from its path
    attempts: list[dict[str, Any]] = field(default_factory=list)  # failed attempts: node, reason, wait_ms
    continued: list[dict[str, str]] = field(default_factory=list)  # continuations: from, to, reason
    node: str | None = None
    status: int = 0
    first_byte: float | None = None
    first_token: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    tokens_cached: int | None = None  # prompt tokens the provider served from its cache
    tokens_cache_write: int | None = None  # prompt tokens written to its cache (Anthropic's cache creation)
    tokens_reasoning: int | None = None  # completion tokens spent thinking (OpenAI's reasoning_tokens)
    client_id: str | None = None  # the client's X-Request-Id, when it sent one (then also `rid`)
    error: str | None = None
    usage: AnthropicUsage | None = None  # an Anthropic answer's counts, gathered from its events
    request_caused: str | None = None  # how the request failed on every node it caused to fail (proxy/poison.py)
    hedged: list[dict[str, Any]] = field(default_factory=list)  # hedges: node, over (the node hedged), after_ms, won
    trace: Trace | None = None  # with traces on (sidecar/telemetry/)
    form: Form | None = None  # the format of a request that may be translated (formats/translate)
    skipped: list[dict[str, str]] = field(default_factory=list)  # nodes not asked: node, reason
    translated: str | None = None  # the answer's x-llm-sidecar-translated header, when it was translated
    api_upstream: Api | None = None  # the answering node's format, when not the client's (translated)
    answer_ms: float | None = None  # the answering attempt's own time (the journal's last step)

    @property
    def trailing(self) -> bool:
        """Something for the x-llm-sidecar-trail header: a failed attempt or a node passed over."""
        return bool(self.attempts or self.skipped)

    def record(self, now: float) -> dict[str, Any]:
        """The `request` event (the event hub adds `seq` and `time`)."""

        def ms(t: float | None) -> float | None:
            return None if t is None else round((t - self.started) * 1000, 2)

        return {
            "type": "request",
            "id": self.rid,
            "client_id": self.client_id,
            "method": self.method,
            "path": self.path,
            "api": self.api,
            "model": self.model,
            "node": self.node,
            "status": self.status,
            "attempts": len(self.attempts) + len(self.continued) + (1 if self.node else 0),
            "failed": self.attempts,
            "continued": self.continued,
            "stream": self.stream,
            "ttfb_ms": ms(self.first_byte),
            "ttft_ms": ms(self.first_token),
            "total_ms": ms(now),
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "tokens_cached": self.tokens_cached,
            "tokens_cache_write": self.tokens_cache_write,
            "tokens_reasoning": self.tokens_reasoning,
            "error": self.error,
            "request_caused": self.request_caused,
            "hedged": self.hedged,
            "form": self.form,
            "skipped": self.skipped,
            "translated": self.translated,
            "api_upstream": self.api_upstream,
            "answer_ms": self.answer_ms,
        }


def trail(ex: Exchange) -> bytes:
    """The `x-llm-sidecar-trail` header: each failed attempt, its reason and the wait after it."""
    steps = [f"{s['node']}: skipped ({s['reason']})" for s in ex.skipped]
    for a in ex.attempts:
        wait = a.get("wait_ms")
        steps.append(f"{a['node']}: {a['reason']}" + (f", waited {wait} ms" if wait is not None else ""))
    if ex.request_caused is not None:
        steps.append("request-caused: the same failure on nodes that serve other requests; no node blamed")
    return "; ".join(steps).encode("ascii", "replace")


def count_usage(ex: Exchange, usage: dict[str, Any]) -> None:
    """Token counts from a parsed `usage` object (a continued stream's events are parsed anyway)."""
    prompt, completion = count_of(usage.get("prompt_tokens")), count_of(usage.get("completion_tokens"))
    if prompt is not None:
        ex.tokens_in = prompt
    if completion is not None:
        ex.tokens_out = completion
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else usage.get("prompt_cache_hit_tokens")
    if (cached := count_of(cached)) is not None:
        ex.tokens_cached = cached
    details = usage.get("completion_tokens_details")
    if isinstance(details, dict) and (reasoning := count_of(details.get("reasoning_tokens"))) is not None:
        ex.tokens_reasoning = reasoning


def count_body(ex: Exchange, body: bytes) -> None:
    """Token counts from a whole answer."""
    if ex.api == ANTHROPIC:
        count_anthropic(ex, body, whole=True)
    else:
        count_tokens(ex, body)


def count_anthropic(ex: Exchange, data: bytes, whole: bool) -> None:
    """An Anthropic answer's counts: from a whole body's top-level usage, or from whole stream events."""
    usage = ex.usage = ex.usage or AnthropicUsage()
    if usage.read_body(data) if whole else usage.feed(data):
        ex.tokens_in, ex.tokens_out, ex.tokens_cached = usage.prompt, usage.output, usage.cache_read
        ex.tokens_cache_write = usage.cache_write


def count_tokens(ex: Exchange, data: bytes) -> None:
    if ex.api == ANTHROPIC:
        count_anthropic(ex, data, whole=False)
        return
    start = data.rfind(b'"usage"')  # the counts follow it: scan only from there
    if start < 0:
        return
    prompt = PROMPT_TOKENS_RE.search(data, start)
    completion = COMPLETION_TOKENS_RE.search(data, start)
    if prompt:
        ex.tokens_in = int(prompt.group(1))
    if completion:
        ex.tokens_out = int(completion.group(1))
    cached = CACHED_TOKENS_RE.search(data, start)
    if cached:
        ex.tokens_cached = int(cached.group(1))
    reasoning = REASONING_TOKENS_RE.search(data, start)
    if reasoning:
        ex.tokens_reasoning = int(reasoning.group(1))


def is_json(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """The client declared a JSON body (application/json, or a +json type)."""
    for name, value in headers:
        if name == b"content-type":
            media = value.split(b";", 1)[0].strip().lower()
            return media == b"application/json" or media.endswith(b"+json")
    return False


class BodyRewriter:
    """Parses the JSON body once, on the first node that rewrites the model.

    Only a body the client declared as JSON is rewritten: uploads (multipart
    audio, files) and other bodies go to every node byte for byte.
    """

    def __init__(self, body: bytes, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self.body = body
        self.json = bool(body) and is_json(headers)
        self.parsed: dict[str, Any] | None = None

    def parse(self) -> dict[str, Any] | None:
        """The body as a JSON object (parsed once), None for a body that is not declared JSON."""
        if not self.json:
            return None
        if self.parsed is None:
            try:
                parsed = json.loads(self.body)
            except RecursionError:
                raise BadBody("request body is nested too deeply") from None
            except ValueError as exc:
                raise BadBody(f"request body is not valid JSON ({exc})") from None
            if not isinstance(parsed, dict):
                raise BadBody("request body must be a JSON object")
            self.parsed = parsed
        return self.parsed

    def for_node(self, node: NodeState) -> bytes:
        models = node.config.models
        if not models or not self.json:
            return self.body
        parsed = self.parse()
        assert parsed is not None
        model = parsed.get("model")
        if not isinstance(model, str):
            return self.body
        target = node.config.rewrite_model(model)
        if target == model:
            return self.body
        return dump({**parsed, "model": target})


def dump(body: dict[str, Any]) -> bytes:
    """A rewritten body, or BadBody for what json.loads accepts but cannot go out as JSON.

    Those are a lone surrogate ("\\ud800", which UTF-8 cannot encode) and a number out of
    float range (1e999 parses as inf, which would be dumped as the non-JSON `Infinity`).
    """
    try:
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return text.encode()
    except RecursionError:
        raise BadBody("request body is nested too deeply") from None
    except UnicodeEncodeError:
        raise BadBody("request body is not valid JSON (a lone UTF-16 surrogate in a string)") from None
    except ValueError:
        raise BadBody("request body is not valid JSON (a number out of range)") from None
