"""Safe YAML loading that keeps a 1-based line/column mark for every value and key.

Only plain data gets through: mappings with string keys, lists, strings, integers,
floats, booleans and null. Anchors, aliases, explicit tags and multiple documents are
refused, and every failure is one located `SpecError`.

Scalars resolve by the YAML 1.2 core schema, so ``1e-6`` is a float and ``yes`` is a
string (YAML 1.1 would read ``1e-6`` as a string and ``yes`` as true).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.events import AliasEvent, StreamEndEvent
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from specgrow.errors import SpecError
from specgrow.spec.types import Mark

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_DIGITS = 100

KeyPath = tuple  # where a value sits in the file, e.g. ("steps", 3, "key", "to")

_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"


class _Loader(yaml.SafeLoader):
    """A SafeLoader that refuses anchors, aliases and explicit tags while composing."""

    yaml_implicit_resolvers: dict = {}

    def __init__(self, text: str, file: str):
        super().__init__(text)
        self.file = file
        self.depth = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, AliasEvent) or event.anchor is not None:
            raise _error(self.file, event.start_mark, "YAML aliases/anchors are not allowed")
        if event.tag is not None:
            raise _error(
                self.file, event.start_mark, f"YAML tags are not allowed, found {event.tag!r}"
            )
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _error(self.file, event.start_mark, f"nesting deeper than {MAX_DEPTH} levels")
        node = super().compose_node(parent, index)
        self.depth -= 1
        return node


# YAML 1.2 core schema. `.inf` and `.nan` are left as strings: no spec value may be infinite.
_Loader.add_implicit_resolver(_NULL, re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""])
_Loader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    _INT, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
_Loader.add_implicit_resolver(
    _FLOAT,
    re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$"),
    list("-+.0123456789"),
)


@dataclass(frozen=True)
class Document:
    """Plain data from a YAML file plus the marks of every value and mapping key."""

    file: str
    data: dict
    value_marks: dict[KeyPath, Mark]
    key_marks: dict[KeyPath, Mark]

    def mark(self, path: KeyPath) -> Mark:
        """Mark of the value at `path`, or of its nearest ancestor that exists."""
        while path not in self.value_marks:
            path = path[:-1]
        return self.value_marks[path]

    def key_mark(self, path: KeyPath) -> Mark:
        """Mark of the mapping key that names `path` (the value's mark for list items)."""
        return self.key_marks.get(path) or self.mark(path)

    def error(self, path: KeyPath, message: str, *, at_key: bool = False) -> SpecError:
        """A `SpecError` located at the value (or key) at `path`."""
        mark = self.key_mark(path) if at_key else self.mark(path)
        return SpecError(message, path=self.file, line=mark.line, column=mark.column)


def load_yaml(data: bytes, file: str) -> Document:
    """Parse spec bytes into a `Document`; raise `SpecError` for anything but plain data.

    >>> load_yaml(b"a: [1, 2e3]", "x.yaml").data
    {'a': [1, 2000.0]}
    """
    if len(data) > MAX_BYTES:
        raise SpecError(f"spec is larger than 1 MiB ({MAX_BYTES} bytes)", path=file)
    text = _decode(data, file)
    try:
        loader = _Loader(text, file)
    except yaml.reader.ReaderError as exc:
        line, column = _line_column(text, exc.position)
        message = f"invalid YAML: unacceptable character #x{exc.character:04x}: {exc.reason}"
        raise SpecError(message, path=file, line=line, column=column) from None
    try:
        node = _single_node(loader)
    except yaml.MarkedYAMLError as exc:
        raise _yaml_error(file, exc) from None
    finally:
        loader.dispose()
    if node is None or (isinstance(node, ScalarNode) and node.tag == _NULL):
        raise SpecError("empty spec", path=file)
    if not isinstance(node, MappingNode):
        kind = "a list" if isinstance(node, SequenceNode) else "a scalar"
        raise _error(file, node.start_mark, f"<top>: expected a mapping, found {kind}")
    value_marks: dict[KeyPath, Mark] = {}
    key_marks: dict[KeyPath, Mark] = {}
    data = _build(node, (), file, value_marks, key_marks)
    return Document(file, data, value_marks, key_marks)


def _decode(data: bytes, file: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        column = len(data[start : exc.start].decode("utf-8", "replace")) + 1
        byte = data[exc.start]
        raise SpecError(
            f"spec is not valid UTF-8: byte 0x{byte:02x} ({exc.reason})",
            path=file,
            line=line,
            column=column,
        ) from None


def _single_node(loader: _Loader):
    loader.get_event()  # stream start
    node = None
    if not loader.check_event(StreamEndEvent):
        node = loader.compose_document()
    if not loader.check_event(StreamEndEvent):
        event = loader.get_event()
        raise _error(
            loader.file, event.start_mark, "a spec is one YAML document; found a second one"
        )
    return node


def _build(node, path: KeyPath, file: str, value_marks: dict, key_marks: dict) -> Any:
    """Plain data from `node`, recording the marks of every value and key below it."""
    value_marks[path] = _mark(node.start_mark)
    if isinstance(node, ScalarNode):
        return _scalar(node, file)
    if isinstance(node, SequenceNode):
        return [
            _build(item, path + (i,), file, value_marks, key_marks)
            for i, item in enumerate(node.value)
        ]
    result: dict = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, ScalarNode):
            raise _error(
                file, key_node.start_mark, "mapping keys must be strings, found a collection"
            )
        key = _scalar(key_node, file)
        if not isinstance(key, str):
            found = {None: "null", True: "true", False: "false"}.get(key, key)
            raise _error(file, key_node.start_mark, f"mapping keys must be strings, found {found}")
        if key in result:
            raise _error(file, key_node.start_mark, f"duplicate key {key!r}")
        key_marks[path + (key,)] = _mark(key_node.start_mark)
        result[key] = _build(value_node, path + (key,), file, value_marks, key_marks)
    return result


def _scalar(node: ScalarNode, file: str) -> Any:
    value = node.value
    if node.tag == _NULL:
        return None
    if node.tag == _BOOL:
        return value in ("true", "True", "TRUE")
    if node.tag == _INT and len(value) <= MAX_DIGITS:
        if value.startswith(("0o", "0x")):
            return int(value[2:], 8 if value[1] == "o" else 16)
        return int(value)
    if node.tag == _FLOAT and math.isfinite(float(value)):
        return float(value)
    if node.tag in (_INT, _FLOAT):
        raise _error(file, node.start_mark, f"number out of range: {value[:40]}")
    return value


def _mark(mark) -> Mark:
    return Mark(mark.line + 1, mark.column + 1)


def _line_column(text: str, position: int) -> tuple[int, int]:
    line = text.count("\n", 0, position) + 1
    return line, position - (text.rfind("\n", 0, position) + 1) + 1


def _error(file: str, mark, message: str) -> SpecError:
    return SpecError(message, path=file, line=mark.line + 1, column=mark.column + 1)


def _yaml_error(file: str, exc: yaml.MarkedYAMLError) -> SpecError:
    mark = exc.problem_mark or exc.context_mark
    message = f"invalid YAML: {exc.problem or exc.context}"
    if exc.context and exc.context_mark and exc.problem:
        where = exc.context_mark
        message += f" ({exc.context} at line {where.line + 1}, column {where.column + 1})"
    if mark is None:
        return SpecError(message, path=file)
    return _error(file, mark, message)
