"""The floor of our stack: the sidecar's own server + a raw ASGI app + one aiohttp session, no features.

`python bench/floor.py PORT UPSTREAM_PORT`. The benchmark runs it beside the sidecar, so the table shows what
the sidecar's features cost on top of the same server and client libraries (no retries, health, logging,
headers hygiene, or streaming hold here: do not deploy this).
"""

from __future__ import annotations

import sys
from typing import Any

import aiohttp
from yarl import URL

from sidecar.proxy.inbound import read_body

UPSTREAM = URL(f"http://127.0.0.1:{sys.argv[2]}", encoded=True)
session: aiohttp.ClientSession | None = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global session
    if scope["type"] != "http":
        return
    if session is None:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)
    body = await read_body(receive, 1 << 20) or b""
    url = UPSTREAM.with_path(scope["path"], encoded=True)
    async with session.request(scope["method"], url, data=body, headers={"content-type": "application/json"}) as r:
        headers = [(b"content-type", r.headers.get("content-type", "application/json").encode())]
        await send({"type": "http.response.start", "status": r.status, "headers": headers})
        async for chunk in r.content.iter_any():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


if __name__ == "__main__":
    import uvloop

    from sidecar.listener.bind import bind_tcp
    from sidecar.listener.connection import Limits
    from sidecar.server import Server, tune_gc

    # The sidecar's own server (its HTTP protocol, accept and GC tuning), so every path is served alike.
    tune_gc()
    uvloop.run(Server(app, Limits()).serve(bind_tcp("127.0.0.1", int(sys.argv[1]))))
