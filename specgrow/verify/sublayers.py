"""Symbolic semantics of the reference model's pieces, on old and grown weights.

Each function returns ``(new, old)``: the grown piece applied to the lifted input and the
old piece applied to the plain input; the prover then shows ``new - lift(old) = 0``.
Weights come from the step's `TensorEdit`s through `build.symbolize`; tensors a step does
not edit are plain symbols, equal on both sides.
"""

from __future__ import annotations

import sympy as sp
from sympy import BlockMatrix, HadamardProduct, MatAdd, MatMul, MatrixSymbol, OneMatrix, ZeroMatrix

from specgrow.ir import sym
from specgrow.transforms.common import SPACE_SIZE
from specgrow.verify.algebra import Trace, add, apply_fn, collapse, elementwise_fn, mul, softcap_fn
from specgrow.verify.build import Stuck, symbolize
from specgrow.verify.ops import LEMMAS, HeadNorm, Heads, LayerNorm, Mixture, RMSNorm, Rope, Softmax, all_zero
from specgrow.verify.ops import _split_scalar
from specgrow.rope import WIDTH_DEPENDENT
from specgrow.shape import EXPERT_ROLES, GATED, GLOBAL_ROLES, LAYER_ROLES, QK_NORM_GAINS
from specgrow.ir import Grouped
from specgrow.verify.experts import TIES

n = sp.Symbol("n", positive=True, integer=True)
EPS = sp.Symbol("epsilon", positive=True)
ATTN_SCALE = sp.Symbol("s_attn", positive=True)  # Gemma's query_pre_attn_scalar
ROTARY = sp.Symbol("rho", positive=True, integer=True)  # partial rotary: the columns of a head that turn
h, k, v = sym("h"), sym("k"), sym("v")

# Per-head sizes of the per-head spaces (one generic head / kv group).
HEAD_SIZE = {"q": k, "k": k, "v": v, "o": v}


class Weights:
    """The symbolic weights of one layer (or the global tensors) for one step."""

    def __init__(self, shape, edits, layer, per_head=False, zeros=frozenset(), moe=None, consts=frozenset()):
        self.shape, self.edits, self.layer, self.per_head = shape, edits, layer, per_head
        self.moe = moe  # a MoE layer after the step: its `MoELayer`
        self.zeros = zeros  # (role, layer) of the old tensors known to be exactly zero
        self.consts = consts  # (role, layer) of the old tensors that may hold one value throughout
        self.placements = {}
        self.segments = {}
        self.symbolic = {}  # role -> its `Symbolic`, built once for all the obligations of a layer

    def has(self, role) -> bool:
        return role in self.edits or self.shape.has_role(role)

    def get(self, role):
        """(new, old) symbolic tensors, transposed to [in, out] (vectors as rows)."""
        if role in self.edits:
            s = self.symbolic.get(role)
            if s is None:
                s = self.symbolic[role] = symbolize(self.edits[role], role, self.zeros)
            self.placements[role], self.segments[role] = s.placements, s.segments
            if s.new.shape != s.old.shape and self.edits[role].source is None:
                raise Stuck(f"{role}: unexpected shapes")
            return s.new, s.old
        spaces = (GLOBAL_ROLES if self.layer is None else LAYER_ROLES)[role]
        if role in EXPERT_ROLES:
            spaces = spaces[1:]  # one generic expert
        sizes = [HEAD_SIZE[s] if self.per_head and s in HEAD_SIZE else SPACE_SIZE[s] for s in spaces]
        dims = sizes[::-1] if len(sizes) == 2 else [1, sizes[0]]
        m = ZeroMatrix(*dims) if (role, self.layer) in self.zeros else MatrixSymbol(role, *dims)
        return m, m


def is_per_head(edits) -> bool:
    return any(isinstance(b.where[a], Grouped) for e in edits.values() for b in e.blocks
               for a in range(len(b.where)))


def _add_bias(w, role, pair):
    """``pair`` plus the broadcast bias of ``role`` when the model has biases."""
    if not w.shape.has_role(role):
        return pair
    new, old = w.get(role)
    ones = OneMatrix(pair[0].shape[0], 1)
    return add(pair[0], mul(ones, new)), add(pair[1], mul(ones, old))


