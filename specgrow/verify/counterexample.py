"""A concrete witness for a nonzero residual: the reference model, grown, on seeded tokens.

Only the REFUTED path imports torch. The witness uses the spec's own dims and seed; it
reports the first logits of both models and the max difference beyond the fp32 tolerance.
"""

from __future__ import annotations

from specgrow.verify.result import Counterexample


def find_counterexample(spec, plan, seeds=(0, 1, 2)) -> Counterexample | None:
    import torch

    from specgrow.lower.apply import grow_state
    from specgrow.lower.numeric import compare, logits, tokens_for
    from specgrow.models.reference import random_state

    concrete = plan.concrete()
    for offset in seeds:
        seed = spec.seed + offset
        states = grow_state(random_state(plan.before, seed), concrete, "cpu")
        tokens = tokens_for(plan.before, seed, "cpu")
        before = logits(plan.before, states[0], tokens)
        after = logits(plan.after, states[-1], tokens)
        result = compare(before, after, torch.float32, seed)
        if not result.passed:
            dims = plan.before.to_config()
            return Counterexample(
                dims={key: dims[key] for key in ("hidden", "vocab", "positions", "layers")},
                seed=seed, tokens=tokens[0].tolist(),
                reference=[round(float(v), 6) for v in before[0, -1, :4]],
                grown=[round(float(v), 6) for v in after[0, -1, :4]],
                max_abs_diff=result.max_abs_diff, tolerance=f"atol={result.atol:g}, rtol={result.rtol:g}",
            )
    return None
