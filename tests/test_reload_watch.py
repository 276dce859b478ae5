"""A saved edit of llm-sidecar.toml reaches the running sidecar by itself ([server] watch, sidecar/watch.py).

End to end through the real `llm-sidecar run -c FILE` over loopback, and in-process where that is cheaper.
Waits poll the control API or the log within a bound; fixed sleeps only space edits or give a change that
must be ignored the time it would take to be acted on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w

from sidecar.config.load import load
from sidecar.nodes.mock import MockTransport
from sidecar.nodes.runtime import Runtime
from sidecar.nodes.watchdog import SendWatch
from sidecar.watch import SETTLE, ConfigWatcher, watched_file

from .conftest import Sidecar, chat, cli, eventually, two_node_config

CHAT = "/v1/chat/completions"
WEIGHT_KEY = r"upstream\.nodes\[0\][^:]*\.weight"  # the first node's weight (its name may be shown)
APPLIED = 8.0  # seconds a saved edit may take to show in the status (it takes ~0.3 s)
IGNORED = 4 * SETTLE + 0.5  # seconds after which a change that was to be ignored would have been acted on


def edit(path: Path, change: Callable[[dict[str, Any]], None], *, rename: bool = False) -> None:
    """Save `path` with `change` applied: in place (truncate and write), or as editors do (a temporary
    file renamed over it)."""
    data = tomllib.loads(path.read_text())
    change(data)
    text = tomli_w.dumps(data)
    if rename:
        temp = path.with_name(f".{path.name}.swp")
        temp.write_text(text)
        os.replace(temp, path)
    else:
        path.write_text(text)


def set_weight(weight: int) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        data["upstream"]["nodes"][0]["weight"] = weight

    return change


async def weight_is(car: Sidecar, weight: int, name: str = "primary") -> bool:
    return bool((await car.node(name))["weight"] == weight)


async def names(car: Sidecar) -> list[str]:
    return [n["name"] for n in (await car.status())["nodes"]]


def log_lines(car: Sidecar, text: str) -> list[str]:
    return [line for line in car.log_path.read_text(errors="replace").splitlines() if text in line]


async def flushed(car: Sidecar, text: str) -> list[str]:
    """log_lines once the sidecar has flushed what it logged so far (info lines go out every 100 ms)."""
    await asyncio.sleep(0.3)
    return log_lines(car, text)


async def logged(car: Sidecar, text: str, times: int = 1) -> bool:
    return len(log_lines(car, text)) >= times


async def config_events(car: Sidecar, until: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
    """The `config` events of the control API's stream (replay first), read until `until` holds."""
    seen: list[dict[str, Any]] = []

    async def read() -> None:
        async with car.control() as control, control.stream("GET", "/v1/events") as r:
            async for line in r.aiter_lines():
                event = json.loads(line)
                if event["type"] == "config":
                    seen.append(event)
                    if until(seen):
                        return

    await asyncio.wait_for(read(), APPLIED)
    return seen


def clean_stop(car: Sidecar) -> None:
    """SIGTERM stops it at once (the watch thread sees its stop event within a tick) and quietly."""
    started = time.monotonic()
    assert car.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 3
    log = car.log_path.read_text(errors="replace")
    for bad in ("Traceback", "Task was destroyed", "Exception ignored", "never awaited", "Warning"):
        assert bad not in log, log


# ---------------------------------------------------------------------------- the real CLI


