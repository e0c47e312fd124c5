"""Expansion 1: MLP internal width p -> p + dp, per layer (every expert's width in a MoE layer).

``zero``: new up (and gate) rows are filled by ``w_in`` / ``w_gate``, new in-biases by
``b_in``, the new columns of the down projection by ``w_out`` (zero preserves).
``duplicate`` (dp <= p): new unit p+j copies unit j; both copies' down columns are
halved, plus cancelling noise when ``noise`` > 0.
"""

from __future__ import annotations

import functools

from dataclasses import replace

from specgrow.ir import Block, Const, Old, Random, Range, sym
from specgrow.shape import EXPERT_ROLES
from specgrow.transforms.common import Grown, duplicate_segments, grow_tensor, layer_dims, pad, roles_with

p, dp = sym("p"), sym("dp")


def compile_step(step, shape, ctx):
    edits, layers = [], list(shape.layers)
    for i in step.layers:
        old = shape.layers[i].mlp
        dims = dict(layer_dims(shape, i), dp=step.to - old)
        added = p if step.to == 2 * old else dp
        for role in roles_with(shape, i, "mlp"):
            grow = {"mlp": (p + added, _segments(step, role, added))}
            edit = grow_tensor(ctx, shape, role, i, grow, dims, noise_std=step.noise)
            if step.experts and role in EXPERT_ROLES:
                edit = _listed(ctx, edit, step.experts, shape.layers[i].experts)
            edits.append(edit)
        layers[i] = replace(layers[i], mlp=step.to)
    return Grown(tuple(edits), shape.with_layers(layers))


def _listed(ctx, edit, listed, count):
    """The edit with its new units' blocks kept for the ``listed`` experts (each run of them its own seed) and
    zeros for every other expert's new units."""
    blocks = []
    for n, block in enumerate(edit.blocks):
        if isinstance(block.source, Old):
            blocks.append(block)
            continue
        for start, stop, chosen in _runs(listed, count):
            source = block.source
            if not chosen:
                source = Const(0.0)
            elif isinstance(source, Random):
                source = replace(source, seed=ctx.derive_seed(edit.role, edit.layer, n, "experts", start))
            blocks.append(Block((Range(start, stop),) + block.where[1:], source))
    return replace(edit, blocks=tuple(blocks))


def _runs(listed, count):
    """``(start, stop, listed)`` runs of experts 0..count-1."""
    runs, start = [], 0
    for e in range(1, count + 1):
        if e == count or (e in listed) != (start in listed):
            runs.append((start, e, start in listed))
            start = e
    return runs


@functools.lru_cache(maxsize=256)
def _segments(step, role, added):
    if step.method == "duplicate":
        return duplicate_segments(p, added, fan_out=role in ("mlp.down.weight", "mlp.experts.down.weight"))
    fill = {
        "mlp.up.weight": "w_in", "mlp.gate.weight": "w_gate",
        "mlp.up.bias": "b_in", "mlp.gate.bias": "b_in", "mlp.down.weight": "w_out",
        "mlp.experts.up.weight": "w_in", "mlp.experts.gate.weight": "w_gate", "mlp.experts.down.weight": "w_out",
    }[role]
    return pad(p, p + added, fill)

