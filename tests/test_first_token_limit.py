"""A first-token limit that learns (issue 21): per (node, model), from that pair's own recent first tokens,
never above the configured `first_token`, never below `first_token_min`. Pure rule first, then through
the proxy on the mock transport, and through the control API's status."""

from __future__ import annotations

from typing import Any

from sidecar.config.load import parse
from sidecar.config.schema import Config
from sidecar.control.status import status
from sidecar.nodes.mock import Script
from sidecar.nodes.transport import Request
from sidecar.nodes.ttft import MIN_SAMPLES, MULTIPLIER, FirstTokenHistory, FirstTokens

from .inproc import Harness
from .test_stream_failover import ASK, SSE, chunk, failed, stream, text_of


def cfg() -> Config:
    """Configured 30 s (past the harness's 5 s bound): only a learned limit can end a silent wait in time."""
    nodes = [
        {"name": "primary", "url": "http://primary.invalid", "priority": 0},
        {"name": "backup", "url": "http://backup.invalid", "priority": -1},
    ]
    timeout = {"connect": 0.05, "send": 1, "read": 40, "first_token": 30, "first_token_min": 0.05}
    return parse({"upstream": {"timeout": timeout, "nodes": nodes}}, "<test>", env={})


def learned(samples: list[float], now: float = 100.0) -> FirstTokens:
    ft = FirstTokens()
    for s in samples:
        ft.observe(now, s)
    return ft


def test_thin_history_keeps_the_configured_limit() -> None:
    assert learned([0.5] * (MIN_SAMPLES - 1)).limit(100.0, 60.0, 10.0) == 60.0


def test_a_fast_node_is_declared_silent_at_the_floor_not_the_configured_limit() -> None:
    assert learned([0.2, 0.4, 0.9, 1.0] * 10).limit(100.0, 60.0, 10.0) == 10.0


def test_a_slow_node_gets_a_multiple_of_its_own_99th_percentile() -> None:
    assert learned([4.0] * 30).limit(100.0, 60.0, 10.0) == MULTIPLIER * 4.0


def test_a_model_that_thinks_in_silence_keeps_the_configured_limit() -> None:
    assert learned([40.0] * 30).limit(100.0, 60.0, 10.0) == 60.0


def test_old_first_tokens_are_forgotten() -> None:
    ft = learned([0.5] * 30, now=0.0)
    assert ft.limit(0.0, 60.0, 10.0) == 10.0
    assert ft.limit(3600.0, 60.0, 10.0) == 60.0  # half an hour later: too old to say anything


def test_a_node_that_gets_slower_is_not_cut_again_and_again() -> None:
    ft = learned([0.5] * 30)
    assert ft.limit(100.0, 60.0, 10.0) == 10.0
    ft.timed_out(10.0, 60.0)  # a first token took longer than the learned 10 s
    assert ft.limit(100.0, 60.0, 10.0) == 20.0
    ft.timed_out(20.0, 60.0)
    ft.timed_out(40.0, 60.0)
    assert ft.limit(100.0, 60.0, 10.0) == 60.0  # never above the configured limit
    ft.observe(100.0, 12.0)  # it answers again, slower: the widening is undone step by step
    assert ft.stretch == 4.0
    ft.timed_out(60.0, 60.0)  # a timeout at the configured limit widens nothing
    assert ft.stretch == 4.0


def test_the_history_is_per_model_and_bounded() -> None:
    history = FirstTokenHistory(size=2)
    history.get("a").observe(0.0, 1.0)
    history.get("b")
    history.get("c")
    assert list(history.models) == ["b", "c"]
    assert history.get(None) is history.get("")


def fast_then_silent(silent: dict[str, bool]) -> Any:
    def handler(node: str, request: Request) -> Script:
        if node == "primary" and silent["on"]:
            return Script(200, SSE, [chunk(role=True), 30.0])
        return Script(200, SSE, stream("ok"))

    return handler


async def test_a_silent_node_with_a_fast_history_fails_over_at_the_learned_limit() -> None:
    silent = {"on": False}
    h = Harness(fast_then_silent(silent), cfg())
    node = h.node("primary")
    for _ in range(MIN_SAMPLES):
        assert text_of((await h.request({**ASK, "stream": True})).body) == "ok"
    limit = node.first_tokens.get("gpt-4o").limit(h.runtime.upstream.clock(), 30.0, 0.05)
    assert limit < 30.0
    silent["on"] = True
    answer = await h.request({**ASK, "stream": True})
    assert answer.status == 200 and text_of(answer.body) == "ok"
    (failure,) = failed(h)
    assert failure["node"] == "primary" and failure["reason"].startswith("no first token in ")
    assert failure["reason"].endswith("s (learned)")
    h.assert_nothing_held()


async def test_status_shows_each_models_limit() -> None:
    h = Harness(fast_then_silent({"on": False}), cfg())
    for _ in range(MIN_SAMPLES):
        await h.request({**ASK, "stream": True})
    await h.request({**ASK, "model": "fresh", "stream": True})
    primary = next(n for n in status(h.runtime)["nodes"] if n["name"] == "primary")
    limits = primary["first_token_limits"]
    assert limits["fresh"] == 30.0  # one first token: not enough to learn from
    assert 0.05 <= limits["gpt-4o"] < 30.0


async def test_the_status_table_lists_the_learned_limits() -> None:
    from sidecar.control.table import render_status

    h = Harness(fast_then_silent({"on": False}), cfg())
    for _ in range(MIN_SAMPLES):
        await h.request({**ASK, "stream": True})
    text = render_status(status(h.runtime))
    assert "first-token limits (learned per model from its own first tokens):" in text
    line = next(line for line in text.splitlines() if line.startswith("  primary: "))
    assert line.startswith("  primary: gpt-4o ") and line.endswith("s")
    assert max(len(line) for line in text.splitlines()) <= 80


def test_a_model_named_twice_is_the_top_level_one() -> None:
    """A client cannot pass a fast model's first tokens off as a slow model's by naming it in metadata first."""
    from sidecar.proxy.exchange import model_of

    assert model_of(b'{"metadata": {"model": "o-thinker"}, "model": "m-fast", "stream": true}') == "m-fast"
    assert model_of(b'{"model": "m-fast", "messages": []}') == "m-fast"
    assert model_of(b'{"messages": []}') is None
