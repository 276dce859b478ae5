"""Reading the journal back: recent requests with filters, one request in detail, stats, bodies.

The CLI opens the file read-only, so `llm-sidecar log` works whether a sidecar runs or not and never blocks
one that writes; the control API uses `find` for a request its event replay no longer holds.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from sidecar.observe.shapes import RequestJSON, StepJSON
from sidecar.observe.stats import percentile

from .bodies import REQUEST_CUT, RESPONSE_CUT, readable, unpack
from .schema import COLUMNS, failovers, marks_of, rowid_at

CONTINUATION = "continuation: "
MOVED = "moved on: "


class NoJournal(Exception):
    """There is no journal at the path (yet), or it cannot be read."""


class Ambiguous(Exception):
    """An id's ending names more than one request (each run numbers its requests from 1)."""

    def __init__(self, ids: list[str]) -> None:
        super().__init__(", ".join(ids))
        self.ids = ids


def connect(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise NoJournal(f"no journal at {path} (a sidecar writes one while it runs with [journal] enabled)")
    if not os.access(path, os.R_OK):
        raise NoJournal(f"cannot read the journal at {path}: permission denied")
    try:
        db = open_read_only(path, "mode=ro")
    except sqlite3.Error as exc:
        if os.access(path.parent, os.W_OK):
            raise NoJournal(f"cannot read the journal at {path}: {exc}") from None
        # A read-only directory: SQLite cannot make the WAL's index beside the file, so the file is read as
        # it is (what the writer has checkpointed into it; the last few seconds may be missing).
        try:
            db = open_read_only(path, "immutable=1")
        except sqlite3.Error as again:
            raise NoJournal(f"cannot read the journal at {path}: {again}") from None
    db.row_factory = sqlite3.Row
    return db


def open_read_only(path: Path, how: str) -> sqlite3.Connection:
    db = sqlite3.connect(f"file:{quote(str(path))}?{how}", uri=True, timeout=5)
    try:
        db.execute("SELECT 1 FROM requests LIMIT 1").fetchall()
    except BaseException:
        db.close()
        raise
    return db


# ---------------------------------------------------------------------------- one request in detail


def steps(failed: list[dict[str, Any]], continued: list[dict[str, Any]], node: str | None,
          total_ms: float | None, answer_ms: float | None = None,
          hedged: list[dict[str, Any]] | None = None) -> list[StepJSON]:  # fmt: skip
    """Each attempt in order: failed ones (or moved on: their node was judged out while they waited), the one
    that answered, then continuations (failed, then those that went on). `kind` says how it followed the one
    before; a hedge that won is `hedge`. The answering attempt's time is its own when the event says it
    (`answer_ms`), else the rest of the request."""
    out: list[StepJSON] = []
    previous: str | None = None
    later: list[StepJSON] = []
    spent = 0.0
    for a in failed:
        reason = str(a.get("reason", ""))
        step: StepJSON = {
            "node": str(a.get("node")),
            "kind": "",
            "outcome": "moved" if reason.startswith(MOVED) else "failed",
            "reason": reason,
            "fault": a.get("kind"),
            "request_caused": bool(a.get("request_caused")),
            "wait_ms": a.get("wait_ms"),
            "ms": a.get("ms"),
        }
        if reason.startswith(CONTINUATION):
            step["kind"], step["reason"] = "continuation", reason[len(CONTINUATION) :]
            later.append(step)
            continue
        step["kind"] = "first" if previous is None else "retry" if step["node"] == previous else "failover"
        previous = step["node"]
        spent += (step["ms"] or 0.0) + (step["wait_ms"] or 0.0)
        out.append(step)
    answered = continued[0]["from"] if continued else node
    if answered is not None:
        kind = "first" if previous is None else "retry" if answered == previous else "failover"
        if any(isinstance(h, dict) and h.get("won") and h.get("node") == answered for h in hedged or ()):
            kind = "hedge"
        rest = None if total_ms is None or any(s["ms"] is None for s in out) else round(max(total_ms - spent, 0), 1)
        out.append({"node": answered, "kind": kind, "outcome": "answered", "reason": None, "fault": None,
                    "request_caused": False, "wait_ms": None,
                    "ms": answer_ms if answer_ms is not None else rest})  # fmt: skip
    for c in continued:
        later.append({"node": str(c.get("to")), "kind": "continuation", "outcome": "answered",
                      "reason": str(c.get("reason")), "fault": None, "request_caused": False, "wait_ms": None,
                      "ms": None})  # fmt: skip
    return out + later


def detail(record: Mapping[str, Any], source: Literal["recent", "journal"], bodies: bool = False) -> RequestJSON:
    """A `request` event, or a journal row read as one, in detail."""
    failed = record.get("failed") or []
    continued = record.get("continued") or []
    marks = record.get("marks") or marks_of(dict(record))  # a journal row has them, an event its fields
    hedged = marks.get("hedged")
    hedges = hedged if isinstance(hedged, list) else None
    return {
        "id": record["id"],
        "client_id": record.get("client_id"),
        "time": record["time"],
        "method": record["method"],
        "path": record["path"],
        "api": record["api"],
        "api_upstream": record.get("api_upstream") or record["api"],
        "model": record["model"],
        "model_served": record.get("model_served"),
        "node": record["node"],
        "status": record["status"],
        "stream": bool(record["stream"]),
        "attempts": record["attempts"],
        "failovers": record["failovers"] if "failovers" in record else failovers(failed, answered_first(record)),
        "ttfb_ms": record["ttfb_ms"],
        "ttft_ms": record["ttft_ms"],
        "total_ms": record["total_ms"],
        "tokens_in": record["tokens_in"],
        "tokens_out": record["tokens_out"],
        "tokens_cached": record["tokens_cached"],
        "tokens_cache_write": record.get("tokens_cache_write"),
        "tokens_reasoning": record.get("tokens_reasoning"),
        "cost_usd": record.get("cost_usd"),
        "error": record["error"],
        "steps": steps(failed, continued, record["node"], record["total_ms"], record.get("answer_ms"), hedges),
        "marks": marks,
        "bodies": bodies,
        "source": source,
    }


def answered_first(record: Mapping[str, Any]) -> str | None:
    """The node whose answer began (a continuation moves `node` on to the node that finished it)."""
    continued = record.get("continued")
    return str(continued[0]["from"]) if continued else record["node"]


def as_event(row: sqlite3.Row) -> dict[str, Any]:
    """A journal row with its `detail` spread out as the event had it."""
    record = {name: row[name] for name in COLUMNS if name != "detail"}
    extra = json.loads(row["detail"]) if row["detail"] else {}
    record.update(
        failed=extra.get("failed") or [],
        continued=extra.get("continued") or [],
        marks=extra.get("marks"),
        answer_ms=extra.get("answer_ms"),
    )
    return record


def find(db: sqlite3.Connection, rid: str) -> tuple[int, dict[str, Any]] | None:
    """The newest request with id `rid` (an id may repeat: a client's own), or a unique ending of one
    (`log` shows the last 8 characters); its rowid and record."""
    row = db.execute("SELECT rowid, * FROM requests WHERE id = ? ORDER BY rowid DESC LIMIT 1", (rid,)).fetchone()
    if row is None and 4 <= len(rid) < 40:
        rows = db.execute(
            "SELECT rowid, * FROM requests WHERE id LIKE ? ESCAPE '\\' ORDER BY rowid DESC LIMIT 50",
            ("%" + rid.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_"),),
        ).fetchall()
        ids = list(dict.fromkeys(r["id"] for r in rows))  # newest first
        if len(ids) > 1:
            raise Ambiguous(ids)
        row = rows[0] if rows else None
    return None if row is None else (row["rowid"], as_event(row))


def lookup(path: Path, rid: str) -> RequestJSON | None:
    """One request in detail from the file at `path` (the control API, in a thread)."""
    db = connect(path)
    try:
        try:
            found = find(db, rid)
        except Ambiguous:
            return None
        if found is None:
            return None
        rowid, record = found
        return detail(record, "journal", has_bodies(db, rowid))
    finally:
        db.close()


def has_bodies(db: sqlite3.Connection, rowid: int) -> bool:
    return db.execute("SELECT 1 FROM bodies WHERE request = ?", (rowid,)).fetchone() is not None


@dataclass(frozen=True)
class StoredBodies:
    request: bytes
    response: bytes
    request_size: int
    response_size: int
    cut: int  # bodies.REQUEST_CUT | bodies.RESPONSE_CUT
    headers: dict[str, str]

    def whole(self, response: bool) -> bool:
        return not self.cut & (RESPONSE_CUT if response else REQUEST_CUT)

    def text(self, response: bool) -> str:
        return readable(self.response if response else self.request, self.headers, response)


def bodies(db: sqlite3.Connection, rowid: int) -> StoredBodies | None:
    row = db.execute("SELECT * FROM bodies WHERE request = ?", (rowid,)).fetchone()
    if row is None:
        return None
    return StoredBodies(
        unpack(row["request_body"]), unpack(row["response_body"]), row["request_size"], row["response_size"],
        int(row["cut"]), json.loads(row["headers"] or "{}"),
    )  # fmt: skip


# ---------------------------------------------------------------------------- lists and stats


@dataclass(frozen=True)
class Filter:
    node: str | None = None
    model: str | None = None  # as asked or as served
    status: str | None = None  # 200, 429, 4xx, 5xx
    errors: bool = False  # status >= 400, or an error after the answer began (a broken stream)
    since: float | None = None
    until: float | None = None

    def where(self, db: sqlite3.Connection) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if self.since is not None:  # rows are in time order (schema.rowid_at): skip the older ones whole
            clauses.append("rowid >= ?")
            params.append(rowid_at(db, self.since))
        if self.node is not None:
            clauses.append("node = ?")
            params.append(self.node)
        if self.model is not None:
            clauses.append("(model = ? OR model_served = ?)")
            params += [self.model, self.model]
        if self.status is not None:
            if self.status.endswith("xx"):
                clauses.append("status >= ? AND status < ?")
                params += [int(self.status[0]) * 100, int(self.status[0]) * 100 + 100]
            else:
                clauses.append("status = ?")
                params.append(int(self.status))
        if self.errors:
            clauses.append("(status >= 400 OR error IS NOT NULL)")
        if self.since is not None:
            clauses.append("time >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append("time < ?")
            params.append(self.until)
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def recent(db: sqlite3.Connection, where: Filter, limit: int, after: int = 0) -> list[tuple[int, dict[str, Any]]]:
    """The last `limit` matching requests (rowid above `after`), oldest first."""
    sql, params = where.where(db)
    sql = (sql + " AND" if sql else " WHERE") + " rowid > ?"
    rows = db.execute(
        f"SELECT rowid, * FROM requests{sql} ORDER BY rowid DESC LIMIT ?", [*params, after, limit]
    ).fetchall()
    return [(row["rowid"], as_event(row)) for row in reversed(rows)]


@dataclass
class Group:
    node: str
    model: str
    requests: int = 0
    errors: int = 0
    failovers: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    priced: int = 0  # requests with a cost
    unpriced: int = 0  # requests with token counts that no price applied to
    ttft: list[float] | None = None

    def p(self, q: float) -> float | None:
        return percentile(sorted(self.ttft or []), q)


def stats(db: sqlite3.Connection, where: Filter) -> list[Group]:
    """Per node and model (as served): requests, errors, requests that failed over, TTFT percentiles (a
    stream's first token; the first byte for the rest), tokens and cost."""
    sql, params = where.where(db)
    groups: dict[tuple[str, str], Group] = {}
    rows: Iterable[sqlite3.Row] = db.execute(
        "SELECT coalesce(node, '-') AS n, coalesce(model_served, model, '-') AS m, count(*) AS requests, "
        "sum(status >= 400 OR error IS NOT NULL) AS errors, sum(failovers > 0) AS failovers, "
        "total(tokens_in) AS tin, total(tokens_out) AS tout, total(cost_usd) AS cost, count(cost_usd) AS priced, "
        "sum(cost_usd IS NULL AND (tokens_in IS NOT NULL OR tokens_out IS NOT NULL)) AS unpriced "
        f"FROM requests{sql} GROUP BY n, m ORDER BY cost DESC, requests DESC",
        params,
    )
    for row in rows:
        groups[row["n"], row["m"]] = Group(
            row["n"], row["m"], row["requests"], row["errors"] or 0, row["failovers"] or 0, int(row["tin"]),
            int(row["tout"]), round(row["cost"] or 0.0, 9), row["priced"], row["unpriced"] or 0, [],
        )  # fmt: skip
    for n, m, ttft in db.execute(
        "SELECT coalesce(node, '-'), coalesce(model_served, model, '-'), coalesce(ttft_ms, ttfb_ms) "
        f"FROM requests{sql}" + (" AND" if sql else " WHERE") + " coalesce(ttft_ms, ttfb_ms) IS NOT NULL",
        params,
    ):
        group = groups.get((n, m))
        if group is not None and group.ttft is not None:
            group.ttft.append(ttft)
    return list(groups.values())
