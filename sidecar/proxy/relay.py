"""Sending an answer to the client: a ready upstream response, or the error after the last attempt.

The relay only copies bytes into `send`; what an attempt's outcome was is the
attempt scope's business (it is told through `Attempt.fail`).
"""

from __future__ import annotations

import re

from sidecar.formats.dialect import ANTHROPIC, CHOICE_PATHS, ENDS, MESSAGE_STOP, Api, error_json, stream_error
from sidecar.formats.errors import Send, send_error, send_json
from sidecar.formats.sse import DONE, Signal, Splitter, data_of, error_text
from sidecar.nodes.attempt import Attempt
from sidecar.nodes.health import Failure
from sidecar.nodes.transport import Response, UpstreamError

from .answer import Body, Ready, is_refusal
from .continuation import Finishes, Restamp, Transcript, event_of, parse_event
from .exchange import Exchange, count_body, count_tokens, count_usage, trail
from .redact import Redactor, redact, redact_headers, secret

RESPONSE_DROP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"content-length",
        # The sidecar is the one retry owner: a node's `x-should-retry: true` would make the SDK retry
        # what the sidecar already retried (the SDK's retries times the sidecar's).
        b"x-should-retry",
    }
)
# A body streamed as it comes keeps the node's own length: the client can tell a cut from an end.
PASS_DROP = RESPONSE_DROP - {b"content-length"}
# An incomplete SSE event is held back until it completes, so a stream cut inside
# an event never hands the client half a JSON object; past this size it goes as it is.
MAX_PARTIAL_EVENT = 1 << 20


def event_boundary(data: bytes) -> int:
    """Length of the prefix of `data` made of complete SSE events."""
    lf = data.rfind(b"\n\n")
    crlf = data.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


async def give_up(send: Send, ex: Exchange, last: UpstreamError | None, tried: int, timed_out: bool) -> None:
    extra = [
        (b"x-request-id", ex.rid.encode("latin-1")),
        (b"x-llm-sidecar-attempts", str(tried).encode()),
        (b"x-should-retry", b"false"),
    ]
    if ex.trailing:
        extra.append((b"x-llm-sidecar-trail", trail(ex)))
    why = "; ".join(f"{a['node']}: {a['reason']}" for a in ex.attempts)
    if last is not None and last.status and not timed_out:
        # The provider's own error tells the client most (e.g. its rate limit).
        ex.status, ex.error = last.status, f"all attempts failed ({why})"
        headers = [(k, v) for k, v in last.headers if k.lower() not in RESPONSE_DROP]
        headers += [(b"content-length", str(len(last.body)).encode()), *extra]
        await send({"type": "http.response.start", "status": last.status, "headers": headers})
        await send({"type": "http.response.body", "body": last.body})
        return
    if not tried:
        ex.status, ex.error = 503, "no upstream node is available (all are manually down)"
        await send_error(send, 503, ex.error, "upstream_error", "no_upstream", extra[:2], ex.api)
        return
    if timed_out:
        status, code = 504, "upstream_timeout"
    else:  # the last failure may name what went wrong (e.g. upstream_response_too_large)
        status, code = 502, (last.code if last is not None else None) or "upstream_unavailable"
    ex.status, ex.error = status, f"all upstream attempts failed: {why}"
    await send_json(send, status, error_json(ex.error, "upstream_error", code, api=ex.api, status=status), extra)


async def relay(
    send: Send, attempt: Attempt, ready: Ready, ex: Exchange, attempts: int, transcript: Transcript | None = None
) -> UpstreamError | None:
    """Forward a ready response to the client, the way its body kind needs (see attempt.Body).

    With a `transcript` (a stream that could be continued elsewhere), a break mid-stream is returned
    with the response left open, for the caller to continue or end (`end_stream`)."""
    response = ready.response
    node = attempt.node
    key = node.config.api_key
    ex.node, ex.status = node.name, response.status
    ex.first_byte, ex.first_token = ready.first_byte, ready.first_token
    kind = ready.kind
    # An error body redacted as it passes may change length: it goes chunked then.
    kept = kind is Body.PASS and (response.status < 400 or secret(key) is None)
    drop = PASS_DROP if kept else RESPONSE_DROP
    headers = redact_headers(((k, v) for k, v in response.raw_headers if k.lower() not in drop), key)
    headers += [
        (b"x-llm-sidecar-node", node.name.encode()),
        (b"x-llm-sidecar-attempts", str(attempts).encode()),
        (b"x-request-id", ex.rid.encode("latin-1")),
    ]
    if ex.trailing:
        headers.append((b"x-llm-sidecar-trail", trail(ex)))
    if kind is Body.WHOLE:
        body = redact(ready.body, key)
        count_body(ex, body)
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif kind is Body.EVENTS:
        if transcript is not None:
            await send({"type": "http.response.start", "status": response.status, "headers": headers})
            return await pump(send, attempt, ready.response, ready.body, ex, transcript)
        await relay_events(send, attempt, ready, ex, headers)
    else:
        await pass_through(send, attempt, ready, ex, headers)
    return None


