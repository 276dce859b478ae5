"""Fuzzing the request path in-process: any body, path or header a client can send gets a clear answer —
an upstream answer or an OpenAI-style JSON error, never a 500 — and leaves nothing held."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.nodes.mock import Script
from sidecar.nodes.transport import Request

from .inproc import Harness, config

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
BODIES = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda v: json.dumps(v).encode(), JSON_VALUES),
    st.builds(
        lambda model, extra: json.dumps({"model": model, "messages": [], **extra}).encode(),
        st.text(max_size=40),
        st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=3),
    ),
    st.sampled_from([b'{"model": "m", "x": 1e999}', b'{"model": "\\ud800"}', b"[" * 5000, b'{"model": NaN}']),
)
PATH_PARTS = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
HEADER_VALUES = st.binary(max_size=60).map(lambda b: bytes(c for c in b if c not in (10, 13)))


def handler(node: str, request: Request) -> Script:
    return Script(body=[b'{"choices": [], "usage": {"prompt_tokens": 1}}'])


async def one(body: bytes, path: str, headers: list[tuple[bytes, bytes]], method: str) -> None:
    h = Harness(handler, config())
    raw = path.encode("utf-8")
    got = await h.request(body, path=urllib.parse.unquote(path), raw_path=raw, headers=headers, method=method)
    assert got.complete and got.status is not None
    assert got.status != 500, got.body[:200]
    if got.status >= 400 and h.calls("primary") + h.calls("backup") == 0:
        error = json.loads(got.body)["error"]  # the sidecar's own errors are OpenAI-shaped
        assert isinstance(error["message"], str) and error["type"]
    h.assert_nothing_held()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    body=BODIES,
    path=st.one_of(
        st.builds(lambda p: "/v1/" + urllib.parse.quote(p, safe="/%."), PATH_PARTS),
        st.sampled_from(["/v1/../x", "/v1/%2e%2e/x", "/v1/..%2fx", "/v1/a%2Fb", "/v1/./x", "/v1\\..\\x", "/x"]),
    ),
    content_type=st.sampled_from([b"application/json", b"text/plain", b"multipart/form-data; boundary=x", b""]),
    extra=st.lists(
        st.tuples(st.sampled_from([b"x-request-id", b"connection", b"x-a", b"authorization"]), HEADER_VALUES),
        max_size=4,
    ),
    method=st.sampled_from(["POST", "GET", "DELETE", "PUT", "TRACE", "OPTIONS"]),
)
def test_any_request_gets_a_clear_answer_and_nothing_is_held(
    body: bytes, path: str, content_type: bytes, extra: list[tuple[bytes, bytes]], method: str
) -> None:
    headers: list[tuple[bytes, bytes]] = [(b"content-type", content_type), *extra] if content_type else extra
    asyncio.run(one(body, path, headers, method))


def test_the_fuzz_reaches_the_rewrite_and_the_upstream() -> None:
    # The strategy is not vacuous: a plain body does reach a node and get its answer.
    async def check() -> Any:
        h = Harness(handler, config())
        got = await h.request({"model": "gpt-4o", "messages": []})
        return got.status, h.calls("primary")

    assert asyncio.run(check()) == (200, 1)
