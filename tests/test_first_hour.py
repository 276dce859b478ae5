"""What a new user tripped on in the first hour (issue 24): words that mislead, and mistakes the sidecar
can name. Real CLI, real sockets, fake providers on loopback."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .conftest import chat, cli, two_node_config

CHAT = "/v1/chat/completions"


async def startup_line(car: Any) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in (await asyncio.to_thread(car.log)).splitlines():
            if "start-up found:" in line:
                return line
    raise AssertionError("no start-up line:\n" + car.log())


async def test_startup_says_an_unhealthy_node_still_gets_requests_in_panic_mode(fakes, sidecar, client) -> None:
    """`UNHEALTHY, no traffic until it answers` and then traffic: with no other node of its format usable,
    the sidecar tries it anyway (panic mode), and the start-up line says so."""
    only = await fakes("only")
    probe = {"active": {"http_path": "/no-such-probe", "interval": 60, "timeout": 1}, "passive": {}}
    config = two_node_config(only, only, checks=probe)
    config["upstream"]["nodes"] = config["upstream"]["nodes"][:1]
    car = await sidecar(config)
    line = await startup_line(car)
    assert "primary: UNHEALTHY, but no other node of its format is usable: it gets requests anyway (panic mode)" in line
    answer = await client.post(car.url + CHAT, json=chat())
    assert answer.status_code == 200 and answer.headers["x-llm-sidecar-node"] == "primary"


async def test_startup_says_no_traffic_when_another_node_serves(fakes, sidecar, client) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    config = two_node_config(primary, backup, checks={"passive": {}})
    config["upstream"]["nodes"][0]["checks"] = {"active": {"http_path": "/no-such-probe", "interval": 60}}
    car = await sidecar(config)
    line = await startup_line(car)
    assert "primary: UNHEALTHY, no traffic until it answers (other nodes of its format serve)" in line
    assert "backup: no active checks" in line
    answer = await client.post(car.url + CHAT, json=chat())
    assert answer.headers["x-llm-sidecar-node"] == "backup"


def test_run_help_names_every_control_socket_default() -> None:
    helptext = " ".join(cli("run", "--help").stdout.split())
    assert "$XDG_RUNTIME_DIR" in helptext and "~/.llm-sidecar/control.sock" in helptext


async def test_failover_in_a_mixed_config_says_which_format_it_moved(fakes, sidecar) -> None:
    """Without --node, `failover` drains the first node by priority of either format: it says which format
    that node served, and what still serves the other."""
    claude, claude_backup = await fakes("claude", api="anthropic"), await fakes("claude-backup", api="anthropic")
    gpt = await fakes("gpt")
    nodes = [
        {"name": "claude", "url": claude.url, "api": "anthropic", "priority": 0, "api_key": "${PRIMARY_KEY}"},
        {"name": "claude-backup", "url": claude_backup.url, "api": "anthropic", "priority": -1,
         "api_key": "${BACKUP_KEY}"},
        {"name": "gpt", "url": gpt.url, "priority": -1, "api_key": "${PRIMARY_KEY}"},
    ]  # fmt: skip
    car = await sidecar(two_node_config(gpt, gpt, nodes=nodes))
    moved = await asyncio.to_thread(cli, "failover", "--control-socket", str(car.socket))
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.splitlines() == [
        "claude is down; claude-backup serves Anthropic-format requests now (undo: llm-sidecar node auto claude)",
        "OpenAI-format requests still go to gpt (to move them: llm-sidecar failover --node gpt)",
    ]


async def test_a_base_url_with_v1_twice_gets_a_local_404_saying_how_to_set_it(fakes, sidecar) -> None:
    """`ANTHROPIC_BASE_URL=http://127.0.0.1:8787/v1` made the sidecar forward /v1/v1/messages, and Claude Code
    showed "There's an issue with the selected model": the sidecar answers itself, in the client's format,
    naming the base URL to set; no node is asked, and the access log says it."""
    import anthropic
    import openai

    claude = await fakes("claude", api="anthropic")
    gpt = await fakes("gpt")
    nodes = [
        {"name": "claude", "url": claude.url, "api": "anthropic", "api_key": "${PRIMARY_KEY}"},
        {"name": "gpt", "url": gpt.url, "priority": -1, "api_key": "${BACKUP_KEY}"},
    ]
    car = await sidecar(two_node_config(gpt, gpt, nodes=nodes))
    async with anthropic.AsyncAnthropic(base_url=car.url + "/v1", api_key="unused", max_retries=0) as wrong:
        try:
            await wrong.messages.create(
                model="claude-sonnet-4-6", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            )
            raise AssertionError("no error")
        except anthropic.NotFoundError as exc:
            assert exc.body["error"]["type"] == "not_found_error"  # type: ignore[index]  # Anthropic's shape
            message = exc.body["error"]["message"]  # type: ignore[index]
    assert message == (
        "unknown path '/v1/v1/messages': the client's base URL ends in /v1 and it added /v1 again; set "
        f"ANTHROPIC_BASE_URL (or the SDK's base_url) to {car.url}, without /v1: the client adds it"
    )
    async with openai.AsyncOpenAI(base_url=car.url + "/v1/v1", api_key="unused", max_retries=0) as doubled:
        try:
            await doubled.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
            raise AssertionError("no error")
        except openai.NotFoundError as exc:
            assert exc.code == "wrong_base_url"
            assert f"set OPENAI_BASE_URL (or the SDK's base_url) to {car.url}/v1, with /v1 once" in exc.message
    assert claude.stats.requests == 0 and gpt.stats.requests == 0
    log = car.log()
    line = next(line for line in log.splitlines() if "POST /v1/v1/messages" in line)
    assert "status=404" in line and "node=- " in line and "added /v1 again" in line
