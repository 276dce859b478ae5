"""Mid-stream continuation: when a chat stream breaks after text reached the client, another node
(or the same one) continues from what was delivered, in the same SSE stream.

Providers take "continue this partial answer" in four dialects (docs/failover.md lists them):
"prefill", a trailing `{"role": "assistant", "content": <delivered>}` message;
"prefix" and "partial", the same message marked `"prefix": true` / `"partial": true`;
"continue_final_message", the same with vLLM's request fields that say so. The continuing stream's events
are re-stamped with the original stream's `id`, and its role-only opening is
dropped, so the client's assembled text is one answer.

Pure: the relay feeds events in; nothing here does I/O.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sidecar.formats.sse import DONE, Signal, Splitter, data_of, parse, signal_of

MAX_CONTINUATIONS = 3  # breaks one stream may survive


class Transcript:
    """What a chat-completions stream has delivered so far, event by event."""

    __slots__ = ("done", "finished", "finishes", "id", "parts", "unsafe")

    def __init__(self) -> None:
        self.id: str | None = None  # the original stream's: a continuation's events are re-stamped with it
        self.parts: list[str] = []
        self.finished = False  # a finish_reason arrived: the answer is whole
        self.finishes = Finishes()  # across continuations: a continuing node may finish twice too
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
        return event_of(payload)


def event_of(payload: Any) -> bytes:
    """An event written back from its parsed data; ValueError for a number out of range."""
    # ASCII escapes keep a lone surrogate sendable.
    return b"data: " + json.dumps(payload, separators=(",", ":"), allow_nan=False).encode() + b"\n\n"


# A choice's finish in an event's bytes (not `null`): until one shows, a stream's events pass unread.
_FINISH = re.compile(rb'"finish_reason"\s*:\s*"')


class Finishes:
    """One finish per choice: what a node sends for a choice after its `finish_reason` is dropped.

    A node may finish, go on, and finish again (a continuing one too); the client's SDK would append the
    text after the end and see the answer end twice. Only events with `choices` are touched.
    """

    __slots__ = ("ended",)

    def __init__(self) -> None:
        self.ended: set[int | str] = set()

    def trim(self, payload: Any) -> Any:
        """`payload` without the choices that had finished (a new dict), itself when none had, or None when
        nothing is left to send."""
        choices = payload.get("choices") if isinstance(payload, dict) else None
        if not isinstance(choices, list):
            return payload
        kept = []
        for choice in choices:
            index = choice.get("index", 0) if isinstance(choice, dict) else None
            if not isinstance(index, (int, str)):  # nothing to tell it by: passed on
                kept.append(choice)
                continue
            if index in self.ended:
                continue
            kept.append(choice)
            if choice.get("finish_reason"):
                self.ended.add(index)
        if len(kept) == len(choices):
            return payload
        if not kept and not payload.get("usage"):
            return None
        return {**payload, "choices": kept}

    def events(self, data: bytes) -> bytes:
        """Whole events, as the relay passes them unread: read only once a choice finished."""
        if not self.ended and _FINISH.search(data) is None:
            return data
        out = []
        splitter = Splitter()
        for start, end in splitter.events(data):
            out.append(self.event(data[start:end]))
        out.append(data[splitter.start :])  # an event larger than the relay holds goes as it is
        return b"".join(out)

    def event(self, event: bytes) -> bytes:
        data = data_of(event)
        if data is None:
            return event
        try:
            payload = parse(data)
        except ValueError:
            return event  # not read, not judged: the relay passes what it does not read
        kept = self.trim(payload)
        if kept is payload:
            return event
        try:
            return b"" if kept is None else event_of(kept)
        except ValueError:  # a number out of range in what is left of it: the event cannot go on
            return b""


def parse_event(data: bytes) -> Any:
    """`sse.parse`, with what is no JSON as None (a malformed event)."""
    try:
        return parse(data)
    except ValueError:
        return None
