"""The journal's writer: a bounded queue the event loop appends to, and a thread that writes it in batches.

Never on the data path and never a reason to fail traffic. `put` (the event loop, once per request) is a
length check and an append; the thread wakes every FLUSH_EVERY seconds and writes what is queued in one
transaction per BATCH rows. When writing fails (a full disk, a read-only directory, a locked or corrupt
file) the batch is kept and tried again at each wake-up while the queue fills behind it; past QUEUE records
`put` drops them, counted by reason (`journal_dropped_total`). Each episode of trouble is one WARNING when it
begins and one line when it ends; a corrupt file is moved aside and a new one started.

What a `kill -9` loses: the records still queued (those of requests that ended within the last FLUSH_EVERY
seconds, more only while a write is slow) and the batch being written; SQLite's WAL keeps every committed
batch and the file consistent.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from sidecar.config.schema import JournalConfig
from sidecar.observe.record import Bodies, Desk

from .bodies import Packed, pack
from .schema import row_of
from .store import WORDS, Store, Trouble

log = logging.getLogger("llm_sidecar")

FLUSH_EVERY = 0.5  # seconds between writes: the most a kill -9 loses, at ordinary rates
BATCH = 2048  # rows per transaction
QUEUE = 8192  # records waiting to be written; past it they are dropped
PRUNE_FIRST = 5.0  # seconds after start of the first pruning
PRUNE_EVERY = 300.0
KEEP_FOR_RETRY = frozenset({"locked", "disk_full", "read_only", "cannot_open", "io_error", "corrupt"})

Record = tuple[dict[str, Any], Bodies | None]
Owned = tuple[str, str, int, str, float]  # an owners row: id, node, translated, sidecar, time


class Journal:
    """One journal file, written from one thread. `start`, then `put` from the event loop, then `close`."""

    def __init__(
        self, path: Path, config: JournalConfig, sidecar: str, keys: tuple[bytes, ...] = (), desk: Desk | None = None
    ) -> None:
        self.path = path
        self.desk = desk if desk is not None else Desk()  # the budget of bodies held (observe/record.py)
        self.config = config
        self.sidecar = sidecar  # written in every row: whose spend it is when read back at start
        self.keys = keys  # what bodies are redacted of: set again on reload (a tuple, swapped whole)
        self.store = Store(path)
        self.queue: deque[Record] = deque()
        self.limit = QUEUE
        self.pending: list[Record] = []  # a batch that failed, tried again first
        self.owned: deque[Owned] = deque()  # stateful ids nodes made (nodes/owners.py), written with the rows
        self.pending_owned: list[Owned] = []
        self.keep_owners: int | None = None  # how many of them the file keeps (set by whoever reads them back)
        self.dropped_queue: dict[str, int] = {}  # by the event loop's thread only
        self.dropped_writer: dict[str, int] = {}  # by the writer's thread only
        self.trouble: Trouble | None = None  # the episode under way
        self.overflowing = False
        self.written = 0
        self.write_seconds = 0.0  # the writer thread's CPU time writing (the benchmark prints it per row)
        self.started = time.monotonic()
        self.pruned_at: float | None = None
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.run, name="llm-sidecar-journal", daemon=True)

    # ------------------------------------------------------------------ the event loop's side

    def open(self) -> None:
        """Open the file now, in the caller's thread (so spend can be read back before the first request)."""
        try:
            self.open_store()
        except Trouble as exc:
            self.begin(exc)

    def open_store(self) -> None:
        aside = self.store.open()
        if aside is not None:
            log.warning("journal %s: %s; moved it to %s, a new one is started", self.path, WORDS["corrupt"], aside)

    def start(self) -> None:
        """From now on the store is the writer thread's."""
        self.thread.start()

    def put(self, event: dict[str, Any], bodies: Bodies | None = None) -> None:
        queue = self.queue
        if len(queue) < self.limit:
            queue.append((event, bodies))
            return
        if bodies is not None:
            self.desk.freed += bodies.held
        trouble = self.trouble
        reason = trouble.kind if trouble is not None else "queue_full"
        self.dropped_queue[reason] = self.dropped_queue.get(reason, 0) + 1
        if not self.overflowing:
            self.overflowing = True
            log.warning(
                "journal %s: %d records are waiting to be written (%s); new ones are dropped until the writer "
                "catches up (traffic is not affected)",
                self.path, len(queue), "the writer is failing" if trouble else "the writer is behind",
            )  # fmt: skip

    def own(self, made: str, node: str, translated: bool) -> None:
        """A stateful id a node made: kept so that it still finds its node after a restart."""
        if len(self.owned) < self.limit:
            self.owned.append((made, node, int(translated), self.sidecar, time.time()))
        else:
            self.dropped_queue["queue_full"] = self.dropped_queue.get("queue_full", 0) + 1

    def dropped(self) -> dict[str, int]:
        queue, writer = dict(self.dropped_queue), dict(self.dropped_writer)
        return {k: queue.get(k, 0) + writer.get(k, 0) for k in queue.keys() | writer.keys()}

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop (at most `timeout` seconds: a locked file must not hold the stop)."""
        self.stop_event.set()
        if self.thread.is_alive():
            self.thread.join(timeout)
        left = len(self.queue) + len(self.pending) + len(self.owned) + len(self.pending_owned)
        if self.thread.is_alive() or left:
            log.warning("journal %s: stopped with %d records not written", self.path, left)

    # ------------------------------------------------------------------ the writer thread

    def run(self) -> None:
        try:
            while True:
                stopping = self.stop_event.wait(FLUSH_EVERY)
                self.flush()
                if stopping:
                    break
                self.maintain()
        except Exception:  # a bug: the journal stops, traffic goes on
            log.exception("journal %s: the writer stopped", self.path)
        finally:
            self.store.close()

    def take(self) -> list[Record]:
        take = self.queue.popleft
        return [take() for _ in range(min(BATCH, len(self.queue)))]

    def flush(self) -> None:
        """Write what is queued, a batch at a time; on trouble keep the batch and stop until next time."""
        for _ in range(QUEUE // BATCH + 2):  # all a full queue holds, then maintenance gets its turn
            batch = self.pending or self.take()
            owned = self.pending_owned or self.take_owned()
            if not batch and not owned:
                if self.overflowing:
                    self.overflowing = False
                    log.info("journal %s: the writer caught up", self.path)
                return
            began = time.thread_time()
            try:
                if self.store.db is not None and self.store.replaced():  # one stat: rows never go to a lost file
                    self.store.close()
                    log.warning("journal %s: the file was moved or deleted; a new one is started", self.path)
                if self.store.db is None:
                    self.open_store()
                rows, bodies = self.rows(batch)
                self.store.write(rows, bodies, owned)
            except Trouble as exc:
                self.pending_owned = owned if exc.kind in KEEP_FOR_RETRY else []
                self.failed(exc, batch)
                return
            finally:
                self.write_seconds += time.thread_time() - began
            self.pending = []
            self.pending_owned = []
            self.written += len(batch)
            self.desk.written += sum(kept.held for _, kept in batch if kept is not None)
            if self.trouble is not None:
                self.recovered()

    def take_owned(self) -> list[Owned]:
        take = self.owned.popleft
        return [take() for _ in range(min(BATCH, len(self.owned)))]

    def rows(self, batch: list[Record]) -> tuple[list[tuple[Any, ...]], list[tuple[int, Packed]]]:
        sidecar, keys = self.sidecar, self.keys
        rows = [row_of(event, sidecar) for event, _ in batch]
        bodies = [(i, pack(kept, keys)) for i, (_, kept) in enumerate(batch) if kept is not None]
        return rows, bodies

    def failed(self, exc: Trouble, batch: list[Record]) -> None:
        if exc.kind == "corrupt":
            self.store.close()
            try:
                aside = self.store.move_aside()
            except Trouble:
                aside = None
            if aside is not None:
                log.warning("journal %s: %s; moved it to %s, a new one is started", self.path, WORDS["corrupt"], aside)
        if exc.kind in KEEP_FOR_RETRY:
            self.pending = batch
        else:  # a batch that cannot be written as it is: not retried forever
            self.pending = []
            self.dropped_writer[exc.kind] = self.dropped_writer.get(exc.kind, 0) + len(batch)
            self.desk.written += sum(kept.held for _, kept in batch if kept is not None)
        self.begin(exc)

    def begin(self, exc: Trouble) -> None:
        if self.trouble is None or self.trouble.kind != exc.kind:
            log.warning(
                "journal %s: cannot write: %s (%s); requests are served as usual, and up to %d records are kept "
                "until it clears (more are dropped)",
                self.path, WORDS.get(exc.kind, exc.kind), exc.detail, self.limit,
            )  # fmt: skip
        self.trouble = exc

    def recovered(self) -> None:
        dropped = sum(self.dropped().values())
        log.warning("journal %s: writing again (%d records dropped so far)", self.path, dropped)
        self.trouble = None

    def maintain(self) -> None:
        """Now and then: prune by age and size."""
        now = time.monotonic()
        due = self.started + PRUNE_FIRST if self.pruned_at is None else self.pruned_at + PRUNE_EVERY
        if now < due or self.store.db is None:
            return
        self.pruned_at = now
        began = time.thread_time()
        try:
            cutoff = time.time() - self.config.retention_days * 86400
            deleted = self.store.prune(cutoff, self.config.max_bytes, self.keep_owners)
        except Trouble as exc:
            with contextlib.suppress(Exception):
                self.begin(exc)
            return
        finally:
            self.write_seconds += time.thread_time() - began
        if deleted:
            log.info("journal %s: pruned %d old records", self.path, deleted)
