"""`[server] env_file`: the keys in a file of `NAME=value` lines, read at start and again on every reload.

The sidecar's own environment is fixed when it starts, so a key added later (a new node's `${NEW_KEY}`) is
invisible to a reload; a file it reads itself is not. The syntax is what systemd's `EnvironmentFile=`
reads, so the deploy guide's `keys.env` serves both: `NAME=value` lines, blank lines, comments starting
with `#` or `;`, and a value may be in single or double quotes. A bad line is named by its number only:
it may hold a key.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ESCAPED = re.compile(r"\\(.)")


def path_of(raw: str, config_file: str) -> Path:
    """Where `env_file` points: `~/` expanded; a relative path is relative to the config file's directory."""
    path = Path(os.path.expanduser(raw))
    if path.is_absolute() or config_file.startswith("<"):  # <memory>, <demo>: no file to be relative to
        return path
    return Path(config_file).parent / path


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        inner = value[1:-1]
        return ESCAPED.sub(r"\1", inner) if value[0] == '"' else inner
    return value


def parse_env(text: str) -> tuple[dict[str, str], list[str]]:
    """The variables the file sets, and what is wrong with it: one message per bad line, no value in it."""
    values: dict[str, str] = {}
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        name, equals, value = line.partition("=")
        if not equals or not NAME.fullmatch(name.strip()):
            problems.append(f"line {number}: expected NAME=value (letters, digits and _ in NAME; # starts a comment)")
            continue
        values[name.strip()] = _unquote(value.strip())
    return values, problems


class Environment(Mapping[str, str]):
    """Where `${VAR}` keys are read: the process environment, under the values of an `env_file` when there is
    one; and where a missing variable was looked for, which its error says (`running`: in a reload, whose
    environment is the one the sidecar started with)."""

    def __init__(
        self, env: Mapping[str, str], file: Mapping[str, str] | None = None, path: str = "", running: bool = False
    ) -> None:
        self.env = env
        self.file = file or {}
        self.path = path
        self.running = running

    def __getitem__(self, name: str) -> str:
        return self.file[name] if name in self.file else self.env[name]

    def __iter__(self) -> Iterator[str]:
        yield from self.file
        yield from (name for name in self.env if name not in self.file)

    def __len__(self) -> int:
        return len(self.file) + sum(1 for name in self.env if name not in self.file)

    def with_file(self, values: Mapping[str, str], path: str) -> Environment:
        return Environment(self.env, values, path, self.running)

    def unset(self, var: str) -> str:
        """What a key's error says when `var` is in neither place."""
        where = "the running sidecar's environment" if self.running else "the environment"
        if self.path:
            return f"environment variable {var} is not set (neither in env_file {self.path} nor in {where})"
        if self.running:
            return (
                f"environment variable {var} is not set in the running sidecar's environment, which is the one it "
                "started with (a variable set in your shell since is not in it): restart the sidecar with it set, "
                "or keep the keys in a file named by [server] env_file, which every reload reads again"
            )
        return f"environment variable {var} is not set"


UNSET = re.compile(r"environment variable ([A-Za-z_][A-Za-z0-9_]*) is not set\b")


def unset_variable(message: str) -> str | None:
    """The variable a problem says is not set (a key missing from this shell), or None for a real problem."""
    found = UNSET.match(message)
    return found.group(1) if found else None
