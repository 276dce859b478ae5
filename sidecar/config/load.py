"""Load and validate `llm-sidecar.toml` into frozen dataclasses.

Validation is strict and every error names the file, the key path and what is
wrong, because a typo in a failover config is only discovered during an outage;
every error of a file is reported at once, in file order (bounded).
Field names follow Apache APISIX's upstream object.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sidecar.config.costs import budget, prices
from sidecar.config.journal import journal_config
from sidecar.config.server import server_config
from sidecar.config.telemetry import telemetry_config
from sidecar.config.upstream import NO_NODES, upstream_config

from .envfile import Environment, parse_env, path_of
from .problems import ConfigError, Problems
from .schema import (
    Config,
)
from .table import Table

MAX_FILE_BYTES = 1 << 20


def parse(data: Mapping[str, Any], file: str = "<memory>", env: Mapping[str, str] | None = None) -> Config:
    """Validate a parsed TOML document; raise one ConfigError naming every problem (in file order, bounded)."""
    env = os.environ if env is None else env
    problems = Problems(file)
    root = Table(data, "", problems)
    server_table = root.table_or_empty("server")
    env_file, env = _env_file(server_table, file, env)
    server = server_config(server_table, env, env_file)
    up = root.table("upstream")
    upstream = None if up is None else upstream_config(up, env)
    if up is None and root.ok("upstream"):
        root.missing("upstream", NO_NODES, key="upstream.nodes")
    journal = journal_config(root.table_or_empty("journal"))
    caps = budget(root.table("budget"))
    priced = prices(root, "prices")
    telemetry = telemetry_config(root.table_or_empty("telemetry"))
    root.done()
    problems.check()  # raises if anything at all was wrong: a Config is only made from a file without problems
    assert upstream is not None
    return Config(
        server=server, upstream=upstream, path=file, journal=journal, budget=caps, prices=priced, telemetry=telemetry
    )


def _env_file(server: Table, file: str, env: Mapping[str, str]) -> tuple[str, Mapping[str, str]]:
    """`[server] env_file`, read: its path, and where `${VAR}` keys come from (its values over `env`'s)."""
    raw: str = server.get("env_file", str, "")
    if not raw:
        return "", env
    if not raw.isprintable():
        server.error("env_file", "must not contain control characters (NUL, newline, ...)")
        return "", env
    path = str(path_of(raw, file))
    try:
        values, bad = parse_env(read_text(path))
    except ConfigError as exc:
        server.error("env_file", f"{path}: {exc.message}")
        return path, env
    for message in bad:
        server.error("env_file", f"{path}: {message}")
    return path, (env if isinstance(env, Environment) else Environment(env)).with_file(values, path)


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