async def end_stream(send: Send, ex: Exchange, node: str, error: UpstreamError) -> None:
    """End a stream that broke mid-way with an SSE error event naming the break."""
    ex.error = f"stream interrupted: {error.reason}"
    event = stream_error(
        f"upstream {node} failed mid-stream: {error.reason}", "upstream_error", "stream_interrupted", api=ex.api
    )
    await send({"type": "http.response.body", "body": event, "more_body": False})


async def pump(
    send: Send,
    attempt: Attempt,
    response: Response,
    held: bytes,
    ex: Exchange,
    transcript: Transcript,
    restamp: Restamp | None = None,
) -> UpstreamError | None:
    """An SSE answer event by event, each one read into `transcript`; `restamp` for a continuation.

    Ends the response when the stream completes. A break (the connection cut, a stall, an error
    event, a broken event, an end before the answer's end) is recorded as the node's failure and
    returned, with nothing of the bad event sent.
    """
    redactor = Redactor(attempt.node.config.api_key)
    buffer = bytearray(redactor.feed(held))
    splitter = Splitter()
    while True:
        out: list[bytes] = []
        broken: UpstreamError | None = None
        for start, end in splitter.events(buffer):
            broken = take(bytes(buffer[start:end]), out, ex, transcript, restamp)
            if broken is not None or transcript.done:
                break
        del buffer[: splitter.start]
        splitter.rebase(len(buffer))
        if transcript.done and broken is None:  # [DONE]: whole, whatever the node does after it
            await send({"type": "http.response.body", "body": b"".join(out), "more_body": False})
            return None
        if broken is None and len(buffer) > MAX_PARTIAL_EVENT:
            broken = UpstreamError(Failure.HTTP, "event larger than 1 MiB")
        if out:
            await send({"type": "http.response.body", "body": b"".join(out), "more_body": True})
        if broken is None:
            try:
                chunk = await response.chunk()
            except UpstreamError as exc:
                broken = exc
            else:
                if chunk:
                    buffer += redactor.feed(chunk)
                    continue
                buffer += redactor.end()
                broken = await at_end(send, buffer, ex, transcript, restamp)
                if broken is None:
                    return None
        if transcript.complete:  # a break after the answer's end (its finish_reason) loses nothing
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
            return None
        attempt.fail(broken)
        return broken


async def at_end(
    send: Send, buffer: bytearray, ex: Exchange, transcript: Transcript, restamp: Restamp | None
) -> UpstreamError | None:
    """The node ended the stream: end the response if the answer is whole, else say what broke."""
    tail: list[bytes] = []
    # What is left is a last event without its blank line (`data: [DONE]\n`), or nothing.
    broken = take(bytes(buffer) + b"\n\n", tail, ex, transcript, restamp) if buffer.strip() else None
    if broken is None and not transcript.complete:
        broken = UpstreamError(Failure.TCP, "stream ended before its end")
    if broken is None:
        await send({"type": "http.response.body", "body": b"".join(tail), "more_body": False})
    return broken


def take(
    event: bytes, out: list[bytes], ex: Exchange, transcript: Transcript, restamp: Restamp | None
) -> UpstreamError | None:
    """One complete event: appended to `out` when it belongs in the answer, else the break it is."""
    data = data_of(event)
    if data is None:
        out.append(event)  # comments: keep-alives go on to the client
        return None
    parsed = parse_event(data)
    if parsed is None:
        return UpstreamError(Failure.HTTP, "malformed event mid-stream")
    payload = transcript.finishes.trim(parsed)
    if payload is None:
        return None  # what the node sent for a choice after its finish
    if restamp is not None:
        if payload is DONE and not transcript.finished:
            return UpstreamError(Failure.HTTP, "continuation ended without finishing")
        try:
            stamped = restamp.event(payload)
        except ValueError:  # a lone surrogate or a number out of range: no JSON to send on
            return UpstreamError(Failure.HTTP, "malformed event mid-stream")
        if stamped is None:
            return None
        event = stamped
    elif payload is not parsed:
        try:
            event = event_of(payload)
        except ValueError:
            return UpstreamError(Failure.HTTP, "malformed event mid-stream")
    signal = transcript.feed(payload)
    if isinstance(payload, dict) and isinstance(payload.get("usage"), dict):
        count_usage(ex, payload["usage"])
    if signal is Signal.ERROR:
        if is_refusal(data):  # the answer, as the node means it: never continued elsewhere
            transcript.finished = True
            out.append(event)
            return None
        return UpstreamError(Failure.HTTP, f"error event mid-stream ({error_text(data)})")
    out.append(event)
    return None


