"""Ids across formats, and state that is bound to the provider that made it.

Tool-call ids are mapped by pure functions of the id, so a follow-up turn (which repeats the call's id in
the assistant turn and in the tool result) maps both the same way, on any node and after a restart.
Anthropic takes ids of `[A-Za-z0-9_-]`; OpenAI's chat takes ids up to 40 characters.

Reasoning a provider signs (Anthropic's thinking `signature`, a redacted block's data) is valid only
there. When the sidecar hands reasoning to a client in another format it marks it with the node it came
from: `llm-sidecar:<node>` (reasoning from an OpenAI-format node, which signs nothing), or
`llm-sidecar:<node>:sig:<signature>` / `llm-sidecar:<node>:redacted:<data>` (Anthropic's, carried in a
Responses reasoning item's `encrypted_content`). A later turn gives it back to that node only; anywhere else
it is dropped, so no provider ever sees another's signature ("Invalid signature in thinking block").
"""

from __future__ import annotations

import hashlib
import re

MARK = "llm-sidecar:"
_ANTHROPIC_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NOT_ID = re.compile(r"[^A-Za-z0-9_-]")
CHAT_ID_MAX = 40


def _digest(value: str, length: int) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def for_anthropic(call_id: str) -> str:
    """A tool-call id as Anthropic takes it: kept when it fits, else made to fit (a digest keeps two ids that
    differ only in a replaced character apart)."""
    if _ANTHROPIC_ID.fullmatch(call_id):
        return call_id
    return f"toolu_{_NOT_ID.sub('_', call_id)[:40]}_{_digest(call_id, 12)}"


def for_chat(call_id: str) -> str:
    """A tool-call id as OpenAI's chat takes it (at most 40 characters)."""
    if 0 < len(call_id) <= CHAT_ID_MAX:
        return call_id
    return f"call_{_digest(call_id, 32)}"


def item_id(prefix: str, call_id: str) -> str:
    """A Responses item id (`fc_...`) for a call: derived from its call id, so both stay paired."""
    return f"{prefix}_{_digest(call_id, 24)}"


def mark(node: str, kind: str = "", data: str = "") -> str:
    """Reasoning's provenance: the node it came from, and what its provider needs back (see module doc)."""
    return f"{MARK}{node}:{kind}:{data}" if kind else f"{MARK}{node}"


def origin(value: str | None) -> tuple[str | None, str, str]:
    """(node, kind, data) of a mark; (None, "", value) for what the sidecar did not mark (a provider's own)."""
    if not value or not value.startswith(MARK):
        return None, "", value or ""
    node, _, rest = value[len(MARK) :].partition(":")
    kind, _, data = rest.partition(":")
    return node, kind, data
