"""The `[server]` table: where the proxy and the control socket listen, the client's key, limits, metrics."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping

from sidecar.config.values import bad_char, secret

from .schema import (
    BYTES_MAX,
    DEFAULT_LISTEN,
    UNIX_PATH_MAX,
    ServerConfig,
)
from .table import Table, show


def _parse_listen(table: Table, raw: str) -> tuple[str, int]:
    # ASCII only: a host the resolver cannot encode would fail at bind with no clear error.
    match = re.fullmatch(r"(?:\[([0-9A-Za-z:.%]+)\]|([A-Za-z0-9._-]+)):([0-9]{1,5})", raw)
    if not match or not 0 < int(match.group(3)) < 65536:
        table.error("listen", f'expected "host:port" (e.g. "{DEFAULT_LISTEN}"), got {show(raw)}')
        return ServerConfig.host, ServerConfig.port
    return match.group(1) or match.group(2), int(match.group(3))


def _metrics_path(table: Table) -> str:
    path: str = table.get("metrics_path", str, ServerConfig.metrics_path)
    if path and (not path.startswith("/") or path.startswith("/v1/") or path == "/healthz" or bad_char(path)):
        table.error(
            "metrics_path", f'expected "" (off) or a path like "/metrics" outside /v1/ and /healthz, got {show(path)}'
        )
        return ServerConfig.metrics_path
    return path


def _control_socket_problem(raw: str) -> str | None:
    if not raw.isprintable():
        return f"must not contain control characters (NUL, newline, ...), got {show(raw)}"
    path = os.path.expanduser(raw)
    if not os.path.isabs(path):
        return f'must be an absolute path (or start with "~/"), got {show(raw)}'
    if path.endswith("/"):
        return f"must name a socket file, not a directory, got {show(raw)}"
    size = len(path.encode("utf-8", "surrogateescape"))
    if size > UNIX_PATH_MAX:
        return f"is {size} bytes long; a Unix socket path may have at most {UNIX_PATH_MAX}"
    return None


def _control_socket(table: Table) -> str:
    """Checked here so `check` catches it and `run` creates nothing before refusing it."""
    raw: str = table.get("control_socket", str, "")
    if raw and (problem := _control_socket_problem(raw)):
        table.error("control_socket", problem)
        return ""
    return raw


def loopback(host: str) -> bool:
    """Whether only this machine reaches `host`: a loopback address or `localhost`. Any other name may
    resolve to an address others reach, so it counts as beyond loopback."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.partition("%")[0]).is_loopback
    except ValueError:
        return False


def _remote_without_key(t: Table, server: ServerConfig) -> None:
    """Listening beyond loopback with no client key lets anyone who reaches the port spend the nodes' keys:
    refused unless the file says it means it (a firewall or a NetworkPolicy closes the port)."""
    if loopback(server.host) or server.api_key is not None or server.allow_remote_without_key:
        return
    if t.ok("listen", "api_key", "allow_remote_without_key"):
        t.error(
            "listen",
            f"{server.listen} is reachable from other machines and no api_key is set: anyone who reaches the port "
            'would spend your providers\' keys. Set api_key = "${SIDECAR_CLIENT_KEY}" (clients then send that key), '
            "or allow_remote_without_key = true if a firewall or a NetworkPolicy closes the port",
        )


def server_config(t: Table, env: Mapping[str, str], env_file: str = "") -> ServerConfig:
    host, port = _parse_listen(t, t.get("listen", str, DEFAULT_LISTEN))
    client_key, client_key_env = secret(t, "api_key", env)
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
        env_file=env_file,
        allow_remote_without_key=t.get("allow_remote_without_key", bool, ServerConfig.allow_remote_without_key),
    )
    _remote_without_key(t, server)
    t.done()  # env_file was read first, for the keys (load.py)
    return server
