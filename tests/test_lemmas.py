"""The prover's lemmas (`specgrow.verify.ops`): proved at index level with Sum/Indexed, and
checked numerically against the reference model's own operators (fp32, atol = rtol = 1e-5); and the
rule functions the prover runs (`ops.LEMMAS`), each applied once, input against output in float64,
and left alone where their side condition fails. The rope scalings (`specgrow.rope`): which keep
every old frequency under the interleaved key placement, and equality with transformers'."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp
import torch

from specgrow.models.reference import Norm, rope

i, j, c, t = sp.symbols("i j c t", integer=True, nonnegative=True)
w, d, m, r, b, k = sp.symbols("w d m r b k", integer=True, positive=True)
eps, theta = sp.symbols("epsilon theta", positive=True)
x, g = sp.IndexedBase("x", real=True), sp.IndexedBase("g", real=True)
S = sp.Sum(x[i] ** 2, (i, 0, w - 1))


def close(a, b):
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_rms_pad_index_level():
    """RMSNorm over [x, 0] (width w + d) = sqrt((w+d)/w) * RMSNorm(x, g, eps*(w+d)/w), new dims 0."""
    padded = sp.Piecewise((x[i] ** 2, i < w), (0, True))
    tail = sp.Sum(padded.subs(i, w + t), (t, 0, d - 1)).doit()
    assert tail == 0
    total = S + tail  # sum of squares of [x, 0] over i < w + d
    lhs = x[j] * g[j] / sp.sqrt(total / (w + d) + eps)
    rhs = sp.sqrt((w + d) / w) * x[j] * g[j] / sp.sqrt(S / w + eps * (w + d) / w)
    assert sp.simplify(lhs / rhs) == 1


def test_rms_pad_numeric():
    width, extra, e = 6, 3, 1e-2
    norm_old, norm_new = Norm(width, "rmsnorm", e * (width + extra) / width), Norm(width + extra, "rmsnorm", e)
    xs = torch.randn(4, width)
    with torch.no_grad():
        norm_new.weight[:width] = norm_old.weight.normal_()
        padded = torch.cat([xs, torch.zeros(4, extra)], dim=-1)
        out = norm_new(padded)
        close(out[:, :width], ((width + extra) / width) ** 0.5 * norm_old(xs))
        close(out[:, width:], torch.zeros(4, extra))


def test_norm_copies_index_level():
    """Mean, mean of squares and variance of m copies of x equal those of x.

    Entry ``c*w + i`` of the copies is ``x[i]``; summing over the copy index c first gives m*x[i].
    """
    mu = sp.Symbol("mu")
    for term in (x[i], x[i] ** 2, (x[i] - mu) ** 2):
        over_copies = sp.Sum(sp.Sum(term, (c, 0, m - 1)).doit(), (i, 0, w - 1)) / (m * w)
        assert sp.simplify(over_copies - sp.Sum(term, (i, 0, w - 1)) / w) == 0


def test_norm_copies_numeric():
    for kind in ("rmsnorm", "layernorm"):
        small, big = Norm(5, kind, 1e-2), Norm(15, kind, 1e-2)
        with torch.no_grad():
            small.weight.normal_()
            big.weight.copy_(small.weight.repeat(3))
            if kind == "layernorm":
                small.bias.normal_()
                big.bias.copy_(small.bias.repeat(3))
            xs = torch.randn(2, 5)
            close(big(xs.repeat(1, 3)), small(xs).repeat(1, 3))


def test_layernorm_zero_pad_has_no_exact_lift():
    """The mean over [x, 0] is (w/(w+d)) mean(x): no gain or eps rescale restores it."""
    mean_pad = (sp.Sum(x[i], (i, 0, w - 1)) + 0) / (w + d)
    assert sp.simplify(mean_pad - sp.Sum(x[i], (i, 0, w - 1)) / w) != 0
    small, big = Norm(4, "layernorm", 1e-5), Norm(6, "layernorm", 1e-5)
    xs = torch.randn(3, 4)
    with torch.no_grad():
        out = big(torch.cat([xs, torch.zeros(3, 2)], dim=-1))[:, :4]
    assert (out - small(xs)).abs().max() > 1e-2


def test_gain_linear():
    lhs = x[j] * (sp.Symbol("a") * g[j]) / sp.sqrt(S / w + eps)
    assert sp.simplify(lhs - sp.Symbol("a") * (x[j] * g[j] / sp.sqrt(S / w + eps))) == 0


def test_gqa_split_index_level():
    """Query head a + t (a = r*b) reads kv head b + t // r: the second block's own numbering."""
    assert sp.simplify(sp.floor((r * b + t) / r) - (b + sp.floor(t / r))) == 0