async def test_a_saved_edit_is_applied_by_itself(fakes: Any, sidecar: Any, client: httpx.AsyncClient) -> None:
    primary, backup = await fakes("primary"), await fakes("backup")
    car = await sidecar(two_node_config(primary, backup))
    assert await eventually(lambda: logged(car, f"watching {car.config_path}"))  # said at start
    edit(car.config_path, set_weight(7))  # in place, as `echo >` or a plain editor save
    assert await eventually(lambda: weight_is(car, 7))

    def add_node(data: dict[str, Any]) -> None:
        nodes = data["upstream"]["nodes"]
        nodes.append({**nodes[1], "name": "spare", "priority": 3, "models": {"*": "spare-model"}})

    edit(car.config_path, add_node)
    assert await eventually(lambda: _has(car, "spare"))
    r = await client.post(car.url + CHAT, json=chat())
    assert r.status_code == 200 and r.headers["x-llm-sidecar-node"] == "spare"  # now the highest priority
    assert len(await flushed(car, "config reloaded")) == 2 and not log_lines(car, "ERROR")
    clean_stop(car)
    assert len(log_lines(car, f"watching {car.config_path}")) == 1


async def _has(car: Sidecar, name: str) -> bool:
    return name in await names(car)


async def test_an_edit_saved_by_rename_and_a_file_deleted_then_recreated_are_applied(fakes: Any, sidecar: Any) -> None:
    car = await sidecar(two_node_config(await fakes("primary"), await fakes("backup")))
    # Twice: a watch on the file itself would follow the replaced inode and miss the second save.
    for weight in (11, 12):
        edit(car.config_path, set_weight(weight), rename=True)
        assert await eventually(lambda w=weight: weight_is(car, w))  # type: ignore[misc]
    saved = car.config_path.read_text()
    car.config_path.unlink()
    assert await eventually(lambda: logged(car, f"{car.config_path} is gone"))
    assert (await car.node("primary"))["weight"] == 12 and car.proc.poll() is None  # the running config stays
    car.config_path.write_text(saved.replace("weight = 12", "weight = 13"))
    assert await eventually(lambda: weight_is(car, 13))
    assert len(await flushed(car, "is gone")) == 1 and len(log_lines(car, "is back")) == 1
    assert not log_lines(car, "ERROR")  # a missing file is not a broken one
    clean_stop(car)


async def test_a_broken_edit_logs_one_error_keeps_the_old_config_and_a_fix_is_applied(
    fakes: Any, sidecar: Any, client: httpx.AsyncClient
) -> None:
    car = await sidecar(two_node_config(await fakes("primary"), await fakes("backup")))
    good = car.config_path.read_text()
    car.config_path.write_text(good.replace("weight = 100", 'weight = "heavy"'))
    assert await eventually(lambda: logged(car, "ERROR"))
    (error,) = log_lines(car, "ERROR")
    assert re.search(rf"reload failed.*: {re.escape(str(car.config_path))}: {WEIGHT_KEY}: expected an integer", error)
    for _ in range(3):  # the old config serves
        r = await client.post(car.url + CHAT, json=chat())
        assert r.status_code == 200 and r.headers["x-llm-sidecar-node"] == "primary"
    assert (await car.node("primary"))["weight"] == 100
    os.utime(car.config_path)  # touched, still broken: not reported again
    await asyncio.sleep(IGNORED)
    car.config_path.write_text(good.replace("weight = 100", "weight = 42"))
    assert await eventually(lambda: weight_is(car, 42))
    assert len(await flushed(car, "ERROR")) == 1
    events = await config_events(car, lambda seen: bool(seen) and seen[-1]["ok"])
    assert [e["ok"] for e in events] == [False, True]
    assert re.fullmatch(WEIGHT_KEY, events[0]["error"]["key"]) and events[0]["path"] == str(car.config_path)
    clean_stop(car)


