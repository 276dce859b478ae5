"""Hostile config files: every one is refused by `check`, `run` and `reload` in one line naming the
file, the key path and the problem (never a traceback, never a 500), and a fuzzer checks that
`load` can only return a Config or raise a ConfigError of one printable line per problem."""

from __future__ import annotations

import asyncio
import copy
import ctypes
import datetime
import math
import os
import re
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.config.load import load
from sidecar.config.plan import render as render_plan
from sidecar.config.problems import MAX_ERRORS, ConfigError
from sidecar.config.schema import Config
from sidecar.config.template import render as render_template

from .conftest import cli, cli_env, two_node_config

REPO = Path(__file__).resolve().parent.parent
BIG = "1" + "0" * 400  # fits Python's int-to-str limit, but not a float, nor any sane setting


def good_data(control_socket: str = "/tmp/llm-sidecar-hostile.sock") -> dict[str, Any]:
    config = two_node_config("http://127.0.0.1:1", "http://127.0.0.1:2", checks={"active": {}, "passive": {}})
    return {"server": {"listen": "127.0.0.1:1", "control_socket": control_socket}, **config}


def good_text(control_socket: str = "/tmp/llm-sidecar-hostile.sock") -> str:
    return tomli_w.dumps(good_data(control_socket))


def edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# name -> (how to break a good file, key path, words of the message)
CRASHERS: dict[str, tuple[Any, str, str]] = {
    "weight of 400 digits": (
        lambda t: edit(t, "weight = 100", f"weight = {BIG}"),
        'upstream.nodes[0] ("primary").weight',
        "<=",
    ),
    "retries of 400 digits": (lambda t: edit(t, "retries = 1", f"retries = {BIG}"), "upstream.retries", "<="),
    "retry_timeout of 400 digits": (
        lambda t: edit(t, "retries = 1", f"retries = 1\nretry_timeout = {BIG}"),
        "upstream.retry_timeout",
        "<=",
    ),
    "integer of 5000 digits": (lambda t: edit(t, "weight = 100", "weight = 1" + "0" * 5000), "", "invalid TOML"),
    "unclosed IPv6 URL": (
        lambda t: re.sub(r'\nurl = "[^"]*"', '\nurl = "http://[::1"', t, count=1),
        'upstream.nodes[0] ("primary").url',
        "not a valid URL",
    ),
    "arrays 5000 deep": (lambda t: "deep = " + "[" * 5000 + "]" * 5000 + "\n" + t, "", "nested too deeply"),
    "NUL in control_socket": (
        lambda t: edit(t, 'control_socket = "/tmp/', 'control_socket = "/tmp/\\u0000'),
        "server.control_socket",
        "control characters",
    ),
}

NON_FINITE_KEYS = [
    ("upstream.timeout", "connect"),
    ("upstream.timeout", "send"),
    ("upstream.timeout", "read"),
    ("upstream", "retry_timeout"),
    ("upstream.checks.active", "interval"),
    ("upstream.checks.active", "timeout"),
    ("upstream.checks.passive", "base_ejection_time"),
    ("upstream.checks.passive", "max_ejection_time"),
    ("server", "header_timeout"),
    ("server", "body_timeout"),
    ("server", "keepalive_timeout"),
]


def one_line_error(result: Any, path: Path, key: str, words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    prefix = f"llm-sidecar: config error: {path}: {key}: " if key else f"llm-sidecar: config error: {path}: "
    assert result.stderr.startswith(prefix), result.stderr
    assert words in result.stderr


def test_crashing_configs_are_one_line_errors_in_check_and_run(tmp_path: Path) -> None:
    socket_dir = tmp_path / "never-made"
    cases = []
    for i, (breaks, key, words) in enumerate(CRASHERS.values()):
        path = tmp_path / f"hostile{i}.toml"
        path.write_text(breaks(good_text(str(socket_dir / "ctl.sock"))))
        cases += [(command, path, key, words) for command in ("check", "run")]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda case: cli(case[0], "-c", str(case[1]), timeout=20), cases))
    for (_command, path, key, words), result in zip(cases, results, strict=True):
        one_line_error(result, path, key, words)
    assert not socket_dir.exists()  # nothing made for a config that was refused


async def test_reload_of_a_crashing_config_is_a_400_with_the_error(fakes, sidecar) -> None:
    car = await sidecar(two_node_config(await fakes("primary"), await fakes("backup")))
    good = car.config_path.read_text()
    async with car.control() as control:
        for name, (breaks, key, words) in CRASHERS.items():
            car.config_path.write_text(breaks(good))
            r = await control.post("/v1/reload")
            assert r.status_code == 400, (name, r.text)
            error = r.json()["error"]
            assert (error["type"], error["file"], error["key"]) == ("config_error", str(car.config_path), key), name
            assert words in error["message"] and "\n" not in error["message"]
        shown = await asyncio.to_thread(cli, "reload", "--control-socket", str(car.socket))
        assert shown.returncode == 1 and shown.stderr.count("\n") == 1 and "Traceback" not in shown.stderr
        assert (await car.status())["serving"] == "primary"  # the running config stayed
        car.config_path.write_text(good)
        assert (await control.post("/v1/reload")).status_code == 200
    assert car.proc.poll() is None
    assert "Traceback" not in car.log()


