"""What counting Prometheus metrics costs: the same sidecar with and without it, interleaved.

    python bench/metrics_cost.py                 # c=16 and c=256, 5 rounds of 5 s per side
    python bench/metrics_cost.py --seconds 3 --rounds 3

Two sidecars in front of bench/upstream.py, set up as in bench/run.py (active and passive checks, access
log at INFO), both pinned to CPU 0 and measured one at a time, alternately, round by round (who goes
first alternates too). "on" is `llm-sidecar run` as shipped; "off" is the same code started with
`sidecar.metrics.COUNTING = False`, so the event hub is not wrapped at all: no counting, nothing else
changed (metrics_path = "" would only close the route, the counting goes on for the control socket).
A third sidecar, "off2", is the same as "off": its difference from "off" is the noise floor of the
run, measured under the same conditions. A scrape every second on the "on" side, as Prometheus would
do at a short interval, is included in its cost. Printed: medians of req/s, the median of paired
rounds, the sidecar's CPU time per request (less sensitive to other load on the machine than req/s),
and the counting's own CPU per request event measured in process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import (  # noqa: E402 - bench/run.py is a script, not a package
    BODY,
    ROOT,
    WRK_SCRIPT,
    Procs,
    free_port,
    py_load,
    sidecar_config,
    wait_port,
    wrk,
)

OFF = "import sys, sidecar.metrics as m; m.COUNTING = False; from sidecar.cli import main; sys.exit(main())"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def requests_total(port: int) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "llm_sidecar_requests_total"
    )


class Scraper:
    """Scrapes one sidecar every `interval` seconds from a thread, as Prometheus would."""

    def __init__(self, port: int, interval: float = 1.0) -> None:
        self.port = port
        self.interval = interval
        self.stop = threading.Event()
        self.count = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
                    r.read()
                self.count += 1
            except OSError:
                pass


def micro(n: int = 200_000) -> tuple[float, float]:
    """Microseconds per published `request` event without and with counting (one core, in process): the
    counting's own CPU time, which the interleaved load measures with the machine's noise on top."""
    import gc

    from sidecar import metrics
    from sidecar.config.load import parse
    from sidecar.nodes.runtime import Runtime
    from sidecar.observe.events import EventHub

    nodes = [{"name": "primary", "url": "http://127.0.0.1:1", "priority": 0},
             {"name": "backup", "url": "http://127.0.0.1:2", "priority": -1, "models": {"gpt-4o": "x"}}]  # fmt: skip
    config = parse({"upstream": {"nodes": nodes}}, "<bench>", env={})
    plain, counted = Runtime(config, events=EventHub()), Runtime(config, events=EventHub())
    metrics.attach(counted)
    event = {
        "type": "request", "id": "r1", "method": "POST", "path": "/v1/chat/completions", "model": "gpt-4o-mini",
        "node": "primary", "status": 200, "attempts": 1, "failed": [], "continued": [], "stream": False,
        "ttfb_ms": 0.8, "ttft_ms": None, "total_ms": 1.1, "tokens_in": 9, "tokens_out": 2, "tokens_cached": None,
        "error": None,
    }  # fmt: skip
    per_event = []
    for runtime in (plain, counted):
        emit = runtime.events.emit
        gc.disable()
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(n):
                emit(event)
            best = min(best, time.perf_counter() - started)
        gc.enable()
        per_event.append(best / n * 1e6)
    return per_event[0], per_event[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="per round and side")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--levels", default="16,256", help="concurrency levels")
    parser.add_argument("--scrape-every", type=float, default=1.0, help="seconds between scrapes of 'on' (0: never)")
    args = parser.parse_args()
    use_wrk = shutil.which("wrk") is not None
    tmp = Path(tempfile.mkdtemp(prefix="llm-sidecar-metrics-cost-"))
    env = {**os.environ, "BENCH_KEY": "bench-key", "PYTHONPATH": str(ROOT)}
    procs = Procs()
    script = tmp / "post.lua"
    script.write_text(WRK_SCRIPT % BODY)

    def measure(port: int, c: int) -> dict[str, float]:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        if use_wrk:
            return wrk(url, c, args.seconds, script)
        return asyncio.run(py_load(url, c, args.seconds, BODY, False))

    sides = ("on", "off", "off2")  # off2: a second sidecar without counting, the A/A control (the noise floor)
    try:
        upstream = free_port()
        procs.start([sys.executable, str(HERE / "upstream.py"), str(upstream)], cpu=1)
        ports = {name: free_port() for name in sides}
        pids: dict[str, int] = {}
        for name, port in ports.items():
            config = tmp / f"{name}.toml"
            config.write_text(sidecar_config(upstream, port, tmp / f"{name}.sock"))
            head = [sys.executable, "-m", "sidecar"] if name == "on" else [sys.executable, "-c", OFF]
            log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
            car = procs.start([*head, "run", "-c", str(config), "--log-level", "info"], cpu=0, env=env, stderr=log,
                              cwd=ROOT)  # fmt: skip
            pids[name] = car.pid  # taskset execs the command: the same process
        for port in [upstream, *ports.values()]:
            wait_port(port)
        time.sleep(0.5)
        for port in ports.values():  # warm up
            measure(port, 4)
        scraper = Scraper(ports["on"], args.scrape_every)
        if args.scrape_every > 0:
            scraper.thread.start()
        results: dict[int, dict[str, list[dict[str, float]]]] = {}
        for c in (int(x) for x in args.levels.split(",")):
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
            for i in range(args.rounds):
                for name in sides[i % 3 :] + sides[: i % 3]:  # who goes first rotates
                    cpu = cpu_seconds(pids[name])
                    result = measure(ports[name], c)
                    # CPU per request: much less sensitive to other load on the machine than req/s
                    served = result["rps"] * (max(1, round(args.seconds)) if use_wrk else args.seconds)
                    result["cpu_us"] = (cpu_seconds(pids[name]) - cpu) / served * 1e6
                    runs[name].append(result)
                print(f"  c={c} round {i + 1}: " + ", ".join(f"{n} {runs[n][-1]['rps']:.0f}" for n in sides) + " req/s",
                      file=sys.stderr)  # fmt: skip
            results[c] = runs
        scraper.stop.set()
        if args.scrape_every > 0:
            scraper.thread.join(5)
        counted = {name: requests_total(port) for name, port in ports.items()}
    finally:
        procs.stop()
    print(f"load: {'wrk' if use_wrk else 'aiohttp'}; {args.rounds} rounds of {args.seconds:g} s per side, interleaved;"
          f" 'on' scraped every {args.scrape_every:g} s (0: never)")  # fmt: skip
    print("cost of X = how much less req/s (or more CPU per request) X has than 'off'; 'off2' vs 'off' is the noise")
    print(
        "| c | side | req/s | cost (medians) | cost (median of paired rounds) | CPU us/req | CPU cost | p99 ms | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for c, runs in results.items():
        base = runs["off"]
        off = statistics.median(r["rps"] for r in base)
        cpu_off = statistics.median(r["cpu_us"] for r in base)
        for name in sides:
            mine = runs[name]
            rps = statistics.median(r["rps"] for r in mine)
            cpu = statistics.median(r["cpu_us"] for r in mine)
            paired = statistics.median(100 * (b["rps"] - a["rps"]) / b["rps"] for a, b in zip(mine, base, strict=True))
            p99 = statistics.median(r["p99_ms"] for r in mine)
            errors = sum(r["errors"] for r in mine)
            cost = "-" if name == "off" else f"{100 * (off - rps) / off:+.1f}%"
            paired_cost = "-" if name == "off" else f"{paired:+.1f}%"
            cpu_cost = "-" if name == "off" else f"{100 * (cpu - cpu_off) / cpu_off:+.1f}%"
            print(f"| {c} | {name} | {rps:.0f} | {cost} | {paired_cost} | {cpu:.0f} | {cpu_cost} | {p99:.2f} | "
                  f"{errors:.0f} |")  # fmt: skip
    plain, with_counting = micro()
    extra = with_counting - plain
    print(f"counting in process: emit {plain:.2f} us -> {with_counting:.2f} us per request event (+{extra:.2f} us)")
    for c, runs in results.items():
        off = statistics.median(r["rps"] for r in runs["off"])
        cpu_off = statistics.median(r["cpu_us"] for r in runs["off"])
        print(
            f"  c={c}: +{extra:.2f} us on {cpu_off:.0f} us of sidecar CPU per request is {100 * extra / cpu_off:.2f}%"
        )
    print(f"scrapes of 'on' during the run: {scraper.count}")
    print("requests_total: " + ", ".join(f"{n} {v:.0f}" for n, v in counted.items()) + " (only 'on' counts)")


if __name__ == "__main__":
    main()
