"""The float64 numpy witness (`specgrow.verify.witness`) against the torch model and executor.

`logits` must be the reference model's forward, `grow` the executor's reading of every block,
and `find_witness` must see real changes (down to ~1e-7 relative) and no rounding.
"""

from __future__ import annotations

import dataclasses
import itertools
import subprocess
import sys

import numpy as np
import pytest
import torch

from specgrow.ir import Old, Random
from specgrow.lower.stream import grow_state, indices, outer
from specgrow.models.reference import build, random_state as torch_random_state
from specgrow.shape import LayerShape, ModelShape, tensor_name
from specgrow.transforms import compile_spec
from specgrow.verify import witness as W
from specgrow.verify.counterexample import stage_witness, step_witness
from specgrow.verify.prover import zeros_after
from specgrow.verify.report import counterexample_summary, render_markdown
from specgrow.verify.result import Certificate, StepProof, Verdict
from tests.helpers import make_spec

LAYERS = (LayerShape(24, 4, 2, 8, 6), LayerShape(16, 4, 4, 4, 8))  # GQA, then other widths


def numpy_state(shape: ModelShape, named: dict) -> dict:
    """A torch state dict with the reference model's names as float64 numpy arrays by (role, layer)."""
    return {key: named[tensor_name(*key)].double().numpy() for key in shape.tensor_keys()}


def torch_state(state: dict) -> dict:
    """(role, layer) -> numpy array as a float64 torch state dict with the reference model's names."""
    return {tensor_name(*key): torch.from_numpy(value.copy()) for key, value in state.items()}


# ---------------------------------------------------------------- logits
@pytest.mark.parametrize("activation,position",
                         list(itertools.product(("relu", "gelu", "gelu_tanh", "silu", "swiglu"),
                                                ("none", "learned", "rope"))))
def test_logits_equal_the_reference_model_in_float64(activation, position):
    every_bias = ("q", "k", "v", "o", "up", "gate", "down")
    for norm, eps, tied, final, bias in itertools.product(("rmsnorm", "layernorm"), (0.0, 1e-2), (False, True),
                                                          (False, True), ((), every_bias)):
        shape = ModelShape(hidden=12, vocab=9, positions=6, layers=LAYERS, norm=norm, norm_eps=eps,
                           activation=activation, position=position, final_norm=final, tie_embeddings=tied,
                           bias=bias)
        named = torch_random_state(shape, seed=3, dtype=torch.float64)
        tokens = W.random_tokens(shape, 5)  # (2, 6)
        with torch.no_grad():
            expected = build(shape, named)(torch.from_numpy(tokens)).numpy()
        found = W.logits(shape, numpy_state(shape, named), tokens)
        assert found.shape == expected.shape == (2, 6, 9)
        bound = 1e-12 * max(1.0, float(np.abs(expected).max()))
        assert float(np.abs(found - expected).max()) <= bound, (norm, eps, tied, final, bias)


SCALINGS = {  # one rope scaling of each type (`ModelShape.rope_scaling` holds it as sorted (key, value) pairs)
    "linear": {"type": "linear", "factor": 4.0},
    "llama3": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 4},
    "yarn": {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
    "dynamic": {"type": "dynamic", "factor": 2.0},
}
FEATURES = {
    **{f"qk_norm-{kind}": dict(qk_norm=kind, position="rope") for kind in ("head", "all")},
    **{f"norm_position-{where}": dict(norm_position=where) for where in ("post", "sandwich")},
    "sandwich-qk_norm-all-llama3": dict(norm_position="sandwich", qk_norm="all", position="rope",
                                        rope_scaling=tuple(sorted(SCALINGS["llama3"].items()))),
    **{f"rope_scaling-{name}": dict(position="rope", rope_scaling=tuple(sorted(params.items())))
       for name, params in SCALINGS.items()},
}


