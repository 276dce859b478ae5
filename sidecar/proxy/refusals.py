"""Answers the sidecar gives itself, in the client's format, when no node should be asked: a body it cannot
rewrite, a model no node serves, a format no node speaks, a base URL with /v1 twice, a spent budget. Each sets
the request's status and error for the log and the journal before it answers."""

from __future__ import annotations

import time

from sidecar.formats.dialect import ANTHROPIC, NAMES, api_of
from sidecar.formats.errors import Send, send_error
from sidecar.nodes.upstream import Upstream

from .exchange import BadBody, Exchange
from .trip import MAX_MODEL_NAME


async def bad_body(send: Send, ex: Exchange, exc: BadBody) -> None:
    ex.status, ex.error = 400, str(exc)
    await send_error(
        send, 400, str(exc), "invalid_request_error", "invalid_json", [(b"x-request-id", ex.rid.encode())], ex.api
    )


async def not_served(send: Send, ex: Exchange, model: str | None, served: list[str]) -> None:
    """No node's `models` table has the model: a clear 404, and no node is asked."""
    names = ", ".join(served[:50]) + (", ..." if len(served) > 50 else "")
    ex.status = 404
    shown = model if model is None or len(model) <= MAX_MODEL_NAME else model[:MAX_MODEL_NAME] + "..."
    ex.error = f"model {shown!r} is not served by any node"  # bounded: the name is the client's
    await send_error(
        send, 404, f"{ex.error} (served: {names})", "invalid_request_error", "model_not_found",
        [(b"x-request-id", ex.rid.encode())], ex.api,
    )  # fmt: skip


async def no_node_speaks(send: Send, ex: Exchange) -> None:
    """No node speaks the request's format: the sidecar translates nothing, so it is a clear 404."""
    ex.status = 404
    ex.error = f"no node speaks {NAMES[ex.api]}"
    await send_error(
        send, 404, f'{ex.error}: add a node with api = "{ex.api}" to llm-sidecar.toml', "invalid_request_error",
        "no_node_for_api", [(b"x-request-id", ex.rid.encode())], ex.api,
    )  # fmt: skip


async def doubled_v1(send: Send, ex: Exchange, rid_header: tuple[bytes, bytes], anthropic: bool, listen: str) -> None:
    """A base URL that ends in /v1 under a client that adds /v1 itself (Anthropic's SDKs and Claude Code
    do; an OpenAI client given .../v1/v1): answered here, saying which base URL to set, rather than sent on
    for the provider's bare 404."""
    ex.api = api_of(ex.path[len("/v1") :], anthropic)
    base = f"http://{listen}"
    if ex.api == ANTHROPIC:
        fix = f"set ANTHROPIC_BASE_URL (or the SDK's base_url) to {base}, without /v1: the client adds it"
    else:
        fix = f"set OPENAI_BASE_URL (or the SDK's base_url) to {base}/v1, with /v1 once"
    ex.status, ex.error = 404, "the client's base URL ends in /v1 and it added /v1 again"
    await send_error(
        send, 404, f"unknown path {ex.path[:200]!r}: {ex.error}; {fix}", "invalid_request_error", "wrong_base_url",
        [rid_header], ex.api,
    )  # fmt: skip


async def refuse_over_budget(upstream: Upstream, ex: Exchange, send: Send) -> bool:
    """429 in the client's format when the sidecar's budget is spent, or every node that takes the request's
    format (natively or translated) is out for its own; True when it answered."""
    now = time.time()
    if ex.form is not None:  # the nodes that take its format, natively or translated
        names = [n.name for i, n in enumerate(upstream.nodes) if i not in upstream.unable[ex.form]]
    else:
        names = [n.name for n in upstream.nodes if n.config.api == ex.api]
    out = upstream.budgets.refusal(names, now)
    if out is None:
        return False
    ex.status, ex.error = 429, out.message(now)
    headers = [
        (b"x-request-id", ex.rid.encode("latin-1")),
        (b"retry-after", str(max(1, int(out.until - now))).encode()),
    ]
    await send_error(send, 429, f"llm-sidecar: {ex.error}", "insufficient_quota", "budget_exceeded", headers, ex.api)
    return True
