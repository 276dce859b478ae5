"""The control socket against a real `llm-sidecar run`, and the CLI commands that use it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import stat
import subprocess
import sys

import httpx
import tomli_w

from .conftest import NODE_KEYS, chat, cli, cli_env, two_node_config

CHAT = "/v1/chat/completions"


async def send_many(client: httpx.AsyncClient, url: str, n: int, concurrency: int = 10) -> list[httpx.Response]:
    sem = asyncio.Semaphore(concurrency)

    async def one() -> httpx.Response:
        async with sem:
            return await client.post(url + CHAT, json=chat())

    return await asyncio.gather(*(one() for _ in range(n)))


async def test_status_shape_and_figures_move_with_traffic(fakes, sidecar, client) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    car = await sidecar(two_node_config(primary, backup, checks={"active": {"interval": 0.2}, "passive": {}}))
    before = await car.status()
    assert before["serving"] == "primary"
    assert before["sidecar"]["pid"] == car.proc.pid
    assert before["sidecar"]["config_path"] == str(car.config_path)
    assert before["sidecar"]["listen"] == car.url + "/v1"
    node = before["nodes"][0]
    assert {
        "name",
        "url",
        "priority",
        "weight",
        "state",
        "manual",
        "reason",
        "changed_at",
        "active",
        "passive",
        "traffic",
    } <= set(node)
    assert node["traffic"]["requests"] == 0
    await send_many(client, car.url, 20)
    await asyncio.sleep(0.3)
    after = await car.node("primary")
    assert after["traffic"]["requests"] == 20 and after["traffic"]["errors"] == 0
    assert (
        after["traffic"]["rps"] > 0
        and after["traffic"]["p50_ms"] > 0
        and after["traffic"]["p95_ms"] >= after["traffic"]["p50_ms"]
    )
    assert after["traffic"]["tokens_in"] == 7 * 20 and after["traffic"]["tokens_out"] == 5 * 20
    assert after["active"]["last_probe"]["status"] == 200
    assert after["active"]["counters"]["successes"] >= 1


async def test_event_stream_replays_then_delivers_request_and_health_in_order(fakes, sidecar, client) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    car = await sidecar(two_node_config(primary, backup, checks={"passive": {"unhealthy": {"http_failures": 1}}}))
    await send_many(client, car.url, 3)
    primary.set(fail_rate=1.0)
    await client.post(car.url + CHAT, json=chat())
    events: list[dict] = []
    async with car.control() as control, control.stream("GET", "/v1/events") as r:
        async for line in r.aiter_lines():
            events.append(json.loads(line))
            if len(events) == 5:
                break
    kinds = [e["type"] for e in events]
    assert kinds == ["request", "request", "request", "health", "request"]
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    health = events[3]
    assert (health["node"], health["before"], health["after"], health["reason"]) == (
        "primary",
        "healthy",
        "ejected",
        "http 500",
    )
    last = events[4]
    assert last["node"] == "backup" and [(a["node"], a["reason"]) for a in last["failed"]] == [("primary", "http 500")]
    assert last["attempts"] == 2 and last["status"] == 200 and last["stream"] is False
    assert {"id", "model", "ttfb_ms", "total_ms", "tokens_in", "tokens_out"} <= set(last)


async def test_manual_down_auto_and_failover_move_traffic(fakes, sidecar, client) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    car = await sidecar(two_node_config(primary, backup))
    async with car.control() as control:
        r = await control.post("/v1/failover")
        assert r.status_code == 200 and r.json() == {"down": "primary", "serving": "backup"}
        await send_many(client, car.url, 5)
        assert (primary.stats.chat, backup.stats.chat) == (0, 5)
        assert (await car.node("primary"))["manual"] == "down"
        r = await control.post("/v1/nodes/primary/auto")
        assert r.json()["serving"] == "primary"
        await send_many(client, car.url, 5)
        assert (primary.stats.chat, backup.stats.chat) == (5, 5)
        r = await control.post("/v1/nodes/backup/down")
        assert r.json()["manual"] == "down"
        r = await control.post("/v1/nodes/nope/down")
        assert r.status_code == 404 and "nope" in r.json()["error"]["message"]


async def test_failover_without_usable_backup_is_refused(fakes, sidecar, client) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    car = await sidecar(two_node_config(primary, backup))
    async with car.control() as control:
        await control.post("/v1/nodes/backup/down")
        r = await control.post("/v1/failover")
        assert r.status_code == 409
        assert "no other node" in r.json()["error"]["message"]
    await send_many(client, car.url, 3)
    assert (primary.stats.chat, backup.stats.chat) == (3, 0)
    assert (await car.status())["serving"] == "primary"


async def test_reload_applies_good_files_and_keeps_old_config_on_errors(fakes, sidecar, client) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    config = two_node_config(primary, backup)
    car = await sidecar(config)
    text = car.config_path.read_text()
    car.config_path.write_text(text.replace("weight = 100", "weight = 0"))
    async with car.control() as control:
        r = await control.post("/v1/reload")
        assert r.status_code == 400
        error = r.json()["error"]
        assert error["key"] == 'upstream.nodes[0] ("primary").weight' and error["file"] == str(car.config_path)
        assert (await car.node("primary"))["weight"] == 100
        assert (await client.post(car.url + CHAT, json=chat())).status_code == 200
        car.config_path.write_text(text.replace("priority = -1", "priority = 5"))
        r = await control.post("/v1/reload")
        assert r.status_code == 200 and r.json()["nodes"] == ["primary", "backup"]
    r = await client.post(car.url + CHAT, json=chat())
    assert r.headers["x-llm-sidecar-node"] == "backup"  # now the higher priority


async def test_socket_is_private_and_removed_on_exit(fakes, sidecar, tmp_path) -> None:
    car = await sidecar(two_node_config(await fakes("primary"), await fakes("backup")))
    mode = stat.S_IMODE(os.stat(car.socket).st_mode)
    assert stat.S_ISSOCK(os.stat(car.socket).st_mode) and mode == 0o600
    assert car.stop() == 0
    assert not car.socket.exists()


async def test_default_socket_directory_is_created_0700(fakes, sidecar, tmp_path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = cli_env(HOME=str(home))
    env.pop("XDG_RUNTIME_DIR", None)
    config = {**two_node_config(await fakes("primary"), await fakes("backup")), "server": {"control_socket": ""}}
    await sidecar(config, env=env)
    path = home / ".llm-sidecar" / "control.sock"
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    shown = cli("status", "--json", env=env)
    assert shown.returncode == 0 and json.loads(shown.stdout)["sidecar"]["control_socket"] == str(path)


async def test_second_run_on_a_live_socket_fails_and_stale_socket_is_replaced(fakes, sidecar, tmp_path) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    car = await sidecar(two_node_config(primary, backup))
    config = car.config_path.read_text().replace(f":{car.port}", ":1")  # another port, same socket
    other = tmp_path / "other.toml"
    other.write_text(config.replace('listen = "127.0.0.1:1"', f'listen = "127.0.0.1:{car.port + 1}"'))
    second = await asyncio.to_thread(cli, "run", "-c", str(other), timeout=20)
    assert second.returncode != 0
    assert "another llm-sidecar is running on control socket" in second.stderr
    assert "Traceback" not in second.stderr
    assert (await car.status())["sidecar"]["pid"] == car.proc.pid  # still ours

    stale = tmp_path / "stale.sock"
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(stale))
    dead.close()  # the path stays, nobody listens: a crashed sidecar's leftover
    stale_config = {**two_node_config(primary, backup), "server": {"control_socket": str(stale)}}
    revived = await sidecar(stale_config)
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(stale))) as c:
        assert (await c.get("http://x/v1/status")).json()["sidecar"]["pid"] == revived.proc.pid


async def test_stalled_event_reader_does_not_hold_up_the_proxy(fakes, sidecar, client) -> None:
    car = await sidecar(two_node_config(await fakes("primary"), await fakes("backup")))
    stuck = socket.socket(socket.AF_UNIX)
    stuck.connect(str(car.socket))
    stuck.sendall(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read a byte
    try:
        responses = await asyncio.wait_for(send_many(client, car.url, 600, concurrency=20), 120)
        assert all(r.status_code == 200 for r in responses)
        assert (await car.node("primary"))["traffic"]["requests"] == 600
    finally:
        stuck.close()


async def test_no_key_in_any_control_answer_or_event(fakes, sidecar, client) -> None:
    primary, backup = await fakes("primary", fail_rate=1.0, status=401, faults_on_models=False), await fakes("backup")
    car = await sidecar(two_node_config(primary, backup, checks={"active": {"interval": 0.2}, "passive": {}}))
    await send_many(client, car.url, 5)
    texts = []
    async with car.control() as control:
        texts.append((await control.get("/v1/status")).text)
        texts.append((await control.post("/v1/failover")).text)
        texts.append((await control.post("/v1/reload")).text)
        async with control.stream("GET", "/v1/events") as r:
            async for line in r.aiter_lines():
                texts.append(line)
                if len(texts) > 8:
                    break
    blob = "\n".join(texts) + car.log()
    assert "auth (401)" in blob
    for key in NODE_KEYS.values():
        assert key not in blob and key[-8:] not in blob


def test_cli_commands_without_a_running_sidecar(tmp_path) -> None:
    for args in (["status"], ["failover"], ["node", "down", "x"], ["reload"]):
        result = cli(*args, "--control-socket", str(tmp_path / "none.sock"))
        assert result.returncode == 1
        assert (
            result.stderr.strip()
            == f"llm-sidecar: no llm-sidecar is running on control socket {tmp_path / 'none.sock'}"
        )


async def test_cli_status_failover_node_and_reload(fakes, sidecar) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    car = await sidecar(two_node_config(primary, backup))
    sock = ["--control-socket", str(car.socket)]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return cli(*args, *sock)

    table = await asyncio.to_thread(run, "status")
    assert table.returncode == 0 and "primary *" in table.stdout and "serving: primary" in table.stdout
    as_json = json.loads((await asyncio.to_thread(run, "status", "--json")).stdout)
    assert as_json["serving"] == "primary"
    moved = await asyncio.to_thread(run, "failover")
    assert moved.returncode == 0 and "backup serves now" in moved.stdout
    refused = await asyncio.to_thread(run, "failover")
    assert refused.returncode == 1 and "no other node" in refused.stderr
    back = await asyncio.to_thread(run, "node", "auto", "primary")
    assert back.returncode == 0 and "serving: primary" in back.stdout
    # The CLI finds the socket through the config too (-c), without the keys set.
    env = {k: v for k, v in os.environ.items() if k not in NODE_KEYS}
    via_config = await asyncio.to_thread(cli, "reload", "-c", str(car.config_path), env=env)
    assert via_config.returncode == 0 and "nodes primary, backup" in via_config.stdout


def test_check_prints_plan_without_keys_and_bad_config_exits_cleanly(tmp_path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(tomli_w.dumps(two_node_config("http://127.0.0.1:1", "https://api.example.com/openai")))
    result = cli("check", "-c", str(good))
    assert result.returncode == 0, result.stderr
    assert "priority 0:" in result.stdout and "key from $PRIMARY_KEY" in result.stdout
    assert "* -> deepseek-chat" in result.stdout
    assert all(key not in result.stdout for key in NODE_KEYS.values())
    bad = tmp_path / "bad.toml"
    bad.write_text(good.read_text().replace("weight = 100", "weight = 0"))
    for command in ("check", "run"):
        failed = cli(command, "-c", str(bad))
        assert failed.returncode == 2
        assert f'{bad}: upstream.nodes[0] ("primary").weight: must be >= 1' in failed.stderr
        assert "Traceback" not in failed.stderr
    unset = cli("run", "-c", str(good), env={k: v for k, v in os.environ.items() if k not in NODE_KEYS})
    assert unset.returncode == 2 and "environment variable PRIMARY_KEY is not set" in unset.stderr


def test_init_writes_a_config_that_checks(tmp_path) -> None:
    result = cli("init", cwd=tmp_path, env=cli_env(OPENAI_API_KEY="a", DEEPSEEK_API_KEY="b"))
    assert result.returncode == 0 and (tmp_path / "llm-sidecar.toml").exists()
    again = cli("init", cwd=tmp_path)
    assert again.returncode == 1 and "--force" in again.stderr
    checked = cli("check", cwd=tmp_path, env=cli_env(OPENAI_API_KEY="a", DEEPSEEK_API_KEY="b"))
    assert checked.returncode == 0 and "openai" in checked.stdout


def test_version_and_help() -> None:
    from sidecar import __version__

    assert cli("--version").stdout.strip() == f"llm-sidecar, version {__version__}"
    helptext = cli("--help").stdout
    for command in ("run", "check", "init", "demo", "fake-provider", "status", "failover", "node", "reload", "monitor"):
        assert f"  {command} " in helptext


def test_demo_shows_failover_and_recovery() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "demo", "--no-tui", "--duration", "36"],
        capture_output=True, text=True, timeout=90, env=cli_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "openai-fake: healthy -> ejected (http 503)" in out
    assert "openai-fake: ejected -> unhealthy (probe http 503)" in out  # probes fail too
    # Back: a recovery probe (a one-token chat) and the liveness probe both pass; no user request is a trial.
    assert re.search(
        r"openai-fake: (ejected|unhealthy) -> healthy \((probe http 200|recovered \(probe [^)]+ ok\))\)", out
    )
    assert "trial request" not in out
    assert "failed over inside the request" in out
    summary = out[out.index("what happened in ") :]  # the summary closes the output, for people
    assert re.search(r"requests the agent sent: \d+ \(answered by \w+-fake \d+, \w+-fake \d+\)", summary)
    assert "errors the agent saw: 0\n" in summary
    assert re.search(r"failed over inside a request: [1-9]", summary)
    assert re.search(r"detected at t=\d+\.\ds \(healthy -> ejected: http 503\)", summary)
    assert re.search(r"recovered at t=\d+\.\ds \((ejected|unhealthy) -> healthy: [^\n]+\)\n", summary)
    assert "{" not in summary  # no Python dict
