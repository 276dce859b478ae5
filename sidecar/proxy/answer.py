"""What a node's answer is: the node's failure, or what may go to the client.

Nothing reaches the client before `first_bytes` returns, so anything that goes
wrong until then is still retryable: the response headers are held until the
first body byte (for SSE, the first non-comment line, within SSE_HOLD_LIMIT),
which lets a node that answers 200 and then stays silent be failed over. JSON
bodies are read whole for the same reason, up to `max_response_bytes`; bodies
nobody needs to inspect (audio, files, anything too large to hold) are handed
on as they arrive once their first bytes are in.

`first_bytes` also decides which answers are the node's failure although they
are no error status: a redirect, a non-JSON 2xx on a JSON API path, a body
past the limit, an SSE answer of nothing but comments.
"""

from __future__ import annotations

import email.utils
import io
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from sidecar.formats.sse import Signal, Splitter, classify, data_of, error_text
from sidecar.nodes.health import Failure
from sidecar.nodes.held import Share
from sidecar.nodes.transport import Response, UpstreamError

if TYPE_CHECKING:
    pass

ERROR_BODY_LIMIT = 64 * 1024
# What is held of an SSE answer before its first real event: comments (": keep-alive") are
# forwarded once the hold ends, so a node sending only comments would otherwise grow it forever.
SSE_HOLD_LIMIT = 1 << 20
# A Retry-After longer than a day is a broken header, not a plan (health caps it further).
MAX_RETRY_AFTER = 86400.0
# The API paths whose successful answers are JSON or SSE and nothing else: a 200 text/html
# there is a captive portal or a CDN's error page, not an answer. Others (files, audio) keep any type.
JSON_API_PATHS = frozenset(
    {
        "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
        "/v1/messages", "/v1/messages/count_tokens",  # Anthropic's
    }
)  # fmt: skip
# A request too long for a node's context window is no fault of the node: a larger-context node may
# take it. The wordings of OpenAI, Azure, DeepSeek, vLLM, llama.cpp, Mistral and Anthropic.
CONTEXT_STATUSES = frozenset({400, 413})
CONTEXT_MARKERS = (
    b"context_length_exceeded", b"maximum context length", b"context window", b"context length",
    b"prompt is too long", b"input is too long", b"too many tokens", b"exceeds the available context",
    b"reduce the length of the messages",
)  # fmt: skip
# An error object where the answer should be, under a success status: OpenAI's shape or Anthropic's.
ERROR_IN_200 = re.compile(rb'\s*\{\s*(?:"type"\s*:\s*"error"|"error"\s*:\s*\{)')
# Statuses whose Retry-After is read: a rate limit, and an overloaded node (503, Anthropic's 529).
RETRY_AFTER_STATUSES = frozenset({429, 503, 529})
# A refusal is the answer: another node must not be asked to say what this one would not.
POLICY_MARKERS = (b"content_policy_violation", b"content_filter", b"content_policy", b"safety system")


class Body(Enum):
    """How an answer's body goes to the client."""

    WHOLE = "whole"  # read whole (bounded) before anything is sent: a cut can still fail over
    EVENTS = "events"  # SSE: held until the first real event, then relayed event by event
    PASS = "pass"  # streamed as it arrives once its first bytes are in (audio, files, large bodies)


@dataclass(slots=True)
class Ready:
    response: Response
    kind: Body
    body: bytes  # the whole body, what was held back of a stream, or the first bytes of a pass-through
    first_byte: float
    first_token: float | None


def status_reason(status: int) -> str:
    if status in (401, 402, 403):
        return f"auth ({status})"
    if status == 429:
        return "rate limited (429)"
    if status == 529:  # Anthropic's overloaded_error
        return "overloaded (529)"
    return f"http {status}"


def is_json_api(path: str) -> bool:
    """A path whose 2xx answers must be JSON or SSE (see JSON_API_PATHS)."""
    return path in JSON_API_PATHS or path.startswith("/v1/responses/")


