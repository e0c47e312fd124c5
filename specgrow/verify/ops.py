"""Opaque operators and their lemmas.

The prover never opens Softmax, the norms, RoPE or a block of attention heads; it only
uses these identities (each proved at index level and checked numerically in
``tests/test_lemmas.py``):

* ``rms_pad``: RMSNorm([x, 0], [g, g'], e) = [sqrt(w'/w) * RMSNorm(x, g, e*w'/w), 0]
  (x of width w inside width w'); exact, so a missing gain or eps rescale shows up later
  as a residual, not as a failed match.
* ``norm_copies``: Norm([x, ..., x], [g_1, ..., g_m], e) = [Norm(x, g_1, e), ..., Norm(x, g_m, e)]
  for RMSNorm and LayerNorm (the mean and the variance of copies are unchanged).
* ``gain_linear``: RMSNorm(x, c*g, e) = c * RMSNorm(x, g, e); LayerNorm likewise when gain
  and bias share the factor.
* ``gqa_split``: Heads([Q_a, Q_b], [K_a, K_b], [V_a, V_b]) = [Heads(Q_a, K_a, V_a), Heads(Q_b, K_b, V_b)]
  when each query block holds exactly the heads that read its kv block.
* ``rope_linear``: RoPE(c*X) = c * RoPE(X), RoPE(0) = 0.
* ``partial_rope``: with partial rotary over the first r columns of a head, RoPE_r([A, B]) =
  [RoPE_r(A), B] when A is the old head (width k >= r): the frequencies depend on r alone, so
  columns appended after the old head are not turned (used by `sublayers.rotate`).
* ``zero_gain``: RMSNorm(x, 0, e) = 0 and LayerNorm(x, 0, b, e) = 1 * b, unless x is zero and
  e is 0 (0/0: NaN whatever the gain; no rule rewrites a norm of zero with eps 0).
* ``heads_of_zero_values``: Heads(Q, K, 0) = 0 (each row of the softmax weighs zeros).
* ``norm_of_zero``: RMSNorm(0, g, e) = 0 and LayerNorm(0, g, b, e) = 1 * b, for e != 0 (with
  e = 0 it is 0/0: not rewritten). A post-sublayer norm of a zeroed sublayer is zero.
* ``head_norm_split``: HeadNorm([A, B], g, e, w) = [HeadNorm(A, g, e, w), HeadNorm(B, g, e, w)]
  when A and B hold whole heads of width w (the per-head QK-norm acts on each head alone);
  HeadNorm(0, g, e, w) = 0 for e != 0; HeadNorm(x, c*g, e, w) = c * HeadNorm(x, g, e, w).
* ``mixture_linear``: a mixture of experts weighs each expert's output per token, so it is linear
  in the outputs for fixed logits: Mixture(l, [A, B]) = [Mixture(l, A), Mixture(l, B)],
  Mixture(l, c*A) = c * Mixture(l, A), Mixture(l, 0) = 0.

The routing lemmas (`specgrow.verify.experts`) are applied where a MoE layer is built, from the
structure of its edits, and stated with their tie assumption in the obligation's conditions:

* ``route_copies``: m copies of every expert with the expert's router row, top-(m*k): softmax gives
  each copy p_e/m, the m copies of an expert tie with each other and rank as the expert did, so the
  top m*k are the copies of the top k, each weighing w_e/m with or without renormalisation (the
  selected sum is the same). Assumes the old top-k is unique (no tie between distinct experts at the
  k-th place): the old model's own routing is then well defined.
* ``route_identical``: when every expert is the same function F, the mixture is F times the sum of
  the selected weights, whichever experts tie: 1 with renormalisation or when every expert is
  selected, k/E for a zero router (every probability 1/E) without it.
* ``route_same``: the same experts with the same logits, top-k and renormalisation pick the same
  experts with the same weights (ties broken alike), so each expert kept is the mixture kept.

``tests/test_moe.py`` proves the softmax and renormalisation parts at index level, checks the
top-k over copies exhaustively on every weak ranking of up to 4 experts, and checks each lemma
numerically on the reference model's `route` and `mixture`.
"""

