"""The control API client shared by the CLI, the demo and the monitor.

httpx over the Unix socket: the right tool off the hot path. This module and
`api.py` are all of the sidecar that the `tui` package may use.
"""

from __future__ import annotations

import asyncio
import json
import os
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import httpx

from .config import ConfigError
from .discovery import control_socket_path, discover
from .shapes import FailoverJSON, ManualJSON, ReloadJSON, StatusJSON


class NotRunning(Exception):
    """No sidecar answers on the control socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(f"no llm-sidecar is running on control socket {path}")


class ControlError(Exception):
    """The sidecar refused (e.g. 409 on a failover with no backup); carries its message."""

    def __init__(self, status: int, payload: dict[str, Any]) -> None:
        self.status = status
        self.payload = payload
        error = payload.get("error") or {}
        super().__init__(error.get("message") or f"control API answered {status}")


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
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return control_socket_path(None)
    server = data.get("server")
    configured = server.get("control_socket") if isinstance(server, dict) else None
    if isinstance(configured, str) and configured:
        return Path(os.path.expanduser(configured))
    return control_socket_path(None)


def _check(response: httpx.Response) -> Any:
    try:
        payload = response.json()
    except ValueError:
        payload = {"error": {"message": response.text[:200]}}
    if response.status_code >= 400:
        raise ControlError(response.status_code, payload)
    return payload


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

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            return _check(self.http.request(method, path, json=body))
        except (httpx.ConnectError, httpx.RemoteProtocolError, FileNotFoundError):
            raise NotRunning(self.path) from None

    def status(self) -> StatusJSON:
        return cast(StatusJSON, self.request("GET", "/v1/status"))

    def node(self, name: str, manual: str) -> ManualJSON:
        return cast(ManualJSON, self.request("POST", f"/v1/nodes/{name}/{manual}"))

    def failover(self, node: str | None = None) -> FailoverJSON:
        return cast(FailoverJSON, self.request("POST", "/v1/failover", None if node is None else {"node": node}))

    def reload(self) -> ReloadJSON:
        return cast(ReloadJSON, self.request("POST", "/v1/reload"))


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

    async def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            return _check(await self.http.request(method, path, json=body))
        except (httpx.ConnectError, httpx.RemoteProtocolError, FileNotFoundError):
            raise NotRunning(self.path) from None

    async def status(self) -> StatusJSON:
        return cast(StatusJSON, await self.request("GET", "/v1/status"))

    async def node(self, name: str, manual: str) -> ManualJSON:
        return cast(ManualJSON, await self.request("POST", f"/v1/nodes/{name}/{manual}"))

    async def failover(self, node: str | None = None) -> FailoverJSON:
        return cast(FailoverJSON, await self.request("POST", "/v1/failover", None if node is None else {"node": node}))

    async def reload(self) -> ReloadJSON:
        return cast(ReloadJSON, await self.request("POST", "/v1/reload"))

    async def events(self, replay: bool = True, stop: asyncio.Event | None = None) -> AsyncIterator[dict[str, Any]]:
        """The event stream (replayed history first), until `stop` is set or the sidecar goes."""
        params = {"replay": "1" if replay else "0"}
        try:
            async with self.http.stream("GET", "/v1/events", params=params, timeout=None) as response:
                lines = response.aiter_lines()
                while stop is None or not stop.is_set():
                    line = await _next_or_stop(lines, stop)
                    if line is None:
                        return
                    if line:
                        yield json.loads(line)
        except (httpx.ConnectError, FileNotFoundError):
            raise NotRunning(self.path) from None
        except (httpx.RemoteProtocolError, httpx.ReadError):
            return


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
