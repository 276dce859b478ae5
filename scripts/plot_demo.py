"""Record a run of `llm-sidecar demo` and plot it: requests per node over time, the outage, and latency.

    python scripts/plot_demo.py record demo-run.jsonl [--duration 45]   # needs the sidecar installed
    python scripts/plot_demo.py plot demo-run.jsonl docs/demo-run.png   # needs matplotlib: pip install '.[plot]'
    python scripts/plot_demo.py both docs/demo-run.png [--jsonl demo-run.jsonl] [--duration 45]

`record` runs the real demo (`llm-sidecar demo --no-tui`: two fake providers, the sidecar in front of them,
light traffic and the demo's own scripted outage of the primary), reads the demo's control socket from its
first line of output, and writes every event of the control API's `GET /v1/events` stream to a JSONL file,
one JSON object a line, plus three kinds of lines of its own: `{"type": "start"}` when the demo's clock
starts, `{"type": "script", "t", "text"}` for each step of the outage script as the demo plays it, and
`{"type": "summary", "text"}`, the demo's closing summary.

`plot` needs only that file. Reading and aggregating it (everything above `plot()`) is plain Python, so it
is importable and testable without matplotlib.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MATPLOTLIB_HINT = (
    "plot_demo.py: matplotlib is not installed: pip install 'llm-sidecar[plot]' (or '.[plot]' in the repo)"
)

# ---------------------------------------------------------------------------------------------------------------
# Reading and aggregating (pure: no matplotlib, no I/O beyond reading the file)


def read_events(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, in order, without duplicates of the same control-API `seq`."""
    return list(parse_lines(path.read_text().splitlines()))


