"""What a new user tripped on in the first hour (issue 24): words that mislead, and mistakes the sidecar
can name. Real CLI, real sockets, fake providers on loopback."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from .conftest import chat, cli, cli_env, two_node_config

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


# ---------------------------------------------------------------------------- a node's key and the sidecar's words


def anthropic_nodes(primary: str, backup: str) -> list[dict[str, Any]]:
    return [
        {"name": "primary", "url": primary, "api": "anthropic", "api_key": "${NODE_KEY}"},
        {"name": "backup", "url": backup, "api": "anthropic", "priority": -1, "api_key": "${BACKUP_KEY}"},
    ]


ASK = {"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
ANTHROPIC = {"anthropic-version": "2023-06-01"}


@pytest.mark.parametrize("key", ["a", "overloaded"])  # too short to be a secret; a key that is also our word
async def test_the_trail_reads_overloaded_whatever_the_nodes_key(fakes, sidecar, client, key: str) -> None:
    """With a one-letter key the trail header read `overlo[redacted]ded (529)`; with a key that is a word of
    the sidecar's own, `[redacted] (529)`. The sidecar's words are never redacted."""
    primary = await fakes("primary", api="anthropic", fail_rate=1.0, fault="error", status=529)
    backup = await fakes("backup", api="anthropic")
    config = two_node_config(primary, backup, nodes=anthropic_nodes(primary.url, backup.url))
    car = await sidecar(config, env=cli_env(NODE_KEY=key))
    got = await client.post(car.url + "/v1/messages", json=ASK, headers=ANTHROPIC)
    assert got.status_code == 200 and got.headers["x-llm-sidecar-node"] == "backup"
    assert got.headers["x-llm-sidecar-trail"] == "primary: overloaded (529)"
    assert "failed=[primary:overloaded (529)]" in car.log()  # the access log too


async def test_a_key_the_node_quotes_is_redacted_in_its_words_only(raw_server, sidecar, client) -> None:
    """The node's words in a failure reason lose the key; the sidecar's around them keep theirs, even when
    the key is one of them ("connection")."""
    key = "connection"

    async def quotes_its_key(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b'{"error": {"message": "key connection was revoked"}}'
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
        writer.write(head + body)
        await writer.drain()
        writer.close()

    async def hangs_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    for handler, reason in (
        (quotes_its_key, "error in a 200 answer (key [redacted] was revoked)"),
        (hangs_up, "connection closed before a response"),
    ):
        primary = await raw_server(handler)
        nodes = [
            {"name": "primary", "url": primary, "api_key": "${NODE_KEY}"},
            {"name": "backup", "url": primary, "priority": -1, "api_key": "${NODE_KEY}"},
        ]
        car = await sidecar(two_node_config(primary, primary, nodes=nodes), env=cli_env(NODE_KEY=key))
        got = await client.post(car.url + CHAT, json=chat())
        assert got.status_code == 502
        assert got.headers["x-llm-sidecar-trail"].startswith(f"primary: {reason}"), got.headers
        line = next(line for line in car.log().splitlines() if "POST /v1/chat/completions" in line)
        assert f"failed=[primary:{reason.replace('[', chr(92) + 'u005b').replace(']', chr(92) + 'u005d')}," in line
        car.stop()
