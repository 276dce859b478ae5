"""The journal's file: opening it (WAL), writing a batch in one transaction, pruning, and what goes wrong.

Used by one thread at a time (the writer's; at start the process's, to read spend back). Two sidecars may
share one file: SQLite's locks serialise their transactions and each waits `BUSY_MS` for the other's. A file
that is not a database, or a corrupt one, is renamed `<name>.corrupt-<time>` (its -wal beside it) and a new
one started, unless another process already replaced it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .bodies import Packed
from .schema import DDL, INSERT, OWNER, SLACK, VERSION, rowid_at

BUSY_MS = 1000  # how long a write waits for another process's transaction (two sidecars on one file)
PRUNE_CHUNK = 5000  # rows deleted per transaction, so another writer never waits long
WAL_LIMIT = 8 * 1024 * 1024  # the -wal file is cut back to this after a checkpoint


class Trouble(Exception):
    """A journal operation failed: `kind` says how (for the warning and the metric's reason)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


KINDS = {
    "SQLITE_FULL": "disk_full",
    "SQLITE_CORRUPT": "corrupt",
    "SQLITE_NOTADB": "corrupt",
    "SQLITE_BUSY": "locked",
    "SQLITE_LOCKED": "locked",
    "SQLITE_READONLY": "read_only",
    "SQLITE_CANTOPEN": "cannot_open",
    "SQLITE_PERM": "read_only",
    "SQLITE_IOERR": "io_error",
}
WORDS = {
    "disk_full": "the disk is full (or the file size limit was reached)",
    "corrupt": "the file is not a valid database",
    "locked": "the database is locked by another process",
    "read_only": "the file or its directory is read-only",
    "cannot_open": "the file cannot be opened (a missing or read-only directory?)",
    "io_error": "an I/O error (a full disk, a file size limit, a failing device)",
    "error": "an unexpected error",
}


def trouble(exc: BaseException) -> Trouble:
    """What a sqlite3 or OS error means for the journal."""
    if isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", "") or ""
        kind = next((k for prefix, k in KINDS.items() if name.startswith(prefix)), None)
        if kind is None:
            text = str(exc).lower()
            kind = "corrupt" if "not a database" in text or "malformed" in text else "error"
        return Trouble(kind, f"{name or type(exc).__name__}: {exc}")
    if isinstance(exc, OSError):
        kind = {28: "disk_full", 27: "disk_full", 13: "read_only", 30: "read_only", 1: "read_only"}.get(
            exc.errno or 0, "io_error"
        )
        return Trouble(kind, f"{exc.strerror or exc} ({exc.filename or ''})".replace(" ()", ""))
    return Trouble("error", f"{type(exc).__name__}: {exc}")


@contextlib.contextmanager
def named_trouble() -> Iterator[None]:
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        raise trouble(exc) from exc


class Store:
    """An open journal file."""

    def __init__(self, path: Path, busy_ms: int = BUSY_MS) -> None:
        self.path = path
        self.busy_ms = busy_ms
        self.db: sqlite3.Connection | None = None
        self.inode: int | None = None

    # ------------------------------------------------------------------ opening

    def open(self) -> Path | None:
        """Open (creating the file and its directory); a corrupt file is moved aside once and a new one made:
        where it went, then."""
        try:
            self._open()
        except Trouble as exc:
            if exc.kind != "corrupt":
                raise
            self.close()
            aside = self.move_aside()
            self._open()
            return aside
        return None

    def _open(self) -> None:
        with named_trouble():
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            db = sqlite3.connect(self.path, timeout=self.busy_ms / 1000, isolation_level=None, check_same_thread=False)
            try:
                db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes on a new file, before its first table
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = NORMAL")  # WAL: a crash of the process loses nothing committed
                db.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT}")
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version < VERSION:  # a new file, or one an earlier version made: its tables are kept
                    db.execute("BEGIN IMMEDIATE")
                    for statement in DDL:
                        db.execute(statement)
                    db.execute(f"PRAGMA user_version = {VERSION}")
                    db.execute("COMMIT")
                db.execute("SELECT count(*) FROM (SELECT 1 FROM requests LIMIT 1)").fetchone()
            except BaseException:
                db.close()
                raise
            with contextlib.suppress(OSError):
                os.chmod(self.path, 0o600)  # bodies and prompts: this user's only
            self.inode = os.stat(self.path).st_ino
            self.db = db

    def close(self) -> None:
        if self.db is not None:
            with contextlib.suppress(sqlite3.Error):
                self.db.close()
            self.db = None

    def replaced(self) -> bool:
        """The file at the path is gone or another one (moved aside by another sidecar, deleted by hand)."""
        try:
            return os.stat(self.path).st_ino != self.inode
        except OSError:
            return True

    def move_aside(self) -> Path | None:
        """Rename a corrupt file (and its -wal) out of the way; None when another process already did."""
        if self.inode is not None and self.replaced():
            return None
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        with named_trouble():
            os.replace(self.path, aside)
        for suffix in ("-wal",):
            with contextlib.suppress(OSError):
                os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
        with contextlib.suppress(OSError):
            os.unlink(f"{self.path}-shm")  # rebuilt from the database and its -wal
        self.inode = None
        return aside

    # ------------------------------------------------------------------ writing

    def write(
        self,
        rows: list[tuple[Any, ...]],
        bodies: Iterable[tuple[int, Packed]] = (),
        owned: list[tuple[str, str, int, str, float]] = (),  # type: ignore[assignment]
    ) -> None:
        """`rows` in one transaction; `bodies`: (index in rows, packed bodies); `owned`: owners rows."""
        db = self.db
        assert db is not None
        with named_trouble():
            db.execute("BEGIN IMMEDIATE")
            try:
                kept = dict(bodies)
                if not kept:
                    db.executemany(INSERT, rows)
                else:
                    for i, row in enumerate(rows):
                        rowid = db.execute(INSERT, row).lastrowid
                        packed = kept.get(i)
                        if packed is not None:
                            db.execute(
                                "INSERT INTO bodies VALUES (?, ?, ?, ?, ?, ?, ?)",
                                (rowid, packed.request, packed.response, packed.request_size,
                                 packed.response_size, packed.cut, packed.headers),
                            )  # fmt: skip
                if owned:
                    db.executemany(OWNER, owned)
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------------ pruning

    def size(self) -> int:
        """Bytes the database uses (its free pages not counted)."""
        db = self.db
        assert db is not None
        pages = db.execute("PRAGMA page_count").fetchone()[0] - db.execute("PRAGMA freelist_count").fetchone()[0]
        return int(pages) * int(db.execute("PRAGMA page_size").fetchone()[0])

    def prune(self, older_than: float, max_bytes: int, owners: int | None = None) -> int:
        """Delete rows older than `older_than` (Unix time), then the oldest until the file is under
        `max_bytes` (to 90% of it); give the pages back. Of the stateful ids, those older than `older_than`
        go, and all but the newest `owners` (None: no bound). Returns the request rows deleted."""
        db = self.db
        assert db is not None
        deleted = 0
        with named_trouble():
            db.execute("DELETE FROM owners WHERE time < ?", (older_than,))
            if owners is not None:  # a REPLACE gives a row a new rowid: the newest are the highest
                db.execute("DELETE FROM owners WHERE rowid <= (SELECT max(rowid) FROM owners) - ?", (owners,))
            bound = rowid_at(db, older_than + SLACK)  # about the first row not older: later ones are pruned later
            while True:
                cur = db.execute(
                    "DELETE FROM requests WHERE rowid IN "
                    "(SELECT rowid FROM requests WHERE rowid < ? AND time < ? ORDER BY rowid LIMIT ?)",
                    (bound, older_than, PRUNE_CHUNK),
                )
                deleted += cur.rowcount
                if cur.rowcount < PRUNE_CHUNK:
                    break
            size = self.size()
            if size > max_bytes:
                rows = db.execute("SELECT count(*) FROM requests").fetchone()[0]
                excess = 1 - (0.9 * max_bytes) / size
                todo = max(1, int(rows * excess))
                while todo > 0:
                    cur = db.execute(
                        "DELETE FROM requests WHERE rowid IN (SELECT rowid FROM requests ORDER BY rowid LIMIT ?)",
                        (min(todo, PRUNE_CHUNK),),
                    )
                    if cur.rowcount <= 0:
                        break
                    deleted += cur.rowcount
                    todo -= cur.rowcount
            if deleted:
                db.execute("DELETE FROM bodies WHERE request < (SELECT coalesce(min(rowid), 0) FROM requests)")
                db.execute("DELETE FROM bodies WHERE request NOT IN (SELECT rowid FROM requests)")
                db.executescript("PRAGMA incremental_vacuum;")  # execute() would free one page: it steps once
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return deleted

    # ------------------------------------------------------------------ reading spend back

    def spend_since(
        self, month_start: float, day_start: float, sidecar: str
    ) -> list[tuple[str, str | None, float, bool, int]]:
        """(node, model served, USD, today, priced requests) since `month_start`, of the rows `sidecar` wrote."""
        db = self.db
        assert db is not None
        with named_trouble():
            rows = db.execute(
                "SELECT node, model_served, time >= ?, sum(cost_usd), count(*) FROM requests "
                "WHERE rowid >= ? AND time >= ? AND sidecar = ? AND cost_usd IS NOT NULL AND node IS NOT NULL "
                "GROUP BY node, model_served, time >= ?",
                (day_start, rowid_at(db, month_start), month_start, sidecar, day_start),
            ).fetchall()
        return [(node, model, float(cost), bool(today), int(n)) for node, model, today, cost, n in rows]

    # ------------------------------------------------------------------ reading stateful ids back

    def owners(self, sidecar: str, limit: int) -> list[tuple[str, str, bool]]:
        """The newest `limit` ids the nodes of `sidecar` made, oldest first."""
        db = self.db
        assert db is not None
        with named_trouble():
            rows = db.execute(
                "SELECT id, node, translated FROM "
                "(SELECT rowid, id, node, translated FROM owners WHERE sidecar = ? ORDER BY rowid DESC LIMIT ?) "
                "ORDER BY rowid",
                (sidecar, limit),
            ).fetchall()
        return [(made, node, bool(translated)) for made, node, translated in rows]
