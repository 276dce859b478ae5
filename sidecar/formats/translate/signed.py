"""Reasoning a provider signed, in Anthropic requests: where it may go.

Anthropic refuses a request whose thinking blocks it did not sign, and wants the assistant turn a tool loop
continues to start with its own signed thinking when thinking is on. The sidecar marks reasoning it hands on
from another provider (ids.py); these functions keep such reasoning from an Anthropic node.
"""

from __future__ import annotations

from typing import Any

from . import ids


def unsigned_loop(messages: list[dict[str, Any]]) -> bool:
    """The conversation ends in tool results for an assistant turn that does not start with signed thinking
    (it came from another provider, or had none): Anthropic refuses thinking for such a request."""
    if len(messages) < 2 or not all(isinstance(m, dict) for m in messages[-2:]):
        return False
    last, turn = messages[-1], messages[-2]
    if last.get("role") != "user" or turn.get("role") != "assistant":
        return False
    if not isinstance(last.get("content"), list) or not isinstance(turn.get("content"), list) or not turn["content"]:
        return False
    if not any(isinstance(b, dict) and b.get("type") == "tool_result" for b in last["content"]):
        return False
    first = turn["content"][0]
    return not isinstance(first, dict) or first.get("type") not in ("thinking", "redacted_thinking")


def unmarked(body: dict[str, Any]) -> dict[str, Any] | None:
    """An Anthropic request for an Anthropic node without the reasoning the sidecar marked as another provider's
    (thinking from an OpenAI-format node, handed to the client as a block signed with the sidecar's mark): the
    node would refuse the request ("Invalid signature in thinking block"). None when there is none. When the
    turn that lost it is the one a tool loop continues, thinking is turned off for this request, as Anthropic
    wants that turn to start with its own signed thinking."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    changed = False
    kept = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and message.get("role") == "assistant":
            blocks = [b for b in content if not _marked(b)]
            if len(blocks) != len(content):
                changed = True
                message = {**message, "content": blocks or [{"type": "text", "text": "(reasoning omitted)"}]}
        kept.append(message)
    if not changed:
        return None
    out = {**body, "messages": kept}
    if isinstance(body.get("thinking"), dict) and unsigned_loop(kept):
        out.pop("thinking")
    return out


def _marked(block: Any) -> bool:
    if not isinstance(block, dict) or block.get("type") not in ("thinking", "redacted_thinking"):
        return False
    value = block.get("signature") if block.get("type") == "thinking" else block.get("data")
    return isinstance(value, str) and value.startswith(ids.MARK)
