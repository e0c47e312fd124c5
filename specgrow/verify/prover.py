"""Prove that a spec's plan preserves the function, step by step, sublayer by sublayer.

Compose, never unroll: for each step the residual stream gets a representation
(``x``, ``[x, 0]`` or ``[x, ..., x]``); the embedding must produce it, every sublayer must
map it to the same representation of its old output, and the head must read it back to
the old logits. Layers whose edits have the same structure share one proof. Steps chain
because each preserves the whole network's function. A growth plan's stages are its steps
in order (`Spec.steps` is flattened); the certificate also records each stage's verdict.
The model trains between stages, so no proof of a stage assumes that a tensor an earlier
stage left zero is still zero.

`prove_spec` imports torch only when a residual is nonzero, to confirm it with a concrete
counterexample; a residual that no counterexample confirms is UNKNOWN, never REFUTED.
"""

from __future__ import annotations

import dataclasses
import time

import sympy as sp
from sympy import BlockMatrix, MatAdd, MatMul, MatrixSymbol, ZeroMatrix

from specgrow.collector import paused
from specgrow.ir import Const, Old, Random
from specgrow.shape import EXPERT_ROLES
from specgrow.transforms import compile_spec
from specgrow.verify import sublayers as S
from specgrow.verify.algebra import Trace, collapse, sub
from specgrow.verify.build import Stuck, carried
from specgrow.verify.experts import ROUTER, is_zero, ties_after
from specgrow.verify.ops import LEMMAS, HeadNorm, LayerNorm, RMSNorm
from specgrow.verify.result import (
    Certificate, Obligation, SideCondition, StageProof, StepProof, Verdict, combine,
)

_CACHE: dict = {}


def prove_spec(spec) -> Certificate:
    """The certificate of a canonical `Spec` (see `specgrow.verify.result`).

    The garbage collector is paused meanwhile (`specgrow.collector`): the plan and the
    expression trees live to the end and leave no cycles, so its scans would be wasted.
    """
    with paused():
        return _prove_spec(spec)


def _prove_spec(spec) -> Certificate:
    started = time.perf_counter()
    plan = compile_spec(spec)
    steps, invariants, zeros_before, ties_before = [], [], [], []
    zeros: frozenset = frozenset()  # tensors earlier steps left exactly zero
    tied: frozenset = frozenset()  # routers earlier steps, in any stage, left tied (`experts.ties_after`)
    consts: frozenset = frozenset()  # tensors earlier steps, in any stage, may have left constant
    starts = {stage.start for stage in spec.stages}
    for step_plan, step in zip(plan.steps, spec.steps):
        if step_plan.index in starts:
            zeros = frozenset()  # training between stages: nothing a stage left zero stays zero
        zeros_before.append(zeros)
        ties_before.append(tied)
        obligations, invariant = prove_step(step_plan, step, spec.model.norm_eps, zeros, tied, consts)
        tied, consts = ties_after(step_plan, tied, zeros), consts_after(step_plan, consts, zeros)
        zeros = zeros_after(step_plan, zeros)
        consts |= zeros
        mark = spec.step_marks[step_plan.index]
        from specgrow.planview import describe_step

        stage = spec.stage_of(step_plan.index)
        staged = {} if stage is None else {"stage": stage, "at_step": spec.stages[stage].at_step,
                                           "path": spec.step_path(step_plan.index)}
        steps.append(StepProof(step_plan.index, step.kind, describe_step(step), mark.line, mark.column,
                               combine(o.verdict for o in obligations), tuple(obligations), **staged))
        invariants.append(invariant)
    steps = [_witnessed(spec, plan, s, zeros_before[s.index], ties_before[s.index]) for s in steps]
    stages = stage_proofs(spec, steps, plan, ties_before)
    verdict = combine(s.verdict for s in steps)
    witnesses = [s.counterexample for s in (*steps, *stages) if s.counterexample is not None]
    return Certificate(spec.path, spec.sha256, verdict, tuple(steps), tuple(invariants),
                       witnesses[0] if witnesses else None, _versions(), time.perf_counter() - started, stages)


