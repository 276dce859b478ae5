"""Prompt-cache affinity: one conversation stays on one node while the provider's cache lives.

Providers cache a prompt's prefix per node (per account): spreading one agent's
conversation across equal nodes throws that cache away. A conversation is known
by the client's `x-session-id`, or else by a hash of its model and its opening
messages (the system prompt and the first user message, which every later turn
repeats). Pure: the clock is passed in; the map is bounded in size and time.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Any

SESSION_HEADER = b"x-session-id"
MAX_SESSION_ID = 128


def conversation_key(session: bytes | None, body: dict[str, Any] | None) -> str | None:
    """The key a conversation is pinned by, or None when the request says nothing of one."""
    if session:
        return "s:" + session[:MAX_SESSION_ID].decode("latin-1")
    if body is None:
        return None
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return None
    opening = []
    for message in messages:
        opening.append(message)
        if isinstance(message, dict) and message.get("role") == "user":
            break
    try:
        # Anthropic's system prompt is a top-level field, not a message: it opens the conversation too.
        head = [body.get("model"), opening] if "system" not in body else [body.get("model"), body["system"], opening]
        text = json.dumps(head, sort_keys=True, ensure_ascii=False, default=str)
    except (TypeError, ValueError, RecursionError):
        return None
    return "h:" + hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


class Pins:
    """Conversation → node name, each pin living `ttl` seconds after its last use; at most `size` pins."""

    def __init__(self, ttl: float, size: int = 10_000) -> None:
        self.ttl = ttl
        self.size = size
        self.pins: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def get(self, key: str, now: float) -> str | None:
        pin = self.pins.get(key)
        if pin is None:
            return None
        node, expires = pin
        if expires <= now:
            del self.pins[key]
            return None
        return node

    def pin(self, key: str, node: str, now: float) -> None:
        """Pin (or re-pin, after a failover) and refresh: the provider's cache lives from the last use."""
        self.pins[key] = (node, now + self.ttl)
        self.pins.move_to_end(key)
        while len(self.pins) > self.size:
            self.pins.popitem(last=False)

    def __len__(self) -> int:
        return len(self.pins)
