"""GET /v1/models and /v1/models/{id}, answered by the sidecar: the pure merge, the fetch, and the real CLI."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

import httpx
import openai
import pytest
from aiohttp import web

from sidecar.config.load import parse
from sidecar.nodes import catalog
from sidecar.nodes.health import Failure
from sidecar.nodes.mock import MockTransport, Script
from sidecar.nodes.transport import Request, UpstreamError
from sidecar.nodes.upstream import Upstream
from sidecar.observe.events import EventHub
from sidecar.proxy import models

from .conftest import NODE_KEYS, cli_env, two_node_config

MODELS = "/v1/models"
FAKE_LIST = ["deepseek-chat", "gpt-4o-mini"]  # what the fake provider's /v1/models lists


def node(name: str, url: str, priority: int, key: str, models: dict[str, str] | None = None) -> dict[str, Any]:
    table = {"name": name, "url": url, "priority": priority, "api_key": "${" + key + "}"}
    return table if models is None else {**table, "models": models}


def tables(primary: Any, backup: Any, p: dict[str, str] | None, b: dict[str, str] | None, **up: Any) -> Any:
    nodes = [node("primary", primary.url, 0, "PRIMARY_KEY", p), node("backup", backup.url, -1, "BACKUP_KEY", b)]
    return two_node_config(primary, backup, nodes=nodes, **up)


def listing(r: httpx.Response) -> dict[str, str]:
    """id -> owned_by, after checking the answer's shape."""
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and set(body) == {"object", "data"}
    ids = [m["id"] for m in body["data"]]
    assert ids == sorted(set(ids)), "sorted, each id once"
    for m in body["data"]:
        assert m["object"] == "model" and m["created"] == 0 and set(m) == {"id", "object", "created", "owned_by"}
    return {m["id"]: m["owned_by"] for m in body["data"]}


def no_secrets(*answers: httpx.Response) -> None:
    for r in answers:
        seen = r.text + json.dumps(dict(r.headers))
        for key in [*NODE_KEYS.values(), "local-secret"]:
            assert key not in seen


async def manual(car: Any, name: str, state: str) -> None:
    async with car.control() as control:
        # Forced: draining the last usable node is refused (409) otherwise.
        body = {"force": True} if state == "down" else None
        assert (await control.post(f"/v1/nodes/{name}/{state}", json=body)).status_code == 200


# ---------------------------------------------------------------------------- pure parts


def test_requested_paths() -> None:
    assert models.requested("GET", "/v1/models") == ""
    assert models.requested("GET", "/v1/models/gpt-4o") == "gpt-4o"
    assert models.requested("GET", "/v1/models/meta-llama/Llama-3-8B") == "meta-llama/Llama-3-8B"
    assert models.requested("DELETE", "/v1/models/ft:gpt-4o:org:x") is None  # a deletion goes upstream
    assert models.requested("POST", "/v1/models") is None
    for path in ("/v1/models/", "/v1/modelsx", "/v1/models\n", "/v1/chat/completions"):
        assert models.requested("GET", path) is None


def test_parse_ids_keeps_only_bounded_printable_ids() -> None:
    ok = {"data": [{"id": "a"}, {"id": "b/c"}, {"id": "a"}, {"id": "x" * 200}]}
    assert catalog.parse_ids(json.dumps(ok).encode()) == ("a", "b/c", "x" * 200)
    bad = [{"id": i} for i in ("", "x" * 201, "new\nline", "\x1b[2J", "tab\t", "\u202eevil", "\ud800", 7, None)]
    bad += [{"id": ["a"]}, "plain", 3, {"name": "no-id"}]
    assert catalog.parse_ids(json.dumps({"data": [*bad, {"id": "kept"}]}).encode()) == ("kept",)
    many = {"data": [{"id": f"m{i}"} for i in range(10_000)]}
    assert catalog.parse_ids(json.dumps(many).encode()) == tuple(f"m{i}" for i in range(catalog.MAX_IDS))
    for body in (b"<html>", b"", b"\xff\xfe", b"[" * 100_000, b"[]", b'{"data": {}}', b'{"data": null}', b"null"):
        assert catalog.parse_ids(body) is None, body
    assert catalog.parse_ids(b" " * (catalog.MAX_LIST_BYTES + 1)) is None


