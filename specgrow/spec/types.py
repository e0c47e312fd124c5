"""Frozen, canonical form of a growth spec.

Everything here is plain data: no torch, no sympy. A `Spec` is produced once by
`specgrow.spec.load_spec` after schema and semantic validation, with every default
expanded (``layers`` resolved to explicit indices, ``at`` resolved, every init role
filled in, ``placement`` decided), so later stages never look at raw YAML.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union

Norm = Literal["rmsnorm", "layernorm"]
Activation = Literal["relu", "gelu", "gelu_tanh", "silu", "swiglu", "geglu_tanh"]
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
    arch: str  # a family of `specgrow.arch.FAMILIES`
    dims: Dims
    norm: Norm
    norm_eps: float
    activation: Activation
    position: Position
    rope_theta: float
    final_norm: bool
    tie_embeddings: bool
    bias: tuple[str, ...]  # the projections (of PROJECTIONS) that carry a bias
    qk_norm: str = "none"  # none | head | all
    norm_position: str = "pre"  # pre | post | sandwich
    rope_scaling: tuple = ()  # (key, value) pairs sorted by key; () none
    norm_offset: float = 0.0  # norms multiply by (norm_offset + gain)
    embed_scale: bool = False  # embeddings times sqrt(hidden)
    attn_softcap: float | None = None
    logit_softcap: float | None = None
    attn_scale: float | None = None  # query_pre_attn_scalar
    layer_types: tuple[str, ...] = ()  # per layer: full_attention | sliding_attention; () all full
    rope_local_theta: float | None = None  # RoPE base of sliding-attention layers
    rotary_dims: int | None = None  # partial rotary: the first rotary_dims columns of each head turn
    parallel_residual: bool = False  # x + attn(norm(x)) + mlp(norm'(x))
    # mixture of experts (`model.moe`): every layer but ``dense_layers`` routes each token to ``top_k`` of
    # ``experts`` experts of width ``expert_mlp``; 0 experts: a dense model
    experts: int = 0
    top_k: int = 0
    expert_mlp: int = 0
    renormalize: bool = False  # the top-k weights rescaled to sum 1 (HF norm_topk_prob; Mixtral always)
    dense_layers: tuple[int, ...] = ()


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
    experts: tuple[int, ...] = ()  # MoE layers: the experts whose new units take the init (others zero); () all


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


@dataclass(frozen=True)
class ExpertsStep(_Step):
    """E -> ``to`` experts in each selected MoE layer: ``duplicate`` (copies, top_k x to/E), ``split`` (each
    expert's width cut into to/E experts, top_k x to/E) or ``add`` (new experts, top_k kept)."""

    to: int
    layers: tuple[int, ...]
    method: Literal["duplicate", "split", "add"]
    top_k: tuple[int, ...]  # each grown layer's top_k, in the order of ``layers`` (the method's default unless given)
    noise: float
    init: InitMap
    kind: str = "experts"


@dataclass(frozen=True)
class UpcycleStep(_Step):
    """Each selected dense MLP becomes ``experts`` copies of itself routed to ``top_k`` of them."""

    experts: int
    top_k: int
    renormalize: bool
    layers: tuple[int, ...]
    init: InitMap
    kind: str = "upcycle"


Step = Union[MlpStep, HeadsStep, ValueStep, KeyStep, HiddenStep, LayersStep, ExpertsStep, UpcycleStep]

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
    "experts": {"router": LikeOld(1.0), "w_in": LikeOld(1.0), "w_gate": LikeOld(1.0), "w_out": Zeros()},
    "upcycle": {"router": Zeros()},
}


@dataclass(frozen=True)
class Mark:
    """A 1-based line and column in the spec file."""

    line: int
    column: int


@dataclass(frozen=True)
class Written:
    """A field of the spec's ``model`` section as the file has it.

    ``given`` False: the field is left out and takes its default; ``mark`` is then the key of
    the section that would hold it (``model:`` or ``dims:``), and ``value`` is None.
    """

    mark: Mark
    given: bool
    value: object = None  # as written (a list kept as a tuple); None for the dims mapping itself


@dataclass(frozen=True)
class Stage:
    """One stage of a growth plan (a spec with top-level ``stages``).

    The stage is applied at training step ``at_step`` and owns ``Spec.steps[start:stop]``:
    its own steps, then (HF families) the padding steps that make its result loadable.
    ``mark`` is the position of the stage's item in the file.
    """

    at_step: int
    start: int
    stop: int
    mark: Mark


@dataclass(frozen=True)
class Spec:
    path: str
    sha256: str
    version: int
    model: ModelSpec
    seed: int
    steps: tuple[Step, ...]  # every step in order; for a staged spec, all stages flattened
    step_marks: tuple[Mark, ...]  # where each step is written (padding steps: at model.arch)
    # per step: True for steps specgrow added (HF families) to pad every layer to the widest
    # one, since HF configs are uniform: at the end of the spec, or of each stage
    step_padding: tuple[bool, ...] = ()
    stages: tuple[Stage, ...] = ()  # the growth plan; empty for a spec with top-level `steps`
    # every field of `model` ("model.norm_eps", "model.dims.hidden", and "model.dims" itself)
    # as written: where, and the value, so that a checkpoint's disagreement is located
    model_written: tuple[tuple[str, Written], ...] = ()
    source: bytes = field(default=b"", repr=False, compare=False)  # the bytes read, as `sha256` hashes them

    def written(self, name: str) -> Written:
        """How the model field ``name`` (e.g. ``model.dims.hidden``) is written in the spec."""
        return dict(self.model_written)[name]

    def is_padding(self, index: int) -> bool:
        """Whether ``steps[index]`` was added to pad every layer to one width."""
        return bool(self.step_padding) and self.step_padding[index]

    def stage_of(self, index: int) -> int | None:
        """The index in ``stages`` of the stage that owns ``steps[index]``; None without stages."""
        for number, stage in enumerate(self.stages):
            if stage.start <= index < stage.stop:
                return number
        return None

    def step_path(self, index: int) -> str:
        """Where ``steps[index]`` sits in the file: ``steps[3]`` or ``stages[1].steps[0]``.

        Padding steps continue the numbering of the list they follow.
        """
        number = self.stage_of(index)
        if number is None:
            return f"steps[{index}]"
        return f"stages[{number}].steps[{index - self.stages[number].start}]"
