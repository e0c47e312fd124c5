"""Expansion 4: per-head query/key width k -> k', per layer.

New query columns are filled by ``q``, new key columns by ``k`` (zero preserves), new
biases are 0. The softmax scale becomes 1/sqrt(k'), so one side's old columns absorb
sqrt(k'/k) (``rescale: k | q``; ``none`` leaves the scores changed).

Placement ``append`` keeps the old columns first in each head. Under RoPE that moves every
old pair onto a new frequency (inv_freq_i = theta^(-2i/k) depends on k). Placement
``interleave`` (k' = m*k) puts old dim ``i`` of each half at ``m*i``, i.e. old rotary pair
``i`` at new pair ``m*i``, whose frequency theta^(-2mi/(mk)) is the old one.
"""

from __future__ import annotations

import functools

from dataclasses import replace

import sympy

from specgrow.ir import Grouped, Range, sym
from specgrow.shape import QK_NORM_GAINS
from specgrow.spec.types import Ones, Zeros
from specgrow.transforms.common import Grown, Segment, grow_tensor, layer_dims

G, r, k, dk = sym("G"), sym("r"), sym("k"), sym("dk")


def compile_step(step, shape, ctx):
    edits, layers = [], list(shape.layers)
    for i in step.layers:
        old = shape.layers[i].key
        dims = dict(layer_dims(shape, i), dk=step.to - old)
        if step.placement == "interleave":
            new = sympy.Integer(step.to // old) * k
        else:
            new = k + dk
        factor = sympy.sqrt(new / k)
        targets = {
            "attn.q.weight": ("q", G * r, "q"), "attn.q.bias": ("q", G * r, Zeros()),
            "attn.k.weight": ("k", G, "k"), "attn.k.bias": ("k", G, Zeros()),
            # per-head QK-norm gains follow the columns they weigh; new entries 1, old ones kept (no exact
            # growth exists under a QK-norm with eps: the prover refutes it and says why; under the
            # all-heads QK-norm validate refuses key growth)
            QK_NORM_GAINS["head"][0]: ("head", 1, Ones()), QK_NORM_GAINS["head"][1]: ("head", 1, Ones()),
        }
        for role, (space, heads, fill) in targets.items():
            if not shape.has_role(role):
                continue
            scale = factor if step.rescale == space else 1  # the QK-norm gains' space, head, is neither side
            segments = _segments(step.placement, heads, new, fill, scale, step.to // old)
            grow = {space: (heads * new, segments)}
            edits.append(grow_tensor(ctx, shape, role, i, grow, dims))
        layers[i] = replace(layers[i], key=step.to)
    return Grown(tuple(edits), shape.with_layers(layers))


@functools.lru_cache(maxsize=256)
def _segments(placement, heads, new, fill, scale, m):
    if placement == "append":
        return (
            Segment(Grouped(heads, new, Range(0, k)), Grouped(heads, k, Range(0, k)), scale=scale),
            Segment(Grouped(heads, new, Range(k, new)), fill=fill),
        )
    half_new, half_old = new / 2, k / 2
    segments = [
        Segment(Grouped(heads, new, Range(0, half_new, m)), Grouped(heads, k, Range(0, half_old)),
                scale=scale),
        Segment(Grouped(heads, new, Range(half_new, new, m)), Grouped(heads, k, Range(half_old, k)),
                scale=scale),
    ]
    for j in range(1, m):
        segments.append(Segment(Grouped(heads, new, Range(j, half_new, m)), fill=fill))
        segments.append(Segment(Grouped(heads, new, Range(half_new + j, new, m)), fill=fill))
    return tuple(segments)
