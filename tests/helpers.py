"""Shared test helpers: build specs from Python values, grow the reference model in memory."""

from __future__ import annotations

import torch
import yaml

from specgrow.lower.numeric import TOLERANCE, logits, tokens_for
from specgrow.lower.stream import grow_state
from specgrow.models.reference import build, random_state
from specgrow.spec import load_spec_text
from specgrow.transforms import compile_spec

# Tolerance of every fp32 preservation test (same as `specgrow apply`'s numeric check).
ATOL, RTOL = TOLERANCE[torch.float32]
# A float64 change counts above RELATIVE * max(1, max|logit|): float64 rounding of these models is
# about 1e-14 relative (the bound of the prover's own float64 witnesses, `specgrow.verify.witness`).
RELATIVE = 1e-9


def changed64(before, after) -> bool:
    """True when float64 logits differ beyond `RELATIVE` (or the grown ones are not finite)."""
    bound = RELATIVE * max(1.0, float(before.abs().max()))
    return not bool(torch.isfinite(after).all()) or float((after - before).abs().max()) > bound

BASE_DIMS = dict(hidden=16, mlp=32, heads=4, kv_heads=2, key=8, value=6, layers=3, vocab=29, positions=8)


def spec_text(steps, seed=0, **model) -> str:
    model = dict(model)
    dims = dict(BASE_DIMS, **model.pop("dims", {}))
    doc = {"specgrow": 1, "model": {"dims": dims, "norm_eps": 1e-2, **model}, "seed": seed, "steps": steps}
    return yaml.safe_dump(doc, sort_keys=False)


def make_spec(steps, seed=0, **model):
    return load_spec_text(spec_text(steps, seed, **model))


def grow(spec, dtype=torch.float32):
    """(original logits, grown logits, plan, grown state) for the reference model of ``spec``."""
    plan = compile_spec(spec)
    states = grow_state(random_state(plan.before, spec.seed, dtype), plan.concrete(), "cpu")
    tokens = tokens_for(plan.before, spec.seed + 1, "cpu")
    if dtype == torch.float32:  # apply's own (fp32) forward
        return logits(plan.before, states[0], tokens), logits(plan.after, states[-1], tokens), plan, states[-1]
    with torch.no_grad():  # the reference model, in the state's dtype
        before, after = build(plan.before, states[0])(tokens), build(plan.after, states[-1])(tokens)
    return before, after, plan, states[-1]


def assert_preserved(spec):
    before, after, plan, _ = grow(spec)
    torch.testing.assert_close(after, before, atol=ATOL, rtol=RTOL)
    return plan


def max_diff(spec) -> float:
    before, after, _, _ = grow(spec)
    return float((before - after).abs().max())
