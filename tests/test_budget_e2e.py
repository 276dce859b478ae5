"""Budgets through a real sidecar: a node past its own is out and traffic fails over; the sidecar past its
own answers 429 in the client's format; the overshoot under concurrency is bounded by the requests in
flight; spend survives a restart (from the journal); and status and /metrics say what was spent."""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import httpx
import openai
import pytest

from .conftest import chat, cli, two_node_config

COST = 0.012  # a fake's answer: 7 prompt and 5 completion tokens at $1,000 per million each
PRICE = {"input": 1000, "output": 1000}


def priced(primary: Any, backup: Any, **extra: Any) -> dict[str, Any]:
    config = two_node_config(primary, backup)
    for node in config["upstream"]["nodes"]:
        node["price"] = PRICE
    config.update(extra)
    return config


async def test_a_node_past_its_budget_is_out_and_traffic_fails_over(
    fakes: Any, sidecar: Any, client: httpx.AsyncClient
) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    config = priced(primary, backup)
    config["upstream"]["nodes"][0]["budget"] = {"daily_usd": 0.05}  # spent by the 5th request
    car = await sidecar(config)
    served = []
    for _ in range(8):
        answer = await client.post(f"{car.url}/v1/chat/completions", json=chat())
        assert answer.status_code == 200
        served.append(answer.headers["x-llm-sidecar-node"])
    assert served == ["primary"] * 5 + ["backup"] * 3
    status = await car.status()
    node = next(n for n in status["nodes"] if n["name"] == "primary")
    assert node["budget"].startswith("node primary's daily budget of $0.0500 (budget.daily_usd) is spent: $0.0600")
    assert "resets at 00:00 local time" in node["budget"] and not node["serving"] and status["serving"] == "backup"
    spend = status["spend"]
    assert spend["today_usd"] == pytest.approx(8 * COST) and spend["over"] is None
    assert {(m["node"], m["model"], m["requests"]) for m in spend["models"]} == {
        ("primary", "gpt-4o", 5),
        ("backup", "deepseek-chat", 3),
    }
    metrics = (await client.get(f"{car.url}/metrics")).text
    assert 'llm_sidecar_spend_usd_total{model="gpt-4o",node="primary"} 0.06' in metrics
    assert 'llm_sidecar_node_available{node="primary"} 0.0' in metrics
    log = car.log()
    assert "node primary: healthy -> budget (node primary's daily budget of $0.0500" in log
    table = (await asyncio.to_thread(cli, "status", "--control-socket", str(car.socket))).stdout
    row = next(line for line in table.splitlines() if line.startswith("primary"))
    assert "budget spent" in row and row.split().count("budget") == 2 and "healthy" not in row  # STATE says why
    assert f"spend {spend['day']}: $0.0960 today, $0.0960 this month" in table
    spent = table[table.index("spend ") :].splitlines()
    assert max(map(len, spent)) <= 80  # a long line wraps, indented
    flat = " ".join(table.split())
    assert "primary: $0.0600 of $0.0500 today, $0.0600 this month; out: node primary's daily budget" in flat
    assert "    backup deepseek-chat: $0.0360 today (3 requests)" in table
    # A raised budget, on reload, takes the node back.
    config["upstream"]["nodes"][0]["budget"] = {"daily_usd": 5}
    import tomli_w

    car.config_path.write_text(tomli_w.dumps({**config, "server": {"listen": f"127.0.0.1:{car.port}",
                                                                  "control_socket": str(car.socket)}}))  # fmt: skip
    async with car.control() as control:
        assert (await control.post("/v1/reload")).status_code == 200
    answer = await client.post(f"{car.url}/v1/chat/completions", json=chat())
    assert answer.headers["x-llm-sidecar-node"] == "primary"
    assert "node primary: budget -> healthy (budget raised or reset)" in car.log()


