"""`llm-sidecar log`, `log show ID`, `log stats` and `replay ID`: the journal read from its file.

They open the file read-only, so they work while no sidecar runs and never hold one up. The file is found
the way `run` finds it: `--journal PATH`, else `[journal] path` of the discovered config (read leniently:
no keys needed), else the default ($XDG_STATE_HOME/llm-sidecar/journal.db).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
import time
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import click

from sidecar.config.discovery import discover
from sidecar.config.load import read_text
from sidecar.config.problems import ConfigError, one_line
from sidecar.config.schema import DEFAULT_LISTEN

from .paths import default_path

FOLLOW_EVERY = 0.5
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"llm-sidecar: {one_line(message)}", err=True)
    sys.exit(code)


def config_table(config_path: str | None) -> dict[str, Any]:
    """The discovered config's TOML, unvalidated (the keys need not be set), or {}."""
    try:
        return tomllib.loads(read_text(discover(config_path)))
    except (ConfigError, ValueError, RecursionError):
        return {}


def find_journal(journal: str | None, config_path: str | None) -> Path:
    if journal:
        return Path(journal)
    table = config_table(config_path).get("journal")
    path = table.get("path") if isinstance(table, dict) else None
    if isinstance(path, str) and path:
        return Path(os.path.expanduser(path))
    return default_path()


def when(text: str | None, now: float) -> float | None:
    """`7d`, `3h`, `30m`, `90s`, `2w` ago, or a local date/time (`2026-06-01`, `2026-06-01T12:00`)."""
    if text is None:
        return None
    if match := re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", text.strip()):
        return now - float(match[1]) * UNITS[match[2]]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: expected 7d, 3h, 30m, 90s, 2w, or a date like 2026-06-01 or 2026-06-01T12:00"
        ) from None


def opened(journal: str | None, config_path: str | None) -> Any:
    from . import reader

    path = find_journal(journal, config_path)
    try:
        return reader.connect(path)
    except reader.NoJournal as exc:
        fail(str(exc))


def found_in(db: Any, rid: str) -> tuple[int, dict[str, Any]]:
    """The request `rid` names (its rowid and record); a clear failure when none does, or when its ending
    names several."""
    from . import reader

    try:
        found = reader.find(db, rid)
    except reader.Ambiguous as exc:
        shown = ", ".join(exc.ids[:5]) + (", ..." if len(exc.ids) > 5 else "")
        fail(f"{rid!r} ends {len(exc.ids)}{'+' if len(exc.ids) >= 50 else ''} request ids ({shown}): give more of it")
    if found is None:
        fail(f"no request {rid!r} in the journal (ids are matched whole, or by a unique ending)")
    return found


CONFIG_OPTION = click.option("-c", "--config", "config_path", metavar="PATH", help="Config whose [journal] to read.")
JOURNAL_OPTION = click.option("--journal", metavar="PATH", help="The journal file (default: from the config).")


