"""Expansion 6: insert ``add`` layers before index ``at``.

A new layer's attention output projection (and its bias) is filled by ``o`` and its MLP
down projection (and bias) by ``w_out``: zero makes the layer the identity on the
residual stream. Every other tensor is filled by ``rest`` (by default: matrices like the
neighbouring layer's, norm gains 1, biases 0). The new layer takes the neighbouring
layer's widths (the one before ``at``, or layer 0). Later layers move up by ``add``.
"""

from __future__ import annotations

from specgrow.shape import LAYER_ROLES
from specgrow.transforms.common import SPACE_SIZE, Grown, Segment, grow_tensor, layer_dims
from specgrow.ir import Range

_FILL = {"attn.o.weight": "o", "attn.o.bias": "o", "mlp.down.weight": "w_out", "mlp.down.bias": "w_out",
         "mlp.experts.down.weight": "w_out"}


def compile_step(step, shape, ctx):
    count = len(shape.layers)
    neighbour = step.at - 1 if step.at > 0 else 0
    edits = []
    for j in range(step.at, count):  # moved layers: copied unchanged under a new index
        for role in LAYER_ROLES:
            if shape.has_role(role, j):
                edits.append(grow_tensor(ctx, shape, role, j + step.add, {}, layer_dims(shape, j),
                                         source_layer=j))
    dims = layer_dims(shape, neighbour)
    for new in range(step.at, step.at + step.add):
        for role, spaces in LAYER_ROLES.items():
            if not shape.has_role(role, neighbour):
                continue
            fill = _FILL.get(role, "rest")
            grow = {s: (SPACE_SIZE[s], (Segment(Range(0, SPACE_SIZE[s]), fill=fill),)) for s in spaces}
            edits.append(grow_tensor(ctx, shape, role, new, grow, dims, source_layer=None,
                                     like=(role, neighbour)))
    layers = list(shape.layers)
    layers[step.at:step.at] = [shape.layers[neighbour]] * step.add
    return Grown(tuple(edits), shape.with_layers(layers))
