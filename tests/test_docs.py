"""The documentation: README.md and docs/*.md link only to what exists (files and headings), the README keeps
its shape and its set-up commands, every TOML example is a valid config, and docs/configuration.md documents
exactly the keys the config schema has, each with its real type and default."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
REFERENCE = DOCS / "configuration.md"


def schema() -> SimpleNamespace:
    """The config schema: the one place this file imports it, so a move of the module is one line here."""
    from sidecar.config.load import parse
    from sidecar.config.schema import (
        ActiveCheck,
        Budget,
        Checks,
        Hedge,
        JournalConfig,
        Node,
        PassiveCheck,
        RetryPolicy,
        ServerConfig,
        TelemetryConfig,
        Timeouts,
        UpstreamConfig,
    )

    return SimpleNamespace(
        TelemetryConfig=TelemetryConfig,
        ActiveCheck=ActiveCheck,
        Budget=Budget,
        Checks=Checks,
        Hedge=Hedge,
        JournalConfig=JournalConfig,
        Node=Node,
        PassiveCheck=PassiveCheck,
        RetryPolicy=RetryPolicy,
        ServerConfig=ServerConfig,
        Timeouts=Timeouts,
        UpstreamConfig=UpstreamConfig,
        parse=parse,
    )


# ---------------------------------------------------------------------------- reading markdown

FENCE = re.compile(r"^\s*```")


def pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose(text: str) -> list[str]:
    """The lines outside fenced code blocks (a `#` comment in a code block is no heading)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def code_blocks(text: str, language: str) -> list[str]:
    """The fenced blocks of `language`, dedented (a block inside a list item is indented)."""
    blocks, current, indent = [], None, 0
    for line in text.splitlines():
        if current is None:
            if match := re.fullmatch(rf"(\s*)```{language}\s*", line):
                current, indent = [], len(match[1])
        elif FENCE.match(line):
            blocks.append("\n".join(current) + "\n")
            current = None
        else:
            current.append(line[indent:])
    return blocks


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text lowercased, punctuation but `-` and `_` dropped,
    spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").replace("*", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor; a repeated one gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose(text):
        if match := re.match(r"#{1,6} (.+)", line):
            base = slug(match[1])
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(text: str) -> list[str]:
    """Every link and image target in the prose; code spans are blanked first (a `[x]` there is no link)."""
    body = re.sub(r"`[^`\n]*`", "code", "\n".join(prose(text)))
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", body)


def headings(text: str, level: int) -> list[str]:
    return [line[level + 1 :] for line in prose(text) if line.startswith("#" * level + " ")]


def fake_env(text: str) -> dict[str, str]:
    return {name: "x" for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text)}


# ---------------------------------------------------------------------------- links and structure


def test_slugs_are_the_ones_github_makes() -> None:
    assert slug("Configuration (`llm-sidecar.toml`)") == "configuration-llm-sidecartoml"
    assert slug("Put `llm-sidecar` on your PATH and start it") == "put-llm-sidecar-on-your-path-and-start-it"
    assert (
        slug("2026-11-26 00:09: full run with nginx and LiteLLM") == "2026-11-26-0009-full-run-with-nginx-and-litellm"
    )
    assert slug("`[[upstream.nodes]]`") == "upstreamnodes"
    assert slug("Set-up") == "set-up"
    assert anchors("# A\n```\n# not a heading\n```\n## A\n## B") == {"a", "a-1", "b"}
    assert links("[a](x.md#y) ![b](p.png) `[c](not-a-link)`\n```\n[d](in-code)\n```") == ["x.md#y", "p.png"]


def test_every_internal_link_names_a_file_and_heading_that_exist() -> None:
    checked = 0
    for page in pages():
        for target in links(page.read_text()):
            if re.match(r"[a-z]+:", target):  # https:, mailto:: not ours to check
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(REPO)}: link to {target}"
            assert file.is_file(), f"{where}: no such file"
            assert REPO in file.parents, f"{where}: outside the repository"
            if anchor:
                assert file.suffix == ".md", f"{where}: an anchor into a file that is not markdown"
                assert anchor in anchors(file.read_text()), f"{where}: no heading with that anchor in {file.name}"
            checked += 1
    assert checked >= 60, checked  # the pages are full of links: finding few means the parser broke


def test_the_docs_index_lists_every_page_and_the_readme_links_it() -> None:
    index = DOCS / "README.md"
    listed = {(DOCS / target.partition("#")[0]).resolve() for target in links(index.read_text())}
    missing = [page.name for page in DOCS.glob("*.md") if page != index and page.resolve() not in listed]
    assert not missing, f"docs/README.md does not list {missing}"
    assert "docs/README.md" in links(README.read_text())


