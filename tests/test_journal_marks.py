"""What the journal records of the no-wait machinery, translation and traces: hedged attempts (won, lost,
failed), attempts moved on, request-caused failures, translated answers and nodes passed over, and the trace
a request was recorded in. Each request runs through the proxy in-process (mock transport); its event goes
through the real spend recorder and journal writer to a file, is read back, and shown as `log show` shows it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sidecar.config.schema import JournalConfig
from sidecar.journal import reader
from sidecar.journal.render import show
from sidecar.journal.writer import Journal
from sidecar.nodes.mock import Script
from sidecar.nodes.transport import Request
from sidecar.observe.shapes import RequestJSON, StepJSON
from sidecar.spend.recorder import SpendRecorder
from sidecar.telemetry.context import Tracing

from .inproc import Harness
from .test_hedge import HEDGE, STREAM, timed
from .test_move_on import HANG, silent_primary, waiting
from .test_request_caused import poison, providers, warm
from .test_stream_failover import SSE, cfg, chunk, stream, text_of
from .test_translation_proxy import (
    ANTHROPIC_CLIENT,
    ANTHROPIC_SEARCH,
    MESSAGES,
    Nodes,
    answer_of,
    body_of,
    claude_request,
    node,
    overloaded,
    setup,
)
from .test_translation_proxy import JSON as JSON_TYPE


class Journaled:
    """A harness whose events the real recorder hands to a journal on a file."""

    def __init__(self, h: Harness, path: Path) -> None:
        self.h, self.path = h, path
        self.journal = Journal(path, JournalConfig(), "127.0.0.1:8787", (), h.runtime.desk)
        self.journal.open()
        SpendRecorder(h.runtime, self.journal).attach()

    def last(self) -> tuple[RequestJSON, str]:
        """The last request as the journal holds it, and as `log show` prints it."""
        self.journal.flush()
        d = reader.lookup(self.path, self.h.last_event()["id"])
        assert d is not None and d["source"] == "journal"
        return d, "\n".join(show(d))


def steps(d: RequestJSON) -> list[tuple[str, str, str]]:
    return [(s["node"], s["kind"], s["outcome"]) for s in d["steps"]]


def timed_step(s: StepJSON) -> float:
    assert s["ms"] is not None and s["ms"] >= 0
    return s["ms"]


async def test_a_hedge_that_won_is_the_answering_step_with_its_own_time(tmp_path: Path) -> None:
    h = Harness(timed({"primary": 3.0, "backup": 0.0}), cfg(read=10, hedge=HEDGE))
    j = Journaled(h, tmp_path / "j.db")
    assert text_of((await h.request(STREAM)).body) == "from backup"
    d, printed = j.last()
    assert steps(d) == [("backup", "hedge", "answered")]
    assert d["marks"]["hedged"] == [{"node": "backup", "over": "primary", "won": True}]
    # The hedge began `after` into the request: its own time is less than the request's.
    assert d["total_ms"] is not None and timed_step(d["steps"][0]) < d["total_ms"]
    assert "hedged   backup over primary (won)" in printed
    assert "1. backup  hedge  answered" in printed
    j.journal.close()


async def test_a_hedged_attempt_that_failed_and_a_hedge_that_failed_are_journaled_attempts(tmp_path: Path) -> None:
    async def handler(node: str, request: Request) -> Script:
        if node == "primary":
            await asyncio.sleep(0.1)  # past `after`, then a 500
            return Script(500, body=[b'{"error": {"message": "boom"}}'])
        return Script(200, SSE, [chunk(role=True), 0.3, *stream("from backup")[1:]])

    h = Harness(handler, cfg(read=10, hedge=HEDGE, retry={"same_node": 0}))
    j = Journaled(h, tmp_path / "j.db")
    assert text_of((await h.request(STREAM)).body) == "from backup"
    d, printed = j.last()
    assert steps(d) == [("primary", "first", "failed"), ("backup", "hedge", "answered")]
    failed = d["steps"][0]
    assert failed["fault"] == "http" and timed_step(failed) >= 100  # its own time: it slept 0.1 s first
    assert "hedged   backup over primary (won)" in printed

    # The hedge fails first (a 503): the hedged attempt goes on and answers; the hedge is a failed attempt.
    h = Harness(timed({"primary": 0.3, "backup": 0.0}, fail={"backup": 503}), cfg(read=10, hedge=HEDGE))
    j2 = Journaled(h, tmp_path / "j2.db")
    assert text_of((await h.request(STREAM)).body) == "from primary"
    d, printed = j2.last()
    assert [(s["node"], s["outcome"], s["fault"]) for s in d["steps"]] == [
        ("backup", "failed", "http"),
        ("primary", "answered", None),
    ]
    # Accounted after the primary's first token, yet timed to its own end: well within the 0.3 s wait.
    assert timed_step(d["steps"][0]) < 300
    assert "hedged   backup over primary (lost)" in printed
    for journal in (j.journal, j2.journal):
        journal.close()


async def test_attempts_moved_on_are_journaled_as_moved_not_failed(tmp_path: Path) -> None:
    h = Harness(silent_primary, cfg(read=HANG + 5, first_token=HANG + 5, checks={"passive": {}}))
    j = Journaled(h, tmp_path / "j.db")
    task = asyncio.create_task(h.request({**STREAM}))
    await waiting(h, "primary", 1)
    h.runtime.upstream.set_manual(h.node("primary"), True)
    assert text_of((await task).body) == "from backup"
    d, printed = j.last()
    assert steps(d) == [("primary", "first", "moved"), ("backup", "failover", "answered")]
    moved = d["steps"][0]
    assert moved["fault"] is None and str(moved["reason"]).startswith("moved on: primary ")
    assert timed_step(moved) >= 0 and d["failovers"] == 1
    assert "1. primary  first  moved: moved on: primary" in printed
    j.journal.close()


async def test_request_caused_failures_are_marked_on_the_row_and_each_attempt(tmp_path: Path) -> None:
    h = Harness(providers, cfg())
    j = Journaled(h, tmp_path / "j.db")
    await warm(h)
    assert (await h.request(poison())).status == 500
    d, printed = j.last()
    assert d["marks"]["request_caused"] == "500"
    assert [(s["node"], s["request_caused"]) for s in d["steps"]] == [
        ("primary", True),
        ("primary", True),
        ("backup", True),
    ]
    assert all(timed_step(s) >= 0 and s["fault"] == "http" for s in d["steps"])
    assert "caused   by the request itself (500 on nodes serving others): no node blamed" in printed
    assert "(caused by the request)" in printed.splitlines()[-1]
    j.journal.close()


async def test_a_translated_answer_and_a_node_passed_over_are_marked(tmp_path: Path) -> None:
    call = answer_of("Checking.", (("call_1", "get_weather", '{"city":"Paris"}'),))
    nodes = Nodes(claude=[overloaded()], gpt=[Script(200, JSON_TYPE, [body_of("chat", call)])])
    config = setup(node("claude", 1, "anthropic"), node("gpt", 0, translate=True, models={"*": "gpt-4.1"}))
    h = Harness(nodes, config)
    j = Journaled(h, tmp_path / "j.db")
    answer = await h.request(claude_request(), path=MESSAGES, headers=ANTHROPIC_CLIENT)
    assert answer.status == 200 and answer.headers["x-llm-sidecar-translated"] == "messages to chat"
    d, printed = j.last()
    assert d["api"] == "anthropic" and d["api_upstream"] == "openai"
    assert d["marks"]["translated"] == "messages to chat" and d["marks"]["form"] == "messages"
    assert steps(d) == [("claude", "first", "failed"), ("claude", "retry", "failed"), ("gpt", "failover", "answered")]
    assert "call     POST /v1/messages  anthropic -> openai" in printed
    assert "format   messages to chat" in printed

    # Forcing a tool only Anthropic runs: the translating node is passed over, and the row says why.
    search = claude_request(tools=[ANTHROPIC_SEARCH], tool_choice={"type": "tool", "name": "web_search"})
    nodes = Nodes(claude=[Script(200, JSON_TYPE, [body_of("messages", answer_of("found"))])], gpt=[overloaded()])
    h = Harness(nodes, setup(node("gpt", 1, translate=True), node("claude", 0, "anthropic")))
    j2 = Journaled(h, tmp_path / "j2.db")
    got = await h.request(search, path=MESSAGES, headers=ANTHROPIC_CLIENT)
    assert got.status == 200 and got.headers["x-llm-sidecar-node"] == "claude"
    d, printed = j2.last()
    assert d["api_upstream"] == "anthropic" and "translated" not in d["marks"]
    assert d["marks"]["form"] == "messages"
    assert [s["node"] for s in d["marks"]["skipped"]] == ["gpt"]  # type: ignore[union-attr, index]
    assert "format   messages, not translated" in printed
    assert "skipped  gpt: cannot translate: tool 'web_search_20250305'" in printed
    for journal in (j.journal, j2.journal):
        journal.close()


async def test_a_traced_request_names_its_trace_on_the_row(tmp_path: Path) -> None:
    h = Harness(timed({"primary": 0.0, "backup": 0.0}), cfg(read=10))
    traced: list[dict[str, Any]] = []
    h.app.tracing = Tracing(lambda trace, event: traced.append(event), content=False)
    j = Journaled(h, tmp_path / "j.db")
    parent = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    headers = [(b"content-type", b"application/json"), (b"traceparent", parent)]
    assert (await h.request(STREAM, headers=headers)).status == 200
    d, printed = j.last()
    assert d["marks"]["trace_id"] == "0af7651916cd43dd8448eb211c80319c" == traced[-1]["trace_id"]
    span = d["marks"]["span_id"]
    assert isinstance(span, str) and len(span) == 16 and span == traced[-1]["span_id"]
    assert f"trace    0af7651916cd43dd8448eb211c80319c span {span}" in printed
    assert steps(d) == [("primary", "first", "answered")]
    j.journal.close()


async def test_a_plain_request_still_has_no_detail(tmp_path: Path) -> None:
    """Nothing met on the way, no trace: the row's JSON column stays empty (the writer's cheap path)."""
    h = Harness(timed({"primary": 0.0, "backup": 0.0}), cfg(read=10))
    j = Journaled(h, tmp_path / "j.db")
    assert (await h.request(STREAM)).status == 200
    j.journal.flush()
    db = reader.connect(tmp_path / "j.db")
    assert [tuple(row) for row in db.execute("SELECT detail FROM requests")] == [(None,)]
    d, _ = j.last()
    assert d["marks"] == {} and steps(d) == [("primary", "first", "answered")]
    j.journal.close()