@pytest.mark.parametrize("feature", FEATURES)
def test_logits_with_each_model_feature_equal_the_reference_model(feature):
    """The features `qk_norm`, `norm_position` and `rope_scaling` in the numpy forward and the torch
    reference model, float64, to 1e-12 * max(1, max|logit|) as above. 10 tokens over 6 positions,
    so dynamic NTK scaling is active (beyond the positions) and yarn's and llama3's bands are met."""
    every_bias = ("q", "k", "v", "o", "up", "gate", "down")
    for norm, eps, bias, activation in (("rmsnorm", 1e-2, (), "swiglu"), ("layernorm", 1e-2, every_bias, "gelu"),
                                        ("rmsnorm", 1e-6, every_bias, "silu")):
        shape = ModelShape(hidden=12, vocab=9, positions=6, layers=LAYERS, norm=norm, norm_eps=eps,
                           activation=activation, bias=bias, **FEATURES[feature])
        named = torch_random_state(shape, seed=3, dtype=torch.float64)
        tokens = np.random.default_rng(4).integers(0, shape.vocab, (2, 10 if shape.position == "rope" else 6))
        with torch.no_grad():
            expected = build(shape, named)(torch.from_numpy(tokens)).numpy()
        found = W.logits(shape, numpy_state(shape, named), tokens)
        assert found.shape == expected.shape
        bound = 1e-12 * max(1.0, float(np.abs(expected).max()))
        assert float(np.abs(found - expected).max()) <= bound, (feature, norm, eps, bias)
        if shape.rope_scaling:  # the scaling changes the logits here (or the check above says little)
            plain = W.logits(dataclasses.replace(shape, rope_scaling=()), numpy_state(shape, named), tokens)
            assert float(np.abs(found - plain).max()) > 1e-6, feature


def test_random_state_draws_what_it_says():
    shape = ModelShape(hidden=12, vocab=9, positions=6, layers=LAYERS, norm="layernorm", bias=("up",))
    state = W.random_state(shape, 0, gain=4.0, bias=10.0)
    assert list(state) == shape.tensor_keys()
    assert all(state[key].shape == dims and state[key].dtype == np.float64
               for key, dims in shape.tensor_shapes().items())
    assert abs(float(state[("attn_norm.weight", 0)].mean()) - 4.0) < 0.5
    assert float(np.abs(state[("mlp.up.bias", 1)]).max()) > 0.2  # 10 * 0.1 N
    assert np.array_equal(W.random_state(shape, 0, 4.0, 10.0)[("embed.weight", None)], state[("embed.weight", None)])


# ---------------------------------------------------------------- grow
STEPS = {  # expansions whose blocks, but for like_old draws, are Old or Const
    "mlp": {"mlp": {"to": 48}},
    "mlp-subset": {"mlp": {"to": 40, "layers": [1]}},
    "heads": {"heads": {"add": 4}},
    "value": {"value": {"to": 8}},
    "key": {"key": {"to": 12}},
    "key-rescale-q": {"key": {"to": 12, "rescale": "q"}},
    "hidden": {"hidden": {"to": 24}},
    "hidden-rescale-gain": {"hidden": {"to": 24, "rescale": "gain"}},
    "layers": {"layers": {"add": 2, "at": 1}},
    "mlp-duplicate": {"mlp": {"to": 64, "method": "duplicate"}},
    "heads-duplicate": {"heads": {"add": 4, "method": "duplicate"}},
    "hidden-duplicate": {"hidden": {"to": 32, "method": "duplicate"}},
}
MODELS = {"rmsnorm": {}, "layernorm-rope-swiglu": {"norm": "layernorm", "position": "rope", "activation": "swiglu",
                                                   "bias": True},
          # the feature tensors: QK-norm gains (grown by key, heads, layers), post norms (hidden, layers)
          "qk-head-sandwich": {"qk_norm": "head", "norm_position": "sandwich", "position": "rope"},
          "qk-all-post-layernorm": {"qk_norm": "all", "norm_position": "post", "norm": "layernorm", "bias": True}}


def executor_and_numpy(spec):
    """The step's plan and the state it grows, by the torch executor and by `witness.grow`."""
    plan = compile_spec(spec).concrete()
    state = W.random_state(plan.before, 1)
    by_torch = grow_state(torch_state(state), plan, "cpu")[-1]
    return plan, W.grow(state, plan.steps[0]), {key: by_torch[tensor_name(*key)].numpy()
                                                  for key in plan.after.tensor_keys()}