def test_gqa_split_numeric():
    from specgrow.models.reference import Attention
    from specgrow.shape import LayerShape, ModelShape

    def attention(heads, kv_heads):
        layer = LayerShape(mlp=4, heads=heads, kv_heads=kv_heads, key=4, value=2)
        return Attention(ModelShape(8, 4, 8, (layer,), position="rope", rope_theta=100.0), layer)

    full, first, rest = attention(6, 3), attention(2, 1), attention(4, 2)
    with torch.no_grad():
        first.q.weight.copy_(full.q.weight[:8]), rest.q.weight.copy_(full.q.weight[8:])
        first.k.weight.copy_(full.k.weight[:4]), rest.k.weight.copy_(full.k.weight[4:])
        first.v.weight.copy_(full.v.weight[:2]), rest.v.weight.copy_(full.v.weight[2:])
        first.o.weight.copy_(full.o.weight[:, :4]), rest.o.weight.copy_(full.o.weight[:, 4:])
        xs = torch.randn(2, 5, 8)
        close(full(xs), first(xs) + rest(xs))  # Heads([a, b]) o = Heads(a) o_a + Heads(b) o_b


def test_rope_interleave_keeps_frequencies_index_level():
    """Old pair i at new pair m*i of a head m times wider: same frequency, still a pair."""
    new_width = m * k
    assert sp.simplify(theta ** (-2 * (m * i) / new_width) - theta ** (-2 * i / k)) == 0
    assert sp.simplify((new_width / 2 + m * i) - (m * i) - new_width / 2) == 0
    # appending instead moves pair i to frequency theta^(-2i/(k+d)) and breaks the pairing
    assert sp.simplify(theta ** (-2 * i / (k + d)) - theta ** (-2 * i / k)) != 0


def test_rope_interleave_numeric():
    width, factor = 8, 3
    q, kk = torch.randn(1, 1, 6, width), torch.randn(1, 1, 6, width)
    old = rope(q, 500.0) @ rope(kk, 500.0).transpose(-1, -2)

    def place(vec):
        out = torch.zeros(1, 1, 6, width * factor)
        half, new_half = width // 2, width * factor // 2
        out[..., 0:new_half:factor] = vec[..., :half]
        out[..., new_half::factor] = vec[..., half:]
        return out

    q_new = place(q) + torch.where(place(torch.ones_like(q)) == 0, torch.randn(1, 1, 6, width * factor), 0.0)
    new = rope(q_new, 500.0) @ rope(place(kk), 500.0).transpose(-1, -2)
    close(new, old)


def test_rope_linear_numeric():
    xs = torch.randn(1, 2, 5, 6)
    close(rope(2.5 * xs, 1e4), 2.5 * rope(xs, 1e4))
    close(rope(torch.zeros_like(xs), 1e4), torch.zeros_like(xs))


def test_zero_gain_numeric():
    """Norm(x, 0, e) = 0 (and LayerNorm(x, 0, b, e) = b): what a zero-filled new layer's norms give."""
    for kind in ("rmsnorm", "layernorm"):
        norm = Norm(5, kind, 1e-2)
        with torch.no_grad():
            norm.weight.zero_()
            expected = torch.zeros(3, 5)
            if kind == "layernorm":
                norm.bias.normal_()
                expected = norm.bias.expand(3, 5)
            close(norm(torch.randn(3, 5)), expected)


