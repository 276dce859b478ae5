"""Sending an answer to the client: a ready upstream response, or the error after the last attempt."""

from __future__ import annotations

import asyncio
from typing import Any

from .attempt import Failed, Ready, describe
from .errors import Send, error_json, send_error, send_json
from .exchange import Exchange, count_tokens
from .health import Source
from .upstream import NodeState, Upstream

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
    }
)


async def give_up(
    send: Send, ex: Exchange, last: Failed | None, tried: set[int], timed_out: bool, upstream: Upstream
) -> None:
    extra = [
        (b"x-request-id", ex.rid.encode("latin-1")),
        (b"x-llm-sidecar-attempts", str(len(tried)).encode()),
        (b"x-should-retry", b"false"),
    ]
    why = "; ".join(f"{a['node']}: {a['reason']}" for a in ex.attempts)
    if last is not None and last.status and not timed_out:
        # The provider's own error tells the client most (e.g. its rate limit).
        ex.status, ex.error = last.status, f"all attempts failed ({why})"
        headers = [(k, v) for k, v in last.headers or [] if k.lower() not in RESPONSE_DROP]
        headers += [(b"content-length", str(len(last.body)).encode()), *extra]
        await send({"type": "http.response.start", "status": last.status, "headers": headers})
        await send({"type": "http.response.body", "body": last.body})
        return
    if not tried:
        ex.status, ex.error = 503, "no upstream node is available (all are manually down)"
        await send_error(send, 503, ex.error, "upstream_error", "no_upstream", extra[:2])
        return
    status, code = (504, "upstream_timeout") if timed_out else (502, "upstream_unavailable")
    ex.status, ex.error = status, f"all upstream attempts failed: {why}"
    await send_json(send, status, error_json(ex.error, "upstream_error", code), extra)


async def relay(
    receive: Any, send: Send, upstream: Upstream, node: NodeState, ready: Ready, ex: Exchange, attempts: int
) -> bool:
    """Forward a ready response; returns False when the upstream broke mid-stream."""
    response = ready.response
    ex.node, ex.status = node.name, response.status
    ex.first_byte, ex.first_token = ready.first_byte, ready.first_token
    headers = [(k, v) for k, v in response.raw_headers if k.lower() not in RESPONSE_DROP]
    headers += [
        (b"x-llm-sidecar-node", node.name.encode()),
        (b"x-llm-sidecar-attempts", str(attempts).encode()),
    ]
    if not ready.stream:
        count_tokens(ex, ready.body)
        headers.append((b"content-length", str(len(ready.body)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": ready.body})
        upstream.success(node, Source.PASSIVE)
        return True
    ex.stream = True
    if b'"usage"' in ready.body:
        count_tokens(ex, ready.body)
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": ready.body, "more_body": True})
    content = response.content
    # The server drops writes to a closed client silently; this tells us it left,
    # so the upstream stops generating (and billing) tokens nobody reads.
    gone = asyncio.ensure_future(receive())
    try:
        while True:
            chunk = await content.readany()
            if not chunk:
                break
            if b'"usage"' in chunk:
                count_tokens(ex, chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if gone.done():
                response.close()
                ex.error = "client disconnected mid-stream"
                return True
    except Exception as exc:  # any upstream fault must end the stream cleanly
        kind, reason = describe(exc)
        response.close()
        ex.error = f"stream interrupted: {reason}"
        upstream.failure(node, Source.PASSIVE, kind, ex.error)
        event = error_json(f"upstream {node.name} failed mid-stream: {reason}", "upstream_error", "stream_interrupted")
        await send({"type": "http.response.body", "body": b"\n\ndata: " + event + b"\n\n", "more_body": False})
        return False
    finally:
        gone.cancel()
    response.release()
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    upstream.success(node, Source.PASSIVE)
    return True
