"""Time to first token under faults: what an agent waits when a provider goes silent, fails or slows.

    python bench/faults.py                 # about 4 minutes: the phases below at their full length
    python bench/faults.py --hedge 1       # the same with [upstream.hedge] after = 1 s
    python bench/faults.py --quick         # short phases (a smoke run, what tests/test_bench.py runs)

Agent-like load: one streamed chat request every 1/--rate seconds (2 req/s), whatever the answers do,
each bounded by --bound seconds. Two fake providers (the primary and a backup, both answering their
first token after 0.2 s) behind a real `llm-sidecar run` with the defaults (no check tables: passive
checks and recovery probes), through scripted phases:

- floor: the same load straight to the healthy backup, no sidecar: the time a provider itself takes;
- healthy: both providers fine (the first-token limit learns the primary's first tokens here);
- silent: the primary answers 200 and then nothing;
- back: the primary answers again;
- 503: the primary answers 503 to every request, then recovers (the phase goes on past its recovery);
- tail: one answer in ten of the primary's waits 5 s for its first token.

Per phase: p50/p99 TTFT, errors, upstream attempts per request, and the extra upstream requests (every
request the providers saw beyond one per client request: retries, failovers, recovery probes, hedges).
For the 503 phase also: how long after the primary's recovery the first request went back to it, and
how many user requests still met a failed attempt on it after it was first ejected.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from run import ROOT, free_port, wait_port  # noqa: E402 - bench/run.py is a script

from sidecar.fakes.core import Behaviour  # noqa: E402
from sidecar.fakes.serve import start  # noqa: E402

CHAT = "/v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "say hi"}], "stream": True}
FIRST_TOKEN = 0.2  # the providers' own time to a first token
# (name, seconds at full length, the primary's behaviour during it, quick seconds)
PHASES: list[tuple[str, float, dict[str, Any], float]] = [
    ("healthy", 30, {"fail_rate": 0.0}, 14),
    ("silent", 30, {"fail_rate": 1.0, "fault": "silent"}, 16),
    ("back", 15, {"fail_rate": 0.0}, 12),
    ("503", 60, {"fail_rate": 1.0, "fault": "error", "status": 503}, 8),
    ("recovered", 20, {"fail_rate": 0.0}, 12),
    ("tail", 60, {"tail_rate": 0.1, "tail_latency": 5.0}, 12),
]


@dataclass
class Outcome:
    phase: str
    started: float
    ttft: float | None = None
    status: int = 0
    node: str | None = None
    attempts: int = 1
    trail: str = ""
    error: str | None = None


@dataclass
class Phase:
    name: str
    began: float = 0.0
    ended: float = 0.0
    upstream_requests: int = 0  # what the providers saw
    outcomes: list[Outcome] = field(default_factory=list)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def one(session: aiohttp.ClientSession, url: str, phase: str, bound: float) -> Outcome:
    out = Outcome(phase, time.monotonic())
    try:
        async with asyncio.timeout(bound), session.post(url + CHAT, json=BODY) as response:
            out.status = response.status
            out.node = response.headers.get("x-llm-sidecar-node")
            out.attempts = int(response.headers.get("x-llm-sidecar-attempts", "1"))
            out.trail = response.headers.get("x-llm-sidecar-trail", "")
            async for line in response.content:
                if out.ttft is None and line.startswith(b"data: {") and b'"content": "' in line:
                    out.ttft = time.monotonic() - out.started
            if response.status != 200 or out.ttft is None:
                out.error = f"status {response.status}" + ("" if out.ttft is not None else ", no token")
    except TimeoutError:
        out.error = f"no answer within {bound:g}s"
    except aiohttp.ClientError as exc:
        out.error = type(exc).__name__
    return out


async def load(url: str, phase: Phase, seconds: float, rate: float, bound: float) -> None:
    """`rate` requests a second for `seconds`, whatever the answers do; waits for the last to end."""
    tasks = []
    async with aiohttp.ClientSession() as session:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            tasks.append(asyncio.ensure_future(one(session, url, phase.name, bound)))
            await asyncio.sleep(1 / rate)
        phase.outcomes.extend(await asyncio.gather(*tasks))


def config(port: int, sock: Path, primary: int, backup: int, hedge: float | None) -> str:
    """The README's minimal file: two nodes, no check tables (the defaults judge them)."""
    lines = [
        "[server]", f'listen = "127.0.0.1:{port}"', f'control_socket = "{sock}"', "watch = false",
        "[upstream]",
        *([f"hedge = {{ after = {hedge}, budget = 0.15 }}"] if hedge is not None else []),
        "[[upstream.nodes]]", 'name = "primary"', f'url = "http://127.0.0.1:{primary}"', "priority = 0",
        "[[upstream.nodes]]", 'name = "backup"', f'url = "http://127.0.0.1:{backup}"', "priority = -1",
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def row(phase: Phase) -> str:
    ttfts = [o.ttft for o in phase.outcomes if o.ttft is not None]
    n = len(phase.outcomes)
    errors = sum(1 for o in phase.outcomes if o.error)
    attempts = sum(o.attempts for o in phase.outcomes) / n if n else 0.0
    p50, p99 = pct(ttfts, 0.5), pct(ttfts, 0.99)
    extra = phase.upstream_requests - n

    def s(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    return (
        f"{phase.name:<10} {n:>5} {s(p50):>8} {s(p99):>8} {errors:>6} {attempts:>9.2f} "
        f"{extra:>6} ({extra / n if n else 0:.0%})"
    )


async def run(args: argparse.Namespace) -> int:
    quick = args.quick
    primary_port, backup_port, port = free_port(), free_port(), free_port()
    primary, primary_runner = await start("primary", "127.0.0.1", primary_port, Behaviour(latency=FIRST_TOKEN))
    backup, backup_runner = await start("backup", "127.0.0.1", backup_port, Behaviour(latency=FIRST_TOKEN))
    phases: list[Phase] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "llm-sidecar.toml"
        path.write_text(config(port, Path(tmp) / "ctl.sock", primary_port, backup_port, args.hedge))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        car = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "run", "-c", str(path)], env=env, cwd=ROOT,
            stdout=subprocess.DEVNULL, stderr=open(Path(tmp) / "sidecar.log", "wb"),  # noqa: SIM115
        )  # fmt: skip
        try:
            wait_port(port)
            floor = Phase("floor")
            seen = backup.stats.chat
            floor.began = time.monotonic()
            await load(f"http://127.0.0.1:{backup_port}", floor, 8 if quick else 30, args.rate, args.bound)
            floor.upstream_requests = backup.stats.chat - seen
            phases.append(floor)
            for name, seconds, behaviour, quick_seconds in PHASES:
                primary.behaviour.update({"fail_rate": 0.0, "tail_rate": 0.0, **behaviour})
                phase = Phase(name, began=time.monotonic())
                seen = primary.stats.chat + backup.stats.chat
                await load(
                    f"http://127.0.0.1:{port}", phase, quick_seconds if quick else seconds, args.rate, args.bound
                )
                phase.ended = time.monotonic()
                phase.upstream_requests = primary.stats.chat + backup.stats.chat - seen
                phases.append(phase)
        finally:
            car.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                car.wait(10)
            await primary_runner.cleanup()
            await backup_runner.cleanup()
    header = f"{'phase':<10} {'reqs':>5} {'p50 TTFT':>8} {'p99 TTFT':>8} {'errors':>6} {'attempts':>9} {'extra upstream':>14}"
    hedged = f", hedge after {args.hedge:g} s (budget 0.15)" if args.hedge is not None else ", no hedging"
    print(f"time to first token under faults ({args.rate:g} req/s, providers' own first token {FIRST_TOKEN} s{hedged})")
    print(header)
    for phase in phases:
        print(row(phase))
    by_name = {p.name: p for p in phases}
    failing, recovered = by_name["503"], by_name["recovered"]
    back = next((o.started - recovered.began for o in recovered.outcomes if o.node == "primary"), None)
    met = [o for o in failing.outcomes + recovered.outcomes if "primary:" in o.trail]
    served = {p.name: sum(1 for o in p.outcomes if o.node == "primary") for p in phases[1:]}
    print("requests the primary answered, per phase: " + ", ".join(f"{k} {v}" for k, v in served.items()))
    print(
        f"503 phase: back on the primary {'-' if back is None else f'{back:.1f} s'} after its recovery; "
        f"user requests that met a failed attempt on it: {len(met)} (the first ones eject it: 3 failures, "
        "2 a request with its same-node retry; after that only recovery probes reach it)"
    )
    errors = sum(1 for p in phases for o in p.outcomes if o.error)
    print(json.dumps({"errors": errors, "back_s": back, "phases": {p.name: row(p) for p in phases}}))
    return 1 if errors else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=2.0, help="requests a second (default 2)")
    parser.add_argument("--bound", type=float, default=90.0, help="seconds a request may take at most")
    parser.add_argument("--hedge", type=float, default=None, help="hedge after this many seconds (default off)")
    parser.add_argument("--quick", action="store_true", help="short phases: a smoke run")
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
