"""What a fake answers, whatever its API format: text, tool calls made from the request's tool schemas, reasoning.

Each format reads its request into an `Ask` (chat.py, messages.py, responses.py) and renders the `Plan` that
`decide` makes of it. The rule, the same in every format (docs/fake-provider.md):

- A conversation that ends with tool results (OpenAI `role: tool` messages, Anthropic `tool_result` blocks, Responses
  `function_call_output` items) is answered with text quoting each: `<tool> returned: <output>`, or `<tool> failed:
  <output>` for an Anthropic result with `is_error`, joined by "; ".
- Otherwise, with tools: tool_choice none gives text; a named tool a call of it (the first tool if none has that
  name); auto (the default) a call of every tool the last user message names (its name as a whole word, any case), in
  the order of `tools`, or text if it names none; required (Anthropic's any) the same, but the first tool when the
  message names none. With parallel tool calls off, only the first of those calls is made.
- A reasoning request (what marks one is the format's: see is_reasoning_model) thinks REASONING first.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from .tools import arguments_for

REASONING = "Let me think about this step by step."
REASONING_PIECES = tuple(re.findall(r"\s*\S+", REASONING))
FRAGMENT = 12  # characters of a call's arguments per streamed delta, so a client must join them
_REASONING_MODEL = re.compile(r"reason|^o[134](?![0-9a-z])")


@dataclass(frozen=True)
class Tool:
    name: str
    schema: Any  # its parameters (OpenAI) or input_schema (Anthropic)


@dataclass(frozen=True)
class Result:
    label: str  # the tool's name, or the call's id when the call is not in the conversation
    output: str
    error: bool = False


@dataclass(frozen=True)
class Ask:
    """What of a request decides the answer, read from any format."""

    tools: tuple[Tool, ...] = ()
    choice: str = "auto"  # auto, none, required or tool (then `named` is the tool)
    named: str = ""
    parallel: bool = True
    prompt: str = ""  # the text of the last user message
    results: tuple[Result, ...] = ()  # the tool results the conversation ends with
    reasoning: bool = False


@dataclass(frozen=True)
class Call:
    name: str
    arguments: str  # a JSON object, as text

    @property
    def fragments(self) -> list[str]:
        """The arguments as streamed: FRAGMENT characters at a time."""
        text = self.arguments
        return [text[i : i + FRAGMENT] for i in range(0, len(text), FRAGMENT)] or [""]


@dataclass(frozen=True)
class Plan:
    """An answer: reasoning pieces, then text pieces or tool calls. Usage counts a piece or fragment a token, except
    where `text_tokens` says otherwise (a plain model counts Behaviour.chunks for its text)."""

    text: tuple[str, ...] = ()
    calls: tuple[Call, ...] = ()
    reasoning: tuple[str, ...] = ()
    text_tokens: int = 0

    @property
    def reasoning_tokens(self) -> int:
        return len(self.reasoning)

    @property
    def output_tokens(self) -> int:
        return self.text_tokens + self.reasoning_tokens + sum(len(call.fragments) for call in self.calls)


def is_reasoning_model(model: str) -> bool:
    """A model whose name marks it as a reasoning one: it contains "reason" (deepseek-reasoner), or, after any
    `provider/` prefix, starts with o1, o3 or o4 (o3-mini, openai/o4-mini)."""
    return bool(_REASONING_MODEL.search(model.lower().rpartition("/")[2]))


def words(text: str) -> list[str]:
    """`text` in streamed pieces: a word each, with the spaces before it (and the last with those after it)."""
    return re.findall(r"\s*\S+(?:\s+$)?|\s+$", text)


def label(name: Any, call: Any) -> str:
    """What a quote calls a tool result: its tool's name, else its call's id."""
    for value in (name, call):
        if isinstance(value, str) and value:
            return value
    return "a tool"


def mentions(prompt: str, name: str) -> bool:
    return bool(name) and re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", prompt, re.IGNORECASE) is not None


def chosen(ask: Ask) -> list[Tool]:
    """The tools the answer calls (see the module's rule)."""
    if not ask.tools or ask.choice == "none":
        return []
    if ask.choice == "tool":
        return [next((t for t in ask.tools if t.name == ask.named), ask.tools[0])]
    named = [t for t in ask.tools if mentions(ask.prompt, t.name)]
    if not named and ask.choice == "required":
        named = [ask.tools[0]]
    return named if ask.parallel else named[:1]


def quote(results: tuple[Result, ...]) -> str:
    return "; ".join(f"{r.label} {'failed' if r.error else 'returned'}: {r.output}" for r in results)


def decide(ask: Ask, pieces: list[str], text_tokens: int) -> Plan:
    """The answer to `ask`: `pieces` (counted as `text_tokens`) unless tool results or tool calls come instead."""
    reasoning = REASONING_PIECES if ask.reasoning else ()
    if ask.results:
        quoted = tuple(words(quote(ask.results)))
        return Plan(text=quoted, reasoning=reasoning, text_tokens=len(quoted))
    calls = tuple(Call(t.name, json.dumps(arguments_for(t.schema))) for t in chosen(ask))
    if calls:
        return Plan(calls=calls, reasoning=reasoning)
    return Plan(text=tuple(pieces), reasoning=reasoning, text_tokens=text_tokens)


def output_text(value: Any) -> str:
    """A tool result's content as text: a string, or the text of its parts (others as JSON)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(str(p.get("text", "")) if isinstance(p, dict) and "text" in p else json.dumps(p) for p in value)
    return "" if value is None else json.dumps(value)
