"""The two request formats the sidecar speaks, and the little that differs between them.

OpenAI's API (`/v1/chat/completions` and the rest) and Anthropic's Messages API
(`/v1/messages`). A request goes to nodes of its own format, and to nodes that
translate it (translate/). What differs is the node's key header, the sidecar's
own error shape (so each SDK raises its own typed exceptions), how a stream
ends, and how usage is counted.
"""

from __future__ import annotations

import json
import re
from typing import Literal

from .sse import loads

Api = Literal["openai", "anthropic"]
OPENAI: Api = "openai"
ANTHROPIC: Api = "anthropic"
APIS_SPOKEN: tuple[Api, ...] = (OPENAI, ANTHROPIC)
NAMES: dict[Api, str] = {OPENAI: "the OpenAI API", ANTHROPIC: "Anthropic's Messages API (/v1/messages)"}

MESSAGES_PATH = "/v1/messages"
LEGACY_PATH = "/v1/complete"  # Anthropic's text completions
# The version a node gets when the client sent none: what the Anthropic API requires on every request.
ANTHROPIC_VERSION = "2023-06-01"
VERSION_HEADER = b"anthropic-version"

# Anthropic's error type per status (its SDKs map the status to an exception class; the type is for people).
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def api_of(path: str, anthropic_client: bool = False) -> Api:
    """The format a request is in: /v1/messages and below (and the legacy /v1/complete) are Anthropic's;
    so is any request from an Anthropic client (`anthropic_client`: it sent `anthropic-version`, which
    Anthropic's SDKs and Claude Code always send and OpenAI's never do), so its file, batch or skill
    calls never reach an OpenAI node; the rest is OpenAI's."""
    if anthropic_client or path == LEGACY_PATH:
        return ANTHROPIC
    if path.startswith(MESSAGES_PATH) and (len(path) == len(MESSAGES_PATH) or path[len(MESSAGES_PATH)] == "/"):
        return ANTHROPIC
    return OPENAI


def error_json(message: str, type_: str, code: str | None = None, *, api: Api = OPENAI, status: int = 500) -> bytes:
    """The sidecar's own error body: OpenAI's `{"error": {message, type, code}}`, or Anthropic's
    `{"type": "error", "error": {type, message}}` with the type its status has there."""
    if api == ANTHROPIC:
        kind = ANTHROPIC_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
        return json.dumps({"type": "error", "error": {"type": kind, "message": message}}).encode()
    return json.dumps({"error": {"message": message, "type": type_, "code": code}}).encode()


def stream_error(message: str, type_: str, code: str, *, api: Api = OPENAI, status: int = 502) -> bytes:
    """The SSE event that ends a stream the sidecar cannot complete, in the stream's own format."""
    body = error_json(message, type_, code, api=api, status=status)
    if api == ANTHROPIC:
        return b"event: error\ndata: " + body + b"\n\n"
    return b"data: " + body + b"\n\n"


# A completion stream is whole once it said how it finished; one that ends before that was cut.
# Anthropic's last event is message_stop (proxy/relay.py ends a stream there, whatever the node does next).
MESSAGE_STOP = rb'"type"\s*:\s*"message_stop"'
_OPENAI_END = re.compile(rb'\[DONE\]|"finish_reason"\s*:\s*"')
CHOICE_PATHS = ("/v1/chat/completions", "/v1/completions")  # streams of `choices`, each with its finish_reason
ENDS: dict[str, re.Pattern[bytes]] = {
    **dict.fromkeys(CHOICE_PATHS, _OPENAI_END),
    MESSAGES_PATH: re.compile(MESSAGE_STOP + rb'|"stop_reason"\s*:\s*"'),
}

# A token count is at most 15 digits: a longer run (past 4,300 digits int() raises) is no count and is skipped,
# so counting never breaks an answer.
MAX_COUNT = 10**15
COUNT = rb"(\d{1,15})(?!\d)"


def count_of(value: object) -> int | None:
    """A parsed JSON value as a token count: a whole number under MAX_COUNT, else None."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_COUNT:
        return value
    return None


_USAGE = b'"usage"'
_NUMBER = rb'"\s*:\s*' + COUNT
_INPUT = re.compile(rb'"input_tokens' + _NUMBER)
_OUTPUT = re.compile(rb'"output_tokens' + _NUMBER)
_CACHE_READ = re.compile(rb'"cache_read_input_tokens' + _NUMBER)
_CACHE_WRITE = re.compile(rb'"cache_creation_input_tokens' + _NUMBER)


_FIELDS = (
    ("input", "input_tokens"), ("output", "output_tokens"),
    ("cache_read", "cache_read_input_tokens"), ("cache_write", "cache_creation_input_tokens"),
)  # fmt: skip


class AnthropicUsage:
    """Token counts from Anthropic's `usage` objects, wherever they appear in a body or a stream.

    A stream reports them twice: `message_start` (input and cache counts, output 1) and `message_delta`
    (the final output count, and in newer API versions the input counts again). Anthropic's
    `input_tokens` leaves out the cached part, so the prompt is input + cache read + cache write,
    which is what OpenAI's prompt_tokens counts.
    """

    __slots__ = ("cache_read", "cache_write", "input", "output")

    def __init__(self) -> None:
        self.input: int | None = None
        self.output: int | None = None
        self.cache_read: int | None = None
        self.cache_write: int | None = None

    def feed(self, data: bytes) -> bool:
        """Read every usage object in `data` (whole events or a whole body); True when one was found."""
        start = data.find(_USAGE)
        found = start >= 0
        while start >= 0:
            end = data.find(_USAGE, start + len(_USAGE))
            part = data[start : end if end >= 0 else len(data)]
            for pattern, name in (
                (_INPUT, "input"), (_OUTPUT, "output"), (_CACHE_READ, "cache_read"), (_CACHE_WRITE, "cache_write"),
            ):  # fmt: skip
                match = pattern.search(part)
                if match:
                    setattr(self, name, int(match.group(1)))
            start = end
        return found

    def read_body(self, body: bytes) -> bool:
        """The counts of a whole (non-stream) answer, from its top-level `usage` only: a tool_use block's
        `input` is the model's own JSON, and may hold a "usage" of its making."""
        try:
            parsed = loads(body)
        except (ValueError, RecursionError):
            return False
        usage = parsed.get("usage") if isinstance(parsed, dict) else None
        if not isinstance(usage, dict):
            return False
        for name, key in _FIELDS:
            value = count_of(usage.get(key))
            if value is not None:
                setattr(self, name, value)
        return True

    @property
    def prompt(self) -> int | None:
        if self.input is None:
            return None
        return self.input + (self.cache_read or 0) + (self.cache_write or 0)
