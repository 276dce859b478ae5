"""Conformance, no request waits on a dead node (issue 21): the real `llm-sidecar run` in front of fake
providers, driven by the real openai and anthropic SDKs; each case writes a line of the scorecard.

Liveness is bounded (each SDK call gets a timeout far above what the case needs); no speed is asserted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import openai

from .conftest import Card, cli, eventually

BOUND = 20.0  # seconds an SDK call may take at most
Scorecard = Any


def two(primary: Any, backup: Any, **upstream: Any) -> dict[str, Any]:
    nodes = [
        {"name": "primary", "url": primary.url, "priority": 0, "api_key": "${PRIMARY_KEY}", **upstream.pop("node", {})},
        {"name": "backup", "url": backup.url, "priority": -1, "api_key": "${BACKUP_KEY}"},
    ]
    return {"upstream": {"retry": {"backoff": 0.05, "max_backoff": 0.1}, **upstream, "nodes": nodes}}


def openai_client(car: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=car.url + "/v1", api_key="unused", max_retries=0, timeout=BOUND)


async def streamed(client: openai.AsyncOpenAI, model: str = "gpt-4o-mini") -> tuple[str, str]:
    """(the text the SDK assembled, the node that answered)."""
    raw = await client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = ""
    async for chunk in raw.parse():
        for choice in chunk.choices:
            text += choice.delta.content or ""
    return text, raw.headers["x-llm-sidecar-node"]


async def test_streams_waiting_on_a_node_that_goes_silent_move_on_at_once(fakes, sidecar, scorecard) -> None:
    card: Card = scorecard("silent primary: waiting streams move on")
    primary, backup = await fakes("primary"), await fakes("backup")
    # Configured 60 s: only the learned limit and the moving on can end these waits within BOUND.
    config = two(primary, backup, timeout={"first_token": 60, "first_token_min": 0.5, "read": 90})
    car = await sidecar(config)
    client = openai_client(car)
    for _ in range(20):  # the primary's first tokens: the limit learns them
        assert (await streamed(client))[1] == "primary"
    primary.set(fail_rate=1.0, fault="silent")

    async def later(delay: float) -> tuple[str, str]:
        await asyncio.sleep(delay)
        return await streamed(client)

    # Two streams meet the learned limit first (their timeouts eject the primary); four sent 0.25 s later are
    # still waiting then, so they move on. Sent all at once, all six could time out in the same instant.
    answers = await asyncio.gather(*(later(0.0) for _ in range(2)), *(later(0.25) for _ in range(4)))
    assert all(node == "backup" and text.startswith("Hello from backup") for text, node in answers), answers
    log = car.log()
    assert "no first token in 0.5s (learned)" in log
    assert "moved on: primary ejected" in log
    card.detail = "6 streams: 2 cut at the learned 0.5 s limit, the rest moved on when that ejected the primary"


async def test_a_failing_primary_comes_back_through_probes_not_user_requests(fakes, sidecar, scorecard) -> None:
    card: Card = scorecard("503 then recovery: probes, not trials")
    primary, backup = await fakes("primary", fail_rate=1.0, status=503), await fakes("backup")
    car = await sidecar(two(primary, backup, retry={"same_node": 0}))
    client = openai_client(car)
    for _ in range(3):
        assert (await streamed(client))[1] == "backup"
    assert (await car.node("primary"))["state"] == "ejected"
    asked = primary.stats.chat
    for _ in range(5):
        assert (await streamed(client))[1] == "backup"
    primary.set(fail_rate=0.0)

    async def back() -> bool:
        return (await car.node("primary"))["state"] == "healthy"

    assert await eventually(back, seconds=15)
    node = await car.node("primary")
    assert node["reason"] == "recovered (probe gpt-4o-mini ok)"
    assert primary.stats.chat - asked == node["traffic"]["probes"]  # no user request reached it meanwhile
    assert (await streamed(client))[1] == "primary"
    card.detail = f"back through {node['traffic']['probes']} probe(s); no user request was a trial"


async def test_a_request_that_fails_on_every_node_blames_none(fakes, sidecar, scorecard) -> None:
    card: Card = scorecard("a body that fails on every node (anthropic)")
    primary = await fakes("primary", api="anthropic")
    backup = await fakes("backup", api="anthropic")
    config = two(primary, backup, node={"api": "anthropic"})
    config["upstream"]["nodes"][1]["api"] = "anthropic"
    car = await sidecar(config)
    client = anthropic.AsyncAnthropic(base_url=car.url, api_key="unused", max_retries=0, timeout=BOUND)
    ask = {"max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    await client.messages.create(model="claude-haiku-4-5", **ask)  # both serve other requests
    async with car.control() as control:
        await control.post("/v1/nodes/primary/down")
        await client.messages.create(model="claude-haiku-4-5", **ask)
        await control.post("/v1/nodes/primary/auto")
    for _ in range(4):  # an agent retrying the same broken conversation
        try:
            await client.messages.create(model="fault-503", **ask)
        except anthropic.APIStatusError as exc:
            assert exc.status_code == 503
        else:
            raise AssertionError("a 503 on every node must reach the client as the original error")
    for name in ("primary", "backup"):
        node = await car.node(name)
        assert node["state"] == "healthy" and node["passive"]["counters"]["http_failures"] == 0, node
    assert "request-caused" in car.log()
    card.detail = "4 sends: the original 503 each time, both nodes healthy, no count kept"


async def test_a_slow_first_token_is_hedged_to_the_next_node(fakes, sidecar, scorecard) -> None:
    card: Card = scorecard("first-token tail, hedged")
    primary, backup = await fakes("primary", latency=3.0), await fakes("backup")
    car = await sidecar(two(primary, backup, hedge={"after": 0.3, "budget": 1.0}, timeout={"read": 30}))
    text, node = await streamed(openai_client(car))
    assert node == "backup" and text.startswith("Hello from backup")
    async with car.control() as control:
        metrics = (await control.get("/metrics")).text
    assert 'llm_sidecar_hedges_total{node="backup",over="primary",result="won"} 1.0' in metrics
    card.detail = "the backup's first token won; the primary's attempt was cancelled with no verdict"


async def test_node_auto_trusts_a_node_held_out_by_an_endless_retry_after(fakes, sidecar, scorecard) -> None:
    card: Card = scorecard("Retry-After: inf, then node auto")
    primary = await fakes("primary", fail_rate=1.0, fault="rate_limit", retry_after=1e9)
    backup = await fakes("backup")
    car = await sidecar(two(primary, backup))
    client = openai_client(car)
    await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    primary.set(fail_rate=0.0)
    _, node = await streamed(client)
    assert node == "backup"  # held out for the clamped Retry-After
    done = cli("node", "auto", "primary", "--control-socket", str(car.socket))
    assert done.returncode == 0, done.stderr
    assert (await streamed(client))[1] == "primary"
    card.detail = "held out for 300 s by the clamped Retry-After; node auto put it back at once"
