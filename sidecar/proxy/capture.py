"""A request's answer as the client got it, kept for the journal when it keeps bodies ([journal] bodies).

It sits between the proxy and the client's `send`: the bytes pass unchanged and at once; up to the journal's
`max_body_bytes` of them are kept (the rest only counted), while the desk's budget of bodies held in memory has
room (observe/record.py). Bodies are off by default, and then nothing wraps `send`.
"""

from __future__ import annotations

from typing import Any

from sidecar.formats.errors import Send
from sidecar.observe.record import Bodies, Desk

# What says how to read or replay a body (never a credential): the request's, then the answer's.
REQUEST_HEADERS = (b"content-type", b"anthropic-version", b"anthropic-beta")
RESPONSE_HEADERS = {b"content-type": "response-content-type", b"content-encoding": "content-encoding"}


class Capture:
    __slots__ = ("bodies", "desk", "kept", "limit", "send", "whole")

    def __init__(self, send: Send, desk: Desk, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.send = send
        self.desk = desk
        self.limit = desk.limit
        wanted = {k.decode(): v.decode("latin-1") for k, v in headers if k in REQUEST_HEADERS}
        kept = body if len(body) <= self.limit else body[: self.limit]
        self.bodies = Bodies(request=kept if desk.room(len(kept)) else b"", request_size=len(body), headers=wanted)
        self.kept = 0  # of the answer
        self.whole = True  # what is kept of the answer is all it sent so far (after a refusal, nothing more is)

    async def __call__(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            chunk = message.get("body", b"")
            if chunk:
                self.bodies.response_size += len(chunk)
                if self.whole and self.kept < self.limit:
                    piece = chunk[: self.limit - self.kept]
                    if self.desk.room(len(piece)):
                        self.bodies.response.append(piece)
                        self.kept += len(piece)
                    else:
                        self.whole = False
        elif kind == "http.response.start":
            for name, value in message.get("headers", ()):
                field = RESPONSE_HEADERS.get(name.lower())
                if field is not None:
                    self.bodies.headers[field] = value.decode("latin-1")
        await self.send(message)
