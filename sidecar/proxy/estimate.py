"""Count endpoints answered by the sidecar: Anthropic's POST /v1/messages/count_tokens and OpenAI's
POST /v1/responses/input_tokens go to a node that speaks the format; when none is usable and some node
translates the format, the sidecar answers with its estimate (formats/translate/count.py), so a client such as
Claude Code, which counts before it sends, keeps working on translated nodes."""

from __future__ import annotations

import json

from sidecar.formats.errors import Send, send_error, send_json
from sidecar.formats.translate import pair
from sidecar.formats.translate.count import estimate
from sidecar.formats.translate.ir import MESSAGES, RESPONSES, Form, Untranslatable
from sidecar.nodes.upstream import Upstream

from .exchange import Exchange

COUNTS: dict[str, Form] = {"/v1/messages/count_tokens": MESSAGES, "/v1/responses/input_tokens": RESPONSES}
ESTIMATE_HEADER = (b"x-llm-sidecar-estimate", b"about 4 characters a token")


def here(upstream: Upstream, ex: Exchange) -> Form | None:
    """The format to count in when the sidecar answers this request itself, else None."""
    form = COUNTS.get(ex.path) if ex.method == "POST" else None
    if form is None or not upstream.translated[form]:
        return None
    now = upstream.clock()
    natives = (n for n in upstream.nodes if n.config.target(form) == form)
    return None if any(n.health.available(now) for n in natives) else form


async def answer(send: Send, ex: Exchange, form: Form, body: bytes) -> None:
    rid = (b"x-request-id", ex.rid.encode())
    try:
        parsed = json.loads(body)
        if not isinstance(parsed, dict):
            raise Untranslatable("the body must be a JSON object")
        if form == MESSAGES:
            parsed.setdefault("max_tokens", 1)  # count_tokens takes none; the reader does not need one
        tokens = estimate(pair.read(form, parsed))
    except (ValueError, RecursionError) as exc:
        ex.status, ex.error = 400, f"cannot count this request: {str(exc)[:200]}"
        await send_error(send, 400, ex.error, "invalid_request_error", "invalid_request", [rid], ex.api)
        return
    out = {"input_tokens": tokens} if form == MESSAGES else {"object": "response.input_tokens", "input_tokens": tokens}
    ex.status, ex.node, ex.tokens_in = 200, "llm-sidecar (estimate)", tokens
    await send_json(send, 200, json.dumps(out).encode(), [rid, ESTIMATE_HEADER])
