"""What the journal costs: N requests through the recorder and the journal's writer, in process.

    python bench/journal.py                   # 100,000 requests
    python bench/journal.py --count 2000      # the test suite's smoke run: measures nothing useful

Printed: the event loop's share (the recorder pricing the request and appending it to the queue, per request),
the writer's CPU per row (building the row, SQLite's insert and commit), the file's size per row and in all,
the same with bodies kept (2 KiB each way), and how long the CLI's queries take on that file (the last 20
rows, a week's stats, one request by id, this month's spend at start). One request in ten failed over once,
so its attempts are kept as JSON. The requests are synthetic but go through the real code: the event is the
one the proxy publishes (proxy/exchange.py), the recorder and the writer are the sidecar's.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sidecar.config.load import parse  # noqa: E402 - run as a script
from sidecar.journal import reader  # noqa: E402
from sidecar.journal.bodies import keys_of  # noqa: E402
from sidecar.journal.writer import Journal  # noqa: E402
from sidecar.nodes.mock import MockTransport  # noqa: E402
from sidecar.nodes.runtime import Runtime  # noqa: E402
from sidecar.observe.record import Bodies  # noqa: E402
from sidecar.proxy.exchange import Exchange  # noqa: E402
from sidecar.spend.ledger import day_bounds, month_bounds  # noqa: E402
from sidecar.spend.recorder import SpendRecorder  # noqa: E402

BODY = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "' + b"x" * 1900 + b'"}]}'


def events(count: int, start: float) -> list[dict[str, Any]]:
    """`request` events as the proxy builds them, one every millisecond from `start`."""
    out = []
    for i in range(count):
        ex = Exchange(rid=f"a1b2c3d4{i:08x}", method="POST", path="/v1/chat/completions", model="gpt-4o-mini",
                      stream=i % 3 == 0, started=0.0)  # fmt: skip
        ex.node, ex.status, ex.first_byte, ex.tokens_in, ex.tokens_out = "primary", 200, 0.21, 1200 + i % 500, 300
        ex.tokens_cached = 1024 if i % 2 else None
        if i % 3 == 0:
            ex.first_token = 0.35
        if i % 10 == 0:
            ex.attempts.append({"node": "backup", "reason": "http 503", "kind": "http", "ms": 41.0})
        record = ex.record(1.5)
        record.update(type="request", seq=i + 1, time=start + i / 1000)
        out.append(record)
    return out


def emit_seconds(runtime: Runtime, made: list[dict[str, Any]], bodies: Bodies | None) -> float:
    """The event loop's time publishing `made`, a thousand at a time (the best of three rounds)."""
    best = float("inf")
    rounds = [made[i::3] for i in range(3)]
    for part in rounds:
        spent = 0.0
        gc.disable()
        for i in range(0, len(part), 1000):
            chunk = part[i : i + 1000]
            began = time.perf_counter()
            for event in chunk:
                if bodies is not None:
                    runtime.desk.hand(event, bodies)
                runtime.events.emit(event)
            spent += time.perf_counter() - began
            runtime.events.recent.clear()
        gc.enable()
        best = min(best, spent / len(part))
    return best * len(made)


def run(count: int, bodies: bool, folder: Path) -> dict[str, float]:
    cfg = parse(
        {"journal": {"path": str(folder / "journal.db"), "bodies": bodies},
         "upstream": {"nodes": [{"name": "primary", "url": "http://a.invalid"},
                                {"name": "backup", "url": "http://b.invalid", "priority": -1}]}},
        "<bench>", {},
    )  # fmt: skip
    bare = Runtime(cfg, transport=lambda config, watch: MockTransport(lambda node, request: None))
    baseline = emit_seconds(bare, events(count, 0.0), None)  # the hub's own work, without the recorder
    runtime = Runtime(cfg, transport=lambda config, watch: MockTransport(lambda node, request: None))
    journal = Journal(folder / "journal.db", cfg.journal, "127.0.0.1:8787", keys_of(cfg), runtime.desk)
    runtime.desk.budget = 1 << 40  # this run measures costs, not the bound
    journal.open()
    recorder = SpendRecorder(runtime, journal)
    recorder.attach()
    journal.limit = count + 1  # this run measures costs, not the bound
    response = [b'{"choices": [{"message": {"content": "' + b"y" * 2000 + b'"}}]}']
    kept = Bodies(BODY, len(BODY), response, len(response[0])) if bodies else None
    loop = emit_seconds(runtime, events(count, time.time() - count / 1000), kept) - baseline
    while journal.queue:  # the writer's part, in this thread: its CPU is counted the same
        journal.flush()
    size = os.path.getsize(folder / "journal.db") + os.path.getsize(f"{folder / 'journal.db'}-wal")
    figures = {
        "loop_us": loop / count * 1e6,
        "writer_us": journal.write_seconds / journal.written * 1e6,
        "bytes_per_row": size / count,
        "mb": size / 1e6,
        "written": journal.written,
    }
    journal.store.close()
    db = reader.connect(folder / "journal.db")
    now = time.time()
    for name, query in (
        ("log_ms", lambda: reader.recent(db, reader.Filter(), 20)),
        ("stats_ms", lambda: reader.stats(db, reader.Filter(since=now - 7 * 86400))),
        ("show_ms", lambda: reader.find(db, f"a1b2c3d4{count // 2:08x}")),
    ):
        began = time.perf_counter()
        query()
        figures[name] = (time.perf_counter() - began) * 1000
    db.close()
    began = time.perf_counter()
    journal.store.open()
    journal.store.spend_since(month_bounds(now)[0], day_bounds(now)[0], "127.0.0.1:8787")
    figures["restore_ms"] = (time.perf_counter() - began) * 1000
    journal.store.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000, help="requests")
    args = parser.parse_args()
    for bodies in (False, True):
        with tempfile.TemporaryDirectory(prefix="llm-sidecar-journal-bench-") as tmp:
            f = run(args.count, bodies, Path(tmp))
        print(
            f"{args.count} requests{' with bodies (2 KiB each way)' if bodies else ''}: "
            f"event loop +{f['loop_us']:.2f} us/request (recorder and queue), writer {f['writer_us']:.2f} us/row; "
            f"file {f['mb']:.1f} MB ({f['bytes_per_row']:.0f} B/row); queries: log {f['log_ms']:.1f} ms, "
            f"stats over all {f['stats_ms']:.0f} ms, show by id {f['show_ms']:.0f} ms, spend at start "
            f"{f['restore_ms']:.0f} ms; written {f['written']:.0f}"
        )


if __name__ == "__main__":
    main()