def parse_lines(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    seen: set[int] = set()
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line cut by a recorder that was killed
        if not isinstance(event, dict) or not isinstance(event.get("time"), int | float):
            continue
        seq = event.get("seq")
        if isinstance(seq, int):
            if seq in seen:
                continue
            seen.add(seq)
        yield event


def origin(events: list[dict[str, Any]]) -> float:
    """Time zero: when the demo's clock started (a `start` line), else the first event."""
    for event in events:
        if event.get("type") == "start":
            return float(event["time"])
    return min((float(e["time"]) for e in events), default=0.0)


def requests_per_node(
    events: list[dict[str, Any]], t0: float, bucket: float = 1.0, end: float | None = None
) -> tuple[list[float], dict[str, list[float]]]:
    """Requests per second served by each node, in buckets of `bucket` seconds from t0.

    Returns the buckets' start times and, per node, one rate per bucket (requests in it / bucket). A
    request that no node answered counts under "(no answer)". Requests before t0 are left out; with `end`
    (seconds from t0, e.g. the demo's duration) only whole buckets up to it are kept, so the last bar is
    not a partial one that looks like a drop in traffic.
    """
    reqs = [e for e in events if e.get("type") == "request" and float(e["time"]) >= t0]
    if not reqs:
        return [], {}
    last = max(float(e["time"]) for e in reqs) - t0
    n = int(last // bucket) + 1 if end is None else max(1, int(end // bucket))
    starts = [i * bucket for i in range(n)]
    rates: dict[str, list[float]] = {}
    for e in reqs:
        i = int((float(e["time"]) - t0) // bucket)
        if i < n:
            rates.setdefault(e.get("node") or "(no answer)", [0.0] * n)[i] += 1.0 / bucket
    return starts, rates


def duration(events: list[dict[str, Any]]) -> float | None:
    """The demo's --duration, when the recording says it."""
    for event in events:
        if event.get("type") == "start" and isinstance(event.get("duration"), int | float):
            return float(event["duration"])
    return None


@dataclass
class Outage:
    """A node out of service, in seconds from t0: from leaving `healthy` to being healthy again."""

    node: str
    start: float
    start_reason: str
    end: float | None = None  # None: not back within the recording
    end_reason: str = ""
    states: list[str] = field(default_factory=list)  # the states it went through, in order


def outages(events: list[dict[str, Any]], t0: float) -> list[Outage]:
    """Node outages as the sidecar saw them, from `health` events (a model's own health is left out)."""
    found: list[Outage] = []
    open_: dict[str, Outage] = {}
    for e in events:
        if e.get("type") != "health" or e.get("model"):
            continue
        node, before, after = str(e.get("node")), e.get("before"), e.get("after")
        at = float(e["time"]) - t0
        current = open_.get(node)
        if current is None and before == "healthy" and after != "healthy":
            current = open_[node] = Outage(node, at, str(e.get("reason", "")), states=[str(after)])
            found.append(current)
        elif current is not None and after == "healthy":
            current.end, current.end_reason = at, str(e.get("reason", ""))
            del open_[node]
        elif current is not None:
            current.states.append(str(after))
    return found


def script_steps(events: list[dict[str, Any]], t0: float) -> list[tuple[float, str]]:
    """The demo's outage script as played: (seconds from t0, what happened)."""
    return [(float(e["time"]) - t0, str(e.get("text", ""))) for e in events if e.get("type") == "script"]


def scripted_outage(events: list[dict[str, Any]], t0: float) -> tuple[float, float | None] | None:
    """When the script broke the primary and when it made it answer again, if the recording has the script."""
    steps = script_steps(events, t0)
    began = next((at for at, text in steps if text.upper().startswith("OUTAGE")), None)
    if began is None:
        return None
    back = next((at for at, _ in steps if at > began), None)
    return began, back


@dataclass
class Latency:
    """One answered request: when it ended (s from t0), its latency (ms), and what it was."""

    at: float
    ms: float
    node: str
    stream: bool
    failed_over: bool  # an attempt failed before another one answered


def latencies(events: list[dict[str, Any]], t0: float) -> list[Latency]:
    """Time to first token for streams, total time for the others; requests with an answer only."""
    out: list[Latency] = []
    for e in events:
        if e.get("type") != "request" or not e.get("node") or float(e["time"]) < t0:
            continue
        stream = bool(e.get("stream"))
        ms = e.get("ttft_ms") if stream else e.get("total_ms")
        if not isinstance(ms, int | float) or not math.isfinite(ms):
            ms = e.get("total_ms")
        if not isinstance(ms, int | float):
            continue
        failed = bool(e.get("failed")) or (isinstance(e.get("attempts"), int) and e["attempts"] > 1)
        out.append(Latency(float(e["time"]) - t0, float(ms), str(e["node"]), stream, failed))
    return out


@dataclass
class Counts:
    requests: int = 0
    by_node: dict[str, int] = field(default_factory=dict)
    failed_over: int = 0  # answered after another attempt failed
    errors: int = 0  # the client got no 2xx answer


def counts(events: list[dict[str, Any]]) -> Counts:
    c = Counts()
    for e in events:
        if e.get("type") != "request":
            continue
        c.requests += 1
        node = e.get("node")
        status = e.get("status")
        if node and isinstance(status, int) and 200 <= status < 300:
            c.by_node[str(node)] = c.by_node.get(str(node), 0) + 1
            if e.get("failed") or (isinstance(e.get("attempts"), int) and e["attempts"] > 1):
                c.failed_over += 1
        else:
            c.errors += 1
    return c


def subtitle(c: Counts) -> str:
    nodes = ", ".join(f"{n} {k}" for n, k in sorted(c.by_node.items(), key=lambda i: -i[1]))
    return (
        f"{c.requests} requests ({nodes}); {c.failed_over} failed over inside the request;"
        f" {c.errors} errors the client saw"
    )


def summary_text(events: list[dict[str, Any]]) -> str:
    return next((str(e.get("text", "")) for e in events if e.get("type") == "summary"), "")


# ---------------------------------------------------------------------------------------------------------------
# Recording


SOCKET_LINE = re.compile(r"\(control socket (?P<path>[^)]+)\)")
SCRIPT_LINE = re.compile(r"^=== t=\s*(?P<t>[\d.]+)s\s+(?P<text>.*)$")


async def record(out: Path, duration: float) -> int:
    """Run `llm-sidecar demo --no-tui` for `duration` s and write its events to `out`. Returns its exit code."""
    from sidecar.control.client import AsyncControlClient, NotRunning

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sidecar", "demo", "--no-tui", "--duration", f"{duration:g}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    with out.open("w") as sink:

        def write(event: dict[str, Any]) -> None:
            sink.write(json.dumps(event, separators=(",", ":")) + "\n")

        socket: Path | None = None
        while socket is None:
            raw = await asyncio.wait_for(proc.stdout.readline(), 30)
            if not raw:
                print("plot_demo.py: the demo ended before it printed its control socket", file=sys.stderr)
                print("".join(lines), file=sys.stderr)
                return await proc.wait() or 1
            line = raw.decode(errors="replace").rstrip("\n")
            lines.append(line + "\n")
            if match := SOCKET_LINE.search(line):
                socket = Path(match["path"])
                write({"type": "start", "time": time.time(), "duration": duration, "line": line})

        async def stdout() -> None:
            assert proc.stdout is not None
            summary: list[str] = []
            while raw := await proc.stdout.readline():
                line = raw.decode(errors="replace").rstrip("\n")
                if match := SCRIPT_LINE.match(line.strip()):
                    write({"type": "script", "time": time.time(), "t": float(match["t"]), "text": match["text"]})
                if line.startswith("what happened") or summary:
                    summary.append(line)
            if summary:
                write({"type": "summary", "time": time.time(), "text": "\n".join(summary)})

        async def control() -> None:
            with contextlib.suppress(NotRunning):
                async with AsyncControlClient(socket) as client:
                    async for event in client.events(replay=True):
                        write(event)

        reader = asyncio.ensure_future(stdout())
        events = asyncio.ensure_future(control())
        code = await proc.wait()
        await reader
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(events, 5)
        events.cancel()
    return code


# ---------------------------------------------------------------------------------------------------------------
# Plotting (matplotlib, imported here only)

NODE_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#7f7f7f"]


def plot(events: list[dict[str, Any]], png: Path, bucket: float = 2.0, title: str = "") -> None:
    """Two panels sharing a time axis: requests/s per node (stacked), and per-request latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    t0 = origin(events)
    length = duration(events)
    starts, rates = requests_per_node(events, t0, bucket, length)
    lat = [x for x in latencies(events, t0) if length is None or x.at <= length]
    downs = outages(events, t0)
    scripted = scripted_outage(events, t0)
    end = length or max([starts[-1] + bucket if starts else 0.0, *(x.at for x in lat)], default=1.0)
    # Nodes in order of their first request: the primary first in the demo.
    nodes = sorted(rates, key=lambda n: next(i for i, r in enumerate(rates[n]) if r > 0))
    colour = {n: NODE_COLOURS[i % len(NODE_COLOURS)] for i, n in enumerate(nodes)}

    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(11.5, 6.6), dpi=100, sharex=True, gridspec_kw={"height_ratios": [3, 2], "hspace": 0.08}
    )
    headline = title or "llm-sidecar demo: the primary fails, traffic fails over, the primary comes back"
    fig.suptitle(f"{headline}\n{subtitle(counts(events))}", fontsize=11)

    bottom_of = [0.0] * len(starts)
    for node in nodes:
        top.bar(starts, rates[node], width=bucket, bottom=bottom_of, align="edge", color=colour[node],
                label=f"served by {node}", edgecolor="white", linewidth=0.4)  # fmt: skip
        bottom_of = [a + b for a, b in zip(bottom_of, rates[node], strict=True)]
    peak = max(bottom_of, default=1.0)
    top.set_ylim(0, peak * 1.55 + 0.1)
    top.set_ylabel(f"requests/s\n(per {bucket:g} s bucket)")

    # The outage: shaded from when the script broke the primary (or the sidecar saw it) to when it was back.
    shade_from: float | None = None
    shade_to: float | None = None
    if scripted is not None:
        shade_from, shade_to = scripted[0], scripted[1] if scripted[1] is not None else end
        shade_label = "primary down (answers 503)"
    elif downs:
        shade_from, shade_to = downs[0].start, downs[0].end if downs[0].end is not None else end
        shade_label = f"{downs[0].node} out of service"
    for ax in (top, bottom):
        if shade_from is not None and shade_to is not None:
            ax.axvspan(shade_from, shade_to, color="#d62728", alpha=0.10, lw=0,
                       label=shade_label if ax is top else None)  # fmt: skip
        for o in downs:
            ax.axvline(o.start, color="#d62728", lw=1.2, ls="--")
            if o.end is not None:
                ax.axvline(o.end, color="#2ca02c", lw=1.2, ls="--")
    # Labels in the headroom above the bars: the script's steps (grey, dotted) to the left of their line, what
    # the sidecar did (from its health events, dashed) to the right of its line, on two levels.
    if scripted is not None:
        top.axvline(scripted[0], color="#555555", lw=1, ls=":")
        top.text(scripted[0] - 0.3, peak * 1.42, "outage begins:\nprimary answers 503", ha="right", va="center",
                 fontsize=8, color="#555555")  # fmt: skip
        if scripted[1] is not None:
            top.axvline(scripted[1], color="#555555", lw=1, ls=":")
            top.text(scripted[1] - 0.3, peak * 1.42, "primary answers again", ha="right", va="center",
                     fontsize=8, color="#555555")  # fmt: skip
    for o in downs:
        top.text(o.start + 0.3, peak * 1.2, f"failover: {o.node}\n{o.states[0]} ({o.start_reason})",
                 ha="left", va="center", fontsize=8, color="#d62728")  # fmt: skip
        if o.end is not None:
            top.text(o.end + 0.3, peak * 1.2, f"recovered: {o.node} healthy\n({o.end_reason})",
                     ha="left", va="center", fontsize=8, color="#2ca02c")  # fmt: skip
    top.legend(loc="lower left", bbox_to_anchor=(0, 1.01), ncol=3, fontsize=8, frameon=False, borderaxespad=0)
    top.grid(axis="y", alpha=0.3)

    for node in nodes:
        for stream, marker in ((True, "o"), (False, "s")):
            xs = [x.at for x in lat if x.node == node and x.stream == stream and not x.failed_over]
            ys = [x.ms for x in lat if x.node == node and x.stream == stream and not x.failed_over]
            if xs:
                bottom.scatter(xs, ys, s=14, marker=marker, color=colour[node], alpha=0.75)
    failed = [x for x in lat if x.failed_over]
    if failed:
        bottom.scatter([x.at for x in failed], [x.ms for x in failed], s=50, marker="x", color="black", lw=1.2,
                       zorder=3)  # fmt: skip
    key = [
        Line2D([], [], ls="", marker="o", color="grey", label="stream: time to first token"),
        Line2D([], [], ls="", marker="s", color="grey", label="JSON: total time"),
        Line2D([], [], ls="", marker="x", color="black", mew=1.2, label="an attempt failed, another node answered"),
    ]
    bottom.legend(handles=key, loc="upper right", fontsize=7, ncol=3, framealpha=0.9)
    bottom.set_yscale("log")
    bottom.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    bottom.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    bottom.yaxis.set_minor_formatter(NullFormatter())
    bottom.set_ylim(top=max((x.ms for x in lat), default=10.0) * 4)
    bottom.set_ylabel("latency per request\n(ms, log scale; colour = node)")
    bottom.set_xlabel("time since the demo started (s)")
    bottom.grid(alpha=0.3, which="both", axis="y")
    bottom.set_xlim(0, end)
    fig.savefig(png, dpi=100, bbox_inches="tight")
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="run the demo and record its events to a JSONL file")
    rec.add_argument("jsonl", type=Path)
    rec.add_argument("--duration", type=float, default=45.0, help="seconds of demo (default 45: the whole story)")
    plo = sub.add_parser("plot", help="plot a recorded JSONL file to a PNG")
    plo.add_argument("jsonl", type=Path)
    plo.add_argument("png", type=Path)
    both = sub.add_parser("both", help="record, then plot")
    both.add_argument("png", type=Path)
    both.add_argument("--jsonl", type=Path, default=None, help="where to keep the recording (default: next to png)")
    both.add_argument("--duration", type=float, default=45.0)
    for p in (plo, both):
        p.add_argument("--bucket", type=float, default=2.0, help="seconds per bar (default 2)")
        p.add_argument("--title", default="")
    args = parser.parse_args(argv)

    if args.command in ("plot", "both"):
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(MATPLOTLIB_HINT, file=sys.stderr)
            return 2
    jsonl: Path = args.jsonl if args.jsonl is not None else args.png.with_suffix(".jsonl")
    if args.command in ("record", "both"):
        code = asyncio.run(record(jsonl, args.duration))
        if code != 0:
            print(f"plot_demo.py: the demo exited with status {code}", file=sys.stderr)
            return code
        events = read_events(jsonl)
        print(f"recorded {len(events)} events to {jsonl}")
    if args.command in ("plot", "both"):
        events = read_events(jsonl)
        plot(events, args.png, bucket=args.bucket, title=args.title)
        print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
