"""Check a loaded spec against the v1 JSON Schema; report the first error as one located line.

The message starts with the key path (``steps[3].key.to``, ``stages[1].steps[0].mlp.to``,
``model.dims.hidden``, or ``<top>`` for the root) and says what was expected and what was found.
"""

from __future__ import annotations

import itertools
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from specgrow.spec.quickcheck import conforms
from specgrow.spec.yaml_loader import Document, KeyPath

SCHEMA_FILE = Path(__file__).with_name("specgrow-v1.schema.json")
MAX_ERRORS = 100
STEP_KINDS = ("mlp", "heads", "value", "key", "hidden", "layers", "experts", "upcycle")
INIT_FORMS = "zeros, ones, {normal: STD}, {uniform: A} or {like_old: FACTOR} (numbers >= 0)"
TYPE_NAMES = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "boolean": "a boolean (true or false)",
    "object": "a mapping",
    "array": "a list",
}


@lru_cache(maxsize=1)
def load_schema() -> dict:
    """The v1 JSON Schema as a dict."""
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


@lru_cache(maxsize=1)
def _validator():
    import jsonschema  # only for a document the quick check did not accept

    base = jsonschema.Draft202012Validator
    # YAML gives 1 and 1.0 different types; JSON Schema would accept 1.0 as an integer.
    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool)
    )
    return jsonschema.validators.extend(base, type_checker=checker)(load_schema())


def validate(doc: Document) -> None:
    """Raise one `SpecError` for the first schema violation in file order, if any.

    >>> from specgrow.spec.yaml_loader import load_yaml
    >>> validate(load_yaml(b"{specgrow: 2, model: {dims: {}}, steps: []}", "x.yaml"))
    Traceback (most recent call last):
    specgrow.errors.SpecError: specgrow: expected 1, found 2
    """
    if conforms(doc.data, load_schema(), load_schema()):
        return
    # jsonschema reports root keywords first, then walks the document in order, so the
    # first few errors contain the earliest one; stopping there bounds the cost.
    first = itertools.islice(_validator().iter_errors(doc.data), MAX_ERRORS)
    errors = [_translate(doc, error) for error in first]
    if errors:
        raise min(errors, key=lambda e: (e.line, e.column, -e.depth)).error


