"""Load and validate `llm-sidecar.toml` into frozen dataclasses.

Validation is strict and every error names the file, the key path and what is
wrong, because a typo in a failover config is only discovered during an outage;
every error of a file is reported at once, in file order (bounded).
Field names follow Apache APISIX's upstream object.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import stat
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from .dialect import APIS_SPOKEN, Api

CONFIG_ENV = "LLM_SIDECAR_CONFIG"
CONFIG_NAME = "llm-sidecar.toml"
DEFAULT_LISTEN = "127.0.0.1:8787"
# 529: Anthropic's overloaded_error.
DEFAULT_RETRY_STATUSES = (401, 402, 403, 429, 500, 502, 503, 504, 529)
# How a node continues a partial answer (README lists providers): "prefill", a trailing assistant
# message; "prefix" / "partial", the same marked `"prefix": true` / `"partial": true`;
# "continue_final_message", the same with vLLM's `continue_final_message` request fields.
CONTINUATIONS = ("none", "prefill", "prefix", "partial", "continue_final_message")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_PLAIN_KEY = re.compile(r"[^\s.\[\]\"\\]+")
# Bounds keep every value printable (Python refuses str() of ints past 4300 digits) and the
# arithmetic on them sane; they are far past any useful setting.
SECONDS_MAX = 1_000_000.0
COUNT_MAX = 1_000_000
BYTES_MAX = 1 << 32
MAX_FILE_BYTES = 1 << 20
# Problems reported at once (the rest are counted), and kept while reading before they are put in file
# order: a hostile file may hold thousands, and the first MAX_ERRORS in file order are wanted.
MAX_ERRORS = 50
_MAX_KEPT = 1000
# sun_path is 108 bytes on Linux (104 on the BSDs and macOS), the terminating NUL included.
UNIX_PATH_MAX = 103 if sys.platform == "darwin" or "bsd" in sys.platform else 107


def one_line(text: str) -> str:
    """`text` with newlines and other control characters escaped: errors are printed one per line,
    and a config value must not be able to forge log lines or drive the terminal."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


class ConfigProblem(NamedTuple):
    """One config problem: the file, the key path ("" for the whole file) and what is wrong."""

    file: str
    key: str
    message: str

    def line(self) -> str:
        where = f"{self.file}: {self.key}: " if self.key else f"{self.file}: "
        return one_line(where + self.message)


class ConfigError(Exception):
    """Config problems, each located by file and key path: every one found in the file at once, in file
    order, the first MAX_ERRORS of them (`hidden` counts the rest). `file`, `key` and `message` are the
    first one's; str() is one line per problem."""

    def __init__(
        self, file: str, key: str, message: str, *, more: Sequence[ConfigProblem] = (), hidden: int = 0
    ) -> None:
        self.file = file
        self.key = key
        self.message = message
        self.errors: list[ConfigProblem] = [ConfigProblem(file, key, message), *more]
        self.hidden = hidden
        super().__init__("\n".join(self.lines()))

    @classmethod
    def of(cls, problems: Sequence[ConfigProblem], total: int = 0) -> ConfigError:
        """The error for `problems` (at least one), of `total` found (default: as many), bounded."""
        shown = problems[:MAX_ERRORS]
        return cls(*shown[0], more=shown[1:], hidden=max(total, len(problems)) - len(shown))

    @property
    def count(self) -> int:
        return len(self.errors) + self.hidden

    def lines(self) -> list[str]:
        """One line per problem, and a last one saying how many more there are past the bound."""
        lines = [problem.line() for problem in self.errors]
        if self.hidden:
            lines.append(one_line(f"{self.file}: ... and {_count(self.hidden, 'more error')}"))
        return lines

    def summary(self) -> str:
        """One line: the first problem, and how many more."""
        more = self.count - 1
        first = self.errors[0].line()
        return f"{first} (and {_count(more, 'more error')}; `llm-sidecar check` lists them all)" if more else first

    def to_dict(self) -> dict[str, Any]:
        """The first problem's file, key and message, and `errors`: all that are shown; `more`: how many not."""
        return {
            "file": self.file,
            "key": self.key,
            "message": self.message,
            "errors": [problem._asdict() for problem in self.errors],
            "more": self.hidden,
        }


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class Timeouts:
    connect: float = 5.0
    send: float = 30.0
    read: float = 120.0  # the longest silence between bytes
    # From sending a streamed request to its first real token (comments and role-only deltas do
    # not count): a silent node costs this, not `read`. 60 s covers a long prompt's prefill and
    # models that stream their reasoning; raise it (and read) for models that think in silence.
    first_token: float = 60.0


