"""The control API client shared by the CLI, the demo and the monitor.

httpx over the Unix socket: the right tool off the hot path. This module and
`observe/` are all of the sidecar that the `tui` package may use.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import socket
import stat
import time
import tomllib
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, cast, get_args, get_origin, get_type_hints, is_typeddict
from urllib.parse import quote, urlsplit

import httpx

from sidecar.config.discovery import control_socket_path, discover
from sidecar.config.load import read_text
from sidecar.config.problems import MAX_ERRORS, ConfigError, ConfigProblem, one_line
from sidecar.observe.shapes import FailoverJSON, ListenerJSON, ManualJSON, ReloadJSON, RequestJSON, StatusJSON

T = TypeVar("T")


class NotRunning(Exception):
    """No sidecar answers on the control socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(f"no llm-sidecar is running on control socket {path}")


class ControlError(Exception):
    """The sidecar refused (e.g. 409 on a failover with no backup); carries its message."""

    def __init__(self, status: int, payload: Any) -> None:
        self.status = status
        self.payload: dict[str, Any] = payload if isinstance(payload, dict) else {}
        error = self.payload.get("error")
        message = error.get("message") if isinstance(error, dict) else None
        text = message if isinstance(message, str) and message else f"control API answered {status}"
        super().__init__(one_line(text))
        # A refused reload lists every problem of the file: one line each (bounded), else the message.
        self.lines = [one_line(text)]
        problems = error.get("errors") if isinstance(error, dict) else None
        if isinstance(error, dict) and isinstance(problems, list) and len(problems) > 1:
            lines = [line for problem in problems[:MAX_ERRORS] if (line := _problem_line(problem))]
            if len(lines) == len(problems[:MAX_ERRORS]):
                self.lines = lines
                more = error.get("more")
                if isinstance(more, int) and not isinstance(more, bool) and more > 0:
                    self.lines.append(f"... and {more} more errors")


def _problem_line(problem: Any) -> str | None:
    if not isinstance(problem, dict) or not all(isinstance(problem.get(k), str) for k in ("file", "key", "message")):
        return None
    return ConfigProblem(problem["file"], problem["key"], problem["message"]).line()


class BadReply(ControlError):
    """What answered on the socket is not the control API (another program, or a bug): said in one line."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(0, {"error": {"message": f"control socket {path}: {problem}"}})


class UnsafeSocket(ControlError):
    """The socket is not one this user's sidecar made, so its answers cannot be trusted."""

    def __init__(self, message: str) -> None:
        super().__init__(0, {"error": {"message": message}})


