"""The sidecar's own JSON errors, in the request's format (dialect.py), so SDKs surface them cleanly."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from .dialect import OPENAI, Api, error_json

Send = Callable[[dict[str, Any]], Awaitable[None]]

__all__ = ["Send", "error_json", "send_error", "send_json"]


async def send_json(send: Send, status: int, payload: bytes, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def send_error(
    send: Send,
    status: int,
    message: str,
    type_: str,
    code: str | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
    api: Api = OPENAI,
) -> None:
    # The openai and anthropic SDKs retry 5xx/429 twice by default; we already retried.
    extra = [(b"x-should-retry", b"false"), *headers]
    await send_json(send, status, error_json(message, type_, code, api=api, status=status), extra)
