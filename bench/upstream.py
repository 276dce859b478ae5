"""A minimal, fast OpenAI-shaped upstream for the benchmark (raw ASGI on the sidecar's own server).

`python bench/upstream.py PORT [CHUNK_DELAY]`: POST /v1/chat/completions answers a fixed chat completion,
or 20 SSE chunks when the body asks for `"stream": true` (CHUNK_DELAY seconds apart); GET /v1/models answers
a model list (the sidecar's active probe).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from sidecar.proxy.inbound import read_body

COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    }
).encode()
MODELS = b'{"object":"list","data":[{"id":"gpt-4o-mini","object":"model"}]}'
CHUNK = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o-mini",'
    b'"choices":[{"index":0,"delta":{"content":"tok"},"finish_reason":null}]}\n\n'
)
JSON_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(COMPLETION)).encode())]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
CHUNK_DELAY = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = await read_body(receive, 1 << 20) or b""
    if scope["method"] == "GET":
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(MODELS)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": MODELS})
        return
    if b'"stream": true' in body or b'"stream":true' in body:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        for _ in range(20):
            if CHUNK_DELAY:
                await asyncio.sleep(CHUNK_DELAY)
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": JSON_HEADERS})
    await send({"type": "http.response.body", "body": COMPLETION})


if __name__ == "__main__":
    import uvloop

    from sidecar.listener.bind import bind_tcp
    from sidecar.listener.connection import Limits
    from sidecar.server import Server, tune_gc

    # The sidecar's own server (its HTTP protocol, accept and GC tuning), so every path is served alike.
    tune_gc()
    uvloop.run(Server(app, Limits()).serve(bind_tcp("127.0.0.1", int(sys.argv[1]))))
