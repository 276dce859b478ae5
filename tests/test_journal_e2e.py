"""The journal through a real sidecar and the real CLI: `log` (80 columns, filters, --json, --follow),
`log show`, `log stats`, `replay`, GET /v1/requests/{id}; a kill -9 under load; and traffic untouched when
the journal cannot write (a read-only directory, a corrupt file, a locked database)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from .conftest import NODE_KEYS, chat, cli, cli_env, eventually, two_node_config
from .test_journal import ReadOnly

FLUSHED = 3.0  # seconds to wait for the writer (it writes every 0.5 s)


async def journaled(path: Path, count: int) -> bool:
    async def enough() -> bool:
        if not path.exists():
            return False
        with sqlite3.connect(path) as db:
            return bool(db.execute("SELECT count(*) FROM requests").fetchone()[0] >= count)

    return await eventually(enough, FLUSHED)


def log_cli(car: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(*args, "--journal", str(car.journal), env={**car.env, "COLUMNS": "200"})


async def test_log_show_stats_and_replay_through_the_real_cli(
    fakes: Any, sidecar: Any, client: httpx.AsyncClient
) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    config = two_node_config(primary, backup)
    config["journal"] = {"bodies": True}
    config["upstream"]["nodes"][0]["price"] = {"input": 1000, "output": 1000}  # $0.012 a request
    car = await sidecar(config)
    url = f"{car.url}/v1/chat/completions"
    note = f"the key {NODE_KEYS['PRIMARY_KEY']} must not be kept"
    ok = await client.post(url, json=chat(note=note), headers={"x-request-id": "client-id-0001"})
    assert ok.status_code == 200
    await client.post(url, json=chat(stream=True))
    failover = await client.post(url, json=chat(model="fault-503"))  # the primary answers 503: the backup does
    assert failover.status_code == 200 and failover.headers["x-llm-sidecar-node"] == "backup"
    bad = await client.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400  # from the primary: the sidecar sends a body it need not rewrite as it is
    assert await journaled(car.journal, 4)

    log = log_cli(car, "log")
    assert log.returncode == 0, log.stderr
    lines = log.stdout.splitlines()
    assert lines[0].split() == ["TIME", "ID", "MODEL", "NODE", "ST", "ATT", "TTFT", "TOTAL", "TOKENS", "COST"]
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    rows = lines[1:-1]
    assert len(rows) == 4 and rows[0].split()[1] == "nt-id-0001"[-8:]
    assert rows[0].split()[-1] == "$0.0120" and "2↻" in rows[2] and rows[3].split()[4] == "400"
    as_json = [json.loads(line) for line in log_cli(car, "log", "--json").stdout.splitlines()]
    assert [e["node"] for e in as_json] == ["primary", "primary", "backup", "primary"]
    assert as_json[0]["client_id"] == "client-id-0001" and as_json[0]["cost_usd"] == 0.012
    assert len(log_cli(car, "log", "--errors").stdout.splitlines()) == 3  # header, the 400, the legend
    assert len(log_cli(car, "log", "--node", "backup", "--json").stdout.splitlines()) == 1
    assert len(log_cli(car, "log", "--status", "4xx", "--since", "1h", "--json").stdout.splitlines()) == 1
    assert log_cli(car, "log", "--since", "yesterday-ish").returncode == 2
    assert log_cli(car, "log", "--status", "422").stdout.splitlines()[1] == "(no request matches these filters)"
    assert log_cli(car, "log", "--status", "4x").returncode == 2

    shown = log_cli(car, "log", "show", failover.headers["x-request-id"])
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "answer   200 from backup; 2 attempt(s), 1 failover(s)" in text
    assert "1. primary  first  failed: http 503 [http]" in text and "2. backup  failover  answered" in text
    assert "model    fault-503 (sent as deepseek-chat)" in text
    first = log_cli(car, "log", "show", "client-id-0001").stdout
    assert "(the client's id)" in first and "request body" in first and '"model": "gpt-4o"' in first
    assert NODE_KEYS["PRIMARY_KEY"] not in first and "the key [redacted] must not be kept" in first
    assert "Hello from primary" in first  # the answer as the client got it
    with sqlite3.connect(car.journal) as db:  # not in the file either, compressed or not
        for blob in db.execute("SELECT request_body, response_body FROM bodies"):
            assert all(NODE_KEYS["PRIMARY_KEY"].encode() not in (b or b"") for b in blob)
    assert log_cli(car, "log", "show", "no-such-id").returncode == 1

    stats = log_cli(car, "log", "stats", "--since", "1d")
    assert stats.returncode == 0, stats.stderr
    assert all(len(line) <= 80 for line in stats.stdout.splitlines())
    table = {tuple(line.split()[:2]): line.split() for line in stats.stdout.splitlines()[2:-2]}
    # The stream reported no usage (the client did not ask for it): no tokens, no cost.
    assert table["primary", "gpt-4o"][2:5] == ["2", "0", "0"] and table["primary", "gpt-4o"][-1] == "$0.0120"
    assert table["backup", "deepseek-chat"][2:5] == ["1", "0", "1"]  # one request, answered after a failover
    assert table["primary", "-"][2:4] == ["1", "1"]  # the 400: no model in a body that is not JSON

    # In a thread: the fake providers answer from this test's event loop.
    replay = ("replay", "client-id-0001", "--journal", str(car.journal), "--url", car.url)
    replayed = await asyncio.to_thread(cli, *replay, env=car.env)
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout)["choices"][0]["message"]["content"].startswith("Hello from primary")
    replay_id = re.search(r"200 from primary; request id (replay-[0-9a-f]{6}-client-id-0001)", replayed.stderr)
    assert replay_id, replayed.stderr  # its own id: replayed twice, each row is found by its id
    assert await journaled(car.journal, 5)
    again = log_cli(car, "log", "show", replay_id[1])
    assert again.returncode == 0 and "the key [redacted] must not be kept" in again.stdout
    both = log_cli(car, "log", "show", "client-id-0001"[-6:])  # the original's ending is now the replay's too
    assert both.returncode == 1 and "ends 2 request ids" in both.stderr and replay_id[1] in both.stderr
    no_body = cli("replay", failover.headers["x-request-id"], "--journal", str(car.journal), "--url", car.url)
    assert no_body.returncode == 1 and "[redacted]" not in no_body.stderr


async def test_log_follow_prints_requests_as_they_are_written(
    fakes: Any, sidecar: Any, client: httpx.AsyncClient
) -> None:
    car = await sidecar(two_node_config(await fakes("primary"), await fakes("backup")))
    await client.post(f"{car.url}/v1/chat/completions", json=chat())
    assert await journaled(car.journal, 1)
    follow = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "log", "-f", "-n", "1", "--journal", str(car.journal)],
        stdout=subprocess.PIPE, text=True, env=car.env,
    )  # fmt: skip
    try:
        assert follow.stdout is not None
        assert follow.stdout.readline().startswith("TIME")
        assert "primary" in follow.stdout.readline()
        await client.post(f"{car.url}/v1/chat/completions", json=chat(model="followed"))
        line = await asyncio.wait_for(asyncio.to_thread(follow.stdout.readline), 10)
        assert "followed" in line and "200" in line
    finally:
        follow.send_signal(signal.SIGINT)
        follow.wait(10)
    assert follow.returncode == 0


async def test_a_request_in_detail_from_the_control_api_recent_or_journaled(
    fakes: Any, sidecar: Any, client: httpx.AsyncClient
) -> None:
    config = two_node_config(await fakes("primary"), await fakes("backup"))
    car = await sidecar(config)
    answer = await client.post(f"{car.url}/v1/chat/completions", json=chat(model="fault-503"))
    rid = answer.headers["x-request-id"]
    async with car.control() as control:
        recent = (await control.get(f"/v1/requests/{rid}")).json()
        missing = await control.get("/v1/requests/nope")
    assert recent["source"] == "recent" and [s["kind"] for s in recent["steps"]] == ["first", "failover"]
    assert missing.status_code == 404 and "no request 'nope'" in missing.json()["error"]["message"]
    assert await journaled(car.journal, 1)
    car.stop()
    car = await sidecar(config, env=car.env)  # a new process: its recent events do not hold the request
    async with car.control() as control:
        journaled_detail = (await control.get(f"/v1/requests/{rid}")).json()
    assert journaled_detail["source"] == "journal"
    assert {k: v for k, v in journaled_detail.items() if k != "source"} == {
        k: v for k, v in recent.items() if k != "source"
    }


async def test_kill_9_under_load_leaves_a_whole_file_missing_at_most_the_last_writes(fakes: Any, sidecar: Any) -> None:
    """The bound: what a kill -9 loses is what was not yet written, the requests that ended within the
    writer's last FLUSH_EVERY (0.5 s) and the batch being written. Asserted with room for a loaded machine."""
    car = await sidecar(two_node_config(await fakes("primary"), await fakes("backup")))
    ended: list[float] = []
    stop = asyncio.Event()

    async def agent(c: httpx.AsyncClient) -> None:
        while not stop.is_set():
            try:
                await c.post(f"{car.url}/v1/chat/completions", json=chat())
            except httpx.HTTPError:
                return
            ended.append(time.monotonic())

    async with httpx.AsyncClient(timeout=10) as c:
        agents = [asyncio.ensure_future(agent(c)) for _ in range(8)]
        await asyncio.sleep(2.5)
        killed = time.monotonic()
        car.proc.send_signal(signal.SIGKILL)
        car.proc.wait(10)
        stop.set()
        await asyncio.gather(*agents, return_exceptions=True)
    with sqlite3.connect(car.journal) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        kept = db.execute("SELECT count(*) FROM requests").fetchone()[0]
    before = sum(1 for t in ended if t < killed - 2.0)
    print(f"kill -9 after {len(ended)} answered requests: {kept} journaled, {len(ended) - kept} lost")
    assert before <= kept <= len(ended)


