"""The sidecar's HTTP server on a real socket: a response head leaves with its body, never alone for long."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from sidecar.listener.bind import bind_tcp
from sidecar.listener.connection import Limits
from sidecar.server import Server


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]})
    if scope["path"] == "/slow":
        await asyncio.sleep(0.5)  # the head must not wait for this
    await send({"type": "http.response.body", "body": b"hello"})


def first_reads(port: int, path: str) -> tuple[bytes, bytes]:
    """The first recv() after sending a request, and the rest of the response."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode())
        first = conn.recv(65536)
        rest = b""
        while not (first + rest).endswith(b"hello"):
            rest += conn.recv(65536)
    return first, rest


async def test_head_and_body_leave_together_and_a_lone_head_is_not_held() -> None:
    sock = bind_tcp("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = Server(app, Limits())
    serving = asyncio.ensure_future(server.serve(sock))
    try:
        first, _ = await asyncio.to_thread(first_reads, port, "/fast")
        # One write: the client's first read holds the whole response, head and body.
        assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"\r\n\r\nhello")
        first, rest = await asyncio.to_thread(first_reads, port, "/slow")
        # The head went out on its own (the next loop turn), not held until the body.
        assert first.startswith(b"HTTP/1.1 200 OK\r\n") and first.endswith(b"\r\n\r\n")
        assert rest == b"hello"
    finally:
        server.stop()
        await asyncio.wait_for(serving, 10)
