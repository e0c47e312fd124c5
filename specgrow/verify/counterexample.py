"""A concrete witness for a nonzero residual: the reference model, grown, on seeded tokens.

Only the REFUTED path imports torch. The witness is shrunk where that cannot change the
steps: the smallest vocabulary and context (4 and 4) are tried first, then the spec's own;
widths and depth stay the spec's. It reports the last position's first logits of both
models and the max difference beyond the fp32 tolerance.

For a growth plan the model trains between stages, so a stage may break the function only
on weights that earlier stages did not leave as they made them (e.g. a zero slice). When
growing the reference model through every stage shows nothing, each stage is tried alone on
a random model of the shape it starts from; the witness then names that stage.
"""

from __future__ import annotations

import dataclasses

from specgrow.verify.result import Counterexample

SMALL = 4  # vocabulary size and context length tried first


def find_counterexample(spec, plan, seeds=(0, 1, 2)) -> Counterexample | None:
    from specgrow.shape import ModelShape
    from specgrow.transforms import compile_steps

    shape = ModelShape.from_spec(spec.model)
    small = dataclasses.replace(shape, vocab=min(SMALL, shape.vocab), positions=min(SMALL, shape.positions))
    plans = [compile_steps(spec.steps, small, spec.seed), plan] if small != shape else [plan]
    for candidate in plans:
        for offset in seeds:
            found = _witness(candidate, spec.seed + offset)
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


def _witness(plan, seed) -> Counterexample | None:
    import torch

    from specgrow.lower.apply import grow_state
    from specgrow.lower.numeric import compare, logits, tokens_for
    from specgrow.models.reference import random_state

    states = grow_state(random_state(plan.before, seed), plan.concrete(), "cpu")
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
    )