def states(*nodes: dict[str, Any], checks: dict[str, Any] | None = None) -> tuple[Upstream, list[float]]:
    """An upstream over a mock transport, with a clock the test moves."""
    config = parse({"upstream": {"checks": checks or {"passive": {}}, "nodes": list(nodes)}}, "<test>", env={})
    now = [100.0]
    transport = MockTransport(lambda name, request: Script())  # never asked: these tests are pure
    return Upstream(config, EventHub(), transport, clock=lambda: now[0]), now


def table(name: str, priority: int, models: dict[str, str] | None = None) -> dict[str, Any]:
    base = {"name": name, "url": f"http://{name}.invalid", "priority": priority}
    return base if models is None else {**base, "models": models}


def test_merge_unions_names_once_with_the_first_node_that_serves_each() -> None:
    up, now = states(
        table("low", -1, {"gpt-4o": "deepseek-chat", "only-low": "x"}),
        table("high", 5, {"gpt-4o": "gpt-4o", "embed": "embed"}),
        table("any", 0, {"*": "default", "named": "n"}),
    )
    low, _, anyone = up.nodes
    anyone.upstream_models = ("listed", "gpt-4o")
    low.upstream_models = ("ignored",)  # a node with a table and no "*" serves only its keys
    nodes = models.considered(up.nodes, now[0])
    assert [n.name for n in nodes] == ["high", "any", "low"]  # by priority, not config order
    assert models.merge(nodes) == {
        "embed": "high",
        "gpt-4o": "high",
        "listed": "any",
        "named": "any",
        "only-low": "any",  # "any" takes every name, and comes before "low"
    }
    assert models.owner("unlisted", nodes) == "any"  # "*" serves names no list mentions


def test_down_nodes_leave_the_list_unless_all_are_down() -> None:
    up, now = states(table("a", 1, {"a-model": "x"}), table("b", 0, {"b-model": "y"}))
    a, b = up.nodes
    up.set_manual(a, True)
    assert models.merge(models.considered(up.nodes, now[0])) == {"b-model": "b"}
    b.health.block(now[0] + 30, now[0])  # a Retry-After counts as not usable too
    assert models.merge(models.considered(up.nodes, now[0])) == {"a-model": "a", "b-model": "b"}
    now[0] += 31
    assert models.merge(models.considered(up.nodes, now[0])) == {"b-model": "b"}
    assert models.owner("a-model", models.considered(up.nodes, now[0])) is None


def test_stale_lists_and_the_probe_interval() -> None:
    up, now = states(table("n", 0), checks={"passive": {}})
    (n,) = up.nodes
    assert catalog.stale(n, now[0])
    n.upstream_models, n.upstream_models_at = ("x",), now[0]
    assert not catalog.stale(n, now[0] + catalog.CACHE_SECONDS - 1) and catalog.stale(n, now[0] + catalog.CACHE_SECONDS)
    n.upstream_models = ()  # empty or failed: asked again sooner
    assert catalog.stale(n, now[0] + catalog.RETRY_SECONDS)
    probed, _ = states(table("p", 0), checks={"active": {"interval": 100}})
    (p,) = probed.nodes
    p.upstream_models, p.upstream_models_at = ("x",), now[0]
    assert not catalog.stale(p, now[0] + 150)  # the probe refreshes it every 100 s


async def test_fetch_releases_or_closes_every_response() -> None:
    answers: dict[str, Script] = {
        "ok": Script(200, body=[b'{"data": [{"id": "m1"}', b', {"id": "m2"}]}']),
        "error": Script(500, body=[b'{"data": [{"id": "m1"}]}']),
        "huge": Script(200, body=[b"x" * catalog.MAX_LIST_BYTES, b"more"]),
        "cut": Script(200, body=[b'{"data": [', UpstreamError(Failure.TCP, "connection closed mid-body")]),
        "refused": Script(error=UpstreamError(Failure.TCP, "connect failed")),
    }
    config = parse({"upstream": {"nodes": [table(name, 0) for name in answers]}}, "<test>", env={})
    transport = MockTransport(lambda name, request: answers[name])
    up = Upstream(config, EventHub(), transport)
    got = {n.name: await catalog.fetch(up, n) for n in up.nodes}
    assert got == {"ok": ("m1", "m2"), "error": None, "huge": None, "cut": None, "refused": None}
    assert transport.open == set()
    request: Request = transport.calls[0][1]
    assert request.method == "GET" and str(request.url) == "http://ok.invalid/v1/models"


