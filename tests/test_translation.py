"""Translation validation: the prover's reading of each IR block equals what the executor writes.

For every expansion, option, role and init kind, with edge parameters (0, 1e-30, ordinary,
the largest the schema allows), each edit of the compiled step is read both ways:

* the prover's symbolic tensor (`specgrow.verify.build.symbolize`), cell by cell, with every
  symbol filled by the executor's own quantity it stands for (`Symbolic.atoms`): the old
  pieces, the block's draws and noise exactly as `StepSource._draw` makes them, and the mean
  and std `StepSource._moments_of` computes for ``like_old``;
* the executor's tensor (`specgrow.lower.stream.StepSource`) on a float64 state.

Per-head axes are proved for one generic head; here every head is checked. The two agree to
float64 rounding (relative 1e-15: the only difference allowed is converting an irrational
scale such as sqrt(h/h') to a float). A symbol the prover uses twice must stand for equal
values in the executor (the noise of two duplicated copies), or the check fails: that is how
a false cancellation would show. A future divergence between prover and executor fails here
before any proof is trusted.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import sympy as sp
import torch
from sympy import MatAdd, MatMul, MatrixSymbol, OneMatrix, ZeroMatrix

from specgrow.ir import Grouped, StepPlan, sym
from specgrow.lower.stream import StateSource, StepSource, whole
from specgrow.models.reference import random_state
from specgrow.spec.types import ROLES  # every role of every step kind
from specgrow.transforms import compile_spec
from specgrow.verify.build import symbolize
from specgrow.verify.prover import zeros_after
from tests.helpers import make_spec

SCHEMA = json.loads((Path(__file__).parents[1] / "schemas" / "specgrow-v1.schema.json").read_text())
INIT_MAX = {kind: SCHEMA["$defs"]["init"]["oneOf"][i]["properties"][kind].get("maximum", 1e3)
            for i, kind in ((1, "normal"), (2, "uniform"), (3, "like_old"))}
NOISE_MAX = SCHEMA["$defs"]["mlp"]["properties"]["noise"].get("maximum", 1e3)
EDGES = (0.0, 1e-30, 0.5)  # and each kind's maximum
RTOL = 1e-15


def inits():
    yield "zeros"
    yield "ones"
    for kind in ("normal", "uniform", "like_old"):
        for value in EDGES + (INIT_MAX[kind],):
            yield {kind: value}


STEP = {
    "mlp": {"to": 40}, "heads": {"add": 2}, "value": {"to": 8}, "key": {"to": 12},
    "hidden": {"to": 20}, "layers": {"add": 1, "at": 1},
}
MODEL = dict(activation="swiglu", bias=True)  # every role exists: gate, biases, learned positions


def init_cases():
    for kind, roles in ROLES.items():
        for role, init in itertools.product(roles, inits()):
            yield pytest.param([{kind: {**STEP[kind], "init": {role: init}}}], MODEL,
                               id=f"{kind}-{role}-{json.dumps(init, separators=(',', ':'))}")
    # the roles that fill the feature tensors: new post-norm gain entries, a new layer's QK-norm and post norms
    for (kind, role), init in itertools.product((("hidden", "gain"), ("layers", "rest")), inits()):
        yield pytest.param([{kind: {**STEP[kind], "init": {role: init}}}], FEATURES["qk-all-post"],
                           id=f"qk-all-post-{kind}-{role}-{json.dumps(init, separators=(',', ':'))}")


def option_cases():
    noises = (0.0, 1e-30, 0.1, NOISE_MAX)
    for noise in noises:
        yield [{"mlp": {"to": 40, "method": "duplicate", "noise": noise}}], MODEL
        yield [{"mlp": {"to": 64, "method": "duplicate", "noise": noise, "layers": [1]}}], MODEL
        yield [{"heads": {"add": 2, "method": "duplicate", "noise": noise}}], MODEL
        yield [{"hidden": {"to": 32, "method": "duplicate", "noise": noise}}], dict(norm="layernorm", bias=True)
        yield [{"hidden": {"to": 48, "method": "duplicate", "noise": noise}}], dict(tie_embeddings=True)
    for rescale in ("k", "q", "none"):
        for placement in ("append", "interleave"):
            yield [{"key": {"to": 16, "rescale": rescale, "placement": placement}}], dict(position="rope")
    for rescale in ("gain-and-eps", "gain", "none"):
        yield [{"hidden": {"to": 20, "rescale": rescale}}], MODEL
    yield [{"heads": {"add": 2, "layers": [0, 2]}}], dict(position="rope")
    yield [{"layers": {"add": 2, "at": 0, "init": {"rest": {"like_old": 0.0}}}}], MODEL
    yield [{"value": {"to": 9, "layers": [2]}}, {"key": {"to": 10}}], MODEL
    yield from feature_cases()


# The tensors the model features add: per-head QK-norm gains (key width), all-heads QK-norm gains
# (heads x key), post-sublayer norms (residual); each with every step that grows it.
FEATURES = {
    "qk-head-sandwich": dict(qk_norm="head", norm_position="sandwich", position="rope", activation="swiglu"),
    "qk-all-post": dict(qk_norm="all", norm_position="post", position="rope", bias=True),
    "post-layernorm": dict(norm_position="post", norm="layernorm", bias=True),
    # (1+w) gains: a rescaled stored gain is c*w + (c - 1), the IR's shift; sqrt(h) embeddings
    "gemma": dict(qk_norm="head", norm_position="sandwich", position="rope", activation="geglu_tanh",
                  norm_offset=1, embed_scale=True, attn_scale=12, tie_embeddings=True),
    "gemma-untied": dict(norm_position="sandwich", position="rope", norm_offset=1, embed_scale=True),
}


def feature_cases():
    for name, model in FEATURES.items():
        keyed = model.get("qk_norm") != "all"  # validate refuses key growth under qk_norm all
        if keyed:
            yield pytest.param([{"key": {"to": 16, "placement": "interleave"}}], model, id=f"{name}-key-interleave")
            yield pytest.param([{"key": {"to": 12, "rescale": "q", "placement": "append", "layers": [1]}}], model,
                               id=f"{name}-key-append")
        yield pytest.param([{"heads": {"add": 2}}], model, id=f"{name}-heads")
        yield pytest.param([{"heads": {"add": 4, "method": "duplicate", "noise": 0.1, "layers": [0, 2]}}], model,
                           id=f"{name}-heads-duplicate")
        yield pytest.param([{"hidden": {"to": 32, "method": "duplicate", "noise": 0.1}}], model,
                           id=f"{name}-hidden-duplicate")
        for rescale in ("gain-and-eps", "gain", "none"):
            if model.get("norm") != "layernorm":
                yield pytest.param([{"hidden": {"to": 20, "rescale": rescale}}], model, id=f"{name}-hidden-{rescale}")
        yield pytest.param([{"layers": {"add": 1, "at": 1}}], model, id=f"{name}-layers")
        first = [{"key": {"to": 16}}] if keyed else []
        yield pytest.param(first + [{"heads": {"add": 2}}, {"layers": {"add": 1, "at": 0}}], model,
                           id=f"{name}-key-heads-layers")


def test_the_feature_cases_edit_every_feature_tensor():
    """The feature cases above really grow each QK-norm gain and each post-norm gain and bias."""
    from specgrow.shape import POST_NORMS, QK_NORM_GAINS

    edited = set()
    for case in feature_cases():
        steps, model = case.values
        for step in compile_spec(make_spec(steps, **model)).steps:
            edited |= {(step.kind, e.role) for e in step.edits if not e.is_identity()}
    wanted = {(kind, role) for kind in ("key", "heads", "layers") for role in QK_NORM_GAINS["head"]}
    wanted |= {(kind, role) for kind in ("heads", "layers") for role in QK_NORM_GAINS["all"]}
    wanted |= {(kind, f"{norm}.{part}") for kind in ("hidden", "layers") for norm in POST_NORMS
               for part in ("weight", "bias")}
    wanted -= {("heads", role) for role in QK_NORM_GAINS["head"]}  # one gain for every head: heads keep it
    assert wanted <= edited, sorted(wanted - edited)


def old_state(spec, step_index):
    """The float64 state before ``step_index`` (the reference model grown through earlier steps)."""
    plan = compile_spec(spec)
    source = StateSource.of_state(random_state(plan.before, spec.seed, torch.float64), plan.before)
    zeros = frozenset()
    for step in plan.steps[:step_index]:
        grown = StepSource(source, step.concrete(), "cpu")
        source = StateSource({key: whole(grown, key) for key in grown.keys()})
        zeros = zeros_after(step, zeros)
    return plan.steps[step_index], source, zeros


def check_edit(edit, source, zeros):
    """Every cell of the prover's reading of ``edit``, filled from the executor, equals its tensor."""
    symbolic = symbolize(edit, "t", zeros)
    env = {sym(name): sp.Integer(value) for name, value in edit.dims}
    concrete = edit.concrete()
    executor = StepSource(source, StepPlan(0, "t", None, None, (concrete,)), "cpu")
    new = whole(executor, (edit.role, edit.layer))
    if new.dim() == 1:
        new = new[None, :]
    old = None if edit.source is None else whole(source, edit.source)
    if old is not None and old.dim() == 1:
        old = old[None, :]
    axes = range(len(edit.new_shape))
    heads = [next((b.where[a] for b in concrete.blocks if isinstance(b.where[a], Grouped)), None) for a in axes]
    counts = [1 if h is None else h.groups for h in heads]
    for head in itertools.product(*[range(c) for c in counts]):
        values: dict = {}
        for segs, expr in symbolic.cells:
            where = [_positions(seg, heads[a], head[a]) for a, seg in enumerate(segs)]
            if len(where) == 1:
                where = [torch.zeros(1, dtype=torch.long)] + where
            expected = new[where[0][:, None], where[1][None, :]]
            got = _evaluate(expr, symbolic.atoms, values, edit, concrete, executor, old, heads, head, env)
            torch.testing.assert_close(got, expected, rtol=RTOL, atol=0,
                                       msg=lambda m: f"{edit.role} layer {edit.layer} head {head}: {expr}\n{m}")


