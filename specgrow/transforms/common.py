"""Shared machinery of the six expansions: axis segments, init sources, seeds.

An expansion describes, for each tensor it touches, how each axis is rebuilt as a tuple
of `Segment`s (a run of new indices taken from old indices, or a new slice filled by an
init role). `grow_tensor` turns that per-axis description into the blocks of a
`TensorEdit` by taking every combination of segments.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from dataclasses import dataclass
from typing import Union

import sympy

from specgrow import ir
from specgrow.ir import Block, Const, Noise, Old, Random, Range, TensorEdit, sym
from specgrow.shape import GLOBAL_ROLES, LAYER_ROLES, NORM_BIASES, NORM_GAINS, ModelShape
from specgrow.spec import types as T

h, V, Tp = sym("h"), sym("V"), sym("T")
p, G, r, k, v = sym("p"), sym("G"), sym("r"), sym("k"), sym("v")

# Symbolic size of each axis space (heads = G * r: kv groups times queries per group).
SPACE_SIZE = {
    "residual": h, "vocab": V, "positions": Tp, "mlp": p, "head": k,
    "q": G * r * k, "k": G * k, "v": G * v, "o": G * r * v, "experts": sym("E"),
}

InitRef = Union[str, T.Init]  # a role of the step's `init`, or a fixed init


@dataclass(frozen=True)
class Segment:
    """A run ``where`` of new indices along one axis: from ``old`` (scaled), or new (``fill``)."""

    where: ir.Sel
    old: ir.Sel | None = None
    scale: ir.Expr = 1
    noise: tuple[int, int] | None = None  # (pair id, sign) of cancelling noise
    fill: InitRef | None = None
    shift: ir.Expr = 0  # added to the scaled old values: (1+w) gains, see `specgrow.ir.Old`


@functools.lru_cache(maxsize=256)
def keep(size: ir.Expr) -> tuple[Segment, ...]:
    return (Segment(Range(0, size), Range(0, size)),)


@functools.lru_cache(maxsize=256)
def pad(old: ir.Expr, new: ir.Expr, fill: InitRef, scale: ir.Expr = 1, shift: ir.Expr = 0) -> tuple[Segment, ...]:
    """Old indices first (scaled, shifted), then a new slice filled by ``fill``: zero-pad growth."""
    return (Segment(Range(0, old), Range(0, old), scale=scale, shift=shift), Segment(Range(old, new), fill=fill))


def duplicate_segments(old: ir.Expr, added: ir.Expr, fan_out: bool) -> tuple[Segment, ...]:
    """Copy units ``[0, added)`` to ``[old, old + added)``; on the fan-out side halve both copies.

    ``added`` is ``old`` itself when the width doubles, so no empty run ``[added, old)`` is left.
    """
    if not fan_out:
        return (Segment(Range(0, old), Range(0, old)), Segment(Range(old, old + added), Range(0, added)))
    half = sympy.Rational(1, 2)
    segments = [Segment(Range(0, added), Range(0, added), scale=half, noise=(0, 1))]
    if added != old:
        segments.append(Segment(Range(added, old), Range(added, old)))
    segments.append(Segment(Range(old, old + added), Range(0, added), scale=half, noise=(0, -1)))
    return tuple(segments)


def layer_dims(shape: ModelShape, layer: int | None) -> dict[str, int]:
    dims = {"h": shape.hidden, "V": shape.vocab, "T": shape.positions}
    if layer is not None:
        s = shape.layers[layer]
        dims.update(p=s.mlp, G=s.kv_heads, r=s.heads // s.kv_heads, k=s.key, v=s.value)
        if s.experts:
            dims["E"] = s.experts
    return dims


@dataclass(frozen=True)
class Grown:
    """What an expansion returns: its edits, the shape after it, and the norm eps factor."""

    edits: tuple[TensorEdit, ...]
    after: ModelShape
    eps_scale: ir.Expr = 1
    eps_dims: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class Context:
    """What an expansion needs besides its step: the spec seed and the step's position."""

    seed: int
    step_index: int
    step: T.Step
    norm_offset: float = 0.0  # gains are stored as w, the gain being norm_offset + w

    def derive_seed(self, *parts) -> int:
        """A 63-bit seed from the spec seed, the step and ``parts`` (role, layer, block)."""
        text = f"{self.seed}/{self.step_index}/" + "/".join(map(str, parts))
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1

    def source_for(self, fill: InitRef, role: str, layer: int | None, block: int,
                   like: tuple[str, int | None] | None) -> ir.Source:
        init = self.step.init_for(fill) if isinstance(fill, str) else fill
        if isinstance(init, T.DefaultRest):
            init = default_rest(role, self.norm_offset)
        seed = self.derive_seed(role, layer, block)
        if isinstance(init, T.Zeros):
            return Const(0.0)
        if isinstance(init, T.Ones):
            return Const(1.0)
        if isinstance(init, T.Normal):
            return Random("normal", init.std, seed)
        if isinstance(init, T.Uniform):
            return Random("uniform", init.a, seed)
        if isinstance(init, T.LikeOld):
            if like is None:
                raise ValueError(f"like_old init of {role} needs an old tensor")
            return Random("like_old", init.factor, seed, like)
        raise TypeError(f"unknown init {init!r}")