def _witnessed(spec, plan, step: StepProof, zeros, tied=frozenset()) -> StepProof:
    """A step with a nonzero residual keeps REFUTED only with a float64 witness of its own:
    the step alone, from a random model of the shape it starts from (with the tensors that
    earlier steps of its stage left exactly zero set to zero, and one row for each router whose
    logits earlier steps tied). Otherwise it is UNKNOWN."""
    if step.verdict is not Verdict.REFUTED:
        return step
    from specgrow.verify.counterexample import step_witness

    witness = step_witness(spec, plan, step.index, zeros, tied)
    if witness is None:
        return _unconfirmed(step)
    return dataclasses.replace(step, counterexample=witness)


def stage_proofs(spec, steps, plan, ties_before) -> tuple[StageProof, ...]:
    """Each stage of a growth plan with the combined verdict of its steps (none for plain specs).

    A stage is REFUTED only with a witness of its own (its steps alone, from a random model of
    the shape it starts from, each router that earlier stages tied given one row; ``ties_before``:
    per step, `experts.ties_after` before it); a stage with a refuted step but no such witness is
    UNKNOWN.
    """
    out = []
    for number, stage in enumerate(spec.stages):
        verdict, witness = combine(s.verdict for s in steps[stage.start:stage.stop]), None
        if verdict is Verdict.REFUTED:
            from specgrow.verify.counterexample import stage_witness

            witness = stage_witness(spec, plan, number, ties_before[stage.start])
            verdict = Verdict.REFUTED if witness is not None else Verdict.UNKNOWN
        out.append(StageProof(number, stage.at_step, stage.start, stage.stop, stage.mark.line,
                              stage.mark.column, verdict, witness))
    return tuple(out)


def _unconfirmed(step: StepProof) -> StepProof:
    obligations = tuple(
        dataclasses.replace(o, verdict=Verdict.UNKNOWN,
                            stuck="nonzero residual not confirmed by a float64 witness of this step alone: "
                                  f"{o.residual}")
        if o.verdict is Verdict.REFUTED else o
        for o in step.obligations
    )
    return dataclasses.replace(step, obligations=obligations, verdict=combine(o.verdict for o in obligations))


def _versions() -> dict:
    from specgrow import __version__

    return {"specgrow": __version__, "sympy": sp.__version__}


# ------------------------------------------------------------------ one step
def zeros_after(step_plan, zeros: frozenset) -> frozenset:
    """The tensors that are exactly zero after a step, whatever the input checkpoint held.

    A tensor is zero when the proofs' own reading of its edit (`build.is_zero`) is the zero
    matrix in every cell: one meaning of each block for both. Tensors a step does not touch
    keep their status.
    """
    return carried(step_plan, zeros, lambda edit: is_zero(edit, zeros))


def consts_after(step_plan, consts: frozenset, zeros: frozenset) -> frozenset:
    """The tensors that may hold one value throughout after a step: every block of their edit is a constant
    (`Const`, a draw of scale 0, ``like_old`` of scale 0 or of such a tensor, a copy of such a tensor
    without noise); the caller adds the zeros. Kept through the stages (training need not change them all), and
    used only to refuse a proof (`sublayers._finite`: a like_old draw of one may have std 0), never to
    read a tensor, so over-counting costs an UNKNOWN at most."""
    known = consts | zeros

    def constant(edit, block):
        src = block.source
        if isinstance(src, Random):
            return float(src.param) == 0 or (src.dist == "like_old" and src.like in known)
        if isinstance(src, Old):
            return src.noise is None and edit.source in known
        return isinstance(src, Const)

    return carried(step_plan, consts, lambda edit: all(constant(edit, b) for b in edit.blocks))


