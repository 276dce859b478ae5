"""Logging set-up: one access line per request on stderr, as text or JSON."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from typing import Any


def _ms(value: float | None) -> str:
    return "-" if value is None else str(value)


def _fields(record: dict[str, Any]) -> str:
    failed = ",".join(f"{a['node']}:{a['reason']}" for a in record["failed"]) or "-"
    return (
        f"id={record['id']} {record['method']} {record['path']} model={record['model'] or '-'} "
        f"node={record['node'] or '-'} status={record['status']} attempts={record['attempts']} failed=[{failed}] "
        f"stream={'yes' if record['stream'] else 'no'} ttfb_ms={_ms(record['ttfb_ms'])} "
        f"ttft_ms={_ms(record['ttft_ms'])} total_ms={_ms(record['total_ms'])}"
        + (f" tokens={record['tokens_in']}/{record['tokens_out']}" if record["tokens_in"] is not None else "")
        + (f' error="{record["error"]}"' if record["error"] else "")
    )


_stamp_second = -1
_stamp_text = ""


def _stamp(created: float) -> str:
    """Local time to the second, formatted once per second rather than once per line."""
    global _stamp_second, _stamp_text
    second = int(created)
    if second != _stamp_second:
        _stamp_second, _stamp_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(second))
    return _stamp_text


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = _stamp(record.created)
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


class BatchedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Flushes at most every 100 ms inside an event loop, not once per line.

    One access line per request would otherwise cost a write syscall per request
    on the hot path; warnings and errors still flush at once.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.pending = False

    def flush(self) -> None:
        pass  # StreamHandler.emit flushes after every record

    def flush_now(self) -> None:
        self.pending = False
        with contextlib.suppress(ValueError, OSError):
            super().flush()

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        if record.levelno > logging.INFO:
            self.flush_now()
        elif not self.pending:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush_now()
                return
            self.pending = True
            loop.call_later(0.1, self.flush_now)

    def close(self) -> None:
        self.flush_now()
        super().close()


def setup(level: str = "info", fmt: str = "text") -> None:
    # Our own buffered stream on fd 2: sys.stderr is line-buffered (a syscall per line).
    stream = open(sys.stderr.fileno(), "w", buffering=1 << 16, encoding="utf-8", closefd=False)  # noqa: SIM115
    handler = BatchedStreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    # The logging docs' own optimisations: we never print caller, thread or process.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.logAsyncioTasks = False  # type: ignore[attr-defined]  # Python 3.12+
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own start-up lines describe its sockets, not our addresses.
    logging.getLogger("uvicorn.error").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("aiohttp").setLevel(max(logging.WARNING, root.level))