class NaNNorm(Exception):
    """A norm of the grown model reads an all-zero input with eps 0: 0/0, NaN in every output
    it reaches (NaN * 0 is NaN, so a zero factor after it, which the algebra would cancel,
    does not save it)."""


UNDERFLOW = 1e-19  # a factor whose square is below float32's (and bfloat16's) smallest normal number, 1.2e-38


def _finite(x, eps, what, consts=frozenset(), width=None):
    """``x``, after checking that the grown model's norm ``what`` with ``eps`` is not 0/0: an all-zero input
    is NaN (`NaNNorm`); an input carrying a factor below `UNDERFLOW` squares to zero in float32 and
    bfloat16, so the bytes written would hold 0/0 where the reals do not (`Stuck`: UNKNOWN); so is an
    input that reads a mean-free LayerNorm output through weights constant along it (`_mean_free`:
    0 in the reals, rounding noise in floating point, which the norm blows up), ``like_old`` draws
    of the tensors in ``consts`` (which may hold one value, so their std may be 0) taken at std 0.

    A per-head norm (``width``: one head's columns) divides each head by its own mean square, so each
    run of column blocks that makes whole heads (a new head among old ones, say) is checked on its own too.
    """
    if eps != 0:
        return x
    collapsed = collapse(x, Trace(), extra=LEMMAS)
    _check_finite(collapsed, what, consts)
    if width is not None and isinstance(collapsed, BlockMatrix) and collapsed.blockshape[0] == 1:
        run, span = [], sp.Integer(0)
        for j in range(collapsed.blockshape[1]):
            block = collapsed.blocks[0, j]
            run.append(block)
            span += block.shape[1]
            if sp.simplify(span / width).is_integer:
                if len(run) < collapsed.blockshape[1]:  # the whole matrix is checked above
                    part = run[0] if len(run) == 1 else collapse(BlockMatrix([run]), Trace(), extra=LEMMAS)
                    _check_finite(part, f"{what} (a run of heads)", consts)
                run, span = [], sp.Integer(0)
    return x


def _check_finite(collapsed, what, consts):
    """`_finite`'s checks on one collapsed input."""
    if all_zero(collapsed):
        raise NaNNorm(f"{what} of an all-zero input with eps 0 is 0/0 (NaN), and NaN * 0 is NaN")
    flat = {sp.Symbol(f"std[{role}@{layer}]", nonnegative=True): 0 for role, layer in consts}
    if _mean_free(collapse(collapsed.xreplace(flat), Trace(), extra=LEMMAS) if flat else collapsed):
        raise Stuck(f"{what} with eps 0 reads a LayerNorm output (mean 0 in every row: uniform gain, no bias) "
                    "through weights that are constant along it (constants, or like_old of a tensor an earlier "
                    "step left constant): 0 in the real numbers, rounding noise in floating point, which the norm "
                    "turns into 0/0 or noise of unit size")
    factor = _split_scalar(collapsed)[0]
    if factor.is_number and factor != 0 and abs(float(factor)) < UNDERFLOW:
        raise Stuck(f"{what} with eps 0 reads an input scaled by {float(factor):.3g}: its mean square underflows "
                    "to 0 in float32 and bfloat16, so the weights written would give 0/0 (NaN) where the real "
                    "numbers do not")


def gains(w, role):
    """(new, old) effective gains of a norm: the stored gains, plus 1 where ``norm_offset`` is 1 (Gemma's 1 + w)."""
    g_new, g_old = w.get(role)
    if w.shape.norm_offset:
        offset = sp.nsimplify(w.shape.norm_offset)
        g_new = add(mul(offset, OneMatrix(*g_new.shape)), g_new)
        g_old = add(mul(offset, OneMatrix(*g_old.shape)), g_old)
    return g_new, g_old


def norm(w, prefix, x_new, x_old, eps_new):
    g_new, g_old = gains(w, f"{prefix}.weight")
    x_new = _finite(x_new, eps_new, prefix, w.consts)
    if w.shape.norm == "layernorm":
        b_new, b_old = w.get(f"{prefix}.bias")
        return LayerNorm(x_new, g_new, b_new, eps_new), LayerNorm(x_old, g_old, b_old, EPS)
    return RMSNorm(x_new, g_new, eps_new), RMSNorm(x_old, g_old, EPS)


