"""Requests served by nodes of another format: which nodes may take one, and one attempt's translation.

`prepare` runs once per request of a translatable format (ex.form). When every node it may go to speaks its
format it returns None and the request goes on exactly as before (nothing parsed, nothing copied). Otherwise
the body is read once into the neutral model (formats/translate) and tried against each target format; a node
that cannot honour the request is passed over with its reason in the trail, and when no node is left the
client gets a 400 (or a 404 when no node takes its format at all) in its own format that says why.

An `Adapter` is one attempt on a translated node: it writes the node's request (its format's path, its model,
headers of its API) and turns the node's failures into the client's format; relaying the answer is
transcode.py's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from yarl import URL

from sidecar.formats.dialect import ANTHROPIC_VERSION, OPENAI
from sidecar.formats.errors import Send, send_error
from sidecar.formats.translate import ids, pair
from sidecar.formats.translate.errors import error_body
from sidecar.formats.translate.ir import CHAT, MESSAGES, PATHS, RESPONSES, Form, Request, Untranslatable
from sidecar.formats.translate.signed import unmarked
from sidecar.nodes.node import NodeState
from sidecar.nodes.owners import Owners
from sidecar.nodes.transport import Request as Outbound
from sidecar.nodes.transport import UpstreamError
from sidecar.nodes.upstream import Upstream

from .exchange import BadBody, BodyRewriter, Exchange, dump
from .sticky import held

RESPONSES_PATH = PATHS[RESPONSES]
MARKED = ids.MARK.encode()
NAMES: dict[Form, str] = {
    CHAT: "OpenAI's Chat Completions API",
    RESPONSES: "OpenAI's Responses API",
    MESSAGES: "Anthropic's Messages API",
}
# Headers of one API that mean nothing to the other (an OpenAI organisation id is no business of Anthropic's).
# accept-encoding goes too: the sidecar must read a translated answer, so it asks for it uncompressed.
CHAT_ONLY = ("openai-", "x-stainless-helper")
ANTHROPIC_ONLY = ("anthropic-",)


@dataclass(slots=True)
class Prepared:
    """What a request's translation needs across its attempts."""

    form: Form | None
    skip: frozenset[int]  # nodes it must not go to (their format, or a request they cannot honour)
    request: Request | None = None  # the client's request, read once; None when no node translates
    targets: dict[int, Form] = field(default_factory=dict)  # node index -> its format, for translated nodes
    why: dict[int, str] = field(default_factory=dict)  # node index -> why it cannot honour this request
    limit: int = 0  # max_response_bytes: what a translated answer may be
    refusal: tuple[int, str, str] | None = None  # status, message, code: the request names state no node can serve

    def covers(self, nodes: int) -> bool:
        """Every node is passed over for its format, for what the request needs or for the state it names."""
        return len(self.skip) == nodes

    def adapter(self, index: int, node: NodeState, owners: Owners) -> Adapter | None:
        target = self.targets.get(index)
        if target is None or self.request is None or self.form is None:
            return None
        return Adapter(self.form, target, self.request, node, self.limit, owners)


def prepare(upstream: Upstream, rewriter: BodyRewriter, ex: Exchange) -> Prepared | None:
    """How a request is routed by format and by the state it names (sticky.py); None: as it always was."""
    prepared = _formats(upstream, rewriter, ex)
    state = held(upstream, ex, rewriter.body)
    if state is None:
        return prepared
    if prepared is None:
        prepared = Prepared(ex.form, upstream.other_api[ex.api], limit=upstream.config.upstream.max_response_bytes)
    everyone = frozenset(range(len(upstream.nodes)))
    if state.refusal is not None:
        prepared.refusal, prepared.skip = state.refusal, everyone
    else:
        prepared.skip |= everyone - {state.node}
    return prepared