def prove_step(step_plan, step, eps_value, zeros=frozenset(), tied=frozenset(), consts=frozenset()):
    before, after = step_plan.before, step_plan.after
    by_layer: dict = {}
    for edit in step_plan.edits:
        by_layer.setdefault(edit.layer, {})[edit.role] = edit
    kind, extra = "same", None
    if step.kind == "hidden":
        kind = "copies" if step.method == "duplicate" else "pad"
        extra = after.hidden // before.hidden if kind == "copies" else sp.Symbol("dh", positive=True, integer=True)
    lift = lambda m: S.lifted(kind, m, extra)  # noqa: E731
    hidden_new = {"pad": S.h + extra, "copies": S.h * extra}.get(kind, S.h) if kind != "same" else S.h
    x = MatrixSymbol("x", S.n, S.h)
    eps_new = S.EPS * step_plan.eps_scale if eps_value else 0
    eps_old = S.EPS if eps_value else 0
    invariant = {"pad": "residual stream [x, 0]", "copies": f"residual stream [x]*{extra}",
                 "same": "residual stream x"}[kind]
    out = []
    flags = _flags(before)
    globals_ = by_layer.get(None, {})
    w = S.Weights(before, globals_, None, zeros=zeros, consts=consts)
    if globals_ or kind != "same":  # otherwise embedding and head are untouched: nothing to prove
        out.append(_obligation(step_plan.index, "embedding", (), "embed'(t) = lift(embed(t))",
                               lambda: S.embedding(w, lift, hidden_new), _key("embedding", flags, globals_, kind, _zero_roles(zeros, None))))
        out.append(_obligation(step_plan.index, "final norm + unembedding", (), "head'(lift(x)) = head(x)",
                               lambda: _eps(S.head(w, lift(x), x, eps_new), eps_old),
                               _key("head", flags, globals_, kind, eps_value, eps_new, _zero_roles(zeros, None))))
    groups: dict = {}
    for layer in range(len(after.layers)):
        edits = by_layer.get(layer, {})
        if edits and all(e.source is None for e in edits.values()):
            like = _old_index(edits, layer)
            groups.setdefault(("new", _key("new", flags, edits, _zero_roles(zeros, like), _zero_roles(consts, like))),
                              []).append((layer, edits))
        elif edits and all(e.is_identity() for e in edits.values()):
            continue  # a moved layer: every tensor copied unchanged
        elif edits or kind != "same":
            source = _old_index(edits, layer)
            roles = [_zero_roles(known, source) for known in (zeros, tied, consts)]
            groups.setdefault(("grown", _key("grown", flags, before.layers[source], edits, kind, eps_value, *roles)),
                              []).append((layer, edits))
    for (what, _), members in groups.items():
        layer, edits = members[0]
        layers = tuple(m[0] for m in members)
        shape_layer = _old_index(edits, layer)
        out += _layer_obligations(step_plan, what, layers, edits, shape_layer, lift, x, eps_new, eps_old,
                                  zeros, tied, consts)
    return out, invariant


def _old_index(edits, layer):
    for e in edits.values():
        if e.source is not None:
            return e.source[1]
        if e.blocks and isinstance(e.blocks[0].source, Random) and e.blocks[0].source.like:
            return e.blocks[0].source.like[1]
    return layer


