"""What OpenTelemetry traces cost: the same sidecar with traces off and on, interleaved (needs the otel extra).

    python bench/traces_cost.py                  # c=1 and c=16, 5 rounds of 5 s per side
    python bench/traces_cost.py --seconds 3 --rounds 3 --levels 1,16,64

Three sidecars in front of bench/upstream.py, set up as in bench/run.py, pinned to CPU 0 and measured one at a
time, alternately, round by round: "on" exports a trace of every request to bench/collector.py (CPU 1), "off"
and "off2" run untraced ("off2" vs "off" is the run's noise floor). Printed: medians of req/s and p50, the
sidecar's CPU time per request (less sensitive to other load than req/s), and in process, per request: what
the event loop does (ids, the traceparent, the queue) and what the exporter's threads do off the loop (the
spans, and the SDK's OTLP encoding of them).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from metrics_cost import cpu_seconds  # noqa: E402 - bench/ holds scripts, not a package
from run import BODY, ROOT, Procs, free_port, py_load, sidecar_config, wait_port  # noqa: E402

sys.path.insert(0, str(ROOT))  # the sidecar itself, for the in-process measure


def micro(n: int = 20_000) -> dict[str, float]:
    """CPU microseconds per request (process time, best of 3): on the loop, and off it."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    from sidecar.config.load import parse
    from sidecar.config.telemetry import Export
    from sidecar.telemetry import export
    from sidecar.telemetry.context import Trace, Tracing

    node = parse({"upstream": {"nodes": [{"name": "a", "url": "http://127.0.0.1:9"}]}}, "<bench>", env={})
    tally = SimpleNamespace(attempts=[], continued=[])
    answer = b'{"id":"chatcmpl-bench","object":"chat.completion","model":"gpt-4o-mini","choices":[]}'
    ended: list[tuple[Trace, dict[str, Any]]] = []
    tracing = Tracing(lambda trace, event: ended.append((trace, event)), content=False)
    events = [{"type": "request", "id": f"r{i}", "method": "POST", "path": "/v1/chat/completions", "api": "openai",
               "model": "gpt-4o-mini", "node": "a", "status": 200, "attempts": 1, "failed": [], "continued": [],
               "stream": False, "ttfb_ms": 0.8, "ttft_ms": None, "total_ms": 1.1, "tokens_in": 9, "tokens_out": 2,
               "tokens_cached": None, "error": None} for i in range(n)]  # fmt: skip
    headers = [("content-type", "application/json"), ("X-Request-Id", "r")]

    class Keep(SpanExporter):
        def __init__(self) -> None:
            self.spans: list[Any] = []

        def export(self, spans: Any) -> SpanExportResult:
            self.spans.extend(spans)
            return SpanExportResult.SUCCESS

    exporter = export.Exporter(Export("http://127.0.0.1:9/v1/traces", "bench", False, True), "bench")
    exporter.stopping.set()
    exporter.thread.join()
    best = {"loop": float("inf"), "spans": float("inf"), "encode": float("inf")}
    for _ in range(3):
        ended.clear()
        keep = Keep()
        exporter.processor = SimpleSpanProcessor(keep)
        started = time.process_time()
        for event in events:
            trace = tracing.begin([(b"content-type", b"application/json")], time.monotonic(), b"{}")
            assert trace is not None
            trace.attempt(node.upstream.nodes[0], headers, tally)
            trace.saw(answer)
            trace.end(event)
        best["loop"] = min(best["loop"], time.process_time() - started)
        started = time.process_time()
        for trace, event in ended:
            exporter.emit(trace, event)
        best["spans"] = min(best["spans"], time.process_time() - started)
        started = time.process_time()
        for i in range(0, len(keep.spans), 512):  # the batch processor's batches
            encode_spans(keep.spans[i : i + 512]).SerializePartialToString()
        best["encode"] = min(best["encode"], time.process_time() - started)
    return {k: v / n * 1e6 for k, v in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0, help="per round and side")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--levels", default="1,16", help="concurrency levels")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="llm-sidecar-traces-cost-"))
    env = {**os.environ, "BENCH_KEY": "bench-key", "PYTHONPATH": str(ROOT)}
    sides = ("on", "off", "off2")
    procs = Procs()
    try:
        upstream, collector = free_port(), free_port()
        procs.start([sys.executable, str(HERE / "upstream.py"), str(upstream)], cpu=1)
        procs.start([sys.executable, str(HERE / "collector.py"), str(collector)], cpu=1)
        ports = {name: free_port() for name in sides}
        pids: dict[str, int] = {}
        for name, port in ports.items():
            config = tmp / f"{name}.toml"
            config.write_text(sidecar_config(upstream, port, tmp / f"{name}.sock"))
            side_env = {k: v for k, v in env.items() if not k.startswith("OTEL_")}
            if name == "on":
                side_env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{collector}"
            log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
            car = procs.start([sys.executable, "-m", "sidecar", "run", "-c", str(config), "--log-level", "info"],
                              cpu=0, env=side_env, stderr=log, cwd=ROOT)  # fmt: skip
            pids[name] = car.pid
        for port in [upstream, collector, *ports.values()]:
            wait_port(port)
        for port in ports.values():  # warm up
            asyncio.run(py_load(f"http://127.0.0.1:{port}/v1/chat/completions", 4, 1.0, BODY, False))
        results: dict[int, dict[str, list[dict[str, float]]]] = {}
        for c in (int(x) for x in args.levels.split(",")):
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
            for i in range(args.rounds):
                for name in sides[i % 3 :] + sides[: i % 3]:  # who goes first rotates
                    cpu = cpu_seconds(pids[name])
                    url = f"http://127.0.0.1:{ports[name]}/v1/chat/completions"
                    result = asyncio.run(py_load(url, c, args.seconds, BODY, False))
                    result["cpu_us"] = (cpu_seconds(pids[name]) - cpu) / (result["rps"] * args.seconds) * 1e6
                    runs[name].append(result)
                print(f"  c={c} round {i + 1}: " + ", ".join(f"{n} {runs[n][-1]['rps']:.0f}" for n in sides) + " req/s",
                      file=sys.stderr)  # fmt: skip
            results[c] = runs
    finally:
        procs.stop()
    print(f"{args.rounds} rounds of {args.seconds:g} s per side, interleaved; 'off2' vs 'off' is the noise")
    print("| c | side | req/s | vs off | p50 ms | +p50 vs off | CPU us/req | +CPU vs off |")
    print("|---|---|---|---|---|---|---|---|")
    for c, runs in results.items():
        base = {k: statistics.median(r[k] for r in runs["off"]) for k in ("rps", "p50_ms", "cpu_us")}
        for name in sides:
            m = {k: statistics.median(r[k] for r in runs[name]) for k in ("rps", "p50_ms", "cpu_us")}
            print(f"| {c} | {name} | {m['rps']:.0f} | {100 * (m['rps'] / base['rps'] - 1):+.1f}% | {m['p50_ms']:.2f} | "
                  f"{m['p50_ms'] - base['p50_ms']:+.3f} | {m['cpu_us']:.0f} | {m['cpu_us'] - base['cpu_us']:+.0f} |")  # fmt: skip
    cost = micro()
    print(f"in process, CPU per request: {cost['loop']:.1f} us on the event loop (ids, traceparent, queue); off it "
          f"{cost['spans']:.1f} us making the spans and {cost['encode']:.1f} us of the SDK's OTLP encoding")  # fmt: skip


if __name__ == "__main__":
    main()
