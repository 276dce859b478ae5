"""Tool-call arguments made from a tool's JSON schema: what every format's fake puts in the calls it makes.

`arguments_for(schema)` is a deterministic JSON object that satisfies the common part of JSON Schema, so a client
that validates the arguments it gets (pydantic, zod, the SDKs' strict tools) accepts them: every required property
gets a value of its type; `const` is that value, `enum` its first member; `anyOf`/`oneOf` take their first branch
that is not null, `allOf` merges its object branches; a type list takes its first type that is not null; local
`$ref`s (`#/$defs/...`, `#/definitions/...`) are followed; arrays get `minItems` items (at least one, unless
`maxItems` is 0); strings get the property's name (a date, date-time, email, uri or uuid for those formats), padded
or cut to minLength/maxLength; numbers the smallest value their bounds allow, else 1. Properties that are not
required are left out, so `{"type": "object"}` with none required gives `{}`.
"""

from __future__ import annotations

import math
from typing import Any

# Past this depth (a schema that refers to itself, or a hostile one) a value is null, and so is every value past
# the first MAX_VALUES (nested arrays multiply): the arguments stay small whatever the schema.
MAX_DEPTH = 12
MAX_VALUES = 256
MAX_ITEMS = 8  # minItems beyond this still gives this many: arguments are an example, not a load test
FORMATS = {
    "date": "2025-01-01",
    "date-time": "2025-01-01T00:00:00Z",
    "time": "00:00:00Z",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
    "hostname": "example.com",
}


def arguments_for(schema: Any) -> dict[str, Any]:
    """A tool call's arguments for a tool whose parameters (input_schema) are `schema`: always an object."""
    value = Example(schema if isinstance(schema, dict) else {}).of(schema, "value", 0)
    return value if isinstance(value, dict) else {}


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any] | None:
    ref = schema.get("$ref")
    if not isinstance(ref, str):
        return schema
    if not ref.startswith("#"):
        return None  # a remote schema: nothing to follow
    target: Any = root
    for part in ref.lstrip("#").strip("/").split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        target = target.get(part) if isinstance(target, dict) else None
    return target if isinstance(target, dict) else None


def _merged(branches: list[Any], root: dict[str, Any], depth: int) -> dict[str, Any]:
    """allOf's object branches as one object schema: their properties and required names together."""
    properties: dict[str, Any] = {}
    required: list[Any] = []
    for branch in branches:
        branch = _resolve(branch, root) if isinstance(branch, dict) else None
        if branch is None:
            continue
        if isinstance(branch.get("allOf"), list) and depth < MAX_DEPTH:
            branch = _merged(branch["allOf"], root, depth + 1)
        if isinstance(branch.get("properties"), dict):
            properties.update(branch["properties"])
        if isinstance(branch.get("required"), list):
            required.extend(branch["required"])
    return {"type": "object", "properties": properties, "required": required}


def _type_of(schema: dict[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null" if kind else None)
    if isinstance(kind, str):
        return kind
    if "properties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return None


class Example:
    """Values for the schemas of one tool: `root` is its whole schema (for $ref), `left` the values still to make."""

    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.left = MAX_VALUES

    def of(self, schema: Any, name: str, depth: int) -> Any:
        """A value that `schema` accepts; `name` is the property it is for (a string's value)."""
        if depth > MAX_DEPTH or not isinstance(schema, dict) or self.left <= 0:
            return None
        self.left -= 1
        resolved = _resolve(schema, self.root)
        if resolved is None:
            return None
        schema = resolved
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return schema["enum"][0]
        for key in ("anyOf", "oneOf"):
            branches = schema.get(key)
            if isinstance(branches, list) and branches:
                chosen = next(
                    (b for b in branches if not (isinstance(b, dict) and b.get("type") == "null")), branches[0]
                )
                return self.of(chosen, name, depth + 1)
        if isinstance(schema.get("allOf"), list):
            return self.of(_merged(schema["allOf"], self.root, depth), name, depth + 1)
        kind = _type_of(schema)
        if kind == "object":
            properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
            required = schema.get("required") if isinstance(schema.get("required"), list) else []
            names = [key for key in required if isinstance(key, str)]
            return {key: self.of(properties.get(key, {}), key, depth + 1) for key in dict.fromkeys(names)}
        if kind == "array":
            low, high = _bound(schema.get("minItems")), _bound(schema.get("maxItems"))
            count = 0 if high == 0 else min(max(1, int(low or 0)), MAX_ITEMS)
            items = schema.get("items")
            if isinstance(items, list):  # the old tuple form: one schema per position
                return [self.of(item, name, depth + 1) for item in items[:MAX_ITEMS]]
            return [self.of(items if isinstance(items, dict) else {}, name, depth + 1) for _ in range(count)]
        if kind in ("integer", "number"):
            return _number(schema, integer=kind == "integer")
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return _string(schema, name)


def _bound(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _number(schema: dict[str, Any], integer: bool) -> int | float:
    low, high = _bound(schema.get("minimum")), _bound(schema.get("maximum"))
    step = 1 if integer else 0.5
    if low is None and (above := _bound(schema.get("exclusiveMinimum"))) is not None:
        low = above + step
    if high is None and (below := _bound(schema.get("exclusiveMaximum"))) is not None:
        high = below - step
    value = low if low is not None else (min(1.0, high) if high is not None else 1.0)
    if integer:
        return math.ceil(value) if low is not None else math.floor(value)
    return float(value)


def _string(schema: dict[str, Any], name: str) -> str:
    text = FORMATS.get(str(schema.get("format")), name or "value")
    low, high = _bound(schema.get("minLength")), _bound(schema.get("maxLength"))
    if low is not None and len(text) < low:
        text += "x" * (min(int(low), 4096) - len(text))
    if high is not None and len(text) > high:
        text = text[: max(0, int(high))]
    return text
