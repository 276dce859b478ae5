"""What the fakes answer, whatever the format (sidecar/fakes/plan.py) and the arguments they make from a tool's JSON
schema (sidecar/fakes/tools.py): the rule, and arguments that pydantic accepts for any model it describes."""

from __future__ import annotations

import datetime
import enum
import json
import uuid
from typing import Annotated, Any, Literal

import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.fakes.plan import (
    FRAGMENT,
    REASONING,
    REASONING_PIECES,
    Ask,
    Call,
    Result,
    Tool,
    chosen,
    decide,
    is_reasoning_model,
    mentions,
    quote,
)
from sidecar.fakes.tools import MAX_DEPTH, MAX_ITEMS, MAX_VALUES, Example, arguments_for

WEATHER = Tool("get_weather", {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})
TIME = Tool("get_time", {"type": "object", "properties": {}})
TOOLS = (WEATHER, TIME)
PIECES = ["Hello", " there"]


# ---------------------------------------------------------------------------------------------- schemas


def test_required_properties_get_values_of_their_type_and_the_rest_is_left_out() -> None:
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 3, "maximum": 9},
            "ratio": {"type": "number", "exclusiveMinimum": 2},
            "below": {"type": "integer", "exclusiveMaximum": 0},
            "exact": {"const": "x"},
            "flag": {"type": "boolean"},
            "none": {"type": "null"},
            "when": {"type": "string", "format": "date-time"},
            "id": {"type": "string", "format": "uuid"},
            "code": {"type": "string", "minLength": 8, "maxLength": 10},
            "short": {"type": "string", "maxLength": 2},
            "maybe": {"type": ["null", "integer"]},
            "optional": {"type": "string"},
        },
        "required": [
            *("city", "unit", "days", "ratio", "below", "exact", "flag", "none", "when", "id", "code", "short"),
            "maybe",
        ],
    }
    assert arguments_for(schema) == {
        "city": "city",
        "unit": "celsius",
        "days": 3,
        "ratio": 2.5,
        "below": -1,
        "exact": "x",
        "flag": True,
        "none": None,
        "when": "2025-01-01T00:00:00Z",
        "id": "00000000-0000-4000-8000-000000000000",
        "code": "codexxxx",
        "short": "sh",
        "maybe": 1,
    }


def test_nested_objects_arrays_refs_and_combinators() -> None:
    schema = {
        "type": "object",
        "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}},
        "properties": {
            "where": {"$ref": "#/$defs/Point"},
            "path": {"type": "array", "items": {"$ref": "#/$defs/Point"}, "minItems": 2},
            "none": {"type": "array", "items": {"type": "string"}, "maxItems": 0},
            "pair": {"type": "array", "items": [{"type": "string"}, {"type": "integer"}]},
            "either": {"anyOf": [{"type": "null"}, {"type": "string"}]},
            "one": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
            "both": {
                "allOf": [{"$ref": "#/$defs/Point"}, {"properties": {"y": {"type": "integer"}}, "required": ["y"]}]
            },
            "legacy": {"$ref": "#/definitions/Old"},
            "remote": {"$ref": "https://example.com/schema.json"},
            "bare": {},
            "implied": {"properties": {"k": {"type": "boolean"}}, "required": ["k"]},
        },
        "definitions": {"Old": {"type": "integer", "minimum": 5}},
        "required": ["where", "path", "none", "pair", "either", "one", "both", "legacy", "remote", "bare", "implied"],
    }
    assert arguments_for(schema) == {
        "where": {"x": 1.0},
        "path": [{"x": 1.0}, {"x": 1.0}],
        "none": [],
        "pair": ["pair", 1],
        "either": "either",
        "one": 1,
        "both": {"x": 1.0, "y": 1},
        "legacy": 5,
        "remote": None,
        "bare": "bare",
        "implied": {"k": True},
    }


@pytest.mark.parametrize("schema", [None, "string", [], {}, {"type": "string"}, {"type": "object"}, {"$ref": "#/x"}])
def test_arguments_are_always_an_object(schema: Any) -> None:
    assert arguments_for(schema) == {}


def test_a_schema_that_refers_to_itself_or_asks_for_too_much_stays_bounded() -> None:
    node = {"type": "object", "properties": {"next": {"$ref": "#"}}, "required": ["next"]}
    value = arguments_for(node)
    depth = 0
    while isinstance(value, dict):
        value, depth = value["next"], depth + 1
    assert value is None and depth == MAX_DEPTH + 1
    many = {"type": "object", "properties": {"a": {"type": "array", "minItems": 10**9}}, "required": ["a"]}
    assert len(arguments_for(many)["a"]) == MAX_ITEMS
    long = {"type": "object", "properties": {"s": {"type": "string", "minLength": 10**9}}, "required": ["s"]}
    assert len(arguments_for(long)["s"]) == 4096
    assert Example({}).of({"type": "string"}, "x", MAX_DEPTH + 1) is None
    # Nested arrays multiply: 8 ** 11 integers asked for, at most MAX_VALUES values made (past it, nulls).
    nested: dict[str, Any] = {"type": "integer"}
    for _ in range(11):
        nested = {"type": "array", "items": nested, "minItems": 8}
    made = json.dumps(arguments_for({"type": "object", "properties": {"a": nested}, "required": ["a"]}))
    assert made.count("[") + made.count("1") <= MAX_VALUES and made.count("null") <= MAX_VALUES * MAX_ITEMS
    assert made.count("1") > 0 and len(made) < 20 * MAX_VALUES * MAX_ITEMS


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