def _layer_obligations(step_plan, what, layers, edits, old_layer, lift, x, eps_new, eps_old, zeros,
                       tied=frozenset(), consts=frozenset()):
    before, after = step_plan.before, step_plan.after
    index = step_plan.index
    per_head = S.is_per_head(edits)
    shape = before
    w = S.Weights(shape, edits, old_layer, per_head=per_head, zeros=zeros, consts=consts)
    moe = []  # (label, MoELayer, cache key) per class of experts
    if after.layers[layers[0]].experts:
        from specgrow.verify.experts import classes

        try:
            cut = classes(edits)
        except Stuck as err:
            return [Obligation(index, "mixture of experts", layers, Verdict.UNKNOWN,
                               "moe'(lift(x)) = lift(moe(x))", stuck=str(err))]
        for label, part in cut:
            layer_moe, moe_key = _moe_layer(step_plan, what, layers[0], part, old_layer, per_head, zeros, tied,
                                            consts)
            moe.append((label, layer_moe, (moe_key, _key(part), label)))
        w.moe = moe[0][1]
    s_after = after.layers[layers[0]]
    s_before = before.layers[old_layer] if what == "grown" else s_after
    key_new = S.k * sp.Integer(s_after.key) / s_before.key if per_head else S.k
    value_new = S.v * sp.Integer(s_after.value) / s_before.value if per_head else S.v
    key_new = _width(edits, "attn.q.weight", key_new)
    value_new = _width(edits, "attn.v.weight", value_new)
    if what == "new":
        zero = lambda pair: (pair[0], ZeroMatrix(*pair[0].shape))  # noqa: E731
        return [
            _obligation(index, "attention (new layer)", layers, "attn'(x) = 0",
                        lambda: zero(S.attention(w, x, x, eps_new, S.k, S.v)), None),
            _obligation(index, "mlp (new layer)", layers, "mlp'(x) = 0",
                        lambda: zero(S.mlp(w, x, x, eps_new)), None),
        ]
    key = _key("layer", _flags(shape), s_before, edits, per_head, _zero_roles(zeros, old_layer),
               _zero_roles(consts, old_layer))
    results = []
    lifted = lift(x) is not x
    touches = lambda prefix: lifted or any(r.startswith(prefix) for r in edits)  # noqa: E731
    if not touches("attn"):
        pass  # attention unchanged on an unchanged stream
    elif per_head:
        side: list = []

        def scores():
            _, pair = S.attention_head(w, lift(x), x, eps_new, key_new, value_new, side)
            return _eps(pair, eps_old)

        score = None
        if touches(("attn_norm", "attn.q", "attn.k")):  # else the scores are the same expression
            score = _obligation(index, "attention scores (one generic head)", layers,
                                "R(q')R(k')^T/sqrt(k') = R(q)R(k)^T/sqrt(k)", scores, None, side)
            if score.verdict is not Verdict.PROVED:
                # the scores changed: the head is still preserved if its output does not depend on them
                output = _obligation(
                    index, "attention output (one generic head, scores changed)", layers,
                    "softmax(s') v' o'_head = softmax(s) v o_head",
                    lambda: _eps(S.attention_head(w, lift(x), x, eps_new, key_new, value_new, [], False)[0],
                                 eps_old), None)
                if output.verdict is Verdict.PROVED:
                    score = output
            results.append(score)
        if (score is None or score.verdict is Verdict.PROVED and "changed" not in score.sublayer) \
                and touches(("attn.v", "attn.o")):
            results.append(_obligation(
                index, "attention output (one generic head)", layers, "softmax(s) v' o'_head = softmax(s) v o_head",
                lambda: _eps(S.attention_head(w, lift(x), x, eps_new, key_new, value_new, [])[0], eps_old),
                None))
    else:
        results.append(_obligation(index, "attention", layers, "attn'(lift(x)) = lift(attn(x))",
                                   lambda: _lift_old(S.attention(w, lift(x), x, eps_new, key_new, value_new),
                                                     lift, eps_old),
                                   ("attn", key, eps_new, str(lift(x)))))
    if touches("mlp") and moe:
        for label, layer_moe, moe_key in moe:
            part = S.Weights(shape, edits, old_layer, per_head=per_head, zeros=zeros, moe=layer_moe, consts=consts)
            results += _moe_obligations(index, layers, part, lift, x, eps_new, eps_old,
                                        (key, moe_key, eps_new, str(lift(x))), label)
    elif touches("mlp"):
        results.append(_obligation(index, "mlp", layers, "mlp'(lift(x)) = lift(mlp(x))",
                                   lambda: _lift_old(S.mlp(w, lift(x), x, eps_new), lift, eps_old),
                                   ("mlp", key, eps_new, str(lift(x)))))
    return results


