"""Relaying a translated answer: a whole answer read, translated and sent in one write; a stream translated
event by event as the node's events complete (nothing is held beyond the event being read), so the first-token
rules, keep-alives and the client's leaving work as they do for a native stream.

A whole answer that is no answer of the node's format is the node's failure (nothing was sent yet: it fails
over). A stream that breaks (cut, stalled, an error or malformed event, arguments that cannot be placed) ends
with the client's format's error event, and the node takes the failure.
"""

from __future__ import annotations

from sidecar.formats.errors import Send
from sidecar.formats.sse import Signal, Splitter, data_of, error_text, parse, signal_of
from sidecar.formats.translate import pair
from sidecar.formats.translate.answers import answer_id
from sidecar.formats.translate.errors import error_body
from sidecar.formats.translate.ir import Untranslatable, Usage
from sidecar.formats.translate.stream_responses import ResponsesWriter
from sidecar.nodes.attempt import Attempt
from sidecar.nodes.health import Failure
from sidecar.nodes.transport import UpstreamError

from .answer import Body, Ready
from .exchange import Exchange, trail
from .redact import Redactor, redact, redact_headers
from .relay import MAX_PARTIAL_EVENT, RESPONSE_DROP
from .translation import Adapter

# The node's body headers describe its bytes, not the translation's.
DROP = RESPONSE_DROP | {b"content-type", b"content-encoding"}
JSON_TYPE = (b"content-type", b"application/json")
SSE_TYPE = (b"content-type", b"text/event-stream; charset=utf-8")


def count(ex: Exchange, usage: Usage) -> None:
    if usage.input is not None:
        ex.tokens_in = usage.input
    if usage.output is not None:
        ex.tokens_out = usage.output
    if usage.cache_read is not None:
        ex.tokens_cached = usage.cache_read


async def relay_translated(
    send: Send, attempt: Attempt, ready: Ready, ex: Exchange, attempts: int, adapter: Adapter
) -> None:
    response = ready.response
    node = attempt.node
    key = node.config.api_key
    headers = redact_headers(((k, v) for k, v in response.raw_headers if k.lower() not in DROP), key)
    headers += [
        (b"x-llm-sidecar-node", node.name.encode()),
        (b"x-llm-sidecar-attempts", str(attempts).encode()),
        (b"x-request-id", ex.rid.encode("latin-1")),
        (b"x-llm-sidecar-translated", adapter.header()),
    ]
    if ex.trailing:
        headers.append((b"x-llm-sidecar-trail", trail(ex)))
    if ready.kind is Body.EVENTS:
        ex.node, ex.status = node.name, response.status
        ex.first_byte, ex.first_token = ready.first_byte, ready.first_token
        coder = pair.Transcoder(adapter.target, adapter.client, adapter.request, node.name)
        try:
            await stream(send, attempt, ready, ex, [*headers, SSE_TYPE], coder)
        finally:
            if isinstance(coder.writer, ResponsesWriter):
                adapter.made(coder.writer.id)
        return
    body = ready.body
    if ready.kind is Body.PASS:  # a translation needs the whole answer: read what is left, bounded
        body += await response.read(adapter.limit - len(body) + 1)
        if len(body) > adapter.limit:
            raise UpstreamError(Failure.HTTP, "response too large", code="upstream_response_too_large")
    body = redact(body, key)
    status = response.status
    if not 200 <= status < 300:
        out, kind = error_body(adapter.client, status, body), JSON_TYPE
    else:
        try:
            answer = pair.read_answer(adapter.target, body, node.name, adapter.request)
        except (ValueError, Untranslatable) as exc:
            raise UpstreamError(Failure.HTTP, f"answer cannot be translated ({str(exc)[:80]})") from None
        count(ex, answer.usage)
        adapter.made(answer_id("resp_", answer.id))
        if ex.stream:  # a node that answered a stream request with one body: the client still gets its stream
            writer = pair.writer(adapter.client, adapter.request, node.name)
            out, kind = b"".join(writer.feed(e) for e in pair.events_of(answer)), SSE_TYPE
        else:
            out, kind = pair.write_answer(adapter.client, answer, adapter.request), JSON_TYPE
    ex.node, ex.status = node.name, status
    ex.first_byte, ex.first_token = ready.first_byte, ready.first_token
    headers += [kind, (b"content-length", str(len(out)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": out})


async def stream(
    send: Send, attempt: Attempt, ready: Ready, ex: Exchange, headers: list[tuple[bytes, bytes]], coder: pair.Transcoder
) -> None:
    ex.stream = True
    node = attempt.node
    key = node.config.api_key
    redactor = Redactor(key)
    buffer = bytearray(redactor.feed(ready.body))

    async def emit(data: bytes, more: bool) -> None:
        # Redacted again after translation: a translated stream may put together what the node sent in
        # pieces (a Responses client's output_text.done holds the whole text), a key split across events too.
        await send({"type": "http.response.body", "body": redact(data, key), "more_body": more})

    splitter = Splitter()
    await send({"type": "http.response.start", "status": ready.response.status, "headers": headers})
    ended = False
    while True:
        out: list[bytes] = []
        broken: UpstreamError | None = None
        for start, end in splitter.events(buffer):
            broken = translate(bytes(buffer[start:end]), coder, out)
            if broken is not None or coder.done:
                break
        del buffer[: splitter.start]
        splitter.rebase(len(buffer))
        count(ex, coder.usage)
        if broken is None and coder.done:
            await emit(b"".join(out), False)
            return
        if broken is None and len(buffer) > MAX_PARTIAL_EVENT:
            broken = UpstreamError(Failure.HTTP, "event larger than 1 MiB")
        if broken is None and ended:
            last = coder.end()
            if last is not None:
                await emit(b"".join(out) + last, False)
                return
            broken = UpstreamError(Failure.TCP, "stream ended before its end")
        if broken is None:
            if out:
                await emit(b"".join(out), True)
                out = []
            try:
                chunk = await ready.response.chunk()
            except UpstreamError as exc:
                broken = exc
            else:
                if chunk:
                    buffer += redactor.feed(chunk)
                else:
                    buffer += redactor.end()
                    if buffer.strip():
                        buffer += b"\n\n"  # a last event without its blank line
                    ended = True
                continue
        if coder.writer.finished:  # a break after the answer said how it ended loses nothing
            await emit(b"".join(out) + coder.writer.close(), False)
            return
        attempt.fail(broken)
        ex.error = f"stream interrupted: {broken.reason}"
        out.append(coder.error(f"upstream {node.name} failed mid-stream: {broken.reason}", "stream_interrupted"))
        await emit(b"".join(out), False)
        return


def translate(event: bytes, coder: pair.Transcoder, out: list[bytes]) -> UpstreamError | None:
    """One of the node's events, translated into `out`; the break it is, if it is one."""
    data = data_of(event)
    if data is None:
        out.append(event)  # comments: keep-alives mean the same in every format
        return None
    try:
        payload = parse(data)
    except ValueError:
        return UpstreamError(Failure.HTTP, "malformed event mid-stream")
    if signal_of(payload) is Signal.ERROR:
        return UpstreamError(Failure.HTTP, f"error event mid-stream ({error_text(data)})")
    try:
        out.append(coder.feed(payload))
    except ValueError as exc:
        return UpstreamError(Failure.HTTP, f"stream cannot be translated ({exc})")
    return None
