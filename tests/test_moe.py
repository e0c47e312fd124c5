"""Mixture-of-experts growth: the routing lemmas, the prover's reading of expert edits, end to end.

* The lemmas the prover applies to a MoE layer (`specgrow.verify.ops`: ``route_copies``,
  ``route_identical``, ``mixture_linear``) hold for the reference forward
  (`specgrow.models.reference.route`, `mixture`) on random float64 inputs; the rule
  ``r_mixture`` rewrites as ``mixture_linear`` says, and the numeric second check
  (`specgrow.verify.evaluate`) agrees with each rewrite.
* The prover's reading of the expert edits (`specgrow.verify.experts.generic`: bands of one
  generic old expert, read by `specgrow.verify.build.symbolize`) is what the executor writes:
  new expert ``j*E + e`` is band j filled with old expert e.
* End to end: every MoE golden's verdict matches the reference model in float64 (PROVED: equal
  logits within 1e-10 relative; REFUTED: a change above 1e-6).
* Spec errors name their field.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
import torch
from sympy import BlockMatrix, MatAdd, MatMul, MatrixSymbol, OneMatrix, ZeroMatrix

from specgrow.errors import SpecError
from specgrow.ir import sym
from specgrow.lower.stream import StateSource, StepSource, grow_state, whole
from specgrow.models.reference import build, mixture, random_state, route
from specgrow.shape import EXPERT_ROLES
from specgrow.spec import load_spec, load_spec_text
from specgrow.transforms import compile_spec
from specgrow.verify.build import symbolize
from specgrow.verify.experts import classes, generic
from specgrow.verify.prover import prove_spec
from tests.helpers import grow, spec_text

GOLDEN = Path(__file__).parent / "golden"
MOE_GOLDENS = sorted(GOLDEN.glob("moe-*.yaml"))

# ------------------------------------------------------------------ routing lemmas, numerically


def _experts(count, width, seed):
    """``count`` random linear experts (n, w) -> (n, w), and the function ``expert(i, xs)``."""
    g = torch.Generator().manual_seed(seed)
    mats = torch.randn(count, width, width, generator=g, dtype=torch.float64)
    return mats, (lambda i, xs: xs @ mats[i].T)


@pytest.mark.parametrize("renormalize", [False, True])
@pytest.mark.parametrize("experts, k, m", [(4, 2, 2), (4, 1, 3), (6, 3, 2), (5, 2, 4)])
def test_route_copies(experts, k, m, renormalize):
    """m copies of every expert, bands [l, l, ...], top m*k: the copies of the old top k, each weighing w/m."""
    g = torch.Generator().manual_seed(experts * 100 + k * 10 + m)
    x = torch.randn(3, 5, 7, generator=g, dtype=torch.float64)
    logits = torch.randn(3, 5, experts, generator=g, dtype=torch.float64)
    _, expert = _experts(experts, 7, experts + m)
    wide = torch.cat([logits] * m, dim=-1)  # new expert j*E + e has old expert e's logit
    weights, chosen = route(logits, k, renormalize)
    new_weights, new_chosen = route(wide, m * k, renormalize)
    for (w, c), (nw, nc) in zip(zip(weights.reshape(-1, k), chosen.reshape(-1, k)),
                                zip(new_weights.reshape(-1, m * k), new_chosen.reshape(-1, m * k))):
        old = dict(zip(c.tolist(), w.tolist()))
        assert sorted(e % experts for e in nc.tolist()) == sorted(list(old) * m)
        for e, weight in zip(nc.tolist(), nw.tolist()):
            assert weight == pytest.approx(old[e % experts] / m, rel=1e-12)
    same = mixture(x, logits, k, renormalize, expert)
    copies = mixture(x, wide, m * k, renormalize, lambda i, xs: expert(i % experts, xs))
    torch.testing.assert_close(copies, same, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("renormalize", [False, True])
def test_route_copies_under_a_tie_is_a_convex_combination_of_the_old_outputs(renormalize):
    """A tie at the k-th place (experts 1 and 2 below): the old output is f_1 or f_2 there, as top-k breaks the
    tie; duplicated, whatever top-(2k) picks among the four tied copies, the output is a mix of the two."""
    _, expert = _experts(4, 5, 7)
    x = torch.randn(1, 1, 5, dtype=torch.float64)
    logits = torch.tensor([[[2.0, 1.0, 1.0, -1.0]]], dtype=torch.float64)  # top-2: expert 0, then 1 or 2
    weights, _ = route(logits, 2, renormalize)
    w0, w1 = weights[0, 0].tolist()
    outputs = [w0 * expert(0, x[0]) + w1 * expert(tied, x[0]) for tied in (1, 2)]  # the old model's two outcomes
    wide = torch.cat([logits] * 2, dim=-1)
    for order in ([0, 1, 2, 3], [0, 2, 1, 3], [0, 1, 3, 2], [0, 3, 2, 1]):  # other tie orders: permuted experts
        perm = torch.tensor(order + [e + 4 for e in order])
        grown = mixture(x, wide[..., perm], 4, renormalize, lambda i, xs: expert(int(perm[i]) % 4, xs))[0]
        a, b = outputs
        alpha = float(((grown - b) * (a - b)).sum() / ((a - b) ** 2).sum())  # grown = alpha a + (1 - alpha) b
        assert -1e-12 <= alpha <= 1 + 1e-12
        torch.testing.assert_close(grown, alpha * a + (1 - alpha) * b, rtol=1e-12, atol=1e-12)


def test_route_copies_needs_the_top_k_multiplied():
    """With top_k left at k the copies of the old top experts crowd out the rest: the mixture changes."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64)
    logits = torch.randn(4, 4, generator=g, dtype=torch.float64)
    _, expert = _experts(4, 6, 2)
    same = mixture(x, logits, 2, True, expert)
    kept = mixture(x, torch.cat([logits] * 2, -1), 2, True, lambda i, xs: expert(i % 4, xs))
    assert float((kept - same).abs().max()) > 1e-6