def _moe_layer(step_plan, what, layer, edits, old_layer, per_head, zeros, tied=frozenset(), consts=frozenset()):
    """The `sublayers.MoELayer` of a layer with experts after the step, and its part of a cache key.
    ``tied``: the routers whose logits an earlier step may have tied for every token (`experts.ties_after`)."""
    from specgrow.verify.experts import generic

    before, after = step_plan.before, step_plan.after
    s_before = before.layers[old_layer] if what == "grown" and before.layers[old_layer].experts else None
    g = generic(edits, s_before.experts if s_before else 0)
    others = {role: e for role, e in edits.items() if role not in EXPERT_ROLES}
    bands = tuple(S.Weights(before, {**others, **band}, old_layer, per_head=per_head, zeros=zeros, consts=consts)
                  for band in g.bands)
    ties = s_before is not None and (ROUTER, old_layer) in tied
    moe = S.MoELayer(s_before, after.layers[layer], before.renormalize, after.renormalize, g, bands, ties)
    return moe, (s_before, after.layers[layer], before.renormalize, after.renormalize, str(g.added), g.upcycled,
                 ties)


def _moe_obligations(index, layers, w, lift, x, eps_new, eps_old, key, label=""):
    """A MoE layer after the step: for a grown one, the router (each new expert's logits are its old
    expert's) then the mixture under the routing lemma; for an upcycled one, the mixture. ``label`` names
    the class of experts when the step treats some experts apart (`specgrow.verify.experts.classes`)."""
    out = []
    same = True
    which = f" ({label})" if label else ""
    if w.moe.before is not None and not w.moe.generic.upcycled:
        router = _obligation(index, f"router (one generic expert's new experts){which}", layers,
                             "r'_c(lift(x)) = r_e(x) for each new expert c of old expert e",
                             lambda: _eps(S.router(w, lift(x), x, eps_new), eps_old), ("router", key))
        out.append(router)
        same = router.verdict is Verdict.PROVED
    side: list = []
    out.append(_obligation(index, f"mixture of experts (one generic expert){which}", layers,
                           "moe'(lift(x)) = lift(moe(x)) under the routing lemma",
                           lambda: _lift_old(S.mlp(w, lift(x), x, eps_new, side) if same else
                                             S.post_norm(w, "mlp_post_norm",
                                                         S.mixture(w, lift(x), x, eps_new, side, False), eps_new),
                                             lift, eps_old),
                           ("moe", key, same), side))
    return out


def _width(edits, role, default):
    from specgrow.ir import Grouped

    edit = edits.get(role)
    if edit is not None and isinstance(edit.blocks[0].where[0], Grouped):
        return sp.sympify(edit.blocks[0].where[0].width)
    return default


def _lift_old(pair, lift, eps_old):
    new, old = _eps(pair, eps_old)
    return new, lift(old)


def _eps(pair, eps_old):
    """Put the model's eps (0 when the model has none) into the old side."""
    new, old = pair
    if eps_old == 0:
        new, old = new.xreplace({S.EPS: 0}), old.xreplace({S.EPS: 0})
    return new, old


def _zero_roles(zeros, layer) -> frozenset:
    return frozenset(role for role, where in zeros if where == layer)


def _flags(shape):
    """What a proof depends on besides one layer's widths: the model's global semantics."""
    return dataclasses.replace(shape, layers=())


def _key(*parts):
    """A cache key: the structure of the edits (roles, shapes, blocks; not seeds or layers)."""
    out = []
    for p in parts:
        if isinstance(p, dict):
            out.append(tuple(sorted((role, _structure(e)) for role, e in p.items())))
        else:
            out.append(p)
    return tuple(out)


def _structure(edit):
    """An edit without its layer and seeds; which blocks share a noise seed is kept."""
    seeds: dict = {}
    blocks = tuple((b.where, _unseeded(b.source, seeds)) for b in edit.blocks)
    return edit.old_shape, edit.new_shape, blocks, edit.dims


def _unseeded(source, seeds):
    if isinstance(source, Random):
        return ("random", source.dist, source.param)
    if isinstance(source, Old):
        noise = source.noise
        if noise is not None:
            noise = (noise.std, noise.sign, seeds.setdefault(noise.seed, len(seeds)))
        return ("old", source.index, source.scale, noise, source.shift)
    return source


