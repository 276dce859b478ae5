"""Anthropic Messages streams: an Anthropic node's events read into neutral events, and neutral events written
as the events an Anthropic client reads (message_start, content_block_start/delta/stop, message_delta,
message_stop). Incremental both ways."""

from __future__ import annotations

import json
from typing import Any

from ..dialect import ANTHROPIC, stream_error
from . import ids
from .answers import FROM_ANTHROPIC, answer_id, anthropic_usage, stop_reason, usage_anthropic
from .ir import (
    Counted,
    End,
    Event,
    Finish,
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
    merge_usage,
    obj,
)
from .messages import JSON_TOOL


class MessagesReader:
    """An Anthropic node's stream, event by event (parsed), as neutral events. `json_mode`: the request asked
    for JSON through the JSON_TOOL, whose input is the answer's text."""

    __slots__ = ("json_block", "json_mode", "node", "tools")

    def __init__(self, node: str, json_mode: bool = False) -> None:
        self.node = node
        self.json_mode = json_mode
        self.json_block: int | None = None
        self.tools = 0

    def feed(self, payload: Any) -> list[Event]:
        if not isinstance(payload, dict):
            return []
        kind = payload.get("type")
        if kind == "message_start":
            message = obj(payload.get("message"))
            return [Start(str(message.get("id") or "msg"), str(message.get("model") or ""),
                          anthropic_usage(message.get("usage")))]  # fmt: skip
        index = payload["index"] if isinstance(payload.get("index"), int) else 0
        if kind == "content_block_start":
            block = payload.get("content_block")
            return self._start(index, block) if isinstance(block, dict) else []
        if kind == "content_block_delta":
            delta = payload.get("delta")
            return self._delta(index, delta) if isinstance(delta, dict) else []
        if kind == "message_delta":
            delta = obj(payload.get("delta"))
            finish: Finish = FROM_ANTHROPIC.get(str(delta.get("stop_reason")), "stop")
            if finish == "tool_calls" and not self.tools:
                finish = "stop"  # the JSON tool's call was the answer
            stop = delta.get("stop_sequence")
            out: list[Event] = [Finished(finish, stop if isinstance(stop, str) else None)]
            if isinstance(payload.get("usage"), dict):
                out.append(Counted(anthropic_usage(payload["usage"])))
            return out
        if kind == "message_stop":
            return [End()]
        return []  # ping, content_block_stop (writers close blocks as the next begins), what is new

    def _start(self, index: int, block: dict[str, Any]) -> list[Event]:
        kind = block.get("type")
        if kind == "text":
            return [TextDelta(block["text"])] if isinstance(block.get("text"), str) and block["text"] else []
        if kind == "thinking":
            return (
                [ThinkingDelta(block["thinking"])]
                if isinstance(block.get("thinking"), str) and block["thinking"]
                else []
            )
        if kind == "redacted_thinking":
            return [Redacted(ids.mark(self.node, "redacted", str(block.get("data", ""))))]
        if kind == "tool_use":
            if self.json_mode and block.get("name") == JSON_TOOL:
                self.json_block = index
                return []
            self.tools += 1
            out: list[Event] = [ToolStart(index, str(block.get("id", "")), str(block.get("name", "")))]
            if isinstance(block.get("input"), dict) and block["input"]:  # some hosts send the whole input here
                out.append(ToolDelta(index, json.dumps(block["input"], ensure_ascii=False)))
            return out
        return []

    def _delta(self, index: int, delta: dict[str, Any]) -> list[Event]:
        kind = delta.get("type")
        if kind == "text_delta" and isinstance(delta.get("text"), str):
            return [TextDelta(delta["text"])]
        if kind == "input_json_delta" and isinstance(delta.get("partial_json"), str):
            if index == self.json_block:
                return [TextDelta(delta["partial_json"])] if delta["partial_json"] else []
            return [ToolDelta(index, delta["partial_json"])] if delta["partial_json"] else []
        if kind == "thinking_delta" and isinstance(delta.get("thinking"), str):
            return [ThinkingDelta(delta["thinking"])]
        if kind == "signature_delta" and isinstance(delta.get("signature"), str):
            return [SignatureDelta(ids.mark(self.node, "sig", delta["signature"]))]
        return []


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    data = json.dumps({"type": kind, **payload}, ensure_ascii=False, separators=(",", ":"))
    return f"event: {kind}\ndata: ".encode() + data.encode() + b"\n\n"


