"""Safe YAML loading that keeps a 1-based line/column mark for every value and key.

Only plain data gets through: mappings with string keys, lists, strings, integers,
floats, booleans and null. Anchors, aliases, explicit tags and multiple documents are
refused, and every failure is one located `SpecError`.

Values are built straight from the parser's events (no composer, no constructor), so
nothing is ever instantiated from a tag and nesting needs no recursion. Plain scalars
resolve by the YAML 1.2 core schema: ``1e-6`` is a float, ``yes`` is a string.

The C parser (libyaml) is used when PyYAML has it, and decides what is valid. When it
rejects a file, PyYAML's Python parser reads it again to word the error (more precise,
and the same on installations without libyaml).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.events import (
    AliasEvent,
    CollectionEndEvent,
    CollectionStartEvent,
    DocumentStartEvent,
    MappingStartEvent,
    NodeEvent,
    ScalarEvent,
)

from specgrow.errors import SpecError
from specgrow.spec.types import Mark

MAX_BYTES = 1024 * 1024
MAX_DEPTH = 64
MAX_DIGITS = 100

KeyPath = tuple  # where a value sits in the file, e.g. ("steps", 3, "key", "to")

# YAML 1.2 core schema. `.inf` and `.nan` stay strings: no spec value may be infinite.
_NULL = re.compile(r"~|null|Null|NULL|")
_BOOL = re.compile(r"true|True|TRUE|false|False|FALSE")
_INT = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_UNPRINTABLE = yaml.reader.Reader.NON_PRINTABLE

_FAST_LOADER = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader


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

    >>> load_yaml(b"a: [1, 2e3, yes]", "x.yaml").data
    {'a': [1, 2000.0, 'yes']}
    """
    if len(data) > MAX_BYTES:
        raise SpecError(f"spec is larger than 1 MiB ({MAX_BYTES} bytes)", path=file)
    text = _decode(data, file)
    bad = _UNPRINTABLE.search(text)
    if bad:
        line, column = _line_column(text, bad.start())
        message = f"invalid YAML: unprintable character #x{ord(bad.group()):04x} is not allowed"
        raise SpecError(message, path=file, line=line, column=column)
    try:
        return _Builder(file).build(_FAST_LOADER(text))
    except yaml.YAMLError as fast_error:
        error = fast_error
    if _FAST_LOADER is not yaml.SafeLoader:
        try:  # PyYAML's Python parser words errors better and the same everywhere
            _Builder(file).build(yaml.SafeLoader(text))
        except yaml.YAMLError as slow_error:
            error = slow_error
    raise _yaml_error(file, error) from None


