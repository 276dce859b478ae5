"""Chat Completions streams: a chat node's chunks read into neutral events, and neutral events written as the
chunks a chat client reads. Both are incremental: one event in, what it means out, nothing held back."""

from __future__ import annotations

import json
import time
from typing import Any

from ..dialect import OPENAI, stream_error
from ..sse import DONE
from . import ids
from .answers import FROM_CHAT, answer_id, chat_usage, reasoning_text, usage_chat
from .ir import (
    Counted,
    End,
    Event,
    Finished,
    Redacted,
    RefusalDelta,
    SignatureDelta,
    Start,
    TextDelta,
    ThinkingDelta,
    ToolDelta,
    ToolStart,
    Usage,
    arr,
    merge_usage,
    obj,
)


class ChatReader:
    """A chat node's stream, chunk by chunk (parsed), as neutral events."""

    __slots__ = ("id", "started", "tools")

    def __init__(self) -> None:
        self.started = False
        self.id = ""
        self.tools: set[int] = set()  # tool-call indexes seen

    def feed(self, payload: Any) -> list[Event]:
        if payload is DONE:
            return [End()]
        if not isinstance(payload, dict):
            return []
        out: list[Event] = []
        if not self.started:
            self.started = True
            self.id = str(payload.get("id") or "chatcmpl")
            created = payload.get("created")
            out.append(Start(self.id, str(payload.get("model") or ""),
                             created=created if isinstance(created, int) else None))  # fmt: skip
        for choice in arr(payload.get("choices")):
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._delta(delta, out)
            reason = choice.get("finish_reason")
            if reason:
                finish = FROM_CHAT.get(str(reason), "stop")
                out.append(Finished("tool_calls" if finish == "stop" and self.tools else finish))
        if isinstance(payload.get("usage"), dict):
            out.append(Counted(chat_usage(payload["usage"])))
        return out

    def _delta(self, delta: dict[str, Any], out: list[Event]) -> None:
        if (thought := reasoning_text(delta)) is not None:
            out.append(ThinkingDelta(thought))
        if isinstance(delta.get("content"), str) and delta["content"]:
            out.append(TextDelta(delta["content"]))
        if isinstance(delta.get("refusal"), str) and delta["refusal"]:
            out.append(RefusalDelta(delta["refusal"]))
        for position, call in enumerate(arr(delta.get("tool_calls"))):
            if not isinstance(call, dict):
                continue
            key = call.get("index", position)
            key = key if isinstance(key, int) else position
            function = obj(call.get("function"))
            if key not in self.tools:
                self.tools.add(key)
                call_id = call.get("id") if isinstance(call.get("id"), str) and call["id"] else None
                out.append(ToolStart(key, call_id or ids.item_id("call", f"{self.id}:{key}"),
                                     str(function.get("name") or "")))  # fmt: skip
            arguments = function.get("arguments")
            if isinstance(arguments, str) and arguments:
                out.append(ToolDelta(key, arguments))


def _data(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


class ChatWriter:
    """Neutral events as a chat client's stream: `feed` gives the bytes to send for each."""

    __slots__ = ("created", "finish", "id", "indexes", "model", "stream_usage", "usage")

    def __init__(self, stream_usage: bool) -> None:
        self.stream_usage = stream_usage  # the client asked for a usage chunk (stream_options.include_usage)
        self.id = "chatcmpl"
        self.model = ""
        self.created = 0
        self.indexes: dict[int, int] = {}  # a call's key -> its index in the client's tool_calls
        self.finish: str | None = None
        self.usage = Usage()

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return _data({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                      "choices": [choice]})  # fmt: skip

    def feed(self, event: Event) -> bytes:
        if isinstance(event, Start):
            self.id, self.model = answer_id("chatcmpl-", event.id), event.model
            self.created = event.created or int(time.time())
            if event.usage is not None:
                merge_usage(self.usage, event.usage)
            return self._chunk({"role": "assistant"})
        if isinstance(event, TextDelta):
            return self._chunk({"content": event.text})
        if isinstance(event, ThinkingDelta):
            return self._chunk({"reasoning_content": event.text})
        if isinstance(event, RefusalDelta):
            return self._chunk({"refusal": event.text})
        if isinstance(event, ToolStart):
            index = self.indexes[event.key] = len(self.indexes)
            call = {
                "index": index,
                "id": event.id,
                "type": "function",
                "function": {"name": event.name, "arguments": ""},
            }
            return self._chunk({"tool_calls": [call]})
        if isinstance(event, ToolDelta):
            known = self.indexes.get(event.key)
            if known is None:
                raise ValueError("tool call arguments before the call")
            return self._chunk({"tool_calls": [{"index": known, "function": {"arguments": event.arguments}}]})
        if isinstance(event, Finished):
            self.finish = event.finish
            return self._chunk({}, event.finish)
        if isinstance(event, Counted):
            merge_usage(self.usage, event.usage)
            return b""
        if isinstance(event, End):
            return self.close()
        assert isinstance(event, SignatureDelta | Redacted)  # provider-bound: a chat client has no use for it
        return b""

    def close(self) -> bytes:
        """The end of the answer: the usage chunk when asked for, then [DONE]."""
        out = b""
        if self.finish is None:
            out += self._chunk({}, "stop")
        if self.stream_usage:
            out += _data({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                          "model": self.model, "choices": [], "usage": usage_chat(self.usage)})  # fmt: skip
        return out + b"data: [DONE]\n\n"

    @property
    def finished(self) -> bool:
        return self.finish is not None

    def error(self, message: str, code: str) -> bytes:
        return stream_error(message, "upstream_error", code, api=OPENAI)