def written_by(edit, kinds) -> np.ndarray:
    """A mask of the elements of ``edit``'s tensor that blocks of these kinds write."""
    mask = torch.zeros(edit.new_shape, dtype=torch.bool)
    for block in edit.blocks:
        if kinds(block.source):
            mask[outer(tuple(indices(sel, "cpu") for sel in block.where), mask.shape, "cpu")] = True
    return mask.numpy()


def plain(source) -> bool:
    return not isinstance(source, Random) and not (isinstance(source, Old) and source.noise is not None)


# every step on every model, but key growth under qk_norm all (validate refuses it)
GROW_CASES = [(name, model) for model in MODELS for name in STEPS
              if not (name.startswith("key") and MODELS[model].get("qk_norm") == "all")]


@pytest.mark.parametrize("name,model", GROW_CASES, ids=[f"{name}-{model}" for name, model in GROW_CASES])
def test_grow_equals_the_executor_exactly(name, model):
    plan, grown, expected = executor_and_numpy(make_spec([STEPS[name]], **MODELS[model]))
    assert set(grown) == set(expected)
    edits = {(e.role, e.layer): e for e in plan.steps[0].edits}
    compared = 0
    for key, value in grown.items():
        mask = written_by(edits[key], plain) if key in edits else np.ones(value.shape, bool)
        assert np.array_equal(value[mask], expected[key][mask]), key
        compared += int(mask.sum())
    assert compared > 0.5 * plan.after.parameter_count()


LIKE_OLD_ZERO = [  # every new slice that would be drawn is like_old 0: the old tensor's mean
    {"mlp": {"to": 48, "init": {"w_in": {"like_old": 0}, "w_out": {"like_old": 0}}}},
    {"heads": {"add": 4, "init": {"q": {"like_old": 0}, "k": {"like_old": 0}, "v": {"like_old": 0}}}},
    {"hidden": {"to": 24, "init": {"read": {"like_old": 0}}}},
    {"layers": {"add": 1, "init": {"rest": {"like_old": 0}}}},
]


@pytest.mark.parametrize("step", LIKE_OLD_ZERO, ids=[next(iter(s)) for s in LIKE_OLD_ZERO])
def test_like_old_zero_is_the_mean_as_in_the_executor(step):
    plan, grown, expected = executor_and_numpy(make_spec([step]))
    old = W.random_state(plan.before, 1)
    means = 0
    for edit in plan.steps[0].edits:
        key = (edit.role, edit.layer)
        np.testing.assert_allclose(grown[key], expected[key], rtol=1e-15, atol=1e-15)
        for block in edit.blocks:
            if isinstance(block.source, Random):
                mask = written_by(edit, lambda s: s is block.source)
                assert block.source.dist == "like_old" and block.source.param == 0
                assert np.allclose(grown[key][mask], old[block.source.like].mean(), rtol=1e-15, atol=0)
                means += 1
    assert means > 0


DUPLICATE_NOISE = [{"hidden": {"to": 32, "method": "duplicate", "noise": 0.1}},  # 0.1: the most a spec allows
                   {"mlp": {"to": 64, "method": "duplicate", "noise": 0.1}},
                   {"heads": {"add": 4, "method": "duplicate", "noise": 0.1}}]


def louder(step, std: float):
    """The step with every duplicate noise's std set to ``std``."""
    def block(b):
        noise = getattr(b.source, "noise", None)
        return b if noise is None else dataclasses.replace(
            b, source=dataclasses.replace(b.source, noise=dataclasses.replace(noise, std=std)))
    return dataclasses.replace(step, edits=tuple(dataclasses.replace(e, blocks=tuple(map(block, e.blocks)))
                                                 for e in step.edits))