def pre_norm(w, prefix, x_new, x_old, eps_new):
    """The norm before a sublayer when the model has one (``norm_position`` pre, sandwich), else x."""
    return norm(w, prefix, x_new, x_old, eps_new) if w.has(f"{prefix}.weight") else (x_new, x_old)


def post_norm(w, prefix, pair, eps_new):
    """The norm on a sublayer's output when the model has one (``norm_position`` post, sandwich)."""
    return norm(w, prefix, pair[0], pair[1], eps_new) if w.has(f"{prefix}.weight") else pair


def _uniform(m) -> bool:
    """A matrix with one value throughout: c * OneMatrix (c a scalar expression)."""
    if isinstance(m, OneMatrix):
        return True
    if isinstance(m, MatMul):
        coeff, mats = m.as_coeff_matrices()
        return len(mats) == 1 and isinstance(mats[0], OneMatrix)
    return isinstance(m, ZeroMatrix)


def _mean_free(e) -> bool:
    """``e`` is a sum of c * LayerNorm(x, g, 0) * M with g and M uniform: each row of the normed x sums to 0,
    so every entry of ``e`` is 0 in the real numbers."""
    if isinstance(e, MatAdd):
        return all(_mean_free(t) for t in e.args)
    if not isinstance(e, MatMul):
        return False
    _, mats = e.as_coeff_matrices()
    if len(mats) != 2 or not isinstance(mats[0], LayerNorm) or not _uniform(mats[1]):
        return False
    _, gain, bias, _ = mats[0].args
    return _uniform(gain) and all_zero(bias)


def qk_norm_whole(w, q, k_, key_new, eps_new):
    """The QK-norm of all heads' queries and keys (n, heads*key): per head (`HeadNorm`) or over
    all heads at once (`RMSNorm`), with the model's one eps; unchanged without a QK-norm."""
    if w.shape.qk_norm == "none":
        return q, k_
    (gq_new, gq_old), (gk_new, gk_old) = (gains(w, role) for role in QK_NORM_GAINS[w.shape.qk_norm])
    width = key_new if w.shape.qk_norm == "head" else None
    _finite(q[0], eps_new, "the query norm", w.consts, width)
    _finite(k_[0], eps_new, "the key norm", w.consts, width)
    if w.shape.qk_norm == "head":
        return ((HeadNorm(q[0], gq_new, eps_new, key_new), HeadNorm(q[1], gq_old, EPS, k)),
                (HeadNorm(k_[0], gk_new, eps_new, key_new), HeadNorm(k_[1], gk_old, EPS, k)))
    return ((RMSNorm(q[0], gq_new, eps_new), RMSNorm(q[1], gq_old, EPS)),
            (RMSNorm(k_[0], gk_new, eps_new), RMSNorm(k_[1], gk_old, EPS)))


def qk_norm_head(w, q, k_, x_new, x_old, eps_new):
    """The QK-norm of one generic head's query and key (n, key). An all-heads norm couples the
    heads: it is only written, as the same opaque normed query and key on both sides, when
    nothing it reads changes (else `Stuck`)."""
    if w.shape.qk_norm == "none":
        return q, k_
    if w.shape.qk_norm == "head":
        (gq_new, gq_old), (gk_new, gk_old) = (gains(w, role) for role in QK_NORM_GAINS["head"])
        _finite(q[0], eps_new, "the query norm", w.consts)
        _finite(k_[0], eps_new, "the key norm", w.consts)
        return ((RMSNorm(q[0], gq_new, eps_new), RMSNorm(q[1], gq_old, EPS)),
                (RMSNorm(k_[0], gk_new, eps_new), RMSNorm(k_[1], gk_old, EPS)))
    reads = ("attn_norm.", "attn.q.", "attn.k.", *QK_NORM_GAINS["all"])
    if x_new != x_old or any(role.startswith(reads) for role in w.edits):
        raise Stuck("the all-heads QK-norm couples the heads: a per-head step that changes what it reads "
                    "is not proved head by head")
    qn, kn = MatrixSymbol("q_normed", *q[1].shape), MatrixSymbol("k_normed", *k_[1].shape)
    return (qn, qn), (kn, kn)


