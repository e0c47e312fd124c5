"""Expansion 3: per-head value width v -> v + dv, per layer.

Inside every head, new value columns are filled by ``v`` and the matching new rows of
that head's block of the output projection by ``o`` (zero preserves); new biases are 0.
"""

from __future__ import annotations

from dataclasses import replace

from specgrow.ir import Grouped, Range, sym
from specgrow.spec.types import Zeros
from specgrow.transforms.common import Grown, Segment, grow_tensor, layer_dims

G, r, v, dv = sym("G"), sym("r"), sym("v"), sym("dv")


def per_head(heads, old, new, fill):
    """Old per-head columns ``[0, old)`` kept in every head, ``[old, new)`` filled."""
    return (
        Segment(Grouped(heads, new, Range(0, old)), Grouped(heads, old, Range(0, old))),
        Segment(Grouped(heads, new, Range(old, new)), fill=fill),
    )


def compile_step(step, shape, ctx):
    edits, layers = [], list(shape.layers)
    for i in step.layers:
        dims = dict(layer_dims(shape, i), dv=step.to - shape.layers[i].value)
        targets = {
            "attn.v.weight": ("v", G, "v"), "attn.v.bias": ("v", G, Zeros()),
            "attn.o.weight": ("o", G * r, "o"),
        }
        for role, (space, heads, fill) in targets.items():
            if shape.has_role(role):
                grow = {space: (heads * (v + dv), per_head(heads, v, v + dv, fill))}
                edits.append(grow_tensor(ctx, shape, role, i, grow, dims))
        layers[i] = replace(layers[i], value=step.to)
    return Grown(tuple(edits), shape.with_layers(layers))