# ------------------------------------------------------------------ the rules the prover runs
def _lemma_cases():
    """(lemma, an expression on which that rule of `specgrow.verify.ops.LEMMAS` fires)."""
    from sympy import BlockMatrix, MatrixSymbol, ZeroMatrix

    from specgrow.verify.ops import HeadNorm, Heads, LayerNorm, RMSNorm, Rope

    n, h, dh, kk, v = sp.symbols("n h dh k v", integer=True, positive=True)
    e = sp.Symbol("epsilon", positive=True)
    xs, x2 = MatrixSymbol("x", n, h), MatrixSymbol("x2", n, h)
    g1, g2, g3 = MatrixSymbol("g", 1, h), MatrixSymbol("g2", 1, dh), MatrixSymbol("g3", 1, h)
    b1, b3 = MatrixSymbol("b", 1, h), MatrixSymbol("b3", 1, h)
    q = [MatrixSymbol(f"q{i}", n, 2 * kk) for i in range(2)]
    ks = [MatrixSymbol(f"k{i}", n, kk) for i in range(2)]
    vs = [MatrixSymbol(f"v{i}", n, v) for i in range(2)]
    gk = MatrixSymbol("gk", 1, kk)  # one QK-norm gain of a head's width, shared by every head
    row = lambda *blocks: BlockMatrix([list(blocks)])  # noqa: E731
    return [
        ("rms_pad", RMSNorm(row(xs, ZeroMatrix(n, dh)), row(g1, g2), e)),
        ("norm_copies", RMSNorm(row(xs, xs), row(g1, g3), e)),
        ("norm_copies", LayerNorm(row(xs, xs), row(g1, g3), row(b1, b3), e)),
        ("gain_linear", RMSNorm(xs, sp.Rational(1, 3) * g1, e)),
        ("gain_linear", LayerNorm(xs, 2 * g1, 2 * b1, e)),
        ("zero_gain", RMSNorm(xs, ZeroMatrix(1, h), e)),
        ("zero_gain", LayerNorm(xs, ZeroMatrix(1, h), b1, e)),
        ("gqa_split", Heads(row(*q), row(*ks), row(*vs), kk, v, 1 / sp.sqrt(kk), 0)),
        ("gqa_split", Heads(row(*q), row(*ks), row(*vs), kk, v, 1 / sp.sqrt(kk), 1)),
        ("heads_of_zero_values", Heads(q[0], ks[0], ZeroMatrix(n, v), kk, v, 1 / sp.sqrt(kk), 0)),
        ("rope_linear", Rope(sp.Rational(3, 2) * x2, h, "old")),
        ("rope_linear", Rope(ZeroMatrix(n, h), h, "old")),
        ("norm_of_zero", RMSNorm(ZeroMatrix(n, h), g1, e)),
        ("norm_of_zero", RMSNorm(ZeroMatrix(n, h), g1, e * (h + dh) / h)),
        ("norm_of_zero", LayerNorm(ZeroMatrix(n, h), g1, b1, e)),
        ("norm_of_zero", LayerNorm(ZeroMatrix(n, h), g1, ZeroMatrix(1, h), e)),
        ("head_norm_split", HeadNorm(row(*q), gk, e, kk)),  # two blocks of two heads each
        ("head_norm_split", HeadNorm(row(ks[0], q[1], ks[1]), gk, e, kk)),  # 1 + 2 + 1 heads
        ("head_norm_split", HeadNorm(ZeroMatrix(n, 2 * kk), gk, e, kk)),
        ("head_norm_split", HeadNorm(q[0], ZeroMatrix(1, kk), e, kk)),
        ("head_norm_split", HeadNorm(q[0], sp.Rational(1, 3) * gk, e, kk)),
    ]