def _positions(seg, grouped, head):
    base = 0 if grouped is None else head * grouped.width
    return base + torch.arange(seg.lo, seg.hi, seg.stride)


def _evaluate(expr, atoms, values, edit, concrete, executor, old, heads, head, env):
    if isinstance(expr, ZeroMatrix):
        return torch.zeros(_shape(expr, env), dtype=torch.float64)
    if isinstance(expr, OneMatrix):
        return torch.ones(_shape(expr, env), dtype=torch.float64)
    if isinstance(expr, MatrixSymbol):
        if expr not in values:
            values[expr] = _atom(atoms[expr], edit, concrete, executor, old, heads, head)
        return values[expr]
    if isinstance(expr, MatAdd):
        terms = [_evaluate(t, atoms, values, edit, concrete, executor, old, heads, head, env) for t in expr.args]
        return sum(terms[1:], terms[0])
    if isinstance(expr, MatMul):
        coeff, matrices = expr.as_coeff_matrices()
        assert len(matrices) == 1, f"a cell is a scaled matrix, found {expr}"
        matrix = _evaluate(matrices[0], atoms, values, edit, concrete, executor, old, heads, head, env)
        return matrix * _scalar(coeff, atoms, executor, env)
    raise AssertionError(f"unexpected node in a cell: {type(expr).__name__}: {expr}")