def default_rest(role: str, norm_offset: float = 0.0) -> T.Init:
    """A new layer's default fill: norm gains 1 (stored 0 under a (1+w) offset), biases 0,
    matrices like the old ones."""
    if role in NORM_GAINS:
        return T.Zeros() if norm_offset == 1 else T.Ones()
    if role.endswith(".bias"):
        return T.Zeros()
    return T.LikeOld(1.0)


def grow_tensor(ctx: Context, shape: ModelShape, role: str, layer: int | None,
                grow: dict[str, tuple[ir.Expr, tuple[Segment, ...]]], dims: dict[str, int],
                noise_std: float = 0.0, source_layer: int | None = -1,
                like: tuple[str, int | None] | None = None) -> TensorEdit:
    """The edit of one tensor whose axes of the spaces in ``grow`` become (new size, segments).

    ``source_layer`` -1 means the same layer as ``layer``; None makes a whole new tensor.
    """
    spaces = GLOBAL_ROLES[role] if layer is None else LAYER_ROLES[role]
    axes, new_shape, old_shape = [], [], []
    for space in spaces:
        size = SPACE_SIZE[space]
        grown = grow.get(space)
        new_size, segments = grown if grown is not None else (size, keep(size))
        axes.append(segments)
        new_shape.append(new_size)
        old_shape.append(size)
    src_layer = layer if source_layer == -1 else source_layer
    source = None if source_layer is None else (role, src_layer)
    blocks = []
    for where, fill, old, scale, mark, plain in _combinations(tuple(axes)):
        if old is None:
            blocks.append(Block(where, ctx.source_for(fill, role, layer, len(blocks), like or source)))
        elif mark is not None and noise_std > 0:
            pair, sign = mark
            noise = Noise(noise_std, ctx.derive_seed(role, layer, "noise", pair), sign)
            blocks.append(Block(where, Old(old, scale, noise, plain.source.shift)))
        else:
            blocks.append(plain)  # no seed in it: one block shared by every tensor with these axes
    return TensorEdit(
        role=role, layer=layer, source=source,
        old_shape=None if source is None else tuple(old_shape),
        new_shape=tuple(new_shape), blocks=tuple(blocks),
        dims=tuple(sorted(dims.items())),
    )


@functools.lru_cache(maxsize=1024)
def _combinations(axes: tuple) -> tuple:
    """Each combination of one segment per axis: ``(where, fill, old, scale, noise mark, block)``.

    ``old`` is None when a segment of the combination is new (its ``fill``, the first new
    one's, fills the block); else the old selections, the product of the scales, the first
    noise mark and the block that copies them without noise. Many tensors share their axes,
    so this is computed once for them.
    """
    out = []
    for combo in itertools.product(*axes):
        where = tuple(seg.where for seg in combo)
        fills = [seg.fill for seg in combo if seg.old is None]
        if fills:
            out.append((where, fills[0], None, None, None, None))
            continue
        scale = 1
        for seg in combo:
            scale = scale * seg.scale
        shifts = [seg.shift for seg in combo if seg.shift != 0]
        if len(shifts) > 1:
            raise ValueError("a shift on more than one axis of a tensor")
        marks = [seg.noise for seg in combo if seg.noise is not None]
        old = tuple(seg.old for seg in combo)
        block = Block(where, Old(old, scale, None, shifts[0] if shifts else 0))
        out.append((where, None, old, scale, marks[0] if marks else None, block))
    return tuple(out)


def roles_with(shape: ModelShape, layer: int | None, space: str) -> list[str]:
    """The roles present in ``shape`` that have an axis in ``space``."""
    table = GLOBAL_ROLES if layer is None else LAYER_ROLES
    return [role for role, spaces in table.items() if space in spaces and shape.has_role(role, layer)]


__all__ = [
    "Context", "Grown", "Segment", "SPACE_SIZE", "grow_tensor", "keep", "pad", "layer_dims",
    "roles_with", "default_rest", "duplicate_segments", "NORM_BIASES", "NORM_GAINS",
]