def test_each_lemma_rule_the_prover_runs_keeps_the_value():
    """Not the mathematics restated: the rule functions of `ops.LEMMAS` themselves, applied once,
    their input and output evaluated in float64 at random dims (`specgrow.verify.evaluate`, whose
    operators are checked against the reference model's in tests/test_evaluate.py)."""
    from specgrow.verify.algebra import Trace
    from specgrow.verify.evaluate import agree
    from specgrow.verify.ops import LEMMAS

    for lemma, expr in _lemma_cases():
        trace = Trace()
        out = LEMMAS[type(expr)](expr, trace)
        assert out is not expr and lemma in trace.lemmas, (lemma, expr, trace.lemmas)
        found = agree(out, expr, trials=3)
        assert found.agrees, (lemma, found.reason)


def test_a_rule_that_drops_the_rms_pad_factor_is_caught():
    """The check above is not blind: rms_pad without its sqrt(w'/w) disagrees."""
    from sympy import BlockMatrix, MatMul

    from specgrow.verify import ops
    from specgrow.verify.algebra import Trace
    from specgrow.verify.evaluate import agree

    _, expr = _lemma_cases()[0]
    out = ops.r_rmsnorm(expr, Trace())
    wrong = BlockMatrix([[b.args[-1] if isinstance(b, MatMul) else b for b in out.blocks]])
    assert agree(out, expr).agrees and not agree(wrong, expr).agrees


def test_rules_with_a_failed_side_condition_leave_the_expression_alone():
    """norm_of_zero (and HeadNorm of zero) need eps != 0: with eps literally 0 the norm of 0 is 0/0
    (NaN in the reference model, see `test_norm_of_zero_numeric`). head_norm_split needs blocks of
    whole heads: a block that cuts a head in two is not normed on its own."""
    from sympy import BlockMatrix, MatrixSymbol, ZeroMatrix

    from specgrow.verify.algebra import Trace
    from specgrow.verify.ops import LEMMAS, HeadNorm, LayerNorm, RMSNorm

    n, h, kk = sp.symbols("n h k", integer=True, positive=True)
    e = sp.Symbol("epsilon", positive=True)
    g1, b1, gk = MatrixSymbol("g", 1, h), MatrixSymbol("b", 1, h), MatrixSymbol("gk", 1, kk)
    row = lambda *blocks: BlockMatrix([list(blocks)])  # noqa: E731
    untouched = [
        RMSNorm(ZeroMatrix(n, h), g1, 0),
        LayerNorm(ZeroMatrix(n, h), g1, b1, 0),
        HeadNorm(ZeroMatrix(n, 2 * kk), gk, 0, kk),
        HeadNorm(row(MatrixSymbol("a", n, kk + 1), MatrixSymbol("c", n, kk - 1)), gk, e, kk),  # k+1 | k-1
        HeadNorm(row(MatrixSymbol("a2", n, kk / 2), MatrixSymbol("c2", n, 3 * kk / 2)), gk, e, kk),  # halves
        HeadNorm(row(MatrixSymbol("a3", n, kk), MatrixSymbol("c3", n, 3)), gk, e, kk),  # 3 columns: no dims say whole
    ]
    for expr in untouched:
        trace = Trace()
        assert LEMMAS[type(expr)](expr, trace) is expr and not trace.lemmas, (expr, trace.lemmas)


def test_zero_gain_leaves_a_zero_input_with_eps_0_alone():
    from sympy import ZeroMatrix

    from specgrow.verify.algebra import Trace
    from specgrow.verify.ops import LEMMAS, HeadNorm, RMSNorm

    n, h, kk = sp.symbols("n h k", integer=True, positive=True)
    from specgrow.models.reference import normalize

    assert torch.isnan(normalize(torch.zeros(2, 3), "rmsnorm", 0.0, torch.zeros(3))).all()  # what it means
    for expr in (RMSNorm(ZeroMatrix(n, h), ZeroMatrix(1, h), 0), HeadNorm(ZeroMatrix(n, kk), ZeroMatrix(1, kk), 0, kk)):
        assert LEMMAS[type(expr)](expr, Trace()) is expr, expr