def verify_socket(path: Path) -> None:
    """Talk only to a socket owned by this user: whoever owns the one at `path` reads our
    commands and chooses the answers (the sidecar makes its own directory safe, see socket.py)."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise NotRunning(path) from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise UnsafeSocket(f"cannot use control socket {path}: {exc}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise UnsafeSocket(f"{path} is not a socket; check --control-socket or [server].control_socket")
    if st.st_uid != os.getuid():
        raise UnsafeSocket(
            f"control socket {path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}); refusing to use it"
        )


CONTROL_SOCKET_LINE = re.compile(r'^[ \t]*control_socket[ \t]*=[ \t]*"([^"\\\n]+)"[ \t]*(?:#.*)?$', re.M)


def find_socket(override: str | None = None, config_path: str | None = None) -> Path:
    """The socket `run` would use: --control-socket, else the config's, else the default.

    Only `[server].control_socket` is read, leniently: a CLI in another terminal
    needs neither the keys in its environment nor a config that validates.
    """
    if override:
        return Path(override)
    try:
        path = discover(config_path)
    except ConfigError:
        return control_socket_path(None)
    try:
        text = read_text(path)
    except ConfigError:
        return control_socket_path(None)
    try:
        data = tomllib.loads(text)
    except (ValueError, RecursionError):  # what config.load turns into ConfigError
        # A file broken elsewhere (the edit `reload` should report) still names its socket.
        found = CONTROL_SOCKET_LINE.search(text)
        data = {"server": {"control_socket": found.group(1)}} if found else {}
    server = data.get("server")
    configured = server.get("control_socket") if isinstance(server, dict) else None
    if isinstance(configured, str) and configured:
        return Path(os.path.expanduser(configured))
    return control_socket_path(None)


def _check(path: Path, response: httpx.Response, shape: type[T]) -> T:
    """The answer, if it is JSON of `shape`; else ControlError (the sidecar refused) or BadReply."""
    try:
        payload = json.loads(response.content)
    except (ValueError, RecursionError):
        payload = None
    if response.status_code >= 400:
        if payload is None:
            payload = {"error": {"message": f"control API answered {response.status_code}: {response.text[:200]}"}}
        raise ControlError(response.status_code, payload)
    asked = response.request.url.raw_path.decode()
    if payload is None:
        raise BadReply(path, f"the answer to {asked} is not JSON")
    if problem := _mismatch(payload, shape, "answer"):
        raise BadReply(path, f"malformed answer to {asked}: {problem}")
    return cast(T, payload)


@functools.cache
def _fields(shape: type) -> dict[str, Any]:
    return get_type_hints(shape)


def _mismatch(value: Any, hint: Any, where: str) -> str | None:
    """Why `value` (parsed JSON) is not of type `hint` (a shape from observe/shapes.py), or None."""
    origin = get_origin(hint)
    if origin is Literal:
        return None if value in get_args(hint) else f"{where} is not one of {get_args(hint)}"
    if origin in (Union, types.UnionType):
        if any(_mismatch(value, option, where) is None for option in get_args(hint)):
            return None
        return f"{where} has the wrong type"
    if origin is dict:
        return None if isinstance(value, dict) else f"{where} is not an object"
    if origin is list:
        if not isinstance(value, list):
            return f"{where} is not a list"
        return next((p for i, v in enumerate(value) if (p := _mismatch(v, get_args(hint)[0], f"{where}[{i}]"))), None)
    if is_typeddict(hint):
        if not isinstance(value, dict):
            return f"{where} is not an object"
        for key, sub in _fields(hint).items():
            if key not in value:
                if key in hint.__required_keys__:
                    return f"{where}.{key} is missing"
            elif problem := _mismatch(value[key], sub, f"{where}.{key}"):
                return problem
        return None
    if hint is type(None):
        return None if value is None else f"{where} is not null"
    if hint is float:  # JSON has one number type: 1.0 may arrive as 1
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, hint)
    return None if ok else f"{where} is not {getattr(hint, '__name__', hint)}"


def _failed(path: Path, exc: Exception) -> ControlError | NotRunning:
    """The one-line error for a request that got no HTTP answer."""
    if isinstance(exc, httpx.TimeoutException):
        return BadReply(path, "no answer in time")
    if isinstance(exc, httpx.ConnectError | httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError | OSError):
        return NotRunning(path)  # gone, or going: the sidecar closes its connections when it stops
    return BadReply(path, f"no valid HTTP answer ({type(exc).__name__})")


def _node_path(name: str, manual: str) -> str:
    return f"/v1/nodes/{quote(name, safe='')}/{manual}"  # a name with "/" or "?" must stay one path segment


LISTENER_TIMEOUT = 2.0  # seconds for the proxy's listener to answer /healthz (liveness: status)
STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3}) ")
WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def probe_listener(listen: str, timeout: float = LISTENER_TIMEOUT) -> ListenerJSON:
    """GET /healthz on the proxy's listener (`listen` as the status JSON has it, http://host:port/v1).

    The control socket is served by the same loop, but not by the same accept path: a listener that has
    stopped taking connections leaves the control API answering. One deadline for the whole exchange,
    a raw socket (no proxy from the environment), and no key (/healthz needs none)."""
    url = urlsplit(listen)
    host = url.hostname or "127.0.0.1"
    host = WILDCARDS.get(host, host)
    port = url.port or 80
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    deadline = time.monotonic() + timeout
    head = b""
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: %b\r\nConnection: close\r\n\r\n" % address.encode())
            while b"\r\n" not in head and (left := deadline - time.monotonic()) > 0:
                conn.settimeout(left)
                chunk = conn.recv(1024)
                if not chunk:
                    break
                head += chunk
    except OSError:  # refused, reset, or the deadline passed (TimeoutError)
        pass
    found = STATUS_LINE.match(head)
    status = int(found.group(1)) if found else None
    return {"address": address, "answering": status is not None, "healthz": status}


class ControlClient:
    """Blocking client, for one-shot CLI commands."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.http = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(path)), base_url="http://llm-sidecar", timeout=timeout
        )

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def request(self, method: str, path: str, shape: type[T], body: dict[str, Any] | None = None) -> T:
        verify_socket(self.path)
        try:
            response = self.http.request(method, path, json=body)
        except (httpx.HTTPError, OSError) as exc:
            raise _failed(self.path, exc) from None
        return _check(self.path, response, shape)

    def status(self) -> StatusJSON:
        return self.request("GET", "/v1/status", StatusJSON)

    def node(self, name: str, manual: str, force: bool = False) -> ManualJSON:
        return self.request("POST", _node_path(name, manual), ManualJSON, {"force": True} if force else None)

    def failover(self, node: str | None = None) -> FailoverJSON:
        return self.request("POST", "/v1/failover", FailoverJSON, None if node is None else {"node": node})

    def reload(self) -> ReloadJSON:
        return self.request("POST", "/v1/reload", ReloadJSON)


