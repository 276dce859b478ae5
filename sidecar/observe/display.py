"""Ages, durations and a request's marks as people read them; shared by `llm-sidecar status`, `log show` and
the monitor."""

from __future__ import annotations

from collections.abc import Mapping


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


# A health change's reason as the sidecar records it is the last event that moved the node ("manual auto",
# "probe http 200"); read beside the state it led to, some say the opposite of what happened.
WORDS = {"manual down": "drained by hand", "manual auto": "back to auto by hand", "start": "since start"}
PASSED = ("probe http 2", "trial request ok", "ok")


def why_changed(after: str, reason: str, before: str | None = None) -> str:
    """Why a node is in state `after` (coming from `before`, when known), in words that cannot be misread:
    `unhealthy -> ejected (probe http 200)` is probes passing again while failed requests still hold the node
    out, not an ejection because of a 200."""
    if reason in WORDS:
        return WORDS[reason]
    if after == "ejected" and reason.startswith(PASSED) and before != "healthy":
        return f"probes pass ({reason}); still ejected until a request of the kind that failed succeeds"
    return reason


def mark_lines(marks: Mapping[str, object]) -> list[tuple[str, str]]:
    """What a request met beyond its attempts (the journal's marks: docs/journal.md) as (label, words), for
    `llm-sidecar log show` and the monitor's detail. Values are read defensively: a journal is a file."""
    rest = dict(marks)
    out: list[tuple[str, str]] = []
    how = rest.pop("request_caused", None)
    if how:
        out.append(("caused", f"by the request itself ({how} on nodes serving others): no node blamed"))
    for h in _dicts(rest.pop("hedged", None)):
        out.append(("hedged", f"{h.get('node')} over {h.get('over')} ({'won' if h.get('won') else 'lost'})"))
    form, translated = rest.pop("form", None), rest.pop("translated", None)
    if translated or form:
        out.append(("format", str(translated or f"{form}, not translated")))
    for s in _dicts(rest.pop("skipped", None)):
        out.append(("skipped", f"{s.get('node')}: {s.get('reason')}"))
    trace, span = rest.pop("trace_id", None), rest.pop("span_id", None)
    if trace:
        out.append(("trace", f"{trace}" + (f" span {span}" if span else "")))
    if rest:
        out.append(("marks", ", ".join(f"{k}={v}" for k, v in rest.items())))
    return out


def _dicts(value: object) -> list[dict[str, object]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