from __future__ import annotations

import functools

import sympy as sp
from sympy import BlockMatrix, MatAdd, MatMul, MatrixExpr, OneMatrix, ZeroMatrix

from specgrow.verify.algebra import mul


@functools.lru_cache(maxsize=1024)
def _eps(value):
    """A canonical form of an epsilon expression, so equal eps compare equal."""
    return sp.factor(sp.sympify(value))


@functools.lru_cache(maxsize=1024)
def _columns(query_columns, key, value):
    """Output columns of a block of heads: (query columns / key width) heads of width value."""
    return sp.cancel(query_columns / key * value)


def _split_scalar(m):
    """(c, M) with m = c * M (a common factor of a sum's terms too)."""
    if isinstance(m, MatAdd):
        parts = [_split_scalar(t) for t in m.args]
        if len({c for c, _ in parts}) == 1:
            return parts[0][0], MatAdd(*[t for _, t in parts])
        return sp.Integer(1), m
    if isinstance(m, MatMul):
        coeff, mats = m.as_coeff_matrices()
        if len(mats) == 1:
            return coeff, mats[0]
        return coeff, MatMul(*mats)
    return sp.Integer(1), m


class _Op(MatrixExpr):
    """An uninterpreted matrix function; equal arguments give equal values."""

    def doit(self, **hints):
        if hints.get("deep", True):
            args = [a.doit(**hints) if isinstance(a, MatrixExpr) else a for a in self.args]
            if any(a is not b for a, b in zip(args, self.args)):
                return type(self)(*args)
        return self

    def _eval_transpose(self):
        return None


class RMSNorm(_Op):
    """Row-wise ``x * g / sqrt(mean(x^2) + eps)`` (n, w) with gain g (1, w)."""

    def __new__(cls, x, g, eps):
        return MatrixExpr.__new__(cls, x, g, _eps(eps))

    @property
    def shape(self):
        return self.args[0].shape


class LayerNorm(_Op):
    """Row-wise ``(x - mean) * g / sqrt(var + eps) + b``."""

    def __new__(cls, x, g, b, eps):
        return MatrixExpr.__new__(cls, x, g, b, _eps(eps))

    @property
    def shape(self):
        return self.args[0].shape


class HeadNorm(_Op):
    """Row-wise RMSNorm of each run of ``width`` columns (one head) of x (n, heads*width), one gain
    g (1, width) for every head: the per-head QK-norm (``qk_norm: head``)."""

    def __new__(cls, x, g, eps, width):
        return MatrixExpr.__new__(cls, x, g, _eps(eps), sp.sympify(width))

    @property
    def shape(self):
        return self.args[0].shape


class Heads(_Op):
    """The concatenated outputs of a block of attention heads from their projections.

    Q (n, a*k), K (n, b*k), V (n, b*v): query head j reads kv head j // (a/b); scores
    scaled by ``scale``, then soft-capped to ``cap * tanh(s / cap)`` when ``cap`` is not 0;
    RoPE inside when ``rope`` is 1, on the first ``rope`` columns of each head when it is a
    rotary width (partial rotary: even, so never 1); none when 0.
    """

    def __new__(cls, q, k, v, key, value, scale, rope, cap=0):
        obj = MatrixExpr.__new__(cls, q, k, v, *map(sp.sympify, (key, value, scale, rope, cap)))
        obj._shape = (q.shape[0], _columns(q.shape[1], sp.sympify(key), sp.sympify(value)))
        return obj

    @property
    def shape(self):
        return self._shape


class Softmax(_Op):
    """Row-wise softmax of causal attention scores."""

    def __new__(cls, s):
        return MatrixExpr.__new__(cls, s)

    @property
    def shape(self):
        return self.args[0].shape


class Rope(_Op):
    """Rotary embedding of one head's (n, w) projection at head width ``width``; with ``rotary``
    (partial rotary, not 0) only the first ``rotary`` columns turn, at frequencies of that width."""

    def __new__(cls, x, width, tag, rotary=0):
        return MatrixExpr.__new__(cls, x, sp.sympify(width), sp.Symbol(str(tag)), sp.sympify(rotary))

    @property
    def shape(self):
        return self.args[0].shape


