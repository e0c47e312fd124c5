"""The prover's lemmas (`specgrow.verify.ops`): proved at index level with Sum/Indexed, and
checked numerically against the reference model's own operators (fp32, atol = rtol = 1e-5); and the
rule functions the prover runs (`ops.LEMMAS`), each applied once, input against output in float64."""

from __future__ import annotations

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

    from specgrow.verify.ops import Heads, LayerNorm, RMSNorm, Rope

    n, h, dh, kk, v = sp.symbols("n h dh k v", integer=True, positive=True)
    e = sp.Symbol("epsilon", positive=True)
    xs, x2 = MatrixSymbol("x", n, h), MatrixSymbol("x2", n, h)
    g1, g2, g3 = MatrixSymbol("g", 1, h), MatrixSymbol("g2", 1, dh), MatrixSymbol("g3", 1, h)
    b1, b3 = MatrixSymbol("b", 1, h), MatrixSymbol("b3", 1, h)
    q = [MatrixSymbol(f"q{i}", n, 2 * kk) for i in range(2)]
    ks = [MatrixSymbol(f"k{i}", n, kk) for i in range(2)]
    vs = [MatrixSymbol(f"v{i}", n, v) for i in range(2)]
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