def _project(w, role, x_new, x_old):
    w_new, w_old = w.get(f"{role}.weight")
    return _add_bias(w, f"{role}.bias", (mul(x_new, w_new), mul(x_old, w_old)))


def mlp(w, x_new, x_old, eps_new, side=None):
    if w.moe is not None:
        return post_norm(w, "mlp_post_norm", mixture(w, x_new, x_old, eps_new, [] if side is None else side), eps_new)
    return post_norm(w, "mlp_post_norm", _mlp(w, x_new, x_old, eps_new), eps_new)


class MoELayer:
    """What the prover knows of a layer that has experts after the step: the layer's shape before
    (None for a new layer) and after, the model's renormalisation before and after, and one `Weights`
    per band of new experts (`specgrow.verify.experts.generic`), and whether the old router's logits may
    tie for every token (`specgrow.verify.experts.ties_after`)."""

    def __init__(self, before, after, renormalize_before, renormalize_after, generic, bands, tied=False):
        self.before, self.after, self.generic, self.bands = before, after, generic, bands
        self.tied = tied  # an earlier step may have left distinct old experts' logits tied for every token
        self.renormalize_before, self.renormalize_after = renormalize_before, renormalize_after


def expert(w, xn_new, xn_old):
    """One generic expert's output, (new, old): down(act(gate x) * up x) (old: the dense MLP when upcycled)."""
    up_new, up_old = w.get("mlp.experts.up.weight")
    up_new, up_old = mul(xn_new, up_new), mul(xn_old, up_old)
    if w.shape.activation in GATED:
        f = elementwise_fn(GATED[w.shape.activation])
        gate_new, gate_old = w.get("mlp.experts.gate.weight")
        hid_new = HadamardProduct(apply_fn(f, mul(xn_new, gate_new)), up_new)
        hid_old = HadamardProduct(apply_fn(f, mul(xn_old, gate_old)), up_old)
    else:
        f = elementwise_fn(w.shape.activation)
        hid_new, hid_old = apply_fn(f, up_new), apply_fn(f, up_old)
    down_new, down_old = w.get("mlp.experts.down.weight")
    return mul(hid_new, down_new), mul(hid_old, down_old)


def router_logits(w, xn_new, xn_old):
    """One generic expert's router logits (n, 1), (new, old), for each band: (new per band, old)."""
    out = []
    for band in w.moe.bands:
        r_new, r_old = band.get("mlp.router.weight")
        out.append(mul(xn_new, r_new.T))
    _, r_old = w.moe.bands[0].get("mlp.router.weight")
    return out, mul(xn_old, r_old.T)


def router(w, x_new, x_old, eps_new):
    """The router obligation of a grown MoE layer: every new expert's logits are its old expert's,
    ([l'_0, ..., l'_m-1], [l, ..., l])."""
    xn_new, xn_old = pre_norm(w, "mlp_norm", x_new, x_old, eps_new)
    new, old = router_logits(w, xn_new, xn_old)
    return BlockMatrix([new]), BlockMatrix([[old] * len(new)])