async def test_traffic_is_untouched_when_the_journal_cannot_write(
    fakes: Any, sidecar: Any, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    read_only = ReadOnly(tmp_path / "ro")
    try:
        config = {**two_node_config(primary, backup), "journal": {"path": str(read_only.path / "j.db")}}
        car = await sidecar(config)
        for _ in range(20):
            assert (await client.post(f"{car.url}/v1/chat/completions", json=chat())).status_code == 200
        await asyncio.sleep(1.2)
        log = car.log()
        assert log.count("cannot write") == 1 and "Traceback" not in log
        metrics = (await client.get(f"{car.url}/metrics")).text
        assert "llm_sidecar_journal_dropped_total" in metrics
    finally:
        read_only.close()
    # A corrupt file: moved aside, a new one written, the requests answered all along.
    corrupt = tmp_path / "corrupt" / "j.db"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"not sqlite at all " * 1000)
    car = await sidecar({**two_node_config(primary, backup), "journal": {"path": str(corrupt)}})
    assert (await client.post(f"{car.url}/v1/chat/completions", json=chat())).status_code == 200
    assert await journaled(corrupt, 1)
    assert "moved it to" in car.log() and len(list(corrupt.parent.glob("j.db.corrupt-*"))) == 1
    # A locked database: another process holds a write transaction while requests go on.
    holder = sqlite3.connect(corrupt, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        for _ in range(10):
            assert (await client.post(f"{car.url}/v1/chat/completions", json=chat())).status_code == 200
        assert await eventually(lambda: asyncio.sleep(0, "locked by another process" in car.log()), 8)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert await journaled(corrupt, 11)  # kept while locked, written after
    assert "writing again" in car.log()


def test_log_says_when_there_is_no_journal(tmp_path: Path) -> None:
    done = cli("log", env=cli_env(XDG_STATE_HOME=str(tmp_path)))
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"llm-sidecar: no journal at {tmp_path}/llm-sidecar/journal.db "
        "(a sidecar writes one while it runs with [journal] enabled)"
    )
    # -c finds [journal] path without validating the file (no keys needed).
    config = tmp_path / "c.toml"
    config.write_text(f'[journal]\npath = "{tmp_path}/elsewhere.db"\n[[upstream.nodes]]\napi_key = "${{UNSET}}"\n')
    assert f"no journal at {tmp_path}/elsewhere.db" in cli("log", "stats", "-c", str(config)).stderr
    assert os.listdir(tmp_path) == ["c.toml"]  # reading never creates one


