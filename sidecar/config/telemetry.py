"""The `[telemetry]` table, and where traces go once the standard OTEL_* variables are read too."""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from .schema import TelemetryConfig
from .table import Table
from .values import url_problem

TRACES_PATH = "/v1/traces"
# The OTLP exporter's own variables, most specific first (the traces one is a whole URL, the other a base).
ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
# What OpenTelemetry's GenAI instrumentations read to capture message content; these values turn it on.
CONTENT_VAR = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
CONTENT_ON = frozenset({"true", "span_only", "span_and_event"})
EXTRA = "pip install 'llm-sidecar[otel]'"


def telemetry_config(t: Table) -> TelemetryConfig:
    endpoint: str = t.get("endpoint", str, "")
    if endpoint and (problem := url_problem(endpoint)):
        t.error("endpoint", problem)
        endpoint = ""
    config = TelemetryConfig(
        enabled=t.get("enabled", bool, TelemetryConfig.enabled),
        endpoint=endpoint.rstrip("/"),
        content=t.get("content", bool, TelemetryConfig.content),
    )
    t.done()
    return config


@dataclass(frozen=True)
class Export:
    """Where traces go: the config file and the environment read together."""

    endpoint: str | None  # the whole traces URL; None: the exporter reads the OTEL_EXPORTER_OTLP_* variables itself
    shown: str  # where, for the log and `check` (no credentials, no query)
    content: bool  # prompts and completions are exported
    from_file: bool  # the config file named the endpoint (not only the environment)


def _flag(env: Mapping[str, str], name: str) -> str:
    return env.get(name, "").strip().lower()


def _shown(url: str) -> str:
    """A URL without what could be a secret (user:password@, a query)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(an endpoint that is not a valid URL)"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def export_of(config: TelemetryConfig, env: Mapping[str, str]) -> Export | None:
    """None when traces are off: `enabled = false`, OTEL_SDK_DISABLED=true, OTEL_TRACES_EXPORTER=none, or no
    endpoint in the file nor in the environment."""
    if not config.enabled or _flag(env, "OTEL_SDK_DISABLED") == "true" or _flag(env, "OTEL_TRACES_EXPORTER") == "none":
        return None
    content = config.content or _flag(env, CONTENT_VAR) in CONTENT_ON
    if config.endpoint:
        url = config.endpoint if config.endpoint.endswith(TRACES_PATH) else config.endpoint + TRACES_PATH
        return Export(url, _shown(url), content, True)
    for var in ENDPOINT_VARS:
        value = env.get(var, "").strip()
        if value:
            url = value if var == ENDPOINT_VARS[0] else value.rstrip("/") + TRACES_PATH
            return Export(None, f"{_shown(url)} (from ${var})", content, False)
    return None


def installed() -> bool:
    """Whether the `otel` extra is there (looked up, not imported)."""
    try:
        return importlib.util.find_spec("opentelemetry.sdk") is not None and (
            importlib.util.find_spec("opentelemetry.exporter.otlp.proto.http") is not None
        )
    except (ImportError, ValueError):
        return False


def describe(config: TelemetryConfig, env: Mapping[str, str]) -> str:
    """What `check` prints about traces."""
    export = export_of(config, env)
    if export is None:
        return "off" if config.enabled else "off (enabled = false)"
    what = "spans per request and attempt" + (", with prompts and completions" if export.content else "")
    missing = "" if installed() else f"; the otel extra is not installed ({EXTRA})"
    return f"OTLP/HTTP to {export.shown}: {what}{missing}"
