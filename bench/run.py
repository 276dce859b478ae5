"""Benchmark: the same load direct to an upstream, through llm-sidecar, and through nginx, in one run.

A fourth path, "floor", is the same server and client libraries with no features (bench/floor.py): the
gap between it and the sidecar is what the sidecar's own code costs.

    python bench/run.py            # full run (a few minutes)
    python bench/run.py --quick    # a few seconds: proves the benchmark still works, measures nothing useful
    python bench/run.py --peer litellm   # adds LiteLLM's proxy (`litellm` on PATH) as another path
    python bench/run.py --telemetry      # adds the sidecar with traces on (the otel extra), to a collector on loopback

Paths are measured alternately, round by round, so their ratios hold on a noisy machine. The proxies
(sidecar, floor, nginx, a peer) are pinned to CPU 0, the upstream and the load generator to CPU 1 (when
taskset exists). Load comes from wrk (a Lua POST script) when installed (`apt-get install wrk nginx`), else
from a built-in aiohttp generator. The sidecar runs with every feature on: active and passive checks,
access log at INFO, the journal (its file in the run's temporary directory). Two more sidecars, the journal
off and the journal keeping bodies, are measured in the same rounds at c=1 and c=16, with the CPU each spends
per request, so the journal's cost is read within one run. A last check runs the sidecar at c=16 and c=256 alternately (5 rounds), so the
no-collapse ratio does not drift with the machine between points. Results go to bench/results/<time>.json
and a table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
STREAM_BODY = json.dumps({"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]})
# The same question from an Anthropic client, for a sidecar whose nodes translate it to chat (docs/translation.md).
MESSAGES_BODY = json.dumps({"model": "claude-x", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]})
MESSAGES_STREAM_BODY = json.dumps(
    {"model": "claude-x", "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
)
CHUNKS = 21  # events in bench/upstream.py's stream: 20 chunks and [DONE]
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%d %%d %%d %%d %%d\\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout + e.status, latency:percentile(50), latency:percentile(99)))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pinned(cmd: list[str], cpu: int | None) -> list[str]:
    if cpu is not None and shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(cpu), *cmd]
    return cmd


def wait_port(port: int, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {port}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Procs:
    """Everything the benchmark starts, stopped at the end whatever happens."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], cpu: int | None, **kw: Any) -> subprocess.Popen[bytes]:
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        proc = subprocess.Popen(pinned(cmd, cpu), **kw)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


JOURNALS = {  # the [journal] of each sidecar path: on as shipped, off, and keeping bodies
    "sidecar": "",
    "no-journal": "enabled = false",
    "bodies": "bodies = true",
}


def translating_config(upstream: int, port: int, sock: Path) -> str:
    """The benchmark's sidecar with its nodes translating: Anthropic clients are served by the chat upstream."""
    return sidecar_config(upstream, port, sock).replace(
        'api_key = "${BENCH_KEY}"', 'api_key = "${BENCH_KEY}"\ntranslate = true'
    )


def sidecar_config(upstream: int, port: int, sock: Path, journal: str = "") -> str:
    """A sidecar with every feature on; its journal beside its control socket (never the user's)."""
    return f"""
[server]
listen = "127.0.0.1:{port}"
control_socket = "{sock}"
[journal]
path = "{sock.with_suffix(".journal.db")}"
{journal}
[upstream]
retries = 1
[[upstream.nodes]]
name = "primary"
url = "http://127.0.0.1:{upstream}"
priority = 0
api_key = "${{BENCH_KEY}}"
[[upstream.nodes]]
name = "backup"
url = "http://127.0.0.1:{upstream}"
priority = -1
api_key = "${{BENCH_KEY}}"
[upstream.checks.active]
interval = 5
[upstream.checks.passive]
"""