@pytest.mark.parametrize("experts, k", [(4, 2), (8, 3), (3, 1)])
def test_route_identical(experts, k):
    """Identical experts F: renormalised, the mixture is F for any logits; not renormalised with zero logits
    (each probability 1/E), it is k/E F; not renormalised with random logits, it is not."""
    g = torch.Generator().manual_seed(experts + k)
    x = torch.randn(5, 6, generator=g, dtype=torch.float64)
    f = torch.randn(6, 6, generator=g, dtype=torch.float64)
    logits = torch.randn(5, experts, generator=g, dtype=torch.float64)
    same = lambda i, xs: xs @ f.T  # noqa: E731
    torch.testing.assert_close(mixture(x, logits, k, True, same), x @ f.T, rtol=1e-12, atol=1e-12)
    zero = torch.zeros(5, experts, dtype=torch.float64)
    torch.testing.assert_close(mixture(x, zero, k, False, same), (k / experts) * (x @ f.T), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mixture(x, zero, k, True, same), x @ f.T, rtol=1e-12, atol=1e-12)
    if k < experts:
        moved = mixture(x, logits, k, False, same) * (experts / k) - x @ f.T
        assert float(moved.abs().max()) > 1e-6


@pytest.mark.parametrize("renormalize", [False, True])
def test_mixture_linear(renormalize):
    """For fixed logits the mixture is linear in the experts' outputs: [A, B], c*A and 0."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64)
    a, fa = _experts(4, 5, 11)
    b, fb = _experts(4, 5, 12)
    both = mixture(x, logits, 2, renormalize, lambda i, xs: fa(i, xs) + fb(i, xs))
    torch.testing.assert_close(both, mixture(x, logits, 2, renormalize, fa) + mixture(x, logits, 2, renormalize, fb),
                               rtol=1e-12, atol=1e-12)
    # blocks: a block-column output is the block-column of the mixtures
    wide = mixture(torch.cat([x, x], -1), logits, 2, renormalize,
                   lambda i, xs: torch.cat([fa(i, xs[:, :5]), fb(i, xs[:, 5:])], -1))
    torch.testing.assert_close(wide, torch.cat([mixture(x, logits, 2, renormalize, fa),
                                                mixture(x, logits, 2, renormalize, fb)], -1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mixture(x, logits, 2, renormalize, lambda i, xs: 2.5 * fa(i, xs)),
                               2.5 * mixture(x, logits, 2, renormalize, fa), rtol=1e-12, atol=1e-12)
    assert float(mixture(x, logits, 2, renormalize, lambda i, xs: 0 * fa(i, xs)).abs().max()) == 0.0


class _Trace:
    def __init__(self):
        self.lemmas = []

    def lemma(self, name):
        self.lemmas.append(name)


def _agree(expr, rewritten):
    """`evaluate`'s value of ``expr`` and of its rewrite are equal (same draws for equal symbols)."""
    from specgrow.verify.evaluate import evaluate

    values = {}
    lhs = evaluate(expr, values)
    rhs = evaluate(rewritten, values)
    np.testing.assert_allclose(np.asarray(rhs, dtype=float), np.asarray(lhs, dtype=float), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("renormalize", [0, 1])
def test_r_mixture_rewrites_by_mixture_linear_and_evaluate_agrees(renormalize):
    from specgrow.verify.ops import Mixture, r_mixture

    logits, a, b = MatrixSymbol("l", 5, 1), MatrixSymbol("A", 5, 3), MatrixSymbol("B", 5, 2)
    args = (2, renormalize, 4)
    block = Mixture(logits, BlockMatrix([[a, b]]), *args)
    trace = _Trace()
    out = r_mixture(block, trace)
    assert out == BlockMatrix([[Mixture(logits, a, *args), Mixture(logits, b, *args)]])
    assert trace.lemmas == ["mixture_linear"]
    _agree(block, out)

    scaled = Mixture(logits, sp.Rational(3, 2) * a, *args)
    out = r_mixture(scaled, trace)
    coeff, matrices = out.as_coeff_matrices()
    assert coeff == sp.Rational(3, 2) and matrices == [Mixture(logits, a, *args)], out
    _agree(scaled, out)

    zero = Mixture(logits, ZeroMatrix(5, 3), *args)
    assert r_mixture(zero, trace) == ZeroMatrix(5, 3)
    _agree(zero, ZeroMatrix(5, 3))
    assert trace.lemmas == ["mixture_linear"] * 3
    plain = Mixture(logits, a, *args)
    assert r_mixture(plain, trace) == plain  # nothing to rewrite


def test_evaluate_mixture_is_not_linear_in_the_logits():
    """The second check is not vacuous: a changed logit changes the evaluated mixture."""
    from specgrow.verify.evaluate import evaluate
    from specgrow.verify.ops import Mixture

    logits, a = MatrixSymbol("l", 6, 1), MatrixSymbol("A", 6, 3)
    values = {}
    one = evaluate(Mixture(logits, a, 1, 0, 4), values)
    two = evaluate(Mixture(3 * logits, a, 1, 0, 4), values)
    assert float(np.abs(np.asarray(one, float) - np.asarray(two, float)).max()) > 1e-6


# ------------------------------------------------------------------ the prover's reading = the executor

MODEL = dict(dims=dict(hidden=8, mlp=16, heads=2, kv_heads=2, key=4, value=4, layers=2, vocab=13, positions=8),
             activation="swiglu", position="rope", norm="rmsnorm")
MOE = dict(experts=4, top_k=2, width=6, renormalize=True)


def _spec(steps, moe=MOE, **model):
    m = dict(MODEL, **model)
    if moe is not None:
        m["moe"] = moe
    return load_spec_text(spec_text(steps, **m))


READINGS = {
    "duplicate": ([{"experts": {"to": 8}}], MOE),
    "duplicate-x3": ([{"experts": {"to": 12}}], dict(MOE, renormalize=False)),
    "split": ([{"experts": {"to": 8, "method": "split"}}], MOE),
    "add": ([{"experts": {"to": 6, "method": "add"}}], MOE),
    "add-zeros": ([{"experts": {"to": 5, "method": "add", "init": {"router": "zeros", "w_out": "zeros"}}}], MOE),
    "upcycle": ([{"upcycle": {"experts": 4, "top_k": 2, "renormalize": False}}], None),
    "upcycle-router": ([{"upcycle": {"experts": 3, "top_k": 1, "init": {"router": {"normal": 0.5}}}}], None),
    "upcycle-one": ([{"upcycle": {"experts": 4, "top_k": 2, "layers": [1]}}], dict(MOE, dense_layers=[1])),
    "mlp": ([{"mlp": {"to": 10}}], MOE),
    "mlp-duplicate": ([{"mlp": {"to": 12, "method": "duplicate"}}], MOE),
    "duplicate-then-split": ([{"experts": {"to": 8}}, {"experts": {"to": 16, "method": "split"}}], MOE),
}


def _fill(expr, atoms, old, env, skipped):
    """The value of one cell, old atoms filled from old expert ``e``'s tensor ``old`` (2-D);
    None when it holds a draw or noise (checked apart)."""
    if isinstance(expr, ZeroMatrix):
        return torch.zeros(*(int(sp.sympify(d).xreplace(env)) for d in expr.shape), dtype=torch.float64)
    if isinstance(expr, OneMatrix):
        return torch.ones(*(int(sp.sympify(d).xreplace(env)) for d in expr.shape), dtype=torch.float64)
    if isinstance(expr, MatrixSymbol):
        atom = atoms[expr]
        if atom.kind != "old":
            skipped.add(atom.kind)
            return None
        (r0, r1), (c0, c1) = atom.where if len(atom.where) == 2 else ((0, 1), atom.where[0])
        return old[r0:r1, c0:c1]
    if isinstance(expr, MatAdd):
        terms = [_fill(t, atoms, old, env, skipped) for t in expr.args]
        return None if any(t is None for t in terms) else sum(terms[1:], terms[0])
    if isinstance(expr, MatMul):
        coeff, matrices = expr.as_coeff_matrices()
        assert len(matrices) == 1, expr
        value = _fill(matrices[0], atoms, old, env, skipped)
        if any(a in atoms for a in sp.sympify(coeff).free_symbols):  # like_old: the old tensor's mean/std
            skipped.add("like_old")
            return None
        return None if value is None else value * float(sp.sympify(coeff).xreplace(env))
    raise AssertionError(f"unexpected node in a cell: {type(expr).__name__}: {expr}")


def _read_layer(step, layer, source, executor, shift=0, compared=None, edits=None, experts=None):
    """Check every band of the layer's expert edits (``edits``: a class of them, `classes`) against the
    executor's new experts (``experts``: those of the class); return the kinds of cells left unchecked
    (draws, noise)."""
    edits = edits or {e.role: e for e in step.edits if e.layer == layer}
    before = step.before.layers[layer]
    g = generic(edits, before.experts)
    skipped = set()
    if before.experts:
        env = {sym(n): sp.Integer(v) for edit in edits.values() for n, v in edit.dims}
        added = sp.sympify(g.added).xreplace(env)
        assert added == step.after.layers[layer].experts - before.experts * len(g.bands), (g.added, len(g.bands))
        size = before.experts
    else:
        assert g.upcycled and len(g.bands) == 1
        size = step.after.layers[layer].experts
    for j, band in enumerate(g.bands):
        for role, band_edit in band.items():
            new = whole(executor, (role, layer))
            edit = edits[role]
            old_all = None if edit.source is None else whole(source, edit.source)
            symbolic = symbolize(band_edit, "t")
            env = {sym(n): sp.Integer(v) for n, v in band_edit.dims}
            for e in range(size) if experts is None else experts:
                if old_all is None:
                    old = None
                elif edit.source[0] in EXPERT_ROLES:
                    old = old_all[e]
                else:
                    old = old_all  # upcycled: the dense tensor, repeated along the experts axis
                if old is not None and old.dim() == 1:
                    old = old[None, :]
                target = new[j * size + (e + shift) % size]
                if target.dim() == 1:
                    target = target[None, :]
                for segs, expr in symbolic.cells:
                    where = [torch.arange(s.lo, s.hi, s.stride) for s in segs]
                    if len(where) == 1:
                        where = [torch.zeros(1, dtype=torch.long)] + where
                    expected = target[where[0][:, None], where[1][None, :]]
                    got = _fill(expr, symbolic.atoms, old, env, skipped)
                    if got is None:  # a draw: not zero unless the executor wrote zeros there
                        continue
                    if compared is not None:
                        compared.append(role)
                    torch.testing.assert_close(got, expected, rtol=1e-15, atol=0,
                                               msg=lambda m: f"{role} layer {layer} band {j} expert {e}: {expr}\n{m}")
    # experts beyond the bands (method add) are the step's fill: checked by count only
    return skipped, g


@pytest.mark.parametrize("name", list(READINGS))
def test_the_prover_reads_expert_edits_as_the_executor_writes(name):
    steps, moe = READINGS[name]
    spec = _spec(steps, moe)
    plan = compile_spec(spec)
    source = StateSource.of_state(random_state(plan.before, spec.seed, torch.float64), plan.before)
    checked, compared = 0, []
    for step in plan.steps:
        executor = StepSource(source, step.concrete(), "cpu")
        for layer, s in enumerate(step.after.layers):
            if not s.experts or layer >= len(step.before.layers):
                continue
            roles = {e.role for e in step.edits if e.layer == layer and not e.is_identity()}
            if not roles & set(EXPERT_ROLES):
                continue
            skipped, g = _read_layer(step, layer, source, executor, compared=compared)
            checked += 1
            if name in ("duplicate", "split"):  # a misplaced expert is caught
                with pytest.raises(AssertionError):
                    _read_layer(step, layer, source, executor, shift=1)
            if step.kind == "experts" and any(k.get("method") in (None, "duplicate", "split")
                                              for k in [steps[step.index]["experts"]]):
                assert not skipped and g.added == 0, (skipped, g.added)
        source = StateSource({key: whole(executor, key) for key in executor.keys()})
    assert checked > 0
    assert {"mlp.experts.up.weight", "mlp.experts.down.weight"} <= set(compared), set(compared)


@pytest.mark.parametrize("listed", [[1, 2], [0], [3], [0, 2]])
def test_listed_experts_are_read_class_by_class(listed):
    """`mlp` growth of listed experts: the prover cuts the experts into classes, each read as one generic
    expert; every class's reading equals the executor's tensors for each expert of the class, the listed
    ones holding the init's draws and the others zeros."""
    spec = _spec([{"mlp": {"to": 10, "experts": listed, "init": {"w_in": {"normal": 0.5}}}}], MOE)
    plan = compile_spec(spec)
    step = plan.steps[0]
    source = StateSource.of_state(random_state(plan.before, spec.seed, torch.float64), plan.before)
    executor = StepSource(source, step.concrete(), "cpu")
    edits = {e.role: e for e in step.edits if e.layer == 0}
    cut = classes(edits)
    covered = []
    for label, part in cut:
        first, _, last = label.split()[-1].partition("-")
        members = range(int(first), int(last or first) + 1)
        covered += members
        skipped, g = _read_layer(step, 0, source, executor, edits=part, experts=members)
        assert len(g.bands) == 1 and g.added == 0
        assert ("draw" in skipped) == any(e in listed for e in members), (label, skipped)
    assert sorted(covered) == list(range(4))
    up = whole(executor, ("mlp.experts.up.weight", 0))
    for e in range(4):
        assert bool(up[e, 6:].abs().sum() > 0) == (e in listed)
    assert prove_spec(spec).verdict.name == "PROVED"


def test_duplicated_noise_cancels_band_by_band():
    """With noise the copies of an expert differ, but the pair's down projections sum to twice the old one
    (what the prover's noise symbols say: +n in band 2i, -n in band 2i+1)."""
    spec = _spec([{"experts": {"to": 12, "noise": 0.1}}], dict(MOE, renormalize=False))
    plan = compile_spec(spec)
    state = random_state(plan.before, spec.seed, torch.float64)

    states = grow_state(state, plan.concrete(), "cpu")
    old, new = states[0], states[-1]
    for layer in range(2):
        key = f"layers.{layer}.mlp.experts.down.weight"
        down, down0 = new[key], old[key]
        assert float((down[:4] - down0).abs().max()) > 1e-3  # noisy
        torch.testing.assert_close(down[:4] + down[4:8], 2 * down0, rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(down[8:], down0, rtol=0, atol=0)  # the odd last copy: no noise
        for role in ("mlp.experts.up.weight", "mlp.experts.gate.weight", "mlp.router.weight"):
            key = f"layers.{layer}.{role}"
            torch.testing.assert_close(new[key], torch.cat([old[key]] * 3), rtol=0, atol=0)
    step = plan.steps[0]
    edits = {e.role: e for e in step.edits if e.layer == 0}
    g = generic(edits, 4)
    noise = [[a for a in symbolize(band["mlp.experts.down.weight"], "t").atoms.values() if a.kind == "noise"]
             for band in g.bands]
    assert noise[0] and noise[1] and not noise[2], noise


# ------------------------------------------------------------------ end to end, on the reference model


def _expect(path):
    return path.read_text().splitlines()[0].split()[2]


def test_the_moe_goldens_cover_the_brief():
    names = {p.stem for p in MOE_GOLDENS}
    assert len(names) >= 17
    assert sum(_expect(p) == "REFUTED" for p in MOE_GOLDENS) >= 4


@pytest.mark.parametrize("path", MOE_GOLDENS, ids=[p.stem for p in MOE_GOLDENS])
def test_grown_moe_logits_match_the_verdict(path):
    spec = load_spec(path)
    before, after, plan, state = grow(spec, torch.float64)
    assert any(s.experts for s in plan.after.layers)
    scale = max(1.0, float(before.abs().max()))
    diff = float((after - before).abs().max())
    if _expect(path) == "PROVED":
        assert diff <= 1e-10 * scale, f"{path.name}: max |Δ| {diff:.3g}"
    else:
        assert diff > 1e-6, f"{path.name}: max |Δ| {diff:.3g}"
    # the reference model of the grown shape really has the grown experts
    model = build(plan.after, state)
    for s, layer in zip(plan.after.layers, model.layers):
        if s.experts:
            assert layer.mlp.experts.up.weight.shape[0] == s.experts and layer.mlp.top_k == s.top_k


# ------------------------------------------------------------------ spec errors

ERRORS = {
    "split-width": ([{"experts": {"to": 16, "method": "split"}}], MOE, {}, r"steps\[0\]\.experts\.to"),
    "duplicate-multiple": ([{"experts": {"to": 6}}], MOE, {}, r"steps\[0\]\.experts\.to"),
    "no-moe": ([{"experts": {"to": 8}}], None, {}, r"steps\[0\]\.experts"),
    "upcycle-moe-layer": ([{"upcycle": {"experts": 4, "top_k": 2, "layers": [0]}}], dict(MOE, dense_layers=[1]), {},
                          r"steps\[0\]\.upcycle\.layers"),
    "moe-top-k": ([{"mlp": {"to": 20}}], dict(MOE, top_k=5), {}, r"model\.moe\.top_k"),
    "upcycle-like-old": ([{"upcycle": {"experts": 4, "top_k": 2, "init": {"router": {"like_old": 1}}}}], None, {},
                         r"steps\[0\]\.upcycle\.init\.router"),
    "experts-top-k": ([{"experts": {"to": 8, "top_k": 9}}], MOE, {}, r"steps\[0\]\.experts\.top_k"),
    "upcycle-top-k": ([{"upcycle": {"experts": 2, "top_k": 3}}], None, {}, r"steps\[0\]\.upcycle\.top_k"),
    "mlp-experts-duplicate": ([{"mlp": {"to": 12, "method": "duplicate", "experts": [0]}}], MOE, {},
                              r"steps\[0\]\.mlp\.experts"),
    "mlp-experts-index": ([{"mlp": {"to": 12, "experts": [0, 4]}}], MOE, {}, r"steps\[0\]\.mlp\.experts\[1\]"),
    "mlp-experts-dense": ([{"mlp": {"to": 20, "experts": [0], "layers": [1]}}], dict(MOE, dense_layers=[1]), {},
                          r"steps\[0\]\.mlp\.experts"),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_spec_errors_name_the_field(name):
    steps, moe, model, where = ERRORS[name]
    with pytest.raises(SpecError) as info:
        _spec(steps, moe, **model)
    error = info.value
    text = error.render() if hasattr(error, "render") else str(error)
    assert re.search(where, text), text


# ------------------------------------------------------------------ the routing lemmas at index level

def test_route_copies_softmax_and_renormalisation_index_level():
    """Softmax over m copies of E logits gives copy (j, e) exp(l_e) / (m * sum_e' exp(l_e')) = p_e / m; the
    selected copies (all m copies of the top-k set K) sum to sum_{e in K} p_e, so the renormalised weight
    of a copy is (p_e / m) / sum_K p = w_e / m too. Proved with Sum over symbolic E, m and K's indicator."""
    e, e2, j2 = sp.symbols("e e2 j2", integer=True, nonnegative=True)
    E_, m_ = sp.symbols("E m", integer=True, positive=True)
    l, sel = sp.IndexedBase("l", real=True), sp.IndexedBase("s", real=True)  # s[e]: 1 when e is in the top-k
    z_old = sp.Sum(sp.exp(l[e2]), (e2, 0, E_ - 1))
    z_new = sp.Sum(sp.Sum(sp.exp(l[e2]), (j2, 0, m_ - 1)).doit(), (e2, 0, E_ - 1))  # copy (j2, e2) has l[e2]
    p_old, p_new = sp.exp(l[e]) / z_old, sp.exp(l[e]) / z_new
    assert sp.simplify(p_new - p_old / m_) == 0
    kept_old = sp.Sum(sel[e2] * sp.exp(l[e2]) / z_old, (e2, 0, E_ - 1))
    kept_new = sp.Sum(sp.Sum(sel[e2] * sp.exp(l[e2]) / z_new, (j2, 0, m_ - 1)).doit(), (e2, 0, E_ - 1))
    assert sp.simplify(kept_new - kept_old) == 0
    assert sp.simplify(p_new / kept_new - (p_old / kept_old) / m_) == 0
    # and the mixture: m copies weighing w/m each, with the copies' outputs F_j, give w * mean_j F_j
    f = sp.IndexedBase("F", real=True)
    w_ = sp.Symbol("w", positive=True)
    assert sp.simplify(sp.Sum(w_ / m_ * f[j2], (j2, 0, m_ - 1)) - w_ * sp.Sum(f[j2], (j2, 0, m_ - 1)) / m_) == 0


def _top(values, k):
    """The top-k index set of ``values`` when it is unique (no tie at the k-th place), else None."""
    order = sorted(range(len(values)), key=lambda i: -values[i])
    if k < len(values) and values[order[k - 1]] == values[order[k]]:
        return None
    return frozenset(order[:k])


@pytest.mark.parametrize("experts", [2, 3, 4])
@pytest.mark.parametrize("m", [2, 3])
def test_route_copies_top_k_over_copies_exhaustively(experts, m):
    """The top-(m*k) of m copies (in bands of E) of E scores are the copies of the top k, for every ranking
    of the scores (ties between distinct experts included), every k, whenever the old top-k is unique;
    with a tie at the k-th place the old top-k is not unique, and neither is the new one."""
    import itertools

    checked = 0
    for scores in itertools.product(range(experts), repeat=experts):  # every weak ranking of E scores
        copies = [scores[i % experts] for i in range(m * experts)]  # new expert j*E + e has score of e
        for k in range(1, experts + 1):
            old, new = _top(scores, k), _top(copies, m * k)
            if old is None:
                assert new is None or m * k == m * experts
                continue
            assert new == frozenset(j * experts + e for j in range(m) for e in old), (scores, k)
            checked += 1
    assert checked > 0


def test_route_identical_index_level():
    """Identical experts F: sum over the selected set K of w_e * F = F * sum_K w; renormalised, sum_K w = 1;
    with a zero router every p_e = 1/E, so sum_K p = k/E whichever k experts tie in."""
    e2 = sp.Symbol("e2", integer=True, nonnegative=True)
    E_, k_ = sp.symbols("E k", integer=True, positive=True)
    f, p = sp.Symbol("F", real=True), sp.IndexedBase("p", positive=True)
    kept = sp.Sum(p[e2], (e2, 0, k_ - 1))  # the selected experts, renumbered 0..k-1
    assert sp.simplify(sp.Sum(p[e2] / kept * f, (e2, 0, k_ - 1)) - f) == 0
    uniform = sp.exp(sp.Integer(0)) / sp.Sum(sp.exp(sp.Integer(0)), (e2, 0, E_ - 1)).doit()
    assert sp.simplify(sp.Sum(uniform * f, (e2, 0, k_ - 1)).doit() - k_ / E_ * f) == 0


# ------------------------------------------------------------------ routers whose rows tie for every token

# Found by the soundness property: a new layer whose router is all ones (every expert's logit equal for
# every token), then its experts duplicated with cancelling noise in the same stage. Old top-1 breaks the
# tie by taking expert 0; new top-2 takes new experts 0 and 1, copies of two different old experts, so
# the noise of each is left uncancelled. The proof must not rest on the noise being 1e-30.
ONES_ROUTER = """\
specgrow: 1
model:
  dims: {hidden: 4, mlp: 4, heads: 1, kv_heads: 1, key: 2, value: 1, layers: 1, vocab: 5, positions: 3}
  norm: rmsnorm
  norm_eps: 0.0
  activation: relu
  position: rope
  final_norm: false
  norm_offset: 1
  parallel_residual: true
  moe: {experts: 2, top_k: 1, width: 3, renormalize: false}
seed: 0
steps:
- mlp: {to: 7, experts: [0, 1]}
- layers: {add: 1, at: 0, init: {o: zeros, rest: ones}}
- mlp: {to: 8, init: {w_in: zeros}}
- experts: {to: 4, method: duplicate, layers: [0], noise: NOISE}
- heads: {add: 1}
"""


def _tie_condition(step):
    return [c for o in step.obligations for c in o.side_conditions if "tie for every token" in c.text]


@pytest.mark.parametrize("noise", ["1.0e-30", "0.1"])
def test_duplicating_experts_whose_router_ties_everywhere_is_not_proved(noise):
    spec = load_spec_text(ONES_ROUTER.replace("NOISE", noise))
    certificate = prove_spec(spec)
    assert certificate.verdict.name != "PROVED"
    step = certificate.steps[3]
    assert step.verdict.name != "PROVED" and [c.holds for c in _tie_condition(step)] == [False]
    assert [s.verdict.name for s in certificate.steps[:3]] == ["PROVED"] * 3
    if noise == "0.1":  # the change is real: float64, the reference model; and the step has its own witness
        before, after, _, _ = grow(spec, torch.float64)
        assert float((after - before).abs().max()) > 1e-3
        assert step.verdict.name == "REFUTED"
        _replay(spec, step.counterexample, "layers.0.mlp.router.weight")
        from specgrow.verify.report import render_markdown

        assert "with one row for every expert in `layers.0.mlp.router.weight`" in render_markdown(certificate)
    else:  # a change of 1e-30 relative: no witness sees it
        assert step.verdict.name == "UNKNOWN"


def _replay(spec, cx, *routers):
    """A step's witness reproduced from its own words (dims, seed, scales, zeroed and tied tensors, tokens)
    with the numpy model it names: each of ``routers`` given one row for every expert, the logits move as
    it says."""
    import dataclasses

    from specgrow.shape import ModelShape, tensor_name
    from specgrow.transforms import compile_steps
    from specgrow.verify import witness

    assert cx.tied == routers, cx.tied
    shape = dataclasses.replace(ModelShape.from_spec(spec.model), vocab=cx.dims["vocab"],
                                positions=cx.dims["positions"])
    step = compile_steps(spec.steps, shape, spec.seed).steps[cx.step]
    state = witness.random_state(step.before, cx.seed, cx.norm_gain, cx.bias_scale)
    state.update({key: np.zeros_like(v) for key, v in state.items() if tensor_name(*key) in cx.zeroed})
    for key in [key for key in state if tensor_name(*key) in routers]:
        state[key] = np.repeat(state[key][:1], len(state[key]), axis=0)
    tokens = np.array([cx.tokens])
    before = witness.logits(step.before, state, tokens)[0, -1]
    after = witness.logits(step.after, witness.grow(state, step), tokens)[0, -1]
    assert before[:4].tolist() == pytest.approx(cx.reference, rel=1e-12)
    assert after[:4].tolist() == pytest.approx(cx.grown, rel=1e-12)
    assert float(np.abs(after - before).max()) == pytest.approx(cx.max_abs_diff, rel=1e-9)


UPCYCLE_ONES = [{"upcycle": {"experts": 4, "top_k": 2, "init": {"router": "ones"}}},
                {"experts": {"to": 8, "noise": 0.1}}]


def test_a_constant_router_left_by_an_upcycle_ties_the_next_duplication():
    """Upcycled with a constant router and renormalised: exact (identical experts), but every expert then
    ties; duplicating with noise after it changes the function, and is not PROVED, in a later stage of
    the plan too (training need not break the tie). A spec of its own, on the trained checkpoint, is
    PROVED: the tie is then that checkpoint's, under the stated assumption."""
    spec = _spec(UPCYCLE_ONES, None)
    certificate = prove_spec(spec)
    assert [s.verdict.name for s in certificate.steps][0] == "PROVED"
    assert certificate.steps[1].verdict.name == "REFUTED"
    _replay(spec, certificate.steps[1].counterexample, "layers.0.mlp.router.weight", "layers.1.mlp.router.weight")
    before, after, _, _ = grow(spec, torch.float64)
    assert float((after - before).abs().max()) > 1e-3
    staged = load_spec_text(spec_text([], **dict(MODEL)).replace(
        "steps: []", "stages:\n  - at_step: 0\n    steps:\n"
        "      - upcycle: {experts: 4, top_k: 2, init: {router: ones}}\n"
        "  - at_step: 100\n    steps:\n      - experts: {to: 8, noise: 0.1}\n"))
    proof = prove_spec(staged)
    assert proof.steps[1].verdict.name == proof.stages[1].verdict.name == "REFUTED"
    assert proof.stages[1].counterexample.tied == ("layers.0.mlp.router.weight", "layers.1.mlp.router.weight")
    assert prove_spec(_spec(UPCYCLE_ONES[1:], dict(MOE))).verdict.name == "PROVED"


@pytest.mark.parametrize("init, ties", [("ones", True), ("zeros", True), ({"normal": 0.02}, False),
                                        ({"normal": 1.0e-9}, True), ({"uniform": 0.5}, False)])
def test_router_ties_reads_the_router_init(init, ties):
    from specgrow.verify.experts import ROUTER, router_ties, ties_after

    spec = _spec([{"upcycle": {"experts": 4, "top_k": 2, "init": {"router": init}}},
                  {"experts": {"to": 8}}, {"hidden": {"to": 16}}, {"layers": {"add": 1, "at": 0}}], None)
    plan = compile_spec(spec)
    tied, zeros = frozenset(), frozenset()
    from specgrow.verify.prover import zeros_after

    seen = []
    for step in plan.steps:
        tied, zeros = ties_after(step, tied, zeros), zeros_after(step, zeros)
        seen.append(sorted(layer for role, layer in tied if role == ROUTER))
    # upcycled: both layers; duplicated and widened: still; the layer added at 0 moves them to 1 and 2, and
    # its own router, drawn like_old from a constant one (std 0), is that constant: tied too
    assert seen == ([[0, 1]] * 3 + [[0, 1, 2]] if ties else [[]] * 4)
    edit = next(e for e in plan.steps[0].edits if e.role == ROUTER)
    assert router_ties(edit) is ties


@pytest.mark.parametrize("hidden", [{"to": 16, "method": "duplicate", "noise": 0.1},
                                    {"to": 12, "init": {"read": {"normal": 0.5}}}])
def test_a_zero_router_stays_tied_through_a_hidden_growth(hidden):
    """Found by the soundness property (the duplicate case): a zero router, then the hidden size grown. Its
    rows now differ (cancelling noise, or random new columns) but its logits on the grown stream are still
    0 for every expert (the noise cancels on the duplicated stream, the new columns read zeros), so the
    split after it is not PROVED, and the function does change."""
    steps = [{"upcycle": {"experts": 3, "top_k": 1, "renormalize": False, "init": {"router": "zeros"}}},
             {"hidden": hidden}, {"experts": {"to": 6, "method": "split"}}]
    spec = _spec(steps, None, **(dict(norm="layernorm", activation="gelu_tanh") if "noise" in hidden else {}))
    certificate = prove_spec(spec)
    assert [s.verdict.name for s in certificate.steps[:2]] == ["PROVED"] * 2
    assert certificate.steps[2].verdict.name == "REFUTED"
    assert [c.holds for c in _tie_condition(certificate.steps[2])] == [False]
    _replay(spec, certificate.steps[2].counterexample, "layers.0.mlp.router.weight", "layers.1.mlp.router.weight")
    before, after, _, _ = grow(spec, torch.float64)
    assert float((after - before).abs().max()) > 1e-3
