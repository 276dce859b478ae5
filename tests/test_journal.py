"""The journal's store and writer on real files: rows, retention, bodies, and every way writing fails
(a corrupt file, a read-only directory, a locked database, a full disk, two writers on one file), each
seen as one warning while `put` goes on and never raises."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sidecar.config.schema import JournalConfig
from sidecar.journal import reader
from sidecar.journal.bodies import MASK, REQUEST_CUT, RESPONSE_CUT, keys_of, pack, unpack
from sidecar.journal.schema import rowid_at
from sidecar.journal.store import Store
from sidecar.journal.writer import QUEUE, Journal
from sidecar.observe.record import Bodies, Desk
from sidecar.proxy.capture import Capture
from sidecar.proxy.exchange import Exchange

ROOT = Path(__file__).resolve().parent.parent


def event(i: int = 0, **over: Any) -> dict[str, Any]:
    """A `request` event as the proxy and the recorder make it."""
    ex = Exchange(rid=f"req{i:08d}", method="POST", path="/v1/chat/completions", model="gpt-4o", stream=False,
                  started=0.0)  # fmt: skip
    ex.node, ex.status, ex.first_byte, ex.tokens_in, ex.tokens_out = "primary", 200, 0.004, 10, 20
    record = ex.record(0.005)
    record.update(seq=i + 1, time=1_790_000_000.0 + i, model_served="gpt-4o", cost_usd=0.000225)
    record.update(over)
    return record


def journal(path: Path, **config: Any) -> Journal:
    j = Journal(path, JournalConfig(**config), "127.0.0.1:8787")
    j.open()
    return j


def rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM requests").fetchone()[0])


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# ---------------------------------------------------------------------------- rows


def test_a_request_is_a_row_and_reads_back_as_it_was(tmp_path: Path) -> None:
    j = journal(tmp_path / "j.db")
    failed = [
        {"node": "primary", "reason": "http 503", "kind": "http", "ms": 12.5, "wait_ms": 500},
        {"node": "primary", "reason": "connect failed (refused)", "kind": "tcp", "ms": 1.0},
        {"node": "backup", "reason": "continuation: http 500", "kind": "http"},
    ]
    j.put(event(0))
    j.put(event(1, failed=failed, node="backup", attempts=3, client_id="req00000001", tokens_cached=4,
                marks={"hedged": True}))  # fmt: skip
    j.flush()
    assert j.written == 2
    db = reader.connect(tmp_path / "j.db")
    found = reader.find(db, "req00000001")
    assert found is not None
    d = reader.detail(found[1], "journal")
    assert (d["node"], d["client_id"], d["failovers"], d["tokens_cached"], d["marks"]) == (
        "backup", "req00000001", 1, 4, {"hedged": True},
    )  # fmt: skip
    steps = [(s["node"], s["kind"], s["outcome"], s["fault"], s["wait_ms"], s["ms"]) for s in d["steps"]]
    assert steps == [
        ("primary", "first", "failed", "http", 500, 12.5),
        ("primary", "retry", "failed", "tcp", None, 1.0),
        ("backup", "failover", "answered", None, None, 0.0),  # the rest of 5 ms after 513.5 spent: none
        ("backup", "continuation", "failed", "http", None, None),
    ]
    # A plain request stores no detail, and a unique ending of its id finds it (`log` shows 8 characters).
    plain = reader.find(db, "00000000")
    assert plain is not None and plain[1]["failed"] == [] and plain[1]["cost_usd"] == pytest.approx(0.000225)
    j.put(event(2, id="another-00000000"))
    j.flush()
    with pytest.raises(reader.Ambiguous) as ambiguous:  # two ids end so: not unique, and each is named
        reader.find(db, "00000000")
    assert ambiguous.value.ids == ["another-00000000", "req00000000"]  # newest first
    assert reader.find(db, "req00000000") is not None  # a whole id always is


def test_time_ranges_are_found_without_an_index(tmp_path: Path) -> None:
    j = journal(tmp_path / "j.db")
    for i in range(3000):
        j.put(event(i, time=1_790_000_000.0 + i * 10))  # one every 10 s
    j.flush()
    db = reader.connect(tmp_path / "j.db")
    since = 1_790_000_000.0 + 20_000
    bound = rowid_at(db, since)
    # Nothing at or after `since` is before the bound, and the bound is within SLACK (3600 s = 360 rows) of it.
    assert db.execute("SELECT count(*) FROM requests WHERE rowid < ? AND time >= ?", (bound, since)).fetchone()[0] == 0
    assert 2000 - 361 <= bound <= 2001
    got = reader.recent(db, reader.Filter(since=since, until=since + 100), limit=100)
    assert [e["time"] for _, e in got] == [since + 10 * k for k in range(10)]


def test_old_rows_are_pruned_by_age_and_the_oldest_by_size(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    store = Store(path)
    store.open()
    now = time.time()
    j = journal(path)
    big = "x" * 2000  # a long error keeps the rows fat, so a small size cap is reached quickly
    for i in range(4000):
        j.put(event(i, time=now - 40 * 86400 + i * 60 if i < 1000 else now - 4000 + i, error=big))
    j.flush()
    assert rows(path) == 4000
    assert store.prune(now - 30 * 86400, 1 << 30) == 1000  # every row older than 30 days, none newer
    size = store.size()
    deleted = store.prune(now - 30 * 86400, size // 2)
    assert 1500 <= deleted <= 1800 and store.size() <= size // 2  # the oldest, down to 90% of the cap
    with sqlite3.connect(path) as db:
        oldest = db.execute("SELECT min(time) FROM requests").fetchone()[0]
        assert oldest > now - 4000 + 1000 + 1500
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert os.path.getsize(path) < size  # pages given back to the file system (auto_vacuum)


def test_bodies_are_cut_redacted_and_compressed() -> None:
    from sidecar.config.load import parse

    cfg = parse(
        {"server": {"api_key": "${S}"}, "upstream": {"nodes": [
            {"name": "a", "url": "http://a.invalid", "api_key": "${A}"},
            {"name": "b", "url": "http://b.invalid", "api_key": "${B}"},
        ]}},
        "t", {"S": "sidecar-key-123456", "A": "sk-node-a-secret-99", "B": "short"},
    )  # fmt: skip
    keys = keys_of(cfg)
    assert set(keys) == {b"sidecar-key-123456", b"sk-node-a-secret-99"}  # a key under 8 characters is no secret
    request = b'{"note": "my key is sidecar-key-123456", "model": "gpt-4o"}'
    parts = [b'{"error": "invalid key sk-node-', b'a-secret-99"}', b" and more"]  # a key split across reads
    sent = sum(map(len, parts)) + 100  # the capture kept the first parts: 100 more bytes were sent
    bodies = Bodies(request, len(request), parts, sent, headers={"content-type": "application/json"})
    packed = pack(bodies, keys)
    assert unpack(packed.request) == request.replace(b"sidecar-key-123456", MASK)
    assert unpack(packed.response) == b'{"error": "invalid key [redacted]"} and more'
    assert packed.cut == RESPONSE_CUT and packed.response_size == sent
    assert not pack(Bodies(b"{}", 2, [b"ok"], 2), keys).cut
    assert pack(Bodies(b"a" * 1024, 5000), keys).cut == REQUEST_CUT


async def test_the_bodies_held_in_memory_are_bounded(tmp_path: Path) -> None:
    """A capture keeps each body up to max_body_bytes, and all of them up to the desk's budget: past it a
    request is journaled with what was kept, marked cut; what the writer wrote makes room again."""
    desk = Desk()
    desk.limit, desk.budget = 1000, 2500
    sent: list[dict[str, Any]] = []

    async def client(message: dict[str, Any]) -> None:
        sent.append(message)

    first = Capture(client, desk, b"q" * 1500, [(b"content-type", b"application/json")])
    for _ in range(3):
        await first({"type": "http.response.body", "body": b"r" * 400, "more_body": True})
    assert len(first.bodies.request) == 1000 and first.kept == 1000  # each body at most max_body_bytes
    second = Capture(client, desk, b"s" * 800, [])
    await second({"type": "http.response.body", "body": b"t" * 600})
    assert second.bodies.request == b"" and second.bodies.response == []  # the budget is spent: nothing more
    assert len(sent) == 4 and all(m["body"] for m in sent)  # what the client gets is never touched
    j = Journal(tmp_path / "j.db", JournalConfig(bodies=True), "x", desk=desk)
    j.open()
    j.put(event(0), first.bodies)
    j.put(event(1), second.bodies)
    j.flush()
    assert desk.kept - desk.freed - desk.written == 0  # all written: room again
    assert Capture(client, desk, b"u" * 900, []).bodies.request == b"u" * 900
    db = reader.connect(tmp_path / "j.db")
    stored = reader.bodies(db, 2)
    assert stored is not None and not stored.whole(response=False) and stored.request_size == 800


# ---------------------------------------------------------------------------- trouble


def test_a_corrupt_file_is_moved_aside_and_a_new_one_started(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "j.db"
    path.write_bytes(b"this is not a database " * 100)
    j = journal(path)  # at open
    j.put(event(0))
    j.flush()
    aside = [p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and rows(path) == 1
    # And while it runs: the file is overwritten under the writer.
    j.store.close()
    path.write_bytes(b"garbage " * 4096)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    j.put(event(1))
    j.flush()  # fails, moves it aside
    j.flush()  # writes the kept batch into a new file
    assert rows(path) == 1 and j.dropped() == {}
    assert sum(1 for p in tmp_path.iterdir() if ".corrupt-" in p.name and not p.name.endswith("-wal")) >= 1
    assert any("moved it to" in w for w in warnings(caplog))


class ReadOnly:
    """A directory that cannot be written: chmod 0o500 for a user, a read-only tmpfs for root (whom
    permissions do not stop); `writable()` makes it writable again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.mounted = os.geteuid() == 0
        path.mkdir()
        if self.mounted:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                                  capture_output=True, text=True)  # fmt: skip
            assert done.returncode == 0, f"as root, this test mounts a read-only tmpfs: {done.stderr}"
        else:
            path.chmod(0o500)

    def writable(self) -> None:
        if self.mounted:
            subprocess.run(["mount", "-o", "remount,rw", str(self.path)], check=True)
        else:
            self.path.chmod(0o700)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], check=False)
            self.mounted = False
        else:
            self.path.chmod(0o700)


