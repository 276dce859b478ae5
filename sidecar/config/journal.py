"""The `[journal]` table: where the request journal is kept, how long, and whether it keeps bodies."""

from __future__ import annotations

import os

from .schema import BYTES_MAX, JournalConfig
from .table import Table, show

MIN_JOURNAL_BYTES = 1024 * 1024
MAX_RETENTION_DAYS = 36_500.0


def _path(t: Table) -> str:
    raw: str = t.get("path", str, "")
    if not raw:
        return ""
    if not raw.isprintable():
        t.error("path", f"must not contain control characters (NUL, newline, ...), got {show(raw)}")
    elif not os.path.isabs(os.path.expanduser(raw)):
        t.error("path", f'must be an absolute path (or start with "~/"), got {show(raw)}')
    elif raw.endswith("/"):
        t.error("path", f"must name a file, not a directory, got {show(raw)}")
    else:
        return raw
    return ""


def journal_config(t: Table) -> JournalConfig:
    d = JournalConfig()
    journal = JournalConfig(
        enabled=t.get("enabled", bool, d.enabled),
        path=_path(t),
        retention_days=t.number("retention_days", d.retention_days, minimum=0.001, maximum=MAX_RETENTION_DAYS),
        max_bytes=t.integer("max_bytes", d.max_bytes, minimum=MIN_JOURNAL_BYTES, maximum=BYTES_MAX),
        bodies=t.get("bodies", bool, d.bodies),
        max_body_bytes=t.integer("max_body_bytes", d.max_body_bytes, minimum=1024, maximum=BYTES_MAX),
    )
    t.done()
    return journal