class AsyncControlClient:
    """Async client, for the monitor and the demo."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.http = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(path)), base_url="http://llm-sidecar", timeout=timeout
        )

    async def __aenter__(self) -> AsyncControlClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def request(self, method: str, path: str, shape: type[T], body: dict[str, Any] | None = None) -> T:
        verify_socket(self.path)
        try:
            response = await self.http.request(method, path, json=body)
        except (httpx.HTTPError, OSError) as exc:
            raise _failed(self.path, exc) from None
        return _check(self.path, response, shape)

    async def status(self) -> StatusJSON:
        return await self.request("GET", "/v1/status", StatusJSON)

    async def node(self, name: str, manual: str, force: bool = False) -> ManualJSON:
        return await self.request("POST", _node_path(name, manual), ManualJSON, {"force": True} if force else None)

    async def failover(self, node: str | None = None) -> FailoverJSON:
        return await self.request("POST", "/v1/failover", FailoverJSON, None if node is None else {"node": node})

    async def reload(self) -> ReloadJSON:
        return await self.request("POST", "/v1/reload", ReloadJSON)

    async def request_detail(self, rid: str) -> RequestJSON:
        """One finished request in detail (its attempts, waits, reasons, timings, tokens, cost)."""
        return await self.request("GET", f"/v1/requests/{quote(rid, safe='')}", RequestJSON)

    async def events(self, replay: bool = True, stop: asyncio.Event | None = None) -> AsyncIterator[dict[str, Any]]:
        """The event stream (replayed history first), until `stop` is set or the sidecar goes."""
        verify_socket(self.path)
        params = {"replay": "1" if replay else "0"}
        try:
            async with self.http.stream("GET", "/v1/events", params=params, timeout=None) as response:
                lines = response.aiter_lines()
                while stop is None or not stop.is_set():
                    line = await _next_or_stop(lines, stop)
                    if line is None:
                        return
                    if line:
                        yield _event(self.path, line)
        except (httpx.ConnectError, FileNotFoundError):
            raise NotRunning(self.path) from None
        except (httpx.RemoteProtocolError, httpx.ReadError):
            return


def _event(path: Path, line: str) -> dict[str, Any]:
    try:
        event = json.loads(line)
    except (ValueError, RecursionError):
        event = None
    if not isinstance(event, dict):
        raise BadReply(path, "an event line is not a JSON object")
    return event


async def _next_or_stop(lines: AsyncIterator[str], stop: asyncio.Event | None) -> str | None:
    if stop is None:
        return await anext(lines, None)
    nxt = asyncio.ensure_future(anext(lines, None))
    halt = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({nxt, halt}, return_when=asyncio.FIRST_COMPLETED)
    halt.cancel()
    if nxt in done:
        return nxt.result()
    nxt.cancel()
    return None
