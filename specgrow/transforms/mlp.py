"""Expansion 1: MLP internal width p -> p + dp, per layer.

``zero``: new up (and gate) rows are filled by ``w_in`` / ``w_gate``, new in-biases by
``b_in``, the new columns of the down projection by ``w_out`` (zero preserves).
``duplicate`` (dp <= p): new unit p+j copies unit j; both copies' down columns are
halved, plus cancelling noise when ``noise`` > 0.
"""

from __future__ import annotations

from dataclasses import replace

import sympy

from specgrow.ir import Range, sym
from specgrow.transforms.common import Grown, Segment, grow_tensor, layer_dims, pad, roles_with

p, dp = sym("p"), sym("dp")
HALF = sympy.Rational(1, 2)


def compile_step(step, shape, ctx):
    edits, layers = [], list(shape.layers)
    for i in step.layers:
        dims = dict(layer_dims(shape, i), dp=step.to - shape.layers[i].mlp)
        for role in roles_with(shape, i, "mlp"):
            grow = {"mlp": (p + dp, _segments(step, role))}
            edits.append(grow_tensor(ctx, shape, role, i, grow, dims, noise_std=step.noise))
        layers[i] = replace(layers[i], mlp=step.to)
    return Grown(tuple(edits), shape.with_layers(layers))


def _segments(step, role):
    if step.method == "duplicate":
        if role == "mlp.down.weight":  # fan-out: split between the two copies
            return (
                Segment(Range(0, dp), Range(0, dp), scale=HALF, noise=(0, 1)),
                Segment(Range(dp, p), Range(dp, p)),
                Segment(Range(p, p + dp), Range(0, dp), scale=HALF, noise=(0, -1)),
            )
        return (Segment(Range(0, p), Range(0, p)), Segment(Range(p, p + dp), Range(0, dp)))
    fill = {
        "mlp.up.weight": "w_in", "mlp.gate.weight": "w_gate",
        "mlp.up.bias": "b_in", "mlp.gate.bias": "b_in", "mlp.down.weight": "w_out",
    }[role]
    return pad(p, p + dp, fill)

