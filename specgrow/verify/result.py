"""What the prover returns: verdicts, per-sublayer obligations, certificates (plain data).

Three verdicts, never merged: PROVED (every residual rewrote to zero and every side
condition simplified to 0), REFUTED (a nonzero residual, confirmed by a concrete numeric
counterexample), UNKNOWN (rewriting got stuck, or a residual could not be confirmed).
UNKNOWN never passes a gate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum


class Verdict(str, Enum):
    PROVED = "PROVED"
    REFUTED = "REFUTED"
    UNKNOWN = "UNKNOWN"


def combine(verdicts) -> Verdict:
    """REFUTED if any is, else UNKNOWN if any is, else PROVED (PROVED for no obligations)."""
    verdicts = list(verdicts)
    if Verdict.REFUTED in verdicts:
        return Verdict.REFUTED
    if Verdict.UNKNOWN in verdicts:
        return Verdict.UNKNOWN
    return Verdict.PROVED


@dataclass(frozen=True)
class SideCondition:
    text: str  # the condition as an expression that must simplify to 0
    value: str  # what it simplified to
    holds: bool


@dataclass(frozen=True)
class Obligation:
    """One sublayer proof: the grown sublayer on the lifted input equals the lifted old output."""

    step: int
    sublayer: str  # e.g. "mlp", "attention", "embedding", "final norm + unembedding"
    layers: tuple[int, ...]  # the layers whose (identical) structure this one proof covers
    verdict: Verdict
    statement: str  # what was proved, e.g. "mlp'([x, 0]) = [mlp(x), 0]"
    rules: tuple[tuple[str, int], ...] = ()  # rewrite rules applied, with counts
    lemmas: tuple[str, ...] = ()
    side_conditions: tuple[SideCondition, ...] = ()
    residual: str | None = None  # REFUTED: the nonzero term
    hint: str | None = None  # REFUTED: what `solve` says would have been needed
    stuck: str | None = None  # UNKNOWN: the term rewriting could not reduce
    seconds: float = 0.0
    checked: str | None = None  # rewritten to zero: the independent numeric check that confirmed it
    assumptions: tuple[str, ...] = ()  # what a lemma used here takes as given (MoE routing: no ties at the k-th place)


@dataclass(frozen=True)
class StepProof:
    index: int
    kind: str
    description: str
    line: int
    column: int
    verdict: Verdict
    obligations: tuple[Obligation, ...]
    # only for a spec with stages (a growth plan); left out of `Certificate.as_dict` otherwise
    stage: int | None = None  # index in `Certificate.stages` of the stage that owns this step
    at_step: int | None = None  # that stage's training step
    path: str | None = None  # where the step is written, e.g. "stages[1].steps[0]"
    counterexample: Counterexample | None = None  # REFUTED: this step's own witness, grown alone

    @property
    def label(self) -> str:
        """``steps[i]`` or, in a growth plan, ``stages[j].steps[i]``."""
        return self.path or f"steps[{self.index}]"


@dataclass(frozen=True)
class StageProof:
    """One stage of a growth plan: it owns ``Certificate.steps[start:stop]``."""

    index: int
    at_step: int
    start: int
    stop: int
    line: int
    column: int
    verdict: Verdict
    counterexample: Counterexample | None = None  # REFUTED: this stage's own witness, grown alone


@dataclass(frozen=True)
class Counterexample:
    """A concrete witness for REFUTED: the reference model at these dims and seed."""

    dims: dict
    seed: int
    tokens: list
    reference: list  # a few logits of the original model
    grown: list  # the same logits of the grown model
    max_abs_diff: float
    tolerance: str  # what counted as a difference, e.g. "float64, 1e-09 * max(1, max|logit|) = 3.1e-09"
    stage: int | None = None  # a growth plan's stage grown alone from these dims (None: the whole spec)
    norm_gain: float = 1.0  # every norm gain of the random model multiplied by this
    relative_bound: float = 1e-9  # a difference counts above this times max(1, max|logit|)
    bias_scale: float = 1.0  # every bias of the random model multiplied by this
    dtype: str = "float64"  # the precision both models were run in
    step: int | None = None  # the step grown alone from these dims (None: the whole spec, or a stage)
    zeroed: tuple[str, ...] = ()  # tensors set to zero first: earlier steps of the stage left them zero
    tied: tuple[str, ...] = ()  # routers whose rows were set to their first row: earlier steps tied their logits


FLOAT_PROMISE = (
    "PROVED is about the bytes apply writes, not only real numbers: validation bounds every init "
    "magnitude by 10 and duplicate noise by 0.1, so new slices that meet exact zeros give exact zeros "
    "in float32 and bfloat16, and cancelling noise rounds to well within apply's numeric tolerance "
    "(measured: under 0.2 of the bfloat16 and 0.02 of the float32 tolerance on weights of std "
    "1/sqrt(fan_in)); apply's numeric check then confirms it on the checkpoint itself."
)


@dataclass(frozen=True)
class Certificate:
    spec_path: str
    spec_sha256: str
    verdict: Verdict
    steps: tuple[StepProof, ...]
    invariants: tuple[str, ...] = ()  # the representation after each step, e.g. "residual [x, 0]"
    counterexample: Counterexample | None = None
    versions: dict = field(default_factory=dict)
    seconds: float = 0.0
    stages: tuple[StageProof, ...] = ()  # a growth plan's stages; empty for a spec with `steps`
    floating_point: str = FLOAT_PROMISE  # what PROVED promises about floating point, and why

    def as_dict(self) -> dict:
        """Plain JSON data, the spec's path under ``spec`` (as in every JSON output); the stage
        fields appear only for a spec with stages."""
        data = asdict(self)
        data = {"spec": data.pop("spec_path"), **data}
        if data["counterexample"] is not None and self.counterexample.stage is None:
            del data["counterexample"]["stage"]
        if not self.stages:
            del data["stages"]
            for step in data["steps"]:
                for key in STAGE_FIELDS:
                    del step[key]
        return _plain(data)


STAGE_FIELDS = ("stage", "at_step", "path")


def _plain(value):
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