# ---------------------------------------------------------------------------- through the real CLI


async def test_union_of_declared_names_and_down_nodes(fakes, sidecar, client) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    p = {"gpt-4o": "gpt-4o", "text-embedding-3-small": "text-embedding-3-small"}
    b = {"gpt-4o": "deepseek-chat", "deepseek-reasoner": "deepseek-reasoner"}
    car = await sidecar(tables(primary, backup, p, b))
    both = {"deepseek-reasoner": "backup", "gpt-4o": "primary", "text-embedding-3-small": "primary"}
    r = await client.get(car.url + MODELS, headers={"X-Request-Id": "list-1"})
    assert listing(r) == both and r.headers["x-request-id"] == "list-1"
    assert primary.stats.models == backup.stats.models == 0  # tables only: no provider was asked

    sdk = openai.AsyncOpenAI(base_url=car.url + "/v1", api_key="x", max_retries=0)
    assert sorted(m.id for m in (await sdk.models.list()).data) == sorted(both)
    assert (await sdk.models.retrieve("deepseek-reasoner")).owned_by == "backup"
    with pytest.raises(openai.NotFoundError) as missing:
        await sdk.models.retrieve("no-such-model")
    assert missing.value.body["code"] == "model_not_found"
    assert missing.value.body["message"] == "model 'no-such-model' is not served by any node"

    # The primary drained: the backup serves, its names stay (once each), the primary's own leave.
    await manual(car, "primary", "down")
    assert listing(await client.get(car.url + MODELS)) == {"deepseek-reasoner": "backup", "gpt-4o": "backup"}
    gone = await client.get(car.url + MODELS + "/text-embedding-3-small")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"
    # Everything down: every node's names, rather than an empty list.
    await manual(car, "backup", "down")
    assert listing(await client.get(car.url + MODELS)) == both
    await manual(car, "primary", "auto")
    await manual(car, "backup", "auto")
    assert listing(await client.get(car.url + MODELS)) == both
    assert primary.stats.requests == backup.stats.requests == 0
    await sdk.close()


async def test_the_list_does_not_follow_the_serving_node(fakes, sidecar, client) -> None:
    a, b = await fakes("a"), await fakes("b")
    nodes = [node("a", a.url, 0, "PRIMARY_KEY"), node("b", b.url, 0, "BACKUP_KEY", {"m-b": "gpt-4o", "*": "gpt-4o"})]
    car = await sidecar(two_node_config(a, b, nodes=nodes))
    lists = []
    for i in range(6):  # round-robin inside one level: the serving node alternates (one conversation each)
        body = {"model": "gpt-4o", "messages": [{"role": "user", "content": f"conversation {i}"}]}
        assert (await client.post(car.url + "/v1/chat/completions", json=body)).status_code == 200
        lists.append(listing(await client.get(car.url + MODELS)))
    assert a.stats.chat > 0 and b.stats.chat > 0 and a.stats.chat + b.stats.chat == 6
    # "a" comes first in its level and takes any name: it would be tried first for each of them.
    assert all(one == {**dict.fromkeys(FAKE_LIST, "a"), "m-b": "a"} for one in lists)