def _zero_input(expr):
    """``expr`` with every entry of the input vector x set to 0 (inside the sums too)."""
    return expr.replace(lambda e: isinstance(e, sp.Indexed) and e.base == x, lambda e: sp.Integer(0)).doit()


def test_norm_of_zero_index_level():
    """RMSNorm(0, g, e) = 0 and LayerNorm(0, g, b, e) = b for e != 0; with e = 0 both are 0/0."""
    bias = sp.IndexedBase("b", real=True)
    rms = x[j] * g[j] / sp.sqrt(S / w + eps)
    mu = sp.Sum(x[i], (i, 0, w - 1)) / w
    var = sp.Sum((x[i] - mu) ** 2, (i, 0, w - 1)) / w
    layer = (x[j] - mu) * g[j] / sp.sqrt(var + eps) + bias[j]
    assert sp.simplify(_zero_input(rms)) == 0
    assert sp.simplify(_zero_input(layer) - bias[j]) == 0
    assert _zero_input(rms.subs(eps, 0)) is sp.nan
    assert _zero_input(layer.subs(eps, 0)) is sp.nan


def test_norm_of_zero_numeric():
    """The reference model's norms of a zero input, alone and as the post-norm of a sublayer that
    adds nothing (a new layer's zero output projection under ``norm_position: post``)."""
    from specgrow.models.reference import normalize, sublayer

    zeros = torch.zeros(3, 5)
    gain, bias = 1 + torch.randn(5), torch.randn(5)
    close(normalize(zeros, "rmsnorm", 1e-2, gain), zeros)
    close(normalize(zeros, "layernorm", 1e-2, gain, bias), bias.expand(3, 5))
    for kind in ("rmsnorm", "layernorm"):
        post = Norm(5, kind, 1e-6)
        with torch.no_grad():
            post.weight.normal_()
            expected = zeros if kind == "rmsnorm" else post.bias.normal_().expand(3, 5)
            close(sublayer(lambda t: 0 * t, torch.randn(3, 5), None, post), expected)
        assert torch.isnan(normalize(zeros, kind, 0.0, gain, bias if kind == "layernorm" else None)).all()


def test_head_norm_split_index_level():
    """In [A, B] with A holding a whole heads of width w, the mean square of head a + j' reads
    B's columns j'w .. j'w + w - 1 only (head j' of B), and that of a head j < a reads A's only:
    the per-head norm of [A, B] is [HeadNorm(A), HeadNorm(B)]."""
    a = sp.Symbol("a", integer=True, positive=True)
    jp, s, u, v = sp.symbols("jp s u v", integer=True, nonnegative=True)
    A, B = sp.IndexedBase("A", real=True), sp.IndexedBase("B", real=True)

    def column(c):  # column c of [A, B]
        return sp.Piecewise((A[c], c < a * w), (B[c - a * w], True))

    in_b = sp.Sum(column((a + jp) * w + s) ** 2, (s, 0, w - 1))
    assert sp.simplify(in_b - sp.Sum(B[jp * w + s] ** 2, (s, 0, w - 1))) == 0
    head = a - 1 - u  # a head of A (u >= 0); its column s = w - 1 - v (0 <= v < w)
    in_a = column(head * w + w - 1 - v)
    assert sp.simplify(in_a - A[head * w + w - 1 - v]) == 0
    # the head index of column (a + j')w + s of [A, B] is a + (that of column j'w + s of B): gqa's floor
    assert sp.simplify(sp.floor(((a + jp) * w + s) / w) - (a + sp.floor((jp * w + s) / w))) == 0


