"""Ages and durations as people read them; shared by `llm-sidecar status` and the monitor."""

from __future__ import annotations


def age(ts: float | None, now: float) -> str:
    """How long ago a Unix timestamp was: 42s, 7m, 3.5h."""
    if ts is None:
        return "-"
    seconds = max(0.0, now - ts)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def ms(value: float | None) -> str:
    """Milliseconds with a decimal only where it matters."""
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"