def with_value(table: str, key: str, value: str) -> str:
    """The good file with `table.key` set to `value`, written as TOML source (tomli_w cannot write nan)."""
    data = good_data()
    target = data
    for part in table.split("."):
        target = target.setdefault(part, {})
    target[key] = 123456.789
    return tomli_w.dumps(data).replace("123456.789", value)


def test_non_finite_numbers_and_urls_with_spaces_or_controls_are_refused(tmp_path: Path) -> None:
    cases = [
        (with_value(table, key, value), f"{table}.{key}", "must be a finite number")
        for table, key in NON_FINITE_KEYS
        for value in ("inf", "-inf", "nan")
    ]
    for url in ("http://a.b/x y", "http://a.b\\r\\nX: y", "http://a.b\\tc", " http://a.b", "http://a.b/\\u0000"):
        cases.append(
            (
                edit(good_text(), '"http://127.0.0.1:1"', f'"{url}"'),
                'upstream.nodes[0] ("primary").url',
                "printable ASCII",
            )
        )
    # Through `load` (what check, run and reload call) for all of them, through the CLI for a few.
    for i, (body, key, words) in enumerate(cases):
        path = tmp_path / f"c{i}.toml"
        path.write_text(body)
        try:
            load(path, {"PRIMARY_KEY": "a", "BACKUP_KEY": "b"})
        except ConfigError as exc:
            assert (exc.key, words in exc.message, "\n" in str(exc)) == (key, True, False), (body, str(exc))
        else:
            raise AssertionError(f"accepted {key}: {body}")
    for i in (2, len(cases) - 4, len(cases) - 1):
        one_line_error(cli("check", "-c", str(tmp_path / f"c{i}.toml")), tmp_path / f"c{i}.toml", *cases[i][1:])


def test_server_and_upstream_limits_are_checked_planned_templated_and_documented(tmp_path: Path) -> None:
    keys = ["max_header_bytes", "header_timeout", "body_timeout", "keepalive_timeout", "max_connections"]
    keys += ["max_event_subscribers", "max_response_bytes"]
    template = render_template()
    reference = REPO.joinpath("docs", "configuration.md").read_text()
    full_file = reference.split("## The full file, with every default", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
    for key in keys:
        assert re.search(rf"^# {key}: \S", template, re.M), key  # a one-line comment in the starter config
        assert re.search(rf"^{key} = \d+(\.\d+)? +# \S", full_file, re.M), key
    path = tmp_path / "limits.toml"
    path.write_text(
        good_text()
        .replace(
            "[server]\n",
            "[server]\nmax_header_bytes = 2048\nheader_timeout = 3\nbody_timeout = 4\nkeepalive_timeout = 5\n"
            "max_connections = 6\nmax_event_subscribers = 7\n",
        )
        .replace("[upstream]\n", "[upstream]\nmax_response_bytes = 4096\n")
    )
    plan = cli("check", "-c", str(path))
    assert plan.returncode == 0, plan.stderr
    for shown in ("max_header_bytes 2048", "header_timeout 3s", "body_timeout 4s", "keepalive_timeout 5s"):
        assert shown in plan.stdout
    for shown in ("max_connections 6", "max_event_subscribers 7", "max_response_bytes 4096"):
        assert shown in plan.stdout
    big = path.read_text().replace("max_connections = 6", f"max_connections = {BIG}")
    path.write_text(big.replace("header_timeout = 3", "header_timeout = nan"))
    # Both problems at once, in file order.
    both = cli("check", "-c", str(path))
    assert both.returncode == 2 and "Traceback" not in both.stderr
    assert both.stderr.splitlines() == [
        f"llm-sidecar: config error: {path}: server.header_timeout: must be a finite number, got nan",
        f"llm-sidecar: config error: {path}: server.max_connections: must be <= 1000000, got an integer of about 401 digits",
    ]


# --------------------------------------------------------------------------- fuzz


def key_names(doc: Any) -> set[str]:
    if isinstance(doc, list):
        return set().union(*map(key_names, doc)) if doc else set()
    return set(doc).union(*map(key_names, doc.values())) if isinstance(doc, dict) else set()


REAL_KEYS = sorted(key_names(tomllib.loads(render_template())) | {"checks", "api_key"})
ENV = {"K": "sk-test", "EMPTY": "", "OPENAI_API_KEY": "sk-a", "DEEPSEEK_API_KEY": "sk-b"}
# The starter config (every key of [server] and [upstream]), with a node that overrides checks.
BASE: dict[str, Any] = tomllib.loads(render_template())
BASE["server"]["api_key"] = "${K}"
BASE["upstream"]["nodes"][0]["checks"] = copy.deepcopy(BASE["upstream"]["checks"])
HOSTILE_STRINGS = [
    "http://[::1",
    "http://a.b/x y",
    "http://a.b\r\nX: y",
    "http://a.b#",
    "${K}",
    "${EMPTY}",
    "${NOPE}",
    "/tmp/x\x00y",
    "~/x.sock",
    "relative.sock",
    "/" + "x" * 200,
    "127.0.0.1:8787",
    "[::1]:99999",
    "roundrobin",
    "/v1/models\r\n",
    "\u2028\x85\x1b[31m",
]
SPECIAL: list[Any] = [math.inf, -math.inf, math.nan, 10**400, -(10**400), 2**63, 2**31, 1e308, 1e-9, 0, -1, -0.0]
SPECIAL += [True, [], {}, [[[[]]]], [10**400], [math.nan], {"": {}}, datetime.time(), *HOSTILE_STRINGS]
keys = st.one_of(st.sampled_from(REAL_KEYS), st.text(max_size=6))
scalars = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(),  # inf, -inf, nan included
    st.text(max_size=12),  # control characters included
    st.sampled_from(SPECIAL),
    st.datetimes(timezones=st.none() | st.just(datetime.UTC)),
    st.dates(),
    st.times(),
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4), max_leaves=12
)