def test_head_norm_split_numeric():
    """The reference attention with ``qk_norm: head`` over 6 heads (3 kv heads) is the sum of its
    first 2 heads' and its last 4 heads' attentions, with the one shared QK-norm gain each."""
    from specgrow.models.reference import Attention
    from specgrow.shape import LayerShape, ModelShape

    def attention(heads, kv_heads):
        layer = LayerShape(mlp=4, heads=heads, kv_heads=kv_heads, key=4, value=2)
        shape = ModelShape(8, 4, 8, (layer,), position="rope", rope_theta=100.0, qk_norm="head", norm_eps=1e-2)
        return Attention(shape, layer)

    full, first, rest = attention(6, 3), attention(2, 1), attention(4, 2)
    with torch.no_grad():
        full.q_norm.weight.normal_(), full.k_norm.weight.normal_()
        for part in (first, rest):
            part.q_norm.weight.copy_(full.q_norm.weight), part.k_norm.weight.copy_(full.k_norm.weight)
        first.q.weight.copy_(full.q.weight[:8]), rest.q.weight.copy_(full.q.weight[8:])
        first.k.weight.copy_(full.k.weight[:4]), rest.k.weight.copy_(full.k.weight[4:])
        first.v.weight.copy_(full.v.weight[:2]), rest.v.weight.copy_(full.v.weight[2:])
        first.o.weight.copy_(full.o.weight[:, :4]), rest.o.weight.copy_(full.o.weight[:, 4:])
        xs = torch.randn(2, 5, 8)
        close(full(xs), first(xs) + rest(xs))
        # and the per-head norm of a head does not read another head's columns
        q = torch.randn(2, 5, 3, 4)
        moved = q.clone()
        moved[..., 1, :] += 1 + torch.randn(2, 5, 4)  # head 1 only
        normed, normed_moved = (normalize_heads(t, full.q_norm.weight) for t in (q, moved))
        close(normed[..., [0, 2], :], normed_moved[..., [0, 2], :])
        assert (normed[..., 1, :] - normed_moved[..., 1, :]).abs().max() > 1e-2


def normalize_heads(q, gain, eps=1e-2):
    from specgrow.models.reference import normalize

    return normalize(q, "rmsnorm", eps, gain)  # the last axis: one head's key width


# ------------------------------------------------------------------ rope scalings (specgrow.rope)
LLAMA3 = {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}
LINEAR = {"type": "linear", "factor": 4.0}


def _scaling(params: dict) -> tuple:
    return tuple(sorted(params.items()))


def _interleaved(width, m, theta, params, positions, length):
    """(old frequencies, new frequencies at the old pairs' new places m*i, both attention factors)."""
    from specgrow.rope import frequencies

    old, old_factor = frequencies(width, theta, _scaling(params), positions, length)
    new, new_factor = frequencies(m * width, theta, _scaling(params), positions, length)
    return old, new[::m], old_factor, new_factor


def test_interleave_keeps_every_linear_and_llama3_frequency():
    """Old pair i at new pair m*i of a head m times wider: the unscaled frequency is the same
    (theta^(-2mi/(mk)) = theta^(-2i/k)), and linear and llama3 scale a frequency by itself alone, so
    the scaled one is the same too (float64, relative 1e-15)."""
    from specgrow.rope import frequencies

    bands = set()  # which llama3 wavelength bands the old pairs fell in: kept, scaled, smoothed
    for params in (LINEAR, LLAMA3, dict(LLAMA3, original_max_position_embeddings=8192)):
        for width, times, base in ((8, 2, 1e4), (8, 3, 1e4), (16, 4, 5e5), (64, 2, 5e5), (128, 2, 5e5)):
            old, new, old_factor, new_factor = _interleaved(width, times, base, params, 16, 16)
            np.testing.assert_allclose(new, old, rtol=1e-15, atol=0)
            assert old_factor == new_factor == 1.0
            if params["type"] == "llama3":
                ratio = old / frequencies(width, base, (), 16, 16)[0]
                kept, scaled = np.isclose(ratio, 1.0), np.isclose(ratio, 1 / params["factor"])
                found = {"kept": kept, "scaled": scaled, "smoothed": ~kept & ~scaled}
                bands |= {band for band, where in found.items() if where.any()}
    assert bands == {"kept", "scaled", "smoothed"}, bands


