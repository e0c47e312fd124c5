"""Expansion 2: head addition, per layer, in whole kv groups (GQA-aware).

Heads are ``G * r`` (kv groups times queries per group); adding ``dG`` groups adds
``dG * r`` query heads, and query head ``j`` reads kv group ``j // r``.
``zero``: new q/k/v rows are filled by the ``q``/``k``/``v`` roles, the new heads' columns
of the output projection by ``o`` (zero preserves); new biases are zero.
``duplicate`` (dG <= G): new head ``H + j`` copies head ``j`` (and so new group ``G + g``
copies group ``g``); both copies' output columns are halved, plus cancelling noise.
"""

from __future__ import annotations

import functools

from dataclasses import replace

from specgrow.ir import sym
from specgrow.shape import LAYER_ROLES, QK_NORM_GAINS
from specgrow.spec.types import Ones, Zeros
from specgrow.transforms.common import SPACE_SIZE, Grown, duplicate_segments, grow_tensor, layer_dims, pad

G, dG, r, k, v = sym("G"), sym("dG"), sym("r"), sym("k"), sym("v")

# space -> (per-head width, heads per group): q has G*r heads of width k, k has G of k, ...
_UNIT = {"q": (k, r), "k": (k, 1), "v": (v, 1), "o": (v, r)}
_ROLES = {"attn.q": "q", "attn.k": "k", "attn.v": "v", "attn.o": "o",
          # the all-heads QK-norm's gains (`qk_norm: all`) grow with the heads they weigh
          QK_NORM_GAINS["all"][0][:-len(".weight")]: "q", QK_NORM_GAINS["all"][1][:-len(".weight")]: "k"}


def compile_step(step, shape, ctx):
    edits, layers = [], list(shape.layers)
    for i in step.layers:
        s = shape.layers[i]
        ratio = s.heads // s.kv_heads
        dims = dict(layer_dims(shape, i), dG=step.add // ratio)
        groups = G if step.add == s.heads else dG  # doubling: the copies are all old groups
        for prefix, space in _ROLES.items():
            for role in (f"{prefix}.weight", f"{prefix}.bias"):
                if not shape.has_role(role) or space not in LAYER_ROLES[role]:
                    continue
                grow = {space: (_new_size(space, groups), _segments(step, space, role, groups))}
                edits.append(grow_tensor(ctx, shape, role, i, grow, dims, noise_std=step.noise))
        layers[i] = replace(s, heads=s.heads + step.add, kv_heads=s.kv_heads + step.add // ratio)
    return Grown(tuple(edits), shape.with_layers(layers))


@functools.lru_cache(maxsize=256)
def _new_size(space, groups):
    width, per_group = _UNIT[space]
    return (G + groups) * per_group * width


@functools.lru_cache(maxsize=256)
def _segments(step, space, role, groups):
    old = SPACE_SIZE[space]
    width, per_group = _UNIT[space]
    added = groups * per_group * width
    if step.method == "duplicate":
        return duplicate_segments(old, added, fan_out=space == "o")
    fill = Zeros() if role.endswith(".bias") else Ones() if role in QK_NORM_GAINS["all"] else space
    return pad(old, old + added, fill)