def litellm_config(upstream: int) -> str:
    """LiteLLM's proxy in front of the same upstream, with its defaults otherwise."""
    return f"""
model_list:
  - model_name: gpt-4o-mini
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: http://127.0.0.1:{upstream}/v1
      api_key: bench-key
general_settings:
  # no master key: like the sidecar here, no client auth on loopback
  dangerously_permit_weak_or_unset_master_key: true
"""


def start_litellm(procs: Procs, upstream: int, tmp: Path) -> int:
    exe = shutil.which("litellm")
    if exe is None:
        raise SystemExit(
            "--peer litellm needs the `litellm` command: pip install 'litellm[proxy]' (in its own venv, as its "
            "pins differ from ours) and put that venv's bin/ on PATH"
        )
    port = free_port()
    (tmp / "litellm.yaml").write_text(litellm_config(upstream))
    # The local cost map: no fetch from the network at start-up (tests and benchmarks stay on loopback).
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"}
    cmd = [exe, "--config", str(tmp / "litellm.yaml"), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    procs.start(cmd, cpu=0, env=env, stderr=open(tmp / "litellm.log", "wb"))  # noqa: SIM115
    wait_port(port, seconds=120)
    return port


def nginx_config(upstream: int, port: int, prefix: Path) -> str:
    return f"""
daemon off; master_process off; worker_processes 1; error_log {prefix}/error.log crit; pid {prefix}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {prefix}; proxy_temp_path {prefix}; fastcgi_temp_path {prefix};
  uwsgi_temp_path {prefix}; scgi_temp_path {prefix};
  upstream up {{ server 127.0.0.1:{upstream}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection "";
                 proxy_buffering off; }}
  }}
}}
"""


def wrk(url: str, concurrency: int, seconds: float, script: Path) -> dict[str, float]:
    threads = min(concurrency, 2)
    cmd = [
        "wrk",
        "-t",
        str(threads),
        "-c",
        str(concurrency),
        "-d",
        f"{max(1, round(seconds))}s",
        # a slow answer at c=256 is latency (it shows in p99), not an error: LLM clients wait far longer
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(pinned(cmd, 1), capture_output=True, text=True, timeout=seconds + 30)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {done.stdout}{done.stderr}")
    requests, duration_us, errors, p50, p99 = (int(x) for x in line.split()[1:])
    return {"rps": requests / (duration_us / 1e6), "p50_ms": p50 / 1000, "p99_ms": p99 / 1000, "errors": errors}


async def py_load(url: str, concurrency: int, seconds: float, body: str, stream: bool) -> dict[str, float]:
    """The fallback generator; with stream=True it also times the first chunk."""
    import aiohttp

    latencies: list[float] = []
    first: list[float] = []
    errors = 0
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def worker() -> None:
            nonlocal errors
            while time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                        if stream:
                            got_first = False
                            async for _ in r.content.iter_any():
                                if not got_first:
                                    first.append(time.perf_counter() - started)
                                    got_first = True
                        else:
                            await r.read()
                        if r.status != 200:
                            errors += 1
                except aiohttp.ClientError:
                    errors += 1
                latencies.append(time.perf_counter() - started)

        began = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - began
    latencies.sort()
    first.sort()

    def pct(values: list[float], q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")

    result = {
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": pct(latencies, 0.5),
        "p99_ms": pct(latencies, 0.99),
        "errors": errors,
    }
    if stream:
        result.update({"first_p50_ms": pct(first, 0.5), "first_p99_ms": pct(first, 0.99)})
    return result


async def open_streams(url: str, count: int, pid: int) -> dict[str, float]:
    """Hold `count` slow streams open at once; read the sidecar's RSS and fds at the peak."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=0)
    done = 0
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def one() -> None:
            nonlocal done
            async with session.post(url, data=STREAM_BODY, headers={"Content-Type": "application/json"}) as r:
                body = await r.read()
                if body.endswith(b"data: [DONE]\n\n"):
                    done += 1

        tasks = [asyncio.ensure_future(one()) for _ in range(count)]
        await asyncio.sleep(4)
        peak = {"rss_mb": rss_mb(pid), "fds": fd_count(pid)}
        await asyncio.gather(*tasks, return_exceptions=True)
    return {**peak, "completed": done, "opened": count}


def startup_time(config: Path, env: dict[str, str]) -> float:
    """Seconds from spawning `llm-sidecar run` until it answers its first proxied request."""
    import urllib.request

    port = int(config.read_text().split('listen = "127.0.0.1:')[1].split('"')[0])
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "sidecar", "run", "-c", str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)  # fmt: skip
    try:
        while True:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=BODY.encode(),
                                             headers={"Content-Type": "application/json"})  # fmt: skip
                with urllib.request.urlopen(req, timeout=2) as r:
                    r.read()
                return time.perf_counter() - started
            except OSError:
                if time.perf_counter() - started > 30:
                    raise
                time.sleep(0.005)
    finally:
        proc.terminate()
        proc.wait(10)


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User + system CPU seconds so far of a process (its threads included: the journal's writer too), or of
    one of its threads."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few seconds, for the test suite")
    parser.add_argument("--seconds", type=float, default=5.0, help="per point and path")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per point (median taken)")
    parser.add_argument("--no-nginx", action="store_true")
    parser.add_argument(
        "--peer",
        choices=["litellm"],
        action="append",
        default=[],
        help="also measure a peer proxy in front of the same upstream (needs `litellm` on PATH)",
    )
    parser.add_argument("--telemetry", action="store_true", help="also the sidecar with OpenTelemetry traces on")
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args()
    seconds = 1.0 if args.quick else args.seconds
    rounds = 1 if args.quick else args.rounds
    levels = [1, 16] if args.quick else [1, 16, 64, 256]
    use_wrk = shutil.which("wrk") is not None
    use_nginx = shutil.which("nginx") is not None and not args.no_nginx and not args.quick

    tmp = Path(tempfile.mkdtemp(prefix="llm-sidecar-bench-"))
    procs = Procs()
    # Killed (SIGTERM) like interrupted: the finally below still stops everything we started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "load": "wrk" if use_wrk else "aiohttp", "quick": args.quick},
        "points": {},
    }  # fmt: skip
    env = {**os.environ, "BENCH_KEY": "bench-key", "PYTHONPATH": str(ROOT)}
    try:
        up_port, slow_port, car_port, ngx_port = free_port(), free_port(), free_port(), free_port()
        procs.start([sys.executable, str(HERE / "upstream.py"), str(up_port)], cpu=1)
        procs.start([sys.executable, str(HERE / "upstream.py"), str(slow_port), "0.5"], cpu=1)
        # The sidecar as shipped (journal on), and the same with the journal off and keeping bodies: measured
        # in the same rounds at c=1 and c=16, so the journal's cost is read within one run.
        cars: dict[str, subprocess.Popen[bytes]] = {}
        ports = {"sidecar": car_port, "no-journal": free_port(), "bodies": free_port()}
        for name, port in ports.items():
            config = tmp / f"{name}.toml"
            config.write_text(sidecar_config(up_port, port, tmp / f"{name}.sock", JOURNALS[name]))
            log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
            cars[name] = procs.start([sys.executable, "-m", "sidecar", "run", "-c", str(config), "--log-level",
                                      "info"], cpu=0, env=env, stderr=log, cwd=ROOT)  # fmt: skip
        car = cars["sidecar"]
        pids = {name: proc.pid for name, proc in cars.items()}
        translator_port = free_port()
        (tmp / "translating.toml").write_text(
            translating_config(up_port, translator_port, tmp / "ctl-translating.sock")
        )
        translator = procs.start([sys.executable, "-m", "sidecar", "run", "-c", str(tmp / "translating.toml"),
                                  "--log-level", "info"], cpu=0, env=env, cwd=ROOT,
                                 stderr=open(tmp / "translating.log", "wb"))  # noqa: SIM115  # fmt: skip
        floor_port = free_port()
        procs.start([sys.executable, str(HERE / "floor.py"), str(floor_port), str(up_port)], cpu=0)
        paths = {"direct": up_port, "sidecar": car_port, "floor": floor_port}
        journal_paths = {"no-journal": ports["no-journal"], "bodies": ports["bodies"]}
        if use_nginx:
            (tmp / "nginx.conf").write_text(nginx_config(up_port, ngx_port, tmp))
            procs.start(["nginx", "-c", str(tmp / "nginx.conf"), "-p", str(tmp)], cpu=0)
            paths["nginx"] = ngx_port
        if "litellm" in args.peer:
            paths["litellm"] = start_litellm(procs, up_port, tmp)
        if args.telemetry:  # the same sidecar, exporting a trace of every request to a collector on CPU 1
            otel_port, traced_port = free_port(), free_port()
            procs.start([sys.executable, str(HERE / "collector.py"), str(otel_port)], cpu=1)
            (tmp / "traced.toml").write_text(sidecar_config(up_port, traced_port, tmp / "ctl-traced.sock"))
            traced_env = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otel_port}"}
            procs.start([sys.executable, "-m", "sidecar", "run", "-c", str(tmp / "traced.toml"), "--log-level",
                         "info"], cpu=0, env=traced_env, stderr=open(tmp / "traced.log", "wb"), cwd=ROOT)  # noqa: SIM115  # fmt: skip
            paths["sidecar+traces"] = traced_port
        for port in [up_port, slow_port, translator_port, *paths.values(), *journal_paths.values()]:
            wait_port(port)
        time.sleep(0.5)
        results["idle_rss_mb"] = rss_mb(car.pid)
        script = tmp / "post.lua"
        script.write_text(WRK_SCRIPT % BODY)

        def measure(port: int, c: int, stream: bool = False, pid: int | None = None) -> dict[str, float]:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            cpu = cpu_seconds(pid) if pid is not None else 0.0
            loop = cpu_seconds(pid, pid) if pid is not None else 0.0  # the main thread: the event loop
            if use_wrk and not stream:
                result = wrk(url, c, seconds, script)
            else:
                result = asyncio.run(py_load(url, c, seconds, STREAM_BODY if stream else BODY, stream))
            if pid is not None:  # CPU per request: far less sensitive to other load on the machine than req/s
                served = max(1, result["rps"] * (max(1, round(seconds)) if use_wrk and not stream else seconds))
                result["cpu_us"] = (cpu_seconds(pid) - cpu) / served * 1e6
                # The other threads' share: the journal's writer (the rest idle: DNS workers, the file watcher).
                result["threads_us"] = result["cpu_us"] - (cpu_seconds(pid, pid) - loop) / served * 1e6
            return result

        for port in [*paths.values(), *journal_paths.values()]:  # warm up connections and caches
            measure(port, 4)
        points = [(f"c={c}", c, False) for c in levels] + [
            (f"stream c={c}", c, True) for c in ([1] if args.quick else [1, 64])
        ]
        for label, c, stream in points:
            here = {**paths, **journal_paths} if label in JOURNAL_POINTS else paths
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in here}
            for _ in range(rounds):
                for name, port in here.items():
                    runs[name].append(measure(port, c, stream, pids.get(name)))
            results["points"][label] = {name: median_of(r) for name, r in runs.items()}
            print(f"  measured {label}", file=sys.stderr)
        results["translation"] = measure_translation(car, car_port, translator, translator_port, seconds, rounds)
        print("  measured translation", file=sys.stderr)
        if not args.quick:
            # c=16 and c=256 minutes apart drift with the machine; the no-collapse ratio is read interleaved.
            checks: dict[int, list[dict[str, float]]] = {16: [], 256: []}
            for _ in range(5):
                for c, check in checks.items():
                    check.append(measure(car_port, c))
            results["collapse_check"] = {f"c={c}": median_of(r) for c, r in checks.items()}
            print("  measured collapse check", file=sys.stderr)
            results["open_streams"] = open_through(slow_port, tmp, env)
        if args.telemetry:
            time.sleep(1)  # the exporter's last batch
            with urllib.request.urlopen(f"http://127.0.0.1:{otel_port}/count") as answer:
                results["collector"] = json.loads(answer.read())
        startup_config = tmp / "startup.toml"
        startup_config.write_text(sidecar_config(up_port, free_port(), tmp / "ctl-startup.sock"))
        results["startup_s"] = statistics.median(
            startup_time(startup_config, env) for _ in range(1 if args.quick else 3)
        )
    finally:
        procs.stop()
    print(render(results))
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / time.strftime("%Y%m%d-%H%M%S.json")
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out}")


def measure_translation(
    car: subprocess.Popen[bytes],
    car_port: int,
    translator: subprocess.Popen[bytes],
    translator_port: int,
    seconds: float,
    rounds: int,
) -> dict[str, dict[str, dict[str, float]]]:
    """The same question asked natively (a chat client, the plain sidecar) and translated (an Anthropic client,
    a sidecar whose nodes translate to the chat upstream), alternately: latency and the sidecar's CPU per request
    (per upstream chunk for streams: 20 chunks and [DONE] a request)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for label, c, stream in (
        ("c=1", 1, False),
        ("c=16", 16, False),
        ("stream c=1", 1, True),
        ("stream c=16", 16, True),
    ):
        runs: dict[str, list[dict[str, float]]] = {"native": [], "translated": []}
        for _ in range(rounds):
            for name, proc, url, body in (
                ("native", car, f"http://127.0.0.1:{car_port}/v1/chat/completions", STREAM_BODY if stream else BODY),
                ("translated", translator, f"http://127.0.0.1:{translator_port}/v1/messages",
                 MESSAGES_STREAM_BODY if stream else MESSAGES_BODY),
            ):  # fmt: skip
                before = cpu_seconds(proc.pid)
                figures = asyncio.run(py_load(url, c, seconds, body, stream))
                cpu = cpu_seconds(proc.pid) - before
                figures["cpu_us_per_request"] = cpu * 1e6 / max(1, figures["requests"])
                if stream:
                    figures["cpu_us_per_chunk"] = figures["cpu_us_per_request"] / CHUNKS
                runs[name].append(figures)
        out[label] = {name: median_of(r) for name, r in runs.items()}
    return out


def open_through(slow_port: int, tmp: Path, env: dict[str, str]) -> dict[str, float]:
    """A second sidecar in front of the slow upstream holds 1,000 streams (~10 s each)."""
    procs = Procs()
    port = free_port()
    config = tmp / "streams.toml"
    config.write_text(sidecar_config(slow_port, port, tmp / "ctl-streams.sock"))
    try:
        car = procs.start([sys.executable, "-m", "sidecar", "run", "-c", str(config), "--log-level", "info"], cpu=0,
                          env=env, cwd=ROOT, stderr=open(tmp / "streams.log", "wb"))  # noqa: SIM115  # fmt: skip
        wait_port(port)
        return asyncio.run(open_streams(f"http://127.0.0.1:{port}/v1/chat/completions", 1000, car.pid))
    finally:
        procs.stop()


def render(results: dict[str, Any]) -> str:
    lines = [
        f"machine: {results['machine']}",
        f"sidecar idle RSS {results['idle_rss_mb']:.1f} MB; start-up to first answered request {results['startup_s'] * 1000:.0f} ms",
    ]
    if "open_streams" in results:
        s = results["open_streams"]
        lines.append(
            f"1000 open streams: RSS {s['rss_mb']:.1f} MB, fds {s['fds']}, completed {s['completed']}/{s['opened']}"
        )
    if "collector" in results:
        lines.append(f"traces: the collector received {results['collector']['spans']} spans "
                     f"in {results['collector']['posts']} exports")  # fmt: skip
    if "collapse_check" in results:
        low, high = results["collapse_check"]["c=16"], results["collapse_check"]["c=256"]
        lines.append(
            f"sidecar c=16 vs c=256, interleaved 5x: {low['rps']:.0f} / {high['rps']:.0f} req/s "
            f"({100 * high['rps'] / low['rps']:.0f}%), p99 {low['p99_ms']:.1f} / {high['p99_ms']:.1f} ms, "
            f"errors {low['errors'] + high['errors']:.0f}"
        )
    lines += journal_lines(results["points"])
    if "translation" in results:
        lines += ["", "translation (an Anthropic client on chat nodes vs a chat client, aiohttp load, alternated):", "",
                  "| point | native p50 ms | translated p50 ms | added p50 ms | native CPU us/req | translated CPU us/req "
                  "| added CPU us/req | added CPU us/chunk | errors |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for label, pair in results["translation"].items():
            native, translated = pair["native"], pair["translated"]
            per_chunk = (
                f"{translated['cpu_us_per_chunk'] - native['cpu_us_per_chunk']:+.1f}"
                if "cpu_us_per_chunk" in native
                else "-"
            )
            lines.append(
                f"| {label} | {native['p50_ms']:.2f} | {translated['p50_ms']:.2f} | "
                f"{translated['p50_ms'] - native['p50_ms']:+.2f} | {native['cpu_us_per_request']:.0f} | "
                f"{translated['cpu_us_per_request']:.0f} | "
                f"{translated['cpu_us_per_request'] - native['cpu_us_per_request']:+.0f} | {per_chunk} | "
                f"{native['errors'] + translated['errors']:.0f} |"
            )
    lines.append("")
    lines.append(
        "| point | path | req/s | p50 ms | p99 ms | errors | +p50 vs direct | % of direct | % of floor | % of nginx "
        "| first chunk p50 |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, paths in results["points"].items():
        direct = paths["direct"]
        nginx = paths.get("nginx")
        for name, r in paths.items():
            added = f"{r['p50_ms'] - direct['p50_ms']:+.2f}" if name != "direct" else "-"
            of_direct = f"{100 * r['rps'] / direct['rps']:.0f}%"
            of_nginx = f"{100 * r['rps'] / nginx['rps']:.0f}%" if nginx else "-"
            of_floor = f"{100 * r['rps'] / paths['floor']['rps']:.0f}%" if "floor" in paths else "-"
            first = f"{r['first_p50_ms']:.2f}" if "first_p50_ms" in r else "-"
            lines.append(f"| {label} | {name} | {r['rps']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']:.0f} | "
                         f"{added} | {of_direct} | {of_floor} | {of_nginx} | {first} |")  # fmt: skip
    return "\n".join(lines)


JOURNAL_POINTS = ("c=1", "c=16")


def journal_lines(points: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """The journal's cost: the sidecar as shipped (journal on) against it off, and with bodies kept."""
    low, high = points.get("c=1", {}), points.get("c=16", {})
    if "no-journal" not in high or "no-journal" not in low:
        return []
    lines = []
    off16, off1 = high["no-journal"], low["no-journal"]
    for name, what in (("sidecar", "journal on (default)"), ("bodies", "journal with bodies = true")):
        on16, on1 = high[name], low[name]
        lines.append(
            f"{what} vs off: c=16 {on16['rps']:.0f} vs {off16['rps']:.0f} req/s "
            f"({100 * (on16['rps'] - off16['rps']) / off16['rps']:+.1f}%), CPU {on16['cpu_us']:.0f} vs "
            f"{off16['cpu_us']:.0f} us/request, of which the writer thread {on16['threads_us']:.1f} "
            f"({100 * on16['threads_us'] / on16['cpu_us']:.1f}%); c=1 p50 {on1['p50_ms']:.3f} vs {off1['p50_ms']:.3f} "
            f"ms ({on1['p50_ms'] - off1['p50_ms']:+.3f} ms)"
        )
    return lines


if __name__ == "__main__":
    main()