async def test_watch_false_ignores_saves_until_a_reload_turns_it_on(fakes: Any, sidecar: Any) -> None:
    config = {**two_node_config(await fakes("primary"), await fakes("backup")), "server": {"watch": False}}
    car = await sidecar(config)
    assert await eventually(lambda: logged(car, f"not watching {car.config_path}"))
    assert not [line for line in log_lines(car, "watching /") if "not watching" not in line]
    edit(car.config_path, set_weight(5))
    await asyncio.sleep(IGNORED)
    assert (await car.node("primary"))["weight"] == 100
    # An explicit reload still works, and one that sets watch = true starts watching.
    edit(car.config_path, lambda data: data["server"].update(watch=True))
    async with car.control() as control:
        assert (await control.post("/v1/reload")).status_code == 200
    assert await weight_is(car, 5)
    assert await eventually(lambda: logged(car, f"watching {car.config_path}"))
    edit(car.config_path, set_weight(6), rename=True)
    assert await eventually(lambda: weight_is(car, 6))
    # And a save that sets it to false again stops it.
    edit(car.config_path, lambda data: data["server"].update(watch=False))
    assert await eventually(lambda: logged(car, f"stopped watching {car.config_path}"))
    edit(car.config_path, set_weight(8))
    await asyncio.sleep(IGNORED)
    assert (await car.node("primary"))["weight"] == 6
    clean_stop(car)


async def test_saving_identical_content_does_not_reload(fakes: Any, sidecar: Any) -> None:
    car = await sidecar(two_node_config(await fakes("primary"), await fakes("backup")))
    text = car.config_path.read_text()
    os.utime(car.config_path)  # touch
    car.config_path.write_text(text)  # a no-op save in place
    edit(car.config_path, lambda data: None, rename=True)  # and by rename (tomli_w writes the same text)
    assert car.config_path.read_text() == text
    await asyncio.sleep(IGNORED)
    edit(car.config_path, set_weight(9))  # a real edit after them: the one reload
    assert await eventually(lambda: weight_is(car, 9))
    events = await config_events(car, lambda seen: bool(seen) and seen[-1]["ok"])
    assert len(events) == 1
    assert len(await flushed(car, "config reloaded")) == 1 and len(log_lines(car, "changed: reloading")) == 1
    clean_stop(car)


async def test_ten_edits_while_50_streams_are_in_flight_fail_none(fakes: Any, sidecar: Any) -> None:
    chunks, in_flight = 80, 50
    primary = await fakes("primary", chunks=chunks, chunk_delay=0.1)  # each stream is open 8 s
    car = await sidecar(two_node_config(primary, await fakes("backup")))
    async with car.control() as control:  # manual health of an unchanged node carries over every reload
        assert (await control.post("/v1/nodes/backup/down")).status_code == 200
    ended: list[float] = []

    async def stream(c: httpx.AsyncClient) -> tuple[int, str]:
        async with c.stream("POST", car.url + CHAT, json=chat(stream=True)) as r:
            body = (await r.aread()).decode()
        ended.append(time.monotonic())
        return r.status_code, body

    limits = httpx.Limits(max_connections=in_flight + 10)
    async with httpx.AsyncClient(timeout=60, limits=limits) as c:
        tasks = [asyncio.create_task(stream(c)) for _ in range(in_flight)]
        assert await eventually(lambda: _in_flight(car, in_flight), 15)

        def edit_number(i: int) -> Callable[[dict[str, Any]], None]:
            def change(data: dict[str, Any]) -> None:
                nodes = data["upstream"]["nodes"]
                nodes[0]["weight"] = 100 + i
                if i % 2:  # a node comes and goes
                    nodes.append({**nodes[1], "name": f"spare{i}", "priority": -5})

            return change

        base = car.config_path.read_text()
        for i in range(1, 11):
            car.config_path.write_text(base)  # each edit starts from the first file, so the spares go again
            edit(car.config_path, edit_number(i), rename=i % 3 == 0)
            await asyncio.sleep(0.35)
        assert await eventually(lambda: weight_is(car, 110))
        applied = time.monotonic()
        assert await names(car) == ["primary", "backup"]
        assert (await car.node("backup"))["manual"] == "down"
        results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    assert min(ended) > applied  # every request was in flight through all ten edits
    for status, body in results:
        assert status == 200, body
        data = [line for line in body.splitlines() if line.startswith("data: ")]
        assert data[-1] == "data: [DONE]" and sum('" word' in line for line in data) == chunks, body[-300:]
    reloads = await flushed(car, "config reloaded")
    assert 3 <= len(reloads) <= 10, reloads  # several generations were swapped under the streams
    assert not log_lines(car, "ERROR") and not log_lines(car, "WARNING")
    clean_stop(car)