async def test_any_name_nodes_list_their_provider_on_demand_cached(fakes, sidecar, client) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    car = await sidecar(two_node_config(primary, backup))  # primary: no table; backup: "*"
    answers = await asyncio.gather(*(client.get(car.url + MODELS) for _ in range(5)))  # a cold cache, at once
    for r in answers:
        assert listing(r) == dict.fromkeys(FAKE_LIST, "primary")  # the primary takes any name first
    assert primary.stats.models == backup.stats.models == 1  # one fetch per node for all five
    for _ in range(3):
        listing(await client.get(car.url + MODELS))
    assert primary.stats.models == backup.stats.models == 1  # cached
    assert hashlib.sha256(f"Bearer {NODE_KEYS['PRIMARY_KEY']}".encode()).hexdigest() in primary.stats.auth_sha256
    # Any id is served by a node that takes any name, listed or not.
    one = await client.get(car.url + MODELS + "/whatever-model")
    assert one.json() == {"id": "whatever-model", "object": "model", "created": 0, "owned_by": "primary"}
    # Failover to the backup: the same ids (both providers list them), now the backup's, still cached.
    await manual(car, "primary", "down")
    assert listing(await client.get(car.url + MODELS)) == dict.fromkeys(FAKE_LIST, "backup")
    assert primary.stats.models == backup.stats.models == 1
    no_secrets(*answers, one)


async def test_a_table_without_star_asks_its_provider_nothing(fakes, sidecar, client) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    car = await sidecar(tables(primary, backup, {"gpt-4o": "gpt-4o"}, None))
    assert listing(await client.get(car.url + MODELS)) == {"gpt-4o": "primary", **dict.fromkeys(FAKE_LIST, "backup")}
    assert (primary.stats.models, backup.stats.models) == (0, 1)


async def test_lists_come_from_the_active_probe(fakes, sidecar, client) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    checks = {"active": {"http_path": "/v1/models", "interval": 30, "timeout": 2}, "passive": {}}
    car = await sidecar(tables(primary, backup, None, {"*": "deepseek-chat", "gpt-4o": "deepseek-chat"}, checks=checks))
    deadline = time.monotonic() + 10
    while not all([(await car.node(n))["active"]["last_probe"] for n in ("primary", "backup")]):
        assert time.monotonic() < deadline, "no probe"
        await asyncio.sleep(0.05)
    assert primary.stats.models == backup.stats.models == 1
    for _ in range(3):
        assert listing(await client.get(car.url + MODELS)) == {
            **dict.fromkeys(FAKE_LIST, "primary"),
            "gpt-4o": "primary",
        }
    assert primary.stats.models == backup.stats.models == 1  # the probes' answers, nothing more


async def test_hostile_provider_lists_are_bounded_and_clean(fakes, sidecar, client) -> None:
    release = asyncio.Event()
    huge = json.dumps({"data": [{"id": f"huge-{i}", "pad": "x" * 1000} for i in range(20_000)]}).encode()
    dirty = ["ok-model", "dup", "dup", "new\nline", "\x1b[2Jclear", "x" * 201, "", "\u202eevil", 5, None]
    bodies: dict[str, bytes] = {
        "many": json.dumps({"data": [{"id": f"many-{i:05}"} for i in range(10_000)]}).encode(),
        "dirty": json.dumps({"data": [{"id": i} for i in dirty] + ["junk", {"id": {"x": 1}}]}).encode(),
        "html": b"<html><body>not json</body></html>",
        "nested": b"[" * 200_000,
        "huge": huge,
    }

    async def models(request: web.Request) -> web.StreamResponse:
        case = request.match_info["case"]
        if case == "hang":
            await release.wait()
            return web.json_response({"data": [{"id": "too-late"}]})
        if case == "error":
            return web.json_response({"error": {"message": "down"}}, status=500)
        return web.Response(body=bodies[case], content_type="text/html" if case == "html" else "application/json")

    app = web.Application()
    app.router.add_get("/{case}/v1/models", models)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        declared = await fakes("declared")
        hostile = [node(c, f"{base}/{c}", 0, "PRIMARY_KEY") for c in [*bodies, "hang", "error"]]
        nodes = [node("declared", declared.url, 1, "BACKUP_KEY", {"gpt-4o": "gpt-4o"}), *hostile]
        # A read timeout longer than the fetch's own bound, so that bound is what ends the hanging fetch.
        slow = {"connect": 1, "send": 5, "read": 30}
        car = await sidecar(two_node_config(declared, declared, nodes=nodes, timeout=slow))
        started = time.monotonic()
        r = await client.get(car.url + MODELS)
        took = time.monotonic() - started
        got = listing(r)
        assert catalog.FETCH_SECONDS - 0.5 < took < catalog.FETCH_SECONDS + 3  # the hanging node, bounded
        many = [m for m in got if m.startswith("many-")]
        assert many == [f"many-{i:05}" for i in range(catalog.MAX_IDS)]
        assert set(got) - set(many) == {"gpt-4o", "ok-model", "dup"}  # nothing of html/nested/huge/hang/error
        # "declared" comes first but serves only gpt-4o; "many" is the first of the rest, which take any name.
        assert got["gpt-4o"] == "declared" and {v for m, v in got.items() if m != "gpt-4o"} == {"many"}
        assert all(m.isprintable() and len(m) <= catalog.MAX_ID_CHARS for m in got)
        assert "\\u" not in r.text and "\\n" not in r.text and len(r.content) < 200_000
        again = time.monotonic()
        assert listing(await client.get(car.url + MODELS)) == got
        assert time.monotonic() - again < 1  # cached: the hanging node is not waited for again at once
        assert (await client.get(car.url + "/healthz")).status_code == 200
        no_secrets(r)
    finally:
        release.set()
        await runner.cleanup()


