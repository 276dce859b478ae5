"""Server-sent events as the sidecar reads them: split into events, and told apart by what they carry.

A stream is held back until its first real token, so a node that answers 200 and
then stays silent, sends only keep-alive comments, or only a role-only delta, can
still be failed over; and once tokens flow, an error event or a broken one is a
break in the stream, not part of the answer. Reading is linear: each byte is
searched for an event end once, however the node splits its chunks.
"""

from __future__ import annotations

import json
import re
from enum import Enum
from typing import Any

# An event ends at a blank line; a lone CR ends a line too (the SSE spec).
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r|\n\r\n|\r\n\n")
_LINE = re.compile(rb"\r\n|\n|\r")
# Before the first token: events that only open a stream (OpenAI Responses, Anthropic). Anthropic's
# content_block_start opens a block whose text comes in the deltas; ping is its keep-alive.
_OPENING_TYPES = frozenset(
    {"response.created", "response.in_progress", "response.queued", "message_start", "ping", "content_block_start"}
)
# A delta field that carries nothing yet.
_EMPTY: tuple[Any, ...] = (None, "", [], {})


class Signal(Enum):
    WAIT = "wait"  # no token yet: a role-only delta, a stream's opening event
    TOKEN = "token"  # a real token (or the stream's end)
    ERROR = "error"  # an error event
    MALFORMED = "malformed"  # data that is not the JSON it should be


class Splitter:
    """Complete events out of a growing buffer; each byte is searched once."""

    __slots__ = ("searched", "start")

    def __init__(self) -> None:
        self.start = 0  # where the next event begins
        self.searched = 0  # how far an event end was looked for

    def events(self, buffer: bytes | bytearray) -> list[tuple[int, int]]:
        """(start, end) of each event completed since the last call; `end` includes the blank line."""
        found = []
        # An event end is at most 4 bytes: look back 3 so an end split across chunks is still found.
        position = max(self.start, self.searched - 3)
        while (match := _EVENT_END.search(buffer, position)) is not None:
            found.append((self.start, match.end()))
            self.start = position = match.end()
        self.searched = len(buffer)
        return found

    def rebase(self, remaining: int) -> None:
        """The buffer lost what came before `start`: `remaining` bytes are left, none of them an end."""
        self.start = 0
        self.searched = remaining


def data_of(event: bytes) -> bytes | None:
    """The event's data (its `data:` lines joined), or None for an event of comments only."""
    data = None
    for line in _LINE.split(event):
        if line.startswith(b"data:"):
            value = line[6:] if line.startswith(b"data: ") else line[5:]
            data = value if data is None else data + b"\n" + value
    return data


DONE = object()  # what `parse` gives for `data: [DONE]`


def _integer(text: str) -> int | float:
    return int(text) if len(text) < 4000 else float(text)  # an infinity where int() would raise (4,300 digits)


def loads(data: bytes) -> Any:
    """A node's JSON, whatever its numbers: an integer too long for int() (4,300 digits) reads as an infinity
    instead of raising, so an absurd count never makes a whole event or answer unreadable."""
    try:
        return json.loads(data)
    except ValueError:  # the rare retry costs what the common case never pays: a Python call per number
        return json.loads(data, parse_int=_integer)


def parse(data: bytes) -> Any:
    """An event's data as JSON, DONE for the end marker; ValueError for what is neither."""
    if data.strip() == b"[DONE]":
        return DONE
    try:
        return loads(data)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def classify(data: bytes) -> Signal:
    try:
        return signal_of(parse(data))
    except ValueError:
        return Signal.MALFORMED


def signal_of(payload: Any) -> Signal:
    if payload is DONE:
        return Signal.TOKEN
    if not isinstance(payload, dict) or not payload:
        return Signal.WAIT  # `data: {}`, `data: "ping"`: a heartbeat, no token
    kind = payload.get("type")
    if kind == "error" or ("error" in payload and "choices" not in payload):
        return Signal.ERROR
    if kind in _OPENING_TYPES:
        return Signal.WAIT
    choices = payload.get("choices")
    if not isinstance(choices, list):
        return Signal.TOKEN
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        if choice.get("finish_reason") or choice.get("text"):
            return Signal.TOKEN
        delta = choice.get("delta")
        if isinstance(delta, dict) and any(k != "role" and v not in _EMPTY for k, v in delta.items()):
            return Signal.TOKEN
    return Signal.TOKEN if not choices and payload.get("usage") else Signal.WAIT


# What looks like a credential in a node's own words ("Incorrect API key provided: sk-proj-ab***"): such text
# goes on to the log, the trail header and the monitor, which never show keys.
_KEYLIKE = re.compile(r"(?:sk|key|rk|pk)-[A-Za-z0-9_*.-]{6,}|[A-Za-z0-9_-]{32,}")


def error_text(data: bytes, limit: int = 120) -> str:
    """What an error event says, short and printable (it reaches logs and the monitor), key-like words masked."""
    try:
        payload = loads(data)
        error = payload.get("error", payload) if isinstance(payload, dict) else payload
        message = error.get("message", "") if isinstance(error, dict) else str(error)
    except (ValueError, RecursionError, AttributeError):
        message = ""
    text = _KEYLIKE.sub("[redacted]", str(message)[: limit * 4])[:limit]
    return "".join(c if c.isprintable() else "?" for c in text)
