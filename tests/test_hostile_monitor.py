"""The monitor shows whatever a client or a node put in a request or a reason as plain text.

Textual reads `[...]` in plain strings as markup: a proxied request with `"model": "[/]"` used to raise
MarkupError in every attached monitor, and the replay killed the next one. Here the real app is fed
hostile strings in every displayed field (canned data, as in the snapshots; then fuzzed), and a real
sidecar carries such a request to a real attached monitor.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from textual.widgets import Label

from tui.app import ConfirmScreen, MonitorApp, Seen, StreamRefused
from tui.widgets import HeaderBar, HealthLog, NodesTable, RatePlot, TrafficTable, clean

from .conftest import chat, two_node_config
from .test_monitor import log_text, until

HOSTILE = [
    "[/]",
    "x[/]",
    "[bold]",
    "[bold red]loud",
    "[@click=app.quit]quit",
    "[link=file:///etc/passwd]x[/link]",
    "[/bold]",
    "\\[/]",
    "[",
    "]",
    ":warning:",
    "\x1b[2J\x1b]0;pwned\x07",
    "line\nbreak\r\tand tab",
    "\x00\x7f\x9b",
    "\ud800 lone surrogate",
    "\u202eright-to-left",
    "界" * 60,
    "😀" * 40,
    "e\u0301" * 30,
    "x" * 20_000,
    "",
]
NOW = 1_795_600_000.0


def node(name: str, text: str, serving: bool, priority: int) -> dict[str, Any]:
    probe = {"time": NOW - 3, "status": 200, "latency_ms": 1.0, "result": text}
    counters = {"successes": 1, "http_failures": 0, "tcp_failures": 0, "timeouts": 0}
    return {
        "name": name, "url": text, "priority": priority, "weight": 1, "state": text, "manual": text,
        "serving": serving, "reason": text, "changed_at": NOW - 5, "blocked_until": None,
        "active": {"enabled": True, "healthy": True, "counters": counters, "last_probe": probe},
        "passive": {"enabled": True, "ejected_until": None, "ejections": 0, "counters": counters},
        "traffic": {"requests": 1, "errors": 0, "in_flight": 0, "rps": 0.1, "p50_ms": 1.0, "p95_ms": 2.0,
                    "tokens_in": 1, "tokens_out": 1},
    }  # fmt: skip


def status(names: list[str], text: str, serving: int | None) -> dict[str, Any]:
    sidecar = {"version": text, "pid": 1, "uptime_s": 5.0, "started_at": NOW - 5, "listen": text,
               "config_path": text, "config_loaded_at": NOW - 5, "control_socket": text}  # fmt: skip
    nodes = [node(n, text, i == serving, -i) for i, n in enumerate(names)]
    return {"sidecar": sidecar, "serving": None if serving is None else names[serving], "nodes": nodes}


def events(names: list[str], texts: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, text in enumerate(texts):
        out += [
            {"type": "request", "seq": 10 * i + 1, "time": NOW, "id": f"{i:08x}{text}", "method": text,
             "path": text, "model": text, "node": names[i % len(names)], "status": 200 if i % 2 else 503,
             "attempts": 1 + i % 2, "failed": [{"node": text, "reason": text}], "stream": bool(i % 2),
             "ttfb_ms": 1.0, "ttft_ms": None, "total_ms": 2.0, "tokens_in": 1, "tokens_out": 2, "error": text},
            {"type": "health", "seq": 10 * i + 2, "time": NOW, "node": text, "before": text, "after": text,
             "reason": text},
            {"type": "manual", "seq": 10 * i + 3, "time": NOW, "node": text, "manual": text},
            {"type": "config", "seq": 10 * i + 4, "time": NOW, "ok": True, "path": text, "nodes": [text, *names]},
            {"type": "config", "seq": 10 * i + 5, "time": NOW, "ok": False, "path": text,
             "error": {"message": text, "type": text, "file": text, "key": text}},
            {"type": "missed", "seq": 10 * i + 6, "time": NOW, "count": 3},
            {"type": text, "seq": 10 * i + 7, "time": NOW},  # an event type this monitor does not know
        ]  # fmt: skip
    return out


def draw(app: MonitorApp, names: list[str], texts: list[str]) -> None:
    """Every entry point that draws something from the sidecar, with these strings, then a full render
    (of every widget and toast, not only what changed)."""
    app.show_status(status(names, texts[0], serving=0))
    app.show_events(events(names, texts))
    app.query_one(RatePlot).sample({names[0]: 2}, 10.0, names)
    app.show_status(status(names, texts[-1], serving=1))  # a failover: a toast naming both nodes
    app.show_status(status(names, texts[-1], serving=None))
    app.post_message(StreamRefused(texts[0]))
    app.export_screenshot()


async def feed(pilot: Any, names: list[str], texts: list[str]) -> None:
    """`draw`, then the confirm dialog (it names the serving node) over it, drawn once the app is idle."""
    app: MonitorApp = pilot.app
    draw(app, names, texts)
    app.show_status(status(names, texts[-1], serving=1))
    app.action_failover()
    await pilot.pause()
    assert isinstance(app.screen, ConfirmScreen)
    app.export_screenshot()
    await pilot.press("n")
    assert not isinstance(app.screen, ConfirmScreen)
    assert app.is_running


def canned_app() -> MonitorApp:
    return MonitorApp(Path("/run/user/1000/llm-sidecar.sock"), connect=False, clock=lambda: NOW)


async def test_hostile_strings_in_every_field_are_shown_as_text() -> None:
    app = canned_app()
    async with app.run_test(size=(120, 40)) as pilot:
        for i in range(0, len(HOSTILE), 7):
            texts = HOSTILE[i : i + 7]
            await feed(pilot, [f"a{texts[0]}", f"b{texts[0]}"], texts)
        await feed(pilot, ["a[/]", "b[/]"], ["[@click=app.quit]", "x[/]"])
        traffic = app.query_one(TrafficTable)
        assert [str(cell) for cell in traffic.get_row_at(0)][1:4] == ["0001x[/]", "x[/]", "b[/]"]  # id, model, node
        assert [str(cell) for cell in traffic.get_row_at(1)][1:3] == ["pp.quit]", "[@click=app.q…"]
        nodes = app.query_one(NodesTable)
        assert str(nodes.get_cell("a[/]", "node")).strip() == "a[/]"
        assert str(nodes.get_cell("b[/]", "man")) == "x[/]"
        assert "reload failed: [@click=app.quit]: [@click=app.quit]" in log_text(app.query_one(HealthLog))
        toasts = [str(n.message) for n in app._notifications]
        assert {"a[/] → b[/]", "b[/] → nothing", "[@click=app.quit]"} <= set(toasts)
        assert "x[/]" in str(app.query_one(HeaderBar).render())
        assert app.is_running
    assert app.return_code in (None, 0)


async def test_control_characters_never_reach_the_terminal() -> None:
    app = canned_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await feed(pilot, ["a\x1b]0;x\x07", "b\x1b[2J"], ["\x1b[31mred\x9b\ud800\u202e\n"])
        screen = app.export_screenshot()
        assert "\x1b" not in screen and "\x9b" not in screen and "\u202e" not in screen
        traffic = app.query_one(TrafficTable)
        model = str(traffic.given[0][1]["model"])  # the whole cell; on screen it may end in … to fit
        assert model == "\\x1b[31mred\\x9b\\ud800\\u202e\\n"  # shown escaped
        shown = str(traffic.get_row_at(0)[2])
        assert model.startswith(shown.rstrip("…"))
        labels = [str(label.render()) for label in app.query(Label)]
        assert any("a\\x1b]0;x\\x07" in text for text in labels)  # the plot's label for the node


def test_clean_makes_one_bounded_line_of_plain_text() -> None:
    assert clean("[/]") == "[/]"
    assert clean("a\nb\x1b\ud800") == "a\\nb\\x1b\\ud800"
    assert clean("x" * 1000, 10) == "x" * 9 + "…"
    assert clean(42) == "42"


PIECES = [*"[]/@=.:#\\ ab", "[/]", "[@click=app.quit]", "[bold]", "\x1b", "\x00", "\n", "\r", "\t", "\x7f", "\x9b",
          "\ud800", "\udfff", "\u202e", "\u200b", "界", "😀", "\u0301"]  # fmt: skip
TEXT = st.one_of(
    st.text(max_size=30),
    st.lists(st.sampled_from(PIECES), max_size=30).map("".join),
    st.sampled_from(HOSTILE),
    st.text(min_size=500, max_size=3000),
)


ROUND = st.tuples(st.lists(TEXT, min_size=2, max_size=3, unique=True), st.lists(TEXT, min_size=1, max_size=4))


@settings(max_examples=12, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds=st.lists(ROUND, min_size=1, max_size=4))
def test_fuzzed_strings_never_stop_the_monitor(rounds: list[tuple[list[str], list[str]]]) -> None:
    async def run() -> None:
        app = canned_app()
        async with app.run_test(size=(80, 24)) as pilot:  # the narrow layout: more cropping and wrapping
            for names, texts in rounds[:-1]:
                draw(app, names, texts)  # several rounds per app: starting one costs more than a round
            await feed(pilot, *rounds[-1])
        assert app.return_code in (None, 0)

    asyncio.run(run())


def test_a_reattach_draws_only_events_not_drawn_yet() -> None:
    seen = Seen()
    first = status(["a", "b"], "v", 0)
    seen.attach(first)
    assert [seen.fresh({"type": "request", "seq": s}) for s in (1, 2, 3)] == [True] * 3
    seen.attach(first)  # the sidecar dropped us; the replay starts before what we drew
    assert [seen.fresh({"type": "request", "seq": s}) for s in (2, 3, 4)] == [False, False, True]
    assert seen.fresh({"type": "missed", "seq": 9, "count": 5})  # a marker does not move the mark
    assert seen.fresh({"type": "request", "seq": 5})
    restarted = {**first, "sidecar": {**first["sidecar"], "pid": 2}}
    seen.attach(restarted)  # a new process counts from 1
    assert seen.fresh({"type": "request", "seq": 1})


async def monitor_row(car: Any, client: Any, send: bool) -> list[str]:
    """Attach a monitor; send the request while it is attached (or not: then it comes in the replay)."""
    app = MonitorApp(car.socket)
    async with app.run_test(size=(120, 40)) as pilot:
        traffic = app.query_one(TrafficTable)
        await until(pilot, lambda: app.status is not None)
        if send:
            await pilot.pause(0.3)  # attached to the event stream
            answer = await client.post(car.url + "/v1/chat/completions", json=chat(model="[/]"),
                                       headers={"X-Request-Id": "x[/]"})  # fmt: skip
            assert answer.status_code == 200 and answer.headers["x-request-id"] == "x[/]"
        await until(pilot, lambda: traffic.row_count == 1)
        await pilot.pause(0.3)  # drawn at least once
        assert app.is_running
        row = [str(cell) for cell in traffic.get_row_at(0)]
    assert app.return_code in (None, 0)
    return row


async def test_a_real_request_with_markup_in_model_and_id_reaches_two_monitors(fakes, sidecar, client) -> None:
    car = await sidecar(two_node_config(await fakes("primary"), await fakes("backup")))
    assert (await monitor_row(car, client, send=True))[1:5] == ["x[/]", "[/]", "primary", "200"]  # live
    assert (await monitor_row(car, client, send=False))[1:5] == ["x[/]", "[/]", "primary", "200"]  # replayed