class Mixture(_Op):
    """A mixture of experts on one generic expert's view: ``logits`` (n, 1) and ``out`` (n, w) are that
    expert's router logits and output; the value is the sum over all ``experts`` experts of their
    routed weights (softmax over every expert's logit, top ``top_k``, renormalised when
    ``renormalize`` is 1) times their outputs."""

    def __new__(cls, logits, out, top_k, renormalize, experts):
        return MatrixExpr.__new__(cls, logits, out, *map(sp.sympify, (top_k, renormalize, experts)))

    @property
    def shape(self):
        return self.args[1].shape


# ------------------------------------------------------------------ lemma rules
def all_zero(m) -> bool:
    """Whether ``m`` is the zero matrix, or a block matrix of zero blocks."""
    return isinstance(m, ZeroMatrix) or isinstance(m, BlockMatrix) and all(isinstance(b, ZeroMatrix) for b in m.blocks)


def _nan(x, eps) -> bool:
    """A norm of an all-zero input with eps 0 is 0/0: NaN, whatever its gain; no rule rewrites it
    (the sublayers refuse to build one in the grown model: `sublayers.NaNNorm`)."""
    return eps == 0 and all_zero(x)


def r_rmsnorm(e, trace):
    x, g, eps = e.args
    if _nan(x, eps):
        return e
    if isinstance(g, ZeroMatrix):
        trace.lemma("zero_gain")
        return ZeroMatrix(*e.shape)
    if all_zero(x) and eps != 0:
        trace.lemma("norm_of_zero")
        return ZeroMatrix(*e.shape)
    c, g0 = _split_scalar(g)
    if c != 1:
        trace.lemma("gain_linear")
        return mul(c, RMSNorm(x, g0, eps))
    if isinstance(x, BlockMatrix) and isinstance(g, BlockMatrix) and x.blockshape[0] == 1:
        xs, gs = list(x.blocks), list(g.blocks)
        if len(xs) != len(gs) or [b.shape[1] for b in xs] != [b.shape[1] for b in gs]:
            return e
        live = [i for i, b in enumerate(xs) if not isinstance(b, ZeroMatrix)]
        if len(live) == 1:
            i = live[0]
            width, total = xs[i].shape[1], x.shape[1]
            ratio = sp.cancel(total / width)
            trace.lemma("rms_pad")
            blocks = [ZeroMatrix(*b.shape) for b in xs]
            blocks[i] = mul(sp.sqrt(ratio), RMSNorm(xs[i], gs[i], eps * ratio))
            return BlockMatrix([blocks])
        if len(set(xs)) == 1 and len(xs) > 1:
            trace.lemma("norm_copies")
            return BlockMatrix([[RMSNorm(xs[0], gi, eps) for gi in gs]])
    return e


def r_layernorm(e, trace):
    x, g, b, eps = e.args
    if _nan(x, eps):
        return e
    if isinstance(g, ZeroMatrix) or all_zero(x) and eps != 0:
        trace.lemma("zero_gain" if isinstance(g, ZeroMatrix) else "norm_of_zero")
        return ZeroMatrix(*e.shape) if isinstance(b, ZeroMatrix) else mul(OneMatrix(x.shape[0], 1), b)
    cg, g0 = _split_scalar(g)
    cb, b0 = _split_scalar(b)
    if cg != 1 and (cg == cb or isinstance(b, ZeroMatrix)):
        trace.lemma("gain_linear")
        return mul(cg, LayerNorm(x, g0, b0 if cb == cg else b, eps))
    if isinstance(x, BlockMatrix) and x.blockshape[0] == 1 and len(set(x.blocks)) == 1 and len(x.blocks) > 1:
        if isinstance(g, BlockMatrix) and isinstance(b, BlockMatrix) and \
                len(g.blocks) == len(b.blocks) == len(x.blocks):
            trace.lemma("norm_copies")
            return BlockMatrix([[LayerNorm(x.blocks[0], gi, bi, eps) for gi, bi in zip(g.blocks, b.blocks)]])
    return e