def _formats(upstream: Upstream, rewriter: BodyRewriter, ex: Exchange) -> Prepared | None:
    form = ex.form
    limit = upstream.config.upstream.max_response_bytes
    if form is None:
        if not ex.path.startswith(RESPONSES_PATH + "/") or ex.api != OPENAI:
            return None
        # A stored response's calls (GET /v1/responses/{id}, ...) go to nodes that implement the API only.
        skip = upstream.unable[RESPONSES] | upstream.translated[RESPONSES]
        return None if skip == upstream.other_api[ex.api] else Prepared(None, skip, limit=limit)
    unable, translated = upstream.unable[form], upstream.translated[form]
    if not translated and unable == upstream.other_api[ex.api]:
        return None  # every node it may go to speaks its format: nothing to do
    prepared = Prepared(form, unable, limit=limit)
    if not translated:
        return prepared
    targets = {i: upstream.nodes[i].config.target(form) for i in translated}
    reason = None
    try:
        parsed = rewriter.parse()
        if parsed is None:
            raise Untranslatable("the body is not declared as JSON")
        prepared.request = pair.read(form, parsed)
        if form == MESSAGES and MARKED in rewriter.body:  # another provider's reasoning: not for native nodes
            cleaned = unmarked(parsed)
            if cleaned is not None:
                rewriter.body, rewriter.parsed = dump(cleaned), cleaned
    except (BadBody, Untranslatable) as exc:
        reason = str(exc)
    works: dict[Form, str | None] = {}
    for index, target in targets.items():
        assert target is not None
        if reason is None and target not in works:
            try:
                assert prepared.request is not None
                pair.write(prepared.request, target, None, "")
                works[target] = None
            except Untranslatable as exc:
                works[target] = str(exc)
        why = reason or works.get(target)
        if why is None:
            prepared.targets[index] = target
        else:
            prepared.why[index] = why
    if prepared.why:
        prepared.skip = unable | frozenset(prepared.why)
        ex.skipped += [
            {"node": upstream.nodes[i].name, "reason": f"cannot translate: {why}"}
            for i, why in sorted(prepared.why.items())
        ]
    return prepared


async def refuse(send: Send, ex: Exchange, prepared: Prepared) -> None:
    """No node can take the request: why, in the client's format."""
    rid = [(b"x-request-id", ex.rid.encode())]
    if prepared.refusal is not None:
        status, ex.error, code = prepared.refusal
        ex.status = status
        await send_error(send, status, ex.error, "invalid_request_error", code, rid, ex.api)
        return
    if prepared.why:
        reasons = "; ".join(dict.fromkeys(prepared.why.values()))
        ex.status, ex.error = 400, f"no node can serve this request: {reasons}"[:500]
        await send_error(send, 400, ex.error, "invalid_request_error", "untranslatable", rid, ex.api)
        return
    ex.status = 404
    ex.error = f"no node serves {NAMES[prepared.form or RESPONSES]}"
    hint = "add a node that speaks it, or set translate = true on a node of another format"
    await send_error(send, 404, f"{ex.error}: {hint}", "invalid_request_error", "no_node_for_api", rid, ex.api)


class Adapter:
    """One attempt of a request on a node of another format."""

    __slots__ = ("client", "dropped", "limit", "node", "owners", "request", "target")

    def __init__(
        self, client: Form, target: Form, request: Request, node: NodeState, limit: int, owners: Owners
    ) -> None:
        self.limit = limit
        self.owners = owners
        self.client = client
        self.target = target
        self.request = request
        self.node = node
        self.dropped: list[str] = []

    def outbound(
        self, headers: list[tuple[str, str]], url: Callable[[str, str], URL], task: asyncio.Task[Any] | None
    ) -> Outbound:
        """The node's request: its format's path and body, its model, its API's headers (BadBody for what
        cannot go out as JSON)."""
        config = self.node.config
        model = config.rewrite_model(self.request.model) if self.request.model is not None else None
        try:
            body, self.dropped = pair.write(self.request, self.target, model, self.node.name)
        except Untranslatable as exc:  # prepare() tried this target: cannot happen, never worth a crash
            raise BadBody(str(exc)) from None
        foreign = ANTHROPIC_ONLY if self.target == CHAT else CHAT_ONLY
        kept = [
            (k, v) for k, v in headers
            if not k.lower().startswith(foreign) and k.lower() not in ("accept-encoding", "content-type")
        ]  # fmt: skip
        kept.append(("content-type", "application/json"))
        if self.target == MESSAGES and not any(k.lower() == "anthropic-version" for k, _ in kept):
            kept.append(("anthropic-version", ANTHROPIC_VERSION))
        return Outbound("POST", url(config.url, PATHS[self.target]), [*kept, *self.node.auth], dump(body), task)

    def failed(self, exc: UpstreamError) -> None:
        """A failure the client may be shown (the node's error answer) in the client's format."""
        if exc.status:
            exc.body = error_body(self.client, exc.status, exc.body)
            exc.headers = [(k, v) for k, v in exc.headers if k.lower() != b"content-type"]
            exc.headers.append((b"content-type", b"application/json"))

    def made(self, response_id: str) -> None:
        """A Responses answer made here by translation: its id is the node's, with no state behind it."""
        if self.client == RESPONSES:
            self.owners.note(response_id, self.node.config.name, translated=True)

    def header(self) -> bytes:
        """The x-llm-sidecar-translated header: the formats, and what the node's format had no words for."""
        text = f"{self.client} to {self.target}"
        if self.dropped:
            text += "; dropped: " + ", ".join(self.dropped)
        return text[:1000].encode("ascii", "replace")
