"""Spend as the monitor's header shows it: today against the daily budget (the status answer's `spend`)."""

from __future__ import annotations

from rich.text import Text

from sidecar.observe.shapes import SpendJSON


def dollars(value: float) -> str:
    return f"${value:,.2f}" if value >= 0.995 or value == 0 else f"${value:.4f}"


def spend_text(spend: SpendJSON) -> Text:
    """Spend today against the budget: `$1.24 of $20.00 today`, red once the budget is spent."""
    today = dollars(spend["today_usd"])
    if spend["over"] is not None:
        return Text(f"{today} today: budget spent", style="bold red")
    if spend["daily_usd"] is None:
        return Text(f"{today} today", style="cyan")
    share = spend["today_usd"] / spend["daily_usd"]
    return Text(f"{today} of {dollars(spend['daily_usd'])} today", style="yellow" if share >= 0.8 else "cyan")
