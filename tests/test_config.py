"""Config validation: every mistake names the file, the key path and what is wrong."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from sidecar.config.discovery import control_socket_path, discover
from sidecar.config.load import load, parse
from sidecar.config.problems import ConfigError
from sidecar.config.schema import PassiveCheck, RetryPolicy, Timeouts
from sidecar.config.template import render

ENV = {"OPENAI_API_KEY": "sk-openai", "DEEPSEEK_API_KEY": "sk-deepseek"}
REPO = Path(__file__).resolve().parent.parent


def minimal(**node0: object) -> dict:
    return {
        "upstream": {
            "nodes": [
                {"name": "a", "url": "http://127.0.0.1:1", "api_key": "${OPENAI_API_KEY}", **node0},
                {"name": "b", "url": "http://127.0.0.1:2", "api_key": "${DEEPSEEK_API_KEY}"},
            ]
        }
    }


def error_of(data: dict, env: dict | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(data, "cfg.toml", ENV if env is None else env)
    return info.value


def test_minimal_file_gets_every_default() -> None:
    config = parse(minimal(), "cfg.toml", ENV)
    assert config.server.listen == "127.0.0.1:8787"
    assert config.upstream.retries is None  # bounded by the retry policy instead
    assert config.upstream.retry_timeout == 30
    assert config.upstream.retry == RetryPolicy(
        max_wait=5, same_node=1, backoff=0.5, max_backoff=4, attempts_per_node=3
    )
    assert config.upstream.timeout == Timeouts(connect=5, send=30, read=120, first_token=60)
    a = config.upstream.nodes[0]
    assert a.timeout == config.upstream.timeout and a.continuation == "none"
    assert (a.weight, a.priority, a.api_key, a.api_key_env) == (1, 0, "sk-openai", "OPENAI_API_KEY")
    assert a.checks.active is None and a.checks.passive == PassiveCheck()  # passive on by default: issue 21
    assert 429 in a.checks.retry_statuses and 400 not in a.checks.retry_statuses


def test_node_timeouts_override_the_upstreams_and_first_token_never_exceeds_read() -> None:
    data = minimal()
    data["upstream"]["timeout"] = {"read": 30}
    data["upstream"]["nodes"][0]["timeout"] = {"first_token": 20}
    data["upstream"]["nodes"][1]["timeout"] = {"read": 300, "first_token": 240}
    config = parse(data, "cfg.toml", ENV)
    assert config.upstream.timeout.first_token == 30  # the default, lowered to read
    a, b = config.upstream.nodes
    assert (a.timeout.read, a.timeout.first_token) == (30, 20)
    assert (b.timeout.read, b.timeout.first_token) == (300, 240)
    data["upstream"]["nodes"][0]["timeout"] = {"first_token": 31}
    error = error_of(data)
    assert error.key == 'upstream.nodes[0] ("a").timeout.first_token' and "must be <= read (30)" in error.message


@pytest.mark.parametrize(
    ("where", "value", "key", "message"),
    [
        (
            ("nodes", 0, "continuation"),
            "prefil",
            'upstream.nodes[0] ("a").continuation',
            "expected one of 'none', 'prefill'",
        ),
        (("retry", "max_backoff"), 0.1, "upstream.retry.max_backoff", "must be >= backoff"),
        (("retry", "attempts_per_node"), 0, "upstream.retry.attempts_per_node", "must be >= 1"),
        (("retry", "typo"), 1, "upstream.retry.typo", "unknown key"),
    ],
)
def test_retry_and_continuation_settings_are_checked(where: tuple, value: object, key: str, message: str) -> None:
    data = minimal()
    table = data["upstream"]
    for part in where[:-1]:
        table = table.setdefault(part, {}) if isinstance(part, str) else table[part]
    table[where[-1]] = value
    error = error_of(data)
    assert error.key == key and message in error.message


def test_repo_config_is_the_seed_setup() -> None:
    config = load(REPO / "llm-sidecar.toml", ENV)
    openai, deepseek = config.upstream.nodes
    assert (openai.name, openai.weight, openai.priority) == ("openai", 100, 0)
    assert (deepseek.name, deepseek.weight, deepseek.priority) == ("deepseek", 1, -1)
    assert deepseek.rewrite_model("gpt-4o") == "deepseek-chat"
    assert openai.checks.active is not None and openai.checks.active.http_path == "/v1/models"


def test_init_template_parses_to_the_same_plan_as_the_repo_file() -> None:
    from_template = parse(tomllib.loads(render()), "t", ENV)
    from_repo = load(REPO / "llm-sidecar.toml", ENV)
    assert from_template.upstream == from_repo.upstream
    assert from_template.server == from_repo.server


def test_the_repo_file_is_what_init_writes() -> None:
    """The file a user of a clone edits documents every section `init` does (journal, budget, telemetry)."""
    assert (REPO / "llm-sidecar.toml").read_text() == render()


def test_node_checks_override_upstream_checks() -> None:
    data = minimal(checks={"passive": {"unhealthy": {"http_failures": 7}}})
    data["upstream"]["checks"] = {"active": {"interval": 3}, "passive": {}}
    a, b = parse(data, "cfg.toml", ENV).upstream.nodes
    assert a.checks.passive.unhealthy_http_failures == 7
    assert b.checks.passive.unhealthy_http_failures == 3
    assert a.checks.active.interval == b.checks.active.interval == 3


def test_model_rewrite_exact_then_star_then_unchanged() -> None:
    node = parse(minimal(models={"gpt-4o": "gpt-4o-2024-08-06", "*": "gpt-4o-mini"}), "c", ENV).upstream.nodes[0]
    assert node.rewrite_model("gpt-4o") == "gpt-4o-2024-08-06"
    assert node.rewrite_model("other") == "gpt-4o-mini"
    plain = parse(minimal(models={"gpt-4o": "x"}), "c", ENV).upstream.nodes[0]
    assert plain.rewrite_model("other") == "other"


def test_api_key_never_in_repr() -> None:
    config = parse(minimal(), "cfg.toml", ENV)
    assert "sk-openai" not in repr(config)


@pytest.mark.parametrize(
    ("data", "key", "words"),
    [
        (minimal(weight=0), 'upstream.nodes[0] ("a").weight', "must be >= 1"),
        (minimal(weight="5"), 'upstream.nodes[0] ("a").weight', "expected an integer"),
        (minimal(weight=True), 'upstream.nodes[0] ("a").weight', "expected an integer"),
        (minimal(colour="red"), 'upstream.nodes[0] ("a").colour', "unknown key"),
        (minimal(url="ftp://x"), 'upstream.nodes[0] ("a").url', "http:// or https://"),
        (minimal(url="https://"), 'upstream.nodes[0] ("a").url', "http:// or https://"),
        (minimal(url="https://x.com/?k=1"), 'upstream.nodes[0] ("a").url', "query"),
        (minimal(url="https://me:sk-secret@x.com"), 'upstream.nodes[0] ("a").url', "must not carry credentials"),
        (minimal(name="b"), "upstream.nodes[1].name", "duplicate node name"),
        (minimal(name=""), "upstream.nodes[0].name", "is required"),
        (minimal(api_key="sk-literal"), 'upstream.nodes[0] ("a").api_key', "environment variable"),
        (minimal(api_key="${NOPE_NOT_SET}"), 'upstream.nodes[0] ("a").api_key', "NOPE_NOT_SET is not set"),
        (minimal(models={"*": 3}), 'upstream.nodes[0] ("a").models.*', "expected a model name"),
        (
            minimal(checks={"active": {"healthy": {"successes": 0}}}),
            'upstream.nodes[0] ("a").checks.active.healthy.successes',
            ">= 1",
        ),
        (
            minimal(checks={"passive": {"unhealthy": {"http_statuses": [999]}}}),
            'upstream.nodes[0] ("a").checks.passive.unhealthy.http_statuses[0]',
            "HTTP status",
        ),
        (
            minimal(checks={"active": {"http_path": "v1/models"}}),
            'upstream.nodes[0] ("a").checks.active.http_path',
            'start with "/"',
        ),
        ({"upstream": {"nodes": []}}, "upstream.nodes", "no nodes"),
        ({}, "upstream.nodes", "no nodes"),
        ({**minimal(), "server": {"listen": "8787"}}, "server.listen", "host:port"),
        ({**minimal(), "server": {"listen": "127.0.0.1:99999"}}, "server.listen", "host:port"),
        ({**minimal(), "extra": 1}, "extra", "unknown key"),
        ({"upstream": {**minimal()["upstream"], "type": "chash"}}, "upstream.type", "roundrobin"),
        ({"upstream": {**minimal()["upstream"], "retries": -1}}, "upstream.retries", ">= 0"),
        (
            {"upstream": {**minimal()["upstream"], "timeout": {"read": "fast"}}},
            "upstream.timeout.read",
            "expected an integer or a number",
        ),
    ],
)
def test_every_mistake_names_file_key_and_problem(data: dict, key: str, words: str) -> None:
    error = error_of(data)
    assert error.file == "cfg.toml"
    assert error.key == key
    assert words in error.message
    assert str(error).startswith(f"cfg.toml: {key}: ")


def test_empty_env_var_is_an_error() -> None:
    error = error_of(minimal(), {"OPENAI_API_KEY": " ", "DEEPSEEK_API_KEY": "x"})
    assert error.key == 'upstream.nodes[0] ("a").api_key' and "empty" in error.message


def test_load_reports_toml_syntax_and_missing_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[upstream\n")
    with pytest.raises(ConfigError, match="invalid TOML") as info:
        load(bad, ENV)
    assert info.value.file == str(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load(tmp_path / "missing.toml", ENV)


def test_discovery_order(tmp_path: Path) -> None:
    home = tmp_path / "home"
    user = home / ".config" / "llm-sidecar" / "llm-sidecar.toml"
    user.parent.mkdir(parents=True)
    user.write_text("")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {"HOME": str(home)}
    assert discover(None, env, cwd) == user
    (cwd / "llm-sidecar.toml").write_text("")
    assert discover(None, env, cwd) == cwd / "llm-sidecar.toml"
    assert discover(None, {**env, "LLM_SIDECAR_CONFIG": "/x.toml"}, cwd) == Path("/x.toml")
    assert discover("/y.toml", {**env, "LLM_SIDECAR_CONFIG": "/x.toml"}, cwd) == Path("/y.toml")
    user.unlink()
    (cwd / "llm-sidecar.toml").unlink()
    with pytest.raises(ConfigError, match="llm-sidecar init"):
        discover(None, env, cwd)


def test_control_socket_default(tmp_path: Path) -> None:
    assert control_socket_path(None, env={"XDG_RUNTIME_DIR": str(tmp_path)}) == tmp_path / "llm-sidecar.sock"
    assert control_socket_path(None, env={"HOME": "/h"}) == Path("/h/.llm-sidecar/control.sock")
    assert control_socket_path(None, "/o.sock", env={}) == Path("/o.sock")


def test_credentials_in_a_url_are_refused_without_being_echoed() -> None:
    error = error_of(minimal(url="https://me:sk-secret@x.com"))
    assert "sk-secret" not in str(error)


def test_a_node_url_with_v1_at_the_end_is_taken_as_its_base() -> None:
    data = minimal()
    data["upstream"]["nodes"][0]["url"] = "https://openrouter.ai/api/v1/"
    node = parse(data, "cfg.toml", ENV).upstream.nodes[0]
    assert node.url == "https://openrouter.ai/api" and node.url_had_v1
    data["upstream"]["nodes"][0]["url"] = "https://example.com/v1beta"  # only a whole /v1 segment
    assert parse(data, "cfg.toml", ENV).upstream.nodes[0].url == "https://example.com/v1beta"


def test_a_node_can_turn_its_active_checks_off() -> None:
    data = {
        "upstream": {
            "checks": {"active": {"interval": 3}, "passive": {}},
            "nodes": [
                {"name": "a", "url": "http://a.invalid"},
                {"name": "b", "url": "http://b.invalid", "checks": {"active": False}},  # no GET /v1/models there
            ],
        }
    }
    a, b = parse(data, "<test>", env={}).upstream.nodes
    assert a.checks.active is not None and a.checks.active.interval == 3 and a.checks.passive is not None
    assert b.checks.active is None and b.checks.passive == a.checks.passive
    data["upstream"]["nodes"][1]["checks"] = {"active": True}
    with pytest.raises(ConfigError, match=r"checks\.active: expected a table, or false"):
        parse(data, "<test>", env={})
