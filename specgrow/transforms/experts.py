"""Expansions of mixture-of-experts layers: more experts, and dense MLPs upcycled into experts.

The experts axis comes first in every expert tensor (`specgrow.shape.EXPERT_ROLES`). New
experts are laid out in bands of E: band j holds the j-th copy (or piece) of experts 0..E-1,
so new expert ``j*E + e`` comes from old expert ``e``; every tensor of a layer, router
included, uses the same bands, which is what the prover reads (`specgrow.verify.experts`).

``duplicate`` (to = m*E): every tensor copied m times; top_k becomes m*k, so each copy of a
selected expert is selected and weighs 1/m of the expert's weight (with or without
renormalisation). Optional cancelling noise on the copies' down projections, pair by pair.

``split`` (to = m*E): band j holds the j-th 1/m of every expert's units, its down projection
times m (the m pieces each weigh 1/m); top_k becomes m*k: the same FLOPs per token.

``add`` (to = E + dE): new experts filled by the step's init, top_k unchanged. A router without
a bias cannot keep them unselected, so this is not function-preserving; the prover refutes it.

``upcycle``: a dense MLP becomes E identical experts (`Old` blocks repeated along the experts
axis) and a new router (by default normal 0.02 when renormalised, else zeros). With renormalised
top-k the mixture of identical experts is the MLP for any router; without it the weights of a
zero router's top-k sum to k/E, which the down projections stored times E/k make up.
"""

from __future__ import annotations

from dataclasses import replace

import sympy

from specgrow.ir import Block, Old, Range, TensorEdit, sym
from specgrow.shape import EXPERT_ROLES, LAYER_ROLES
from specgrow.transforms.common import SPACE_SIZE, Grown, Segment, grow_tensor, layer_dims

E, dE, p = sym("E"), sym("dE"), sym("p")
_FILL = {"mlp.router.weight": "router", "mlp.experts.up.weight": "w_in", "mlp.experts.gate.weight": "w_gate",
         "mlp.experts.down.weight": "w_out"}
_DENSE = {"mlp.experts.up.weight": "mlp.up.weight", "mlp.experts.gate.weight": "mlp.gate.weight",
          "mlp.experts.down.weight": "mlp.down.weight"}


def compile_step(step, shape, ctx):
    edits, layers = [], list(shape.layers)
    for i, top_k in zip(step.layers, step.top_k):
        old = shape.layers[i]
        m = step.to // old.experts
        dims = layer_dims(shape, i)
        roles = [role for role in EXPERT_ROLES if shape.has_role(role, i)]
        if step.method == "split":
            dims["p"] = old.mlp // m  # p: the new experts' width, the old one m*p
            edits += [_split(role, i, m, dims) for role in roles]
            layers[i] = replace(old, experts=step.to, top_k=top_k, mlp=old.mlp // m)
            continue
        if step.method == "duplicate":
            for role in roles:
                segments = tuple(_band(j, m, step.noise, role) for j in range(m))
                grow = {"experts": (sympy.Integer(m) * E, segments)}
                edits.append(grow_tensor(ctx, shape, role, i, grow, dims, noise_std=step.noise))
        else:  # add
            dims["dE"] = step.to - old.experts
            for role in roles:
                grow = {"experts": (E + dE, (Segment(Range(0, E), Range(0, E)), Segment(Range(E, E + dE),
                                                                                       fill=_FILL[role])))}
                edits.append(grow_tensor(ctx, shape, role, i, grow, dims))
        layers[i] = replace(old, experts=step.to, top_k=top_k)
    return Grown(tuple(edits), shape.with_layers(layers))


def _band(j, m, noise, role):
    """Band j of the copies: new experts ``[j*E, (j+1)*E)`` from all old ones; on the down projection
    with noise, copies 2i and 2i+1 take opposite signs of one draw (an odd last copy none)."""
    mark = None
    if noise and role == "mlp.experts.down.weight" and (m % 2 == 0 or j < m - 1):
        mark = (j // 2, 1 if j % 2 == 0 else -1)
    return Segment(Range(j * E, (j + 1) * E), Range(0, E), noise=mark)


def _split(role, layer, m, dims):
    """Band j: the j-th 1/m of every expert's units (``p`` each), the down projection times m."""
    spaces = LAYER_ROLES[role]
    old_shape = tuple(sympy.Integer(m) * p if s == "mlp" else SPACE_SIZE[s] for s in spaces)
    new_shape = tuple(sympy.Integer(m) * E if s == "experts" else SPACE_SIZE[s] for s in spaces)
    blocks = []
    for j in range(m):
        where = tuple(Range(j * E, (j + 1) * E) if s == "experts" else Range(0, SPACE_SIZE[s]) for s in spaces)
        index = tuple(Range(j * p, (j + 1) * p) if s == "mlp" else Range(0, SPACE_SIZE[s]) for s in spaces)
        scale = m if role == "mlp.experts.down.weight" else 1
        blocks.append(Block(where, Old(index, scale)))
    return TensorEdit(role, layer, (role, layer), old_shape, new_shape, tuple(blocks), tuple(sorted(dims.items())))


def compile_upcycle(step, shape, ctx):
    """Dense MLPs of ``step.layers`` to ``step.experts`` copies each, with a new router."""
    edits, layers = [], list(shape.layers)
    scale = 1 if step.renormalize else sympy.Rational(step.experts, step.top_k)
    for i in step.layers:
        dims = dict(layer_dims(shape, i), E=step.experts)
        for role in ("mlp.experts.up.weight", "mlp.experts.gate.weight", "mlp.experts.down.weight"):
            dense = _DENSE[role]
            if not shape.has_role(dense, i):
                continue
            spaces = LAYER_ROLES[role]
            index = tuple(Range(0, SPACE_SIZE[s]) for s in spaces[1:])
            old = Old(index, scale if role == "mlp.experts.down.weight" else 1)
            edits.append(TensorEdit(role, i, (dense, i), tuple(SPACE_SIZE[s] for s in spaces[1:]),
                                    tuple(SPACE_SIZE[s] for s in spaces),
                                    (Block((Range(0, E),) + index, old),), tuple(sorted(dims.items()))))
        router = {s: (SPACE_SIZE[s], (Segment(Range(0, SPACE_SIZE[s]), fill="router"),))
                  for s in LAYER_ROLES["mlp.router.weight"]}
        edits.append(grow_tensor(ctx, shape, "mlp.router.weight", i, router, dims, source_layer=None,
                                 like=None))
        layers[i] = replace(layers[i], experts=step.experts, top_k=step.top_k)
    after = replace(shape.with_layers(layers), renormalize=step.renormalize)
    return Grown(tuple(edits), after)