LEAVES: list[Any] = [
    str,
    int,
    float,
    bool,
    datetime.date,
    datetime.datetime,
    uuid.UUID,
    Colour,
    Literal["only"],
    Literal["a", "b"],
    Annotated[int, pydantic.Field(ge=7)],
    Annotated[int, pydantic.Field(gt=-3, lt=0)],
    Annotated[float, pydantic.Field(gt=2.5)],
    Annotated[float, pydantic.Field(le=-4)],
    Annotated[str, pydantic.Field(min_length=12)],
    Annotated[str, pydantic.Field(max_length=1)],
    Annotated[list[int], pydantic.Field(min_length=3)],
]


def annotations() -> st.SearchStrategy[Any]:
    """Types pydantic turns into JSON schemas: leaves, optional ones, lists, nested models."""

    def extend(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(
            inner.map(lambda t: list[t]),  # type: ignore[valid-type]
            inner.map(lambda t: t | None),
            st.lists(inner, min_size=1, max_size=3).map(model_of),
        )

    return st.recursive(st.sampled_from(LEAVES), extend, max_leaves=8)


COUNTER = iter(range(10**9))


def model_of(types: list[Any], required: list[bool] | None = None) -> type[pydantic.BaseModel]:
    fields: dict[str, Any] = {}
    for i, kind in enumerate(types):
        needed = required[i] if required else True
        fields[f"f{i}"] = (kind, ...) if needed else (kind | None, None)
    return pydantic.create_model(f"M{next(COUNTER)}", **fields)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(annotations(), st.booleans()), min_size=1, max_size=5))
def test_pydantic_accepts_the_arguments_made_from_its_own_schema(fields: list[tuple[Any, bool]]) -> None:
    model = model_of([kind for kind, _ in fields], [needed for _, needed in fields])
    schema = model.model_json_schema()
    arguments = arguments_for(schema)
    model.model_validate(arguments)  # raises if the arguments do not fit the schema
    assert json.loads(json.dumps(arguments)) == arguments == arguments_for(schema)  # JSON, and deterministic


# ---------------------------------------------------------------------------------------------- the rule


def test_auto_calls_the_tools_the_last_user_message_names_as_whole_words() -> None:
    assert [t.name for t in chosen(Ask(tools=TOOLS, prompt="what does GET_TIME say?"))] == ["get_time"]
    assert [t.name for t in chosen(Ask(tools=TOOLS, prompt="get_time, then get_weather"))] == [
        "get_weather",
        "get_time",
    ]
    assert chosen(Ask(tools=TOOLS, prompt="get_timezone is not a tool here")) == []
    assert chosen(Ask(tools=TOOLS, prompt="hi")) == []
    assert chosen(Ask(prompt="get_time")) == []  # no tools, no calls
    assert mentions("call get_time.", "get_time") and not mentions("xget_time", "get_time") and not mentions("x", "")


def test_required_named_none_and_parallel() -> None:
    assert [t.name for t in chosen(Ask(tools=TOOLS, choice="required", prompt="hi"))] == ["get_weather"]
    assert [t.name for t in chosen(Ask(tools=TOOLS, choice="required", prompt="get_time"))] == ["get_time"]
    assert [t.name for t in chosen(Ask(tools=TOOLS, choice="tool", named="get_time"))] == ["get_time"]
    assert [t.name for t in chosen(Ask(tools=TOOLS, choice="tool", named="nope"))] == ["get_weather"]
    assert chosen(Ask(tools=TOOLS, choice="none", prompt="get_time")) == []
    both = "get_weather and get_time"
    assert [t.name for t in chosen(Ask(tools=TOOLS, prompt=both, parallel=False))] == ["get_weather"]


def test_decide_makes_text_calls_or_a_quote_of_the_results() -> None:
    text = decide(Ask(tools=TOOLS, prompt="hi"), PIECES, 5)
    assert (text.text, text.calls, text.reasoning, text.output_tokens) == (tuple(PIECES), (), (), 5)
    calls = decide(Ask(tools=TOOLS, prompt="get_weather", reasoning=True), PIECES, 5)
    assert calls.text == () and calls.calls == (Call("get_weather", '{"city": "city"}'),)
    assert calls.reasoning == REASONING_PIECES and "".join(REASONING_PIECES) == REASONING
    assert calls.output_tokens == len(REASONING_PIECES) + len(calls.calls[0].fragments)
    assert calls.calls[0].fragments == ['{"city": "ci', 'ty"}'] and FRAGMENT == 12
    results = (Result("get_weather", "sunny"), Result("call_9", "boom", error=True))
    quoted = decide(Ask(tools=TOOLS, choice="required", prompt="get_time", results=results), PIECES, 5)
    assert "".join(quoted.text) == "get_weather returned: sunny; call_9 failed: boom" == quote(results)
    assert quoted.calls == () and quoted.output_tokens == len(quoted.text) == 6
    assert Call("f", "").fragments == [""]


@pytest.mark.parametrize(
    ("model", "reasoning"),
    [
        ("o1", True),
        ("o3-mini", True),
        ("o4-mini-2025-04-16", True),
        ("openai/o3", True),
        ("deepseek-reasoner", True),
        ("Qwen-Reasoning-7B", True),
        ("gpt-4o", False),
        ("o2", False),
        ("o1x", False),
        ("gpt-4o-o1", False),
        ("claude-sonnet-4-6", False),
        ("fault-cut", False),
    ],
)
def test_reasoning_models_by_name(model: str, reasoning: bool) -> None:
    assert is_reasoning_model(model) is reasoning
