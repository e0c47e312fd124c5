"""The numeric second check (`specgrow.verify.evaluate`): each node against NumPy or the
reference model in float64, every obligation of the golden and proof specs, and seeded
rule bugs that it must catch and name."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
import torch
from sympy import (BlockMatrix, HadamardPower, HadamardProduct, Identity, MatMul, MatrixSymbol, OneMatrix,
                   ZeroMatrix)

from specgrow.models.reference import ACTIVATIONS, attend, normalize
from specgrow.models.reference import rope as reference_rope
from specgrow.shape import LayerShape, ModelShape
from specgrow.spec import load_spec
from specgrow.verify import algebra, ops, prover
from specgrow.verify.algebra import Trace, apply_fn, collapse, elementwise_fn, sub
from specgrow.verify.evaluate import (MAX_DIM, MIN_DIM, THETA, Agreement, ShapeError, agree, assignments,
                                      evaluate, first_bad_rule)
from specgrow.verify.ops import HeadNorm, Heads, LayerNorm, RMSNorm, Rope, Softmax
from specgrow.verify.result import Verdict

ROOT = Path(__file__).resolve().parent.parent
SPECS = sorted((ROOT / "tests" / "golden").glob("*.yaml")) + sorted((ROOT / "proofs" / "specs").glob("*.yaml"))

n, h, p, k = sp.symbols("n h p k", positive=True, integer=True)
EPS = sp.Symbol("epsilon", positive=True)
DIMS = {n: 4, h: 3, p: 5, k: 6}
A, B, C = MatrixSymbol("A", n, h), MatrixSymbol("B", h, p), MatrixSymbol("C", h, p)


def values(extra=None):
    """An assignment of the dims (plus ``extra``), for `evaluate` to fill in."""
    return {**DIMS, **(extra or {})}


def array(symbol, env):
    """The random array `evaluate` gave ``symbol`` in ``env``."""
    return evaluate(symbol, env)


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def as_torch(x):
    return torch.from_numpy(np.ascontiguousarray(x))


# ------------------------------------------------------------------ nodes, by hand
def test_symbols_are_seeded_normal_arrays_shared_by_name_and_shape():
    env = values()
    a = evaluate(A, env)
    assert a.shape == (4, 3) and a.dtype == np.float64
    assert evaluate(MatrixSymbol("A", n, h), env) is a
    assert not np.allclose(evaluate(MatrixSymbol("A2", n, h), env), a)
    assert np.array_equal(evaluate(A, values()), a)  # the same draws from the same start
    many = evaluate(MatrixSymbol("big", 60, 50), {})
    assert abs(many.mean()) < 0.05 and abs(many.std() - 1) < 0.05


def test_constants_products_sums_and_transposes():
    env = values()
    a, b, c = (array(m, env) for m in (A, B, C))
    close(evaluate(ZeroMatrix(n, h), env), np.zeros((4, 3)))
    close(evaluate(OneMatrix(h, p), env), np.ones((3, 5)))
    close(evaluate(Identity(h), env), np.eye(3))
    close(evaluate(MatMul(sp.Rational(3, 2), A, B), env), 1.5 * a @ b)
    close(evaluate(A * (B + 2 * C), env), a @ (b + 2 * c))
    close(evaluate(B.T * A.T, env), (a @ b).T)
    close(evaluate(HadamardProduct(B, C), env), b * c)
    close(evaluate(HadamardPower(B, 2), env), b ** 2)
    close(evaluate(MatMul(EPS * h / (h + p), A), values({EPS: 0.25})), 0.25 * 3 / 8 * a)


def test_block_matrix():
    env = values()
    D, E = MatrixSymbol("D", n, p), MatrixSymbol("E", p, h)
    grid = BlockMatrix([[A, D], [Identity(h), ZeroMatrix(h, p)]])
    a, d = array(A, env), array(D, env)
    close(evaluate(grid, env), np.block([[a, d], [np.eye(3), np.zeros((3, 5))]]))
    close(evaluate(BlockMatrix([[A, D]]) * BlockMatrix([[Identity(h)], [E]]), env), a + d @ array(E, env))


@pytest.mark.parametrize("name", ["relu", "gelu", "gelu_tanh", "silu"])
def test_activations_match_the_reference_model(name):
    env = values()
    a = array(A, env)
    expected = ACTIVATIONS[name](as_torch(3 * a)).numpy()
    close(evaluate(apply_fn(elementwise_fn(name), 3 * A), env), expected)


def test_elementwise_lambda_and_activation_of_a_constant():
    t = sp.Symbol("t")
    env = values()
    close(evaluate(apply_fn(sp.Lambda(t, sp.exp(t) + 1), A), env), np.exp(array(A, env)) + 1)
    constant = float(ACTIVATIONS["gelu"](torch.tensor(2.0, dtype=torch.float64)))
    close(evaluate(MatMul(algebra.gelu(2), OneMatrix(n, h)), env), np.full((4, 3), constant))


def test_norms_match_the_reference_model():
    env = values({EPS: 0.3})
    g, b = MatrixSymbol("g", 1, h), MatrixSymbol("b", 1, h)
    x, gain, bias = (as_torch(array(m, env)) for m in (A, g, b))
    close(evaluate(RMSNorm(A, g, EPS), env), normalize(x, "rmsnorm", 0.3, gain[0]).numpy())
    close(evaluate(LayerNorm(A, g, b, EPS), env), normalize(x, "layernorm", 0.3, gain[0], bias[0]).numpy())


def test_head_norm_is_the_reference_per_head_rmsnorm():
    """HeadNorm(x, g, eps, k): each run of k columns (one head) normed alone, one gain for every head."""
    x, g = MatrixSymbol("x", n, 3 * k), MatrixSymbol("g", 1, k)
    env = values({EPS: 0.3})
    xs, gain = as_torch(array(x, env)), as_torch(array(g, env))[0]
    per_head = normalize(xs.view(4, 3, 6), "rmsnorm", 0.3, gain).reshape(4, 18)  # (n, heads, k) -> (n, heads*k)
    close(evaluate(HeadNorm(x, g, EPS, k), env), per_head.numpy())
    one = evaluate(HeadNorm(MatrixSymbol("x1", n, k), g, EPS, k), env)  # one head: a plain RMSNorm
    close(one, evaluate(RMSNorm(MatrixSymbol("x1", n, k), g, EPS), env))
    with pytest.raises(ShapeError, match="not whole heads"):
        evaluate(HeadNorm(MatrixSymbol("x5", n, 5), g, EPS, k), env)


@pytest.mark.parametrize("position", ["none", "rope"])
@pytest.mark.parametrize("qk_norm", ["head", "all"])
def test_qk_normed_heads_match_the_reference_attention(qk_norm, position):
    """The prover's QK-norm forms (`specgrow.verify.sublayers.qk_norm_whole`: HeadNorm per head, an
    RMSNorm of all heads' queries and of all kv heads' keys) inside Heads are the reference attention
    with ``qk_norm: head`` resp. ``all`` (eps 0.3, so eps matters)."""
    layer = LayerShape(mlp=8, heads=6, kv_heads=2, key=4, value=3)
    model = ModelShape(hidden=8, vocab=4, positions=8, layers=(layer,), position=position, rope_theta=THETA,
                       qk_norm=qk_norm, norm_eps=0.3)
    q, kk, v = (MatrixSymbol(name, 5, cols) for name, cols in (("q", 24), ("k", 8), ("v", 6)))
    widths = (4, 4) if qk_norm == "head" else (24, 8)
    gq, gk = MatrixSymbol("gq", 1, widths[0]), MatrixSymbol("gk", 1, widths[1])
    if qk_norm == "head":
        qn, kn = HeadNorm(q, gq, EPS, 4), HeadNorm(kk, gk, EPS, 4)
    else:
        qn, kn = RMSNorm(q, gq, EPS), RMSNorm(kk, gk, EPS)
    env = {EPS: 0.3}
    out = evaluate(Heads(qn, kn, v, 4, 3, sp.Rational(1, 2), int(position == "rope")), env)
    gains = [as_torch(array(gain, env))[0] for gain in (gq, gk)]
    expected = attend(*(as_torch(array(m, env))[None] for m in (q, kk, v)), layer, model, *gains)[0]
    close(out, expected.numpy())
    plain = evaluate(Heads(q, kk, v, 4, 3, sp.Rational(1, 2), int(position == "rope")), env)
    assert not np.allclose(out, plain)  # the norm is really applied


def test_softmax_is_causal_and_row_wise():
    env = values()
    s = MatrixSymbol("S", n, n)
    scores = array(s, env)
    out = evaluate(Softmax(s), env)
    for i in range(4):
        row = np.exp(scores[i, :i + 1] - scores[i, :i + 1].max())
        close(out[i, :i + 1], row / row.sum())
        close(out[i, i + 1:], 0)


@pytest.mark.parametrize("position", ["none", "rope"])
def test_heads_match_the_reference_attention(position):
    layer = LayerShape(mlp=8, heads=6, kv_heads=2, key=4, value=3)
    model = ModelShape(hidden=8, vocab=4, positions=8, layers=(layer,), position=position, rope_theta=THETA)
    q, kk, v = (MatrixSymbol(name, 5, cols) for name, cols in (("q", 24), ("k", 8), ("v", 6)))
    env = {}
    out = evaluate(Heads(q, kk, v, 4, 3, sp.Rational(1, 2), int(position == "rope")), env)
    expected = attend(*(as_torch(array(m, env))[None] for m in (q, kk, v)), layer, model)[0]
    close(out, expected.numpy())


def test_rope_old_is_the_reference_rope():
    x = MatrixSymbol("x", n, k)
    env = values()
    close(evaluate(Rope(x, k, "old"), env), reference_rope(as_torch(array(x, env))[None, None], THETA)[0, 0].numpy())


def test_other_rope_tags_are_fixed_linear_functions():
    x, y = MatrixSymbol("x", n, k), MatrixSymbol("y", n, 5)
    env = values()
    new = evaluate(Rope(x, 2 * k, "new1"), env)
    close(new, evaluate(Rope(x, 2 * k, "new1"), values()))  # equal arguments, equal values
    close(evaluate(Rope(3 * x, 2 * k, "new1"), env), 3 * new)  # linear
    for other in (Rope(x, 2 * k, "new2"), Rope(x, k, "new1"), Rope(x, k, "old")):
        assert not np.allclose(evaluate(other, env), new)
    close(new[0], array(x, env)[0])  # position 0 is not turned
    odd = evaluate(Rope(y, 5, "new"), env)  # an odd width: scaled by position
    assert odd.shape == (4, 5) and not np.allclose(odd, array(y, env))


# ------------------------------------------------------------------ assignments and agreement
def test_assignments_fit_every_shape():
    x = MatrixSymbol("x", n, k)
    half = MatrixSymbol("half", n, k / 2)
    expr = Rope(x, 3 * k, "new") + MatMul(EPS, BlockMatrix([[half, MatrixSymbol("rest", n, k / 2)]]))
    found = assignments([expr], random.Random(0), 20)
    for env in found:
        assert env[k] % 2 == 0 and MIN_DIM <= env[n] <= MAX_DIM and 0.01 <= env[EPS] <= 1
        assert evaluate(half, env).shape == (env[n], env[k] // 2)
        assert sp.Symbol("new") not in env
    assert len({(env[n], env[k]) for env in found}) > 3


def test_assignments_give_up_with_the_node_that_never_fits():
    never = MatMul(A, MatrixSymbol("B1", h + 1, n))
    with pytest.raises(ShapeError, match="no dims in 2..6 .*MatMul"):
        assignments([never], random.Random(0), 1)
    found = agree(never, never)
    assert not found.agrees and "MatMul" in found.reason


def test_agree():
    assert agree(A * (B + C), A * B + A * C).agrees
    wrong = agree(2 * A * B, A * B)
    assert wrong == Agreement(False, wrong.max_difference, 2, wrong.reason)
    assert wrong.max_difference > 0.01 and wrong.reason.startswith("the sides differ by")
    unknown = agree(sp.Inverse(MatrixSymbol("D", n, n)), MatrixSymbol("D", n, n))
    assert not unknown.agrees and "Inverse" in unknown.reason
    bad_heads = Heads(MatrixSymbol("q", n, 6), MatrixSymbol("k", n, 4), MatrixSymbol("v", n, 4), 4, 2, 1, 0)
    assert "Heads" in agree(bad_heads, ZeroMatrix(n, 2)).reason


def test_the_hook_sees_every_rule_and_lemma():
    pairs = obligations([ROOT / "tests" / "golden" / "hidden-duplicate-rmsnorm-x3.yaml"])
    for _, _, (new, target) in pairs:
        seen = []
        trace = Trace(on_rewrite=lambda rule, before, after: seen.append(rule))
        collapse(sub(new, target), trace, extra=ops.LEMMAS)
        assert set(seen) == set(trace.rules) | set(trace.lemmas)


# ------------------------------------------------------------------ the prover's obligations
def obligations(paths):
    """(spec, obligation, (new, target)) for every obligation the prover builds for ``paths``."""
    found, built = [], []
    prove_one, subtract = prover._obligation, prover.sub

    def keeping_sides(new, target):
        built.append((new, target))
        return subtract(new, target)

    def recording(*args, **kwargs):
        start = len(built)
        result = prove_one(*args, **kwargs)
        if len(built) > start:
            found.append((spec, result, built[start]))
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(prover, "sub", keeping_sides)
        patch.setattr(prover, "_obligation", recording)
        for spec in paths:
            patch.setattr(prover, "_CACHE", {})
            prover.prove_spec(load_spec(spec))
    return found


@pytest.fixture(scope="module")
def corpus():
    return obligations(SPECS)


@pytest.mark.slow
def test_proved_obligations_agree(corpus):
    proved = [(spec, ob, sides) for spec, ob, sides in corpus if ob.verdict is Verdict.PROVED]
    assert len(proved) > 150
    failures = [f"{spec.name}: {ob.sublayer}: {result.reason}"
                for spec, ob, sides in proved if not (result := agree(*sides)).agrees]
    assert not failures


@pytest.mark.slow
def test_refuted_obligations_disagree(corpus):
    """The evaluator is not blind: what the prover refutes differs numerically too."""
    refuted = [(spec, ob, sides) for spec, ob, sides in corpus if ob.verdict is Verdict.REFUTED]
    assert len(refuted) > 20
    assert not [f"{spec.name}: {ob.sublayer}" for spec, ob, sides in refuted if agree(*sides).agrees]


@pytest.mark.slow
def test_every_rewrite_keeps_the_value(corpus):
    bad = [(spec.name, ob.sublayer, rule) for spec, ob, (new, target) in corpus
           if (rule := first_bad_rule(sub(new, target), trials=1)) is not None]
    assert not bad


# ------------------------------------------------------------------ seeded bugs
def test_a_lost_rms_pad_factor_is_caught_and_named(monkeypatch):
    """rms_pad without its sqrt(h'/h): a zero-padded stream with no gain rescale 'proves'."""
    def without_sqrt(e, trace):
        out = ops.r_rmsnorm(e, trace)
        if out is not e and trace.last == "rms_pad":
            return BlockMatrix([[b.args[-1] if isinstance(b, MatMul) else b for b in out.blocks]])
        return out

    spec = ROOT / "tests" / "golden" / "hidden-rescale-none-eps0.yaml"
    monkeypatch.setitem(ops.LEMMAS, RMSNorm, without_sqrt)
    fooled = [(ob, sides) for _, ob, sides in obligations([spec]) if ob.residual is None and ob.stuck]
    caught = [sides for ob, sides in fooled if not agree(*sides).agrees]
    assert caught, "the buggy lemma should rewrite a changed function to zero"
    # the prover's own second check turned each of them from PROVED to UNKNOWN, naming the rule
    assert all(ob.verdict is Verdict.UNKNOWN and "'rms_pad' changes the value" in ob.stuck for ob, _ in fooled)
    assert {first_bad_rule(sub(*sides)) for sides in caught} == {"rms_pad"}
    monkeypatch.undo()
    assert {first_bad_rule(sub(*sides)) for sides in caught} == {None}


def test_an_ignored_f_of_zero_is_caught_and_named(monkeypatch):
    """The zero rule applied to f.(0) although f(0) = 1."""
    t = sp.Symbol("t")
    expr = apply_fn(sp.Lambda(t, sp.exp(t)), BlockMatrix([[A, ZeroMatrix(n, p)]])) * BlockMatrix([[B], [Identity(p)]])
    assert agree(expr, collapse(expr, Trace())).agrees
    assert first_bad_rule(expr) is None
    monkeypatch.setattr(algebra, "_at_zero", lambda fn: 0)
    wrong = collapse(expr, Trace())
    assert not agree(expr, wrong).agrees
    assert first_bad_rule(expr) == "zero_elementwise (f(0)=0)"