def _scalar(expr, atoms, executor, env) -> float:
    """A cell's coefficient: products of numbers, dims, and the mean/std of like_old sources."""
    if isinstance(expr, sp.Mul):  # factor by factor, as the executor multiplies its floats
        out = 1.0
        for factor in expr.args:
            out = out * _scalar(factor, atoms, executor, env)
        return out
    if isinstance(expr, sp.Symbol) and expr in atoms:
        mean, std = executor._moments_of(atoms[expr].like)
        return mean if atoms[expr].kind == "mean" else std
    return float(sp.sympify(expr).xreplace(env).evalf())


def _atom(atom, edit, concrete, executor, old, heads, head):
    if atom.kind == "old":
        index = [torch.arange(lo, hi) + (0 if heads[a] is None else head[a] * _old_width(concrete, a))
                 for a, (lo, hi) in enumerate(atom.where)]
        if len(index) == 1:
            index = [torch.zeros(1, dtype=torch.long)] + index
        return old[index[0][:, None], index[1][None, :]]
    block = _concrete_block(edit, atom.block)
    src = block.source
    seed = src.noise.seed if atom.kind == "noise" else src.seed
    kind = "uniform" if atom.kind == "draw" and src.dist == "uniform" else "normal"
    tail = tuple(sel.length() for sel in block.where[1:])
    draw = executor._draw(seed, kind, block, 0, block.where[0].length(), tail).to(torch.float64)
    if kind == "uniform":
        draw = draw * 2 - 1  # the standard uniform draw on [-1, 1]
    if draw.dim() == 1:
        draw = draw[None, :]
    index = []
    for a, (offset, count) in enumerate(atom.where):
        inner = 0 if heads[a] is None else head[a] * block.where[a].inner.length()
        index.append(inner + offset + torch.arange(count))
    if len(index) == 1:
        index = [torch.zeros(1, dtype=torch.long)] + index
    return draw[index[0][:, None], index[1][None, :]]


