"""Model-aware routing, in-process on the mock transport: a `models` table says what a node serves,
health is per model where the failure is the model's, and a conversation stays on one node."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from sidecar.config.load import parse
from sidecar.config.schema import Config
from sidecar.nodes.health import Failure, Source
from sidecar.nodes.mock import Script
from sidecar.nodes.transport import Request, UpstreamError

from .inproc import Harness

OK = b'{"choices": [{"message": {"content": "ok"}}], "usage": {"prompt_tokens": 9, "completion_tokens": 1}}'


def cfg(primary: dict[str, Any] | None = None, backup: dict[str, Any] | None = None, **upstream: Any) -> Config:
    nodes = [
        {"name": "primary", "url": "http://primary.invalid", "priority": 0, **(primary or {})},
        {"name": "backup", "url": "http://backup.invalid", "priority": -1, **(backup or {})},
    ]
    data = {
        "upstream": {
            "timeout": {"connect": 0.05, "send": 1, "read": 1},
            "checks": {"passive": {}},
            "retry": {"backoff": 0.01, "max_backoff": 0.02},
            "nodes": nodes,
            **upstream,
        }
    }
    return parse(data, "<test>", env={})


def ask(model: str | None, *messages: dict[str, str], **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": list(messages) or [{"role": "user", "content": "hi"}], **extra}
    if model is not None:
        body["model"] = model
    return body


def seen_models(h: Harness, node: str) -> list[str]:
    return [json.loads(r.body).get("model") for t in h.transports for n, r in t.calls if n == node]


CHAT_ONLY = {"models": {"deepseek-chat": "deepseek-chat", "gpt-4o": "deepseek-chat"}}
OPENAI = {"models": {"gpt-4o": "gpt-4o", "text-embedding-3-small": "text-embedding-3-small"}}


async def test_a_model_only_the_backup_serves_goes_to_the_backup_while_the_primary_is_healthy() -> None:
    h = Harness(lambda node, r: Script(body=[OK]), cfg(OPENAI, CHAT_ONLY))
    got = await h.request(ask("deepseek-chat"))
    assert got.status == 200 and got.headers["x-llm-sidecar-node"] == "backup" and h.calls("primary") == 0


async def test_a_model_only_the_primary_serves_gets_the_primarys_own_error_not_a_404_elsewhere() -> None:
    h = Harness(
        lambda node, r: Script(500, body=[b'{"error": {"message": "boom"}}']) if node == "primary" else Script(404),
        cfg(OPENAI, CHAT_ONLY),
    )
    got = await h.request(ask("text-embedding-3-small"), path="/v1/embeddings")
    assert got.status == 500 and h.calls("backup") == 0 and got.body == b'{"error": {"message": "boom"}}'


async def test_a_model_no_node_serves_is_a_404_with_the_served_list_and_no_upstream_call() -> None:
    h = Harness(lambda node, r: Script(body=[OK]), cfg(OPENAI, CHAT_ONLY))
    got = await h.request(ask("claude-3"))
    assert got.status == 404 and h.calls("primary") + h.calls("backup") == 0
    error = got.json()["error"]
    assert error["code"] == "model_not_found" and "deepseek-chat, gpt-4o, text-embedding-3-small" in error["message"]
    assert h.last_event()["status"] == 404


async def test_a_star_entry_serves_anything_else_and_no_table_serves_everything() -> None:
    h = Harness(lambda node, r: Script(body=[OK]), cfg(OPENAI, {"models": {"*": "deepseek-chat"}}))
    got = await h.request(ask("anything"))
    assert got.headers["x-llm-sidecar-node"] == "backup" and seen_models(h, "backup") == ["deepseek-chat"]
    h = Harness(lambda node, r: Script(body=[OK]), cfg())
    assert (await h.request(ask("anything"))).headers["x-llm-sidecar-node"] == "primary"


async def test_a_request_without_a_model_may_go_to_every_node() -> None:
    h = Harness(lambda node, r: Script(body=[OK]), cfg(OPENAI, CHAT_ONLY))
    got = await h.request(ask(None))
    assert got.status == 200 and got.headers["x-llm-sidecar-node"] == "primary"


async def test_failover_stays_among_the_nodes_that_serve_the_model() -> None:
    three = {"name": "third", "url": "http://third.invalid", "priority": -2, "models": {"gpt-4o": "gpt-4o"}}
    nodes = [
        {"name": "primary", "url": "http://primary.invalid", "priority": 0, **OPENAI},
        {"name": "backup", "url": "http://backup.invalid", "priority": -1, "models": {"deepseek-chat": "x"}},
        three,
    ]
    config = parse({"upstream": {"checks": {"passive": {}}, "nodes": nodes}}, "<test>", env={})
    h = Harness(lambda node, r: Script(503, body=[b"{}"]) if node == "primary" else Script(body=[OK]), config)
    got = await h.request(ask("gpt-4o"))
    assert got.headers["x-llm-sidecar-node"] == "third" and h.calls("backup") == 0


# ---------------------------------------------------------------------------- health per model


async def test_a_rate_limit_on_one_model_leaves_the_node_serving_the_others() -> None:
    def handler(node: str, request: Request) -> Script:
        if node == "primary" and json.loads(request.body)["model"] == "gpt-4o":
            return Script(429, (("retry-after", "30"),), [b"{}"])
        return Script(body=[OK])

    h = Harness(handler, cfg())
    assert (await h.request(ask("gpt-4o"))).headers["x-llm-sidecar-node"] == "backup"
    assert (await h.request(ask("gpt-4o-mini"))).headers["x-llm-sidecar-node"] == "primary"
    assert (await h.request(ask("gpt-4o"))).headers["x-llm-sidecar-node"] == "backup"
    assert h.node("primary").health.state == "healthy" and h.node("primary").health.blocked_until == 0
    status = [m for m in h.runtime.events.recent if m.get("model") == "gpt-4o" and m["type"] == "health"]
    assert status and status[0]["after"] == "rate limited" and status[0]["node"] == "primary"


async def test_5xx_on_one_model_while_others_succeed_is_the_models_failure_else_the_nodes() -> None:
    def handler(node: str, request: Request) -> Script:
        if node == "primary" and json.loads(request.body)["model"] == "broken":
            return Script(503, body=[b"{}"])
        return Script(body=[OK])

    h = Harness(handler, cfg(retry={"same_node": 0}))
    await h.request(ask("fine"))  # another model succeeded on the primary just now
    for _ in range(3):
        assert (await h.request(ask("broken"))).headers["x-llm-sidecar-node"] == "backup"
    primary = h.node("primary")
    assert primary.health.state == "healthy" and primary.health.counters[Source.PASSIVE].http_failures == 0
    assert not primary.models.available("broken", h.runtime.clock())
    assert (await h.request(ask("fine"))).headers["x-llm-sidecar-node"] == "primary"
    calls = h.calls("primary")
    await h.request(ask("broken"))
    assert h.calls("primary") == calls  # the model is out there: not asked

    lonely = Harness(handler, cfg(retry={"same_node": 0}))  # nothing else succeeded: the node is failing
    for _ in range(3):
        await lonely.request(ask("broken"))
    assert lonely.node("primary").health.state == "ejected"


async def test_connect_failures_are_always_the_nodes() -> None:
    def handler(node: str, request: Request) -> Script:
        if node == "primary" and json.loads(request.body)["model"] == "m2":
            return Script(error=UpstreamError(Failure.TCP, "connect failed (refused)"))
        return Script(body=[OK])

    h = Harness(handler, cfg())
    await h.request(ask("m1"))
    for _ in range(2):
        await h.request(ask("m2"))
    assert h.node("primary").health.counters[Source.PASSIVE].tcp_failures == 2


async def test_when_the_model_is_out_on_every_node_it_is_tried_anyway() -> None:
    h = Harness(lambda node, r: Script(429, (("retry-after", "30"),), [b"{}"]), cfg())
    await h.request(ask("gpt-4o"))
    calls = h.calls("primary") + h.calls("backup")
    got = await h.request(ask("gpt-4o"))
    assert got.status == 429 and h.calls("primary") + h.calls("backup") > calls  # not a fake "no node" 503


# ---------------------------------------------------------------------------- prompt-cache affinity

EQUAL = {
    "upstream": {
        "checks": {"passive": {}},
        "retry": {"backoff": 0.01, "max_backoff": 0.02},
        "nodes": [
            {"name": "a", "url": "http://a.invalid"},
            {"name": "b", "url": "http://b.invalid"},
        ],
    }
}


def conversation(n: int, turns: int) -> list[dict[str, Any]]:
    messages = [{"role": "system", "content": "agent"}, {"role": "user", "content": f"task {n}"}]
    bodies = []
    for t in range(turns):
        bodies.append(ask("gpt-4o", *messages))
        messages = [*messages, {"role": "assistant", "content": f"step {t}"}, {"role": "user", "content": "go on"}]
    return bodies


async def test_a_conversation_stays_on_one_node_and_new_ones_are_spread() -> None:
    h = Harness(lambda node, r: Script(body=[OK]), parse(EQUAL, "<test>", env={}))
    served: dict[int, Counter[str]] = {}
    for turn in range(4):
        for n in range(10):
            got = await h.request(conversation(n, 4)[turn])
            served.setdefault(n, Counter())[got.headers["x-llm-sidecar-node"]] += 1
    assert all(len(nodes) == 1 for nodes in served.values())  # every turn on one node
    firsts = Counter(next(iter(c)) for c in served.values())
    assert firsts["a"] >= 3 and firsts["b"] >= 3  # round-robin still places new conversations


async def test_without_affinity_a_conversation_is_spread() -> None:
    data = {"upstream": {**EQUAL["upstream"], "affinity_ttl": 0}}
    h = Harness(lambda node, r: Script(body=[OK]), parse(data, "<test>", env={}))
    nodes = {(await h.request(body)).headers["x-llm-sidecar-node"] for body in conversation(1, 4)}
    assert nodes == {"a", "b"}


async def test_a_session_header_pins_and_a_failed_node_is_re_pinned() -> None:
    broken: set[str] = set()
    h = Harness(
        lambda node, r: Script(503, body=[b"{}"]) if node in broken else Script(body=[OK]), parse(EQUAL, "t", env={})
    )
    headers = [(b"content-type", b"application/json"), (b"x-session-id", b"agent-7")]
    first = (await h.request(ask("m", {"role": "user", "content": "1"}), headers=headers)).headers["x-llm-sidecar-node"]
    again = (await h.request(ask("m", {"role": "user", "content": "2"}), headers=headers)).headers["x-llm-sidecar-node"]
    assert again == first  # same session, different messages: same node
    broken.add(first)
    moved = (await h.request(ask("m"), headers=headers)).headers["x-llm-sidecar-node"]
    broken.clear()
    assert moved != first
    assert (await h.request(ask("m"), headers=headers)).headers["x-llm-sidecar-node"] == moved  # re-pinned


async def test_cached_prompt_tokens_are_counted() -> None:
    usage = b'{"choices": [], "usage": {"prompt_tokens": 90, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 64}}}'
    h = Harness(lambda node, r: Script(body=[usage]), cfg())
    await h.request(ask("m"))
    assert h.last_event()["tokens_cached"] == 64 and h.node("primary").stats.tokens_cached == 64


async def test_a_rate_limit_is_per_model_with_passive_checks_off_too() -> None:
    def handler(node: str, request: Request) -> Script:
        if node == "primary" and json.loads(request.body)["model"] == "gpt-4o":
            return Script(429, (("retry-after", "30"),), [b"{}"])
        return Script(body=[OK])

    h = Harness(handler, cfg(checks={}))  # a minimal file: no checks tables at all
    assert (await h.request(ask("gpt-4o"))).headers["x-llm-sidecar-node"] == "backup"
    assert (await h.request(ask("gpt-4o-mini"))).headers["x-llm-sidecar-node"] == "primary"
    assert h.runtime.upstream.serving().name == "primary"  # the node is not out: no false failover shown


async def test_a_huge_unknown_model_name_is_bounded_in_the_404_and_the_log() -> None:
    h = Harness(lambda node, r: Script(body=[OK]), cfg(OPENAI, CHAT_ONLY))
    got = await h.request(ask("Z" * 100_000))
    assert got.status == 404 and len(got.body) < 1000
    assert len(h.last_event()["error"]) < 300 and len(h.last_event()["model"]) == 200


async def test_the_routed_model_is_the_top_level_one_not_a_nested_key() -> None:
    body = {"metadata": {"model": "gpt-4o"}, **ask("deepseek-chat")}
    h = Harness(lambda node, r: Script(body=[OK]), cfg(OPENAI, CHAT_ONLY))
    got = await h.request(body)
    assert got.headers["x-llm-sidecar-node"] == "backup" and h.last_event()["model"] == "deepseek-chat"
