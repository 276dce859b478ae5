"""Requests that name state a provider keeps go to the node that made it.

A stored response (`previous_response_id`, `GET /v1/responses/{id}`), a file, an upload, a batch, a vector store
or a conversation exists only at the provider that created it: another node would answer its own 404, or worse,
a different file of the same id. The ids a node's answers create are remembered (nodes/owners.py); a request
that names one in its path or body goes to that node alone, and when that node is out (or was answered by
translation, so it keeps nothing) the client gets a clear error in its format naming the node.

Nothing is looked at while no id is remembered: a plain chat request pays one length check.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from sidecar.nodes.upstream import Upstream

from .answer import Ready
from .exchange import Exchange

# Collections whose ids a node makes (a POST to the collection) and later requests name (in the path after it).
COLLECTIONS = (
    "/v1/responses", "/v1/files", "/v1/uploads", "/v1/batches", "/v1/vector_stores", "/v1/conversations",
    "/v1/messages/batches",
)  # fmt: skip
CREATES = frozenset(COLLECTIONS)
SCAN = 1 << 16  # bytes of an answer where its id is looked for (a stream's response.created comes first)
_ID = re.compile(rb'"id"\s*:\s*"([^"\\]{1,200})"')
_REFERENCES = re.compile(
    rb'"(?:previous_response_id|file_id|input_file_id|vector_store_id|conversation)"\s*:\s*'
    rb'(?:\{\s*"id"\s*:\s*)?"([^"\\]{1,200})"'
)
_LISTS = re.compile(rb'"(?:vector_store_ids|file_ids)"\s*:\s*\[([^\]]{0,20000})\]')
_STRING = re.compile(rb'"([^"\\]{1,200})"')


class Held(NamedTuple):
    """Where a request that names held state must go: only `node` (an index), or nowhere (`refusal`)."""

    node: int | None
    refusal: tuple[int, str, str] | None = None  # status, message, code


def remember(upstream: Upstream, ex: Exchange, node: str, ready: Ready) -> None:
    """A node's answer that created something: its id sticks to the node."""
    if ex.method != "POST" or ex.path not in CREATES or not 200 <= ready.response.status < 300:
        return
    match = _ID.search(ready.body, 0, SCAN)
    if match is not None:
        upstream.owners.note(match.group(1).decode("utf-8", "replace"), node)


def named(ex: Exchange, body: bytes) -> list[str]:
    """The ids a request names: in its path after a collection, and in its body's id fields."""
    found = []
    for collection in COLLECTIONS:
        if ex.path.startswith(collection + "/"):
            found.append(ex.path[len(collection) + 1 :].partition("/")[0])
    if body and (b"_id" in body or b'"conversation"' in body):
        found += [m.group(1).decode("utf-8", "replace") for m in _REFERENCES.finditer(body)]
        for listed in _LISTS.finditer(body):
            found += [m.group(1).decode("utf-8", "replace") for m in _STRING.finditer(listed.group(1))]
    return found


def held(upstream: Upstream, ex: Exchange, body: bytes) -> Held | None:
    """None when the request names nothing a node holds (or nothing is remembered at all)."""
    if not upstream.owners:
        return None
    owners = {owner for made in named(ex, body) if (owner := upstream.owners.get(made)) is not None}
    if not owners:
        return None
    nodes = sorted({owner.node for owner in owners})
    if len(nodes) > 1:
        message = f"this request names state held by different nodes ({', '.join(nodes)}): no node can serve it"
        return Held(None, (400, message, "state_on_several_nodes"))
    owner = owners.pop()
    index = upstream.index.get(owner.node)
    if owner.translated:
        message = (
            f"a response named here was answered by node {owner.node!r} through translation, which keeps no state: "
            "send the whole conversation instead (store: false, no previous_response_id)"
        )
        return Held(None, (400, message, "state_not_stored"))
    if index is None:
        message = f"state named here was created by node {owner.node!r}, which is no longer in the config"
        return Held(None, (503, message, "state_holder_gone"))
    if not upstream.nodes[index].health.available(upstream.clock()):
        message = f"state named here is held by node {owner.node!r}, which is out; no other node has it"
        return Held(None, (503, message, "state_holder_out"))
    return Held(index)
