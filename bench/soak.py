"""Soak: a real sidecar under mixed traffic, client aborts and random node faults, for a bounded count.

    python bench/soak.py                    # 20000 requests (about a minute)
    python bench/soak.py --requests 1500    # what tests/test_soak.py runs

Three fake providers (sidecar/fakes/openai.py, in one process of their own): two "chaos" nodes at the higher
priority level, whose fault changes at random every --chaos-period seconds (503s and 500s, connections
reset before the answer, hangs, 200 then silence, answers cut mid-body or mid-stream, at fail rates from
0 to 1), and one "steady" node below them that never fails. `llm-sidecar run` in front of them with
short timeouts and ejections, so the chaos nodes come back often and faults keep reaching it. Requests
are streamed or not (half each), ~10% of them left by the client mid-way (while sending the body,
while waiting for the answer, or after the first streamed bytes; by FIN or by RST), each bounded by
--hang seconds. The load pauses at the middle and at the end, for the sidecar's RSS and open fds to be
read with nothing in flight.

Exits 1 when a request hung, got a 5xx (with one node always healthy the sidecar never has to give up),
or lost its connection; when a completed answer was broken (a stream without [DONE], a JSON body without
choices); when the sidecar died or logged a traceback; or when its RSS or fds grew from the middle sample
to the end one by more than the tolerance printed with them (the first half is the warm-up).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import ROOT, Procs, fd_count, free_port, rss_mb, wait_port  # noqa: E402 - bench/run.py is a script

CHAT = "/v1/chat/completions"
# How a chaos node fails while it fails: (fake fault, status for "error").
FAULTS = [("error", 503), ("error", 500), ("close", 0), ("hang", 0), ("silent", 0), ("drop", 0)]
FAIL_RATES = [0.0, 0.2, 0.5, 1.0]
ABORTS = ("mid-body", "waiting", "mid-stream")
# End minus middle. RSS: 20000 requests grew it 2.7 MB from the middle to the end (allocator noise and late
# warm-up), so a leak of 1 KB a request shows over the second half's 10000. fds: the samples are taken with
# the upstream pools empty (serve_fakes), so only the active probes' connections come and go.
RSS_TOLERANCE_MB = 10.0
FD_TOLERANCE = 8
QUIET = 2.5  # seconds without load before a sample: longer than an attempt's read timeout and the fakes' keep-alive


def sidecar_config(port: int, sock: Path, nodes: dict[str, int]) -> str:
    lines = [
        "[server]",
        f'listen = "127.0.0.1:{port}"',
        f'control_socket = "{sock}"',
        "watch = false",
        "[journal]",  # on, as shipped, but never the user's file
        f'path = "{sock.with_suffix(".journal.db")}"',
        "[upstream]",
        "retry_timeout = 20",
        "[upstream.timeout]",
        "connect = 0.5",
        "send = 1",
        "read = 1",
        "first_token = 1",
        "[upstream.retry]",
        "backoff = 0.02",
        "max_backoff = 0.1",
        "[upstream.checks.active]",
        "interval = 0.5",
        "timeout = 0.5",
        "[upstream.checks.passive]",
        "base_ejection_time = 0.3",
        "max_ejection_time = 1",
    ]
    for name, node_port in nodes.items():
        lines += [
            "[[upstream.nodes]]",
            f'name = "{name}"',
            f'url = "http://127.0.0.1:{node_port}"',
            f"priority = {0 if name == 'steady' else 1}",
            'api_key = "${SOAK_KEY}"',
            'continuation = "prefill"',  # the fake continues a stream another node broke
        ]
    return "\n".join(lines) + "\n"


@dataclass
class Figures:
    statuses: Counter[int] = field(default_factory=Counter)
    streams: int = 0
    broken: list[str] = field(default_factory=list)  # completed answers that were not whole
    aborted: Counter[str] = field(default_factory=Counter)
    hangs: int = 0
    lost: list[str] = field(default_factory=list)  # connection errors on requests the client did not leave
    latencies: list[float] = field(default_factory=list)
    samples: dict[str, tuple[float, int]] = field(default_factory=dict)  # label -> (RSS MB, fds)
    chaos_changes: int = 0

    def sample(self, label: str, pid: int) -> None:
        self.samples[label] = (rss_mb(pid), fd_count(pid))


def body(i: int, stream: bool) -> bytes:
    # Each request its own conversation: affinity would otherwise hold every request to one chaos node.
    messages = [{"role": "user", "content": f"soak request {i}"}]
    return json.dumps({"model": "gpt-4o-mini", "stream": stream, "messages": messages}).encode()


async def whole(session: aiohttp.ClientSession, url: str, i: int, stream: bool, figures: Figures) -> None:
    """A request the client stays for: its status, and whether a 200 is a whole answer."""
    started = time.monotonic()
    try:
        async with session.post(url + CHAT, data=body(i, stream), headers={"Content-Type": "application/json"}) as r:
            data = await r.read()
    except aiohttp.ClientError as exc:
        figures.lost.append(f"request {i}: {type(exc).__name__}: {exc}")
        return
    figures.latencies.append(time.monotonic() - started)
    figures.statuses[r.status] += 1
    if r.status != 200:
        return
    if stream:
        figures.streams += 1
        if not data.rstrip().endswith(b"data: [DONE]"):
            figures.broken.append(f"request {i}: stream ended without [DONE]: ...{data[-160:]!r}")
    else:
        try:
            whole_json = "choices" in json.loads(data)
        except ValueError:
            whole_json = False
        if not whole_json:
            figures.broken.append(f"request {i}: JSON answer without choices: {data[:160]!r}")


async def left(url: str, i: int, stream: bool, how: str, rng: random.Random, figures: Figures) -> None:
    """A request the client leaves mid-way, over a raw socket: by FIN (close) or RST (abort)."""
    payload = body(i, stream)
    host, port = url.removeprefix("http://").split(":")
    head = (
        f"POST {CHAT} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        if how == "mid-body":
            writer.write(head + payload[: len(payload) // 2])
            await writer.drain()
            await asyncio.sleep(rng.uniform(0, 0.05))
        else:
            writer.write(head + payload)
            await writer.drain()
            if how == "waiting":
                await asyncio.sleep(rng.uniform(0, 0.05))
            else:  # after the first bytes of the answer (the whole answer, when it is short)
                await reader.read(1)
    finally:
        if rng.random() < 0.5:
            writer.transport.abort()
        else:
            writer.close()
    figures.aborted[how] += 1


async def drive(url: str, ids: range, concurrency: int, hang: float, rng: random.Random, figures: Figures) -> None:
    pending = iter(ids)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None)) as session:

        async def worker() -> None:
            for i in pending:
                stream = rng.random() < 0.5
                how = rng.choice(ABORTS) if rng.random() < 0.1 else None
                one = (
                    whole(session, url, i, stream, figures) if how is None else left(url, i, stream, how, rng, figures)
                )
                try:
                    await asyncio.wait_for(one, hang)
                except TimeoutError:
                    figures.hangs += 1
                except OSError as exc:  # a raw request whose connection failed before the client left
                    figures.lost.append(f"request {i} ({how}): {type(exc).__name__}: {exc}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))


async def chaos(urls: list[str], period: float, rng: random.Random, figures: Figures, stop: asyncio.Event) -> None:
    """Change each chaos node's fault at random, every `period` seconds, until `stop`."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        while not stop.is_set():
            for url in urls:
                fault, status = rng.choice(FAULTS)
                change = {"fault": fault, "fail_rate": rng.choice(FAIL_RATES), "status": status or 500}
                async with session.post(url + "/_fake/behaviour", json=change) as r:
                    r.raise_for_status()
                figures.chaos_changes += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), period)


