"""Grow tensors lazily, one band of rows at a time.

A *source* answers ``shape``, ``dtype`` and ``rows(key, start, stop)`` for tensors keyed
``(role, layer)``. `StepSource` is the state after one concrete step: asked for rows of a
grown tensor, it asks the previous source for just the rows its blocks read. Chaining one
`StepSource` per step over the input gives the grown model without ever holding it: a
writer pulls each output tensor band by band, so memory holds about one band.

Random values (``Random`` blocks, duplicate noise) are drawn per tile of `TILE` block rows
from a generator seeded by the block's seed and the tile index, so a tensor is the same
bit for bit however its rows are banded (on one device).

>>> import torch
>>> from specgrow.ir import Block, Const, Old, Range, StepPlan, TensorEdit
>>> edit = TensorEdit("w", None, ("w", None), (2, 2), (3, 2), (
...     Block((Range(0, 2), Range(0, 2)), Old((Range(0, 2), Range(0, 2)))),
...     Block((Range(2, 3), Range(0, 2)), Const(0.0))))
>>> state = StateSource({("w", None): torch.ones(2, 2)})
>>> grown = StepSource(state, StepPlan(0, "mlp", None, None, (edit,)), "cpu")
>>> grown.rows(("w", None), 1, 3)
tensor([[1., 1.],
        [0., 0.]])
"""

from __future__ import annotations

import functools
import math

import torch

from specgrow.errors import CheckpointError
from specgrow.ir import Const, Old, Random, Range, StepPlan, TensorEdit
from specgrow.shape import tensor_name

TILE = 256  # block rows per random draw
Key = tuple  # (role, layer)


class StateSource:
    """Tensors held in memory, keyed ``(role, layer)``."""

    def __init__(self, tensors: dict):
        self.tensors = tensors

    @classmethod
    def of_state(cls, state: dict, shape, device=None) -> StateSource:
        """A state dict with the reference model's names, seen as the roles of ``shape``."""
        return cls({key: state[tensor_name(*key)].to(device) if device is not None else state[tensor_name(*key)]
                    for key in shape.tensor_keys()})

    def keys(self) -> list:
        return list(self.tensors)

    def shape(self, key) -> tuple[int, ...]:
        return tuple(self._get(key).shape)

    def dtype(self, key) -> torch.dtype:
        return self._get(key).dtype

    def rows(self, key, start: int, stop: int) -> torch.Tensor:
        return self._get(key)[start:stop]

    def _get(self, key):
        if key not in self.tensors:
            raise CheckpointError(f"missing tensor {key[0]} (layer {key[1]}) in the input")
        return self.tensors[key]


