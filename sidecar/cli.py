"""The `llm-sidecar` command. Heavy imports stay inside commands so each starts fast."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, NoReturn, cast

import click

from sidecar.config.discovery import control_socket_path, discover
from sidecar.config.envfile import unset_variable
from sidecar.config.load import load
from sidecar.config.problems import ConfigError, one_line
from sidecar.config.schema import CONFIG_NAME, Config
from sidecar.journal.cli import log, replay

from . import __version__

CONFIG_OPTION = click.option(
    "-c",
    "--config",
    "config_path",
    metavar="PATH",
    help=f"Config file (default: $LLM_SIDECAR_CONFIG, ./{CONFIG_NAME}, ~/.config/llm-sidecar/{CONFIG_NAME}).",
)
SOCKET_OPTION = click.option(
    "--control-socket",
    metavar="PATH",
    help="Control socket (default: [server] control_socket of the config, else $XDG_RUNTIME_DIR/llm-sidecar.sock, "
    "else ~/.llm-sidecar/control.sock).",
)


def fail(message: str | list[str], code: int = 1) -> NoReturn:
    # One line per message whatever it holds (a path, a node name, a peer's answer).
    for line in [message] if isinstance(message, str) else message:
        click.echo(f"llm-sidecar: {one_line(line)}", err=True)
    sys.exit(code)


def config_error_lines(exc: ConfigError) -> list[str]:
    """The file's own problems first, then the keys whose variables are not set in this environment (a
    `check` in a shell without the keys would otherwise bury the real problem among them), and what each
    group asks of the user."""
    real = [p for p in exc.errors if unset_variable(p.message) is None]
    unset = [p for p in exc.errors if unset_variable(p.message) is not None]
    lines = [f"config error: {p.line()}" for p in real]
    if exc.hidden:
        lines.append(f"config error: {exc.file}: ... and {exc.hidden} more errors")
    lines += [f"key not set: {p.line()}" for p in unset]
    if unset:
        where = "`run` reads keys from the environment it starts in, or from [server] env_file"
        lines.append(
            f"{'the file has no other problem; ' if not real and not exc.hidden else ''}{where}: set them there"
        )
    return lines


def load_config(config_path: str | None) -> Config:
    try:
        return load(discover(config_path))
    except ConfigError as exc:
        fail(config_error_lines(exc), 2)


class Commands(click.Group):
    """Adds commands that other packages register under the `llm_sidecar.commands`
    entry point (the monitor), so the server package never imports the TUI."""

    def _plugins(self) -> dict[str, Any]:
        from importlib.metadata import entry_points

        return {ep.name: ep for ep in entry_points(group="llm_sidecar.commands")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._plugins()})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None and name in (plugins := self._plugins()):
            command = plugins[name].load()
        return command


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "-V", "--version", prog_name="llm-sidecar")
def main() -> None:
    """A localhost failover proxy for OpenAI- and Anthropic-compatible APIs.

    Point your agent's base_url at http://127.0.0.1:8787/v1 (Anthropic clients and
    Claude Code: ANTHROPIC_BASE_URL=http://127.0.0.1:8787); the sidecar forwards to
    the nodes in llm-sidecar.toml with priority failover, retries and health checks,
    and re-reads that file when it is saved.
    """


@main.command()
@CONFIG_OPTION
@SOCKET_OPTION
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True
)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--grace", type=float, default=30.0, show_default=True, help="Seconds in-flight requests get on stop.")
def run(config_path: str | None, control_socket: str | None, log_level: str, log_format: str, grace: float) -> None:
    """Run the proxy (and its control socket) until SIGINT/SIGTERM."""
    from sidecar.config.plan import warnings
    from sidecar.listener.bind import StartupError

    from . import logs
    from .server import run as run_server

    config = load_config(config_path)
    logs.setup(log_level, log_format)
    for warning in warnings(config):
        logging.getLogger("llm_sidecar").warning("config: %s", warning)
    try:
        run_server(config, control_socket=control_socket_path(config, control_socket), grace=grace)
    except StartupError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        pass


@main.command()
@CONFIG_OPTION
def check(config_path: str | None) -> None:
    """Validate a config and print the resolved plan (never the keys)."""
    from sidecar.config.plan import render, warnings
    from sidecar.spend import plan

    config = load_config(config_path)
    click.echo(render(config))
    spend, priced = plan.render(config)
    click.echo(spend)
    for warning in warnings(config):
        click.echo(f"llm-sidecar: warning: {warning}", err=True)
    for warning in priced:
        click.echo(f"llm-sidecar: warning: {one_line(warning)}", err=True)
    click.echo("ok")


@main.command()
@click.argument("path", default=CONFIG_NAME, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def init(path: Path, force: bool) -> None:
    """Write a commented starter config (OpenAI primary, DeepSeek backup)."""
    from sidecar.config.template import render

    if path.exists() and not force:
        fail(f"{path} exists; use --force to overwrite it")
    try:
        path.write_text(render(), encoding="utf-8")
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}")
    click.echo(f"wrote {path}; set OPENAI_API_KEY and DEEPSEEK_API_KEY, then run `llm-sidecar check`")


@main.command("fake-provider")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, required=True)
@click.option("--name", default="fake", show_default=True, help="Shown in answers and headers.")
@click.option(
    "--fail-rate", type=click.FloatRange(0, 1), default=0.0, show_default=True, help="Share of failing requests."
)
@click.option(
    "--fault",
    type=click.Choice(["error", "rate_limit", "hang", "silent", "drop", "close", "keepalive"]),
    default="error",
    show_default=True,
    help="How a failing request fails.",
)
@click.option("--status", type=int, default=500, show_default=True, help="Status for --fault error.")
@click.option("--latency", type=float, default=0.0, show_default=True, help="Seconds before every answer.")
@click.option("--chunks", type=int, default=5, show_default=True, help="SSE chunks per streamed answer.")
@click.option("--chunk-delay", type=float, default=0.0, show_default=True, help="Seconds between chunks.")
@click.option(
    "--api",
    type=click.Choice(["openai", "anthropic"]),
    default="openai",
    show_default=True,
    help="The API to serve: OpenAI's (chat completions, Responses, embeddings), or Anthropic's Messages API.",
)
@click.option(
    "--no-responses",
    is_flag=True,
    help="OpenAI API without the Responses API: /v1/responses answers 404, as on a chat-only server (vLLM, Ollama).",
)
def fake_provider(
    host: str,
    port: int,
    name: str,
    fail_rate: float,
    fault: str,
    status: int,
    latency: float,
    chunks: int,
    chunk_delay: float,
    api: str,
    no_responses: bool,
) -> None:
    """Run an OpenAI- or (--api anthropic) Anthropic-compatible fake provider with fault modes, for resilience tests.

    Change its behaviour while it runs: POST /_fake/behaviour with JSON, e.g.
    {"fail_rate": 1, "fault": "hang"}; GET /_fake/stats counts what it saw.
    A model named fault-<name> picks a fault per request (429-once, 503, cut, stall, context, ...: see
    docs/fake-provider.md); a trailing assistant message is continued (behaviour field continuation). Tools in a
    request are called when its last user message names them (or tool_choice requires it), with arguments made
    from their schemas; reasoning models (o1, o3, o4, *reason*) and Anthropic thinking reason first.
    """
    from sidecar.fakes.core import Behaviour
    from sidecar.fakes.serve import serve_forever

    behaviour = Behaviour(
        fault=fault,
        fail_rate=fail_rate,
        status=status,
        latency=latency,
        chunks=chunks,
        chunk_delay=chunk_delay,
        responses=not no_responses,
    )
    click.echo(f"fake provider {name!r} ({api}) on http://{host}:{port}/v1", err=True)
    serve_forever(name, host, port, behaviour, api=api)


@main.command()
@click.option("--no-tui", is_flag=True, help="Print what happens instead of opening the monitor.")
@click.option(
    "--duration",
    type=float,
    default=45.0,
    show_default=True,
    help="Seconds to run with --no-tui (the monitor runs until q).",
)
@click.option("--port", type=int, default=0, help="Sidecar port (default: a free one).")
@click.pass_context
def demo(ctx: click.Context, no_tui: bool, duration: float, port: int) -> None:
    """Watch a failover: two fake providers, a scripted outage of the primary, live traffic."""
    from .demo import run_demo

    monitor = None if no_tui else main.get_command(ctx, "monitor")
    if monitor is None or not sys.stdout.isatty():
        run_demo(duration=duration, port=port)
        return
    run_demo(duration=duration, port=port, monitor=lambda path: ctx.invoke(monitor, control_socket=str(path)))


FORMATS = {"openai": "OpenAI-format", "anthropic": "Anthropic-format"}  # what a mixed config serves apart


def control_client(control_socket: str | None, config_path: str | None) -> Any:
    from sidecar.control.client import ControlClient, find_socket

    return ControlClient(find_socket(control_socket, config_path))


def call(control_socket: str | None, config_path: str | None, method: str, *args: str, **options: Any) -> Any:
    from sidecar.control.client import ControlError, NotRunning

    with control_client(control_socket, config_path) as client:
        try:
            return getattr(client, method)(*args, **options)
        except NotRunning as exc:
            fail(str(exc))
        except ControlError as exc:
            fail(exc.lines)


@main.command()
@CONFIG_OPTION
@SOCKET_OPTION
@click.option(
    "--json", "as_json", is_flag=True, help="Print the JSON of GET /v1/status, with `listener` (the /healthz probe)."
)
def status(config_path: str | None, control_socket: str | None, as_json: bool) -> None:
    """Show node health and traffic of the running sidecar.

    Exits 1 if the sidecar does not answer on its control socket, or if its proxy port does not answer
    /healthz within 2 s (any status counts: a 503 only says no node is usable): a liveness check."""
    import json
    import shutil

    from sidecar.control.client import LISTENER_TIMEOUT, probe_listener
    from sidecar.control.table import render_status
    from sidecar.observe.shapes import StatusReportJSON

    data = call(control_socket, config_path, "status")
    listener = probe_listener(data["sidecar"]["listen"])
    report = cast(StatusReportJSON, {**data, "listener": listener})  # all GET /v1/status said, and one field
    # Fitted to the terminal (or $COLUMNS; 80 when piped), as the monitor's tables are.
    click.echo(json.dumps(report, indent=2) if as_json else render_status(data, shutil.get_terminal_size().columns))
    if not listener["answering"]:
        fail(f"proxy listener on {listener['address']} not answering /healthz within {LISTENER_TIMEOUT:g}s")


@main.command()
@CONFIG_OPTION
@SOCKET_OPTION
@click.option("--node", "expected", metavar="NAME", help="Only if NAME is the serving node (default: the one now).")
def failover(config_path: str | None, control_socket: str | None, expected: str | None) -> None:
    """Force failover away from the serving node (marks it down).

    Without --node, the node serving now; in a config with OpenAI- and Anthropic-format nodes, the first
    by priority of either: the answer says which format it served, and what serves the other."""
    if expected is None:
        # Name the node we saw, so a failover that happened meanwhile is not doubled.
        expected = call(control_socket, config_path, "status")["serving"]
    answer = call(control_socket, config_path, "failover", *([expected] if expected else []))
    down, serving = answer["down"], answer["serving"]
    nodes = call(control_socket, config_path, "status")["nodes"]
    api = {n["name"]: n.get("api", "openai") for n in nodes}
    if len(set(api.values())) < 2:
        click.echo(f"{down} is down; {serving} serves now (undo: llm-sidecar node auto {down})")
        return
    click.echo(
        f"{down} is down; {serving} serves {FORMATS[api[down]]} requests now (undo: llm-sidecar node auto {down})"
    )
    for n in nodes:
        if n["serving"] and n["api"] != api[down]:
            click.echo(
                f"{FORMATS[n['api']]} requests still go to {n['name']} (to move them: llm-sidecar failover --node {n['name']})"
            )


@main.group()
def node() -> None:
    """Drain a node or give it back to automatic health."""


def set_manual(
    name: str, manual: str, config_path: str | None, control_socket: str | None, force: bool = False
) -> None:
    answer = call(control_socket, config_path, "node", name, manual, force=force)
    state = "down" if manual == "down" else f"back to auto ({answer['state']})"
    click.echo(f"{answer['node']} is {state}; serving: {answer['serving'] or 'nothing'}")


@node.command("down")
@click.argument("name")
@CONFIG_OPTION
@SOCKET_OPTION
@click.option("--force", is_flag=True, help="Drain NAME even if it is the last usable node (refused otherwise).")
def node_down(name: str, config_path: str | None, control_socket: str | None, force: bool) -> None:
    """Mark NAME down: no new requests; in-flight ones finish."""
    set_manual(name, "down", config_path, control_socket, force)


@node.command("auto")
@click.argument("name")
@CONFIG_OPTION
@SOCKET_OPTION
def node_auto(name: str, config_path: str | None, control_socket: str | None) -> None:
    """Give NAME back to automatic health checks."""
    set_manual(name, "auto", config_path, control_socket)


@main.command()
@CONFIG_OPTION
@SOCKET_OPTION
def reload(config_path: str | None, control_socket: str | None) -> None:
    """Make the running sidecar re-read the file it was started with; a broken file keeps the running config.

    -c only finds that sidecar (its control socket); it does not load another file."""
    answer = call(control_socket, config_path, "reload")
    click.echo(f"reloaded {answer['config_path']}: nodes {', '.join(answer['nodes'])}")


main.add_command(log)
main.add_command(replay)
