"""Shared test helpers: build specs from Python values, grow the reference model in memory."""

from __future__ import annotations

import torch
import yaml

from specgrow.lower.apply import grow_state
from specgrow.lower.numeric import TOLERANCE, logits, tokens_for
from specgrow.models.reference import random_state
from specgrow.spec import load_spec_text
from specgrow.transforms import compile_spec

# Tolerance of every fp32 preservation test (same as `specgrow apply`'s numeric check).
ATOL, RTOL = TOLERANCE[torch.float32]

BASE_DIMS = dict(hidden=16, mlp=32, heads=4, kv_heads=2, key=8, value=6, layers=3, vocab=29, positions=8)


def spec_text(steps, seed=0, **model) -> str:
    model = dict(model)
    dims = dict(BASE_DIMS, **model.pop("dims", {}))
    doc = {"specgrow": 1, "model": {"dims": dims, "norm_eps": 1e-2, **model}, "seed": seed, "steps": steps}
    return yaml.safe_dump(doc, sort_keys=False)


def make_spec(steps, seed=0, **model):
    return load_spec_text(spec_text(steps, seed, **model))


def grow(spec):
    """(original logits, grown logits, plan, grown state) for the reference model of ``spec``."""
    plan = compile_spec(spec)
    states = grow_state(random_state(plan.before, spec.seed), plan.concrete(), "cpu")
    tokens = tokens_for(plan.before, spec.seed + 1, "cpu")
    return logits(plan.before, states[0], tokens), logits(plan.after, states[-1], tokens), plan, states[-1]


def assert_preserved(spec):
    before, after, plan, _ = grow(spec)
    torch.testing.assert_close(after, before, atol=ATOL, rtol=RTOL)
    return plan


def max_diff(spec) -> float:
    before, after, _, _ = grow(spec)
    return float((before - after).abs().max())