def _concrete_block(edit, block):
    import dataclasses

    (concrete,) = dataclasses.replace(edit, blocks=(block,)).concrete().blocks
    return concrete


def _old_width(concrete, axis):
    return next(b.source.index[axis].width for b in concrete.blocks if hasattr(b.source, "index"))


def _shape(expr, env):
    return tuple(int(sp.sympify(d).xreplace(env)) for d in expr.shape)


def validate(steps, model):
    spec = make_spec(steps, **model)
    checked = 0
    for index in range(len(spec.steps)):
        step, source, zeros = old_state(spec, index)
        for edit in step.edits:
            if not edit.is_identity():
                check_edit(edit, source, zeros)
                checked += 1
    return checked


@pytest.mark.parametrize("steps, model", list(init_cases()))
def test_each_init_of_each_role_reads_as_the_executor_writes(steps, model):
    assert validate(steps, model) > 0


@pytest.mark.parametrize("steps, model", list(option_cases()))
def test_each_option_reads_as_the_executor_writes(steps, model):
    assert validate(steps, model) > 0


def test_a_prover_that_reads_like_old_zero_as_zero_fails_here(monkeypatch):
    """The reading that shipped a changed model as PROVED (like_old 0 as zeros) is caught."""
    from specgrow.verify import build

    def zero_for_zero_factor(src, draw, zeros, atoms):
        if src.param == 0:
            return ZeroMatrix(*draw.shape)
        return original(src, draw, zeros, atoms)

    original = build._random
    monkeypatch.setattr(build, "_random", zero_for_zero_factor)
    with pytest.raises(AssertionError):
        validate([{"mlp": {"to": 40, "init": {"w_out": {"like_old": 0.0}}}}], MODEL)


def test_noise_of_one_block_cut_in_two_is_two_symbols():
    """A noise block cut into cells of equal shape holds different values in each: one symbol
    per position in its block (one name for both would cancel noise that does not cancel)."""
    from specgrow.ir import Block, Noise, Old, Range, TensorEdit

    noise = Noise(0.1, 7, 1)
    edit = TensorEdit("w", None, ("w", None), (4, 2), (6, 2), (
        Block((Range(0, 4), Range(0, 2)), Old((Range(0, 4), Range(0, 2)), 0.5, noise)),
        Block((Range(4, 6), Range(0, 2)), Old((Range(0, 2), Range(0, 2)), 0.5, Noise(0.1, 7, -1)))))
    symbolic = symbolize(edit, "w")
    symbols = [s for s, a in symbolic.atoms.items() if a.kind == "noise"]
    assert len(symbols) == 3, symbols  # rows 0:2 and 2:4 of the first block, rows 0:2 of the second
    source = StateSource({("w", None): torch.randn(4, 2, dtype=torch.float64)})
    check_edit(edit, source, frozenset())
