"""A concrete witness for a nonzero residual: the reference model, grown, on seeded tokens.

Only the REFUTED path imports torch. The witness is shrunk where that cannot change the
steps: the smallest vocabulary and context (4 and 4) are tried first, then the spec's own;
widths and depth stay the spec's. It reports the last position's first logits of both
models and the max difference beyond the fp32 tolerance.

A new unit can be silent on the random model yet not in general: a ReLU unit whose random
bias is below what its random input weights reach from normalized inputs with gains near 1.
So when the random models show nothing, the same models with every norm gain multiplied by
4, then 16, are tried (the witness records the factor). Found or not, the verdict stays
honest: without a witness the residual is UNKNOWN, never PROVED.

For a growth plan the model trains between stages, so a stage may break the function only
on weights that earlier stages did not leave as they made them (e.g. a zero slice). When
growing the reference model through every stage shows nothing, each stage is tried alone on
a random model of the shape it starts from; the witness then names that stage.
"""

from __future__ import annotations

import dataclasses

from specgrow.verify.result import Counterexample

SMALL = 4  # vocabulary size and context length tried first
GAINS = (1.0, 4.0, 16.0)  # norm gains of the random model multiplied by these, in turn


def find_counterexample(spec, plan, seeds=(0, 1, 2)) -> Counterexample | None:
    from specgrow.shape import ModelShape
    from specgrow.transforms import compile_steps

    shape = ModelShape.from_spec(spec.model)
    small = dataclasses.replace(shape, vocab=min(SMALL, shape.vocab), positions=min(SMALL, shape.positions))
    plans = [compile_steps(spec.steps, small, spec.seed), plan] if small != shape else [plan]
    for gain in GAINS:
        for candidate in plans:
            for offset in seeds:
                found = _witness(candidate, spec.seed + offset, gain)
                if found is not None:
                    return found
    for number, stage in enumerate(spec.stages):
        steps = plan.steps[stage.start:stage.stop]
        alone = dataclasses.replace(plan, steps=steps, before=steps[0].before, after=steps[-1].after)
        for offset in seeds:
            found = _witness(alone, spec.seed + offset)
            if found is not None:
                return dataclasses.replace(found, stage=number)
    return None


def _witness(plan, seed, gain: float = 1.0) -> Counterexample | None:
    import torch

    from specgrow.lower.apply import grow_state
    from specgrow.lower.numeric import compare, logits, tokens_for
    from specgrow.models.reference import random_state
    from specgrow.shape import NORM_GAINS

    state = random_state(plan.before, seed)
    if gain != 1:
        state = {name: t * gain if name.endswith(NORM_GAINS) else t for name, t in state.items()}
    states = grow_state(state, plan.concrete(), "cpu")
    tokens = tokens_for(plan.before, seed, "cpu")
    before = logits(plan.before, states[0], tokens)
    after = logits(plan.after, states[-1], tokens)
    result = compare(before, after, torch.float32, seed)
    if result.passed:
        return None
    dims = plan.before.to_config()
    return Counterexample(
        dims={key: dims[key] for key in ("hidden", "vocab", "positions", "layers")},
        seed=seed, tokens=tokens[0].tolist(),
        reference=[round(float(v), 6) for v in before[0, -1, :4]],
        grown=[round(float(v), 6) for v in after[0, -1, :4]],
        max_abs_diff=result.max_abs_diff, tolerance=f"atol={result.atol:g}, rtol={result.rtol:g}",
        norm_gain=gain,
    )
