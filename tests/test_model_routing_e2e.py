"""Model-aware routing through the real `llm-sidecar run` against fake providers on loopback: the four
problems it fixes, per-model rate limits in status, and prompt-cache affinity measured with the fake's
simulated prompt cache (the cached share through the sidecar, with and without affinity, is printed)."""

from __future__ import annotations

import asyncio
import random
import re
from typing import Any

import httpx

from .conftest import cli

CHAT = "/v1/chat/completions"


def node(name: str, fake: Any, priority: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "url": fake.url, "priority": priority, "api_key": f"${{{name.upper()}_KEY}}", **extra}


def config(*nodes: dict[str, Any], **upstream: Any) -> dict[str, Any]:
    checks = {"passive": {"base_ejection_time": 30}}
    timeout = {"connect": 1, "send": 5, "read": 3}
    return {"upstream": {"timeout": timeout, "checks": checks, "nodes": list(nodes), **upstream}}


async def chat(client: httpx.AsyncClient, car: Any, model: str, *messages: dict[str, str], **kw: Any) -> httpx.Response:
    body = {"model": model, "messages": list(messages) or [{"role": "user", "content": "hi"}]}
    return await client.post(car.url + CHAT, json=body, **kw)


async def test_each_model_goes_to_the_nodes_that_serve_it(fakes, sidecar, client) -> None:
    openai, deepseek = await fakes("openai"), await fakes("deepseek")
    car = await sidecar(
        config(
            node("openai", openai, 0, models={"gpt-4o": "gpt-4o", "o1": "o1"}),
            node("deepseek", deepseek, -1, models={"deepseek-chat": "deepseek-chat", "gpt-4o": "deepseek-chat"}),
        ),
        env={"OPENAI_KEY": "k1", "DEEPSEEK_KEY": "k2"},
    )
    # 1. A model only the backup serves, while the primary is healthy: straight to the backup.
    r = await chat(client, car, "deepseek-chat")
    assert r.status_code == 200 and r.headers["x-llm-sidecar-node"] == "deepseek" and openai.provider.stats.chat == 0
    # 2. A model only the primary serves, with the primary failing: its own error, not the backup's 404.
    openai.provider.behaviour.update({"fail_rate": 1.0, "fault": "error", "status": 500})
    r = await chat(client, car, "o1")
    assert r.status_code == 500 and deepseek.provider.stats.requests == 1  # only the earlier chat
    # A model both serve fails over as ever, renamed for the backup.
    r = await chat(client, car, "gpt-4o")
    assert r.status_code == 200 and r.headers["x-llm-sidecar-node"] == "deepseek"
    assert deepseek.provider.stats.models_seen[-1] == "deepseek-chat"
    # A model nobody serves: 404 JSON naming what is served, no node asked.
    before = openai.provider.stats.requests + deepseek.provider.stats.requests
    r = await chat(client, car, "claude-3-5-sonnet")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert "deepseek-chat, gpt-4o, o1" in r.json()["error"]["message"]
    assert openai.provider.stats.requests + deepseek.provider.stats.requests == before
    r = await chat(client, car, "deepseek-chat")  # and the sidecar keeps serving
    assert r.status_code == 200


async def test_a_rate_limit_on_one_model_keeps_only_that_model_out(fakes, sidecar, client) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    # The backup answers every model under one clean name; the primary limits `fault-429-long-…` for 60 s.
    car = await sidecar(
        config(node("primary", primary, 0), node("backup", backup, -1, models={"*": "gpt-4o-mini"})),
        env={"PRIMARY_KEY": "k1", "BACKUP_KEY": "k2"},
    )
    r = await chat(client, car, "fault-429-long-a")
    assert r.status_code == 200 and r.headers["x-llm-sidecar-node"] == "backup"
    r = await chat(client, car, "gpt-4o-mini")
    assert r.headers["x-llm-sidecar-node"] == "primary"  # the node itself is fine
    r = await chat(client, car, "fault-429-long-a")
    assert (
        r.headers["x-llm-sidecar-node"] == "backup" and primary.provider.stats.fault_requests["fault-429-long-a"] == 1
    )
    status = await car.node("primary")
    assert status["state"] == "healthy"
    [out] = status["models"]
    assert out["model"] == "fault-429-long-a" and out["state"] == "rate limited" and out["until"] is not None
    table = await asyncio.to_thread(cli, "status", "--control-socket", str(car.socket))
    assert re.search(r"primary: fault-429-long-a rate limited, (5\d|60)s left", table.stdout)  # about 60 s


async def cached_share(fakes, sidecar, client, *, nodes: int, affinity: bool) -> float:
    """20 three-turn conversations through the sidecar over `nodes` equal nodes, their turns interleaved in a
    shuffled order as independent agents' would be: cached / prompt tokens. (In a fixed order, strict
    round-robin alternation over an even number of conversations would keep each on one node by chance.)"""
    fakes_ = [await fakes(f"n{i}", prompt_cache=True) for i in range(nodes)]
    upstream: dict[str, Any] = {} if affinity else {"affinity_ttl": 0}
    car = await sidecar(
        config(*(node(f"n{i}", f, 0) for i, f in enumerate(fakes_)), **upstream),
        env={f"N{i}_KEY": f"k{i}" for i in range(nodes)},
    )
    # Each conversation's own context dominates its prompt (a repository, a document), as an agent's does.
    histories = {n: [{"role": "system", "content": "You are an agent."},
                     {"role": "user", "content": f"task {n}: " + f"context {n} " * 200}]
                 for n in range(20)}  # fmt: skip
    order = random.Random(7)
    for turn in range(3):
        for n in order.sample(sorted(histories), len(histories)):
            messages = histories[n]
            r = await chat(client, car, "gpt-4o-mini", *messages)
            assert r.status_code == 200
            messages += [{"role": "assistant", "content": r.json()["choices"][0]["message"]["content"]},
                         {"role": "user", "content": f"and then {turn}"}]  # fmt: skip
    prompt = sum(f.provider.stats.prompt_tokens for f in fakes_)
    cached = sum(f.provider.stats.cached_tokens for f in fakes_)
    return cached / prompt


async def test_affinity_keeps_the_prompt_cache_as_one_node_would(fakes, sidecar, client) -> None:
    one = await cached_share(fakes, sidecar, client, nodes=1, affinity=True)
    pinned = await cached_share(fakes, sidecar, client, nodes=2, affinity=True)
    spread = await cached_share(fakes, sidecar, client, nodes=2, affinity=False)
    print(f"\ncached prompt share: one node {one:.0%}, two nodes with affinity {pinned:.0%}, without {spread:.0%}")
    assert pinned >= one - 0.02  # as good as one node
    assert pinned > spread + 0.15  # and far above round-robin without affinity