@dataclass(frozen=True)
class RetryPolicy:
    """How the sidecar retries (see README, "Retries"): it is the only retry owner for a request."""

    max_wait: float = 5.0  # the longest Retry-After waited out on the same node; longer → fail over
    same_node: int = 1  # same-node retries after a 5xx or a connection reset, before failing over
    backoff: float = 0.5  # the first backoff (s); doubles per retry, jittered
    max_backoff: float = 4.0
    attempts_per_node: int = 3  # attempts on one node for one request


@dataclass(frozen=True)
class ActiveCheck:
    http_path: str = "/v1/models"
    interval: float = 5.0
    timeout: float = 2.0
    healthy_successes: int = 1
    healthy_http_statuses: frozenset[int] = frozenset({200})
    unhealthy_http_failures: int = 3
    unhealthy_tcp_failures: int = 2
    unhealthy_timeouts: int = 2


@dataclass(frozen=True)
class PassiveCheck:
    healthy_successes: int = 1
    unhealthy_http_statuses: frozenset[int] = frozenset(DEFAULT_RETRY_STATUSES)
    unhealthy_http_failures: int = 3
    unhealthy_tcp_failures: int = 2
    unhealthy_timeouts: int = 2
    # Not in APISIX: without active checks an ejected node would never see traffic
    # again, so it gets a trial request after this cool-down (doubling, capped).
    base_ejection_time: float = 10.0
    max_ejection_time: float = 300.0


@dataclass(frozen=True)
class Checks:
    active: ActiveCheck | None = None
    passive: PassiveCheck | None = None

    @property
    def retry_statuses(self) -> frozenset[int]:
        """Statuses that make an attempt fail over, even with passive checks off."""
        return (self.passive or PassiveCheck()).unhealthy_http_statuses


