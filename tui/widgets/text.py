"""Values drawn as inert text: what came from a request or a node (model names, request ids, node names,
reasons, paths) is never read as markup and never reaches the terminal raw.

Textual reads `[...]` in strings as markup, so a client sending `"model": "[/]"` would otherwise crash every
attached monitor, and raw control characters would reach the terminal.
"""

from __future__ import annotations

import re

from rich.text import Text

# C0/C1 controls and DEL (terminal escapes), line and paragraph separators, bidi overrides (they reorder
# what is shown), and lone surrogates (valid in JSON escapes, but they cannot be written to a terminal).
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
LIMIT = 200  # characters of one value; a megabyte of model name must not become a megabyte-wide column


def clean(value: object, limit: int = LIMIT) -> str:
    """`value` as one line of inert text, at most `limit` characters: unsafe characters shown escaped."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = text[: max(limit - 1, 0)] + "…"
    return UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def plain(value: object, style: str = "", limit: int = LIMIT) -> Text:
    """`value` as a Text that is never read as markup (DataTable and Label parse plain strings)."""
    return Text(clean(value, limit), style=style, no_wrap=True, end="")


# How each node state is drawn, in the nodes table and the health events alike.
STATE_STYLE = {
    "healthy": "bold green", "unhealthy": "bold red", "ejected": "bold magenta", "down": "bold yellow",
    "budget": "bold red",
}  # fmt: skip


def cut(text: Text, width: int) -> Text:
    """`text` in at most `width` cells, ending in … where it was cut."""
    if text.cell_len <= width:
        return text
    short = text.copy()
    short.truncate(max(width, 0), overflow="ellipsis")
    return short