@pytest.fixture
def read_only(tmp_path: Path) -> Any:
    directory = ReadOnly(tmp_path / "ro")
    yield directory
    directory.close()


def test_a_read_only_directory_drops_records_with_one_warning(
    read_only: ReadOnly, caplog: pytest.LogCaptureFixture
) -> None:
    j = journal(read_only.path / "j.db")
    j.limit = 50
    for i in range(120):  # put never raises, never waits
        j.put(event(i))
        if i % 10 == 0:
            j.flush()
    kept = len(j.queue) + len(j.pending)  # the queue's 50, and the batch the writer retries
    dropped = 120 - kept
    assert kept == 51 and j.dropped() == {"cannot_open": dropped}
    said = warnings(caplog)
    assert sum("cannot write" in w for w in said) == 1 and sum("new ones are dropped" in w for w in said) == 1
    read_only.writable()
    j.flush()  # writable again: what was kept is written, and the episode ends
    assert rows(read_only.path / "j.db") == kept and j.trouble is None
    assert any(f"writing again ({dropped} records dropped so far)" in w for w in warnings(caplog))


def test_a_locked_database_keeps_the_batch_until_the_lock_goes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "j.db"
    j = journal(path)
    j.store.close()
    j.store.busy_ms = 50  # how long a write waits for another process's transaction
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # e.g. a sqlite3 shell left in a transaction
    try:
        for i in range(10):
            j.put(event(i))
        j.flush()
        j.flush()
        assert j.trouble is not None and j.trouble.kind == "locked" and len(j.pending) == 10
        assert sum("the database is locked by another process" in w for w in warnings(caplog)) == 1
    finally:
        other.execute("ROLLBACK")
        other.close()
    j.flush()
    assert rows(path) == 10 and j.dropped() == {} and j.trouble is None


