"""The benchmark's smoke mode, so the script does not rot. It asserts that numbers come out, never a speed."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_quick_runs_and_reports_numbers(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--results", str(tmp_path)],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| c=16 | sidecar |" in done.stdout and "| c=16 | no-journal |" in done.stdout
    assert "journal on (default) vs off: c=16" in done.stdout and "journal with bodies = true vs off" in done.stdout
    (result,) = tmp_path.glob("*.json")
    data = json.loads(result.read_text())
    for point in ("c=1", "c=16", "stream c=1"):
        for path in ("direct", "sidecar"):
            figures = data["points"][point][path]
            assert figures["rps"] > 0 and math.isfinite(figures["p50_ms"])
            assert figures["errors"] == 0
    assert data["points"]["stream c=1"]["sidecar"]["first_p50_ms"] > 0
    assert "| stream c=1 |" in done.stdout.split("translation (", 1)[1]  # what translation costs is printed
    for point in ("c=1", "stream c=1"):
        for path in ("native", "translated"):
            figures = data["translation"][point][path]
            assert figures["errors"] == 0 and figures["requests"] > 0 and figures["cpu_us_per_request"] > 0
    assert data["translation"]["stream c=1"]["translated"]["cpu_us_per_chunk"] > 0
    assert data["idle_rss_mb"] > 0 and data["startup_s"] > 0


def test_journal_bench_prints_its_figures() -> None:
    """bench/journal.py with a small count: the writer's cost, the file's size and the queries come out."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "journal.py"), "--count", "3000"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    plain, bodies = done.stdout.splitlines()
    assert plain.startswith("3000 requests: event loop +") and "written 3000" in plain and " B/row" in plain
    assert bodies.startswith("3000 requests with bodies") and "written 3000" in bodies


def test_the_faults_benchmark_answers_every_request_through_every_phase() -> None:
    """bench/faults.py in its smoke mode: a silent primary, a failing one that recovers and a first-token tail,
    with hedging on. No request may fail; the figures themselves are the benchmark's, not this test's."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "faults.py"), "--quick", "--hedge", "1"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["errors"] == 0
    assert set(summary["phases"]) == {"floor", "healthy", "silent", "back", "503", "recovered", "tail"}
    assert summary["back_s"] is not None  # the recovered primary serves again