def repoint(link: Path, target: Path) -> None:
    """Make `link` a symlink to `target` in one step, as `ln -sfn` does (a new link renamed over it)."""
    temp = link.with_name(f".{link.name}.new")
    temp.symlink_to(target)
    os.replace(temp, link)


def open_fds(car: Sidecar) -> int:
    return len(os.listdir(f"/proc/{car.proc.pid}/fd"))


async def test_a_config_symlink_repointed_to_a_directory_is_refused_and_the_next_good_save_is_loaded(
    tmp_path: Path, fakes: Any, sidecar: Any, client: httpx.AsyncClient
) -> None:
    car = await sidecar(two_node_config(await fakes("primary"), await fakes("backup")))
    good = car.config_path.read_text()
    (tmp_path / "v1.toml").write_text(good)
    assert await eventually(lambda: logged(car, f"watching {car.config_path}"))
    repoint(car.config_path, tmp_path / "v1.toml")  # the same content: nothing to load
    await asyncio.sleep(IGNORED)
    directory = tmp_path / "elsewhere" / "conf.d"
    directory.mkdir(parents=True)
    refused = rf"ERROR .*reload failed, keeping the running config: {re.escape(str(car.config_path))}: .*a directory"

    async def refusals(n: int) -> bool:
        lines = log_lines(car, "ERROR")
        assert all(re.search(refused, line) for line in lines), lines
        return len(lines) >= n

    repoint(car.config_path, directory)  # the watch reads it
    assert await eventually(lambda: refusals(1))
    r = await client.post(car.url + CHAT, json=chat())
    assert r.status_code == 200 and r.headers["x-llm-sidecar-node"] == "primary"  # the running config serves
    car.proc.send_signal(signal.SIGHUP)
    assert await eventually(lambda: refusals(2))
    shown = await asyncio.to_thread(cli, "reload", "--control-socket", str(car.socket))
    assert (shown.returncode, shown.stderr.count("\n")) == (1, 1) and "a directory" in shown.stderr, shown.stderr
    async with car.control() as control:
        assert (await control.post("/v1/reload")).status_code == 400  # and the connection is open now
        before = open_fds(car)
        for _ in range(20):
            r = await control.post("/v1/reload")
            error = r.json()["error"]
            assert (r.status_code, error["type"], error["file"]) == (400, "config_error", str(car.config_path))
        assert open_fds(car) <= before, "a refused reload left a descriptor open"
    assert await eventually(lambda: refusals(24))
    (tmp_path / "v2.toml").write_text(good.replace("weight = 100", "weight = 42"))
    repoint(car.config_path, tmp_path / "v2.toml")  # back to a good file: the watch still runs and loads it
    assert await eventually(lambda: weight_is(car, 42), APPLIED)
    assert len(await flushed(car, "ERROR")) == 24 and not log_lines(car, "stopped watching")
    clean_stop(car)


async def _in_flight(car: Sidecar, n: int) -> bool:
    return bool((await car.node("primary"))["traffic"]["in_flight"] == n)


# ---------------------------------------------------------------------------- in-process


class Watched:
    """A runtime on mock transports, loaded from a real file, and its watcher."""

    def __init__(self, path: Path, settle: float = SETTLE) -> None:
        self.runtime = Runtime(load(path, ENV), transport=self._transport)
        self.watcher = ConfigWatcher(self.runtime, path, settle=settle)

    @staticmethod
    def _transport(config: Any, watch: SendWatch) -> MockTransport:
        return MockTransport(lambda node, request: None)  # type: ignore[arg-type, return-value]

    def events(self) -> list[dict[str, Any]]:
        return [e for e in self.runtime.events.recent if e["type"] == "config"]

    def weight(self) -> int:
        return self.runtime.config.upstream.nodes[0].weight