async def serve_fakes(ports: dict[str, int]) -> None:
    """The three fakes in one process until SIGTERM. Idle connections are closed after 1 s (aiohttp keeps
    them an hour), so the sidecar's upstream pools are empty when a sample is taken and the fd counts of the
    samples compare."""
    from aiohttp import web

    from sidecar.fakes.core import Behaviour
    from sidecar.fakes.openai import FakeProvider

    runners = []
    for name, port in ports.items():
        provider = FakeProvider(name, Behaviour(chunks=8, chunk_delay=0.002))
        runner = web.AppRunner(
            provider.app, access_log=None, handle_signals=False, keepalive_timeout=1.0, shutdown_timeout=0.5
        )
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for runner in runners:
        await runner.cleanup()


async def fake_stats(urls: dict[str, str]) -> dict[str, dict[str, Any]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        stats = {}
        for name, url in urls.items():
            async with session.get(url + "/_fake/stats") as r:
                stats[name] = await r.json()
        return stats


async def soak(args: argparse.Namespace, pid: int, url: str, fakes: dict[str, str]) -> tuple[Figures, float, dict]:
    rng = random.Random(args.seed)
    figures = Figures()
    figures.sample("start", pid)
    stop = asyncio.Event()
    chaos_urls = [u for name, u in fakes.items() if name != "steady"]
    changer = asyncio.create_task(chaos(chaos_urls, args.chaos_period, rng, figures, stop))
    began = time.monotonic()
    try:
        half = args.requests // 2
        for label, ids in (("middle", range(half)), ("end", range(half, args.requests))):
            left_s = args.max_seconds - (time.monotonic() - began)
            try:
                await asyncio.wait_for(drive(url, ids, args.concurrency, args.hang, rng, figures), max(left_s, 1))
            except TimeoutError:
                break  # report() says how many finished
            await asyncio.sleep(QUIET)
            figures.sample(label, pid)
    finally:
        stop.set()
        await changer
    elapsed = time.monotonic() - began - 2 * QUIET
    return figures, elapsed, await fake_stats(fakes)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


def report(args: argparse.Namespace, figures: Figures, elapsed: float, stats: dict, alive: bool, log: str) -> list[str]:
    """Print the figures; the reasons the soak failed, if any."""
    levels = Counter(line.split()[1] for line in log.splitlines() if len(line.split()) > 1)
    tracebacks = log.count("Traceback")
    done = sum(figures.statuses.values()) + sum(figures.aborted.values())
    fives = sum(n for status, n in figures.statuses.items() if status >= 500)
    rows = [
        ("requests", f"{done} of {args.requests} in {elapsed:.1f} s ({done / max(elapsed, 1e-9):.0f}/s), c={args.concurrency}"),
        ("answers by status", ", ".join(f"{s}: {n}" for s, n in sorted(figures.statuses.items())) or "none"),
        ("5xx", str(fives)),
        ("streams answered 200", str(figures.streams)),
        ("broken answers", str(len(figures.broken))),
        ("left by the client", ", ".join(f"{k}: {figures.aborted[k]}" for k in ABORTS)),
        (f"hangs (> {args.hang:g} s)", str(figures.hangs)),
        ("connections lost", str(len(figures.lost))),
        ("latency p50 / p99 / max", " / ".join(f"{v:.0f} ms" for v in (
            pct(figures.latencies, 0.5), pct(figures.latencies, 0.99), max(figures.latencies, default=0) * 1000))),
        ("chaos changes", str(figures.chaos_changes)),
        ("sidecar log", f"{levels['WARNING']} warnings, {levels['ERROR']} errors, {tracebacks} tracebacks"),
    ]  # fmt: skip
    for name, s in stats.items():
        rows.append((f"node {name}", f"{s['chat']} chat requests, {s['failed']} failed on purpose"))
    for label, (rss, fds) in figures.samples.items():
        rows.append((f"sidecar {label}", f"RSS {rss:.1f} MB, {fds} fds"))
    width = max(len(k) for k, _ in rows)
    print(f"soak: {args.requests} requests, seed {args.seed}")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")
    problems = []
    if done < args.requests:
        problems.append(f"only {done} of {args.requests} requests finished within {args.max_seconds:g} s")
    if figures.hangs:
        problems.append(f"{figures.hangs} request(s) hung past {args.hang:g} s")
    if fives:
        problems.append(f"{fives} 5xx answer(s) while the steady node was healthy")
    problems += [f"broken: {b}" for b in figures.broken[:5]]
    problems += [f"lost: {lost}" for lost in figures.lost[:5]]
    if not alive:
        problems.append("the sidecar died")
    if tracebacks:
        problems.append(f"{tracebacks} traceback(s) in the sidecar's log")
    if "end" in figures.samples:
        (rss_mid, fds_mid), (rss_end, fds_end) = figures.samples["middle"], figures.samples["end"]
        print(f"  tolerance, middle to end: RSS +{RSS_TOLERANCE_MB:g} MB, fds +{FD_TOLERANCE}")
        if rss_end - rss_mid > RSS_TOLERANCE_MB:
            problems.append(f"RSS grew {rss_end - rss_mid:.1f} MB from the middle to the end")
        if fds_end - fds_mid > FD_TOLERANCE:
            problems.append(f"open fds grew by {fds_end - fds_mid} from the middle to the end")
    print("soak: " + ("FAILED" if problems else "ok"))
    for problem in problems:
        print(f"  {problem}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--hang", type=float, default=30.0, help="seconds after which a request counts as hung")
    parser.add_argument("--chaos-period", type=float, default=0.5, help="seconds between fault changes")
    parser.add_argument("--max-seconds", type=float, default=1800.0, help="the bound on the whole load")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--serve-fakes", metavar="JSON", help=argparse.SUPPRESS)  # the fakes' own process
    args = parser.parse_args()
    if args.serve_fakes:
        asyncio.run(serve_fakes(json.loads(args.serve_fakes)))
        return 0
    procs = Procs()
    with tempfile.TemporaryDirectory(prefix="llm-sidecar-soak-") as tmp:
        log_path = Path(tmp) / "sidecar.log"
        try:
            ports = {name: free_port() for name in ("chaos-a", "chaos-b", "steady")}
            procs.start([sys.executable, __file__, "--serve-fakes", json.dumps(ports)], cpu=None, cwd=ROOT)
            port = free_port()
            config = Path(tmp) / "soak.toml"
            config.write_text(sidecar_config(port, Path(tmp) / "ctl.sock", ports))
            env = {**os.environ, "SOAK_KEY": "sk-soak"}
            with open(log_path, "wb") as log:
                cmd = [sys.executable, "-m", "sidecar", "run", "-c", str(config), "--grace", "2"]
                sidecar = procs.start(cmd, cpu=None, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            for p in [*ports.values(), port]:
                wait_port(p)
            fakes = {name: f"http://127.0.0.1:{p}" for name, p in ports.items()}
            figures, elapsed, stats = asyncio.run(soak(args, sidecar.pid, f"http://127.0.0.1:{port}", fakes))
            log = log_path.read_text(errors="replace")
            problems = report(args, figures, elapsed, stats, sidecar.poll() is None, log)
            if problems:
                print("sidecar log, last lines:\n  " + "\n  ".join(log.splitlines()[-15:]))
                print("\n".join(journaled_5xx(Path(tmp) / "ctl.journal.db")))
            return 1 if problems else 0
        finally:
            procs.stop()  # SIGTERM, then SIGKILL after 10 s


def journaled_5xx(path: Path, wait: float = 2.0) -> list[str]:
    """What the journal kept of each 5xx answer (its attempts and reasons): what a failed soak needs to be read."""
    import sqlite3

    time.sleep(wait)  # the writer writes every 0.5 s
    if not path.exists():
        return ["journal: no file"]
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute(
            "SELECT id, status, stream, node, attempts, total_ms, error, detail FROM requests WHERE status >= 500"
        ).fetchall()
    return ["5xx answers in the journal:", *(f"  {row}" for row in rows)]


if __name__ == "__main__":
    sys.exit(main())
