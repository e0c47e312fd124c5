"""Specs of hundreds or thousands of steps: nothing recurses once per step.

Each `mlp` step below widens the MLP by one unit, so every step edits the tensor the step
before it made, and draws its new row ``like_old`` (the mean and std of that tensor): the
deepest chain of reads a spec can ask for.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

from specgrow.cli import main
from specgrow.lower.stream import StateSource, chain, grow_state, whole
from specgrow.models.reference import random_state
from specgrow.shape import tensor_name
from specgrow.spec import load_spec_text
from specgrow.transforms import compile_spec
from tests.helpers import spec_text

TINY = {"hidden": 8, "mlp": 8, "heads": 2, "kv_heads": 2, "key": 4, "value": 4, "layers": 1, "vocab": 11,
        "positions": 4}


def one_unit_steps(count: int) -> str:
    return spec_text([{"mlp": {"to": TINY["mlp"] + i + 1}} for i in range(count)], dims=TINY)


def applied(spec, tmp_path) -> dict:
    """``specgrow apply`` of ``spec`` into ``tmp_path/out`` (must exit 0), and its manifest."""
    assert main(["apply", str(spec), "--output", str(tmp_path / "out"), "--device", "cpu", "--quiet"]) == 0
    return json.loads((tmp_path / "out" / "specgrow-manifest.json").read_text())


def test_400_one_unit_mlp_steps_are_proved_and_applied(tmp_path, capsys):
    """About 4 s (2 cores), most of it the proof."""
    spec = tmp_path / "long.yaml"
    spec.write_text(one_unit_steps(400))
    assert main(["check", str(spec)]) == 0
    assert "PROVED (400 steps" in capsys.readouterr().out
    manifest = applied(spec, tmp_path)
    assert manifest["proof"]["verdict"] == "PROVED" and manifest["numeric_check"]["passed"]
    assert manifest["parameters"]["after"] - manifest["parameters"]["before"] == 400 * 2 * TINY["hidden"]


def test_a_deep_chain_needs_no_deeper_stack_and_matches_step_by_step_growth():
    """600 chained steps are read (rows, shapes, dtypes, like_old moments) under a recursion
    limit only 150 frames above the caller's, and equal the states grown one step at a time."""
    plan = compile_spec(load_spec_text(one_unit_steps(600)))
    state = random_state(plan.before, 0)
    concrete = plan.concrete()
    grown = chain(StateSource.of_state(state, plan.before), concrete.steps, "cpu")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(_depth() + 150)
    try:
        tensors = {key: whole(grown, key) for key in grown.keys()}
        assert all(grown.shape(key) == tuple(t.shape) and grown.dtype(key) == t.dtype for key, t in tensors.items())
    finally:
        sys.setrecursionlimit(limit)
    expected = grow_state(state, concrete, "cpu")[-1]
    assert set(expected) == {tensor_name(*key) for key in tensors}
    for key, tensor in tensors.items():
        assert torch.equal(tensor, expected[tensor_name(*key)]), key


@pytest.mark.slow
def test_2000_one_unit_mlp_steps_are_planned_proved_and_applied(tmp_path, capsys):
    """About 1 s to plan and 15 s to prove and apply (2 cores)."""
    spec = tmp_path / "long.yaml"
    spec.write_text(one_unit_steps(2000))
    assert main(["plan", str(spec)]) == 0
    assert "step 1999: mlp(to=2008" in capsys.readouterr().out
    manifest = applied(spec, tmp_path)
    assert manifest["proof"] == {**manifest["proof"], "verdict": "PROVED", "obligations": 2000}
    assert manifest["numeric_check"]["passed"]


def _depth() -> int:
    frame, depth = sys._getframe(), 0
    while frame is not None:
        frame, depth = frame.f_back, depth + 1
    return depth