@pytest.mark.parametrize("std", [0.1, 1.0])
@pytest.mark.parametrize("step", DUPLICATE_NOISE, ids=["hidden", "mlp", "heads"])
def test_duplicate_noise_cancels(step, std):
    plan = compile_spec(make_spec([step])).concrete()
    grown = louder(plan.steps[0], std)
    assert any(isinstance(b.source, Old) and b.source.noise is not None for e in grown.edits for b in e.blocks)
    state = W.random_state(plan.before, 2)
    tokens = W.random_tokens(plan.before, 2)
    before = W.logits(plan.before, state, tokens)
    after = W.logits(plan.after, W.grow(state, grown), tokens)
    assert float(np.abs(after - before).max()) <= 1e-12 * max(1.0, float(np.abs(before).max()))
    assert W.find_witness([grown], plan.before, 0) is None


def test_grow_takes_a_symbolic_step():
    plan = compile_spec(make_spec([STEPS["key-rescale-q"]]))
    state = W.random_state(plan.before, 0)
    concrete = W.grow(state, plan.concrete().steps[0])
    assert all(np.array_equal(v, concrete[k]) for k, v in W.grow(state, plan.steps[0]).items())


# ---------------------------------------------------------------- find_witness
def witness(steps, **model):
    plan = compile_spec(make_spec(steps, **model))
    return W.find_witness(plan.steps, plan.before, 0)


@pytest.mark.parametrize("steps,model", [
    ([{"mlp": {"to": 48, "init": {"w_out": {"like_old": 0}}}}], {}),
    ([{"mlp": {"to": 48, "init": {"w_out": {"normal": 0.02}}}}], {}),
    ([{"hidden": {"to": 24, "rescale": "gain"}}], {"norm": "rmsnorm", "norm_eps": 1e-6}),
], ids=["mlp-w_out-like_old-0", "mlp-w_out-normal", "hidden-rescale-gain-eps-1e-6"])
def test_a_change_is_witnessed(steps, model):
    found = witness(steps, **model)
    assert found is not None and found.dtype == "float64" and found.relative_bound == W.RELATIVE
    assert found.max_abs_diff > W.RELATIVE * max(1.0, *map(abs, found.reference))
    assert found.reference != found.grown
    assert found.tolerance.startswith("float64, 1e-09 * max(1, max|logit|)")


def test_a_missing_eps_rescale_is_below_float32_tolerance_and_still_seen():
    found = witness([{"hidden": {"to": 24, "rescale": "gain"}}], norm_eps=1e-6)
    assert 1e-9 < found.max_abs_diff < 1e-4  # fp32's atol = rtol = 1e-4 would call it kept


PRESERVING = {  # every expansion with its default init, and duplicates with noise
    "mlp": {"mlp": {"to": 48}}, "heads": {"heads": {"add": 4}}, "value": {"value": {"to": 8}},
    "key": {"key": {"to": 12}}, "hidden": {"hidden": {"to": 24}}, "layers": {"layers": {"add": 1}},
    **{f"{next(iter(step))}-duplicate-noise": step for step in DUPLICATE_NOISE},
}


@pytest.mark.parametrize("name", PRESERVING)
def test_a_preserving_step_has_no_witness(name):
    assert witness([PRESERVING[name]]) is None


LLAMA3 = dict(SCALINGS["llama3"], original_max_position_embeddings=8)
FEATURE_WITNESSES = {  # (steps, model, whether the function changes)
    "qk-head-hidden-zero-pad-eps": ([{"hidden": {"to": 24}}], dict(qk_norm="head", position="rope", norm_eps=1e-6),
                                    True),
    "qk-head-hidden-duplicate": ([{"hidden": {"to": 32, "method": "duplicate"}}], dict(qk_norm="head"), False),
    "qk-all-heads-zero": ([{"heads": {"add": 2}}], dict(qk_norm="all", norm_position="post"), True),
    "qk-all-heads-duplicate": ([{"heads": {"add": 4, "method": "duplicate"}}], dict(qk_norm="all"), False),
    "post-hidden-zero-pad": ([{"hidden": {"to": 24}}], dict(norm_position="post"), False),
    "sandwich-hidden-rescale-gain": ([{"hidden": {"to": 24, "rescale": "gain"}}],
                                     dict(norm_position="sandwich", norm_eps=1e-6), True),
    "post-layers": ([{"layers": {"add": 1, "at": 1}}], dict(norm_position="post"), False),
    "post-layers-eps0": ([{"layers": {"add": 1, "at": 1}}], dict(norm_position="post", norm_eps=0.0), True),
    "llama3-key-interleave": ([{"key": {"to": 16, "placement": "interleave"}}],
                              dict(position="rope", rope_scaling=LLAMA3), False),
    "llama3-key-append": ([{"key": {"to": 16, "placement": "append"}}], dict(position="rope", rope_scaling=LLAMA3),
                          True),
}


