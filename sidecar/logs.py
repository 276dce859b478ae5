"""Logging set-up: one access line per request on stderr, as text or JSON.

Both stay one line per record whatever a client or a node put in a field: the text
format quotes and escapes untrusted values, the JSON one is ASCII-only JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import sys
import time
from typing import Any


def _ms(value: float | None) -> str:
    return "-" if value is None else str(value)


# Untrusted text (the client's path and model, a node's answer in a reason) must not forge a line,
# a field or a terminal escape in the text log. A value made only of these goes as it is:
_BARE = re.compile(r"[!#-\[\]-~]+")  # printable ASCII without blanks, quotes or backslashes
_INNER = re.compile(r"[ !#-Z^-~]*")  # inside [...] or "...": blanks too, no quotes, brackets, backslashes
_DEL = str.maketrans({"\x7f": "\\u007f"})  # json.dumps leaves DEL as it is
_DEL_AND_BRACKETS = str.maketrans({"\x7f": "\\u007f", "[": "\\u005b", "]": "\\u005d"})


def _escaped(text: str, table: dict[int, str] = _DEL) -> str:
    """JSON string escapes (ASCII only: control characters, C1, U+2028, lone surrogates), no quotes."""
    return json.dumps(text)[1:-1].translate(table)


def _value(text: str) -> str:
    """A field value: bare when it is plainly safe, else quoted with escapes (logfmt's convention)."""
    return text if _BARE.fullmatch(text) else f'"{_escaped(text)}"'


def _inner(text: str) -> str:
    """Text inside the failed=[...] list or the quoted error: escaped only when it needs to be."""
    return text if _INNER.fullmatch(text) else _escaped(text, _DEL_AND_BRACKETS)


def _attempt(attempt: dict[str, Any]) -> str:
    """One failed attempt: `node:reason`, and the wait that followed it when there was one."""
    text = f"{_inner(str(attempt['node']))}:{_inner(str(attempt['reason']))}"
    wait = attempt.get("wait_ms")
    return text if wait is None else f"{text}(wait={wait}ms)"


def _fields(record: dict[str, Any]) -> str:
    failed = ",".join(_attempt(a) for a in record["failed"]) or "-"
    continued = ",".join(
        f"{_inner(str(c['from']))}>{_inner(str(c['to']))}:{_inner(str(c['reason']))}"
        for c in record.get("continued", ())
    )
    model = record["model"]
    node = record["node"]
    return (
        f"id={_value(str(record['id']))} {_value(str(record['method']))} {_value(str(record['path']))} "
        f"model={_value(model) if model else '-'} node={_value(node) if node else '-'} "
        f"status={record['status']} attempts={record['attempts']} failed=[{failed}] "
        + (f"continued=[{continued}] " if continued else "")
        + f"stream={'yes' if record['stream'] else 'no'} ttfb_ms={_ms(record['ttfb_ms'])} "
        f"ttft_ms={_ms(record['ttft_ms'])} total_ms={_ms(record['total_ms'])}"
        + (f" tokens={record['tokens_in']}/{record['tokens_out']}" if record["tokens_in"] is not None else "")
        + (f" cached={record['tokens_cached']}" if record.get("tokens_cached") else "")
        + (f' error="{_inner(str(record["error"]))}"' if record["error"] else "")
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
    logging.getLogger("aiohttp").setLevel(max(logging.WARNING, root.level))
