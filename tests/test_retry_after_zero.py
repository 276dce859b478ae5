"""A 429 whose Retry-After names no wait (`Retry-After: 0`, `retry-after-ms: 0`) must still count.

Before, such a 429 held the node (or the model on it) for zero seconds and counted nothing, so a primary
that always answered it was never ejected and cost every client request two attempts (one same-node retry
"after 0 s"), forever. Now it counts as a failure, and the plan fails over at once as for a 429 without a
Retry-After: the primary is out after `unhealthy.http_failures` (3) of them in a row.
"""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.config.load import parse
from sidecar.config.schema import Config, PassiveCheck
from sidecar.nodes.health import Source
from sidecar.nodes.mock import Script
from sidecar.nodes.transport import Request

from .inproc import Harness

OK = b'{"choices": [{"message": {"content": "fine"}}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}'
REQUESTS = 200
THRESHOLD = PassiveCheck().unhealthy_http_failures  # 3


def _upstream() -> dict[str, Any]:
    # base_ejection_time 300 s: the ejection outlasts the test however slow the machine, so no trial request
    # can add an attempt and the bounds below are exact.
    nodes = [
        {"name": "primary", "url": "http://primary.invalid", "priority": 0},
        {"name": "backup", "url": "http://backup.invalid", "priority": -1},
    ]
    return {
        "timeout": {"connect": 0.05, "send": 1, "read": 1},
        "checks": {"passive": {"base_ejection_time": 300}},
        "retry": {"backoff": 0.01, "max_backoff": 0.02},
        "nodes": nodes,
    }


def cfg() -> Config:
    return parse({"upstream": _upstream()}, "<test>", env={})


def limited(header: tuple[str, str]) -> Any:
    def handler(node: str, request: Request) -> Script:
        if node == "primary":
            return Script(429, (("content-type", "application/json"), header), [b'{"error": {"message": "slow"}}'])
        return Script(body=[OK])

    return handler


ZERO = [("retry-after", "0"), ("retry-after-ms", "0")]


@pytest.mark.parametrize("header", ZERO, ids=[h for h, _ in ZERO])
@pytest.mark.parametrize("model", ["gpt-4o", None], ids=["per model", "no model"])
async def test_a_primary_always_answering_429_retry_after_0_is_taken_out_after_the_threshold(
    header: tuple[str, str], model: str | None
) -> None:
    h = Harness(limited(header), cfg())
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    if model is not None:
        body["model"] = model  # the 429 is then the model's on that node (providers limit per model)
    for _ in range(REQUESTS):
        got = await h.request(body)
        assert got.status == 200 and got.body == OK and got.headers["x-llm-sidecar-node"] == "backup"
    # Each of the first three requests asks the primary once (a Retry-After of 0 is no wait to retry the same
    # node after: fail over, as for a 429 without one) and each 429 counts; the third takes the primary out.
    # Before: 2 attempts a request, 400 in all.
    assert h.calls("primary") == THRESHOLD
    assert h.calls("backup") == REQUESTS
    primary = h.node("primary")
    if model is None:
        assert primary.health.state == "ejected"
    else:
        assert not primary.models.available(model, h.runtime.clock())
        assert primary.health.state == "healthy"  # only the model is out: other models still go there
    h.assert_nothing_held()


async def test_a_single_429_retry_after_0_then_success_leaves_the_node_in() -> None:
    answers = iter([Script(429, (("retry-after", "0"),), [b"{}"])])
    h = Harness(lambda node, r: next(answers, Script(body=[OK])) if node == "primary" else Script(body=[OK]), cfg())
    got = await h.request({"model": "gpt-4o", "messages": []})
    assert got.headers["x-llm-sidecar-node"] == "backup"
    for _ in range(5):
        got = await h.request({"model": "gpt-4o", "messages": []})
        assert got.headers["x-llm-sidecar-node"] == "primary"  # one limit is no verdict; a success resets it


async def test_a_429_retry_after_of_a_second_or_more_still_only_holds_the_node() -> None:
    # max_wait 0.5: a Retry-After of 1 s is past it, so the request fails over at once.
    h = Harness(limited(("retry-after", "1")), parse({"upstream": {**_upstream(), "retry": {"max_wait": 0.5}}}, "<t>"))
    for _ in range(THRESHOLD + 1):
        await h.request({"messages": []})
    health = h.node("primary").health
    # Held for its Retry-After, never counted: many requests hitting one limit at once must not eject it.
    assert health.state == "healthy" and health.blocked_until > 0
    assert health.counters[Source.PASSIVE].http_failures == 0
