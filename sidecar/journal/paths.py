"""Where the journal is: `[journal] path`, else $XDG_STATE_HOME/llm-sidecar/journal.db, else
~/.local/state/llm-sidecar/journal.db (the XDG base directory spec's state directory)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from sidecar.config.schema import JournalConfig

FILE = "journal.db"


def default_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    state = env.get("XDG_STATE_HOME")
    # The spec: a relative value is invalid and must be ignored.
    if state and os.path.isabs(state):
        return Path(state) / "llm-sidecar" / FILE
    return Path(env.get("HOME") or Path.home()) / ".local" / "state" / "llm-sidecar" / FILE


def journal_path(config: JournalConfig, env: Mapping[str, str] | None = None) -> Path:
    if config.path:
        return Path(os.path.expanduser(config.path))
    return default_path(env)