async def test_ids_with_slashes_keys_and_other_methods(fakes, sidecar, client) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    config = tables(primary, backup, {"meta-llama/Llama-3-8B": "llama3"}, {"gpt-4o": "deepseek-chat"})
    car = await sidecar({**config, "server": {"api_key": "${CLIENT_KEY}"}}, env=cli_env(CLIENT_KEY="local-secret"))
    auth = {"Authorization": "Bearer local-secret"}
    for path in (MODELS, MODELS + "/gpt-4o"):
        denied = await client.get(car.url + path, headers={"X-Request-Id": "nokey"})
        assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
        assert denied.headers["x-request-id"] == "nokey"
    one = await client.get(car.url + MODELS + "/meta-llama/Llama-3-8B", headers=auth)
    assert one.json() == {"id": "meta-llama/Llama-3-8B", "object": "model", "created": 0, "owned_by": "primary"}
    assert one.headers["x-request-id"]
    sdk = openai.AsyncOpenAI(base_url=car.url + "/v1", api_key="local-secret", max_retries=0)
    assert (await sdk.models.retrieve("meta-llama/Llama-3-8B")).owned_by == "primary"  # sent as meta-llama%2F...
    await sdk.close()
    for raw in ("/v1/models/%2e%2e/x", "/v1/models/a%2F..%2Fb", "/v1/models/..;/b"):
        bad = await client.get(car.url + raw, headers=auth)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_path", raw
    # Not GET: the provider's business as before (DELETE /v1/models/{id} deletes a fine-tune).
    deleted = await client.delete(car.url + MODELS + "/ft:gpt-4o:org:x", headers=auth)
    assert deleted.status_code == 404 and "unknown path /v1/models/ft:gpt-4o:org:x" in deleted.text
    assert primary.stats.paths == ["/v1/models/ft:gpt-4o:org:x"]
    no_secrets(one, deleted)


async def test_the_probe_keeps_the_list_of_nodes_that_take_any_name() -> None:
    from sidecar.nodes.checker import probe

    listed = json.dumps({"data": [{"id": "p1"}, {"id": "bad\nid"}]}).encode()
    answers = {
        "any": Script(200, body=[listed]),
        "named": Script(200, body=[listed]),
        "huge": Script(200, body=[b"x" * catalog.MAX_LIST_BYTES, b"more"]),
        "failing": Script(503, body=[listed]),
    }
    nodes = [table("any", 0), table("named", 0, {"m": "m"}), table("huge", 0), table("failing", 0)]
    config = parse({"upstream": {"checks": {"active": {}}, "nodes": nodes}}, "<test>", env={})
    transport = MockTransport(lambda name, request: answers[name])
    up = Upstream(config, EventHub(), transport)
    for n in up.nodes:
        await probe(up, n)
    got = {n.name: n.upstream_models for n in up.nodes}
    assert got == {"any": ("p1",), "named": None, "huge": (), "failing": None}  # a table without "*": not parsed
    assert up.by_name["huge"].health.healthy and up.by_name["huge"].last_probe["status"] == 200
    assert transport.open == set()