ENV = {"PRIMARY_KEY": "k1", "BACKUP_KEY": "k2"}


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)  # reload() reads the environment
    path = tmp_path / "llm-sidecar.toml"
    path.write_text(tomli_w.dumps(two_node_config("http://127.0.0.1:9", "http://127.0.0.1:9")))
    return path


async def test_a_save_in_three_writes_is_one_reload(config_file: Path) -> None:
    w = Watched(config_file)
    w.watcher.sync()
    await asyncio.sleep(0.2)  # the watch thread starts
    text = config_file.read_text().replace("weight = 100", "weight = 77")
    with open(config_file, "w") as f:  # truncate, then the text in three writes, as some editors do
        for part in (text[:40], text[40:90], text[90:]):
            f.write(part)
            f.flush()
            await asyncio.sleep(0.02)

    async def loaded() -> bool:
        return w.weight() == 77

    assert await eventually(loaded)
    await asyncio.sleep(IGNORED)  # what came after the read is seen as unchanged
    assert [e["ok"] for e in w.events()] == [True]
    started = time.monotonic()
    await w.watcher.close()
    assert time.monotonic() - started < 1 and not w.watcher.running


async def test_an_edit_saved_before_the_watch_is_set_up_is_loaded_when_it_is(config_file: Path) -> None:
    w = Watched(config_file)  # loaded: the sidecar's start, before its watch exists
    edit(config_file, set_weight(33))
    w.watcher.sync()

    async def loaded() -> bool:
        return w.weight() == 33

    try:
        assert await eventually(loaded, 3)
    finally:
        await w.watcher.close()


async def test_a_symlinked_config_is_reloaded_when_its_target_is_replaced(tmp_path: Path, config_file: Path) -> None:
    elsewhere = tmp_path / "dotfiles"
    elsewhere.mkdir()
    target = elsewhere / "sidecar.toml"
    config_file.rename(target)
    config_file.symlink_to(target)
    w = Watched(config_file)
    w.watcher.sync()
    await asyncio.sleep(0.2)
    try:
        for weight in (55, 56):  # the editor saves the target, in its own directory, by rename
            edit(target, set_weight(weight), rename=True)

            async def loaded(weight: int = weight) -> bool:
                return w.weight() == weight

            assert await eventually(loaded)
    finally:
        await w.watcher.close()


def configmap_update(volume: Path, text: str, version: int) -> None:
    """What kubelet does to a ConfigMap volume: the file is a symlink through `..data` to a timestamped
    directory; an update writes a new directory, swaps `..data` to it by rename, and deletes the old one."""
    fresh = volume / f"..2026_11_26_{version:02d}"
    fresh.mkdir()
    (fresh / "llm-sidecar.toml").write_text(text)
    old = os.readlink(volume / "..data") if (volume / "..data").is_symlink() else None
    (volume / "..data_tmp").symlink_to(fresh.name)
    os.replace(volume / "..data_tmp", volume / "..data")
    if not (volume / "llm-sidecar.toml").is_symlink():
        (volume / "llm-sidecar.toml").symlink_to("..data/llm-sidecar.toml")
    if old is not None:
        shutil.rmtree(volume / old)


async def test_a_kubernetes_configmap_update_is_loaded_every_time(tmp_path: Path, config_file: Path) -> None:
    volume = tmp_path / "config"
    volume.mkdir()
    base = config_file.read_text()
    configmap_update(volume, base, 0)
    w = Watched(volume / "llm-sidecar.toml")
    w.watcher.sync()
    await asyncio.sleep(0.2)
    try:
        for version, weight in enumerate((61, 62, 63), start=1):  # a second update was missed once
            configmap_update(volume, base.replace("weight = 100", f"weight = {weight}"), version)

            async def loaded(weight: int = weight) -> bool:
                return w.weight() == weight

            assert await eventually(loaded), f"update {version} (weight {weight}) not loaded"
    finally:
        await w.watcher.close()
    assert not w.watcher.running