@pytest.mark.parametrize("name", FEATURE_WITNESSES)
def test_witnesses_under_the_model_features(name):
    """The search sees what the features change (a shared eps moved by 1e-6 relative, a post norm of
    0/0) and nothing where the golden specs say the function is kept."""
    steps, model, changes = FEATURE_WITNESSES[name]
    found = witness(steps, **model)
    assert (found is not None) == changes, found
    if found is not None:
        assert found.max_abs_diff > found.relative_bound * max(1.0, *map(abs, found.reference))


def test_the_search_scales_gains_and_biases_when_the_plain_model_shows_nothing(monkeypatch):
    tried = []
    real = W.random_state
    monkeypatch.setattr(W, "random_state", lambda *a, **k: tried.append(a[1:]) or real(*a, **k))
    assert witness([{"mlp": {"to": 48}}]) is None
    assert tried == [(seed, gain, bias) for bias in (1.0, 10.0) for gain in (1.0, 4.0, 16.0) for seed in (0, 1, 2)]


# ---------------------------------------------------------------- per step and per stage
ZEROED_THEN_LIKE_OLD = [{"layers": {"add": 1}}, {"mlp": {"to": 48, "layers": [3], "init": {"w_out": {"like_old": 1.0}}}}]


def test_step_witness_zeroes_what_earlier_steps_left_zero():
    spec = make_spec(ZEROED_THEN_LIKE_OLD)
    plan = compile_spec(spec)
    zeros = zeros_after(plan.steps[0], frozenset())
    assert ("mlp.down.weight", 3) in zeros
    assert step_witness(spec, plan, 1, zeros) is None  # like_old of a zero tensor is zero
    found = step_witness(spec, plan, 1)  # a random down projection: like_old draws reach the output
    assert found is not None and found.step == 1 and found.stage is None
    assert found.dims["vocab"] == 4 and len(found.dims["layers"]) == 4  # small first, from the shape step 1 starts
    whole = W.find_witness(plan.steps, plan.before, spec.seed)
    assert whole is None  # grown from the start, the new layer's zeros hold


def test_stage_witness_grows_one_stage_alone():
    from specgrow.spec import load_spec_text
    from tests.test_stages import plan_text

    spec = load_spec_text(plan_text([(0, ZEROED_THEN_LIKE_OLD[:1]), (10, ZEROED_THEN_LIKE_OLD[1:])]))
    plan = compile_spec(spec)
    assert stage_witness(spec, plan, 0) is None
    found = stage_witness(spec, plan, 1)
    assert found is not None and found.stage == 1 and found.step is None


def test_report_names_the_step_grown_alone():
    spec = make_spec(ZEROED_THEN_LIKE_OLD)
    plan = compile_spec(spec)
    found = dataclasses.replace(step_witness(spec, plan, 1), norm_gain=4.0, bias_scale=10.0)
    steps = tuple(StepProof(i, s.kind, s.kind, 1, 1, Verdict.REFUTED, ()) for i, s in enumerate(plan.steps))
    cert = Certificate("s.yaml", "ab", Verdict.REFUTED, steps, counterexample=found)
    summary = counterexample_summary(cert)
    assert summary.startswith("counterexample: steps[1] grown alone from random weights; dims hidden=16")
    assert "; norm gains x4; biases x10; max |Δ|" in summary
    assert "(tolerance float64, 1e-09 * max(1" in summary
    text = render_markdown(cert)
    assert "(random weights in the shape steps[1] starts from, grown by that step alone)" in text
    assert "every norm gain times 4, every bias times 10, run in float64 on the tokens" in text
    assert f"- grown logits: `[{found.grown[0]:.12g}," in text


def test_the_witness_imports_no_torch():
    code = ("import specgrow.verify.counterexample, specgrow.verify.witness, sys; "
            "assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
