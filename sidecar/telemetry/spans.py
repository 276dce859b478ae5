"""The spans of one finished request, from its `request` record and its trace: plain data, no OpenTelemetry.

One span for the request (kind SERVER, the client's span its parent), a child per attempt (CLIENT: what was
asked of a node, continuations included) and a child per wait between attempts (INTERNAL). Attributes follow
OpenTelemetry's GenAI semantic conventions (gen_ai.*, server.*, error.type) with the sidecar's own under
`llm_sidecar.*`. An attempt's span ends where the wait after it began, or where the next attempt began.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from sidecar.config.schema import Node
from sidecar.metrics import reason_category

from .content import Output, inputs_of, output_of
from .context import Trace, new_span_id

# gen_ai.operation.name by path; another path is named by its first segment (`audio`, `images`, ...).
OPERATIONS = {
    "/v1/chat/completions": "chat",
    "/v1/messages": "chat",
    "/v1/responses": "chat",
    "/v1/completions": "text_completion",
    "/v1/complete": "text_completion",
    "/v1/embeddings": "embeddings",
}
SEGMENT = re.compile(r"/v1/([a-z_]{1,32})(?:/|$)")
# gen_ai.provider.name: the conventions' well-known values for their hosts; any other node is named by the API
# it speaks ("openai" or "anthropic"), as the conventions say an instrumentation of that API's clients would.
PROVIDERS = {
    "api.openai.com": "openai",
    "api.anthropic.com": "anthropic",
    "api.deepseek.com": "deepseek",
    "api.groq.com": "groq",
    "api.mistral.ai": "mistral_ai",
    "api.x.ai": "x_ai",
    "api.perplexity.ai": "perplexity",
    "api.moonshot.ai": "moonshot_ai",
    "api.moonshot.cn": "moonshot_ai",
    "api.cohere.com": "cohere",
    "api.cohere.ai": "cohere",
    "generativelanguage.googleapis.com": "gcp.gemini",
}
PROVIDER_SUFFIXES = ((".openai.azure.com", "azure.ai.openai"), ("aiplatform.googleapis.com", "gcp.vertex_ai"))
# A failure reason that carries the node's HTTP status (proxy/answer.py status_reason): error.type is the status.
STATUS_REASON = re.compile(r"(?:continuation: )?(?:http |auth \(|rate limited \(|overloaded \()([1-5]\d\d)\b")

Attributes = dict[str, str | bool | int | float | list[str]]


@dataclass
class Span:
    name: str
    kind: str  # "server", "client" or "internal"
    span_id: int
    start: int  # ns since the epoch
    end: int
    attributes: Attributes = field(default_factory=dict)
    error: str | None = None  # the status description of a span that ended in an error


@dataclass(frozen=True)
class Where:
    provider: str
    address: str
    port: int


def where(node: Node, cache: dict[str, Where]) -> Where:
    """A node's provider name, host and port (parsed once per url)."""
    found = cache.get(node.url)
    if found is None:
        parts = urlsplit(node.url)
        host = (parts.hostname or "").lower()
        provider = PROVIDERS.get(host) or next((p for s, p in PROVIDER_SUFFIXES if host.endswith(s)), node.api)
        found = cache[node.url] = Where(provider, host, parts.port or (443 if parts.scheme == "https" else 80))
    return found


def operation(path: str) -> str:
    if (name := OPERATIONS.get(path)) is not None:
        return name
    match = SEGMENT.match(path)
    return match[1] if match else "other"


def error_type(reason: str) -> str:
    """A low-cardinality error.type: the node's HTTP status, else the reason's category (metrics.REASONS)."""
    reason = reason.removeprefix("stream interrupted: ").removeprefix("body interrupted: ")
    match = STATUS_REASON.match(reason)
    return match[1] if match else reason_category(reason)


def _name(op: str, model: str | None) -> str:
    return f"{op} {model}" if model else op


