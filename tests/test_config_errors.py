"""Every problem in a config file is reported at once (issue 15): in file order, bounded, with the
closest known key for a typo and nodes named by name in key paths; `check` and `run` print them all."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from sidecar.config.load import load, parse
from sidecar.config.problems import MAX_ERRORS, ConfigError, ConfigProblem

from .conftest import cli, cli_env, two_node_config

ENV = {"OPENAI_API_KEY": "sk-openai", "DEEPSEEK_API_KEY": "sk-deepseek"}

# Five problems, one of each kind, in this order in the file; neither key variable set.
BROKEN = """\
[server]
listen = "8787"
max_conections = 10

[upstream]
retires = 3

[[upstream.nodes]]
name = "openai"
url = "https://api.openai.com"
api_key = "${OPENAI_API_KEY}"
weight = 0

[[upstream.nodes]]
name = "backup"
url = "https://api.deepseek.com/v1"
api_key = "${DEEPSEEK_API_KEY}"
weight = "heavy"
"""

BROKEN_LINES = [
    'server.listen: expected "host:port" (e.g. "127.0.0.1:8787"), got \'8787\'',
    'server.max_conections: unknown key (did you mean "max_connections"?)',
    'upstream.retires: unknown key (did you mean "retries"?)',
    'upstream.nodes[0] ("openai").api_key: environment variable OPENAI_API_KEY is not set',
    'upstream.nodes[0] ("openai").weight: must be >= 1, got 0',
    'upstream.nodes[1] ("backup").api_key: environment variable DEEPSEEK_API_KEY is not set',
    "upstream.nodes[1] (\"backup\").weight: expected an integer, got a string ('heavy')",
]


def nodes(*extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "upstream": {
            "nodes": [
                {
                    "name": "a",
                    "url": "http://127.0.0.1:1",
                    "api_key": "${OPENAI_API_KEY}",
                    **(extra[0] if extra else {}),
                },
                {"name": "b", "url": "http://127.0.0.1:2", "api_key": "${DEEPSEEK_API_KEY}", **(extra[1:2] or [{}])[0]},
            ]
        }
    }


def errors_of(data: dict[str, Any], env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(data, "cfg.toml", ENV if env is None else env)
    return info.value


def test_every_problem_of_a_file_is_reported_at_once_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(BROKEN)
    with pytest.raises(ConfigError) as info:
        load(path, {})
    error = info.value
    assert [f"{p.key}: {p.message}" for p in error.errors] == BROKEN_LINES
    assert str(error).split("\n") == error.lines() == [f"{path}: {line}" for line in BROKEN_LINES]
    assert error.count == len(BROKEN_LINES) and error.hidden == 0
    # The first problem stays where callers always found it.
    assert (error.file, error.key) == (str(path), "server.listen") and "host:port" in error.message
    assert error.errors[0] == ConfigProblem(str(path), "server.listen", error.message)


def test_check_and_run_print_every_problem_one_per_line_and_fail(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(BROKEN)
    env = {k: v for k, v in cli_env().items() if k not in ENV}
    for command in ("check", "run"):
        result = cli(command, "-c", str(path), env=env)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr and result.stdout == ""
        # The file's own problems first; the keys not set in this shell after them, apart (issue 24).
        unset = [line for line in BROKEN_LINES if "is not set" in line]
        assert result.stderr.splitlines() == [
            *(f"llm-sidecar: config error: {path}: {line}" for line in BROKEN_LINES if line not in unset),
            *(f"llm-sidecar: key not set: {path}: {line}" for line in unset),
            "llm-sidecar: `run` reads keys from the environment it starts in, or from [server] env_file: set them there",
        ]


def test_missing_key_variables_of_two_nodes_are_reported_together() -> None:
    error = errors_of(nodes(), env={})
    assert [(p.key, p.message) for p in error.errors] == [
        ('upstream.nodes[0] ("a").api_key', "environment variable OPENAI_API_KEY is not set"),
        ('upstream.nodes[1] ("b").api_key', "environment variable DEEPSEEK_API_KEY is not set"),
    ]
    assert "sk-" not in str(error)


@pytest.mark.parametrize(
    ("data", "key", "hint"),
    [
        ({"upstream": {**nodes()["upstream"], "retires": 2}}, "upstream.retires", "retries"),
        ({**nodes(), "sever": {}}, "sever", "server"),
        (nodes({"wieght": 2}), 'upstream.nodes[0] ("a").wieght', "weight"),
        (nodes({"timeout": {"first_tokn": 2}}), 'upstream.nodes[0] ("a").timeout.first_tokn', "first_token"),
        (
            {"upstream": {**nodes()["upstream"], "checks": {"passive": {"unhealthy": {"http_statuse": [500]}}}}},
            "upstream.checks.passive.unhealthy.http_statuse",
            "http_statuses",
        ),
    ],
)
def test_an_unknown_key_names_the_closest_known_key_of_its_table(data: dict[str, Any], key: str, hint: str) -> None:
    (problem,) = errors_of(data).errors
    assert problem.key == key
    assert problem.message == f'unknown key (did you mean "{hint}"?)'


def test_an_unknown_key_like_no_known_one_gets_no_hint() -> None:
    (problem,) = errors_of(nodes({"zzzzzz": 1})).errors
    assert problem.message == "unknown key"


def test_key_paths_name_a_node_once_its_name_is_valid_and_new() -> None:
    error = errors_of(nodes({"weight": 0}, {"weight": 0}))
    assert [p.key for p in error.errors] == ['upstream.nodes[0] ("a").weight', 'upstream.nodes[1] ("b").weight']
    # A name that is missing, bad or taken names nothing: the index alone locates the node.
    error = errors_of(nodes({"name": "a b", "weight": 0}, {"name": "", "weight": 0}))
    assert [p.key for p in error.errors] == [
        "upstream.nodes[0].name",
        "upstream.nodes[0].weight",
        "upstream.nodes[1].name",
        "upstream.nodes[1].weight",
    ]
    error = errors_of(nodes({}, {"name": "a", "weight": 0}))
    assert [(p.key, p.message) for p in error.errors] == [
        ("upstream.nodes[1].name", "duplicate node name 'a'"),
        ("upstream.nodes[1].weight", "must be >= 1, got 0"),
    ]


def test_problems_are_ordered_as_in_the_file_not_as_the_code_reads_them() -> None:
    # [upstream] first and, inside the node, weight before url: the order the keys are written in.
    data: dict[str, Any] = {
        "upstream": {
            "nodes": [{"name": "a", "weight": 0, "priority": "high", "url": "ftp://x"}],
            "retry": {"max_backoff": 0.1},
        },
        "server": {"max_connections": 0},
    }
    error = errors_of(data)
    assert [p.key for p in error.errors] == [
        'upstream.nodes[0] ("a").weight',
        'upstream.nodes[0] ("a").priority',
        'upstream.nodes[0] ("a").url',
        "upstream.retry.max_backoff",
        "server.max_connections",
    ]


def test_a_bad_value_never_yields_a_config_and_later_keys_are_still_checked() -> None:
    # A bad type for read is read as the default: first_token is compared with nothing it did not set.
    error = errors_of({"upstream": {**nodes()["upstream"], "timeout": {"read": "slow", "first_token": -1}}})
    assert [(p.key, p.message) for p in error.errors] == [
        ("upstream.timeout.read", "expected an integer or a number, got a string ('slow')"),
        ("upstream.timeout.first_token", "must be >= 0.001, got -1"),
    ]
    # A bad [upstream] or node list is one problem, not also "no nodes".
    assert [p.key for p in errors_of({"upstream": 3}).errors] == ["upstream"]
    assert [p.key for p in errors_of({"upstream": {"nodes": 3}}).errors] == ["upstream.nodes"]
    error = errors_of({"upstream": {"nodes": [3, {"name": "ok", "url": "http://x", "weight": 0}]}})
    assert [p.key for p in error.errors] == ["upstream.nodes[0]", 'upstream.nodes[1] ("ok").weight']


def test_the_report_is_bounded_and_says_how_many_more() -> None:
    data: dict[str, Any] = nodes()
    data["upstream"]["nodes"] += [{"name": f"n{i}", "url": "http://x", "weight": 0} for i in range(70)]
    error = errors_of(data)
    assert len(error.errors) == MAX_ERRORS and error.hidden == 20 and error.count == 70
    assert error.errors[0].key == 'upstream.nodes[2] ("n0").weight'
    lines = str(error).split("\n")
    assert len(lines) == MAX_ERRORS + 1 and lines[-1] == "cfg.toml: ... and 20 more errors"
    assert error.summary() == f"{error.errors[0].line()} (and 69 more errors; `llm-sidecar check` lists them all)"
    assert error.to_dict()["more"] == 20 and len(error.to_dict()["errors"]) == MAX_ERRORS


def test_thousands_of_unknown_keys_are_bounded_and_quick() -> None:
    data: dict[str, Any] = nodes({f"k{i:05}": i for i in range(20000)})
    error = errors_of(data)
    assert error.count == 20000 and len(error.errors) == MAX_ERRORS
    assert error.errors[0].key == 'upstream.nodes[0] ("a").k00000'


def test_one_problem_reads_as_before() -> None:
    error = errors_of(nodes({"weight": 0}))
    assert str(error) == 'cfg.toml: upstream.nodes[0] ("a").weight: must be >= 1, got 0' == error.summary()
    assert error.to_dict() == {
        "file": "cfg.toml",
        "key": 'upstream.nodes[0] ("a").weight',
        "message": "must be >= 1, got 0",
        "errors": [{"file": "cfg.toml", "key": 'upstream.nodes[0] ("a").weight', "message": "must be >= 1, got 0"}],
        "more": 0,
    }


def test_values_stay_unechoed_and_lines_stay_one_line_with_many_problems() -> None:
    env = {"OPENAI_API_KEY": "sk-x\nInjected: 1", "DEEPSEEK_API_KEY": "  "}
    data = nodes({"url": "https://me:sk-secret@x.com", "models": {"*": "a\nb"}}, {"name": "b\n\x1b[31m"})
    error = errors_of(data, env)
    text = str(error)
    assert "sk-secret" not in text and "sk-x" not in text and "\x1b" not in text
    assert all(line.isprintable() for line in text.split("\n"))
    assert len(error.errors) == 5, text


async def test_reload_answers_with_every_problem_and_keeps_the_running_config(fakes: Any, sidecar: Any) -> None:
    car = await sidecar(two_node_config(await fakes("primary"), await fakes("backup")))
    good = car.config_path.read_text()
    car.config_path.write_text(good.replace("weight = 100", "weight = 0").replace("weight = 1\n", 'weight = "x"\n'))
    first = f'{car.config_path}: upstream.nodes[0] ("primary").weight: must be >= 1, got 0'
    second = f"{car.config_path}: upstream.nodes[1] (\"backup\").weight: expected an integer, got a string ('x')"
    async with car.control() as control:
        r = await control.post("/v1/reload")
        assert r.status_code == 400
        error = r.json()["error"]
        # As before: the first problem's file and key, a one-line message; and now every problem.
        assert (error["type"], error["file"], error["key"]) == (
            "config_error",
            str(car.config_path),
            'upstream.nodes[0] ("primary").weight',
        )
        assert error["message"] == f"{first} (and 1 more error; `llm-sidecar check` lists them all)"
        assert [f"{e['file']}: {e['key']}: {e['message']}" for e in error["errors"]] == [first, second]
        assert error["more"] == 0
    shown = await asyncio.to_thread(cli, "reload", "--control-socket", str(car.socket))
    assert shown.returncode == 1 and shown.stderr.splitlines() == [f"llm-sidecar: {first}", f"llm-sidecar: {second}"]
    event = await config_event(car)
    assert event["ok"] is False and event["error"]["key"] == 'upstream.nodes[0] ("primary").weight'
    assert len(event["error"]["errors"]) == 2
    assert (await car.node("primary"))["weight"] == 100


async def config_event(car: Any) -> dict[str, Any]:
    """The first `config` event of the replayed history."""
    async with car.control() as control, control.stream("GET", "/v1/events") as r:
        async for line in r.aiter_lines():
            event = json.loads(line)
            if event["type"] == "config":
                return dict(event)
    raise AssertionError("no config event")


def test_the_cli_prints_a_refused_reload_one_problem_per_line_whatever_the_answer_holds() -> None:
    from sidecar.control.client import ControlError

    problems = [{"file": "f", "key": f"k{i}", "message": "bad\nline"} for i in range(60)]
    error = ControlError(400, {"error": {"message": "f: k0: bad (and 59 more)", "errors": problems, "more": 10}})
    assert error.lines == [f"f: k{i}: bad\\nline" for i in range(MAX_ERRORS)] + ["... and 10 more errors"]
    assert str(error) == "f: k0: bad (and 59 more)"
    # Not a list of problems (an older or another peer): the message alone.
    for odd in ([{"file": "f"}, {"file": "f", "key": "k", "message": "m"}], "x", [1, 2], None):
        assert ControlError(400, {"error": {"message": "m\n", "errors": odd}}).lines == ["m\\n"]