def mixture(w, x_new, x_old, eps_new, side, same_logits=True):
    """The MoE sublayer on one generic expert, (new, old), after the routing lemma its edits allow.

    A grown MoE layer (``route_copies``): the m new experts of a generic old expert e, weighing
    w_e/m each, are the mixture of their mean output under the old logits (``same_logits``: the
    router obligation proved them equal). An upcycled layer (``route_identical``): identical
    experts give their output times 1 (renormalised) or k/E (zero router). Otherwise the new
    mixture stays opaque, with its own logits, and differs from the old one.
    """
    moe = w.moe
    xn_new, xn_old = pre_norm(w, "mlp_norm", x_new, x_old, eps_new)
    logits_new, logits_old = router_logits(w, xn_new, xn_old)
    outs = [expert(band, xn_new, xn_old) for band in moe.bands]
    m = len(outs)
    mean = add(*[mul(sp.Rational(1, m), o[0]) for o in outs]) if m > 1 else outs[0][0]
    old = outs[0][1]
    after, renorm = moe.after, int(moe.renormalize_after)
    opaque = Mixture(logits_new[0], mean if m == 1 else outs[0][0], after.top_k, renorm, after.experts)
    if moe.before is None and not moe.generic.upcycled:  # a new layer: zero only if its experts' outputs are
        return opaque, old
    if moe.generic.upcycled:  # an upcycled layer: its experts are one function
        identical = m == 1 and moe.generic.added == 0
        side.append(("route_identical", "lemma"))
        side.append(("route_identical: experts that differ from the others (count)", 0 if identical else 1))
        if not identical:
            return opaque, old
        if renorm or after.top_k == after.experts:
            side.append(("route_identical: identical experts, top-k weights that sum to 1 (renormalised, or every "
                         "expert selected) whichever tied experts are selected", 0))
            return mean, old
        zero = all_zero(collapse(logits_new[0], Trace(), extra=LEMMAS))
        side.append(("route_identical without renormalisation: the top-k weights sum to k/E only when the router "
                     "is zero (every probability 1/E); router rows not all zero", 0 if zero else 1))
        return (mul(sp.Rational(after.top_k, after.experts), mean) if zero else opaque), old
    before = moe.before
    target = Mixture(logits_old, old, before.top_k, int(moe.renormalize_before), before.experts)
    lemma = "route_copies" if m > 1 else "route_same"
    side.append((lemma, "lemma"))
    side.append((f"{lemma}: new experts that copy no old expert (count; a router without a bias gives them "
                 "finite logits, so at a fixed top-k they displace old experts: duplicate or split every expert "
                 "with top_k x m instead)", moe.generic.added))
    side.append((f"{lemma}: top-k k' - m*k (m = {m} new experts per old one)", after.top_k - m * before.top_k))
    side.append((f"{lemma}: renormalisation unchanged (0 if so)", int(renorm != int(moe.renormalize_before))))
    if m > 1:
        tied = (moe.tied or all_zero(collapse(logits_old, Trace(), extra=LEMMAS))) and before.top_k < before.experts
        side.append(("route_copies: an earlier step of the spec left old router logits that tie for every token "
                     "(a zero or constant router row shared by distinct experts, tiny random rows, or a zero norm), "
                     "so the top-k need not take whole experts' copies (0 if not; grow the trained checkpoint with "
                     "a new spec)",
                     int(tied)))
        side.append((f"route_copies: {TIES}", None))
    if not same_logits or any(value != 0 for _, value in side if value is not None and not isinstance(value, str)):
        return opaque, target  # the lemma does not apply
    return Mixture(logits_old, mean, before.top_k, int(moe.renormalize_before), before.experts), target


def _mlp(w, x_new, x_old, eps_new):
    xn_new, xn_old = pre_norm(w, "mlp_norm", x_new, x_old, eps_new)
    up_new, up_old = _project(w, "mlp.up", xn_new, xn_old)
    if w.shape.activation in GATED:
        silu = elementwise_fn(GATED[w.shape.activation])
        gate_new, gate_old = _project(w, "mlp.gate", xn_new, xn_old)
        hid_new = HadamardProduct(apply_fn(silu, gate_new), up_new)
        hid_old = HadamardProduct(apply_fn(silu, gate_old), up_old)
    else:
        f = elementwise_fn(w.shape.activation)
        hid_new, hid_old = apply_fn(f, up_new), apply_fn(f, up_old)
    return _project(w, "mlp.down", hid_new, hid_old)


def attention(w, x_new, x_old, eps_new, key_new, value_new):
    """Whole-head view: the concatenated heads times the output projection."""
    xn_new, xn_old = pre_norm(w, "attn_norm", x_new, x_old, eps_new)
    q, k_, v_ = (_project(w, f"attn.{r}", xn_new, xn_old) for r in ("q", "k", "v"))
    q, k_ = qk_norm_whole(w, q, k_, key_new, eps_new)
    rope = (ROTARY if w.shape.rotary_dims is not None else 1) if w.shape.position == "rope" else 0
    cap = sp.nsimplify(w.shape.attn_softcap or 0)
    heads_new = Heads(q[0], k_[0], v_[0], key_new, value_new, scale(w, key_new), rope, cap)
    heads_old = Heads(q[1], k_[1], v_[1], k, v, scale(w, k), rope, cap)
    o_new, o_old = w.get("attn.o.weight")
    out = _add_bias(w, "attn.o.bias", (mul(heads_new, o_new), mul(heads_old, o_old)))
    return post_norm(w, "attn_post_norm", out, eps_new)