# ------------------------------------------------------------------ one obligation
def _obligation(step, sublayer, layers, statement, build, key, side=None):
    if key is not None and (step, key) in _CACHE:
        return dataclasses.replace(_CACHE[(step, key)], layers=layers)
    started = time.perf_counter()
    trace = Trace()
    side = side if side is not None else []
    try:
        new, target = build()
        residual = collapse(sub(new, target), trace, extra=LEMMAS)
    except S.NaNNorm as err:
        result = Obligation(step, sublayer, layers, Verdict.REFUTED, statement, residual="NaN", hint=str(err),
                            seconds=time.perf_counter() - started)
    except Stuck as err:
        result = Obligation(step, sublayer, layers, Verdict.UNKNOWN, statement, stuck=str(err),
                            seconds=time.perf_counter() - started)
    else:
        # a side entry is a condition (text, value: 0 when it holds), a lemma the build applied (name, "lemma")
        # or what such a lemma assumes (text, None)
        conditions = tuple(SideCondition(text, str(value), value == 0) for text, value in side
                           if value is not None and not isinstance(value, str))
        built = tuple(text for text, value in side if value == "lemma")
        assumptions = tuple(text for text, value in side if value is None)
        stuck = checked = None
        if _is_zero(residual) and all(c.holds for c in conditions):
            verdict, shown, hint = Verdict.PROVED, None, None
            checked, stuck = _second_check(new, target)
            if stuck is not None:
                verdict = Verdict.UNKNOWN
        else:
            hint = _hint(residual, conditions) or _factor_hint(new, target)
            verdict, shown = Verdict.REFUTED, _show(residual)
        result = Obligation(step, sublayer, layers, verdict, statement, tuple(sorted(trace.rules.items())),
                            tuple(dict.fromkeys(built + tuple(trace.lemmas))), conditions, shown, hint, stuck,
                            time.perf_counter() - started, checked, assumptions)
    if key is not None:
        _CACHE[(step, key)] = result
    return result


def _second_check(new, target) -> tuple[str, str | None]:
    """An independent check of a rewrite to zero: both sides evaluated in float64 at random
    small dims and random values (`specgrow.verify.evaluate`, no code shared with the rules).

    Returns what ran, and, when the sides differ, why the obligation is UNKNOWN, naming the
    first rule application whose output differs from its input.
    """
    from specgrow.verify.evaluate import agree, first_bad_rule

    found = agree(new, target)
    ran = f"both sides in float64 at random dims and values, {found.trials} trials, agree within 1e-9 relative"
    if found.agrees:
        return ran, None
    rule = first_bad_rule(sub(new, target))
    culprit = f"the rule {rule!r} changes the value" if rule else "no single rule was found at fault"
    return None, f"rewritten to zero, but the independent numeric check disagrees ({found.reason}); {culprit}"


def _is_zero(m) -> bool:
    if isinstance(m, ZeroMatrix) or m == 0:
        return True
    if isinstance(m, BlockMatrix):
        return all(_is_zero(b) for b in m.blocks)
    return False


