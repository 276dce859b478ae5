"""The proxy over real loopback sockets: fake providers in front of the real `llm-sidecar run`."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

import httpx
import pytest

from .conftest import NODE_KEYS, chat, free_port, two_node_config

CHAT = "/v1/chat/completions"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def test_non_stream_pass_through_with_headers(fakes, sidecar, client) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    car = await sidecar(two_node_config(primary, backup))
    r = await client.post(car.url + CHAT, json=chat(), headers={"X-Request-Id": "req-42"})
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"].startswith("Hello from primary")
    assert r.headers["x-llm-sidecar-node"] == "primary"
    assert r.headers["x-llm-sidecar-attempts"] == "1"
    assert r.json()["model"] == "gpt-4o"  # primary has no rewrite
    assert (primary.stats.chat, backup.stats.chat) == (1, 0)
    assert "id=req-42" in car.log() and "model=gpt-4o" in car.log()


async def test_key_injection_provider_never_sees_client_key(fakes, sidecar, client) -> None:
    primary, backup = await fakes("primary", fail_rate=1.0), await fakes("backup")
    car = await sidecar(two_node_config(primary, backup))
    r = await client.post(car.url + CHAT, json=chat(), headers={"Authorization": "Bearer client-secret"})
    assert r.status_code == 200
    assert primary.stats.auth_sha256 == [sha("Bearer " + NODE_KEYS["PRIMARY_KEY"])]
    assert backup.stats.auth_sha256 == [sha("Bearer " + NODE_KEYS["BACKUP_KEY"])]
    assert sha("Bearer client-secret") not in primary.stats.auth_sha256 + backup.stats.auth_sha256
    for key in NODE_KEYS.values():
        assert key not in car.log()


async def test_upstream_cookies_are_not_replayed_to_other_requests(fakes, sidecar, client) -> None:
    primary = await fakes("primary")
    # a host name, not an IP: cookie jars keep cookies only for host names
    car = await sidecar(two_node_config(f"http://localhost:{primary.port}", await fakes("backup")))
    for _ in range(3):
        r = await client.post(car.url + CHAT, json=chat())
        assert "__cf_bm" in r.headers["set-cookie"]  # passed to the client, which may keep it
        client.cookies.clear()
    assert primary.stats.with_cookie == 0
    # A client that kept it (and would send it to whichever node serves next) sends it to no node.
    r = await client.post(car.url + CHAT, json=chat(), headers={"cookie": "__cf_bm=from-another-node"})
    assert r.status_code == 200 and primary.stats.with_cookie == 0


async def test_node_url_path_prefix_and_query_are_kept(fakes, sidecar, client) -> None:
    primary = await fakes("primary")
    car = await sidecar(two_node_config(primary.url + "/api", await fakes("backup")))
    r = await client.post(car.url + CHAT + "?api-version=2024-06-01", json=chat())
    assert r.status_code == 200 and r.headers["x-llm-sidecar-node"] == "primary"
    assert primary.stats.paths[-1] == "/api/v1/chat/completions?api-version=2024-06-01"


async def test_model_rewrite_on_backup(fakes, sidecar, client) -> None:
    primary, backup = await fakes("primary", fail_rate=1.0), await fakes("backup")
    car = await sidecar(two_node_config(primary, backup))
    r = await client.post(car.url + CHAT, json=chat(model="gpt-4o"))
    assert r.status_code == 200 and r.json()["model"] == "deepseek-chat"
    assert primary.stats.models_seen == ["gpt-4o"] and backup.stats.models_seen == ["deepseek-chat"]


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ({"fault": "error", "status": 500}, "http 500"),
        ({"fault": "error", "status": 503}, "http 503"),
        ({"fault": "error", "status": 401}, "auth (401)"),
        ({"fault": "rate_limit", "retry_after": 30}, "rate limited (429)"),
        ({"fault": "close"}, "connection closed before a response"),
        ({"fault": "hang"}, "read timeout"),
        ({"fault": "silent"}, "read timeout"),
        ({"fault": "drop"}, "connection closed mid-body"),
    ],
)
async def test_failed_primary_is_served_by_backup(fakes, sidecar, client, behaviour, reason) -> None:
    primary = await fakes("primary", fail_rate=1.0, **behaviour)
    backup = await fakes("backup")
    car = await sidecar(two_node_config(primary, backup))
    r = await client.post(car.url + CHAT, json=chat())
    assert r.status_code == 200, r.text
    assert r.headers["x-llm-sidecar-node"] == "backup"
    assert r.headers["x-llm-sidecar-attempts"] == "2"
    assert f"failed=[primary:{reason}]" in car.log()


@pytest.mark.parametrize("fault", ["silent", "drop", "close", "error"])
async def test_failed_primary_stream_is_served_by_backup(fakes, sidecar, client, fault) -> None:
    primary = await fakes("primary", fail_rate=1.0, fault=fault, drop_after=0)
    backup = await fakes("backup")
    car = await sidecar(two_node_config(primary, backup))
    async with client.stream("POST", car.url + CHAT, json=chat(stream=True)) as r:
        body = (await r.aread()).decode()
    assert r.status_code == 200 and r.headers["x-llm-sidecar-node"] == "backup"
    assert "Hello from backup" in body and body.rstrip().endswith("data: [DONE]")
    assert "Hello from primary" not in body


async def test_refused_connection_fails_over(fakes, sidecar, client) -> None:
    backup = await fakes("backup")
    car = await sidecar(two_node_config(f"http://127.0.0.1:{free_port()}", backup))
    r = await client.post(car.url + CHAT, json=chat())
    assert r.status_code == 200 and r.headers["x-llm-sidecar-node"] == "backup"
    assert "primary:connect failed" in car.log()


async def test_429_retry_after_keeps_node_out(fakes, sidecar, client) -> None:
    primary = await fakes("primary", fail_rate=1.0, fault="rate_limit", retry_after=30)
    backup = await fakes("backup")
    car = await sidecar(two_node_config(primary, backup))
    assert (await client.post(car.url + CHAT, json=chat())).status_code == 200
    primary.set(fail_rate=0.0)
    for _ in range(3):
        r = await client.post(car.url + CHAT, json=chat())
        assert r.headers["x-llm-sidecar-node"] == "backup"
    assert primary.stats.chat == 1  # never asked again while its Retry-After runs


async def test_client_errors_pass_through_without_failover(fakes, sidecar, client) -> None:
    primary = await fakes("primary", fail_rate=1.0, status=400)
    backup = await fakes("backup")
    car = await sidecar(two_node_config(primary, backup))
    for _ in range(4):
        r = await client.post(car.url + CHAT, json=chat())
        assert r.status_code == 400 and r.headers["x-llm-sidecar-node"] == "primary"
    assert backup.stats.chat == 0
    assert (await car.node("primary"))["state"] == "healthy"


async def test_all_nodes_down_gives_openai_style_json_error(fakes, sidecar, client) -> None:
    car = await sidecar(two_node_config(f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"))
    r = await client.post(car.url + CHAT, json=chat())
    assert r.status_code == 502
    assert r.headers["x-should-retry"] == "false"
    error = r.json()["error"]
    assert set(error) == {"message", "type", "code"}
    assert "primary: connect failed" in error["message"] and "backup: connect failed" in error["message"]
    assert error["code"] == "upstream_unavailable"


async def test_last_upstream_error_is_returned_when_all_fail(fakes, sidecar, client) -> None:
    primary = await fakes("primary", fail_rate=1.0, status=503)
    backup = await fakes("backup", fail_rate=1.0, fault="rate_limit", retry_after=5)
    car = await sidecar(two_node_config(primary, backup))
    r = await client.post(car.url + CHAT, json=chat())
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    assert r.headers["x-should-retry"] == "false" and r.headers["x-llm-sidecar-attempts"] == "2"


async def test_bad_requests_get_json_errors_and_sidecar_keeps_serving(fakes, sidecar, client) -> None:
    backup = await fakes("backup")
    car = await sidecar(
        {**two_node_config(f"http://127.0.0.1:{free_port()}", backup), "server": {"max_body_bytes": 1000}}
    )
    big = await client.post(car.url + CHAT, json=chat(padding="x" * 2000))
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    # the primary is down and the backup rewrites the model, so the body must be JSON
    bad = await client.post(car.url + CHAT, content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_json"
    unknown = await client.get(car.url + "/nope")
    assert unknown.status_code == 404 and "error" in unknown.json()
    ok = await client.post(car.url + CHAT, json=chat())
    assert ok.status_code == 200


async def test_client_api_key_is_enforced_when_set(fakes, sidecar, client) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    config = {**two_node_config(primary, backup), "server": {"api_key": "${CLIENT_KEY}"}}
    from .conftest import cli_env

    car = await sidecar(config, env=cli_env(CLIENT_KEY="local-secret"))
    denied = await client.post(car.url + CHAT, json=chat(), headers={"Authorization": "Bearer wrong"})
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "invalid_api_key"
    allowed = await client.post(car.url + CHAT, json=chat(), headers={"Authorization": "Bearer local-secret"})
    assert allowed.status_code == 200
    assert primary.stats.chat == 1 and sha("Bearer local-secret") not in primary.stats.auth_sha256


async def test_stream_chunks_arrive_as_the_provider_sends_them(fakes, sidecar, client) -> None:
    primary = await fakes("primary", chunks=5, chunk_delay=0.3)
    car = await sidecar(two_node_config(primary, await fakes("backup")))
    arrivals: list[float] = []
    async with client.stream("POST", car.url + CHAT, json=chat(stream=True)) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                arrivals.append(time.monotonic())
    # 1 role chunk + 5 words + stop + [DONE]; the provider spaces words 0.3 s apart
    assert len(arrivals) == 8
    assert arrivals[-1] - arrivals[0] >= 1.2  # the first chunk was not held back until the last


async def test_keepalive_comments_are_forwarded_but_do_not_end_the_hold(fakes, sidecar, client) -> None:
    primary = await fakes("primary", fail_rate=1.0, fault="keepalive", keepalive_for=0.6)
    car = await sidecar(two_node_config(primary, await fakes("backup")))
    async with client.stream("POST", car.url + CHAT, json=chat(stream=True)) as r:
        body = (await r.aread()).decode()
    assert r.headers["x-llm-sidecar-node"] == "primary"
    assert body.startswith(": keep-alive") and "data: [DONE]" in body
    record = [line for line in car.log().splitlines() if "stream=yes" in line][-1]
    ttfb = float(record.split("ttfb_ms=")[1].split()[0])
    ttft = float(record.split("ttft_ms=")[1].split()[0])
    assert ttft - ttfb >= 400  # first token came ~0.6 s after the first keep-alive byte


async def test_break_after_bytes_ends_stream_with_sse_error(fakes, sidecar, client) -> None:
    primary = await fakes("primary", fail_rate=1.0, fault="drop", drop_after=2)
    car = await sidecar(two_node_config(primary, await fakes("backup")))
    async with client.stream("POST", car.url + CHAT, json=chat(stream=True)) as r:
        body = (await r.aread()).decode()
    assert "Hello from primary" in body
    last = [line for line in body.splitlines() if line.startswith("data: ")][-1]
    error = json.loads(last.removeprefix("data: "))["error"]
    assert error["code"] == "stream_interrupted" and "primary" in error["message"]
    status = await car.node("primary")
    assert status["passive"]["counters"]["tcp_failures"] == 1


async def test_probes_never_end_an_ejection_so_a_hanging_chat_endpoint_does_not_flap(fakes, sidecar, client) -> None:
    # The chat endpoint hangs while /v1/models answers: probes stay green, the node stays ejected.
    primary = await fakes("primary", fail_rate=1.0, fault="hang", faults_on_models=False)
    backup = await fakes("backup")
    checks = {
        "active": {"interval": 0.1, "timeout": 1},
        "passive": {"unhealthy": {"timeouts": 1}, "base_ejection_time": 2},
    }
    config = two_node_config(primary, backup, checks=checks, timeout={"connect": 1, "send": 5, "read": 0.5})
    car = await sidecar(config)
    stalled = 0
    for _ in range(12):
        started = time.monotonic()
        r = await client.post(car.url + CHAT, json=chat())
        assert r.status_code == 200 and r.headers["x-llm-sidecar-node"] == "backup"
        stalled += time.monotonic() - started >= 0.5
        await asyncio.sleep(0.05)
    assert stalled == 1  # only the request that found out; no flapping
    node = await car.node("primary")
    assert node["state"] == "ejected" and node["active"]["healthy"] and node["reason"] == "read timeout"
    # Once the ejection time has passed, one trial request decides; a fixed node is back.
    primary.set(fail_rate=0.0)
    await asyncio.sleep(2.1)
    assert (await client.post(car.url + CHAT, json=chat())).headers["x-llm-sidecar-node"] == "primary"
    assert (await car.node("primary"))["state"] == "healthy"


async def test_failed_probes_mark_unhealthy_and_passing_probes_restore(fakes, sidecar, client) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    checks = {"active": {"interval": 0.1, "timeout": 1, "healthy": {"successes": 2}}, "passive": {}}
    car = await sidecar(two_node_config(primary, backup, checks=checks))
    primary.set(fail_rate=1.0)  # probes fail too
    deadline = time.monotonic() + 5
    while (await car.node("primary"))["state"] != "unhealthy" and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    chats = primary.stats.chat
    for _ in range(3):
        assert (await client.post(car.url + CHAT, json=chat())).headers["x-llm-sidecar-node"] == "backup"
    assert primary.stats.chat == chats  # unhealthy: no traffic, no retries on it
    primary.set(fail_rate=0.0)
    deadline = time.monotonic() + 5
    while (await car.node("primary"))["state"] != "healthy" and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    node = await car.node("primary")
    assert node["state"] == "healthy" and node["reason"] == "probe http 200"
    assert (await client.post(car.url + CHAT, json=chat())).headers["x-llm-sidecar-node"] == "primary"


async def test_passive_only_node_recovers_through_a_probe_and_no_user_request_is_a_trial(
    fakes, sidecar, client
) -> None:
    primary, backup = await fakes("primary", fail_rate=1.0), await fakes("backup")
    checks = {"passive": {"unhealthy": {"http_failures": 1}, "base_ejection_time": 0.5}}
    car = await sidecar(two_node_config(primary, backup, checks=checks))
    assert (await client.post(car.url + CHAT, json=chat())).headers["x-llm-sidecar-node"] == "backup"
    assert (await car.node("primary"))["state"] == "ejected"
    chats = primary.stats.chat
    await asyncio.sleep(0.6)  # past the ejection time: with probes, still no trial by a user request
    for _ in range(3):
        assert (await client.post(car.url + CHAT, json=chat())).headers["x-llm-sidecar-node"] == "backup"
    primary.set(fail_rate=0.0)
    deadline = time.monotonic() + 10
    while (await car.node("primary"))["state"] != "healthy" and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    node = await car.node("primary")
    assert node["state"] == "healthy" and node["reason"] == "recovered (probe gpt-4o ok)"
    probes = primary.stats.chat - chats
    assert probes >= 1 and node["traffic"]["probes"] == probes  # every chat the primary saw since was a probe
    assert (await client.post(car.url + CHAT, json=chat())).headers["x-llm-sidecar-node"] == "primary"


async def test_passive_only_node_recovers_through_a_trial_request(fakes, sidecar, client) -> None:
    primary, backup = await fakes("primary", fail_rate=1.0), await fakes("backup")
    checks = {"passive": {"unhealthy": {"http_failures": 1}, "base_ejection_time": 0.5}}
    car = await sidecar(two_node_config(primary, backup, checks=checks, recovery="trial"))
    assert (await client.post(car.url + CHAT, json=chat())).headers["x-llm-sidecar-node"] == "backup"
    assert (await car.node("primary"))["state"] == "ejected"
    primary.set(fail_rate=0.0)
    assert (await client.post(car.url + CHAT, json=chat())).headers["x-llm-sidecar-node"] == "backup"
    await asyncio.sleep(0.6)
    r = await client.post(car.url + CHAT, json=chat())
    assert r.headers["x-llm-sidecar-node"] == "primary"  # the trial
    assert (await car.node("primary"))["state"] == "healthy"


async def test_two_hundred_concurrent_streams_complete(fakes, sidecar) -> None:
    primary = await fakes("primary", chunks=10, chunk_delay=0.02)
    car = await sidecar(two_node_config(primary, await fakes("backup")))

    async def one(c: httpx.AsyncClient) -> str:
        async with c.stream("POST", car.url + CHAT, json=chat(stream=True)) as r:
            return (await r.aread()).decode()

    limits = httpx.Limits(max_connections=250, max_keepalive_connections=250)
    async with httpx.AsyncClient(timeout=60, limits=limits) as c:
        bodies = await asyncio.gather(*(one(c) for _ in range(200)))
    broken = [b for b in bodies if not (b.rstrip().endswith("data: [DONE]") and b.count("word") == 10)]
    assert not broken, (len(broken), broken[0][-600:], car.log()[-3000:])
    assert primary.stats.chat == 200


async def test_other_v1_paths_and_healthz(fakes, sidecar, client) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    car = await sidecar(two_node_config(primary, backup))
    models = await client.get(car.url + "/v1/models")
    assert models.status_code == 200 and models.json()["object"] == "list"
    health = await client.get(car.url + "/healthz")
    assert health.status_code == 200 and health.json()["serving"] == "primary"


async def test_openai_sdk_as_the_client(fakes, sidecar) -> None:
    from openai import APIError, AsyncOpenAI

    primary = await fakes("primary", fail_rate=1.0)
    backup = await fakes("backup")
    car = await sidecar(two_node_config(primary, backup))
    sdk = AsyncOpenAI(base_url=car.url + "/v1", api_key="sk-agent", max_retries=0)
    done = await sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert done.choices[0].message.content.startswith("Hello from backup") and done.model == "deepseek-chat"
    assert done.usage.completion_tokens == 5
    primary.set(fail_rate=0.0)
    stream = await sdk.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text.startswith("Hello from")
    primary.set(fail_rate=1.0, fault="drop", drop_after=2)
    backup.set(fail_rate=1.0, fault="drop", drop_after=2)
    with pytest.raises(APIError, match="failed mid-stream"):
        broken = await sdk.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        async for _ in broken:
            pass
    await sdk.close()


async def test_sigterm_lets_an_in_flight_stream_finish(fakes, sidecar, client) -> None:
    primary = await fakes("primary", chunks=8, chunk_delay=0.15)
    car = await sidecar(two_node_config(primary, await fakes("backup")))
    async with client.stream("POST", car.url + CHAT, json=chat(stream=True)) as r:
        lines = r.aiter_lines()
        assert (await anext(lines)).startswith("data: ")
        car.proc.terminate()
        rest = [line async for line in lines]
    assert rest[-1] == "data: [DONE]" or rest[-2] == "data: [DONE]"
    assert car.proc.wait(10) == 0
    assert not car.socket.exists()


async def test_json_access_log_has_one_parsable_line_per_request(fakes, sidecar, client) -> None:
    primary = await fakes("primary", fail_rate=1.0)
    car = await sidecar(two_node_config(primary, await fakes("backup")), "--log-format", "json")
    await client.post(car.url + CHAT, json=chat(), headers={"X-Request-Id": "json-1"})
    lines = [json.loads(line) for line in car.log().splitlines() if line.startswith("{")]
    (record,) = [r for r in lines if r.get("event") == "request"]
    assert record["id"] == "json-1" and record["node"] == "backup" and record["status"] == 200
    assert [(a["node"], a["reason"]) for a in record["failed"]] == [("primary", "http 500")] and record["attempts"] == 2
    assert any(r.get("level") == "info" and "listening on" in r.get("message", "") for r in lines)