async def test_changed_skips_what_was_read_last_and_reports_a_missing_file_once(
    config_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "llm_sidecar")
    w = Watched(config_file)  # never started: changed() is called as the watch would
    await w.watcher.changed()
    assert w.events() == [] and not caplog.records  # what was loaded at start
    config_file.unlink()
    await w.watcher.changed()
    await w.watcher.changed()
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "is gone" in caplog.text
    config_file.write_text(tomli_w.dumps(two_node_config("http://127.0.0.1:9", "http://127.0.0.1:8")))
    await w.watcher.changed()
    assert [e["ok"] for e in w.events()] == [True] and "is back" in caplog.text
    config_file.write_text("[upstream\n")
    await w.watcher.changed()
    await w.watcher.changed()  # the same broken content: reported once
    assert [e["ok"] for e in w.events()] == [True, False]
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1


async def test_a_path_that_stays_unreadable_is_reported_once_however_often_its_directory_changes(
    config_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "llm_sidecar")
    w = Watched(config_file)
    config_file.unlink()
    config_file.mkdir()  # a directory where the file was
    for _ in range(3):  # changes to other files there (the sidecar's own log, say) each call changed()
        await w.watcher.changed()
    assert [e["ok"] for e in w.events()] == [False] and "a directory" in w.events()[0]["error"]["message"]
    config_file.rmdir()
    os.mkfifo(config_file)  # unreadable another way: reported, once
    await w.watcher.changed()
    await w.watcher.changed()
    assert [e["ok"] for e in w.events()] == [False, False]
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 2 and w.watcher.task is None


async def test_a_file_truncated_by_a_save_in_place_is_waited_for_not_reported(
    config_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "llm_sidecar")
    w = Watched(config_file)
    text = tomli_w.dumps(two_node_config("http://127.0.0.1:9", "http://127.0.0.1:7"))
    config_file.write_text("")  # the truncate of `open(path, "w")`, read before its write landed
    await w.watcher.changed()
    assert w.events() == [] and not [r for r in caplog.records if r.levelno >= logging.WARNING]
    config_file.write_text(text)  # the write's own change
    await w.watcher.changed()
    assert [e["ok"] for e in w.events()] == [True]


async def test_concurrent_reloads_each_apply_whole_one_after_another(config_file: Path) -> None:
    w = Watched(config_file)
    first = w.runtime.upstream
    generations = []

    def swapped() -> None:  # called inside each reload, after its switch
        assert w.runtime.reload_lock.locked()
        generations.append(w.runtime.upstream)

    w.runtime.on_reload = swapped
    await asyncio.gather(*(w.runtime.reload() for _ in range(5)))
    assert [e["ok"] for e in w.events()] == [True] * 5 and len(set(map(id, generations))) == 5
    assert first.retired and all(g.retired for g in generations[:-1]) and not generations[-1].retired
    await w.runtime.close()


def test_only_a_file_that_was_loaded_is_watched(config_file: Path) -> None:
    assert watched_file(load(config_file, ENV)) == config_file
    from sidecar.demo import demo_config

    assert watched_file(demo_config(1, 2, 3, Path("/tmp/x.sock"))) is None  # the demo's config has no file


def test_the_starter_config_documents_watch() -> None:
    from sidecar.config.template import render

    text = render()
    assert re.search(r"^# watch: \S", text, re.M) and re.search(r"^watch = true$", text, re.M)


async def test_a_watch_that_cannot_be_set_up_is_one_warning(
    tmp_path: Path, config_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    w = Watched(config_file)
    w.watcher.directories = [str(tmp_path / "gone")]  # as when the directory went, or inotify ran out of watches
    w.watcher.sync()

    async def warned() -> bool:
        return "stopped watching" in caplog.text

    assert await eventually(warned, 3)
    assert [r.levelname for r in caplog.records if r.name == "llm_sidecar"] == ["WARNING"]
    assert w.watcher.task is None  # the next reload tries again
    await w.watcher.close()
