"""The journal's tables, and how a `request` event becomes a row. Pure.

One row per finished request. The columns are what `log`, `log stats` and budgets query; what a request met
on the way (its failed attempts, moved on or caused by the request among them, continuations, the answering
attempt's own time, and marks: request-caused, hedges, translation, nodes skipped, the trace) is kept as the
event has it, as JSON in `detail`, NULL for a plain request answered at its first attempt, so a new kind of mark
needs no new column. `api_upstream` is the answering node's format when the sidecar translated (NULL: the
client's own). Bodies, when kept, are in their own table; so are the stateful ids nodes made (`owners`), so a
request naming a stored response still finds its node after a restart.
"""

from __future__ import annotations

import json
import sqlite3
from operator import itemgetter
from typing import Any

VERSION = 2  # PRAGMA user_version of a journal this code writes (2: the owners table)

# The event's own fields first (taken in one C call, see row_of), then what the writer adds.
FROM_EVENT = (
    "time", "id", "client_id", "method", "path", "api", "model", "model_served", "node", "status", "stream",
    "attempts", "ttfb_ms", "ttft_ms", "total_ms", "tokens_in", "tokens_out", "tokens_cached", "tokens_cache_write",
    "tokens_reasoning", "cost_usd", "error",
)  # fmt: skip
COLUMNS = (*FROM_EVENT, "sidecar", "api_upstream", "failovers", "detail")
# The event's fields kept as marks when set: how the request caused its failure, its hedges, its translation
# (the x-llm-sidecar-translated header) and the nodes passed over, the trace that recorded it.
MARKS = ("request_caused", "hedged", "translated", "skipped", "trace_id", "span_id")

DDL = (
    """CREATE TABLE IF NOT EXISTS requests (
        time REAL NOT NULL,          -- Unix time the request ended
        id TEXT NOT NULL,            -- the request id (the client's X-Request-Id when it sent one)
        client_id TEXT,              -- the client's X-Request-Id, NULL when the sidecar made the id
        method TEXT, path TEXT,
        api TEXT,                    -- the client's format: openai | anthropic
        model TEXT,                  -- as the client asked
        model_served TEXT,           -- as sent to the node that answered
        node TEXT,                   -- the node that answered, NULL when none did
        status INTEGER, stream INTEGER,
        attempts INTEGER,            -- attempts on nodes, continuations included
        ttfb_ms REAL, ttft_ms REAL, total_ms REAL,
        tokens_in INTEGER, tokens_out INTEGER, tokens_cached INTEGER, tokens_cache_write INTEGER,
        tokens_reasoning INTEGER,
        cost_usd REAL,               -- NULL: no price applied, or no token counts
        error TEXT,
        sidecar TEXT,                -- the listen address of the sidecar that wrote the row
        api_upstream TEXT,           -- the format sent upstream when it is not the client's (NULL: the same)
        failovers INTEGER,           -- moves from one node to another
        detail TEXT                  -- JSON: {"failed": [...], "continued": [...], "marks": {...}, "answer_ms"}
    )""",
    """CREATE TABLE IF NOT EXISTS bodies (
        request INTEGER PRIMARY KEY, -- requests.rowid
        request_body BLOB,           -- zlib, node keys and the sidecar's key redacted
        response_body BLOB,
        request_size INTEGER,        -- bytes before the cap
        response_size INTEGER,
        cut INTEGER,                 -- 1: the request was longer than [journal] max_body_bytes, 2: the answer, 3: both
        headers TEXT                 -- JSON: content-type, anthropic-version, anthropic-beta, content-encoding
    )""",
    """CREATE TABLE IF NOT EXISTS owners (
        id TEXT PRIMARY KEY,         -- a stateful id a node's answer made: a stored response, a file, a batch ...
        node TEXT NOT NULL,          -- the node that made it, the only one that can serve a request naming it
        translated INTEGER NOT NULL, -- 1: made by a translated answer, so the node keeps no state under it
        sidecar TEXT,                -- the listen address of the sidecar whose node it is
        time REAL NOT NULL           -- Unix time it was made; a new row (a higher rowid) each time it is noted
    )""",
)
OWNER = "INSERT OR REPLACE INTO owners (id, node, translated, sidecar, time) VALUES (?, ?, ?, ?, ?)"

INSERT = f"INSERT INTO requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
# No index on `time`: it would cost the writer a quarter more per row. Rows are appended in the order their
# requests ended, a batch at a time, so time grows with rowid, but for a batch written late (after the file was
# locked, or by another sidecar sharing it): a time range is found by a binary search over rowids, SLACK early.
SLACK = 3600.0


def rowid_at(db: sqlite3.Connection, t: float) -> int:
    """A rowid before which no row ended at `t` or later (but for rows SLACK seconds out of order)."""
    lo, hi = db.execute("SELECT min(rowid), max(rowid) FROM requests").fetchone()
    if lo is None:
        return 0
    target = t - SLACK
    while lo < hi:
        mid = (lo + hi) // 2
        rowid, ended = db.execute(
            "SELECT rowid, time FROM requests WHERE rowid >= ? ORDER BY rowid LIMIT 1", (mid,)
        ).fetchone()
        if ended < target:
            lo = rowid + 1
        else:
            hi = rowid
    return int(lo)


def failovers(failed: list[dict[str, Any]], node: str | None) -> int:
    """Moves from one node to another: between failed attempts, and to the node that answered."""
    moves = 0
    previous = None
    for attempt in failed:
        if str(attempt.get("reason", "")).startswith("continuation: "):
            continue
        current = attempt.get("node")
        if previous is not None and current != previous:
            moves += 1
        previous = current
    if previous is not None and node is not None and node != previous:
        moves += 1
    return moves


_FIELDS = itemgetter(*FROM_EVENT)


def marks_of(e: dict[str, Any]) -> dict[str, Any]:
    """The marks of a `request` event: MARKS that are set (the client's format with them when it was translated
    or a node was skipped), over any `marks` it carries."""
    marks = {name: value for name in MARKS if (value := e.get(name))}
    if marks and ("translated" in marks or "skipped" in marks) and e.get("form"):
        marks["form"] = e["form"]
    extra = e.get("marks")
    return {**extra, **marks} if extra else marks


def row_of(e: dict[str, Any], sidecar: str) -> tuple[Any, ...]:
    """The row of one `request` event (called per request, in the writer thread: one C call for the event's
    fields, JSON only for a request that met something on the way)."""
    failed = e["failed"]
    continued = e["continued"]
    marks = marks_of(e)
    if not (failed or continued or marks):
        return (*_FIELDS(e), sidecar, e.get("api_upstream"), 0, None)
    detail = json.dumps({"failed": failed, "continued": continued, "marks": marks, "answer_ms": e.get("answer_ms")})
    moves = failovers(failed, continued[0]["from"] if continued else e["node"])
    return (*_FIELDS(e), sidecar, e.get("api_upstream"), moves, detail)