def status_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A status (100-599) or a class (2xx ... 5xx)."""
    if value is None or re.fullmatch(r"[1-5](?:xx|\d\d)", value.strip().lower()):
        return None if value is None else value.strip().lower()
    raise click.BadParameter(f"{value!r}: expected a status like 429 or a class like 5xx")


def filter_options(f: Any) -> Any:
    for option in reversed(
        [
            click.option("--node", metavar="NAME", help="Only requests this node answered."),
            click.option("--model", metavar="NAME", help="Only this model (as asked or as sent to the node)."),
            click.option("--status", callback=status_option, help="Only this status or class (429, 5xx, ...)."),
            click.option("--errors", is_flag=True, help="Only failed requests (status >= 400, or a broken stream)."),
            click.option("--since", metavar="WHEN", help="From WHEN: 7d, 3h, 30m, or a date (2026-06-01T12:00)."),
            click.option("--until", metavar="WHEN", help="Before WHEN (same forms)."),
        ]
    ):
        f = option(f)
    return f


def make_filter(node: str | None, model: str | None, status: str | None, errors: bool, since: str | None,
                until: str | None, default_since: str | None = None) -> Any:  # fmt: skip
    from .reader import Filter

    now = time.time()
    return Filter(node, model, status, errors, when(since or default_since, now), when(until, now))


@click.group(invoke_without_command=True)
@CONFIG_OPTION
@JOURNAL_OPTION
@filter_options
@click.option("-n", "--limit", type=click.IntRange(0), default=20, show_default=True, help="Rows (0: all).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing requests as they are written.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, for scripts.")
@click.pass_context
def log(ctx: click.Context, config_path: str | None, journal: str | None, node: str | None, model: str | None,
        status: str | None, errors: bool, since: str | None, until: str | None, limit: int, follow: bool,
        as_json: bool) -> None:  # fmt: skip
    """Recent requests from the journal (works with no sidecar running).

    \b
    llm-sidecar log                    the last 20 requests
    llm-sidecar log --errors --since 1d
    llm-sidecar log show ID            one request: each attempt, its timings and reasons (bodies when kept)
    llm-sidecar log stats --since 7d   per node and model: requests, errors, failovers, TTFT, tokens, cost
    """
    if ctx.invoked_subcommand is not None:
        return
    from . import reader, render

    db = opened(journal, config_path)
    where = make_filter(node, model, status, errors, since, until)
    rows = reader.recent(db, where, limit or -1)
    table = render.LogTable(follow)
    last = 0
    try:
        while True:
            if as_json:
                for _, e in rows:
                    click.echo(json.dumps(e, separators=(",", ":")))
            else:
                for line in table.lines(e for _, e in rows):
                    click.echo(line)
            last = rows[-1][0] if rows else last
            if not follow:
                break
            time.sleep(FOLLOW_EVERY)
            rows = reader.recent(db, where, 1000, after=last)
    except KeyboardInterrupt:  # how --follow ends
        return
    if not as_json:
        if not last:
            filtered = errors or any(v is not None for v in (node, model, status, since, until))
            click.echo("(no request matches these filters)" if filtered else "(no request in the journal yet)")
        click.echo(render.LOG_LEGEND)


@log.command("show")
@click.argument("rid", metavar="ID")
@CONFIG_OPTION
@JOURNAL_OPTION
@click.option("--json", "as_json", is_flag=True, help="The request as JSON (GET /v1/requests/{id}'s shape).")
def show(rid: str, config_path: str | None, journal: str | None, as_json: bool) -> None:
    """One request: each attempt with its timings and reasons; the bodies when the journal kept them.

    ID is the request id (x-request-id), or its last characters as `log` shows them."""
    from . import reader, render

    db = opened(journal, config_path)
    rowid, record = found_in(db, rid)
    stored = reader.bodies(db, rowid)
    detail = reader.detail(record, "journal", stored is not None)
    if as_json:
        click.echo(json.dumps(detail, indent=2))
        return
    for line in [*render.show(detail), "", *render.show_bodies(stored)]:
        click.echo(line)


@log.command("stats")
@CONFIG_OPTION
@JOURNAL_OPTION
@filter_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per node and model.")
def stats(config_path: str | None, journal: str | None, node: str | None, model: str | None, status: str | None,
          errors: bool, since: str | None, until: str | None, as_json: bool) -> None:  # fmt: skip
    """Per node and model: requests, errors, failovers, p50/p95 time to first token, tokens, cost (default: 7d)."""
    from . import reader, render

    db = opened(journal, config_path)
    where = make_filter(node, model, status, errors, since, until, default_since="7d")
    groups = reader.stats(db, where)
    if as_json:
        for g in groups:
            out = {k: v for k, v in vars(g).items() if k != "ttft"}
            click.echo(json.dumps({**out, "ttft_p50_ms": g.p(0.5), "ttft_p95_ms": g.p(0.95)}))
        return
    span = f"since {time.strftime('%Y-%m-%d %H:%M', time.localtime(where.since))}" if where.since else "all time"
    for line in render.stats_lines(groups, span):
        click.echo(line)


@click.command()
@click.argument("rid", metavar="ID")
@CONFIG_OPTION
@JOURNAL_OPTION
@click.option("--url", metavar="URL", help="The sidecar to send it to (default: the config's listen address).")
def replay(rid: str, config_path: str | None, journal: str | None, url: str | None) -> None:
    """Send a stored request again through the running sidecar; its answer goes to stdout.

    Needs the request's body in the journal ([journal] bodies = true). It goes with a new request id
    (replay-ID); what the sidecar did with it is a new row of `llm-sidecar log`."""
    import httpx

    from . import reader

    db = opened(journal, config_path)
    rowid, record = found_in(db, rid)
    stored = reader.bodies(db, rowid)
    if stored is None:
        fail(f"request {record['id']} has no stored body: replay needs [journal] bodies = true when it is sent")
    if not stored.whole(response=False):
        fail(f"request {record['id']}'s body was cut at [journal] max_body_bytes ({len(stored.request)} of "
             f"{stored.request_size} bytes kept): it cannot be replayed")  # fmt: skip
    server = config_table(config_path).get("server")
    server = server if isinstance(server, dict) else {}
    base = url or f"http://{server.get('listen', DEFAULT_LISTEN)}"
    headers = {k: v for k, v in stored.headers.items() if k in ("content-type", "anthropic-version", "anthropic-beta")}
    # Its own id: a request replayed twice is two rows, each found by its id.
    headers["x-request-id"] = f"replay-{secrets.token_hex(3)}-{record['id']}"[:128]
    key = sidecar_key(server)
    if key:
        headers["authorization"] = f"Bearer {key}"
    target = base.rstrip("/") + record["path"]
    click.echo(f"replaying {record['id']} ({record['method']} {record['path']}) to {base}", err=True)
    try:
        with (
            httpx.Client(timeout=httpx.Timeout(10, read=600)) as client,
            client.stream(record["method"], target, content=stored.request, headers=headers) as response,
        ):
            for chunk in response.iter_raw():
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
    except httpx.HTTPError as exc:
        fail(f"cannot replay to {base}: {exc} (is a sidecar running there? --url picks another)")
    node = response.headers.get("x-llm-sidecar-node", "-")
    click.echo(f"\n{response.status_code} from {node}; request id {headers['x-request-id']}", err=True)
    if response.status_code >= 400:
        sys.exit(1)


def sidecar_key(server: dict[str, Any]) -> str | None:
    """The sidecar's own key, when the config names one and its variable is set here."""
    raw = server.get("api_key")
    match = re.fullmatch(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", raw) if isinstance(raw, str) else None
    return os.environ.get(match[1], "").strip() or None if match else None
