"""A node's error answer, in the client's format: OpenAI's `{"error": {...}}` for chat and Responses clients,
Anthropic's `{"type": "error", "error": {...}}` for Anthropic's, so each SDK raises its own typed exception."""

from __future__ import annotations

from typing import Any

from ..dialect import ANTHROPIC, OPENAI, error_json
from ..sse import loads
from .ir import MESSAGES, Form

# OpenAI's error types for Anthropic's, where they differ.
OPENAI_TYPES = {"api_error": "server_error", "overloaded_error": "server_error", "timeout_error": "server_error",
                "not_found_error": "invalid_request_error", "request_too_large": "invalid_request_error"}  # fmt: skip
MAX_MESSAGE = 2000


def _fields(body: bytes) -> tuple[str, str | None, str | None]:
    """(message, type, code) of an error body of either format, or of what is no JSON at all."""
    try:
        parsed: Any = loads(body)
    except (ValueError, RecursionError):
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        message = error.get("message")
        kind, code = error.get("type"), error.get("code")
        return (
            str(message)[:MAX_MESSAGE] if message is not None else "the node gave no message",
            kind if isinstance(kind, str) else None,
            code if isinstance(code, str) else None,
        )
    if isinstance(error, str):
        return error[:MAX_MESSAGE], None, None
    text = body[:MAX_MESSAGE].decode("utf-8", "replace").strip()
    return "".join(c if c.isprintable() else " " for c in text) or "the node gave no message", None, None


def error_body(client: Form, status: int, body: bytes) -> bytes:
    message, kind, code = _fields(body)
    if client == MESSAGES:
        return error_json(message, kind or "api_error", code, api=ANTHROPIC, status=status)
    kind = OPENAI_TYPES.get(kind or "", kind) or ("server_error" if status >= 500 else "invalid_request_error")
    return error_json(message, kind, code, api=OPENAI, status=status)
