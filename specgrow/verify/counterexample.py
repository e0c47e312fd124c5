"""Concrete witnesses for a nonzero residual: random float64 models grown with numpy (no torch).

`step_witness` grows one step alone, from a random model of the shape it starts from, with
the tensors earlier steps left exactly zero set to zero; `stage_witness` grows one stage of
a growth plan alone, with nothing zeroed (the model trains between stages, so an earlier
stage's zeros are gone). Each search is `specgrow.verify.witness.find_witness` (several seeds, norm gains and bias
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


def step_witness(spec, plan, index: int, zeros=frozenset()) -> Counterexample | None:
    """A witness that ``plan.steps[index]`` alone changes the function, ``zeros`` set to zero first."""
    for steps in _candidates(spec, plan, index, index + 1):
        found = find_witness(steps, steps[0].before, spec.seed, zeros)
        if found is not None:
            return dataclasses.replace(found, step=index, zeroed=tuple(sorted(tensor_name(*key) for key in zeros)))
    return None


def stage_witness(spec, plan, stage_number: int) -> Counterexample | None:
    """A witness that the steps of ``spec.stages[stage_number]`` alone change the function."""
    stage = spec.stages[stage_number]
    for steps in _candidates(spec, plan, stage.start, stage.stop):
        found = find_witness(steps, steps[0].before, spec.seed)
        if found is not None:
            return dataclasses.replace(found, stage=stage_number)
    return None


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