def _seconds(value: str, scale: float = 1.0) -> float | None:
    """A finite delay in [0, MAX_RETRY_AFTER]; None for what is no number (NaN included)."""
    try:
        seconds = float(value) / scale
    except ValueError:
        return None
    if seconds != seconds:  # NaN: neither a delay nor comparable
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)  # clamps inf and -inf too


def retry_after(header: Callable[[str], str | None]) -> float | None:
    """Seconds from Retry-After (seconds or HTTP date) or OpenAI's retry-after-ms, always finite.

    The header is the node's to write: `inf`, `1e999`, `nan` or a date in year 9999 must not
    become a non-finite block time or an Infinity in the status JSON.
    """
    ms = header("retry-after-ms")
    if ms:
        seconds = _seconds(ms, 1000.0)
        if seconds is not None:
            return seconds
    value = header("retry-after")
    if not value:
        return None
    seconds = _seconds(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
        return min(max(0.0, when.timestamp() - time.time()), MAX_RETRY_AFTER)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


def context_overflow(body: bytes) -> bool:
    """A 400/413 that says the request does not fit this node's context window (and is no refusal)."""
    text = body[:ERROR_BODY_LIMIT].lower()
    return any(m in text for m in CONTEXT_MARKERS) and not is_refusal(text)


def is_refusal(body: bytes) -> bool:
    """A content-policy refusal: the node's answer, never retried or continued elsewhere."""
    text = body[:ERROR_BODY_LIMIT].lower()
    return any(m in text for m in POLICY_MARKERS)


def media_type(value: str | None) -> str:
    return "" if not value else value.partition(";")[0].strip().lower()


def printable(text: str, limit: int = 64) -> str:
    """A node-supplied value fit for a failure reason (it reaches logs and the monitor)."""
    return "".join(c if "!" <= c <= "~" else "?" for c in text[:limit])


def is_redirect(status: int) -> bool:
    return 300 <= status < 400 and status != 304  # 304 answers the client's own conditional request


async def failed_answer(response: Response, reason: str, retry: float | None = None) -> UpstreamError:
    """A node's answer that is a failure, kept (bounded) in case it is the last one to pass on."""
    return UpstreamError(
        Failure.HTTP,
        reason,
        status=response.status,
        headers=list(response.raw_headers),
        body=await response.read(ERROR_BODY_LIMIT),
        retry_after=retry,
    )


async def first_bytes(
    response: Response,
    retry_statuses: frozenset[int],
    max_bytes: int,
    held: Share,
    json_api: bool = False,
    first_event_within: float = math.inf,
    may_stream: bool = True,
) -> Ready:
    """Wait for what may be sent to the client; raise UpstreamError when the node failed instead.

    `max_bytes` bounds what is held of a body read whole, `held` is the attempt's share of the
    process's budget for all of them (see `whole`); `json_api`: the request's path is one
    whose successful answers must be JSON or SSE; `first_event_within`: seconds an SSE answer may
    take to its first real event (keep-alive comments do not extend it); `may_stream`: False when the
    client asked for one JSON answer (its SDK would hand on a stream as a raw string).
    """
    status = response.status
    if status in CONTEXT_STATUSES:  # before retry_statuses: a context overflow is never the node's fault
        ready = await whole(response, max_bytes, held)
        if context_overflow(ready.body):
            raise UpstreamError(
                None, "context window exceeded", status=status, headers=list(response.raw_headers), body=ready.body
            )
        if status in retry_statuses:
            raise UpstreamError(
                Failure.HTTP, status_reason(status), status=status, headers=list(response.raw_headers),
                body=ready.body[:ERROR_BODY_LIMIT],
            )  # fmt: skip
        return ready
    if status in retry_statuses:
        raise await failed_answer(
            response, status_reason(status), retry_after(response.header) if status in RETRY_AFTER_STATUSES else None
        )
    if is_redirect(status):
        # A provider redirecting an API call is misconfigured; the prompt and key go nowhere else.
        raise await failed_answer(response, f"redirect ({status})")
    media = media_type(response.header("content-type"))
    if media == "text/event-stream":
        if json_api and not may_stream and 200 <= status < 300:
            raise UpstreamError(Failure.HTTP, "stream answer to a non-stream request")
        return await first_event(response, first_event_within)
    is_json = media == "application/json" or media.endswith("+json")
    if json_api and not is_json and media and 200 <= status < 300:
        quoted = printable(media)
        raise UpstreamError(Failure.HTTP, f"bad content-type ({quoted})", quoted=quoted)
    if is_json or (json_api and not media):
        length = response.header("content-length")
        if not (length and length.isdigit() and int(length) > max_bytes):
            ready = await whole(response, max_bytes, held)
            if ready.kind is Body.WHOLE and json_api and 200 <= status < 300 and ERROR_IN_200.match(ready.body):
                quoted = error_text(ready.body)
                raise UpstreamError(Failure.HTTP, f"error in a {status} answer ({quoted})", quoted=quoted)
            return ready
    # Nothing in it needs inspecting: hand it on as it comes, holding nothing.
    data = await response.chunk()
    return Ready(response, Body.PASS, data, time.monotonic(), None)


async def whole(response: Response, max_bytes: int, held: Share) -> Ready:
    """The body, up to `max_bytes`, in one buffer that is never copied (BytesIO hands its bytes over:
    joining pieces would hold the body twice), its bytes taken from `held` as they arrive.

    When the budget has no room left, a success goes on as a pass-through of what is in and the rest
    as it arrives: the client still gets its answer, only a cut after that cannot fail over. An error
    answer is refused instead (the sidecar's own trouble, no verdict on the node): it is read whole
    so the node's key can be taken out of it (forward.Trip.first), and it is worth no memory."""
    # Closed on every path: a failure's traceback keeps this frame alive (the request keeps its last failure
    # to answer with), and must not keep the bytes read with it.
    with io.BytesIO() as buffer:
        while chunk := await response.chunk():
            if buffer.tell() + len(chunk) > max_bytes:
                raise UpstreamError(Failure.HTTP, "response too large", code="upstream_response_too_large")
            if not held.take(len(chunk)):
                if not 200 <= response.status < 300:
                    raise UpstreamError(None, "answers held at once reached max_held_bytes", local=True)
                buffer.write(chunk)  # this one chunk past the budget is on its way out
                return Ready(response, Body.PASS, buffer.getvalue(), time.monotonic(), None)
            buffer.write(chunk)
        return Ready(response, Body.WHOLE, buffer.getvalue(), time.monotonic(), None)


async def first_event(response: Response, within: float = math.inf) -> Ready:
    """Hold an SSE answer until its first real token (bounded in bytes and time), so a silent node, or
    one that sends only keep-alive comments or a role-only delta, still fails over; an error event or a
    broken one before any token is the node's failure too."""
    now = time.monotonic
    deadline = now() + within
    held = bytearray()
    splitter = Splitter()
    first_byte = 0.0
    while True:
        chunk = await response.chunk()
        if not chunk:
            raise UpstreamError(Failure.TCP, "stream ended before any data")
        if not held:
            first_byte = now()
        held += chunk
        for start, end in splitter.events(held):
            data = data_of(bytes(held[start:end]))
            if data is None:
                continue  # comments: keep-alives
            signal = classify(data)
            if signal is Signal.TOKEN:
                return Ready(response, Body.EVENTS, bytes(held), first_byte, now())
            if signal is Signal.ERROR:
                quoted = error_text(data)
                raise UpstreamError(Failure.HTTP, f"error event before any token ({quoted})", quoted=quoted)
            if signal is Signal.MALFORMED:
                raise UpstreamError(Failure.HTTP, "malformed event before any token")
        if len(held) > SSE_HOLD_LIMIT:
            raise UpstreamError(Failure.HTTP, "no data before limit")
        if now() > deadline:
            raise UpstreamError(Failure.TIMEOUT, "no token before read timeout")
