"""Prices, cost, the ledger and the budget gate: pure, with the time passed in (docs/journal.md)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.config.load import parse
from sidecar.config.problems import ConfigError
from sidecar.config.schema import Budget, Price
from sidecar.nodes.budget import Budgets, Out
from sidecar.spend.ledger import Ledger, day_bounds, month_bounds
from sidecar.spend.plan import render as plan
from sidecar.spend.prices import PriceBook, cost, resolve
from sidecar.spend.table import AS_OF, SHIPPED

from .conftest import cli

JUNE_3_NOON = 1780480800.0  # 2026-06-03 12:00:00 in Europe/Paris (10:00 UTC)


@pytest.fixture(autouse=True)
def paris() -> Iterator[None]:
    """A zone with summer time, so day and month ends are local ones."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Paris"
    time.tzset()
    yield
    if before is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = before
    time.tzset()


def config(**extra: Any) -> Any:
    nodes = extra.pop("nodes", None) or [
        {"name": "openai", "url": "http://a.invalid"},
        {"name": "deepseek", "url": "http://b.invalid", "priority": -1, "models": {"*": "deepseek-chat"}},
    ]
    return parse({"upstream": {"nodes": nodes}, **extra}, "t", {})


# ---------------------------------------------------------------------------- prices


def test_the_first_price_that_applies_wins_in_the_documented_order() -> None:
    cfg = config(
        prices={"gpt-4o": {"input": 1, "output": 2}, "my-model": {"input": 3, "output": 4}},
        nodes=[
            {"name": "a", "url": "http://a.invalid", "prices": {"gpt-4o": {"input": 9, "output": 9}}},
            {"name": "b", "url": "http://b.invalid", "price": {"input": 7, "output": 8}},
            {"name": "c", "url": "http://c.invalid", "prices": {"*": {"input": 5, "output": 6}}},
            {"name": "d", "url": "http://d.invalid", "models": {"fast": "gpt-4o-mini"}},
        ],
    )
    a, b, c, d = cfg.upstream.nodes
    assert resolve(a, "gpt-4o", "gpt-4o", cfg.prices).source == 'node a: prices["gpt-4o"]'
    assert resolve(a, "gpt-4o-mini", "gpt-4o-mini", cfg.prices).source == f"shipped table ({AS_OF}): gpt-4o-mini"
    assert resolve(b, "gpt-4o", "gpt-4o", cfg.prices).source == "node b: price"  # the node's own beats [prices]
    assert resolve(c, "anything", "anything", cfg.prices).price == Price(5, 6)
    assert resolve(a, "my-model", "my-model", cfg.prices).source == '[prices] "my-model"'
    # The model sent to the node decides, the one asked only after it.
    assert resolve(d, "fast", "gpt-4o-mini", cfg.prices).price == SHIPPED["gpt-4o-mini"]
    assert resolve(a, "unknown-model", "unknown-model", cfg.prices) is None


