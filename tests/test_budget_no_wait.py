"""A node out for its budget stays out of the no-wait machinery and translation's routing: it is never sent
a recovery probe (a probe is a real, billed request), a waiting request never moves on to it, status never
names it as where a model's requests go, and a request another format's node can take by translation is not
refused while that node has budget left. In-process on the mock transport."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sidecar.control.status import instead
from sidecar.nodes.budget import Out
from sidecar.nodes.mock import Script
from sidecar.nodes.prober import RecoveryProber
from sidecar.nodes.transport import Request

from .inproc import Harness
from .test_move_on import HANG, waiting
from .test_recovery import Clock, eject, failing_primary
from .test_stream_failover import ASK, OK, cfg
from .test_translation_proxy import ANTHROPIC_CLIENT, JSON, MESSAGES, Nodes, answer_of, body_of, claude_request, setup
from .test_translation_proxy import node as node_of


def spent(h: Harness, name: str, for_s: float = 3600.0) -> None:
    """Take node `name` out for its budget, as the spend recorder does when a cost reaches it."""
    h.runtime.budgets.nodes[name] = Out(f"node {name}'s daily budget ... is spent", until=time.time() + for_s)


async def test_a_node_out_for_its_budget_is_never_probed_until_the_budget_resets() -> None:
    clock = Clock()
    state: dict[str, Any] = {"down": True, "bodies": []}
    h = Harness(failing_primary(state), cfg(retry={"same_node": 0}), clock=clock)
    await eject(h, ASK)
    primary = h.node("primary")
    assert primary.recovery is not None
    spent(h, "primary")
    clock.now += 3600  # every probe long due
    prober = RecoveryProber(h.runtime)
    sent = len(state["bodies"])
    assert prober.tick() == [] and len(state["bodies"]) == sent  # not a single probe
    assert primary.recovery is not None and primary.health.state == "ejected"  # still out, still to be probed
    del h.runtime.budgets.nodes["primary"]  # the day ended: the budget reset
    state["down"] = False
    (task,) = prober.tick()
    await task
    assert primary.health.state == "healthy" and len(state["bodies"]) == sent + 1
    h.assert_nothing_held()


async def test_a_waiting_request_does_not_move_on_to_a_node_out_for_its_budget() -> None:
    release = asyncio.Event()

    async def handler(node: str, request: Request) -> Script:
        if node == "primary":
            await release.wait()
        return Script(body=[OK])

    h = Harness(handler, cfg(read=HANG + 5))
    upstream = h.runtime.upstream
    assert upstream.usable_beyond({0}, "gpt-4o")  # the backup could take it
    spent(h, "backup")
    assert not upstream.usable_beyond({0}, "gpt-4o")  # not while its budget is spent
    task = asyncio.create_task(h.request(ASK))
    await waiting(h, "primary", 1)
    upstream.set_manual(h.node("primary"), True)  # drained: but the only other node is out for budget
    await asyncio.sleep(0.01)
    assert len(h.node("primary").waiting) == 1 and h.calls("backup") == 0
    release.set()
    answer = await task
    assert answer.status == 200 and answer.headers["x-llm-sidecar-node"] == "primary"
    h.assert_nothing_held()


def test_status_never_sends_a_models_requests_to_a_node_out_for_its_budget() -> None:
    h = Harness(lambda node, request: Script(body=[OK]), cfg())
    upstream = h.runtime.upstream
    now = upstream.clock()
    primary = h.node("primary")
    primary.models.get("gpt-4o").rate_limited(now + 60, now, 300)
    assert instead(upstream, primary, "gpt-4o", now) == "backup"
    spent(h, "backup")
    assert instead(upstream, primary, "gpt-4o", now) is None  # out on every node it could go to


async def test_a_request_a_translating_node_can_take_is_not_refused_for_its_own_formats_budget() -> None:
    nodes = Nodes(
        claude=[Script(200, JSON, [body_of("messages", answer_of("from claude"))])],
        gpt=[Script(200, JSON, [body_of("chat", answer_of("from gpt"))])],
    )
    h = Harness(nodes, setup(node_of("claude", 1, "anthropic"), node_of("gpt", 0, translate=True)))
    spent(h, "claude")  # every node of the client's own format is out...
    got = await h.request(claude_request(), path=MESSAGES, headers=ANTHROPIC_CLIENT)
    assert got.status == 200 and got.headers["x-llm-sidecar-node"] == "gpt"  # ...but gpt translates
    assert not nodes.to("claude")
    spent(h, "gpt")
    got = await h.request(claude_request(), path=MESSAGES, headers=ANTHROPIC_CLIENT)
    assert got.status == 429 and got.json()["type"] == "error"  # in the client's (Anthropic's) format
    assert "every node for this request has spent its budget" in got.json()["error"]["message"]
    assert len(nodes.to("gpt")) == 1
    h.assert_nothing_held()