def r_headnorm(e, trace):
    x, g, eps, width = e.args
    if _nan(x, eps):
        return e
    if isinstance(g, ZeroMatrix) or all_zero(x) and eps != 0:
        trace.lemma("head_norm_split")
        return ZeroMatrix(*e.shape)
    c, g0 = _split_scalar(g)
    if c != 1:
        trace.lemma("head_norm_split")
        return mul(c, HeadNorm(x, g0, eps, width))
    if isinstance(x, BlockMatrix) and x.blockshape[0] == 1 and len(x.blocks) > 1:
        if all(_whole(b.shape[1], width) for b in x.blocks):
            trace.lemma("head_norm_split")
            return BlockMatrix([[HeadNorm(b, g, eps, width) for b in x.blocks]])
    return e


def _whole(columns, width) -> bool:
    """Whether ``columns`` is a whole number of heads of ``width``: a polynomial in the dims
    with integer coefficients once divided."""
    ratio = sp.cancel(sp.sympify(columns) / width)
    numerator, denominator = sp.fraction(ratio)
    return denominator == 1 and ratio.is_integer is True


def r_heads(e, trace):
    q, k, v, key, value, scale, rope, cap = e.args
    if not all(isinstance(m, BlockMatrix) for m in (q, k, v)):
        return e
    qs, ks, vs = list(q.blocks), list(k.blocks), list(v.blocks)
    if not (len(qs) == len(ks) == len(vs) > 1):
        return e
    ratio = sp.cancel(q.shape[1] / k.shape[1])
    for qb, kb, vb in zip(qs, ks, vs):
        if sp.cancel(qb.shape[1] / kb.shape[1] - ratio) != 0:
            return e
        if sp.cancel(kb.shape[1] / key - vb.shape[1] / value) != 0:
            return e
    trace.lemma("gqa_split")
    return BlockMatrix([[Heads(qb, kb, vb, key, value, scale, rope, cap) for qb, kb, vb in zip(qs, ks, vs)]])


def r_rope(e, trace):
    x, width, tag, rotary = e.args
    if isinstance(x, ZeroMatrix):
        trace.lemma("rope_linear")
        return ZeroMatrix(*x.shape)
    c, x0 = _split_scalar(x)
    if c != 1:
        trace.lemma("rope_linear")
        return mul(c, Rope(x0, width, tag, rotary))
    if isinstance(x, BlockMatrix):
        coeffs = {_split_scalar(b)[0] for b in x.blocks}
        if len(coeffs) == 1 and (c := coeffs.pop()) != 1:
            trace.lemma("rope_linear")
            return mul(c, Rope(BlockMatrix([[_split_scalar(b)[1] for b in x.blocks]]), width, tag, rotary))
    return e


def r_heads_zero(e, trace):
    if isinstance(e.args[2], ZeroMatrix):
        trace.lemma("heads_of_zero_values")
        return ZeroMatrix(*e.shape)
    return r_heads(e, trace)


def r_mixture(e, trace):
    logits, out, top_k, renormalize, experts = e.args
    if all_zero(out):
        trace.lemma("mixture_linear")
        return ZeroMatrix(*e.shape)
    c, out0 = _split_scalar(out)
    if c != 1:
        trace.lemma("mixture_linear")
        return mul(c, Mixture(logits, out0, top_k, renormalize, experts))
    if isinstance(out, BlockMatrix) and out.blockshape[0] == 1 and len(out.blocks) > 1:
        trace.lemma("mixture_linear")
        return BlockMatrix([[Mixture(logits, b, top_k, renormalize, experts) for b in out.blocks]])
    return e


LEMMAS = {RMSNorm: r_rmsnorm, LayerNorm: r_layernorm, Heads: r_heads_zero, Rope: r_rope, HeadNorm: r_headnorm,
          Mixture: r_mixture}