def test_the_readme_is_a_short_guide_for_users() -> None:
    text = README.read_text()
    assert headings(text, 2) == [
        "What it is",
        "Set-up",
        "Use with your agent",
        "Configuration essentials",
        "How failover works",
        "The monitor",
        "Operations in brief",
        "Troubleshooting",
        "More",
    ]
    # It was 1,021 lines; reference material belongs in docs/ (listed in docs/README.md).
    assert len(text.splitlines()) <= 400
    assert {"docs/demo-run.png", "docs/monitor.png"} <= set(links(text))


def test_the_readme_set_up_commands_are_the_ones_ci_runs() -> None:
    clone = "git clone https://github.com/llm-sidecar/llm-sidecar && cd llm-sidecar"
    demo = "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/llm-sidecar demo"
    tests = ".venv/bin/pip install '.[test]' && .venv/bin/python -m pytest"
    blocks = code_blocks(README.read_text(), "bash")
    assert f"{clone}\n{demo}\n" in blocks
    assert f"{tests}\n" in blocks
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert ci[-1] == tests  # CI runs README's test command verbatim


def test_every_toml_example_is_a_valid_config() -> None:
    count = 0
    for page in pages():
        for block in code_blocks(page.read_text(), "toml"):
            schema().parse(tomllib.loads(block), page.name, env=fake_env(block))  # raises on any problem
            count += 1
    assert count >= 4, count


# ---------------------------------------------------------------------------- the configuration reference

# The sections of docs/configuration.md and the schema class each one documents.
SECTIONS = {
    "[server]": "ServerConfig",
    "[upstream]": "UpstreamConfig",
    "[upstream.timeout]": "Timeouts",
    "[upstream.retry]": "RetryPolicy",
    "[upstream.hedge]": "Hedge",
    "[upstream.checks.active]": "ActiveCheck",
    "[upstream.checks.passive]": "PassiveCheck",
    "[[upstream.nodes]]": "Node",
    "[journal]": "JournalConfig",
    "[budget]": "Budget",
    "[telemetry]": "TelemetryConfig",
}
# Fields with a section of their own instead of a row; checks are kept per node, read from [upstream.checks].
OWN_SECTION = {
    ("UpstreamConfig", "nodes"): "[[upstream.nodes]]",
    ("UpstreamConfig", "timeout"): "[upstream.timeout]",
    ("UpstreamConfig", "retry"): "[upstream.retry]",
    ("UpstreamConfig", "hedge"): "[upstream.hedge]",
    ("Checks", "active"): "[upstream.checks.active]",
    ("Checks", "passive"): "[upstream.checks.passive]",
}
# Fields the file does not set: derived from another key (which env variable a key came from, a dropped /v1).
DERIVED = {("ServerConfig", "api_key_env"), ("Node", "api_key_env"), ("Node", "url_had_v1"), ("Hedge", "learned")}
# A node's checks and timeouts are the upstream's unless it has its own.
INHERITED = {("Node", "checks"), ("Node", "timeout"), ("Node", "recovery")}
TYPES = {
    "str": "string",
    "str | None": "string",
    "Api": "string",
    "int": "integer",
    "int | None": "integer",
    "float": "number",
    "bool": "boolean",
    "frozenset[int]": "array of integers",
    "Mapping[str, str]": "table",
    "Checks": "table",
    "Timeouts": "table",
    "float | None": "number",
    "Price | None": "table",
    "Mapping[str, Price]": "table",
    "Budget": "table",
    "Budget | None": "table",
}


def reference() -> dict[str, dict[str, tuple[str, str, str]]]:
    """docs/configuration.md's tables: section -> key -> (type, default, meaning)."""
    tables: dict[str, dict[str, tuple[str, str, str]]] = {}
    section = None
    for line in prose(REFERENCE.read_text()):
        if match := re.fullmatch(r"### `(\[\[?[a-z_.]+\]\]?)`", line):
            section = match[1]
            assert section not in tables, f"{section} twice"
            tables[section] = {}
        elif line.startswith("#"):
            section = None
        elif section and line.startswith("| `"):
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
            assert len(cells) == 4, line
            key, kind, default, meaning = cells
            key = key.strip("`")
            assert key not in tables[section], f"{section} {key} twice"
            assert meaning, f"{section} {key}: no meaning"
            tables[section][key] = (kind, default, meaning)
    return tables


