"""Anthropic-format nodes, in-process on the mock transport: routing by format, the key header, the
sidecar's own errors in Anthropic's shape, failover on Anthropic's failures (529, error events, a
200 that stays silent), a break after bytes went out, and token counts from its usage objects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp.test_utils import make_mocked_request

from sidecar.config.load import parse
from sidecar.config.schema import Config
from sidecar.control import status as api
from sidecar.control.server import ControlServer
from sidecar.formats.dialect import ANTHROPIC_VERSION, AnthropicUsage, api_of
from sidecar.nodes.health import Failure
from sidecar.nodes.mock import Script
from sidecar.nodes.transport import Request, UpstreamError

from .inproc import Harness

SSE = (("content-type", "text/event-stream"),)
JSON = (("content-type", "application/json"),)
ASK = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
KEYS = {"ANTHROPIC_KEY": "sk-ant-primary", "BACKUP_KEY": "sk-ant-backup", "OPENAI_KEY": "sk-openai"}
MESSAGE = {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
    "content": [{"type": "text", "text": "fine"}], "stop_reason": "end_turn", "stop_sequence": None,
    "usage": {"input_tokens": 5, "output_tokens": 2, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 7},
}  # fmt: skip


def event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def opening(input_tokens: int = 12, cached: int = 0) -> list[bytes]:
    usage = {"input_tokens": input_tokens, "output_tokens": 1, "cache_read_input_tokens": cached}
    start = {"type": "message_start", "message": {**MESSAGE, "content": [], "stop_reason": None, "usage": usage}}
    block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    return [event("message_start", start), event("content_block_start", block), event("ping", {"type": "ping"})]


def delta(text: str) -> bytes:
    return event(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
    )


def closing(output_tokens: int = 3) -> list[bytes]:
    return [
        event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                "usage": {"output_tokens": output_tokens}}),
        event("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip


def stream(*pieces: str) -> list[Any]:
    return [*opening(), *(delta(p) for p in pieces), *closing()]


def text_of(body: bytes) -> str:
    text = ""
    for line in body.split(b"\n"):
        if line.startswith(b"data: {"):
            payload = json.loads(line[6:])
            if payload.get("type") == "content_block_delta":
                text += payload["delta"].get("text", "")
    return text


def cfg(*, openai: bool = True, anthropic: int = 2, read: float = 1.0, **upstream: Any) -> Config:
    """An OpenAI node and up to two Anthropic nodes (primary at priority 0, backup at -1)."""
    nodes: list[dict[str, Any]] = []
    if openai:
        nodes.append({"name": "gpt", "url": "http://gpt.invalid", "api_key": "${OPENAI_KEY}"})
    names = [("claude", "${ANTHROPIC_KEY}", 0), ("claude-backup", "${BACKUP_KEY}", -1)][:anthropic]
    for name, key, priority in names:
        nodes.append(
            {"name": name, "url": f"http://{name}.invalid", "api": "anthropic", "api_key": key, "priority": priority}
        )
    timeout = {"connect": 0.05, "send": 1, "read": read}
    data = {"upstream": {"timeout": timeout, "checks": {"passive": {}}, "retry": {"backoff": 0.01, "max_backoff": 0.02},
                         "nodes": nodes, **upstream}}  # fmt: skip
    return parse(data, "<test>", env=KEYS)


def headers_of(request: Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers}


def failed(h: Harness) -> list[dict[str, Any]]:
    """The failed attempts without their fault kind and duration (the journal's, checked in test_journal)."""
    return [{k: v for k, v in a.items() if k not in ("kind", "ms")} for a in h.last_event()["failed"]]


ANTHROPIC_CLIENT = [
    (b"content-type", b"application/json"),
    (b"x-api-key", b"sk-ant-the-clients-own"),
    (b"anthropic-version", b"2023-01-01"),
    (b"anthropic-beta", b"prompt-caching-2024-07-31"),
]

# ---------------------------------------------------------------------------- routing and headers


def test_the_path_decides_the_format() -> None:
    assert api_of("/v1/messages") == "anthropic" and api_of("/v1/messages/count_tokens") == "anthropic"
    assert api_of("/v1/messages/batches/abc") == "anthropic"
    assert api_of("/v1/chat/completions") == "openai" and api_of("/v1/messagesx") == "openai"
    assert api_of("/v1/models") == "openai"


async def test_each_format_goes_only_to_its_nodes_with_its_key_header() -> None:
    seen: list[tuple[str, str, dict[str, str]]] = []

    def handler(node: str, request: Request) -> Script:
        seen.append((node, request.url.path, headers_of(request)))
        if node == "gpt":
            return Script(body=[b'{"choices": [{"message": {"content": "hi"}}]}'])
        return Script(body=[json.dumps(MESSAGE).encode()])

    h = Harness(handler, cfg())
    got = await h.request(ASK, path="/v1/messages", headers=ANTHROPIC_CLIENT)
    assert got.status == 200 and got.json()["content"][0]["text"] == "fine"
    chat = await h.request(CHAT, headers=[(b"content-type", b"application/json"), (b"authorization", b"Bearer client")])
    assert chat.status == 200 and chat.headers["x-llm-sidecar-node"] == "gpt"
    (node, path, sent), (chat_node, _, chat_sent) = seen
    assert (node, path) == ("claude", "/v1/messages")
    assert sent["x-api-key"] == "sk-ant-primary"  # the node's key, never the client's
    assert "authorization" not in sent
    assert sent["anthropic-version"] == "2023-01-01" and sent["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert chat_node == "gpt" and chat_sent["authorization"] == "Bearer sk-openai" and "x-api-key" not in chat_sent
    assert h.last_event()["api"] == "openai"
    h.assert_nothing_held()


async def test_a_default_anthropic_version_is_sent_when_the_client_sent_none() -> None:
    seen: list[dict[str, str]] = []
    versions: list[int] = []

    def handler(node: str, request: Request) -> Script:
        seen.append(headers_of(request))
        versions.append(sum(k.lower() == "anthropic-version" for k, _ in request.headers))
        return Script(body=[json.dumps(MESSAGE).encode()])

    h = Harness(handler, cfg())
    await h.request(ASK, path="/v1/messages", headers=[(b"content-type", b"application/json")])
    assert seen[0]["anthropic-version"] == ANTHROPIC_VERSION
    await h.request(ASK, path="/v1/messages", headers=[(b"anthropic-version", b"")])  # empty: none
    assert seen[1]["anthropic-version"] == ANTHROPIC_VERSION and versions[-1] == 1  # one header, not two


async def test_a_format_no_node_speaks_gets_a_404_in_that_formats_shape() -> None:
    h = Harness(lambda node, r: Script(body=[b"{}"]), cfg(anthropic=0))
    got = await h.request(ASK, path="/v1/messages")
    assert got.status == 404 and h.calls("gpt") == 0
    body = got.json()
    assert body["type"] == "error" and body["error"]["type"] == "not_found_error"
    assert 'api = "anthropic"' in body["error"]["message"]
    h2 = Harness(lambda node, r: Script(body=[b"{}"]), cfg(openai=False))
    chat = await h2.request(CHAT)
    assert chat.status == 404 and chat.json()["error"]["code"] == "no_node_for_api"


async def test_the_sidecars_own_errors_on_v1_messages_are_anthropic_shaped() -> None:
    h = Harness(lambda node, r: Script(503, JSON, [b'{"type": "error"}']), cfg(openai=False, anthropic=1))
    got = await h.request(ASK, path="/v1/messages")
    assert got.status == 503 and got.headers["x-should-retry"] == "false"
    assert got.json() == {"type": "error"}  # the provider's own answer is passed on as it is
    h2 = Harness(lambda node, r: Script(delay=5), cfg(openai=False, anthropic=1, read=0.05))
    got = await h2.request(ASK, path="/v1/messages")
    assert got.status == 504 and got.json()["type"] == "error" and got.json()["error"]["type"] == "timeout_error"
    refused = UpstreamError(Failure.TCP, "connect refused")
    h3 = Harness(lambda node, r: Script(error=refused), cfg(openai=False, anthropic=1))
    got = await h3.request({**ASK, "stream": True}, path="/v1/messages")
    assert got.status == 502 and got.headers["x-should-retry"] == "false"
    body = got.json()
    assert set(body) == {"type", "error"} and body["type"] == "error" and body["error"]["type"] == "api_error"
    assert body["error"]["message"].startswith("all upstream attempts failed: claude: connect refused")


# ---------------------------------------------------------------------------- failover in Anthropic's terms


async def test_529_overloaded_fails_over_with_its_reason() -> None:
    overloaded = b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'

    def handler(node: str, request: Request) -> Script:
        return Script(529, JSON, [overloaded]) if node == "claude" else Script(body=[json.dumps(MESSAGE).encode()])

    h = Harness(handler, cfg(retry={"same_node": 0}))
    got = await h.request(ASK, path="/v1/messages")
    assert got.status == 200 and got.headers["x-llm-sidecar-node"] == "claude-backup"
    assert failed(h) == [{"node": "claude", "reason": "overloaded (529)"}]
    assert h.calls("gpt") == 0


async def test_a_bad_request_passes_through_but_prompt_too_long_fails_over() -> None:
    invalid = b'{"type": "error", "error": {"type": "invalid_request_error", "message": "max_tokens: required"}}'
    too_long = b'{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 250000 tokens > 200000 maximum"}}'
    h = Harness(lambda node, r: Script(400, JSON, [invalid]), cfg())
    got = await h.request(ASK, path="/v1/messages")
    assert (
        got.status == 400 and got.json()["error"]["message"] == "max_tokens: required" and h.calls("claude-backup") == 0
    )
    h2 = Harness(
        lambda node, r: (
            Script(400, JSON, [too_long]) if node == "claude" else Script(body=[json.dumps(MESSAGE).encode()])
        ),
        cfg(),
    )
    got = await h2.request(ASK, path="/v1/messages")
    assert got.status == 200 and got.headers["x-llm-sidecar-node"] == "claude-backup"
    assert failed(h2) == [{"node": "claude", "reason": "context window exceeded"}]


async def test_message_start_and_pings_alone_are_no_token_so_a_silent_200_fails_over() -> None:
    silent = Script(200, SSE, [*opening(), 5.0])
    h = Harness(lambda node, r: silent if node == "claude" else Script(200, SSE, stream("Hel", "lo")), cfg(read=0.2))
    got = await h.request({**ASK, "stream": True}, path="/v1/messages")
    assert got.status == 200 and got.headers["x-llm-sidecar-node"] == "claude-backup" and text_of(got.body) == "Hello"
    assert failed(h) == [{"node": "claude", "reason": "no first token in 0.2s"}]
    assert got.body.count(b"event: message_start") == 1  # nothing of the silent node reached the client
    h.assert_nothing_held()


async def test_an_error_event_before_any_content_fails_over() -> None:
    error = event("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    h = Harness(
        lambda node, r: Script(200, SSE, [*opening(), error]) if node == "claude" else Script(200, SSE, stream("ok")),
        cfg(),
    )
    got = await h.request({**ASK, "stream": True}, path="/v1/messages")
    assert got.headers["x-llm-sidecar-node"] == "claude-backup" and text_of(got.body) == "ok"
    assert failed(h) == [{"node": "claude", "reason": "error event before any token (Overloaded)"}]


async def test_a_break_after_text_went_out_ends_with_an_anthropic_error_event() -> None:
    cut = Script(200, SSE, [*opening(), delta("Hel"), b""])  # the node ends the stream before message_stop
    h = Harness(lambda node, r: cut, cfg())
    got = await h.request({**ASK, "stream": True}, path="/v1/messages")
    assert got.status == 200 and got.complete and text_of(got.body) == "Hel"
    last = got.body.rstrip(b"\n").split(b"\n\n")[-1]
    assert last.startswith(b"event: error\ndata: ")
    payload = json.loads(last.split(b"data: ", 1)[1])
    assert payload["type"] == "error" and payload["error"]["type"] == "api_error"
    assert "claude failed mid-stream" in payload["error"]["message"]
    assert h.calls("claude-backup") == 0  # bytes went out: no silent restart on another node
    h.assert_nothing_held()


async def test_a_stream_that_ends_with_message_stop_is_whole() -> None:
    h = Harness(lambda node, r: Script(200, SSE, stream("a", "b")), cfg())
    got = await h.request({**ASK, "stream": True}, path="/v1/messages")
    assert got.complete and got.body.endswith(b'{"type": "message_stop"}\n\n') and b"event: error" not in got.body
    assert h.last_event()["error"] is None


# ---------------------------------------------------------------------------- tokens


def test_usage_counts_the_cached_prompt_in_the_prompt() -> None:
    usage = AnthropicUsage()
    assert usage.feed(json.dumps(MESSAGE).encode())
    assert (usage.prompt, usage.output, usage.cache_read) == (112, 2, 100)
    assert not AnthropicUsage().feed(b'{"input_tokens": 3}')  # counts outside a usage object are not usage


async def test_tokens_come_from_message_start_and_message_delta() -> None:
    body = [*opening(input_tokens=20, cached=80), delta("x"), *closing(output_tokens=9)]
    h = Harness(lambda node, r: Script(200, SSE, [b"".join(body)]), cfg())  # all events in one read
    await h.request({**ASK, "stream": True}, path="/v1/messages")
    record = h.last_event()
    assert (record["tokens_in"], record["tokens_out"], record["tokens_cached"]) == (100, 9, 80)
    assert record["api"] == "anthropic"
    assert h.node("claude").stats.tokens_in == 100


async def test_non_stream_tokens() -> None:
    h = Harness(lambda node, r: Script(body=[json.dumps(MESSAGE).encode()]), cfg())
    await h.request(ASK, path="/v1/messages")
    record = h.last_event()
    assert (record["tokens_in"], record["tokens_out"], record["tokens_cached"]) == (112, 2, 100)


# ---------------------------------------------------------------------------- the sidecar's own key, the model list


async def test_the_sidecar_key_may_come_as_x_api_key() -> None:
    data = {
        "server": {"api_key": "${SIDECAR_KEY}"},
        "upstream": {"nodes": [{"name": "claude", "url": "http://c.invalid", "api": "anthropic"}]},
    }
    config = parse(data, "<test>", env={"SIDECAR_KEY": "local-secret"})
    h = Harness(lambda node, r: Script(body=[json.dumps(MESSAGE).encode()]), config)
    wrong = await h.request(ASK, path="/v1/messages", headers=[(b"x-api-key", b"nope")])
    assert wrong.status == 401 and wrong.json()["error"]["type"] == "authentication_error"
    right = await h.request(
        ASK, path="/v1/messages", headers=[(b"content-type", b"application/json"), (b"x-api-key", b"local-secret")]
    )
    bearer = await h.request(ASK, path="/v1/messages", headers=[(b"authorization", b"Bearer local-secret")])
    assert right.status == 200 and bearer.status == 200


async def test_the_model_list_takes_the_shape_of_the_client_that_asks() -> None:
    data = {
        "upstream": {
            "nodes": [
                {"name": "gpt", "url": "http://gpt.invalid", "models": {"gpt-4o": "gpt-4o"}},
                {"name": "claude", "url": "http://c.invalid", "api": "anthropic", "models": {"claude-sonnet-4-5": "claude-sonnet-4-5"}},
            ]
        }
    }  # fmt: skip
    h = Harness(lambda node, r: Script(body=[b"{}"]), parse(data, "<test>", env={}))
    anthropic = await h.request(b"", method="GET", path="/v1/models", headers=[(b"anthropic-version", b"2023-06-01")])
    assert anthropic.status == 200
    assert anthropic.json() == {
        "data": [{"type": "model", "id": "claude-sonnet-4-5", "display_name": "claude-sonnet-4-5", "created_at": "1970-01-01T00:00:00Z"}],
        "has_more": False, "first_id": "claude-sonnet-4-5", "last_id": "claude-sonnet-4-5",
    }  # fmt: skip
    openai = await h.request(b"", method="GET", path="/v1/models", headers=[])
    assert [m["id"] for m in openai.json()["data"]] == ["gpt-4o"] and openai.json()["object"] == "list"
    missing = await h.request(
        b"", method="GET", path="/v1/models/nope", headers=[(b"anthropic-version", b"2023-06-01")]
    )
    assert missing.status == 404 and missing.json()["error"]["type"] == "not_found_error"


def test_the_documented_example_of_anthropic_nodes_is_a_valid_config() -> None:
    import tomllib

    page = (Path(__file__).parent.parent / "docs" / "anthropic.md").read_text()
    block = page.split("# Anthropic-format nodes", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
    config = parse(tomllib.loads(block), "anthropic.md", env={"ANTHROPIC_API_KEY": "a", "DEEPSEEK_API_KEY": "b"})
    assert [(n.name, n.api) for n in config.upstream.nodes] == [
        ("anthropic", "anthropic"),
        ("deepseek-anthropic", "anthropic"),
    ]


# ---------------------------------------------------------------------------- the client leaving, a reload, hostile input


async def test_a_client_that_leaves_mid_stream_holds_nothing_and_blames_no_node() -> None:
    import asyncio

    gone = asyncio.Event()

    def handler(node: str, request: Request) -> Script:
        asyncio.get_running_loop().call_later(0.05, gone.set)
        return Script(200, SSE, [*opening(), delta("a"), 0.5, delta("b"), *closing()])

    h = Harness(handler, cfg())
    got = await h.request({**ASK, "stream": True}, path="/v1/messages", gone=gone)
    assert not got.complete and h.last_event()["status"] == 499
    assert h.node("claude").health.counters["passive"].as_dict()["successes"] == 0
    assert h.node("claude").health.state == "healthy"
    h.assert_nothing_held()


async def test_a_reload_mid_stream_keeps_the_stream_and_routes_the_next_request_by_the_new_config() -> None:
    import asyncio

    h = Harness(lambda node, r: Script(200, SSE, [*opening(), delta("a"), 0.1, delta("b"), *closing()]), cfg())

    async def reload_soon() -> None:
        await asyncio.sleep(0.03)
        h.runtime.apply(cfg(anthropic=1))  # the backup leaves the config

    task = asyncio.ensure_future(reload_soon())
    got = await h.request({**ASK, "stream": True}, path="/v1/messages")
    await task
    assert got.complete and text_of(got.body) == "ab" and b"event: error" not in got.body
    assert [n.name for n in h.runtime.upstream.nodes] == ["gpt", "claude"]
    await h.settle()
    h.assert_nothing_held()


async def test_hostile_answers_from_an_anthropic_node_fail_over_and_never_reach_the_client() -> None:
    hostile = [
        Script(200, SSE, [*opening(), b"event: content_block_delta\ndata: {not json\n\n"]),  # a broken event first
        Script(200, SSE, [*opening(), b"data: " + b"[" * 100_000 + b"\n\n"]),  # nesting past the parser
        Script(200, (("content-type", "text/html"),), [b"<html>captive portal</html>"]),  # not an API answer
        Script(302, (("location", "http://elsewhere.invalid/"),), [b""]),  # a redirect: the prompt goes nowhere else
    ]
    for answer in hostile:
        h = Harness(lambda node, r, a=answer: a if node == "claude" else Script(200, SSE, stream("ok")), cfg())
        got = await h.request({**ASK, "stream": True}, path="/v1/messages")
        assert got.headers["x-llm-sidecar-node"] == "claude-backup" and text_of(got.body) == "ok", answer
        h.assert_nothing_held()


async def test_hostile_requests_on_v1_messages_get_anthropic_shaped_errors() -> None:
    h = Harness(lambda node, r: Script(body=[json.dumps(MESSAGE).encode()]), cfg())
    traversal = await h.request(ASK, path="/v1/messages/../chat/completions")
    assert traversal.status == 400 and traversal.json()["error"]["type"] == "invalid_request_error"
    assert h.calls("claude") == 0 and h.calls("gpt") == 0
    put = await h.request(ASK, path="/v1/messages", method="PUT")
    assert put.status == 405 and put.json()["type"] == "error"


# ---------------------------------------------------------------------------- found by an attack


async def test_a_stream_is_over_at_message_stop_even_if_the_node_keeps_the_connection_open() -> None:
    h = Harness(lambda node, r: Script(200, SSE, [*stream("all"), 5.0]), cfg(read=0.3))
    got = await h.request({**ASK, "stream": True}, path="/v1/messages")
    assert got.complete and text_of(got.body) == "all" and b"event: error" not in got.body
    assert h.last_event()["error"] is None and h.node("claude").stats.errors == 0
    h.assert_nothing_held()


async def test_an_error_event_after_content_ends_the_stream_at_once_as_the_nodes_failure() -> None:
    error = event("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    h = Harness(lambda node, r: Script(200, SSE, [*opening(), delta("par"), error, 5.0]), cfg(read=0.3))
    got = await h.request({**ASK, "stream": True}, path="/v1/messages")
    assert got.complete and text_of(got.body) == "par" and got.body.endswith(error)  # the node's own error, once
    assert got.body.count(b"event: error") == 1
    assert h.last_event()["error"] == "stream interrupted: error event mid-stream (Overloaded)"
    assert h.node("claude").stats.errors == 1
    h.assert_nothing_held()


async def test_an_anthropic_clients_other_calls_never_reach_an_openai_node() -> None:
    seen: list[str] = []

    def handler(node: str, request: Request) -> Script:
        seen.append(node)
        return Script(body=[b'{"data": []}'])

    h = Harness(handler, cfg())
    client = [(b"content-type", b"application/json"), (b"anthropic-version", b"2023-06-01")]
    for path in ("/v1/files", "/v1/skills", "/v1/messages/batches"):
        got = await h.request(b"", method="GET", path=path, headers=client)
        assert got.status == 200, path
    legacy = await h.request({"model": "claude-2", "prompt": "hi"}, path="/v1/complete")
    assert legacy.status == 200
    assert seen and "gpt" not in seen


async def test_in_a_mixed_config_failover_and_metrics_follow_each_formats_serving_node() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    h = Harness(lambda node, r: Script(body=[b"{}"]), cfg())  # gpt (openai), claude and claude-backup (anthropic)
    server = ControlServer(h.runtime, Path("/nonexistent.sock"))
    async with TestClient(TestServer(server.app)) as control:
        exposition = await (await control.get("/metrics")).text()
        assert 'llm_sidecar_node_serving{node="claude"} 1.0' in exposition
        assert 'llm_sidecar_node_serving{node="gpt"} 1.0' in exposition
        moved = await control.post("/v1/failover", json={"node": "claude"})  # not the overall first: claude's own
        assert moved.status == 200 and await moved.json() == {"down": "claude", "serving": "claude-backup"}
        last = await control.post("/v1/failover", json={"node": "claude-backup"})
        assert last.status == 409 and "no other node for anthropic requests" in (await last.json())["error"]["message"]
        drained = await control.post("/v1/nodes/gpt/down", json={"force": True})
        assert (await drained.json())[
            "serving"
        ] is None  # nothing serves openai requests now, whatever serves anthropic


async def test_in_a_mixed_config_the_last_node_of_a_format_cannot_be_drained_by_accident() -> None:
    h = Harness(lambda node, r: Script(body=[b"{}"]), cfg(anthropic=1))
    server = ControlServer(h.runtime, Path("/nonexistent.sock"))  # never started: its handler is called directly
    request = make_mocked_request("POST", "/v1/nodes/gpt/down", match_info={"name": "gpt"})
    refused = server._manual(request, down=True)
    assert refused.status == 409 and b"for openai requests" in refused.body  # type: ignore[operator]
    assert not h.node("gpt").health.manual_down
    assert {n["name"]: n["serving"] for n in api.status(h.runtime)["nodes"]} == {"gpt": True, "claude": True}


async def test_a_node_that_quotes_its_key_in_an_error_never_shows_it_to_the_client() -> None:
    echo = b'{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key sk-ant-primary"}}'
    h = Harness(lambda node, r: Script(401, JSON, [echo]), cfg(openai=False, anthropic=1))
    got = await h.request(ASK, path="/v1/messages")
    assert got.status == 401 and b"sk-ant-primary" not in got.body and b"[redacted]" in got.body
    bad = b'{"type":"error","error":{"type":"invalid_request_error","message":"key sk-ant-primary: bad max_tokens"}}'
    h2 = Harness(lambda node, r: Script(400, JSON, [bad]), cfg(openai=False, anthropic=1))
    passed = await h2.request(ASK, path="/v1/messages")  # a 400 passed through as the answer
    assert passed.status == 400 and b"sk-ant-primary" not in passed.body


async def test_an_error_under_a_200_status_fails_over() -> None:
    error = b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'
    h = Harness(
        lambda node, r: Script(200, JSON, [error]) if node == "claude" else Script(body=[json.dumps(MESSAGE).encode()]),
        cfg(),
    )
    got = await h.request(ASK, path="/v1/messages")
    assert got.status == 200 and got.headers["x-llm-sidecar-node"] == "claude-backup"
    assert failed(h) == [{"node": "claude", "reason": "error in a 200 answer (Overloaded)"}]


async def test_a_tool_input_that_looks_like_usage_does_not_inflate_the_counts() -> None:
    tool = {"type": "tool_use", "id": "toolu_1", "name": "t", "input": {"usage": {"cache_read_input_tokens": 9999999}}}
    answer = {**MESSAGE, "content": [tool], "usage": {"input_tokens": 5, "output_tokens": 3,
              "cache_read_input_tokens": None, "cache_creation_input_tokens": None}}  # fmt: skip
    h = Harness(lambda node, r: Script(body=[json.dumps(answer).encode()]), cfg())
    await h.request(ASK, path="/v1/messages")
    record = h.last_event()
    assert (record["tokens_in"], record["tokens_out"], record["tokens_cached"]) == (5, 3, None)


async def test_a_529_with_retry_after_fails_over_at_once() -> None:
    overloaded = b'{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}'

    def handler(node: str, request: Request) -> Script:
        if node == "claude":
            return Script(529, (*JSON, ("retry-after", "3")), [overloaded])
        return Script(body=[json.dumps(MESSAGE).encode()])

    h = Harness(handler, cfg())  # same_node = 1: a 529 without Retry-After gets one same-node retry
    got = await h.request(ASK, path="/v1/messages")
    assert got.headers["x-llm-sidecar-node"] == "claude-backup" and h.calls("claude") == 1


async def test_a_node_key_that_does_not_look_like_one_is_kept_out_of_failure_reasons_too() -> None:
    data = {
        "upstream": {
            "checks": {"passive": {}},
            "nodes": [
                {"name": "claude", "url": "http://c.invalid", "api": "anthropic", "api_key": "${PLAIN}"},
                {"name": "backup", "url": "http://b.invalid", "api": "anthropic", "priority": -1},
            ],
        }
    }
    echo = event("error", {"type": "error", "error": {"type": "authentication_error", "message": "bad key hunter2x"}})
    h = Harness(
        lambda node, r: Script(200, SSE, [*opening(), echo]) if node == "claude" else Script(200, SSE, stream("ok")),
        parse(data, "<test>", env={"PLAIN": "hunter2x"}),
    )
    got = await h.request({**ASK, "stream": True}, path="/v1/messages")
    assert got.headers["x-llm-sidecar-node"] == "backup" and "hunter2x" not in got.headers["x-llm-sidecar-trail"]
    assert failed(h) == [{"node": "claude", "reason": "error event before any token (bad key [redacted])"}]