class StepSource:
    """The state after one concrete `StepPlan`, computed on demand from ``prev``."""

    def __init__(self, prev, step: StepPlan, device):
        self.prev, self.device = prev, torch.device(device)
        self.edits = {(e.role, e.layer): e for e in step.edits}
        consumed = {e.source for e in step.edits if e.source is not None}
        self._keys = [k for k in prev.keys() if k not in consumed and k not in self.edits] + list(self.edits)
        self._moments: dict = {}

    def keys(self) -> list:
        return list(self._keys)

    def shape(self, key) -> tuple[int, ...]:
        edit = self.edits.get(key)
        return tuple(edit.new_shape) if edit is not None else self.prev.shape(key)

    def dtype(self, key) -> torch.dtype:
        edit = self.edits.get(key)
        if edit is None:
            return self.prev.dtype(key)
        if edit.source is not None:
            return self.prev.dtype(edit.source)
        like = _like_key(edit)
        return self.prev.dtype(like if like is not None else self.prev.keys()[0])

    def rows(self, key, start: int, stop: int) -> torch.Tensor:
        edit = self.edits.get(key)
        if edit is None:
            return self.prev.rows(key, start, stop)
        if edit.is_identity():
            return self.prev.rows(edit.source, start, stop)
        return self._build(key, edit, start, stop)

    # ------------------------------------------------------------ one band of a grown tensor
    def _build(self, key, edit: TensorEdit, start: int, stop: int) -> torch.Tensor:
        dtype = self.dtype(key)
        out = torch.empty((stop - start,) + tuple(edit.new_shape[1:]), dtype=dtype, device=self.device)
        for block in edit.blocks:
            rows = _positions(block.where[0])
            j0, j1 = int(torch.searchsorted(rows, start)), int(torch.searchsorted(rows, stop))
            if j0 == j1:
                continue
            target = _as_slice(rows[j0:j1] - start, self.device)
            rest = tuple(indices(sel, self.device) for sel in block.where[1:])
            value = self._value(edit, block, j0, j1, torch.promote_types(dtype, torch.float32))
            _scatter(out, (target,) + rest, value if isinstance(value, float) else value.to(dtype))
        return out

    def _value(self, edit: TensorEdit, block, j0: int, j1: int, compute: torch.dtype) -> torch.Tensor | float:
        """Rows ``j0:j1`` of ``block``, by the meaning `specgrow.ir` gives its source.

        Arithmetic on draws and scaled copies is done in ``compute`` (the tensor's dtype, at
        least float32), so a float64 checkpoint gets float64 arithmetic.
        """
        src = block.source
        tail = tuple(sel.length() for sel in block.where[1:])
        if isinstance(src, Const):
            return float(src.value)
        if isinstance(src, Random):
            values = self._draw(src.seed, "uniform" if src.dist == "uniform" else "normal",
                                block, j0, j1, tail).to(compute)
            if src.dist == "uniform":
                return (values * 2 - 1) * src.param
            if src.dist == "normal":
                return values * src.param
            mean, std = self._moments_of(src.like)
            return values * (std * src.param) + mean
        if not isinstance(src, Old):
            raise TypeError(f"unknown block source {src!r}")
        wanted = _positions(src.index[0])[j0:j1]
        low, high = int(wanted.min()), int(wanted.max()) + 1
        band = self.prev.rows(edit.source, low, high).to(self.device)
        value = band[_as_slice(wanted - low, self.device)]
        for axis, sel in enumerate(src.index[1:], start=1):
            ix = indices(sel, self.device)
            value = value[(slice(None),) * axis + (ix,)]
        if src.scale == 1 and src.noise is None:
            return value
        value = value.to(compute) * src.scale
        if src.noise is not None:
            noise = self._draw(src.noise.seed, "normal", block, j0, j1, tail).to(compute)
            value = value + src.noise.sign * src.noise.std * noise
        return value

    def _draw(self, seed: int, kind: str, block, j0: int, j1: int, tail) -> torch.Tensor:
        """Rows ``j0:j1`` of the block's draw, made tile by tile (independent of banding)."""
        if self.device.type == "meta":
            return torch.empty((j1 - j0,) + tail, device=self.device)
        length = block.where[0].length()
        first, last = j0 // TILE, (j1 - 1) // TILE
        begin = first * TILE
        out = torch.empty((min(length, (last + 1) * TILE) - begin,) + tail, device=self.device)
        draw = torch.rand if kind == "uniform" else torch.randn
        for tile in range(first, last + 1):
            gen = torch.Generator(device=self.device).manual_seed(_tile_seed(seed, tile))
            rows = out[tile * TILE - begin:min(length, (tile + 1) * TILE) - begin]
            draw(rows.shape, generator=gen, device=self.device, out=rows)
        return out[j0 - begin:j1 - begin]

    def _moments_of(self, key) -> tuple[float, float]:
        """Mean and (unbiased) std of the old tensor ``key``, read band by band."""
        if key not in self._moments:
            if self.device.type == "meta":
                self._moments[key] = (0.0, 0.0)
            else:  # per-band mean and sum of squared deviations, merged (Chan et al.)
                count, mean, m2 = 0, 0.0, 0.0
                for start, stop in bands(self.prev, key):
                    band = self.prev.rows(key, start, stop)
                    band = band.to(torch.promote_types(band.dtype, torch.float32))
                    n = band.numel()
                    # two passes, summed in fp64: twice as fast as torch.var_mean here, and closer
                    band_mean = float(band.mean(dtype=torch.float64))
                    band_m2 = float(torch.linalg.vector_norm(band - band_mean, dtype=torch.float64)) ** 2
                    delta = band_mean - mean
                    mean += delta * n / (count + n)
                    m2 += band_m2 + delta * delta * count * n / (count + n)
                    count += n
                var = m2 / (count - 1) if count > 1 else 0.0
                self._moments[key] = (mean, var ** 0.5)
        return self._moments[key]


def bands(source, key, max_bytes: int = 8 << 20):
    """``(start, stop)`` row bands of one tensor, each at most ``max_bytes`` (at least one row)."""
    shape = source.shape(key)
    if not shape:
        yield 0, 1
        return
    row_bytes = source.dtype(key).itemsize * max(1, math.prod(shape[1:]))
    step = max(1, max_bytes // max(row_bytes, 4))
    for start in range(0, shape[0], step):
        yield start, min(shape[0], start + step)


def whole(source, key) -> torch.Tensor:
    shape = source.shape(key)
    return source.rows(key, 0, shape[0] if shape else 1)


def chain(source, steps, device):
    """The source of the grown model: one `StepSource` per concrete `StepPlan`."""
    for step in steps:
        source = StepSource(source, step, device)
    return source


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


def _scatter(tensor: torch.Tensor, index: tuple, value) -> None:
    """``tensor[index] = value`` with per-axis (outer-product) indexing."""
    tensor[outer(index, tensor.shape, tensor.device)] = value


def _as_slice(ix: torch.Tensor, device) -> torch.Tensor | slice:
    """A slice for consecutive indices (a view, no copy), else the index tensor on ``device``."""
    first, count = int(ix[0]), len(ix)
    if int(ix[-1]) - first + 1 == count and (count < 3 or bool((ix[1:] - ix[:-1] == 1).all())):
        return slice(first, first + count)
    return ix.to(device)


def _tile_seed(seed: int, tile: int) -> int:
    return (seed * 0x9E3779B97F4A7C15 + tile * 0xBF58476D1CE4E5B9) % (1 << 63)


@functools.lru_cache(maxsize=4096)
def _positions(sel) -> torch.Tensor:
    """Every index of a concrete selection, increasing, as a CPU tensor."""
    ix = indices(sel, "cpu")
    if isinstance(ix, slice):
        return torch.arange(ix.start, ix.stop)
    return ix


def _like_key(edit: TensorEdit):
    for block in edit.blocks:
        if isinstance(block.source, Random) and block.source.like is not None:
            return block.source.like
    return None