def tables(doc: Any) -> list[dict[str, Any]]:
    """Every table in a document, nested ones and those in arrays included."""
    found = [doc] if isinstance(doc, dict) else []
    children = doc.values() if isinstance(doc, dict) else doc if isinstance(doc, list) else []
    for child in children:
        found += tables(child)
    return found


@st.composite
def mutated(draw: st.DrawFn) -> dict[str, Any]:
    """The valid base with a few keys set to anything, added or removed: reaches every validator."""
    doc = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        table = draw(st.sampled_from(tables(doc)))
        action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add"]))
        # Copies: a drawn value (SPECIAL holds shared lists and dicts) may be mutated by a later round,
        # and hypothesis needs every example's data to be its own.
        if action == "add" or not table:
            table[draw(keys)] = copy.deepcopy(draw(values))
        elif action == "delete":
            del table[draw(st.sampled_from(sorted(table)))]
        else:  # mostly: a real key in its real place, with a hostile or any value
            table[draw(st.sampled_from(sorted(table)))] = copy.deepcopy(draw(st.sampled_from(SPECIAL) | values))
    return doc


def nested(depth: int) -> str:
    return "x = " + "[" * depth + "]" * depth + "\n"


texts = st.one_of(
    mutated().map(tomli_w.dumps),
    mutated().map(tomli_w.dumps),
    mutated().map(tomli_w.dumps),
    st.dictionaries(keys, values, max_size=4).map(tomli_w.dumps),
    st.text(max_size=200),
    st.integers(1, 6000).map(nested),
    st.integers(1, 6000).map(lambda n: "[server]\nmax_connections = " + "9" * n + "\n"),
    st.tuples(mutated().map(tomli_w.dumps), st.integers(0, 2000), st.text(max_size=5)).map(
        lambda t: t[0][: t[1]] + t[2] + t[0][t[1] :]
    ),
)


@pytest.fixture(scope="module")
def fuzz_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file rewritten per example (module-scoped: hypothesis runs many examples per test call)."""
    return tmp_path_factory.mktemp("fuzz") / "fuzz.toml"


def load_or_one_line_error(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        config = load(path, ENV)
    except ConfigError as exc:
        # One line per problem (every one in the file, bounded), each printable and naming the file.
        lines = str(exc).split("\n")
        assert lines == exc.lines() and 1 <= len(lines) <= MAX_ERRORS + 1, lines
        assert all(line.isprintable() and line.startswith(f"{path}: ") for line in lines), lines
        assert exc.summary().isprintable()
        return
    assert isinstance(config, Config)
    assert all(line.isprintable() for line in render_plan(config).splitlines())  # `check` prints it


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(texts)
def test_fuzz_config_text_loads_or_raises_one_line_config_error(fuzz_file: Path, text: str) -> None:
    load_or_one_line_error(fuzz_file, text.encode("utf-8"))


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_config_bytes_loads_or_raises_one_line_config_error(fuzz_file: Path, data: bytes) -> None:
    load_or_one_line_error(fuzz_file, data)


def leaves(doc: Any, where: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every value that is not a table (arrays of tables are walked into)."""
    if isinstance(doc, dict):
        return [p for k, v in doc.items() for p in leaves(v, (*where, k))]
    if isinstance(doc, list) and doc and all(isinstance(v, dict) for v in doc):
        return [p for i, v in enumerate(doc) for p in leaves(v, (*where, i))]
    return [where]


