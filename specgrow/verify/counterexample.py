"""Concrete witnesses for a nonzero residual: random float64 models grown with numpy (no torch).

`step_witness` grows one step alone, from a random model of the shape it starts from, with
the tensors earlier steps left exactly zero set to zero; `stage_witness` grows one stage of
a growth plan alone, with nothing zeroed (the model trains between stages, so an earlier
stage's zeros are gone). In both, a router whose logits earlier steps tied for every token
(`specgrow.verify.experts.ties_after`; training need not break such a tie) gets one row for
all its experts. Each search is `specgrow.verify.witness.find_witness` (several seeds, norm gains and bias
scales).

The witness is shrunk where that cannot change the steps: the steps are recompiled at the
smallest vocabulary and context (`SMALL`) and tried first, then the spec's own; widths and
depth stay the spec's. Found or not, the verdict stays honest: without a witness the
residual is UNKNOWN, never PROVED.
"""

from __future__ import annotations

import dataclasses

from specgrow.shape import tensor_name
from specgrow.verify.result import Counterexample
from specgrow.verify.witness import find_witness

SMALL = 4  # vocabulary size and context length tried first


def step_witness(spec, plan, index: int, zeros=frozenset(), tied=frozenset()) -> Counterexample | None:
    """A witness that ``plan.steps[index]`` alone changes the function, ``zeros`` set to zero first and
    each router of ``tied`` given one row for all its experts."""
    for steps in _candidates(spec, plan, index, index + 1):
        found = find_witness(steps, steps[0].before, spec.seed, zeros, tied=tied)
        if found is not None:
            return dataclasses.replace(found, step=index, zeroed=_names(zeros), tied=_names(tied))
    return None


def stage_witness(spec, plan, stage_number: int, tied=frozenset()) -> Counterexample | None:
    """A witness that the steps of ``spec.stages[stage_number]`` alone change the function, each router of
    ``tied`` (earlier stages tied its logits: training need not break that) given one row."""
    stage = spec.stages[stage_number]
    for steps in _candidates(spec, plan, stage.start, stage.stop):
        found = find_witness(steps, steps[0].before, spec.seed, tied=tied)
        if found is not None:
            return dataclasses.replace(found, stage=stage_number, tied=_names(tied))
    return None


def _names(keys) -> tuple[str, ...]:
    return tuple(sorted(tensor_name(*key) for key in keys))


def _candidates(spec, plan, start: int, stop: int):
    """``steps[start:stop]`` recompiled at the small vocabulary and context, then the plan's own.

    The small ones are compiled only when asked for (SymPy); an empty range gives nothing.
    """
    if start >= stop:
        return
    shape = plan.before
    small = dataclasses.replace(shape, vocab=min(SMALL, shape.vocab), positions=min(SMALL, shape.positions))
    if small != shape:
        from specgrow.transforms import compile_steps

        yield compile_steps(spec.steps[:stop], small, spec.seed).steps[start:stop]
    yield plan.steps[start:stop]
