"""Config problems: each names the file, the key path and what is wrong.

Every problem of a file is reported at once, in file order, bounded (MAX_ERRORS), because a typo in a
failover config is otherwise discovered during an outage, one restart at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

# Problems reported at once (the rest are counted), and kept while reading before they are put in file
# order: a hostile file may hold thousands, and the first MAX_ERRORS in file order are wanted.
MAX_ERRORS = 50
MAX_KEPT = 1000


def one_line(text: str) -> str:
    """`text` with newlines and other control characters escaped: errors are printed one per line,
    and a config value must not be able to forge log lines or drive the terminal."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


class ConfigProblem(NamedTuple):
    """One config problem: the file, the key path ("" for the whole file) and what is wrong."""

    file: str
    key: str
    message: str

    def line(self) -> str:
        where = f"{self.file}: {self.key}: " if self.key else f"{self.file}: "
        return one_line(where + self.message)


class ConfigError(Exception):
    """Config problems, each located by file and key path: every one found in the file at once, in file
    order, the first MAX_ERRORS of them (`hidden` counts the rest). `file`, `key` and `message` are the
    first one's; str() is one line per problem."""

    def __init__(
        self, file: str, key: str, message: str, *, more: Sequence[ConfigProblem] = (), hidden: int = 0
    ) -> None:
        self.file = file
        self.key = key
        self.message = message
        self.errors: list[ConfigProblem] = [ConfigProblem(file, key, message), *more]
        self.hidden = hidden
        super().__init__("\n".join(self.lines()))

    @classmethod
    def of(cls, problems: Sequence[ConfigProblem], total: int = 0) -> ConfigError:
        """The error for `problems` (at least one), of `total` found (default: as many), bounded."""
        shown = problems[:MAX_ERRORS]
        return cls(*shown[0], more=shown[1:], hidden=max(total, len(problems)) - len(shown))

    @property
    def count(self) -> int:
        return len(self.errors) + self.hidden

    def lines(self) -> list[str]:
        """One line per problem, and a last one saying how many more there are past the bound."""
        lines = [problem.line() for problem in self.errors]
        if self.hidden:
            lines.append(one_line(f"{self.file}: ... and {_count(self.hidden, 'more error')}"))
        return lines

    def summary(self) -> str:
        """One line: the first problem, and how many more."""
        more = self.count - 1
        first = self.errors[0].line()
        return f"{first} (and {_count(more, 'more error')}; `llm-sidecar check` lists them all)" if more else first

    def to_dict(self) -> dict[str, Any]:
        """The first problem's file, key and message, and `errors`: all that are shown; `more`: how many not."""
        return {
            "file": self.file,
            "key": self.key,
            "message": self.message,
            "errors": [problem._asdict() for problem in self.errors],
            "more": self.hidden,
        }


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# --------------------------------------------------------------------------- reading


class Problems:
    """Every problem found in one file. Reading goes on past a bad value (with its default, so later keys
    are still checked); `check` then raises them all at once, so no Config is ever made from a file
    with a problem."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.found: list[tuple[tuple[int, ...], int, ConfigProblem]] = []
        self.count = 0

    def add(self, order: tuple[int, ...], key: str, message: str) -> None:
        """`order`: where the key is in the file (its position in each table on the way), for sorting."""
        self.count += 1
        if len(self.found) < MAX_KEPT:
            self.found.append((order, self.count, ConfigProblem(self.file, key, message)))

    def check(self) -> None:
        if self.count:
            self.found.sort(key=lambda found: found[:2])
            raise ConfigError.of([problem for _, _, problem in self.found], self.count)
