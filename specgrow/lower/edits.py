"""Execute concrete `TensorEdit`s with torch on a device.

Each block of an edit is written once into the new tensor: `Old` blocks gather the old
tensor's selection (times its scale, plus seeded noise), `Const` fills, `Random` draws
from a generator seeded by the block's own seed on the target device, so the same spec
and seed give bit-identical tensors run to run on a device.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from specgrow.errors import CheckpointError
from specgrow.ir import Const, Old, Random, Range, StepPlan, TensorEdit

Names = Callable[[str, "int | None"], str]


def indices(sel, device) -> torch.Tensor | slice:
    """The indices of a selection: a slice when contiguous, else an index tensor."""
    if isinstance(sel, Range):
        if sel.step == 1:
            return slice(sel.start, sel.stop)
        return torch.arange(sel.start, sel.stop, sel.step, device=device)
    inner = torch.arange(sel.inner.start, sel.inner.stop, sel.inner.step, device=device)
    starts = torch.arange(sel.groups, device=device) * sel.width
    return (starts[:, None] + inner[None, :]).reshape(-1)


def _read(tensor: torch.Tensor, index: tuple) -> torch.Tensor:
    """``tensor[index]`` with per-axis (outer-product) indexing."""
    out = tensor
    for axis, ix in enumerate(index):
        out = out[(slice(None),) * axis + (ix,)]
    return out


def _write(tensor: torch.Tensor, index: tuple, value: torch.Tensor) -> None:
    if all(isinstance(ix, slice) for ix in index):
        tensor[index] = value
        return
    grids = [
        torch.arange(tensor.shape[axis], device=tensor.device)[ix] if isinstance(ix, slice) else ix
        for axis, ix in enumerate(index)
    ]
    tensor[torch.meshgrid(*grids, indexing="ij")] = value


def _draw(kind: str, shape, seed: int, device, like: torch.Tensor | None, param: float):
    gen = torch.Generator(device=device).manual_seed(seed)
    if kind == "uniform":
        return (torch.rand(shape, generator=gen, device=device) * 2 - 1) * param
    values = torch.randn(shape, generator=gen, device=device)
    if kind == "normal":
        return values * param
    ref = like.float()
    std = ref.std().item() if ref.numel() > 1 else 0.0
    return values * (std * param) + ref.mean()


def build_tensor(edit: TensorEdit, old: torch.Tensor | None, like: torch.Tensor | None,
                 device, dtype) -> torch.Tensor:
    """The new tensor of one concrete edit."""
    if old is not None and tuple(old.shape) != tuple(edit.old_shape):
        raise CheckpointError(
            f"tensor {edit.role} (layer {edit.layer}): expected shape {tuple(edit.old_shape)}, "
            f"found {tuple(old.shape)}"
        )
    if edit.is_identity():
        return old.to(device=device, dtype=dtype)
    new = torch.empty(edit.new_shape, device=device, dtype=dtype)
    for block in edit.blocks:
        shape = tuple(sel.length() for sel in block.where)
        src = block.source
        if isinstance(src, Old):
            value = _read(old.to(device), tuple(indices(s, device) for s in src.index)).float()
            value = value * src.scale
            if src.noise is not None:
                gen = torch.Generator(device=device).manual_seed(src.noise.seed)
                noise = torch.randn(shape, generator=gen, device=device)
                value = value + src.noise.sign * src.noise.std * noise
        elif isinstance(src, Const):
            value = torch.full(shape, src.value, device=device)
        elif isinstance(src, Random):
            value = _draw(src.dist, shape, src.seed, device, like, src.param)
        else:
            raise TypeError(f"unknown block source {src!r}")
        _write(new, tuple(indices(s, device) for s in block.where), value.to(dtype))
    return new


def apply_step(state: Mapping[str, torch.Tensor], step: StepPlan, names: Names,
               device="cpu") -> dict[str, torch.Tensor]:
    """The state dict after one concrete step; tensors no edit names are carried over."""
    consumed = {names(*e.source) for e in step.edits if e.source is not None}
    out = {name: t.to(device) for name, t in state.items() if name not in consumed}
    for edit in step.edits:
        source = names(*edit.source) if edit.source is not None else None
        old = _lookup(state, source) if source is not None else None
        like_key = _like_key(edit)
        like = _lookup(state, names(*like_key)) if like_key is not None else None
        dtype = (old if old is not None else like if like is not None else _any(state)).dtype
        out[names(edit.role, edit.layer)] = build_tensor(edit, old, like, device, dtype)
    return out


def _like_key(edit: TensorEdit):
    for block in edit.blocks:
        if isinstance(block.source, Random) and block.source.like is not None:
            return block.source.like
    return None


def _lookup(state, name):
    if name not in state:
        raise CheckpointError(f"missing tensor '{name}' in the input")
    return state[name]


def _any(state):
    return next(iter(state.values()))
