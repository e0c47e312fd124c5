"""Concrete selections (`specgrow.ir.Range`, `Grouped`) as torch indices, and outer-product scatter."""

from __future__ import annotations

import functools

import torch

from specgrow.ir import Range


def indices(sel, device) -> torch.Tensor | slice:
    """The indices of a concrete selection: a slice when contiguous, else an index tensor."""
    if isinstance(sel, Range):
        if sel.step == 1:
            return slice(sel.start, sel.stop)
        return torch.arange(sel.start, sel.stop, sel.step, device=device)
    inner = torch.arange(sel.inner.start, sel.inner.stop, sel.inner.step, device=device)
    starts = torch.arange(sel.groups, device=device) * sel.width
    return (starts[:, None] + inner[None, :]).reshape(-1)


def outer(index: tuple, shape, device) -> tuple:
    """Per-axis selections (slices or index tensors) as one index selecting their outer product.

    With at most one index tensor, torch already indexes that way and ``index`` is returned;
    otherwise every axis becomes a broadcast index tensor (``shape`` resolves the slices).
    """
    if sum(not isinstance(ix, slice) for ix in index) <= 1:
        return index
    full = [torch.arange(shape[axis], device=device)[ix] if isinstance(ix, slice) else ix
            for axis, ix in enumerate(index)]
    return tuple(ix.view([-1 if a == axis else 1 for a in range(len(full))]) for axis, ix in enumerate(full))


def scatter(tensor: torch.Tensor, index: tuple, value) -> None:
    """``tensor[index] = value`` with per-axis (outer-product) indexing."""
    tensor[outer(index, tensor.shape, tensor.device)] = value


def as_slice(ix: torch.Tensor, device) -> torch.Tensor | slice:
    """A slice for consecutive indices (a view, no copy), else the index tensor on ``device``."""
    first, count = int(ix[0]), len(ix)
    if int(ix[-1]) - first + 1 == count and (count < 3 or bool((ix[1:] - ix[:-1] == 1).all())):
        return slice(first, first + count)
    return ix.to(device)


@functools.lru_cache(maxsize=4096)
def positions(sel) -> torch.Tensor:
    """Every index of a concrete selection, increasing, as a CPU tensor."""
    ix = indices(sel, "cpu")
    if isinstance(ix, slice):
        return torch.arange(ix.start, ix.stop)
    return ix
