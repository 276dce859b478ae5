"""The translation keys (`translate`, `responses`): parsed, refused when wrong with the file and key named, shown
by `check`; and the two configs docs/translation.md gives, parsed and routed as it says."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import tomli_w

from sidecar.config.load import parse
from sidecar.config.plan import render
from sidecar.config.problems import ConfigError
from tests.conftest import cli, cli_env

DOC = Path(__file__).resolve().parent.parent / "docs" / "translation.md"
ENV = {"ANTHROPIC_API_KEY": "a" * 20, "OPENAI_API_KEY": "o" * 20}


def section(title: str) -> dict[str, object]:
    """The TOML block under a heading of docs/translation.md."""
    text = DOC.read_text().split(f"\n## {title}\n", 1)[1]
    block = re.search(r"```toml\n(.*?)```", text, re.S)
    assert block is not None, title
    return tomllib.loads(block.group(1))


def targets(data: dict[str, object]) -> dict[str, dict[str, str | None]]:
    config = parse(data, "translation.md", env=ENV)
    forms = ("chat", "responses", "messages")
    return {n.name: {f: n.target(f) for f in forms} for n in config.upstream.nodes}  # type: ignore[arg-type]


def test_claude_code_with_an_openai_format_backup_routes_as_the_doc_says() -> None:
    assert targets(section("Claude Code with an OpenAI-format backup")) == {
        "anthropic": {"chat": None, "responses": None, "messages": "messages"},
        "openai": {"chat": "chat", "responses": "responses", "messages": "chat"},
    }


def test_codex_with_a_chat_only_backup_routes_as_the_doc_says() -> None:
    assert targets(section("Codex with a chat-only backup")) == {
        "openai": {"chat": "chat", "responses": "responses", "messages": None},
        "local": {"chat": "chat", "responses": "chat", "messages": "chat"},
    }


def test_defaults_keep_every_node_to_its_own_format() -> None:
    data = {
        "upstream": {"nodes": [{"name": "a", "url": "http://a"}, {"name": "b", "url": "http://b", "api": "anthropic"}]}
    }
    assert targets(data) == {
        "a": {"chat": "chat", "responses": "responses", "messages": None},
        "b": {"chat": None, "responses": None, "messages": "messages"},
    }


@pytest.mark.parametrize("key", ["translate", "responses"])
def test_a_wrong_value_names_the_file_and_the_key(key: str) -> None:
    data = {"upstream": {"nodes": [{"name": "local", "url": "http://l", key: "yes"}]}}
    with pytest.raises(ConfigError) as error:
        parse(data, "llm-sidecar.toml", env={})
    assert 'llm-sidecar.toml: upstream.nodes[0] ("local").' + key + ": expected true/false" in str(error.value)


def test_check_prints_what_each_node_serves_natively_and_by_translation(tmp_path: Path) -> None:
    config = parse(section("Codex with a chat-only backup"), "x.toml", env=ENV)
    text = render(config)
    assert "serves chat, responses\n" in text + "\n"
    assert "serves chat; by translation responses (as chat), messages (as chat)" in text
    path = tmp_path / "llm-sidecar.toml"
    path.write_text(tomli_w.dumps(section("Codex with a chat-only backup")))
    done = cli("check", "-c", str(path), env=cli_env(**ENV))
    assert done.returncode == 0, done.stderr
    assert "serves chat; by translation responses (as chat), messages (as chat)" in done.stdout