def _show(m, limit=400) -> str:
    text = " ".join(str(m).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def _hint(residual, conditions) -> str | None:
    """What would have been needed, where `solve` can say it."""
    failed = [c for c in conditions if not c.holds]
    if failed:
        return "; ".join(f"{c.text} is {c.value}, must be 0" for c in failed)
    randoms = {s.name.split(":", 1)[1] for s in residual.free_symbols
               if isinstance(s, MatrixSymbol) and s.name.startswith("R")}
    means = {s.name[len("mean["):].split("@")[0] for s in residual.free_symbols
             if isinstance(s, sp.Symbol) and s.name.startswith("mean[")}
    randoms = sorted(randoms | means)
    shared = _shared_eps(residual)
    if shared:
        return shared
    norms = [a for a in residual.atoms(RMSNorm, LayerNorm)]
    if any(isinstance(a, LayerNorm) and isinstance(a.args[0], BlockMatrix)
           and any(isinstance(b, ZeroMatrix) for b in a.args[0].blocks) for a in norms):
        return "LayerNorm over a zero-padded stream [x, 0] has no exact rescale; use method: duplicate"
    eps_args = {a.args[-1] for a in norms}
    if len(eps_args) > 1:
        found, wanted = sorted(eps_args, key=sp.default_sort_key)[:2]
        t = sp.Symbol("t")
        solution = sp.solve(sp.Eq(t * found, wanted), t) or sp.solve(sp.Eq(t * wanted, found), t)
        return f"the norm eps must be scaled by {solution[0]} (found eps args {found} and {wanted})" \
            if solution else None
    coefficient = _scalar_mismatch(residual)
    if coefficient is not None:
        return coefficient
    if randoms:
        text = "new slices of these tensors reach the output (zeroing one removes the term): " + ", ".join(randoms)
        if means:  # like_old(f) is mean + std * f * noise: even like_old 0 is the mean, not zero
            text += "; a like_old slice holds the old tensor's mean (like_old: 0 is the mean, not zero)"
        return text
    return None


def _shared_eps(residual) -> str | None:
    """The hint for a residual whose QK-norms differ in their eps (or grew their width) while the
    model has an eps: it is shared with the hidden norms. None when eps plays no part (eps 0)."""
    qk = [a for a in residual.atoms(RMSNorm, HeadNorm) if any(name in str(a.args[1]) for name in ("q_norm", "k_norm"))]
    if not qk or all(a.args[2] == 0 for a in qk):
        return None
    grown = any(isinstance(a.args[0], BlockMatrix) for a in qk)  # a head (or all heads) of a new width
    if grown:
        return ("a QK-norm over a grown width: a zero-padded width needs its own eps x old/new width, but the "
                "model has one eps (HF rms_norm_eps), shared with the hidden norms, so no config holds the grown "
                "model; new dims also enter the norm's mean square. Under a QK-norm no key growth is exact; for an "
                "all-heads QK-norm, heads with method: duplicate of every head is")
    eps = {a.args[3] if isinstance(a, LayerNorm) else a.args[2] for a in residual.atoms(RMSNorm, HeadNorm, LayerNorm)}
    if len(eps) < 2:
        return None
    return ("the QK-norms share the model's one eps (HF rms_norm_eps) with the hidden norms, and this step needs "
            "them to differ (a norm over a zero-padded width needs eps x old/new width; copies need none): no "
            "config holds the grown model. Exact instead: hidden with method: duplicate (copies keep every mean "
            "square, so no eps changes)")


def _factor_hint(new, target):
    """For ``new = a*M`` and ``target = b*M``: `solve` for the factor t with ``t*a = b``."""
    trace = Trace()
    a, m = _coeff(collapse(new, trace, extra=LEMMAS))
    b, m2 = _coeff(collapse(target, trace, extra=LEMMAS))
    if m == m2 and a != 0:
        t = sp.Symbol("t", positive=True)
        solution = sp.solve(sp.Eq(t * a, b), t)
        if solution and sp.simplify(solution[0] - 1) != 0:
            return f"a factor {sp.simplify(solution[0])} is missing (e.g. a rescale of the old columns)"
    return None


def _coeff(m):
    if isinstance(m, MatMul):
        coeff, mats = m.as_coeff_matrices()
        return coeff, MatMul(*mats) if len(mats) > 1 else mats[0]
    return sp.Integer(1), m


def _scalar_mismatch(residual):
    """For a residual ``a*M - b*M``: the factor t with ``t*a = b`` (e.g. sqrt(k'/k))."""
    terms = residual.args if isinstance(residual, MatAdd) else (residual,)
    coefficients: dict = {}
    for term in terms:
        coeff, mats = term.as_coeff_matrices() if isinstance(term, MatMul) else (sp.Integer(1), [term])
        key = MatMul(*mats) if len(mats) > 1 else mats[0]
        coefficients.setdefault(key, []).append(coeff)
    for mats, coeffs in coefficients.items():
        if len(coeffs) == 2:
            t = sp.Symbol("t", positive=True)
            solution = sp.solve(sp.Eq(t * coeffs[0], -coeffs[1]), t)
            if solution:
                return f"a factor {sp.simplify(solution[0])} is missing on one side (e.g. rescale)"
    return None
