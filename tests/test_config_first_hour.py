"""Config mistakes of the first hour (issue 24): a key added after start, a shell without the keys, a port
open to the network with no key, a failover list that lacks what a node's format answers, a typo of a table."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from sidecar.config.envfile import parse_env
from sidecar.config.load import parse
from sidecar.config.plan import warnings
from sidecar.config.problems import ConfigError

from .conftest import NODE_KEYS, chat, cli, cli_env, two_node_config

CHAT = "/v1/chat/completions"


def without_keys(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in cli_env().items() if k not in NODE_KEYS}, **extra}


def problems(data: dict[str, Any], env: dict[str, str] | None = None, file: str = "cfg.toml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(data, file, {"K": "sk-1234567890"} if env is None else env)
    return [f"{p.key}: {p.message}" for p in info.value.errors]


def one_node(**server: Any) -> dict[str, Any]:
    node = {"name": "a", "url": "http://127.0.0.1:1", "api_key": "${K}"}
    return {"server": server, "upstream": {"nodes": [node]}}


# ---------------------------------------------------------------------------- 2: keys the running sidecar lacks


async def test_reload_names_the_running_sidecars_environment_and_env_file_fixes_it(fakes, sidecar, client, tmp_path):
    """`NEW_KEY=x llm-sidecar reload` was refused with `environment variable NEW_KEY is not set`, though the
    shell had it: the error now says whose environment it is and what to do; with `[server] env_file` the
    same reload works, since the sidecar reads that file again on every reload (a rotated key too)."""
    primary, backup, third = await fakes("primary"), await fakes("backup"), await fakes("third")
    config = {**two_node_config(primary, backup), "server": {"watch": False}}  # reloads only when asked
    car = await sidecar(config)
    new = {"name": "third", "url": third.url, "priority": 5, "api_key": "${NEW_KEY}"}
    server = {"listen": f"127.0.0.1:{car.port}", "control_socket": str(car.socket), "watch": False}
    edited = {"server": server, "upstream": {**config["upstream"], "nodes": [*config["upstream"]["nodes"], new]}}
    car.config_path.write_text(tomli_w.dumps(edited))
    shell = cli_env(NEW_KEY="sk-new-key-1234")
    refused = await asyncio.to_thread(cli, "reload", "--control-socket", str(car.socket), env=shell)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f'llm-sidecar: {car.config_path}: upstream.nodes[2] ("third").api_key: environment variable NEW_KEY is '
        "not set in the running sidecar's environment, which is the one it started with (a variable set in your "
        "shell since is not in it): restart the sidecar with it set, or keep the keys in a file named by [server] "
        "env_file, which every reload reads again"
    )
    keys = tmp_path / "keys.env"
    keys.write_text('# keys for the sidecar\nNEW_KEY="sk-new-key-1234"\n\n; a comment, as systemd allows\n')
    keys.chmod(0o600)
    server["env_file"] = "keys.env"  # relative to the config's directory (tmp_path)
    car.config_path.write_text(tomli_w.dumps(edited))
    loaded = await asyncio.to_thread(cli, "reload", "--control-socket", str(car.socket))
    assert loaded.returncode == 0, loaded.stderr
    answer = await client.post(car.url + CHAT, json=chat())
    assert answer.headers["x-llm-sidecar-node"] == "third"
    assert third.stats.auth_sha256 == [sha("Bearer sk-new-key-1234")]
    keys.write_text("NEW_KEY=sk-rotated-key-5678\n")  # a rotated key: a reload, no restart
    assert (await asyncio.to_thread(cli, "reload", "--control-socket", str(car.socket))).returncode == 0
    await client.post(car.url + CHAT, json=chat())
    assert third.stats.auth_sha256[-1] == sha("Bearer sk-rotated-key-5678")
    assert "sk-new-key" not in car.log() and "sk-rotated" not in car.log()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_an_env_file_is_read_like_systemds_and_its_errors_never_show_a_value(tmp_path: Path) -> None:
    values, bad = parse_env(
        '# comment\n; comment\n\nA=1\n  B = two words \nC=\'single $x\'\nD="dq \\"x\\""\nnot a line sk-secret\n=x\n'
    )
    assert values == {"A": "1", "B": "two words", "C": "single $x", "D": 'dq "x"'}
    assert len(bad) == 2 and bad[0].startswith("line 8: expected NAME=value") and "sk-secret" not in " ".join(bad)
    keys = tmp_path / "keys.env"
    keys.write_text("K=sk-from-the-file-1234\n")
    config = parse(one_node(env_file=str(keys)), str(tmp_path / "cfg.toml"), env={"K": "sk-from-the-shell-5678"})
    assert config.upstream.nodes[0].api_key == "sk-from-the-file-1234"  # the file is newer than the environment
    assert config.server.env_file == str(keys)
    assert problems(one_node(env_file="nope.env"), file=str(tmp_path / "cfg.toml")) == [
        f"server.env_file: {tmp_path / 'nope.env'}: file not found"
    ]
    keys.write_text("OTHER=1\nbroken line\n")
    assert problems(one_node(env_file="keys.env"), env={}, file=str(tmp_path / "cfg.toml")) == [
        f"server.env_file: {keys}: line 2: expected NAME=value (letters, digits and _ in NAME; # starts a comment)",
        f'upstream.nodes[0] ("a").api_key: environment variable K is not set (neither in env_file {keys} nor in '
        "the environment)",
    ]


def test_check_in_a_shell_without_the_keys_tells_them_apart_from_the_real_problem(tmp_path: Path) -> None:
    path = tmp_path / "cfg.toml"
    config = two_node_config("http://127.0.0.1:1", "http://127.0.0.1:2")
    config["upstream"]["nodes"][1]["weight"] = 0
    path.write_text(tomli_w.dumps(config))
    result = cli("check", "-c", str(path), env=without_keys())
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f'llm-sidecar: config error: {path}: upstream.nodes[1] ("backup").weight: must be >= 1, got 0',
        f'llm-sidecar: key not set: {path}: upstream.nodes[0] ("primary").api_key: environment variable '
        "PRIMARY_KEY is not set",
        f'llm-sidecar: key not set: {path}: upstream.nodes[1] ("backup").api_key: environment variable '
        "BACKUP_KEY is not set",
        "llm-sidecar: `run` reads keys from the environment it starts in, or from [server] env_file: set them there",
    ]
    config["upstream"]["nodes"][1]["weight"] = 1
    path.write_text(tomli_w.dumps(config))
    only_keys = cli("check", "-c", str(path), env=without_keys())
    assert only_keys.returncode == 2 and only_keys.stderr.splitlines()[-1] == (
        "llm-sidecar: the file has no other problem; `run` reads keys from the environment it starts in, or from "
        "[server] env_file: set them there"
    )


# ---------------------------------------------------------------------------- 7: open to the network, no key


@pytest.mark.parametrize("listen", ["0.0.0.0:8787", "[::]:8787", "192.168.1.20:8787", "myhost.lan:8787"])
def test_listening_beyond_loopback_without_a_key_is_refused(listen: str) -> None:
    (problem,) = problems(one_node(listen=listen))
    assert problem.startswith(f"server.listen: {listen} is reachable from other machines and no api_key is set")
    assert "allow_remote_without_key = true" in problem
    assert parse(one_node(listen=listen, api_key="${K}"), env={"K": "sk-1234567890"}).server.api_key
    allowed = parse(one_node(listen=listen, allow_remote_without_key=True), env={"K": "sk-1234567890"})
    assert warnings(allowed)[0].startswith(f"listen {allowed.server.listen} is reachable from other machines")


@pytest.mark.parametrize("listen", ["127.0.0.1:8787", "127.0.0.2:8787", "[::1]:8787", "localhost:8787"])
def test_loopback_needs_no_key_and_gets_no_warning(listen: str) -> None:
    assert warnings(parse(one_node(listen=listen), env={"K": "sk-1234567890"})) == []


def test_check_and_run_refuse_and_warn_from_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "open.toml"
    config = two_node_config("http://127.0.0.1:1", "http://127.0.0.1:2")
    path.write_text(tomli_w.dumps({**config, "server": {"listen": "0.0.0.0:8787"}}))
    for command in ("check", "run"):
        refused = cli(command, "-c", str(path))
        assert refused.returncode == 2 and "0.0.0.0:8787 is reachable from other machines" in refused.stderr
    path.write_text(tomli_w.dumps({**config, "server": {"listen": "0.0.0.0:8787", "allow_remote_without_key": True}}))
    checked = cli("check", "-c", str(path))
    assert checked.returncode == 0 and checked.stdout.endswith("ok\n")
    assert "llm-sidecar: warning: listen 0.0.0.0:8787 is reachable from other machines" in checked.stderr


async def test_run_logs_the_warning(fakes, sidecar) -> None:
    config = two_node_config(await fakes("primary"), await fakes("backup"))
    car = await sidecar({**config, "server": {"allow_remote_without_key": True}})
    assert "config: " not in car.log()  # loopback: nothing to say
    primary = config["upstream"]["nodes"][0]
    primary["api"] = "anthropic"
    primary["checks"] = {"passive": {"unhealthy": {"http_statuses": [429, 500, 502, 503]}}}
    other = await sidecar(config)
    await asyncio.sleep(0.3)
    assert "WARNING config: node primary: passive.unhealthy.http_statuses lacks 529 (overloaded)" in other.log()


# ---------------------------------------------------------------------------- 8: a failover list without 529


def test_check_warns_when_a_nodes_failover_statuses_lack_what_its_format_answers(tmp_path: Path) -> None:
    config = two_node_config("http://127.0.0.1:1", "http://127.0.0.1:2")
    config["upstream"]["nodes"][0]["api"] = "anthropic"
    config["upstream"]["checks"] = {"passive": {"unhealthy": {"http_statuses": [429, 500, 502, 503, 504]}}}
    path = tmp_path / "old.toml"
    path.write_text(tomli_w.dumps(config))
    result = cli("check", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "llm-sidecar: warning: node primary: passive.unhealthy.http_statuses lacks 529 (overloaded), which "
        "Anthropic-format providers answer when overloaded: those answers go to the client with no failover (add "
        "them, or remove the list to get the default)"
    ]  # the OpenAI-format backup has all it needs
    default = two_node_config("http://127.0.0.1:1", "http://127.0.0.1:2")
    default["upstream"]["nodes"][0]["api"] = "anthropic"
    assert warnings(parse(default, env=NODE_KEYS)) == []


# ---------------------------------------------------------------------------- 10: a table's name mistyped


def test_a_mistyped_nodes_table_is_explained_before_no_nodes_configured(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text('[[upstreams.nodes]]\nname = "a"\nurl = "http://127.0.0.1:1"\n')
    result = cli("check", "-c", str(path), env=without_keys())
    assert result.stderr.splitlines() == [
        f'llm-sidecar: config error: {path}: upstreams: unknown key (did you mean "upstream"?)',
        f"llm-sidecar: config error: {path}: upstream.nodes: no nodes configured: add at least one [[upstream.nodes]]",
    ]
    assert problems({"upstream": {"node": [{"name": "a", "url": "http://127.0.0.1:1"}]}}) == [
        'upstream.node: unknown key (did you mean "nodes"?)',
        "upstream.nodes: no nodes configured: add at least one [[upstream.nodes]]",
    ]
    assert os.environ.get("NOT_A_REAL_VARIABLE") is None