FULL_DISK = """
import json, resource, signal, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from sidecar.config.schema import JournalConfig
from sidecar.journal.writer import Journal
from tests.test_journal import event
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # as the sidecar does (server.ignore_file_size_signal)
resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
j = Journal(Path({path!r}), JournalConfig(), "x")
j.limit = 2000
j.open()
for i in range(20000):
    j.put(event(i, error="x" * 200))  # never raises
    if i % 500 == 0:
        j.flush()
print(json.dumps({{"written": j.written, "dropped": j.dropped(), "trouble": j.trouble and j.trouble.kind,
                  "pending": len(j.pending)}}))
"""


def test_a_full_disk_drops_records_with_one_warning_and_never_raises(tmp_path: Path) -> None:
    """A file size limit (RLIMIT_FSIZE) stands in for a full disk: writes past it fail with EFBIG."""
    script = FULL_DISK.format(root=str(ROOT), path=str(tmp_path / "j.db"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    # SQLite says SQLITE_FULL for ENOSPC, SQLITE_IOERR_WRITE for EFBIG: the same episode either way.
    assert result["trouble"] in ("disk_full", "io_error") and 0 < result["written"] < 20000
    kept = 2000 + result["pending"]  # the queue, and the batch the writer retries
    assert sum(result["dropped"].values()) == 20000 - result["written"] - kept
    assert done.stderr.count("cannot write:") == 1 and "full disk" in done.stderr, done.stderr
    with sqlite3.connect(tmp_path / "j.db") as db:  # what was written is whole
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


TWO_WRITERS = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from sidecar.config.schema import JournalConfig
from sidecar.journal.writer import Journal
from tests.test_journal import event
j = Journal(Path({path!r}), JournalConfig(), sys.argv[1])
j.open()
j.start()
for i in range(3000):
    j.put(event(i))
    if i % 100 == 0:
        time.sleep(0.01)
j.close()
print(j.written, sorted(j.dropped().items()))
"""


def test_two_sidecars_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    script = TWO_WRITERS.format(root=str(ROOT), path=str(path))
    procs = [subprocess.Popen([sys.executable, "-c", script, name], stdout=subprocess.PIPE, text=True, cwd=ROOT)
             for name in ("127.0.0.1:1", "127.0.0.1:2")]  # fmt: skip
    outs = [proc.communicate(timeout=120)[0].split() for proc in procs]
    assert [out[:2] for out in outs] == [["3000", "[]"], ["3000", "[]"]]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT sidecar, count(*) FROM requests GROUP BY sidecar ORDER BY 1").fetchall() == [
            ("127.0.0.1:1", 3000),
            ("127.0.0.1:2", 3000),
        ]
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_the_writer_thread_writes_in_batches_and_close_writes_the_rest(tmp_path: Path) -> None:
    j = journal(tmp_path / "j.db")
    j.start()
    for i in range(QUEUE // 2):
        j.put(event(i))
    deadline = time.monotonic() + 10
    while j.written == 0 and time.monotonic() < deadline:  # within a FLUSH_EVERY or so
        time.sleep(0.05)
    assert j.written > 0
    for i in range(100):
        j.put(event(QUEUE + i))
    j.close()
    assert rows(tmp_path / "j.db") == QUEUE // 2 + 100 and not j.thread.is_alive()


def test_put_costs_the_event_loop_an_append(tmp_path: Path) -> None:
    """Not a speed: put must not touch the file or wait for the writer, whatever the writer is doing."""
    j = journal(tmp_path / "j.db")
    j.store.close()
    opening, stuck = threading.Event(), threading.Event()
    real_open = j.store.open

    def slow_open() -> Path | None:  # a file on a stalled disk
        opening.set()
        stuck.wait(30)
        return real_open()

    j.store.open = slow_open  # type: ignore[method-assign]
    writer = threading.Thread(target=j.flush)
    j.put(event(0))
    writer.start()
    try:
        assert opening.wait(10)
        for i in range(1, 1000):
            j.put(event(i))
        assert len(j.queue) == 999  # the writer took one batch and is stuck on it; put went on
    finally:
        stuck.set()
        writer.join(10)
    assert rows(tmp_path / "j.db") == 1000


# ---------------------------------------------------------------------------- stateful ids


def test_stateful_ids_are_written_with_the_rows_and_read_back_newest_kept(tmp_path: Path) -> None:
    j = journal(tmp_path / "j.db")
    for i in range(5):
        j.own(f"resp_{i}", "a" if i % 2 else "b", translated=i == 4)
    j.own("resp_1", "c", translated=False)  # noted again: its newest owner, and now the newest id
    j.flush()
    assert j.store.owners("127.0.0.1:8787", 10) == [
        ("resp_0", "b", False), ("resp_2", "b", False), ("resp_3", "a", False), ("resp_4", "b", True),
        ("resp_1", "c", False),
    ]  # fmt: skip
    assert j.store.owners("127.0.0.1:8787", 2) == [("resp_4", "b", True), ("resp_1", "c", False)]
    assert j.store.owners("127.0.0.1:9999", 10) == []  # another sidecar's nodes are not ours
    j.store.prune(time.time() - 3600, 1 << 30, owners=3)
    assert [made for made, _, _ in j.store.owners("127.0.0.1:8787", 10)] == ["resp_3", "resp_4", "resp_1"]
    j.store.prune(time.time() + 1, 1 << 30)  # by age: all of them are older than that
    assert j.store.owners("127.0.0.1:8787", 10) == []
    j.close()


def test_a_journal_an_earlier_version_wrote_gains_the_owners_table(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with sqlite3.connect(path) as db:  # version 1: requests and bodies, no owners
        db.execute("CREATE TABLE requests (time REAL NOT NULL, id TEXT NOT NULL)")
        db.execute("INSERT INTO requests VALUES (1.0, 'kept')")
        db.execute("PRAGMA user_version = 1")
    j = journal(path)
    assert j.store.owners("127.0.0.1:8787", 10) == [] and rows(path) == 1
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    j.close()


def test_stateful_ids_wait_out_a_locked_file_and_are_written_after(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    j = journal(path)
    j.store.busy_ms = 50
    j.store.close()
    j.store.open()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    j.own("file_1", "a", translated=False)
    j.flush()
    assert j.trouble is not None and j.trouble.kind == "locked" and j.pending_owned
    blocker.execute("ROLLBACK")
    blocker.close()
    j.flush()
    assert j.trouble is None and j.store.owners("127.0.0.1:8787", 10) == [("file_1", "a", False)]
    j.close()


def test_a_file_deleted_under_the_writer_is_noticed_at_the_next_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "j.db"
    j = journal(path)
    j.put(event(0))
    j.flush()
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{suffix}")
    with caplog.at_level(logging.WARNING, logger="llm_sidecar"):
        j.put(event(1))
        j.flush()
    assert any("moved or deleted; a new one is started" in w for w in warnings(caplog))
    assert rows(path) == 1  # the record went to the new file, not to the deleted one
    j.close()