def spans_of(trace: Trace, event: dict[str, Any], content: bool, cache: dict[str, Where]) -> list[Span]:
    """The request's span first, then its attempts and waits in the order they began."""

    def ns(t: float) -> int:
        return trace.wall + int((t - trace.mono) * 1e9)

    op = operation(event["path"])
    model: str | None = event.get("model")
    stream = bool(event.get("stream"))
    status: int = event.get("status") or 0
    failed: list[dict[str, Any]] = event.get("failed") or []
    continued: list[dict[str, Any]] = event.get("continued") or []
    api, path = event.get("api"), str(event["path"])
    answered = output_of(api, path, trace.first, messages=False).response if trace.first else (None, None, [])
    output: Output | None = None
    if content and trace.answer:
        output = output_of(api, path, bytes(trace.answer))
        answered = output.response

    steps = trace.steps
    spans: list[Span] = []
    common: Attributes = {"gen_ai.operation.name": op}
    if stream:
        common["gen_ai.request.stream"] = True
    answered_before = False  # an earlier attempt answered: this one continues its stream
    for k, step in enumerate(steps):
        following = steps[k + 1] if k + 1 < len(steps) else None
        # What the record's lists gained between this step's start and the next one's is this step's.
        failed_now = (following.failed if following is not None else len(failed)) > step.failed
        own_entry = (following.continued if following is not None else len(continued)) > step.continued
        at = where(step.node, cache)
        attrs: Attributes = {
            **common,
            "gen_ai.provider.name": at.provider,
            "server.address": at.address,
            "server.port": at.port,
            "llm_sidecar.node": step.node.name,
        }
        sent = step.node.rewrite_model(model) if model else None
        if sent:
            attrs["gen_ai.request.model"] = sent
        if answered_before:
            attrs["llm_sidecar.continuation"] = True
        error = None
        wait = 0.0
        if failed_now:
            entry = failed[step.failed]
            error = str(entry.get("reason", ""))
            attrs["llm_sidecar.outcome"] = "failed"
            wait = (entry.get("wait_ms") or 0) / 1000
        elif event.get("node") is None:
            attrs["llm_sidecar.outcome"] = "abandoned"  # the client left, or the sidecar stopped, mid-attempt
        elif (broke := step.continued + own_entry) < len(continued):  # it broke mid-stream; another node went on
            answered_before = True
            error = str(continued[broke].get("reason", ""))
            attrs["llm_sidecar.outcome"] = "broken"
        else:
            answered_before = True
            attrs["llm_sidecar.outcome"] = "answered"
            attrs["http.response.status_code"] = status
            _answer(attrs, event, answered)
            if event.get("error") or status >= 400:
                error = str(event.get("error") or f"status {status}")
        if error is not None:
            answered_badly = attrs["llm_sidecar.outcome"] == "answered" and status >= 400
            attrs["error.type"] = str(status) if answered_badly else error_type(error)
        # In whole ns, the wait taken off the next start: rounding each end apart would make 50 ms 49.999999.
        waited = round(wait * 1e9)
        end = max(ns(step.start), ns(following.start if following is not None else trace.ended) - waited)
        spans.append(Span(_name(op, sent), "client", step.span_id, ns(step.start), end, attrs, error))
        if wait:
            after: Attributes = {"llm_sidecar.node": step.node.name, "llm_sidecar.wait_ms": round(wait * 1000)}
            spans.append(Span("wait", "internal", new_span_id(), end, end + waited, after))

    request: Attributes = {
        **common,
        "gen_ai.provider.name": where(steps[-1].node, cache).provider if steps else str(event.get("api") or "openai"),
        "http.request.method": str(event.get("method")),
        "url.path": str(event["path"]),
        "http.response.status_code": status,
        "llm_sidecar.request_id": str(event.get("id")),
        "llm_sidecar.attempts": len(steps),
    }
    if model:
        request["gen_ai.request.model"] = model
    if event.get("node"):
        request["llm_sidecar.node"] = str(event["node"])
    _answer(request, event, answered)
    error = event.get("error")
    if error or status >= 400:
        request["error.type"] = str(status) if status >= 400 else error_type(str(error))
    if content:
        _content(request, api, path, trace.body, output)
    first = Span(_name(op, model), "server", trace.span_id, trace.wall, ns(trace.ended), request,
                 str(error or f"status {status}") if "error.type" in request else None)  # fmt: skip
    return [first, *spans]


def _answer(attrs: Attributes, event: dict[str, Any], answered: tuple[str | None, str | None, list[str]]) -> None:
    """What the answer said: the model and id that answered, why it finished, the tokens."""
    model, rid, finishes = answered
    if model:
        attrs["gen_ai.response.model"] = model
    if rid:
        attrs["gen_ai.response.id"] = rid
    if finishes:
        attrs["gen_ai.response.finish_reasons"] = finishes
    for key, name in (("tokens_in", "gen_ai.usage.input_tokens"), ("tokens_out", "gen_ai.usage.output_tokens"),
                      ("tokens_cached", "gen_ai.usage.cache_read.input_tokens")):  # fmt: skip
        value = event.get(key)
        if isinstance(value, int):
            attrs[name] = value
    ttft = event.get("ttft_ms")
    if event.get("stream") and isinstance(ttft, int | float):
        attrs["gen_ai.response.time_to_first_chunk"] = ttft / 1000


def _content(attrs: Attributes, api: Any, path: str, body: bytes | None, output: Output | None) -> None:
    if body:
        system, messages = inputs_of(api, path, body)
        if system is not None:
            attrs["gen_ai.system_instructions"] = system
        if messages is not None:
            attrs["gen_ai.input.messages"] = messages
    if output is not None and output.messages is not None:
        attrs["gen_ai.output.messages"] = output.messages