def attention_head(w, x_new, x_old, eps_new, key_new, value_new, side, same_scores=True):
    """One generic head (and its kv group): softmax(R(q) R(k)^T / sqrt(key)) v o_head, with the
    head's QK-norm. A post-sublayer norm is not written: a per-head step keeps the stream, so
    heads whose contributions are preserved give the norm the same input.

    Returns ((contribution_new, contribution_old), (scores_new, scores_old)). With
    ``same_scores`` (once proved) the grown head's softmax is written with the old scores.
    """
    xn_new, xn_old = pre_norm(w, "attn_norm", x_new, x_old, eps_new)
    q = _project(w, "attn.q", xn_new, xn_old)
    k_ = _project(w, "attn.k", xn_new, xn_old)
    q, k_ = qk_norm_head(w, q, k_, x_new, x_old, eps_new)
    if w.segments.get("attn.q.weight", (None,))[0] != w.segments.get("attn.k.weight", (None,))[0]:
        raise Stuck("query and key heads are cut differently (no shared permutation)")
    if w.shape.position == "rope":
        q = (rotate(w, q[0], key_new, side), Rope(q[1], k, "old", turned(w)))
        k_ = (rotate(w, k_[0], key_new, side), Rope(k_[1], k, "old", turned(w)))
    scores_new = mul(scale(w, key_new), q[0], k_[0].T)
    scores_old = mul(scale(w, k), q[1], k_[1].T)
    v_ = _project(w, "attn.v", xn_new, xn_old)
    o_new, o_old = w.get("attn.o.weight")
    if "attn.v.weight" in w.segments and "attn.o.weight" in w.segments and \
            w.segments["attn.v.weight"][0] != w.segments["attn.o.weight"][1]:
        raise Stuck("value and output heads are cut differently (no shared permutation)")
    weights_new = Softmax(capped(w, scores_old if same_scores else scores_new))
    contribution = (mul(weights_new, v_[0], o_new), mul(Softmax(capped(w, scores_old)), v_[1], o_old))
    return contribution, (scores_new, scores_old)


def scale(w, key):
    """The scores' scale: 1/sqrt(key), or attn_scale^-1/2 whatever the key width (Gemma)."""
    return 1 / sp.sqrt(key) if w.shape.attn_scale is None else 1 / sp.sqrt(ATTN_SCALE)


def capped(w, scores):
    """The scores as the softmax reads them: soft-capped when the model caps them."""
    return scores if w.shape.attn_softcap is None else apply_fn(softcap_fn(w.shape.attn_softcap), scores)


def turned(w):
    """The rotary columns of a head: ``ROTARY`` under partial rotary, 0 (all of them) otherwise."""
    return ROTARY if w.shape.rotary_dims is not None else 0