def format_path(path: KeyPath) -> str:
    """``("steps", 3, "key", "to")`` → ``steps[3].key.to``; ``()`` → ``<top>``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or "<top>"


class _Located:
    """A translated error; `at` is where it points when that differs from `path` (a key)."""

    def __init__(self, doc: Document, path: KeyPath, message: str, *, at: KeyPath | None = None):
        self.error = doc.error(at or path, f"{format_path(path)}: {message}", at_key=at is not None)
        self.line, self.column, self.depth = self.error.line, self.error.column, len(at or path)


def _translate(doc: Document, error) -> _Located:
    path = tuple(error.absolute_path)
    value, kind, expected = error.instance, error.validator, error.validator_value
    if kind == "oneOf" and path == ():
        return _steps_or_stages(doc, value)
    if kind == "oneOf":
        bound = _init_bound(error.schema, value)
        if bound is not None:
            return _Located(doc, path + (next(iter(value)),), bound)
        return _Located(doc, path, f"expected {INIT_FORMS}; found {show(value)}")
    if kind == "maximum":
        return _Located(doc, path, _over(expected, value, error.schema))
    if _is_step(path, error.schema):
        return _step_error(doc, path, value, kind)
    if kind == "additionalProperties":
        return _unknown_key(doc, path, value, error.schema)
    if kind == "required":
        if error.schema.get("additionalProperties") is False and set(value) - set(error.schema.get("properties", {})):
            return _unknown_key(doc, path, value, error.schema)  # `too: 256` is the cause of a missing `to`
        missing = next(key for key in expected if key not in value)
        return _Located(doc, path, f"missing required key {missing!r}")
    if kind == "not":
        return _Located(doc, path, error.schema["description"], at=path)
    return _Located(doc, path, _expected_found(kind, expected, value))


def _unknown_key(doc: Document, path: KeyPath, value: dict, schema: dict) -> _Located:
    """The first key of ``value`` that ``schema`` does not know, at that key."""
    known = schema.get("properties", {})
    unknown = next(key for key in value if key not in known)
    allowed = ", ".join(sorted(known))
    return _Located(doc, path, f"unknown key {unknown!r} (expected one of: {allowed})", at=path + (unknown,))


def _steps_or_stages(doc: Document, value: dict) -> _Located:
    """The root needs exactly one of ``steps`` and ``stages``."""
    given = [key for key in value if key in ("steps", "stages")]
    if not given:
        return _Located(doc, (), "missing required key 'steps' (or 'stages', for a growth plan)")
    second = max(given, key=lambda key: (doc.key_mark((key,)).line, doc.key_mark((key,)).column))
    return _Located(doc, (), "expected exactly one of steps, stages; found both", at=(second,))


def _is_step(path: KeyPath, subschema: dict) -> bool:
    """A step item: ``steps[i]`` or ``stages[j].steps[i]``."""
    return (
        len(path) >= 2
        and path[-2] == "steps"
        and isinstance(path[-1], int)
        and set(subschema.get("properties", ())) == set(STEP_KINDS)
    )


def _init_bound(schema: dict, value: Any) -> str | None:
    """For an init such as ``{normal: 1e39}``: the message of the bound it exceeds, if any."""
    if not (isinstance(value, dict) and len(value) == 1):
        return None
    (key, number), = value.items()
    for branch in schema.get("oneOf", ()):
        prop = branch.get("properties", {}).get(key) if isinstance(branch, dict) else None
        if prop and "maximum" in prop and _is_number(number) and number > prop["maximum"]:
            return _over(prop["maximum"], number, prop)
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _over(bound: Any, value: Any, schema: dict) -> str:
    """``expected <= B, found V`` and why the bound is there (the schema's ``Bound:`` sentence)."""
    why = schema.get("description", "").partition("Bound: ")[2]
    return f"expected <= {bound}, found {show(value)}" + (f" ({why})" if why else "")


def _step_error(doc: Document, path: KeyPath, value: Any, kind: str) -> _Located:
    expected = f"expected exactly one of {', '.join(STEP_KINDS)}"
    if kind == "type":
        return _Located(doc, path, f"{expected}; found {describe(value)}")
    if not value:
        return _Located(doc, path, f"{expected}; found an empty mapping")
    keys = list(value)
    odd = [key for key in keys if key not in STEP_KINDS]
    culprit = odd[0] if odd else keys[1]
    return _Located(doc, path, f"{expected}; found {', '.join(keys)}", at=path + (culprit,))


def _expected_found(kind: str, expected: Any, value: Any) -> str:
    if kind == "type":
        return f"expected {TYPE_NAMES[expected]}, found {describe(value)}"
    if kind == "enum":
        return f"expected one of {', '.join(map(str, expected))}; found {show(value)}"
    if kind == "const":
        return f"expected {show(expected)}, found {show(value)}"
    bounds = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}
    if kind in bounds:
        return f"expected {bounds[kind]} {expected}, found {show(value)}"
    if kind == "minItems":
        return f"expected at least {expected} item(s), found an empty list"
    if kind == "uniqueItems":
        return f"expected unique items, found {show(value)}"
    return f"expected {kind} {show(expected)}, found {show(value)}"


def describe(value: Any) -> str:
    """A value with its type: ``string 'abc'``, ``integer 3``, ``a mapping``."""
    if isinstance(value, bool) or value is None:
        return show(value)
    if isinstance(value, (dict, list)):
        return f"{'a mapping' if isinstance(value, dict) else 'a list'} {show(value)}"
    name = {str: "string", int: "integer", float: "number"}[type(value)]
    return f"{name} {show(value)}"


def show(value: Any, limit: int = 60) -> str:
    """A short YAML-like rendering: ``'abc'``, ``true``, ``null``, ``{normal: -1}``."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str):
        text = repr(value)
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{key}: {show(item, limit)}" for key, item in value.items()) + "}"
    elif isinstance(value, list):
        text = "[" + ", ".join(show(item, limit) for item in value) + "]"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
