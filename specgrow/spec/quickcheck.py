"""A yes/no check of a document against the v1 schema, without importing jsonschema.

It knows exactly the keywords the v1 schema uses and answers False for anything else, so
it can only say "valid" when jsonschema would; on False, `specgrow.spec.schema` runs
jsonschema to find and word the error. Valid specs, the common case, then start faster.
`tests/test_spec.py` checks that both agree on every spec in the repository, on every
malformed case, and on random mutations of valid specs.
"""

from __future__ import annotations

from typing import Any

ANNOTATIONS = {"description", "title", "$schema", "$defs"}
TYPES = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}


def conforms(value: Any, schema: Any, root: dict) -> bool:
    """True only if ``value`` is valid against ``schema`` (a part of ``root``)."""
    if schema is True or schema == {}:
        return True
    if schema is False or not isinstance(schema, dict):
        return False
    for keyword, arg in schema.items():
        if keyword in ANNOTATIONS:
            continue
        check = KEYWORDS.get(keyword)
        if check is None or not check(value, arg, schema, root):
            return False
    return True


def _same(a, b) -> bool:
    """JSON equality: true is not 1, and 1 equals 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _number(v) -> bool:
    return TYPES["number"](v)


def _type(v, arg, *_):
    names = arg if isinstance(arg, list) else [arg]
    return any(TYPES[name](v) for name in names if name in TYPES)


def _additional(v, arg, schema, root):
    if not isinstance(v, dict):
        return True
    extra = [k for k in v if k not in schema.get("properties", {})]
    return all(conforms(v[k], arg, root) for k in extra)


def _properties(v, arg, schema, root):
    return not isinstance(v, dict) or all(conforms(v[k], sub, root) for k, sub in arg.items() if k in v)


def _ref(v, arg, schema, root):
    if not arg.startswith("#/$defs/"):
        return False
    target = root.get("$defs", {}).get(arg[len("#/$defs/"):])
    return target is not None and conforms(v, target, root)


KEYWORDS = {
    "type": _type,
    "enum": lambda v, arg, *_: any(_same(v, x) for x in arg),
    "const": lambda v, arg, *_: _same(v, arg),
    "minimum": lambda v, arg, *_: not _number(v) or v >= arg,
    "maximum": lambda v, arg, *_: not _number(v) or v <= arg,
    "exclusiveMinimum": lambda v, arg, *_: not _number(v) or v > arg,
    "properties": _properties,
    "required": lambda v, arg, *_: not isinstance(v, dict) or all(k in v for k in arg),
    "additionalProperties": _additional,
    "items": lambda v, arg, s, root: not isinstance(v, list) or all(conforms(x, arg, root) for x in v),
    "minItems": lambda v, arg, *_: not isinstance(v, list) or len(v) >= arg,
    "maxItems": lambda v, arg, *_: not isinstance(v, list) or len(v) <= arg,
    "uniqueItems": lambda v, arg, *_: not (arg and isinstance(v, list)) or all(
        not _same(v[i], v[j]) for i in range(len(v)) for j in range(i + 1, len(v))),
    "minProperties": lambda v, arg, *_: not isinstance(v, dict) or len(v) >= arg,
    "maxProperties": lambda v, arg, *_: not isinstance(v, dict) or len(v) <= arg,
    "not": lambda v, arg, s, root: not conforms(v, arg, root),
    "oneOf": lambda v, arg, s, root: sum(conforms(v, sub, root) for sub in arg) == 1,
    "$ref": _ref,
}