def test_every_key_with_every_hostile_value_loads_or_raises_one_line_error(fuzz_file: Path) -> None:
    """The systematic half of the fuzz: each key of the base, in its place, set to each hostile value."""
    paths = leaves(BASE)
    assert len(paths) > 50
    for where in paths:
        for value in SPECIAL:
            doc = copy.deepcopy(BASE)
            target = doc
            for step in where[:-1]:
                target = target[step]
            target[where[-1]] = value
            load_or_one_line_error(fuzz_file, tomli_w.dumps(doc).encode())


def test_fuzz_base_document_is_valid(fuzz_file: Path) -> None:
    """The mutations start from a config that loads, so they probe each validator, not the first error."""
    fuzz_file.write_text(tomli_w.dumps(BASE))
    assert isinstance(load(fuzz_file, ENV), Config)


def test_cli_socket_lookup_survives_hostile_files(tmp_path: Path) -> None:
    """The control commands read `[server].control_socket` leniently from the same files: one line each."""
    env = cli_env(HOME=str(tmp_path))
    env.pop("XDG_RUNTIME_DIR", None)
    paths = []
    for i, (breaks, _key, _words) in enumerate(CRASHERS.values()):
        paths.append(tmp_path / f"h{i}.toml")
        paths[-1].write_text(breaks(good_text(str(tmp_path / "none.sock"))))
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda p: cli("status", "-c", str(p), env=env, timeout=20), paths))
    for result in results:
        assert result.returncode == 1 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_cli_finds_the_socket_of_a_config_broken_elsewhere(tmp_path) -> None:
    # `reload` after a bad edit must reach the running sidecar (and report the edit), not the default socket.
    from sidecar.control.client import find_socket

    path = tmp_path / "broken.toml"
    path.write_text('[server\ncontrol_socket = "/run/llm/ctl.sock"  # ours\n')
    assert str(find_socket(None, str(path))) == "/run/llm/ctl.sock"


def without_file_permission_bypass() -> None:
    """In the child, before exec: as root, drop the capabilities that read any file whatever its mode
    (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH) from the bounding set, so a mode-000 file is unreadable there too."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):  # PR_CAPBSET_DROP is 24
        if libc.prctl(24, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_a_config_path_that_is_no_readable_file_is_one_line_error_naming_it(tmp_path: Path) -> None:
    """A directory (or a symlink to one), an unreadable file, a FIFO, a dangling symlink or binary garbage:
    `check` and `run` exit 2 with one line naming the file; `reload` and `status` (no sidecar there) one line."""
    (tmp_path / "a-directory").mkdir()
    (tmp_path / "to-a-directory").symlink_to(tmp_path / "a-directory")
    (tmp_path / "unreadable.toml").write_text(good_text())
    (tmp_path / "unreadable.toml").chmod(0)
    os.mkfifo(tmp_path / "fifo.toml")
    (tmp_path / "dangling.toml").symlink_to(tmp_path / "never-written.toml")
    (tmp_path / "garbage.toml").write_bytes(bytes(range(256)) * 4)
    words = {
        "a-directory": "a directory, not a file",
        "to-a-directory": "a directory, not a file",
        "unreadable.toml": "Permission denied",
        "fifo.toml": "not a regular file",
        "dangling.toml": f"a symlink to {tmp_path / 'never-written.toml'}, which does not exist",
        "garbage.toml": "not UTF-8",
    }
    env = cli_env(HOME=str(tmp_path))
    env.pop("XDG_RUNTIME_DIR", None)

    def run(args: tuple[str, str]) -> subprocess.CompletedProcess[str]:
        command, name = args
        return subprocess.run(
            [sys.executable, "-m", "sidecar", command, "-c", str(tmp_path / name)],
            capture_output=True,
            text=True,
            env=env,
            timeout=20,
            preexec_fn=without_file_permission_bypass,
        )

    cases = [(command, name) for name in words for command in ("check", "run", "reload", "status")]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, cases))
    for (command, name), result in zip(cases, results, strict=True):
        if command in ("check", "run"):
            one_line_error(result, tmp_path / name, "", words[name])
        else:  # they only look for the control socket in the file: none runs, which is the one line
            assert (result.returncode, result.stderr.count("\n")) == (1, 1), (command, name, result.stderr)
            assert "Traceback" not in result.stderr and "no llm-sidecar is running" in result.stderr, (command, name)
