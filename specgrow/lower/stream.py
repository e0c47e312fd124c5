"""Grow tensors lazily, one band of rows at a time.

A *source* answers ``shape``, ``dtype`` and ``rows(key, start, stop)`` for tensors keyed
``(role, layer)``. `StepSource` is the state after concrete steps over an input: asked for
rows of a grown tensor, it asks the state before the step that made them for just the rows
that step's blocks read, and so on back to the input, with loops and an explicit stack rather
than one call per step (a spec of any length). `chain` gives the grown model without ever
holding it: a writer pulls each output tensor band by band, so memory holds about one band.

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

import bisect
import math

import torch

from specgrow.errors import CheckpointError
from specgrow.ir import Const, Old, Random, StepPlan, TensorEdit
from specgrow.lower.selection import as_slice, indices, outer, positions  # noqa: F401 (outer: imported from here)
from specgrow.lower.selection import scatter as _scatter
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
    """The state after concrete `StepPlan` s (one, or a sequence) over ``prev``, computed on demand.

    Level ``i`` is the state after the first ``i`` steps, level 0 is ``prev``. Rows asked of a
    level are traced back by a loop (`_resolve`) to the step whose edit makes them; the bands
    that edit reads from the level below are asked for in turn on an explicit stack (`_rows`),
    never by one Python call per step, so a chain of any length stays within the recursion
    limit. A level allocates its band once its first block's value is at hand, so the levels
    still waiting for the bands they asked for hold none.
    """

    def __init__(self, prev, steps, device):
        self.prev, self.device = prev, torch.device(device)
        steps = [steps] if isinstance(steps, StepPlan) else list(steps)
        self.depth = len(steps)
        self._edits = [{(e.role, e.layer): e for e in step.edits} for step in steps]
        self._identity = {(level, key) for level, edits in enumerate(self._edits, 1)
                          for key, edit in edits.items() if edit.is_identity()}
        self._edited: dict = {}  # key -> the increasing levels whose step edits it
        for level, edits in enumerate(self._edits, 1):
            for key in edits:
                self._edited.setdefault(key, []).append(level)
        self._first, self._keys = _key_order(prev.keys(), self._edits)
        self._dtypes: dict = {}
        self._moments: dict = {}
        # the tensor `_measure` read last, when it fits in one band: measuring the step above,
        # which reads the same rows, then costs one step instead of every step below
        self._measured: dict = {}

    def keys(self) -> list:
        return list(self._keys)

    def shape(self, key) -> tuple[int, ...]:
        return self._shape(self.depth, key)

    def dtype(self, key) -> torch.dtype:
        return self._dtype(self.depth, key)

    def rows(self, key, start: int, stop: int) -> torch.Tensor:
        return self._rows(self.depth, key, start, stop)

    def after(self, level: int) -> Level:
        """The state after the first ``level`` steps, as a source sharing this chain's caches."""
        return Level(self, level)

    # ------------------------------------------------------------ walking the levels
    def _resolve(self, level: int, key) -> tuple[int, Key]:
        """``(level, key)`` of the edit that makes ``key`` after ``level`` steps (level 0: the input)."""
        while True:
            levels = self._edited.get(key, ())
            at = bisect.bisect_right(levels, level)
            if at == 0:
                return 0, key
            level = levels[at - 1]
            if (level, key) not in self._identity:
                return level, key
            level, key = level - 1, self._edits[level - 1][key].source

    def _shape(self, level: int, key) -> tuple[int, ...]:
        level, key = self._resolve(level, key)
        return tuple(self._edits[level - 1][key].new_shape) if level else self.prev.shape(key)

    def _dtype(self, level: int, key) -> torch.dtype:
        """A new tensor takes its source's dtype, else its ``like_old`` tensor's, else the first tensor's."""
        seen = []
        while (level, key) not in self._dtypes:
            seen.append((level, key))
            level, key = self._resolve(level, key)
            if level == 0:
                self._dtypes[(0, key)] = self.prev.dtype(key)
                break
            edit = self._edits[level - 1][key]
            seen.append((level, key))
            like = edit.source if edit.source is not None else _like_key(edit)
            level, key = level - 1, like if like is not None else self._first[level - 1]
        dtype = self._dtypes[(level, key)]
        self._dtypes.update(dict.fromkeys(seen, dtype))
        return dtype

    def _rows(self, level: int, key, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of ``key`` after ``level`` steps: a stack of pending `_build` s,
        each waiting for the band of the level below that it asked for."""
        stack: list = []
        value = self._start(stack, level, key, start, stop)
        while stack:
            try:
                request = stack[-1].send(value)
            except StopIteration as done:
                stack.pop()
                value = done.value
            else:
                value = self._start(stack, *request)
        return value

    def _start(self, stack: list, level: int, key, start: int, stop: int):
        """The rows when the input holds them, else None after pushing the `_build` that makes them."""
        level, key = self._resolve(level, key)
        if level == 0:
            return self.prev.rows(key, start, stop)
        stack.append(self._build(level, key, start, stop))
        return None

    # ------------------------------------------------------------ one band of a grown tensor
    def _build(self, level: int, key, start: int, stop: int):
        """Rows of the tensor step ``level`` edits (a generator: it yields each band it reads
        below as ``(level, key, start, stop)`` and is sent the rows)."""
        edit = self._edits[level - 1][key]
        dtype = self._dtype(level, key)
        compute = torch.promote_types(dtype, torch.float32)
        out = None
        for block in edit.blocks:
            rows = positions(block.where[0])
            j0, j1 = int(torch.searchsorted(rows, start)), int(torch.searchsorted(rows, stop))
            if j0 == j1:
                continue
            if isinstance(block.source, Old):
                repeated = len(block.where) - len(block.source.index)  # 1: the old selection repeats along axis 0
                wanted = positions(block.source.index[0])
                wanted = wanted if repeated else wanted[j0:j1]
                low = int(wanted.min())
                request = (level - 1, edit.source, low, int(wanted.max()) + 1)
                band = self._measured.get(request)
                band = (yield request) if band is None else band
                value = self._copy(block, band.to(self.device), wanted - low, j0, j1, compute)
                if repeated:
                    value = _repeated(block, value, j1 - j0)
            else:
                value = self._fill(level, block, j0, j1, compute)
            if out is None:
                out = self._empty(edit, start, stop, dtype)
            target = as_slice(rows[j0:j1] - start, self.device)
            rest = tuple(indices(sel, self.device) for sel in block.where[1:])
            _scatter(out, (target,) + rest, value if isinstance(value, float) else value.to(dtype))
        return out if out is not None else self._empty(edit, start, stop, dtype)

    def _empty(self, edit: TensorEdit, start: int, stop: int, dtype) -> torch.Tensor:
        return torch.empty((stop - start,) + tuple(edit.new_shape[1:]), dtype=dtype, device=self.device)

    def _fill(self, level: int, block, j0: int, j1: int, compute: torch.dtype) -> torch.Tensor | float:
        """Rows ``j0:j1`` of a ``Const`` or ``Random`` block, by the meaning `specgrow.ir` gives it.

        Arithmetic on draws is done in ``compute`` (the tensor's dtype, at least float32), so a
        float64 checkpoint gets float64 arithmetic.
        """
        src = block.source
        if isinstance(src, Const):
            return float(src.value)
        if not isinstance(src, Random):
            raise TypeError(f"unknown block source {src!r}")
        tail = tuple(sel.length() for sel in block.where[1:])
        values = self._draw(src.seed, "uniform" if src.dist == "uniform" else "normal",
                            block, j0, j1, tail).to(compute)
        if src.dist == "uniform":
            return (values * 2 - 1) * src.param
        if src.dist == "normal":
            return values * src.param
        mean, std = self._moments_of(src.like, level)
        return values * (std * src.param) + mean

    def _copy(self, block, band: torch.Tensor, rows, j0: int, j1: int, compute: torch.dtype) -> torch.Tensor:
        """Rows ``j0:j1`` of an ``Old`` block from ``band``, the old rows it reads (``rows`` within it)."""
        src = block.source
        value = band[as_slice(rows, self.device)]
        for axis, sel in enumerate(src.index[1:], start=1):
            ix = indices(sel, self.device)
            value = value[(slice(None),) * axis + (ix,)]
        if src.scale == 1 and src.noise is None and src.shift == 0:
            return value
        value = value.to(compute) * src.scale + src.shift
        if src.noise is not None:
            tail = tuple(sel.length() for sel in block.where[1:])
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

    # ------------------------------------------------------------ like_old moments
    def _moments_of(self, key, level: int | None = None) -> tuple[float, float]:
        """Mean and (unbiased) std of ``key`` before step ``level`` (default: the last step).

        Reading a tensor whole may need the moments of earlier steps' ``like_old`` blocks: those
        are measured first, deepest first, from a work list, so no measurement runs inside another.
        """
        if self.device.type == "meta":
            return 0.0, 0.0
        level = self.depth if level is None else level
        todo = [(level, key)]
        while todo:
            need = todo.pop()
            if need in self._moments:
                continue
            missing = [m for m in self._moment_needs(*need) if m not in self._moments]
            if missing:
                todo += [need] + missing
            else:
                self._moments[need] = self._measure(*need)
        return self._moments[(level, key)]

    def _moment_needs(self, level: int, key) -> list:
        """The ``(level, like key)`` moments that reading all of ``key`` before step ``level`` uses,
        the nearest step first (walking back along the sources of the edits that make it)."""
        needs = []
        at, key = self._resolve(level - 1, key)
        while at > 0:
            edit = self._edits[at - 1][key]
            needs += [(at, block.source.like) for block in edit.blocks
                      if isinstance(block.source, Random) and block.source.like is not None]
            if edit.source is None:
                break
            at, key = self._resolve(at - 1, edit.source)
        return needs

    def _measure(self, level: int, key) -> tuple[float, float]:
        """Mean and std of ``key`` before step ``level``, read band by band: per-band mean and sum
        of squared deviations, merged (Chan et al.)."""
        before = self.after(level - 1)
        count, mean, m2 = 0, 0.0, 0.0
        spans = list(bands(before, key))
        for start, stop in spans:
            band = before.rows(key, start, stop)
            if len(spans) == 1:
                self._measured = {(level - 1, key, start, stop): band}
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
        return mean, var ** 0.5


class Level:
    """The state after the first ``level`` steps of a `StepSource`, as a source (no ``keys``)."""

    def __init__(self, steps: StepSource, level: int):
        self.steps, self.level = steps, level

    def shape(self, key) -> tuple[int, ...]:
        return self.steps._shape(self.level, key)

    def dtype(self, key) -> torch.dtype:
        return self.steps._dtype(self.level, key)

    def rows(self, key, start: int, stop: int) -> torch.Tensor:
        return self.steps._rows(self.level, key, start, stop)


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
    """The source of the grown model: one `StepSource` over ``source`` for the concrete `StepPlan` s."""
    steps = list(steps)
    return StepSource(source, steps, device) if steps else source


def grow_state(state, plan, device) -> list[dict[str, torch.Tensor]]:
    """The named state after each step of a concrete plan, in memory (first: the input on ``device``)."""
    source = StateSource.of_state(state, plan.before, device)
    states = [{tensor_name(*key): t for key, t in source.tensors.items()}]
    for step in plan.steps:
        grown = chain(source, [step], device)
        source = StateSource({key: whole(grown, key) for key in grown.keys()})
        states.append({tensor_name(*key): t for key, t in source.tensors.items()})
    return states


def _repeated(block, value: torch.Tensor, count: int) -> torch.Tensor:
    """``value``, an ``Old`` block's selection of the old tensor's own axes, repeated ``count`` times along the
    block's leading axis (`specgrow.ir.Old` with fewer axes than its block; never with noise)."""
    if len(block.where) - len(block.source.index) != 1 or block.source.noise is not None:
        raise ValueError("an old selection repeats along the leading axis only, without noise")
    return value.unsqueeze(0).expand(count, *value.shape)


def _tile_seed(seed: int, tile: int) -> int:
    return (seed * 0x9E3779B97F4A7C15 + tile * 0xBF58476D1CE4E5B9) % (1 << 63)


def _key_order(keys: list, steps: list) -> tuple[list, list]:
    """(the first key before each step, the keys after the last step): a step's new tensors come
    after the old ones it neither edits nor consumes."""
    first = []
    for edits in steps:
        first.append(keys[0])
        consumed = {e.source for e in edits.values() if e.source is not None}
        keys = [k for k in keys if k not in consumed and k not in edits] + list(edits)
    return first, keys


def _like_key(edit: TensorEdit):
    for block in edit.blocks:
        if isinstance(block.source, Random) and block.source.like is not None:
            return block.source.like
    return None