def test_yarn_and_dynamic_move_old_frequencies_under_interleave():
    """yarn's correction range is a rounded fraction of the width, and dynamic NTK raises the base
    to width / (width - 2): both depend on the head width itself, so some old pair's frequency moves
    (why the spec refuses key growth under them). Realistic yarn: Qwen2.5's recommended factor 4 over
    32768 positions, theta 1e6, head 128 -> 256; and head 64 -> 128 with theta 5e5 over 8192."""
    for width, theta, context in ((128, 1e6, 32768), (64, 5e5, 8192)):
        yarn = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": context}
        old, new, old_factor, new_factor = _interleaved(width, 2, theta, yarn, 4 * context, 16)
        assert old_factor == new_factor  # the attention factor depends on the factor alone
        assert float(np.max(np.abs(new - old) / old)) > 1e-3, (width, theta, context)
    dynamic = {"type": "dynamic", "factor": 2.0}
    old, new, _, _ = _interleaved(16, 2, 1e4, dynamic, 8, 32)  # 32 tokens beyond 8 positions
    assert float(np.max(np.abs(new - old) / old)) > 1e-3
    old, new, _, _ = _interleaved(16, 2, 1e4, dynamic, 8, 8)  # within the positions: no scaling yet
    np.testing.assert_allclose(new, old, rtol=1e-15, atol=0)


TRANSFORMERS_ROPE = {  # name: (HF rope_parameters without rope_theta, specgrow's scaling)
    "default": {"rope_type": "default"},
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32},
    "yarn-untruncated": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                         "truncate": False},
    "yarn-mscale": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32, "mscale": 0.707,
                    "mscale_all_dim": 1.0, "beta_fast": 16.0, "beta_slow": 2.0},
    "yarn-attention-factor": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32,
                              "attention_factor": 1.5},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
}


@pytest.mark.parametrize("name", TRANSFORMERS_ROPE)
@pytest.mark.parametrize("length", [16, 300])  # within max_position_embeddings (128), and beyond it
def test_frequencies_equal_transformers(name, length):
    """`specgrow.rope.frequencies` against transformers' `ROPE_INIT_FUNCTIONS` (the default: the
    LLaMA rotary embedding's own) on a small LlamaConfig: head 16, theta 1e4, 128 positions, where
    llama3 meets all three wavelength bands and yarn a ramp. transformers computes in float32: the
    frequencies agree to rtol 1e-6 (a few float32 ulps; measured 9e-8), the attention factor to 1e-12."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from specgrow.rope import frequencies

    params = TRANSFORMERS_ROPE[name]
    config = LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=16, max_position_embeddings=128,
                         rope_parameters={"rope_theta": 1e4, **params})
    kind = params["rope_type"]
    if kind == "default":
        expected, factor = LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    else:
        expected, factor = ROPE_INIT_FUNCTIONS[kind](config, seq_len=length if kind == "dynamic" else None)
    scaling = () if kind == "default" else _scaling(
        {("type" if key == "rope_type" else key): value for key, value in params.items()})
    found, attention = frequencies(16, 1e4, scaling, 128, length)
    np.testing.assert_allclose(found, expected.double().numpy(), rtol=1e-6, atol=0)
    assert attention == pytest.approx(factor, rel=1e-12)
    if kind != "default":  # the scaling did something here (dynamic only beyond the positions)
        plain, _ = frequencies(16, 1e4, (), 128, length)
        assert (kind == "dynamic" and length <= 128) == bool(np.allclose(found, plain, rtol=1e-12))