async def pass_through(
    send: Send, attempt: Attempt, ready: Ready, ex: Exchange, headers: list[tuple[bytes, bytes]]
) -> None:
    """A body nobody inspects (audio, files, too large to hold), handed on as it arrives.

    The node's Content-Length is kept. Once bytes went out a cut cannot be retried, and ending the
    response cleanly would pass a truncated file off as whole: it is left unfinished instead, so
    the server closes the connection and the client sees the cut (the node takes the failure).
    """
    response = ready.response
    # A success's body is the client's own (a file may hold anything): only an error's is the node's words.
    redactor = Redactor(attempt.node.config.api_key if response.status >= 400 else None)
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    chunk = ready.body
    while chunk:
        out = redactor.feed(chunk)
        if out:
            await send({"type": "http.response.body", "body": out, "more_body": True})
        try:
            chunk = await response.chunk()
        except UpstreamError as exc:
            ex.error = f"body interrupted: {exc.reason}"
            attempt.fail(exc)
            return
    await send({"type": "http.response.body", "body": redactor.end(), "more_body": False})


LAST_EVENT = re.compile(MESSAGE_STOP)
TAIL = 512  # bytes at the end of a read where its last event is looked for


def final(out: bytes, api: Api) -> str | None:
    """Whether `out` (whole events) ends the stream: "" when it ends the answer, the break when it ends with
    an Anthropic error event (terminal in that API), None when more is to come."""
    if out.endswith(b"data: [DONE]\n\n"):
        return ""
    if api != ANTHROPIC:
        return None
    tail = out[-TAIL:]
    start = max(tail.rfind(b"\n\n", 0, len(tail) - 2), tail.rfind(b"\r\n\r\n", 0, len(tail) - 4))
    event = tail[start + 1 :] if start >= 0 else tail
    if LAST_EVENT.search(event) is not None:
        return ""
    if b"event: error" in event or b"event:error" in event:
        data = data_of(event.strip())
        return f"error event mid-stream ({error_text(data)})" if data is not None else "error event mid-stream"
    return None


async def relay_events(
    send: Send, attempt: Attempt, ready: Ready, ex: Exchange, headers: list[tuple[bytes, bytes]]
) -> None:
    """An SSE answer, event by event; a break mid-stream ends it with an SSE error event.

    On the completion paths an answer is whole once it said how it finished (dialect.ENDS: a
    `finish_reason` or `[DONE]`, Anthropic's `stop_reason` or `message_stop`): a node that ends its stream
    before that broke it, and at `[DONE]` the answer is over, whatever the node does next.
    """
    response = ready.response
    ex.stream = True
    redactor = Redactor(attempt.node.config.api_key)
    data = redactor.feed(ready.body)
    cut = event_boundary(data)
    end = ENDS.get(ex.path)
    whole = end is None
    finishes = Finishes() if ex.path in CHOICE_PATHS else None
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    out, pending = data[:cut], data[cut:]
    while True:
        if out and finishes is not None:
            out = finishes.events(out)
        if out:
            # Usage is read from whole events only: a usage event split across reads still counts.
            if b'"usage"' in out:
                count_tokens(ex, out)
            if end is not None and not whole and end.search(out) is not None:
                whole = True
            last = final(out, ex.api)
            if last is not None:
                # The answer is over ([DONE], Anthropic's message_stop or error event), whatever the node does
                # next: waiting for it to close would end a whole answer with a read timeout.
                if last:
                    ex.error = f"stream interrupted: {last}"
                    attempt.fail(UpstreamError(Failure.HTTP, last))
                await send({"type": "http.response.body", "body": out, "more_body": False})
                return
            await send({"type": "http.response.body", "body": out, "more_body": True})
        try:
            read = await response.chunk()
            chunk = redactor.feed(read) if read else b""
            if not read:
                pending += redactor.end()  # the start of a key, kept back at the very end: inside a line
            if not read and pending and not pending.endswith(b"\n"):
                # A close-delimited stream that ends inside a line: cut, whatever the transport says.
                raise UpstreamError(Failure.TCP, "stream ended inside an event")
            if not read and not whole and (end is None or end.search(pending) is None):
                raise UpstreamError(Failure.TCP, "stream ended before its end")
        except UpstreamError as exc:
            attempt.fail(exc)
            # Whatever was held of an incomplete event is dropped: the error event starts clean.
            await end_stream(send, ex, attempt.node.name, exc)
            return
        if not read:
            break
        if pending:
            chunk, pending = pending + chunk, b""
        cut = event_boundary(chunk)
        if cut == len(chunk) or len(chunk) > MAX_PARTIAL_EVENT:
            out = chunk
        else:
            out, pending = chunk[:cut], chunk[cut:]
    if b'"usage"' in pending:
        count_tokens(ex, pending)
    # Complete lines without the final blank line (`data: [DONE]\n` and EOF) are passed as they are.
    await send({"type": "http.response.body", "body": pending, "more_body": False})
