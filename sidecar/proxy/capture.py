"""A request's answer as the client got it, kept for the journal when it keeps bodies ([journal] bodies).

It sits between the proxy and the client's `send`: the bytes pass unchanged and at once; up to `limit` of
them are kept (the rest only counted). Bodies are off by default, and then nothing wraps `send`.
"""

from __future__ import annotations

from typing import Any

from sidecar.formats.errors import Send
from sidecar.observe.record import Bodies

# What says how to read or replay a body (never a credential): the request's, then the answer's.
REQUEST_HEADERS = (b"content-type", b"anthropic-version", b"anthropic-beta")
RESPONSE_HEADERS = {b"content-type": "response-content-type", b"content-encoding": "content-encoding"}


class Capture:
    __slots__ = ("bodies", "kept", "limit", "send")

    def __init__(self, send: Send, limit: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.send = send
        self.limit = limit
        self.kept = 0
        wanted = {k.decode(): v.decode("latin-1") for k, v in headers if k in REQUEST_HEADERS}
        self.bodies = Bodies(request=body, headers=wanted)

    async def __call__(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            chunk = message.get("body", b"")
            if chunk:
                self.bodies.response_size += len(chunk)
                if self.kept < self.limit:
                    piece = chunk[: self.limit - self.kept]
                    self.bodies.response.append(piece)
                    self.kept += len(piece)
        elif kind == "http.response.start":
            for name, value in message.get("headers", ()):
                field = RESPONSE_HEADERS.get(name.lower())
                if field is not None:
                    self.bodies.headers[field] = value.decode("latin-1")
        await self.send(message)