async def test_the_sidecar_past_its_budget_answers_429_in_the_clients_format(fakes: Any, sidecar: Any) -> None:
    openai_fake = await fakes("primary")
    claude_fake = await fakes("claude", api="anthropic")
    config = {
        "budget": {"daily_usd": 0.02},
        "upstream": {
            "retries": 1,
            "nodes": [
                {"name": "primary", "url": openai_fake.url, "api_key": "${PRIMARY_KEY}", "price": PRICE},
                {
                    "name": "claude",
                    "url": claude_fake.url,
                    "api": "anthropic",
                    "api_key": "${BACKUP_KEY}",
                    "price": PRICE,
                },
            ],
        },
    }
    car = await sidecar(config)
    oai = openai.AsyncOpenAI(base_url=f"{car.url}/v1", api_key="unused")
    claude = anthropic.AsyncAnthropic(base_url=car.url, api_key="unused")
    await oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    await claude.messages.create(model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    seen = (openai_fake.stats.requests, claude_fake.stats.requests)
    with pytest.raises(openai.RateLimitError) as refused:
        await oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    error = refused.value.body
    assert isinstance(error, dict) and error["code"] == "budget_exceeded" and error["type"] == "insufficient_quota"
    assert "the sidecar's daily budget of $0.0200 (budget.daily_usd) is spent" in error["message"]
    assert "resets at 00:00 local time" in error["message"]
    headers = refused.value.response.headers
    assert headers["x-should-retry"] == "false" and int(headers["retry-after"]) > 0
    with pytest.raises(anthropic.RateLimitError) as refused_claude:
        await claude.messages.create(model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert refused_claude.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    # The SDKs obeyed x-should-retry (no retries), and no node was asked.
    assert (openai_fake.stats.requests, claude_fake.stats.requests) == seen
    status = await car.status()
    assert status["spend"]["over"] is not None and status["spend"]["today_usd"] == pytest.approx(2 * COST)
    assert car.log().count("budget: the sidecar's daily budget of $0.0200 (budget.daily_usd) is spent") == 1


async def test_the_overshoot_under_concurrency_is_at_most_the_requests_in_flight(fakes: Any, sidecar: Any) -> None:
    """The bound: a request is admitted while the budget is not spent, and adds its cost when it ends, so
    what is spent past the budget is at most the cost of the requests in flight when it was reached."""
    primary, backup = await fakes("primary", latency=0.2), await fakes("backup", latency=0.2)
    budget = 0.1  # nine requests' worth
    car = await sidecar(priced(primary, backup, budget={"daily_usd": budget}))
    in_flight = 0
    most = 0
    statuses: list[int] = []

    async def agent(c: httpx.AsyncClient) -> None:
        nonlocal in_flight, most
        for _ in range(6):
            in_flight += 1
            most = max(most, in_flight)
            answer = await c.post(f"{car.url}/v1/chat/completions", json=chat())
            in_flight -= 1
            statuses.append(answer.status_code)

    async with httpx.AsyncClient(timeout=30) as c:
        await asyncio.gather(*(agent(c) for _ in range(8)))
    spent = (await car.status())["spend"]["today_usd"]
    ok = statuses.count(200)
    assert set(statuses) == {200, 429} and spent == pytest.approx(ok * COST)
    assert budget <= spent <= budget + most * COST, (spent, most)
    print(f"budget ${budget}, spent ${spent:.3f} by {ok} answers with at most {most} in flight at ${COST} each")


async def test_spend_survives_a_restart(fakes: Any, sidecar: Any, client: httpx.AsyncClient) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    config = priced(primary, backup, budget={"daily_usd": 0.03})
    car = await sidecar(config)
    for _ in range(3):
        assert (await client.post(f"{car.url}/v1/chat/completions", json=chat())).status_code == 200
    before = (await car.status())["spend"]
    assert before["over"] is not None
    assert car.stop() == 0  # a graceful stop writes what the journal holds
    again = await sidecar(config, env=car.env, port=car.port)  # the same journal, the same sidecar
    after = (await again.status())["spend"]
    assert after["today_usd"] == pytest.approx(before["today_usd"]) and after["over"] is not None
    assert after["nodes"] == before["nodes"]
    assert after["models"] == before["models"] and after["models"][0]["requests"] == 3  # a sum with its count
    assert (await client.post(f"{again.url}/v1/chat/completions", json=chat())).status_code == 429
    assert "spend read back from the journal: $0.0360 today" in again.log()
    # Another sidecar (another listen address) sharing the journal file has spent nothing of its own.
    other = await sidecar(config, env=car.env)
    assert (await other.status())["spend"]["today_usd"] == 0
    assert (await client.post(f"{other.url}/v1/chat/completions", json=chat())).status_code == 200
