"""Mid-stream continuation: when a chat stream breaks after text reached the client, another node
(or the same one) continues from what was delivered, in the same SSE stream.

Providers take "continue this partial answer" in four dialects (README lists them):
"prefill", a trailing `{"role": "assistant", "content": <delivered>}` message;
"prefix" and "partial", the same message marked `"prefix": true` / `"partial": true`;
"continue_final_message", the same with vLLM's request fields that say so. The continuing stream's events
are re-stamped with the original stream's `id`, and its role-only opening is
dropped, so the client's assembled text is one answer.

Pure: the relay feeds events in; nothing here does I/O.
"""

from __future__ import annotations

import json
from typing import Any

from .sse import DONE, Signal, parse, signal_of

MAX_CONTINUATIONS = 3  # breaks one stream may survive


class Transcript:
    """What a chat-completions stream has delivered so far, event by event."""

    __slots__ = ("done", "finished", "id", "parts", "unsafe")

    def __init__(self) -> None:
        self.id: str | None = None  # the original stream's: a continuation's events are re-stamped with it
        self.parts: list[str] = []
        self.finished = False  # a finish_reason arrived: the answer is whole
        self.done = False  # [DONE] arrived
        self.unsafe: str | None = None  # why the stream cannot be continued (tool calls, several choices)

    @property
    def text(self) -> str:
        """The delivered text; a surrogate pair split across two events is joined (ValueError: a lone one)."""
        text = "".join(self.parts)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            try:
                text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le")
            except UnicodeDecodeError:
                raise ValueError("a lone surrogate in the delivered text") from None
        return text

    @property
    def complete(self) -> bool:
        return self.finished or self.done

    def feed(self, payload: Any) -> Signal:
        """Record one event's parsed data; the signal says whether it belongs in the answer."""
        signal = signal_of(payload)
        if payload is DONE:
            self.done = True
            return signal
        if signal in (Signal.ERROR, Signal.MALFORMED) or not isinstance(payload, dict):
            return signal
        if self.id is None and isinstance(payload.get("id"), str):
            self.id = payload["id"]
        for choice in payload.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            if choice.get("index", 0) != 0:
                self.unsafe = "several choices"
            if choice.get("finish_reason"):
                self.finished = True
            delta = choice.get("delta")
            if not isinstance(delta, dict):
                continue
            if delta.get("tool_calls") or delta.get("function_call"):
                self.unsafe = "tool calls"
            content = delta.get("content")
            if isinstance(content, str):
                self.parts.append(content)
        return signal

    def continuable(self) -> str | None:
        """None when the stream can be continued, else why not."""
        if self.unsafe:
            return self.unsafe
        if not self.parts:
            return "nothing delivered"
        try:
            self.text  # noqa: B018 - raises for what cannot be sent on
        except ValueError as exc:
            return str(exc)
        return None


def request_fits(body: dict[str, Any] | None) -> bool:
    """A chat request whose stream could be continued: messages, one choice, no forced tool call."""
    if body is None or not isinstance(body.get("messages"), list) or not body.get("stream"):
        return False
    n = body.get("n", 1)
    return n in (1, None)


def continuation_body(body: dict[str, Any], delivered: str, dialect: str) -> dict[str, Any]:
    """The original request, asking the node to go on from `delivered`."""
    message: dict[str, Any] = {"role": "assistant", "content": delivered}
    if dialect in ("prefix", "partial"):
        message[dialect] = True
    asked = {**body, "messages": [*body["messages"], message]}
    if dialect == "continue_final_message":
        asked.update(continue_final_message=True, add_generation_prompt=False)
    return asked


class Restamp:
    """Makes a continuing node's events read as the rest of the original stream."""

    __slots__ = ("id", "started")

    def __init__(self, stream_id: str | None) -> None:
        self.id = stream_id
        self.started = False

    def event(self, payload: Any) -> bytes | None:
        """The event to send for one of the continuing node's events, or None to drop it; ValueError
        for one that cannot be written back as JSON."""
        if payload is DONE:
            return b"data: [DONE]\n\n"
        if not isinstance(payload, dict):
            return None
        if not self.started:
            if signal_of(payload) is Signal.WAIT:
                return None  # its own role-only opening: the client already had one
            self.started = True
            for choice in payload.get("choices") or ():
                if isinstance(choice, dict) and isinstance(choice.get("delta"), dict):
                    choice["delta"].pop("role", None)
        if self.id is not None and "id" in payload:
            payload["id"] = self.id
        # ASCII escapes keep a lone surrogate sendable; a number out of range raises ValueError.
        return b"data: " + json.dumps(payload, separators=(",", ":"), allow_nan=False).encode() + b"\n\n"


def parse_event(data: bytes) -> Any:
    """`sse.parse`, with what is no JSON as None (a malformed event)."""
    try:
        return parse(data)
    except ValueError:
        return None