def rotate(w, x, width, side):
    """RoPE of a grown head in segment order, by the `rope_placement` lemma when it applies."""
    if "attn.q.weight" not in w.edits and "attn.k.weight" not in w.edits and width == k:
        return Rope(x, k, "old", turned(w))  # the head's width and its query/key weights are unchanged
    if w.shape.rotary_dims is not None:
        return _rotate_partial(w, x, width, side)
    scaling = dict(w.shape.rope_scaling).get("type")
    if scaling in WIDTH_DEPENDENT and width != k:
        side.append((f"rope scaling {scaling}: its frequencies depend on the head width itself: k' - k", width - k))
        return Rope(x, width, "new")
    placements = w.placements.get("attn.q.weight", ())
    where = lambda ps: [(p.old_start, p.old_stop, p.new_start, p.new_step) for p in ps]  # noqa: E731
    if where(placements) != where(w.placements.get("attn.k.weight", placements)):
        raise Stuck("query and key place the old rotary dims differently")
    x = collapse(x, Trace(), extra=LEMMAS)  # the projection's blocks, in segment order
    if not placements or not isinstance(x, BlockMatrix):
        return Rope(x, width, "new")
    i = sp.Symbol("i", nonnegative=True, integer=True)
    low = [p for p in placements if p.old_start == 0]
    high = [p for p in placements if sp.simplify(p.old_start - k / 2) == 0]
    if len(low) != 1 or len(high) != 1:
        return Rope(x, width, "new")
    lo, hi = low[0], high[0]
    pos_lo = lo.new_start + lo.new_step * i
    pos_hi = hi.new_start + hi.new_step * i
    pairing = sp.simplify(pos_hi - pos_lo - width / 2)
    frequency = sp.simplify(pos_lo / width - i / k)
    side.append(("rotary pairing: pos(i + k/2) - pos(i) - k'/2", pairing))
    side.append(("rotary frequency: pos(i)/k' - i/k", frequency))
    if pairing != 0 or frequency != 0:
        return Rope(x, width, "new")
    old_cols = [j for j, s in enumerate(w.segments["attn.q.weight"][0])
                if s.start in (lo.new_start, hi.new_start) and s.step == lo.new_step]
    blocks = list(x.blocks)
    old = BlockMatrix([[blocks[j] for j in old_cols]])
    rest = [Rope(b, width, f"new{j}") for j, b in enumerate(blocks) if j not in old_cols]
    return BlockMatrix([[Rope(old, k, "old"), *rest]])


def _rotate_partial(w, x, width, side):
    """Partial rotary (the first r columns turn, at frequencies of width r): by `partial_rope`, a
    head whose old columns stay first, in order, keeps them turned as before, and the columns
    appended after them are not turned. Another placement is a new rotation."""
    placements = w.placements.get("attn.q.weight", ())
    where = lambda ps: [(p.old_start, p.old_stop, p.new_start, p.new_step) for p in ps]  # noqa: E731
    if where(placements) != where(w.placements.get("attn.k.weight", placements)):
        raise Stuck("query and key place the old rotary dims differently")
    x = collapse(x, Trace(), extra=LEMMAS)
    first = [p for p in placements if p.old_start == 0]
    kept = len(placements) == 1 and len(first) == 1 and first[0].new_start == 0 and first[0].new_step == 1 \
        and sp.simplify(first[0].old_stop - k) == 0
    side.append(("partial rotary: the old head's columns stay first and in order (0 if so)", 0 if kept else 1))
    if not kept or not isinstance(x, BlockMatrix):
        return Rope(x, width, "new", ROTARY)
    blocks = list(x.blocks)
    return BlockMatrix([[Rope(blocks[0], k, "old", ROTARY), *blocks[1:]]])


def embedding(w, lift, hidden_new=h):
    """Token (and position) embeddings; times sqrt(hidden) with ``embed_scale`` (the grown model's
    hidden ``hidden_new`` on the new side)."""
    e_new, e_old = w.get("embed.weight")
    tokens = MatrixSymbol("onehot", n, sym("V"))
    new, old = mul(tokens, e_new.T), mul(tokens, e_old.T)
    if w.shape.embed_scale:
        new, old = mul(sp.sqrt(hidden_new), new), mul(sp.sqrt(h), old)
    if w.has("pos.weight"):
        p_new, p_old = w.get("pos.weight")
        positions = MatrixSymbol("positions", n, sym("T"))
        new, old = add(new, mul(positions, p_new.T)), add(old, mul(positions, p_old.T))
    return new, lift(old)


def head(w, x_new, x_old, eps_new):
    if w.shape.final_norm:
        x_new, x_old = norm(w, "final_norm", x_new, x_old, eps_new)
    role = "embed.weight" if w.shape.tie_embeddings else "unembed.weight"
    u_new, u_old = w.get(role)
    new, old = mul(x_new, u_new), mul(x_old, u_old)
    if w.shape.logit_softcap is not None:
        cap = softcap_fn(w.shape.logit_softcap)
        new, old = apply_fn(cap, new), apply_fn(cap, old)
    return new, old


def lifted(kind, x, extra):
    """The residual representation: ``[x, 0]`` (zero-pad), ``[x, ..., x]`` (copies), or x."""
    if kind == "pad":
        return BlockMatrix([[x, ZeroMatrix(x.shape[0], extra)]])
    if kind == "copies":
        return BlockMatrix([[x] * extra])
    return x
