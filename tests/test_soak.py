"""The soak (bench/soak.py) with a small count, so it runs in every suite run and does not rot: a real
sidecar under mixed streams and JSON, client aborts and random node faults, with no hang, no 5xx, no
broken answer and flat RSS and fds. It asserts what the soak found and that it printed its figures,
never a speed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_short_soak_finds_no_hang_no_5xx_and_flat_rss_and_fds() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), "--requests", "1500", "--max-seconds", "60"],
        capture_output=True, text=True, timeout=110, cwd=ROOT,
    )  # fmt: skip
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert re.search(r"^  requests +1500 of 1500 in ", out, re.M), out
    assert re.search(r"^  5xx +0$", out, re.M) and re.search(r"^  hangs \(> 30 s\) +0$", out, re.M), out
    aborted = re.search(r"^  left by the client +mid-body: (\d+), waiting: (\d+), mid-stream: (\d+)$", out, re.M)
    assert aborted and all(int(n) > 0 for n in aborted.groups()), out
    failed = [int(n) for n in re.findall(r"^  node chaos-\w +\d+ chat requests, (\d+) failed on purpose$", out, re.M)]
    assert len(failed) == 2 and sum(failed) > 0, out  # the faults did reach the sidecar
    for label in ("start", "middle", "end"):
        assert re.search(rf"^  sidecar {label} +RSS \d+\.\d MB, \d+ fds$", out, re.M), out
    assert out.rstrip().endswith("soak: ok"), out