async def test_a_reload_turns_bodies_on_and_off(fakes: Any, sidecar: Any, client: httpx.AsyncClient) -> None:
    import tomli_w

    config = two_node_config(await fakes("primary"), await fakes("backup"))
    car = await sidecar(config)
    server = {"listen": f"127.0.0.1:{car.port}", "control_socket": str(car.socket)}
    ids = []
    for bodies in (False, True, False):
        car.config_path.write_text(tomli_w.dumps({**config, "journal": {"bodies": bodies}, "server": server}))
        async with car.control() as control:
            assert (await control.post("/v1/reload")).status_code == 200
        answer = await client.post(f"{car.url}/v1/chat/completions", json=chat())
        ids.append(answer.headers["x-request-id"])
    assert await journaled(car.journal, 3)
    kept = ["request body" in log_cli(car, "log", "show", rid).stdout for rid in ids]
    assert kept == [False, True, False]


async def test_a_stored_response_finds_its_node_after_a_restart(
    fakes: Any, sidecar: Any, client: httpx.AsyncClient
) -> None:
    """The node that made a stored response is remembered in the journal: after a restart, with a new
    preferred node in front of it, a request naming the response still goes to the node that holds it."""
    keeper, newcomer = await fakes("keeper"), await fakes("newcomer")
    first = two_node_config(keeper, "http://127.0.0.1:9")
    first["upstream"]["nodes"] = first["upstream"]["nodes"][:1]  # the keeper alone
    car = await sidecar(first)
    made = await client.post(f"{car.url}/v1/responses", json={"model": "gpt-4o", "input": "remember me"})
    assert made.status_code == 200 and made.headers["x-llm-sidecar-node"] == "primary"
    held = made.json()["id"]
    assert car.stop() == 0  # a clean stop writes what is queued

    second = two_node_config(keeper, newcomer)
    ahead, kept = second["upstream"]["nodes"][1], second["upstream"]["nodes"][0]
    ahead.update(name="newcomer", priority=1)  # preferred over the keeper from now on
    ahead.pop("models")
    assert kept["name"] == "primary" and kept["url"] == keeper.url
    car = await sidecar(second, port=car.port)
    assert "1 stateful ids read back" in car.log()
    follow = await client.post(
        f"{car.url}/v1/responses", json={"model": "gpt-4o", "input": "and?", "previous_response_id": held}
    )
    assert follow.status_code == 200, follow.text
    assert follow.headers["x-llm-sidecar-node"] == "primary"  # not the preferred newcomer, which would 404
    plain = await client.post(f"{car.url}/v1/responses", json={"model": "gpt-4o", "input": "new"})
    assert plain.headers["x-llm-sidecar-node"] == "newcomer"
    assert newcomer.stats.requests == 1

    async with car.control() as control:  # the keeper taken out by hand: a clear error naming it
        assert (await control.post("/v1/nodes/primary/down")).status_code == 200
    out = await client.post(
        f"{car.url}/v1/responses", json={"model": "gpt-4o", "input": "and?", "previous_response_id": held}
    )
    assert out.status_code == 503 and out.json()["error"]["code"] == "state_holder_out"
    assert newcomer.stats.requests == 1
