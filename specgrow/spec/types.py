"""Frozen, canonical form of a growth spec.

Everything here is plain data: no torch, no sympy. A `Spec` is produced once by
`specgrow.spec.load_spec` after schema and semantic validation, with every default
expanded (``layers`` resolved to explicit indices, ``at`` resolved, every init role
filled in, ``placement`` decided), so later stages never look at raw YAML.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Union

Norm = Literal["rmsnorm", "layernorm"]
Activation = Literal["relu", "gelu", "gelu_tanh", "silu", "swiglu"]
PROJECTIONS = ("q", "k", "v", "o", "up", "gate", "down")  # the linear layers that may carry a bias
Position = Literal["none", "learned", "rope"]


# ---------------------------------------------------------------- init choices
@dataclass(frozen=True)
class Zeros:
    """Fill the new slice with 0."""


@dataclass(frozen=True)
class Ones:
    """Fill the new slice with 1 (norm gains)."""


@dataclass(frozen=True)
class Normal:
    """Normal(0, std²)."""

    std: float


@dataclass(frozen=True)
class Uniform:
    """Uniform(-a, a)."""

    a: float


@dataclass(frozen=True)
class LikeOld:
    """Normal with the old tensor's mean and its std times ``factor``."""

    factor: float


Init = Union[Zeros, Ones, Normal, Uniform, LikeOld, "DefaultRest"]


# ---------------------------------------------------------------- the model
@dataclass(frozen=True)
class Dims:
    hidden: int
    mlp: int
    heads: int
    kv_heads: int
    key: int
    value: int
    layers: int
    vocab: int
    positions: int


@dataclass(frozen=True)
class ModelSpec:
    arch: Literal["reference", "gpt2", "llama"]
    dims: Dims
    norm: Norm
    norm_eps: float
    activation: Activation
    position: Position
    rope_theta: float
    final_norm: bool
    tie_embeddings: bool
    bias: tuple[str, ...]  # the projections (of PROJECTIONS) that carry a bias


# ---------------------------------------------------------------- the steps
InitMap = tuple[tuple[str, Init], ...]  # (role, init) for every role of the step, sorted by role


class _Step:
    init: InitMap

    def init_for(self, role: str) -> Init:
        for name, init in self.init:
            if name == role:
                return init
        raise KeyError(role)


@dataclass(frozen=True)
class MlpStep(_Step):
    to: int
    layers: tuple[int, ...]
    method: Literal["zero", "duplicate"]
    noise: float
    init: InitMap
    kind: str = "mlp"


@dataclass(frozen=True)
class HeadsStep(_Step):
    add: int
    layers: tuple[int, ...]
    method: Literal["zero", "duplicate"]
    noise: float
    init: InitMap
    kind: str = "heads"


@dataclass(frozen=True)
class ValueStep(_Step):
    to: int
    layers: tuple[int, ...]
    init: InitMap
    kind: str = "value"


@dataclass(frozen=True)
class KeyStep(_Step):
    to: int
    layers: tuple[int, ...]
    rescale: Literal["k", "q", "none"]
    placement: Literal["interleave", "append"]
    init: InitMap
    kind: str = "key"


@dataclass(frozen=True)
class HiddenStep(_Step):
    to: int
    method: Literal["zero", "duplicate"]
    noise: float
    rescale: Literal["gain-and-eps", "gain", "none"]
    init: InitMap
    kind: str = "hidden"


@dataclass(frozen=True)
class LayersStep(_Step):
    add: int
    at: int
    init: InitMap
    kind: str = "layers"


Step = Union[MlpStep, HeadsStep, ValueStep, KeyStep, HiddenStep, LayersStep]

# The roles (new slices) of each step and their preserving defaults (DESIGN §2).
# LayersStep's "rest" default is resolved per tensor kind at compile time: matrices
# like_old(1.0), norm gains ones, biases zeros; an explicit "rest" applies to all.
ROLES: dict[str, tuple[str, ...]] = {
    "mlp": ("b_in", "w_gate", "w_in", "w_out"),
    "heads": ("k", "o", "q", "v"),
    "value": ("o", "v"),
    "key": ("k", "q"),
    "hidden": ("bias", "embed", "gain", "pos", "read", "write"),
    "layers": ("o", "rest", "w_out"),
}


@dataclass(frozen=True)
class DefaultRest:
    """Placeholder init for ``layers.rest`` when the user gave none (resolved per tensor kind)."""


DEFAULT_INIT: dict[str, dict[str, Init]] = {
    "mlp": {"w_in": LikeOld(1.0), "w_gate": LikeOld(1.0), "b_in": Zeros(), "w_out": Zeros()},
    "heads": {"q": LikeOld(1.0), "k": LikeOld(1.0), "v": LikeOld(1.0), "o": Zeros()},
    "value": {"v": LikeOld(1.0), "o": Zeros()},
    "key": {"q": LikeOld(1.0), "k": Zeros()},
    "hidden": {
        "embed": Zeros(),
        "pos": Zeros(),
        "read": LikeOld(1.0),
        "write": Zeros(),
        "gain": Ones(),
        "bias": Zeros(),
    },
    "layers": {"o": Zeros(), "w_out": Zeros(), "rest": DefaultRest()},  # type: ignore[dict-item]
}


@dataclass(frozen=True)
class Mark:
    """A 1-based line and column in the spec file."""

    line: int
    column: int


@dataclass(frozen=True)
class Spec:
    path: str
    sha256: str
    version: int
    model: ModelSpec
    seed: int
    steps: tuple[Step, ...]
    step_marks: tuple[Mark, ...]
    # steps written by the user; for HF families, steps after these pad every layer to the
    # widest (HF configs are uniform) and are marked at model.arch
    user_steps: int = -1
