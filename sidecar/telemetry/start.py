"""Traces on or off at start: the `[telemetry]` table and the OTEL_* environment, and the extra that sends them."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING

from sidecar.config.schema import TelemetryConfig
from sidecar.config.telemetry import ENDPOINT_VARS, EXTRA, export_of
from sidecar.listener.bind import StartupError

if TYPE_CHECKING:
    from .export import Exporter

log = logging.getLogger("llm_sidecar")


def start(config: TelemetryConfig, version: str, env: Mapping[str, str] = os.environ) -> Exporter | None:
    """The running exporter, or None with traces off.

    Without the `otel` extra, an endpoint in the config file stops the start (the file asks for traces that
    cannot be sent); one only in the environment (perhaps set for other programs) gets one WARNING and the
    sidecar runs untraced."""
    export = export_of(config, env)
    if export is None:
        return None
    try:
        from .export import Exporter
    except ImportError as exc:
        if export.from_file:
            raise StartupError(
                f"[telemetry] endpoint is set, but OpenTelemetry is not installed ({exc.name} is missing): {EXTRA}"
            ) from None
        var = next(v for v in ENDPOINT_VARS if env.get(v, "").strip())
        log.warning("%s is set, but OpenTelemetry is not installed: no traces (%s)", var, EXTRA)
        return None
    for var in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        protocol = env.get(var, "").strip()
        if protocol and protocol != "http/protobuf":
            log.warning("%s=%s: the sidecar sends OTLP over HTTP (protobuf) only, to %s", var, protocol, export.shown)
            break
    exporter = Exporter(export, version)
    content = ", with prompts and completions" if export.content else ""
    log.info("traces: spans of each request and attempt to %s%s", export.shown, content)
    return exporter