@dataclass(frozen=True)
class Node:
    name: str
    url: str
    weight: int = 1
    priority: int = 0
    api_key: str | None = field(default=None, repr=False, compare=False)
    api_key_env: str | None = None
    url_had_v1: bool = field(default=False, compare=False)  # the file's url ended in /v1 (dropped: see _parse_url)
    models: Mapping[str, str] = field(default_factory=dict)
    checks: Checks = field(default_factory=Checks)
    timeout: Timeouts = field(default_factory=Timeouts)  # the upstream's, with this node's overrides
    continuation: str = "none"  # how this node continues a broken stream: CONTINUATIONS
    api: Api = "openai"  # the request format it speaks (dialect.py): a request goes only to nodes of its own

    def serves(self, model: str) -> bool:
        """Whether requests for `model` may come here: no `models` table serves anything; a table serves
        its keys, and anything else only with a "*" entry."""
        return not self.models or model in self.models or "*" in self.models

    def rewrite_model(self, model: str) -> str:
        """Exact match, else the "*" entry, else the model unchanged."""
        return self.models.get(model) or self.models.get("*") or model


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8787
    control_socket: str = ""
    api_key: str | None = field(default=None, repr=False, compare=False)
    api_key_env: str | None = None
    max_body_bytes: int = 32 * 1024 * 1024
    # The server layer's limits against slow or hostile clients (see README, "Security model").
    max_header_bytes: int = 64 * 1024  # request line and headers; larger gets 431
    header_timeout: float = 10.0  # seconds to receive a request's line and headers
    body_timeout: float = 60.0  # seconds to receive a request's whole body
    keepalive_timeout: float = 30.0  # seconds an idle client connection stays open
    max_connections: int = 4096  # open client connections (also bounded by the open-file limit)
    max_event_subscribers: int = 64  # control API /v1/events readers at once; 503 past it
    metrics_path: str = "/metrics"  # Prometheus metrics on the proxy listener; "" = off (the control socket has them)
    watch: bool = True  # re-read the config file when it is saved

    @property
    def listen(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class UpstreamConfig:
    nodes: tuple[Node, ...]
    type: str = "roundrobin"
    retries: int | None = None  # a cap on retries per request; None: the retry policy's bounds only
    retry_timeout: float = 30.0  # seconds in which retries and waits may start; first tries always may
    timeout: Timeouts = field(default_factory=Timeouts)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # Seconds a conversation stays on the node that last served it (prompt-cache affinity), among the
    # equal nodes of one priority level; 0 = off. Providers keep a prompt cache about 5-10 minutes.
    affinity_ttl: float = 300.0
    # What the sidecar holds of an answer before sending it (a non-stream body is read whole so a
    # cut can still fail over); past it, 502 JSON and a failure of the node.
    max_response_bytes: int = 64 * 1024 * 1024
    # What it holds of all answers at once; past it a success is streamed as it arrives (a cut can no longer
    # fail over), an error answer refused with a 503. Two answers at the cap; with the ~45 MB the sidecar
    # needs itself it stays inside the README's Kubernetes limit (256Mi). In a file, at least
    # max_response_bytes (its default follows a larger one).
    max_held_bytes: int = 128 * 1024 * 1024


@dataclass(frozen=True)
class Config:
    server: ServerConfig
    upstream: UpstreamConfig
    path: str = "<memory>"


# --------------------------------------------------------------------------- reading


class _Problems:
    """Every problem found in one file. Reading goes on past a bad value (with its default, so later keys
    are still checked); `check` then raises them all at once, so no Config is ever made from a file
    with a problem."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.found: list[tuple[tuple[int, ...], int, ConfigProblem]] = []
        self.count = 0

    def add(self, order: tuple[int, ...], key: str, message: str) -> None:
        """`order`: where the key is in the file (its position in each table on the way), for sorting."""
        self.count += 1
        if len(self.found) < _MAX_KEPT:
            self.found.append((order, self.count, ConfigProblem(self.file, key, message)))

    def check(self) -> None:
        if self.count:
            self.found.sort(key=lambda found: found[:2])
            raise ConfigError.of([problem for _, _, problem in self.found], self.count)


class _Table:
    """A TOML table being read: type-checks values and rejects unknown keys. A bad value is recorded
    (`error`) and read as its default; its name goes into `bad`, so checks across keys skip it."""

    def __init__(self, data: Mapping[str, Any], path: str, problems: _Problems, order: tuple[int, ...] = ()) -> None:
        self.data = data
        self.path = path
        self.problems = problems
        self.order = order
        self.seen: set[str] = set()
        self.bad: set[str] = set()
        self.index: dict[str, int] | None = None

    def key(self, name: str) -> str:
        name = _key_part(name)
        return f"{self.path}.{name}" if self.path else name

    def position(self, name: str) -> tuple[int, ...]:
        """Where `name` is in the file; a key that is missing sorts at the top of its table."""
        if self.index is None:
            self.index = {k: i for i, k in enumerate(self.data)}
        return (*self.order, self.index.get(name, -1))

    def error(self, name: str, message: str, *, item: int | None = None, key: str | None = None) -> None:
        """Record a problem with `name` (its `item`-th element, at `key`, when given)."""
        self.bad.add(name)
        order = self.position(name) if item is None else (*self.position(name), item)
        self.problems.add(order, self.key(name) if key is None else key, message)

    def ok(self, *names: str) -> bool:
        """None of `names` was bad (checks across keys use only good values)."""
        return not self.bad.intersection(names)

    def get(self, name: str, kinds: type | tuple[type, ...], default: Any) -> Any:
        self.seen.add(name)
        if name not in self.data:
            return default
        value = self.data[name]
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        # bool is an int in Python, never in a config file.
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            names = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
            self.error(name, f"expected {names}, got {_describe(value)}")
            return default
        return value

    def number(self, name: str, default: float, *, minimum: float = 0.0, maximum: float = SECONDS_MAX) -> float:
        """Seconds: TOML allows inf and nan, which would pass every comparison or break every timer."""
        value: int | float = self.get(name, (int, float), default)
        if name in self.bad or name not in self.data:
            return float(default)
        if isinstance(value, float) and not math.isfinite(value):
            self.error(name, f"must be a finite number, got {value}")
        # Compared before float(): an int too large for a float is still compared exactly.
        elif value < minimum:
            self.error(name, f"must be >= {minimum:.10g}, got {_show(value)}")
        elif value > maximum:
            self.error(name, f"must be <= {maximum:.10g}, got {_show(value)}")
        return float(default) if name in self.bad else float(value)

    def integer(self, name: str, default: int, *, minimum: int = -COUNT_MAX, maximum: int = COUNT_MAX) -> int:
        value: int = self.get(name, int, default)
        if name in self.bad or name not in self.data:
            return default
        if value < minimum:
            self.error(name, f"must be >= {minimum}, got {_show(value)}")
        elif value > maximum:
            self.error(name, f"must be <= {maximum}, got {_show(value)}")
        return default if name in self.bad else value

    def statuses(self, name: str, default: frozenset[int]) -> frozenset[int]:
        value = self.get(name, list, None)
        if value is None:
            return default
        for i, code in enumerate(value):
            if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
                message = f"expected an HTTP status 100-599, got {_describe(code)}"
                self.error(name, message, item=i, key=f"{self.key(name)}[{i}]")
        return default if name in self.bad else frozenset(value)

    def table(self, name: str) -> _Table | None:
        value = self.get(name, dict, None)
        return None if value is None else _Table(value, self.key(name), self.problems, self.position(name))

    def table_or_empty(self, name: str) -> _Table:
        return self.table(name) or _Table({}, self.key(name), self.problems, self.position(name))

    def done(self, known: Iterable[str] = ()) -> None:
        """Every key not read (nor among `known`, read only when present) is unknown."""
        known = self.seen.union(known)
        for name in self.data:
            if name not in known:
                self.error(name, "unknown key" + self.suggestion(name, known))

    def suggestion(self, name: str, known: set[str]) -> str:
        """The closest known key of this table, as a hint (not for a long key, nor past the bound)."""
        if len(name) > 64 or self.problems.count > _MAX_KEPT:
            return ""
        close = difflib.get_close_matches(name, sorted(known), n=1)
        return f' (did you mean "{close[0]}"?)' if close else ""


_TYPE_NAMES = {
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "an array",
    dict: "a table",
    bool: "true/false",
}


def _describe(value: Any) -> str:
    return (
        f"{_TYPE_NAMES.get(type(value), type(value).__name__)} ({_show(value)})"
        if not isinstance(value, dict | list)
        else _TYPE_NAMES[type(value)]
    )


def _show(value: Any) -> str:
    """A value for an error message: short, and never str() of a huge int (which raises)."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _key_part(name: str) -> str:
    """A key as written in a key path: quoted (JSON escapes) when it would be ambiguous or unprintable."""
    return name if name.isprintable() and _PLAIN_KEY.fullmatch(name) else json.dumps(name)


def _secret(table: _Table, name: str, env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """Resolve a `${VAR}` key reference; keys never live in the file itself. The value is never echoed."""
    raw = table.get(name, str, None)
    if raw is None or raw == "":
        return None, None
    match = _ENV_REF.fullmatch(raw)
    if not match:
        table.error(
            name, 'must reference an environment variable, like "${OPENAI_API_KEY}"; keys are not stored in the file'
        )
        return None, None
    var = match.group(1)
    value = env.get(var)
    if value is None:
        table.error(name, f"environment variable {var} is not set")
    elif not value.strip():
        table.error(name, f"environment variable {var} is empty")
    # Sent in a header: a newline would inject headers, and non-ASCII fails every request.
    elif _bad_char(value.strip()):
        table.error(name, f"environment variable {var} holds a space, control or non-ASCII character")
    else:
        return value.strip(), var
    return None, None


def _parse_listen(table: _Table, raw: str) -> tuple[str, int]:
    # ASCII only: a host the resolver cannot encode would fail at bind with no clear error.
    match = re.fullmatch(r"(?:\[([0-9A-Za-z:.%]+)\]|([A-Za-z0-9._-]+)):([0-9]{1,5})", raw)
    if not match or not 0 < int(match.group(3)) < 65536:
        table.error("listen", f'expected "host:port" (e.g. "{DEFAULT_LISTEN}"), got {_show(raw)}')
        return ServerConfig.host, ServerConfig.port
    return match.group(1) or match.group(2), int(match.group(3))


def _bad_char(raw: str) -> str | None:
    """The first character that is not printable ASCII or is a space, described without echoing the rest
    (it may be secret). urlsplit silently drops tab, CR and LF; a non-ASCII host or key fails every request."""
    for i, ch in enumerate(raw):
        if not "\x21" <= ch <= "\x7e":
            return f"{ch!r} at position {i}"
    return None


def _url_problem(raw: str) -> str | None:
    """What is wrong with a node's url, or None."""
    if bad := _bad_char(raw):
        return f"must be printable ASCII without spaces (percent-encode the path, xn-- form for the host), found {bad}"
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        # Not echoed: the URL may carry credentials, and errors are printed.
        return f"is not a valid URL: {exc}"
    if parts.username or parts.password:
        return 'must not carry credentials (user:password@); use api_key = "${VAR}"'
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"expected an http:// or https:// URL, got {_show(raw)}"
    if parts.query or parts.fragment or "?" in raw or "#" in raw:  # even empty: paths are appended to the URL
        return f"must not carry a query or fragment, got {_show(raw)}"
    return None


def _parse_url(table: _Table, raw: str) -> str:
    if problem := _url_problem(raw):
        table.error("url", problem)
        return raw
    url = raw.rstrip("/")
    # Providers document their base URL with /v1 (and the openai SDK's base_url has it), but the sidecar
    # appends the client's whole path, /v1 included: kept, every request would go to /v1/v1/....
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _metrics_path(table: _Table) -> str:
    path: str = table.get("metrics_path", str, ServerConfig.metrics_path)
    if path and (not path.startswith("/") or path.startswith("/v1/") or path == "/healthz" or _bad_char(path)):
        table.error(
            "metrics_path", f'expected "" (off) or a path like "/metrics" outside /v1/ and /healthz, got {_show(path)}'
        )
        return ServerConfig.metrics_path
    return path


def _control_socket_problem(raw: str) -> str | None:
    if not raw.isprintable():
        return f"must not contain control characters (NUL, newline, ...), got {_show(raw)}"
    path = os.path.expanduser(raw)
    if not os.path.isabs(path):
        return f'must be an absolute path (or start with "~/"), got {_show(raw)}'
    if path.endswith("/"):
        return f"must name a socket file, not a directory, got {_show(raw)}"
    size = len(path.encode("utf-8", "surrogateescape"))
    if size > UNIX_PATH_MAX:
        return f"is {size} bytes long; a Unix socket path may have at most {UNIX_PATH_MAX}"
    return None


def _control_socket(table: _Table) -> str:
    """Checked here so `check` catches it and `run` creates nothing before refusing it."""
    raw: str = table.get("control_socket", str, "")
    if raw and (problem := _control_socket_problem(raw)):
        table.error("control_socket", problem)
        return ""
    return raw


def _active(t: _Table) -> ActiveCheck:
    d = ActiveCheck()
    path = t.get("http_path", str, d.http_path)
    if not path.startswith("/"):
        t.error("http_path", f'must start with "/", got {_show(path)}')
    elif bad := _bad_char(path):
        t.error("http_path", f"must be printable ASCII without spaces (percent-encode them), found {bad}")
    healthy = t.table_or_empty("healthy")
    unhealthy = t.table_or_empty("unhealthy")
    check = ActiveCheck(
        http_path=path,
        interval=t.number("interval", d.interval, minimum=0.05),
        timeout=t.number("timeout", d.timeout, minimum=0.01),
        healthy_successes=healthy.integer("successes", d.healthy_successes, minimum=1),
        healthy_http_statuses=healthy.statuses("http_statuses", d.healthy_http_statuses),
        unhealthy_http_failures=unhealthy.integer("http_failures", d.unhealthy_http_failures, minimum=1),
        unhealthy_tcp_failures=unhealthy.integer("tcp_failures", d.unhealthy_tcp_failures, minimum=1),
        unhealthy_timeouts=unhealthy.integer("timeouts", d.unhealthy_timeouts, minimum=1),
    )
    for part in (healthy, unhealthy, t):
        part.done()
    return check


def _passive(t: _Table) -> PassiveCheck:
    d = PassiveCheck()
    healthy = t.table_or_empty("healthy")
    unhealthy = t.table_or_empty("unhealthy")
    check = PassiveCheck(
        healthy_successes=healthy.integer("successes", d.healthy_successes, minimum=1),
        unhealthy_http_statuses=unhealthy.statuses("http_statuses", d.unhealthy_http_statuses),
        unhealthy_http_failures=unhealthy.integer("http_failures", d.unhealthy_http_failures, minimum=1),
        unhealthy_tcp_failures=unhealthy.integer("tcp_failures", d.unhealthy_tcp_failures, minimum=1),
        unhealthy_timeouts=unhealthy.integer("timeouts", d.unhealthy_timeouts, minimum=1),
        base_ejection_time=t.number("base_ejection_time", d.base_ejection_time, minimum=0.01),
        max_ejection_time=t.number("max_ejection_time", d.max_ejection_time, minimum=0.01),
    )
    if check.max_ejection_time < check.base_ejection_time and t.ok("max_ejection_time", "base_ejection_time"):
        t.error("max_ejection_time", "must be >= base_ejection_time")
    for part in (healthy, unhealthy, t):
        part.done()
    return check


def _checks(t: _Table | None, inherited: Checks) -> Checks:
    """The upstream's checks, with a node's own `active` / `passive` tables in their place; `active = false`
    turns a node's probe off (a provider with no GET /v1/models), `passive = false` its ejection."""
    if t is None:
        return inherited
    active = _check_table(t, "active")
    passive = _check_table(t, "passive")
    t.done()
    return Checks(
        active=inherited.active if active is True else _active(active) if active else None,
        passive=inherited.passive if passive is True else _passive(passive) if passive else None,
    )


def _check_table(t: _Table, name: str) -> _Table | bool:
    """A checks table; False when it is turned off; True when it is not given (inherited)."""
    value = t.get(name, (dict, bool), None)
    if value is None:
        return True
    if value is True:
        t.error(name, "expected a table, or false to turn these checks off")
        return True
    if value is False:
        return False
    return _Table(value, t.key(name), t.problems, t.position(name))


def _models(t: _Table) -> dict[str, str]:
    raw = t.get("models", dict, {})
    for i, (source, target) in enumerate(raw.items()):
        # Printed by `check` and the logs: no control characters in either name.
        if not isinstance(target, str) or not target or not target.isprintable() or not source.isprintable():
            message = f"expected a model name without control characters, got {_describe(target)}"
            t.error("models", message, item=i, key=f"{t.key('models')}.{_key_part(source)}")
    return {} if "models" in t.bad else dict(raw)


def _timeouts(t: _Table | None, inherited: Timeouts) -> Timeouts:
    if t is None:
        return inherited
    read = t.number("read", inherited.read, minimum=0.001)
    if "first_token" in t.data:
        first_token = t.number("first_token", inherited.first_token, minimum=0.001)
        if first_token > read and t.ok("first_token", "read"):
            t.error("first_token", f"must be <= read ({read:g}): read bounds every silence, the first too")
    else:
        first_token = min(inherited.first_token, read)
    timeouts = Timeouts(
        connect=t.number("connect", inherited.connect, minimum=0.001),
        send=t.number("send", inherited.send, minimum=0.001),
        read=read,
        first_token=first_token,
    )
    t.done(known=("first_token",))
    return timeouts


def _retry(t: _Table | None) -> RetryPolicy:
    d = RetryPolicy()
    if t is None:
        return d
    policy = RetryPolicy(
        max_wait=t.number("max_wait", d.max_wait),
        same_node=t.integer("same_node", d.same_node, minimum=0, maximum=10),
        backoff=t.number("backoff", d.backoff, minimum=0.001, maximum=60),
        max_backoff=t.number("max_backoff", d.max_backoff, minimum=0.001, maximum=600),
        attempts_per_node=t.integer("attempts_per_node", d.attempts_per_node, minimum=1, maximum=100),
    )
    if policy.max_backoff < policy.backoff and t.ok("max_backoff", "backoff"):
        t.error("max_backoff", "must be >= backoff")
    t.done()
    return policy


def _node_name(t: _Table, names: set[str]) -> str:
    """The node's name, once valid and new: from then on its key paths name it, `upstream.nodes[1] ("backup").weight`."""
    name = t.get("name", str, None)
    if "name" in t.bad:
        return ""
    if not name:
        t.error("name", "is required")
    elif not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        t.error("name", f"use letters, digits, '.', '_' or '-' (at most 64), got {_show(name)}")
    elif name in names:
        t.error("name", f"duplicate node name {name!r}")
    else:
        names.add(name)
        t.path = f'{t.path} ("{name}")'
        return str(name)
    return ""


def _node(t: _Table, checks: Checks, timeouts: Timeouts, env: Mapping[str, str], names: set[str]) -> Node:
    name = _node_name(t, names)
    url = t.get("url", str, None)
    if url is None and "url" not in t.bad:
        t.error("url", "is required")
    api_key, api_key_env = _secret(t, "api_key", env)
    node = Node(
        name=name,
        url=_parse_url(t, url) if url is not None else "",
        url_had_v1=url is not None and url.rstrip("/").endswith("/v1"),
        weight=t.integer("weight", 1, minimum=1),
        priority=t.integer("priority", 0),
        api_key=api_key,
        api_key_env=api_key_env,
        models=_models(t),
        checks=_checks(t.table("checks"), checks),
        timeout=_timeouts(t.table("timeout"), timeouts),
        continuation=_choice(t, "continuation", CONTINUATIONS),
        api="anthropic" if _choice(t, "api", APIS_SPOKEN) == "anthropic" else "openai",
    )
    t.done()
    return node


def _choice(t: _Table, name: str, choices: tuple[str, ...]) -> str:
    value: str = t.get(name, str, choices[0])
    if value not in choices:
        t.error(name, f"expected one of {', '.join(map(repr, choices))}, got {_show(value)}")
        return choices[0]
    return value


_NO_NODES = "no nodes configured: add at least one [[upstream.nodes]]"


def _server(t: _Table, env: Mapping[str, str]) -> ServerConfig:
    host, port = _parse_listen(t, t.get("listen", str, DEFAULT_LISTEN))
    client_key, client_key_env = _secret(t, "api_key", env)
    server = ServerConfig(
        host=host,
        port=port,
        control_socket=_control_socket(t),
        api_key=client_key,
        api_key_env=client_key_env,
        max_body_bytes=t.integer("max_body_bytes", ServerConfig.max_body_bytes, minimum=1, maximum=BYTES_MAX),
        max_header_bytes=t.integer("max_header_bytes", ServerConfig.max_header_bytes, minimum=1024, maximum=BYTES_MAX),
        header_timeout=t.number("header_timeout", ServerConfig.header_timeout, minimum=0.01),
        body_timeout=t.number("body_timeout", ServerConfig.body_timeout, minimum=0.01),
        keepalive_timeout=t.number("keepalive_timeout", ServerConfig.keepalive_timeout, minimum=0.01),
        max_connections=t.integer("max_connections", ServerConfig.max_connections, minimum=1),
        max_event_subscribers=t.integer("max_event_subscribers", ServerConfig.max_event_subscribers, minimum=1),
        metrics_path=_metrics_path(t),
        watch=t.get("watch", bool, ServerConfig.watch),
    )
    t.done()
    return server


def _upstream(up: _Table, env: Mapping[str, str]) -> UpstreamConfig:
    kind = up.get("type", str, "roundrobin")
    if kind != "roundrobin":
        up.error("type", f'only "roundrobin" (smooth weighted round-robin) is supported, got {_show(kind)}')
    timeouts = _timeouts(up.table_or_empty("timeout"), Timeouts())
    checks = _checks(up.table("checks"), Checks())

    raw_nodes = up.get("nodes", list, [])
    if not raw_nodes and up.ok("nodes"):
        up.error("nodes", _NO_NODES)
    nodes: list[Node] = []
    names: set[str] = set()
    for i, raw in enumerate(raw_nodes):
        key = f"{up.key('nodes')}[{i}]"
        if not isinstance(raw, dict):
            up.error("nodes", f"expected a table, got {_describe(raw)}", item=i, key=key)
            continue
        nodes.append(_node(_Table(raw, key, up.problems, (*up.position("nodes"), i)), checks, timeouts, env, names))

    max_response = up.integer("max_response_bytes", UpstreamConfig.max_response_bytes, minimum=1024, maximum=BYTES_MAX)
    # An old file that raised max_response_bytes past the default budget still loads: the budget follows it.
    held_default = max(UpstreamConfig.max_held_bytes, max_response)
    upstream = UpstreamConfig(
        nodes=tuple(nodes),
        type=kind,
        retries=up.integer("retries", -1, minimum=0) if "retries" in up.data else None,
        retry_timeout=up.number("retry_timeout", UpstreamConfig.retry_timeout),
        retry=_retry(up.table("retry")),
        affinity_ttl=up.number("affinity_ttl", UpstreamConfig.affinity_ttl),
        max_response_bytes=max_response,
        max_held_bytes=up.integer("max_held_bytes", held_default, minimum=1024, maximum=BYTES_MAX),
        timeout=timeouts,
    )
    if upstream.max_held_bytes < max_response and up.ok("max_held_bytes", "max_response_bytes"):
        up.error("max_held_bytes", "must be >= max_response_bytes: what all answers hold at once must fit one whole")
    up.done(known=("retries",))
    return upstream


def parse(data: Mapping[str, Any], file: str = "<memory>", env: Mapping[str, str] | None = None) -> Config:
    """Validate a parsed TOML document; raise one ConfigError naming every problem (in file order, bounded)."""
    env = os.environ if env is None else env
    problems = _Problems(file)
    root = _Table(data, "", problems)
    server = _server(root.table_or_empty("server"), env)
    up = root.table("upstream")
    upstream = None if up is None else _upstream(up, env)
    if up is None and root.ok("upstream"):
        root.error("upstream", _NO_NODES, key="upstream.nodes")
    root.done()
    problems.check()  # raises if anything at all was wrong: a Config is only made from a file without problems
    assert upstream is not None
    return Config(server=server, upstream=upstream, path=file)


def _dangling(path: str | Path) -> str:
    """Where a symlink that leads nowhere leads (a dotfiles link whose target moved), or nothing."""
    try:
        return f": a symlink to {os.readlink(path)}, which does not exist"
    except OSError:  # not a symlink
        return ""


def read_text(path: str | Path) -> str:
    """The file's text, refusing what is not a small regular file: `-c /dev/zero` or a FIFO
    must not make `check` read forever. Every way of failing is a ConfigError naming the file, and the
    descriptor is closed whatever happens (a reload that failed otherwise left one open each time)."""
    file = str(Path(path).absolute())
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: opening a FIFO would wait for a writer
    except FileNotFoundError:
        raise ConfigError(file, "", f"file not found{_dangling(path)}") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise ConfigError(file, "", f"cannot read: {exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):  # opened, as Linux lets a directory be, but open() of its descriptor raises
            raise ConfigError(file, "", "cannot read: a directory, not a file")
        if not stat.S_ISREG(mode):
            raise ConfigError(file, "", "cannot read: not a regular file")
        with open(fd, "rb", closefd=False) as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(file, "", f"cannot read: {exc}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(file, "", f"cannot read: larger than {MAX_FILE_BYTES // 1024} KiB, so not a config file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(file, "", f"cannot read: not UTF-8 ({exc})") from None


def load(path: str | Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file."""
    file = str(Path(path).absolute())
    text = read_text(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "", f"invalid TOML: {exc}") from None
    except ValueError as exc:
        # tomllib lets Python's int-to-str limit (4300 digits) through; drop its advice on raising the limit.
        raise ConfigError(file, "", f"invalid TOML: {str(exc).split(';')[0]}") from None
    except RecursionError:
        raise ConfigError(file, "", "invalid TOML: arrays or tables nested too deeply") from None
    return parse(data, file, env)