def expected() -> dict[str, dict[str, tuple[str, Any]]]:
    """From the schema: section -> TOML key -> (type, default). A default is a value, or "required",
    "unset" (None) or "inherited"."""
    s = schema()
    sections: dict[str, dict[str, tuple[str, Any]]] = {}
    for section, name in SECTIONS.items():
        keys: dict[str, tuple[str, Any]] = {}
        for field in dataclasses.fields(getattr(s, name)):
            if (name, field.name) in DERIVED:
                continue
            if (name, field.name) in OWN_SECTION:
                assert OWN_SECTION[name, field.name] in SECTIONS
                continue
            if (name, field.name) in {("ServerConfig", "host"), ("ServerConfig", "port")}:
                keys["listen"] = ("string", s.ServerConfig().listen)
                continue
            assert field.type in TYPES, f"{name}.{field.name}: a new type {field.type}: say how it is written in TOML"
            key = re.sub(r"^(healthy|unhealthy)_", r"\1.", field.name)
            keys[key] = (TYPES[str(field.type)], default_of(name, field))
        sections[section] = keys
    for field in dataclasses.fields(s.Checks):  # a new kind of check needs a section of its own
        assert ("Checks", field.name) in OWN_SECTION, f"Checks.{field.name} has no section in configuration.md"
    return sections


def raw_default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def default_of(owner: str, field: dataclasses.Field[Any]) -> Any:
    """The default as the reference writes it."""
    value = raw_default(field)
    if (owner, field.name) in INHERITED:
        return "inherited"
    if value is dataclasses.MISSING:
        return "required"
    if value is None:
        return "unset"
    return sorted(value) if isinstance(value, frozenset) else value


def documented_value(cell: str) -> Any:
    if cell in ("required", "unset", "inherited"):
        return cell
    assert re.fullmatch(r"`[^`]+`", cell), (
        f"a default is a TOML value in backticks, or required/unset/inherited: {cell}"
    )
    return tomllib.loads(f"value = {cell[1:-1]}")["value"]


def test_the_configuration_reference_documents_every_key_with_its_type_and_default() -> None:
    documented, schema_keys = reference(), expected()
    assert list(documented) == list(schema_keys), "the sections of docs/configuration.md"
    for section, keys in schema_keys.items():
        missing = sorted(set(keys) - set(documented[section]))
        unknown = sorted(set(documented[section]) - set(keys))
        assert not missing, f"{section}: undocumented keys {missing}"
        assert not unknown, f"{section}: documented keys the schema lacks {unknown}"
        for key, (kind, default) in keys.items():
            doc_kind, doc_default, _ = documented[section][key]
            assert doc_kind == kind, f"{section} {key}: documented as {doc_kind}, is {kind}"
            value = documented_value(doc_default)
            assert value == default, f"{section} {key}: documented default {doc_default}, is {default!r}"
            assert isinstance(value, bool) == isinstance(default, bool), f"{section} {key}: {doc_default}"
            if kind == "integer" and not isinstance(value, str):
                assert isinstance(value, int), f"{section} {key}: an integer, documented as {doc_default}"


def full_file() -> str:
    text = REFERENCE.read_text()
    assert "\n## The full file, with every default\n" in text
    return code_blocks(text.split("\n## The full file, with every default\n", 1)[1], "toml")[0]


def has(data: Any, path: list[str]) -> bool:
    if not path:
        return True
    if isinstance(data, list):
        return any(has(item, path) for item in data)
    return isinstance(data, dict) and path[0] in data and has(data[path[0]], path[1:])


def test_the_full_file_holds_every_default_and_every_key() -> None:
    s = schema()
    block = full_file()
    config = s.parse(tomllib.loads(block), REFERENCE.name, env=fake_env(block))
    assert config.server == s.ServerConfig()
    assert config.journal == s.JournalConfig() and config.budget == s.Budget()
    assert config.telemetry == s.TelemetryConfig()
    upstream = config.upstream
    for field in dataclasses.fields(s.UpstreamConfig):
        if field.name != "nodes":
            assert getattr(upstream, field.name) == raw_default(field), field.name
    first = upstream.nodes[0]  # the second is a backup, with its own priority and models
    for field in dataclasses.fields(s.Node):
        if raw_default(field) not in (dataclasses.MISSING, None) and field.name != "checks":
            assert getattr(first, field.name) == raw_default(field), field.name
    assert first.checks == s.Checks(active=s.ActiveCheck(), passive=s.PassiveCheck())
    # A commented-out line shows a key that is off by default: switched on, the file still parses, and
    # then it names every key of the reference.
    every_key = re.sub(r"^# (?=[a-z_.]+ = )", "", block, flags=re.M)
    data = tomllib.loads(every_key)
    s.parse(data, REFERENCE.name, env=fake_env(every_key))
    for section, keys in reference().items():
        prefix = section.strip("[]").split(".")
        for key in keys:
            assert has(data, [*prefix, *key.split(".")]), f"the full file does not show {section} {key}"
