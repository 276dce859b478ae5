"""Logging set-up: one access line per request on stderr, as text or JSON."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any


def _fields(record: dict[str, Any]) -> str:
    failed = ",".join(f"{a['node']}:{a['reason']}" for a in record["failed"]) or "-"
    return (
        f"id={record['id']} {record['method']} {record['path']} model={record['model'] or '-'} "
        f"node={record['node'] or '-'} status={record['status']} attempts={record['attempts']} failed=[{failed}] "
        f"stream={'yes' if record['stream'] else 'no'} ttfb_ms={record['ttfb_ms']} ttft_ms={record['ttft_ms']} "
        f"total_ms={record['total_ms']}"
        + (f" tokens={record['tokens_in']}/{record['tokens_out']}" if record["tokens_in"] is not None else "")
        + (f' error="{record["error"]}"' if record["error"] else "")
    )


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        access = getattr(record, "access", None)
        message = _fields(access) if access is not None else record.getMessage()
        line = f"{stamp} {record.levelname:<7} {message}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {"time": round(record.created, 3), "level": record.levelname.lower()}
        access = getattr(record, "access", None)
        if access is not None:
            payload.update(access)
            payload["event"] = "request"
        else:
            payload["message"] = record.getMessage()
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def setup(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own start-up lines describe its sockets, not our addresses.
    logging.getLogger("uvicorn.error").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("aiohttp").setLevel(max(logging.WARNING, root.level))
