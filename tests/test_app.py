"""The ASGI app in-process: what the client gets when something inside the sidecar breaks."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sidecar.config.load import parse
from sidecar.nodes.runtime import Runtime
from sidecar.proxy import app as proxy
from sidecar.proxy.app import ProxyApp

CONFIG = {"upstream": {"nodes": [{"name": "a", "url": "http://127.0.0.1:9"}]}}


async def call(app: ProxyApp, body: bytes = b'{"model": "m"}') -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
             "query_string": b"", "headers": [(b"content-type", b"application/json")]}  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def test_a_bug_inside_ends_the_request_with_a_json_500_and_an_event(monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = Runtime(parse(CONFIG, "t", {}))
    app = ProxyApp(runtime)

    async def broken(*args: Any) -> None:
        raise ValueError("boom")

    monkeypatch.setattr(proxy, "forward", broken)
    sent = await call(app)
    assert sent[0]["status"] == 500
    assert json.loads(sent[1]["body"])["error"]["code"] == "internal_error"
    event = runtime.events.recent[-1]
    assert event["type"] == "request" and event["status"] == 500
    assert runtime.upstream.refs == 0 and not app.inflight  # the bug gave back the generation it held


async def test_unknown_paths_get_a_json_404() -> None:
    app = ProxyApp(Runtime(parse(CONFIG, "t", {})))
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": "/admin", "headers": []}, None, send)
    assert sent[0]["status"] == 404 and "error" in json.loads(sent[1]["body"])
