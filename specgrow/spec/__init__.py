"""Growth specs: safe YAML with marks → JSON Schema → semantic checks → a frozen `Spec`.

Never imports torch or sympy.
"""

from __future__ import annotations

import os

from specgrow.errors import InputError
from specgrow.spec.canonical import build_spec
from specgrow.spec.schema import validate
from specgrow.spec.types import (
    DEFAULT_INIT,
    ROLES,
    DefaultRest,
    Dims,
    HeadsStep,
    HiddenStep,
    Init,
    InitMap,
    KeyStep,
    LayersStep,
    LikeOld,
    Mark,
    MlpStep,
    ModelSpec,
    Normal,
    Ones,
    Spec,
    Stage,
    Step,
    Uniform,
    ValueStep,
    Zeros,
)
from specgrow.spec.yaml_loader import MAX_BYTES, load_yaml

__all__ = [
    "DEFAULT_INIT",
    "ROLES",
    "DefaultRest",
    "Dims",
    "HeadsStep",
    "HiddenStep",
    "Init",
    "InitMap",
    "KeyStep",
    "LayersStep",
    "LikeOld",
    "Mark",
    "MlpStep",
    "ModelSpec",
    "Normal",
    "Ones",
    "Spec",
    "Stage",
    "Step",
    "Uniform",
    "ValueStep",
    "Zeros",
    "load_spec",
    "load_spec_text",
]


def load_spec(path: str | os.PathLike) -> Spec:
    """Read, validate and canonicalise a spec file.

    Raises `InputError` (exit 2) when the file cannot be read and `SpecError` (exit 1)
    when it is not a valid spec.
    """
    file = os.fspath(path)
    try:
        with open(file, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise InputError(f"cannot read spec: {exc.strerror or exc}", path=file) from None
    return load_spec_text(data, file)


def load_spec_text(text: str | bytes, path: str = "<string>") -> Spec:
    """Validate and canonicalise spec text; `path` only names it in errors.

    >>> spec = load_spec_text('''
    ... specgrow: 1
    ... model: {dims: {hidden: 8, mlp: 16, heads: 2, layers: 3, vocab: 10, positions: 4}}
    ... steps: [{mlp: {to: 32, layers: [2, 0]}}, {layers: {add: 1}}]
    ... ''')
    >>> spec.model.dims.key, spec.steps[0].layers, spec.steps[1].at
    (4, (0, 2), 3)
    """
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    doc = load_yaml(data, path)
    validate(doc)
    return build_spec(doc, data)
