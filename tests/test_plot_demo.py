"""scripts/plot_demo.py: reading a recorded demo run (no matplotlib needed), plotting it, and one short recording."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_800_000_000.0


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("plot_demo", ROOT / "scripts" / "plot_demo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["plot_demo"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


pd = load()


def req(at: float, node: str | None, seq: int, stream: bool = False, **more: Any) -> dict[str, Any]:
    event = {"type": "request", "seq": seq, "time": T0 + at, "node": node, "status": 200 if node else 502,
             "attempts": 1, "failed": [], "stream": stream, "ttft_ms": 3.0 if stream else None, "total_ms": 5.0}  # fmt: skip
    return event | more


def health(at: float, node: str, before: str, after: str, reason: str, seq: int, **more: Any) -> dict[str, Any]:
    return {"type": "health", "seq": seq, "time": T0 + at, "node": node, "before": before, "after": after,
            "reason": reason} | more  # fmt: skip


def synthetic() -> list[dict[str, Any]]:
    """A small run: the primary serves, fails at t=3 (script), is ejected at 3.5, is back at 6, healthy at 7."""
    return [
        {"type": "start", "time": T0, "duration": 9},
        {"type": "script", "time": T0 + 0.01, "t": 0, "text": "both providers up"},
        req(0.2, "primary", 1),
        req(0.7, "primary", 2, stream=True),
        req(1.5, "primary", 3),
        {"type": "script", "time": T0 + 3.0, "t": 3, "text": "OUTAGE: the primary answers 503 to everything"},
        req(3.2, "backup", 4, attempts=2, failed=[{"node": "primary", "reason": "http 503"}]),
        health(3.5, "primary", "healthy", "ejected", "http 503", 5),
        health(3.6, "backup", "healthy", "rate limited", "429", 6, model="gpt-4o"),  # a model's health: not an outage
        req(4.1, "backup", 7, stream=True),
        health(5.0, "primary", "ejected", "unhealthy", "probe http 503", 8),
        {"type": "script", "time": T0 + 6.0, "t": 6, "text": "the primary is back"},
        req(6.5, None, 9),
        health(7.0, "primary", "unhealthy", "healthy", "trial request ok", 10),
        req(7.5, "primary", 11),
        req(9.4, "primary", 12),  # past the duration: a partial last bucket is not drawn
    ]


def write_jsonl(path: Path, events: list[dict[str, Any]]) -> None:
    lines = [json.dumps(e) for e in events]
    lines.insert(3, lines[2])  # a replayed event seen twice
    lines.insert(5, '{"type": "request", "ti')  # a line cut short by a killed recorder
    path.write_text("\n".join(lines) + "\n")


def test_reading_drops_repeated_seqs_and_broken_lines(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "run.jsonl", synthetic())
    events = pd.read_events(tmp_path / "run.jsonl")
    assert events == synthetic()
    assert pd.origin(events) == T0
    assert pd.duration(events) == 9


def test_requests_are_bucketed_per_node_per_second() -> None:
    events = synthetic()
    starts, rates = pd.requests_per_node(events, T0, bucket=1.0, end=pd.duration(events))
    assert starts == [float(i) for i in range(9)]
    assert rates["primary"] == [2, 1, 0, 0, 0, 0, 0, 1, 0]
    assert rates["backup"] == [0, 0, 0, 1, 1, 0, 0, 0, 0]
    assert rates["(no answer)"] == [0, 0, 0, 0, 0, 0, 1, 0, 0]
    # Two-second buckets are rates too (requests / 2 s); without an end, the last partial bucket stays.
    starts, rates = pd.requests_per_node(events, T0, bucket=2.0)
    assert starts == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert rates["primary"] == [1.5, 0, 0, 0.5, 0.5]


def test_outage_start_and_end_come_from_the_nodes_health_events() -> None:
    events = synthetic()
    (outage,) = pd.outages(events, T0)
    assert (outage.node, outage.start, outage.start_reason) == ("primary", 3.5, "http 503")
    assert (outage.end, outage.end_reason) == (7.0, "trial request ok")
    assert outage.states == ["ejected", "unhealthy"]
    assert pd.scripted_outage(events, T0) == (3.0, 6.0)


def test_an_outage_not_over_by_the_end_of_the_recording_has_no_end() -> None:
    events = [e for e in synthetic() if e.get("seq") != 10]
    (outage,) = pd.outages(events, T0)
    assert outage.end is None


def test_latency_is_ttft_for_streams_and_total_for_the_others() -> None:
    lat = pd.latencies(synthetic(), T0)
    assert [x.at for x in lat[:2]] == pytest.approx([0.2, 0.7], abs=1e-6)
    assert [(x.ms, x.stream) for x in lat[:2]] == [(5.0, False), (3.0, True)]
    assert [x.failed_over for x in lat] == [False, False, False, True, False, False, False]
    assert all(x.node for x in lat)  # the request no node answered has no latency to draw
    c = pd.counts(synthetic())
    assert (c.requests, c.by_node, c.failed_over, c.errors) == (8, {"primary": 5, "backup": 2}, 1, 1)


def test_the_plot_is_a_png(tmp_path: Path) -> None:
    # matplotlib is in the test extra (users get it with the plot extra), so this runs in CI.
    png = tmp_path / "run.png"
    pd.plot(synthetic(), png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000


def test_without_matplotlib_plot_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    write_jsonl(tmp_path / "run.jsonl", synthetic())
    assert pd.main(["plot", str(tmp_path / "run.jsonl"), str(tmp_path / "run.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'llm-sidecar[plot]'" in err
    assert not (tmp_path / "run.png").exists()


def test_a_short_recording_of_the_real_demo(tmp_path: Path) -> None:
    """12 s of the demo (about 14 s here): the outage starts at t=8 and the sidecar ejects the primary."""
    out = tmp_path / "run.jsonl"
    assert asyncio.run(pd.record(out, 12.0)) == 0
    events = pd.read_events(out)
    t0 = pd.origin(events)
    assert events[0]["type"] == "start" and pd.duration(events) == 12
    began, _ = pd.scripted_outage(events, t0)
    assert 7.5 < began < 9
    _, rates = pd.requests_per_node(events, t0, 1.0, 12)
    assert set(rates) == {"openai-fake", "deepseek-fake"}
    assert sum(rates["openai-fake"][:7]) > 5 and sum(rates["deepseek-fake"][9:]) > 1
    outage = pd.outages(events, t0)[0]
    assert outage.node == "openai-fake" and began <= outage.start < 12
    assert "what happened" in pd.summary_text(events)
