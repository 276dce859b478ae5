"""Where things live: the config file (discovery order) and the control socket."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from .problems import ConfigError
from .schema import CONFIG_ENV, CONFIG_NAME, Config


def discover(explicit: str | None = None, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Path:
    """Find the config: -c PATH, else $LLM_SIDECAR_CONFIG, else ./llm-sidecar.toml, else ~/.config/llm-sidecar/."""
    env = os.environ if env is None else env
    if explicit:
        return Path(explicit)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    local = (cwd or Path.cwd()) / CONFIG_NAME
    if local.exists():
        return local
    home = Path(env.get("HOME") or Path.home())
    user = home / ".config" / "llm-sidecar" / CONFIG_NAME
    if user.exists():
        return user
    raise ConfigError(
        str(local),
        "",
        f"no config found (looked at -c, ${CONFIG_ENV}, ./{CONFIG_NAME} and {user}); create one with `llm-sidecar init`",
    )


def default_control_socket(env: Mapping[str, str] | None = None) -> Path:
    """$XDG_RUNTIME_DIR/llm-sidecar.sock, else ~/.llm-sidecar/control.sock."""
    env = os.environ if env is None else env
    runtime = env.get("XDG_RUNTIME_DIR")
    # The XDG spec: a relative XDG_RUNTIME_DIR is invalid and must be ignored.
    if runtime and os.path.isabs(runtime) and Path(runtime).is_dir():
        return Path(runtime) / "llm-sidecar.sock"
    return Path(env.get("HOME") or Path.home()) / ".llm-sidecar" / "control.sock"


def control_socket_path(
    config: Config | None, override: str | None = None, env: Mapping[str, str] | None = None
) -> Path:
    if override:
        return Path(override)
    if config is not None and config.server.control_socket:
        return Path(os.path.expanduser(config.server.control_socket))
    return default_control_socket(env)