class _Builder:
    """Turns parser events into plain data, recording marks and refusing what is not data."""

    def __init__(self, file: str):
        self.file = file
        self.value_marks: dict[KeyPath, Mark] = {}
        self.key_marks: dict[KeyPath, Mark] = {}
        self.open: list[_Open] = []  # the collections being filled, innermost last

    def build(self, loader) -> Document:
        root = None
        documents = 0
        try:
            while loader.check_event():
                event = loader.get_event()
                if isinstance(event, DocumentStartEvent):
                    documents += 1
                    if documents > 1:
                        raise self.error(event, "a spec is one YAML document; found a second one")
                elif isinstance(event, CollectionEndEvent):
                    self.open.pop()
                elif isinstance(event, NodeEvent):
                    at_root = not self.open
                    value = self.node(event)
                    if at_root:
                        root = (value, event)
        finally:
            loader.dispose()
        if root is None or root[0] is None:
            raise SpecError("empty spec", path=self.file)
        if not isinstance(root[0], dict):
            kind = "a list" if isinstance(root[0], list) else "a scalar"
            raise self.error(root[1], f"<top>: expected a mapping, found {kind}")
        return Document(self.file, root[0], self.value_marks, self.key_marks)

    def node(self, event: NodeEvent) -> Any:
        """The value an event starts (a scalar, or an empty collection left open)."""
        if isinstance(event, AliasEvent) or event.anchor is not None:
            raise self.error(event, "YAML aliases/anchors are not allowed")
        if event.tag is not None:
            raise self.error(event, f"YAML tags are not allowed, found {event.tag!r}")
        top = self.open[-1] if self.open else None
        if top is not None and top.waiting_for_key():
            if not isinstance(event, ScalarEvent):
                raise self.error(event, "mapping keys must be strings, found a collection")
            top.key = self.key(top, event)
            return None
        if isinstance(event, ScalarEvent):
            value = self.scalar(event)
        elif len(self.open) >= MAX_DEPTH:
            raise self.error(event, f"nesting deeper than {MAX_DEPTH} levels")
        else:
            value = {} if isinstance(event, MappingStartEvent) else []
        path = top.add(value) if top is not None else ()
        self.value_marks[path] = _mark(event.start_mark)
        if isinstance(event, CollectionStartEvent):
            self.open.append(_Open(value, path))
        return value

    def key(self, top: _Open, event: ScalarEvent) -> str:
        key = self.scalar(event)
        if not isinstance(key, str):
            found = {None: "null", True: "true", False: "false"}.get(key, key)
            raise self.error(event, f"mapping keys must be strings, found {found}")
        if key in top.value:
            raise self.error(event, f"duplicate key {key!r}")
        self.key_marks[top.path + (key,)] = _mark(event.start_mark)
        return key

    def scalar(self, event: ScalarEvent) -> Any:
        value = event.value
        if not event.implicit[0]:  # quoted: always a string
            return value
        if _NULL.fullmatch(value):
            return None
        if _BOOL.fullmatch(value):
            return value in ("true", "True", "TRUE")
        integer, number = _INT.fullmatch(value), _FLOAT.fullmatch(value)
        if (integer and len(value) > MAX_DIGITS) or (number and not math.isfinite(float(value))):
            shown = value if len(value) <= 40 else value[:37] + "..."
            raise self.error(event, f"number out of range: {shown}")
        if integer and value.startswith(("0o", "0x")):
            return int(value[2:], 8 if value[1] == "o" else 16)
        if integer:
            return int(value)
        return float(value) if number else value

    def error(self, event, message: str) -> SpecError:
        mark = event.start_mark
        return SpecError(message, path=self.file, line=mark.line + 1, column=mark.column + 1)


class _Open:
    """A list or mapping still being filled, with its path and the key awaiting a value."""

    def __init__(self, value: list | dict, path: KeyPath):
        self.value = value
        self.path = path
        self.key: str | None = None

    def waiting_for_key(self) -> bool:
        return isinstance(self.value, dict) and self.key is None

    def add(self, item: Any) -> KeyPath:
        """Put `item` in place and return its path."""
        if isinstance(self.value, list):
            self.value.append(item)
            return self.path + (len(self.value) - 1,)
        key, self.key = self.key, None
        self.value[key] = item
        return self.path + (key,)


def _decode(data: bytes, file: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        column = len(data[start : exc.start].decode("utf-8", "replace")) + 1
        message = f"spec is not valid UTF-8: byte 0x{data[exc.start]:02x} ({exc.reason})"
        raise SpecError(message, path=file, line=line, column=column) from None


def _mark(mark) -> Mark:
    return Mark(mark.line + 1, mark.column + 1)


def _line_column(text: str, position: int) -> tuple[int, int]:
    line = text.count("\n", 0, position) + 1
    return line, position - (text.rfind("\n", 0, position) + 1) + 1


def _yaml_error(file: str, exc: yaml.YAMLError) -> SpecError:
    if not isinstance(exc, yaml.MarkedYAMLError):
        return SpecError(f"invalid YAML: {exc}", path=file)
    mark = exc.problem_mark or exc.context_mark
    message = f"invalid YAML: {exc.problem or exc.context}"
    if exc.context and exc.context_mark and exc.problem:
        where = exc.context_mark
        message += f" ({exc.context} at line {where.line + 1}, column {where.column + 1})"
    if mark is None:
        return SpecError(message, path=file)
    return SpecError(message, path=file, line=mark.line + 1, column=mark.column + 1)
