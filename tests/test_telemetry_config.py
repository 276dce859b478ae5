"""Whether traces are on and where they go: the `[telemetry]` table, read with the standard OTEL_* variables,
its errors, what `check` says, and a reload that changes it."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli_w

from sidecar.config.load import parse
from sidecar.config.problems import ConfigError
from sidecar.config.schema import TelemetryConfig
from sidecar.config.telemetry import describe, export_of

from .conftest import cli, cli_env

NODES = {"nodes": [{"name": "a", "url": "http://127.0.0.1:9"}]}


def telemetry(**table: object) -> TelemetryConfig:
    return parse({"upstream": NODES, "telemetry": table}, "t.toml", env={}).telemetry


def test_off_without_an_endpoint_anywhere_and_the_defaults_change_nothing() -> None:
    assert parse({"upstream": NODES}, "t.toml", env={}).telemetry == TelemetryConfig() == telemetry()
    assert export_of(TelemetryConfig(), {}) is None
    assert describe(TelemetryConfig(), {}) == "off"


def test_the_file_or_the_environment_names_the_endpoint() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}
    export = export_of(TelemetryConfig(), env)
    assert export is not None and export.endpoint is None and not export.from_file and not export.content
    assert export.shown == "http://collector:4318/v1/traces (from $OTEL_EXPORTER_OTLP_ENDPOINT)"
    traces = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://user:pw@x:4318/v1/traces?token=1", **env}
    shown = export_of(TelemetryConfig(), traces)
    assert shown is not None and shown.shown == "https://x:4318/v1/traces (from $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT)"
    file = export_of(telemetry(endpoint="http://127.0.0.1:4318/"), env)
    assert file is not None and file.from_file and file.endpoint == "http://127.0.0.1:4318/v1/traces"
    whole = export_of(telemetry(endpoint="http://127.0.0.1:4318/v1/traces"), {})
    assert whole is not None and whole.endpoint == "http://127.0.0.1:4318/v1/traces"


def test_what_turns_traces_off_or_content_on() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}
    assert export_of(telemetry(enabled=False), env) is None
    assert describe(telemetry(enabled=False), env) == "off (enabled = false)"
    assert export_of(TelemetryConfig(), {**env, "OTEL_SDK_DISABLED": "true"}) is None
    assert export_of(TelemetryConfig(), {**env, "OTEL_TRACES_EXPORTER": "none"}) is None
    for value, on in (("true", True), ("SPAN_ONLY", True), ("false", False), ("NO_CONTENT", False)):
        export = export_of(TelemetryConfig(), {**env, "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": value})
        assert export is not None and export.content is on
    export = export_of(telemetry(content=True), env)
    assert export is not None and export.content
    assert "with prompts and completions" in describe(telemetry(content=True), env)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"endpoint": "localhost:4318"}, "telemetry.endpoint: expected an http:// or https:// URL, got"),
        ({"endpoint": "http://u:p@c:4318"}, "telemetry.endpoint: must not carry credentials"),
        ({"endpoint": 4318}, "telemetry.endpoint: expected a string, got an integer (4318)"),
        ({"content": "yes"}, "telemetry.content: expected true/false, got a string ('yes')"),
        ({"enable": True}, 'telemetry.enable: unknown key (did you mean "enabled"?)'),
    ],
)
def test_a_bad_table_is_named_by_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        telemetry(**table)
    assert message in str(caught.value)


def test_check_says_where_traces_go(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        tomli_w.dumps({"upstream": NODES, "telemetry": {"endpoint": "http://127.0.0.1:4318", "content": True}})
    )
    done = cli("check", "-c", str(path), env={k: v for k, v in cli_env().items() if not k.startswith("OTEL_")})
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.startswith("traces"))
    assert line == ("traces   OTLP/HTTP to http://127.0.0.1:4318/v1/traces: spans per request and attempt, "
                    "with prompts and completions")  # fmt: skip