@pytest.mark.parametrize(
    ("name", "listed"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("openai/gpt-4o-mini", "gpt-4o-mini"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("DeepSeek-Chat", "deepseek-chat"),
    ],
)
def test_a_model_is_found_without_its_provider_prefix_date_or_latest(name: str, listed: str) -> None:
    node = config().upstream.nodes[0]
    applied = resolve(node, name, name, {})
    assert applied is not None and applied.price == SHIPPED[listed] and applied.source.endswith(listed)


def test_cost_counts_cached_and_cache_written_prompt_tokens_at_their_prices() -> None:
    price = Price(input=3.0, output=15.0, cached_input=0.3, cache_write=3.75)
    # 1000 prompt tokens, of which 600 read from the cache and 300 written to it: 100 fresh.
    assert cost(price, 1000, 200, 600, 300) == pytest.approx((100 * 3 + 600 * 0.3 + 300 * 3.75 + 200 * 15) / 1e6)
    # Unset cache prices are the input price; counts a provider leaves out are 0.
    assert cost(Price(2.0, 8.0), 1000, None, 400) == pytest.approx(1000 * 2 / 1e6)
    # A cached count larger than the prompt (a provider's own arithmetic) never makes a negative part.
    assert cost(Price(2.0, 8.0, 1.0), 10, 0, 50) == pytest.approx(50 * 1 / 1e6)


def test_the_price_book_caches_and_stays_bounded() -> None:
    book = PriceBook(config())
    assert book.lookup("deepseek", "gpt-4o") == ("deepseek-chat", resolve(book.nodes["deepseek"], "gpt-4o",
                                                                          "deepseek-chat", {}))  # fmt: skip
    assert book.lookup("openai", "gpt-4o")[0] == "gpt-4o" and book.lookup("openai", None) == (None, None)
    for i in range(5000):  # model names come from clients
        book.lookup("openai", f"m{i}")
    assert len(book.cache) <= 4096
    assert book.lookup("nobody", "gpt-4o") == ("gpt-4o", None)


# ---------------------------------------------------------------------------- the ledger


def test_days_and_months_are_local_and_follow_summer_time() -> None:
    start, end = day_bounds(JUNE_3_NOON)
    assert time.strftime("%Y-%m-%d %H:%M", time.localtime(start)) == "2026-06-03 00:00"
    assert end - start == 86400
    # The night summer time ends (25 October 2026) is 25 hours long.
    autumn = day_bounds(time.mktime((2026, 10, 25, 12, 0, 0, 0, 0, -1)))
    assert autumn[1] - autumn[0] == 25 * 3600
    month = month_bounds(JUNE_3_NOON)
    assert time.strftime("%Y-%m-%d", time.localtime(month[1])) == "2026-07-01"


def test_spend_adds_up_by_node_and_model_and_resets_at_local_midnight() -> None:
    ledger = Ledger(Budget(daily_usd=1.0), {"a": Budget(daily_usd=0.5)}, JUNE_3_NOON)
    ledger.add("a", "gpt-4o", 0.3, JUNE_3_NOON + 1)
    ledger.add("a", "gpt-4o", 0.3, JUNE_3_NOON + 2)
    ledger.add("b", "deepseek-chat", 0.5, JUNE_3_NOON + 3)
    assert ledger.nodes_over().keys() == {"a"}
    over = ledger.sidecar_over()
    assert over is not None and over.spent == pytest.approx(1.1) and over.until == day_bounds(JUNE_3_NOON)[1]
    assert over.words == "the sidecar's daily budget of $1.00 (budget.daily_usd) is spent: $1.10 today"
    report = ledger.report(JUNE_3_NOON + 4, AS_OF)
    assert report["today_usd"] == pytest.approx(1.1) and report["over"] is not None
    assert {(m["node"], m["model"], m["requests"]) for m in report["models"]} == {
        ("a", "gpt-4o", 2),
        ("b", "deepseek-chat", 1),
    }
    midnight = day_bounds(JUNE_3_NOON)[1]
    ledger.add("a", "gpt-4o", 0.01, midnight + 1)  # the next day: today starts from zero, the month goes on
    assert ledger.total_today == pytest.approx(0.01) and ledger.total_month == pytest.approx(1.11)
    assert ledger.sidecar_over() is None and ledger.nodes_over() == {}
    ledger.add("a", "gpt-4o", 5.0, midnight - 10)  # a request of yesterday ending late: yesterday is closed
    assert ledger.total_today == pytest.approx(0.01)


def test_a_monthly_budget_outlasts_the_day() -> None:
    ledger = Ledger(Budget(monthly_usd=2.0), {}, JUNE_3_NOON)
    ledger.restore("a", "gpt-4o", 1.5, today=False)  # read back from the journal: earlier this month
    ledger.restore("a", "gpt-4o", 0.25, today=True, requests=2)
    assert ledger.total_today == pytest.approx(0.25) and ledger.total_month == pytest.approx(1.75)
    ledger.add("a", "gpt-4o", 0.25, JUNE_3_NOON)
    assert ledger.requests[("a", "gpt-4o")] == 3  # today's two read back, and this one
    over = ledger.sidecar_over()
    assert over is not None and over.period == "monthly" and over.until == month_bounds(JUNE_3_NOON)[1]
    ledger.configure(Budget(monthly_usd=10.0), {})  # raised on reload: no longer spent, the spend stays
    assert ledger.sidecar_over() is None and ledger.total_month == pytest.approx(2.0)


# ---------------------------------------------------------------------------- the gate


def test_the_gate_excludes_nodes_until_their_budget_resets() -> None:
    gate = Budgets()
    gate.nodes["a"] = Out("node a's daily budget ...", until=1000.0)
    index = {"a": 0, "b": 1}
    assert gate.excluded(index, 999.0) == {0}
    assert gate.refusal(["a", "b"], 999.0) is None  # b still takes the traffic
    refusal = gate.refusal(["a"], 999.0)
    assert refusal is not None and "every node for this request has spent its budget" in refusal.words
    assert gate.excluded(index, 1000.0) == set() and gate.nodes == {}  # reset: back, and forgotten
    gate.sidecar = Out("the sidecar's daily budget ...", until=2000.0)
    assert gate.refusal(["b"], 1500.0) is gate.sidecar
    assert "resets at" in gate.sidecar.message(1500.0) and "(in 0h08m)" in gate.sidecar.message(1500.0)
    assert gate.refusal(["b"], 2000.0) is None and gate.sidecar is None


# ---------------------------------------------------------------------------- config and check


@pytest.mark.parametrize(
    ("extra", "key", "words"),
    [
        ({"budget": {"daily_usd": 0}}, "budget.daily_usd", "more than 0"),
        ({"budget": {"weekly_usd": 1}}, "budget.weekly_usd", "unknown key"),
        ({"prices": {"gpt-4o": {"input": 1}}}, "prices.gpt-4o.output", "is required"),
        ({"prices": {"gpt-4o": {"input": 1, "output": 1e9}}}, "prices.gpt-4o.output", "must be <="),
        ({"prices": {"gpt-4o": 2.5}}, "prices.gpt-4o", "expected a price table"),
        ({"journal": {"path": "relative.db"}}, "journal.path", "absolute path"),
        ({"journal": {"max_bytes": 10}}, "journal.max_bytes", "must be >="),
        ({"journal": {"bodies": "yes"}}, "journal.bodies", "expected true/false"),
    ],
)
def test_bad_spend_and_journal_keys_are_named(extra: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config(**extra)
    assert caught.value.key == key and words in caught.value.message


def test_a_node_price_table_is_checked_key_by_key() -> None:
    node = {"name": "a", "url": "http://a.invalid", "price": {"input": -1, "outptu": 2}, "budget": {"daily_usd": "5"}}
    with pytest.raises(ConfigError) as caught:
        config(nodes=[node])
    lines = str(caught.value).splitlines()
    assert any('("a").price.input: must be >= 0' in line for line in lines)
    assert any('("a").price.outptu: unknown key (did you mean "output"?)' in line for line in lines)
    assert any('("a").budget.daily_usd: expected an integer or a number' in line for line in lines)


def test_check_says_which_price_applies_and_warns_where_none_does(tmp_path: Path) -> None:
    cfg = config(
        budget={"daily_usd": 20},
        nodes=[
            {"name": "openai", "url": "http://a.invalid", "models": {"gpt-4o": "gpt-4o-2024-08-06", "mine": "mine"}},
            {
                "name": "cheap",
                "url": "http://b.invalid",
                "price": {"input": 0.1, "output": 0.2},
                "budget": {"daily_usd": 5},
            },
        ],
    )
    text, warnings = plan(cfg)
    assert "openai       gpt-4o -> gpt-4o-2024-08-06: $2.5 in, $1.25 cached, $10 out (shipped table" in text
    assert "openai       mine: no price" in text
    assert "cheap        any model: $0.1 in, $0.2 out (its price)" in text
    assert "budget   sidecar $20 a day (past it: 429); cheap $5 a day (past it: out, traffic fails over)" in text
    assert warnings == [
        "node openai, model mine: no price applies, so its spend is not counted and no budget can stop it "
        "(set price = { input = ..., output = ... } on the node, or [prices])"
    ]
    path = tmp_path / "c.toml"
    path.write_text(
        '[journal]\nenabled = false\n[budget]\nmonthly_usd = 100\n[[upstream.nodes]]\nname = "x"\n'
        'url = "http://x.invalid"\nmodels = { "*" = "no-such-model" }\n'
    )
    done = cli("check", "-c", str(path))
    assert done.returncode == 0, done.stderr
    assert "x            * -> no-such-model: no price" in done.stdout
    assert "journal  off: no request log, and spend starts from zero at each start" in done.stdout
    assert "llm-sidecar: warning: node x, model * -> no-such-model: no price applies" in done.stderr
    assert "llm-sidecar: warning: budgets are set but [journal] is off" in done.stderr