class MessagesWriter:
    """Neutral events as an Anthropic client's stream. `node` marks reasoning with where it came from (ids.py)."""

    __slots__ = ("finish", "index", "node", "open", "signed", "stop_sequence", "tools", "usage")

    def __init__(self, node: str) -> None:
        self.node = node
        self.index = -1
        self.open: str | None = None  # the open block's kind: "text", "thinking", "tool_use"
        self.signed = False  # the open thinking block got its signature
        self.tools: dict[int, int] = {}  # a call's key -> its block index
        self.finish: Finish | None = None
        self.stop_sequence: str | None = None
        self.usage = Usage()

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        out = b""
        if self.open == "thinking" and not self.signed:
            delta = {"type": "signature_delta", "signature": ids.mark(self.node)}
            out = _event("content_block_delta", {"index": self.index, "delta": delta})
        self.open = None
        return out + _event("content_block_stop", {"index": self.index})

    def _begin(self, kind: str, block: dict[str, Any]) -> bytes:
        if self.open == kind and kind != "tool_use":
            return b""
        out = self._close()
        self.index += 1
        self.open, self.signed = kind, False
        return out + _event("content_block_start", {"index": self.index, "content_block": block})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return _event("content_block_delta", {"index": self.index, "delta": delta})

    def feed(self, event: Event) -> bytes:
        if isinstance(event, Start):
            if event.usage is not None:
                merge_usage(self.usage, event.usage)
            message: dict[str, Any] = {"id": answer_id("msg_", event.id), "type": "message", "role": "assistant", "model": event.model,
                       "content": [], "stop_reason": None, "stop_sequence": None, "usage": usage_anthropic(self.usage)}  # fmt: skip
            return _event("message_start", {"message": message})
        if isinstance(event, TextDelta | RefusalDelta):
            head = self._begin("text", {"type": "text", "text": ""})
            return head + self._delta({"type": "text_delta", "text": event.text})
        if isinstance(event, ThinkingDelta):
            head = self._begin("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            return head + self._delta({"type": "thinking_delta", "thinking": event.text})
        if isinstance(event, SignatureDelta):
            if self.open != "thinking":
                return b""
            self.signed = True
            return self._delta({"type": "signature_delta", "signature": event.signature})
        if isinstance(event, Redacted):
            return self._begin("redacted_thinking", {"type": "redacted_thinking", "data": event.data}) + self._close()
        if isinstance(event, ToolStart):
            block = {"type": "tool_use", "id": ids.for_anthropic(event.id), "name": event.name, "input": {}}
            out = self._begin("tool_use", block)
            self.tools[event.key] = self.index
            return out
        if isinstance(event, ToolDelta):
            if self.open != "tool_use" or self.tools.get(event.key) != self.index:
                raise ValueError("tool call arguments interleaved between calls")
            return self._delta({"type": "input_json_delta", "partial_json": event.arguments})
        if isinstance(event, Finished):
            self.finish, self.stop_sequence = event.finish, event.stop_sequence
            return b""
        if isinstance(event, Counted):
            merge_usage(self.usage, event.usage)
            return b""
        assert isinstance(event, End)
        return self.close()

    def close(self) -> bytes:
        """The end of the answer: the open block's stop, message_delta, message_stop."""
        delta = {
            "stop_reason": stop_reason(self.finish or "stop", self.stop_sequence),
            "stop_sequence": self.stop_sequence,
        }
        usage = usage_anthropic(self.usage)
        return self._close() + _event("message_delta", {"delta": delta, "usage": usage}) + _event("message_stop", {})

    @property
    def finished(self) -> bool:
        return self.finish is not None

    def error(self, message: str, code: str) -> bytes:
        return stream_error(message, "upstream_error", code, api=ANTHROPIC)
