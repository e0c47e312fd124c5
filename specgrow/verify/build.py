"""From a `TensorEdit` to symbolic block matrices the prover can rewrite.

The old tensor is cut, on each axis, at every boundary an `Old` block reads from; each
piece becomes a `MatrixSymbol`. The new tensor is cut on the same boundaries (its own
segments refined where a read spans several old pieces), and each cell becomes what the
executor (`specgrow.lower.stream`) writes there, read by the one meaning of each block that
`specgrow.ir` defines: the old piece it reads times its scale, plus ``sign * eta * Z`` for
cancelling noise; ``c * OneMatrix`` for a constant (`ZeroMatrix` for 0); ``s * Z`` or
``a * U`` for normal and uniform draws; ``mean + std * f * Z`` for ``like_old``, where the
old tensor's mean and std are unknown scalars (zero only for a tensor known to be exactly
zero). Draws are fresh `MatrixSymbol`s, so the proof must hold whatever their values are.
No parameter value is special: a factor of 0 leaves the mean, a std of 0 the zero matrix.

`Symbolic.cells` and `Symbolic.atoms` say which executor quantity each symbol stands for,
so the tests can fill the prover's matrices with the executor's own values and compare
(translation validation, ``tests/test_translation.py``).

Per-head axes (`Grouped` selections) are cut *within one generic head*: every head is
edited alike, so one head's proof covers all. Strided selections (RoPE's interleaved
placement) are listed in segment order, and the placement of each old segment is kept
for the rotary lemma.

Matrices are returned transposed (``[in, out]``) so that a layer reads ``x * W``.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass

import sympy as sp
from sympy import BlockMatrix, MatrixSymbol, OneMatrix, ZeroMatrix

from specgrow.ir import Const, Grouped, Old, Random, Range, sym
from specgrow.verify.algebra import add, mul


class Stuck(Exception):
    """The edit has a structure the prover has no rule for (verdict UNKNOWN)."""


@dataclass(frozen=True)
class Seg:
    """A run of indices along one axis: symbolic start/stop/step plus concrete values."""

    start: sp.Expr
    stop: sp.Expr
    step: sp.Expr
    lo: int
    hi: int
    stride: int

    @property
    def size(self):
        """The number of indices: ``ceil((stop - start) / step)``, written without the ceiling
        by the remainder at the concrete dims (``Range(1, k, 2)`` holds k/2 indices for even k)."""
        remainder = self.count * self.stride - (self.hi - self.lo)
        return sp.expand((self.stop - self.start + remainder) / self.step)

    @property
    def count(self) -> int:
        return len(range(self.lo, self.hi, self.stride))


@dataclass(frozen=True)
class Placement:
    """Old per-head indices ``[old_lo, old_hi)`` land at ``new_start + new_step * t``."""

    old_start: sp.Expr
    old_stop: sp.Expr
    new_start: sp.Expr
    new_step: sp.Expr
    scale: sp.Expr


@dataclass(frozen=True)
class Atom:
    """What the executor puts where a symbol stands.

    ``kind``: ``old`` (the old tensor at ``where``: per axis a concrete ``(lo, hi)`` inside one
    head on per-head axes), ``draw`` and ``noise`` (the draw of ``block`` at the block-relative
    positions ``where``: per axis ``(offset, count)``), ``mean`` and ``std`` (of the old
    tensor ``like``).
    """

    kind: str
    where: tuple = ()
    block: object = None
    like: tuple | None = None


@dataclass
class Symbolic:
    new: sp.MatrixExpr  # the grown tensor, transposed, in segment order
    old: sp.MatrixExpr  # the old tensor, transposed, cut into the same pieces
    placements: tuple[Placement, ...]  # for the per-head axis
    segments: tuple  # the new per-head/axis segments of each axis (structure, for the shared-permutation check)
    cells: tuple = ()  # (per-axis `Seg`s of the new tensor, the cell's value), in edit axis order
    atoms: dict | None = None  # symbol -> `Atom`


def _env(edit):
    return {sym(name): sp.Integer(value) for name, value in edit.dims}


@functools.lru_cache(maxsize=1024)
def exact(value) -> sp.Rational:
    """A spec's number as the exact rational it is written as (0.02 -> 1/50; ints stay ints)."""
    return sp.Integer(value) if isinstance(value, int) else sp.Rational(repr(float(value)))


def _inner(sel):
    return sel.inner if isinstance(sel, Grouped) else sel


def _seg(rng, env) -> Seg:
    return _seg_at(rng, tuple(env.items()))


@functools.lru_cache(maxsize=4096)
def _seg_at(rng, env) -> Seg:
    env = dict(env)
    lo, hi, stride = (int(sp.sympify(v).xreplace(env)) for v in (rng.start, rng.stop, rng.step))
    return Seg(sp.sympify(rng.start), sp.sympify(rng.stop), sp.sympify(rng.step), lo, hi, stride)


def _order(points, env, before=()):
    """Distinct cut points sorted by value; ties ordered by the reads' ``start <= stop``.

    Tied points stay apart: their difference is a symbolic size that is 0 here.
    """
    unique = []
    for p in points:
        p = sp.sympify(p)
        if not any(sp.expand(p - q) == 0 for q in unique):
            unique.append(p)
    value = {p: int(p.xreplace(env)) for p in unique}
    ordered = []
    pending = sorted(unique, key=lambda p: (value[p], sp.default_sort_key(p)))
    while pending:
        tied = [p for p in pending if value[p] == value[pending[0]]]
        ready = [p for p in tied if not any(
            _same(b, p) and _same(a, q) for a, b in before for q in tied if q is not p)]
        choice = (ready or tied)[0]
        ordered.append(choice)
        pending.remove(choice)
    return ordered


def _same(a, b) -> bool:
    return sp.expand(a - b) == 0


def symbolize(edit, name: str, zeros=frozenset()) -> Symbolic:
    """The symbolic new and old tensors of ``edit`` (per-head view on `Grouped` axes).

    ``zeros``: the (role, layer) of old tensors known to be exactly zero; their pieces are
    `ZeroMatrix`, and so are ``like_old`` draws around them (zero mean, zero spread).
    """
    env = _env(edit)
    ndim = len(edit.new_shape)
    per_head = [any(isinstance(b.where[a], Grouped) for b in edit.blocks) for a in range(ndim)]
    if any(per_head):
        for b in edit.blocks:
            for a in range(ndim):
                if per_head[a] and not isinstance(b.where[a], Grouped):
                    raise Stuck(f"{name}: axis {a} mixes per-head and whole-axis selections")
    # old cuts per axis
    cuts = []
    for a in range(ndim):
        heads = per_head[a]
        points = [sp.Integer(0), _old_axis_size(edit, a, heads)]
        reads = []
        for b in edit.blocks:
            if isinstance(b.source, Old):
                sel = _inner(b.source.index[a])
                if sp.sympify(sel.step) != 1:
                    raise Stuck(f"{name}: strided read of the old tensor")
                points += [sel.start, sel.stop]
                reads.append((sp.sympify(sel.start), sp.sympify(sel.stop)))
        cuts.append(_order(points, env, reads))
    # new segments per axis, refined at old cuts inside each read
    segs = []
    for a in range(ndim):
        runs = {}
        for b in edit.blocks:
            s = _seg(_inner(b.where[a]), env)
            runs.setdefault((s.lo, s.hi, s.stride), s)
        splits = {key: set() for key in runs}
        for b in edit.blocks:
            if not isinstance(b.source, Old):
                continue
            where, read = _seg(_inner(b.where[a]), env), _seg(_inner(b.source.index[a]), env)
            inside = [c for c in cuts[a] if read.lo < int(c.xreplace(env)) < read.hi]
            if inside and where.stride != 1:
                raise Stuck(f"{name}: a strided write spans several old pieces")
            for c in inside:
                splits[(where.lo, where.hi, where.stride)].add((c, read.start, where.start))
        axis = []
        for key, s in sorted(runs.items()):
            points = [s.start] + [ws + (c - rs) for c, rs, ws in splits[key]] + [s.stop]
            points = _order(points, env)
            for lo, hi in zip(points, points[1:]):
                axis.append(_seg(Range(lo, hi, s.step), env))
        segs.append(tuple(axis))
    _check_tiling(edit, segs, per_head, env, name)
    atoms: dict = {}
    pieces = _pieces(name, cuts, env, edit.source in zeros, atoms)
    cells, placements = [], []
    for index in _grid(segs):
        cell = [segs[a][i] for a, i in enumerate(index)]
        block = _block_at(edit, cell, env)
        cells.append(_cell(edit, block, cell, cuts, pieces, env, name, len(cells), placements, zeros, atoms))
    shape = [len(s) for s in segs]
    new = _assemble(cells, shape)
    old = _assemble([pieces[i] for i in _grid([range(len(c) - 1) for c in cuts])],
                    [len(c) - 1 for c in cuts])
    if ndim == 2:
        new, old = new.T, old.T
    located = tuple((tuple(segs[a][i] for a, i in enumerate(index)), value)
                    for index, value in zip(_grid(segs), cells))
    return Symbolic(new, old, tuple(dict.fromkeys(placements)), tuple(segs), located, atoms)


def carried(step_plan, known: frozenset, marked) -> frozenset:
    """A (role, layer) status tracked from step to step (zero, tied, constant): the tensors a step neither
    writes nor reads keep theirs; each tensor it writes has it when ``marked(edit)``."""
    written = {(e.role, e.layer) for e in step_plan.edits}
    consumed = {e.source for e in step_plan.edits if e.source is not None}
    kept = {key for key in known if key not in written and key not in consumed}
    return frozenset(kept | {(e.role, e.layer) for e in step_plan.edits if marked(e)})


def is_zero(edit, zeros=frozenset()) -> bool:
    """True when the prover reads every element of ``edit``'s new tensor as exactly zero.

    The zero-tracking between steps asks this, so it reads blocks exactly as the proofs do.
    A tensor that reads a nonzero old tensor is not zero (cheaply decided without building it).
    """
    if any(isinstance(b.source, Old) for b in edit.blocks) and edit.source not in zeros:
        return False
    if any(isinstance(b.source, Const) and b.source.value != 0 for b in edit.blocks):
        return False
    try:
        cells = symbolize(edit, "zero-check", zeros).cells
    except Stuck:
        return False
    return all(isinstance(value, ZeroMatrix) for _, value in cells)


def _old_axis_size(edit, axis, per_head):
    if not per_head:
        return sp.sympify(edit.old_shape[axis]) if edit.old_shape else sp.sympify(edit.new_shape[axis])
    for b in edit.blocks:
        if isinstance(b.source, Old):
            return sp.sympify(b.source.index[axis].width)
    return sp.sympify(_inner(edit.blocks[0].where[axis]).stop)


def _grid(axes):
    import itertools

    return itertools.product(*[range(len(a)) for a in axes])


def _pieces(name, cuts, env, zero, atoms):
    pieces = {}
    for index in _grid([range(len(c) - 1) for c in cuts]):
        sizes = [sp.expand(cuts[a][i + 1] - cuts[a][i]) for a, i in enumerate(index)]
        label = ",".join(f"{cuts[a][i]}:{cuts[a][i + 1]}" for a, i in enumerate(index))
        dims = sizes if len(sizes) == 2 else [1, sizes[0]]
        if zero:
            pieces[index] = ZeroMatrix(*dims)
            continue
        piece = pieces[index] = MatrixSymbol(f"{name}[{label}]", *dims)
        atoms[piece] = Atom("old", tuple((int(cuts[a][i].xreplace(env)), int(cuts[a][i + 1].xreplace(env)))
                                         for a, i in enumerate(index)))
    return pieces


def _block_at(edit, cell, env):
    """The one block that writes ``cell`` (none or several: the edit is malformed)."""
    found = [b for b in edit.blocks
             if all(_contains(_seg(_inner(b.where[a]), env), c) for a, c in enumerate(cell))]
    if len(found) != 1:
        raise Stuck(f"a cell of the new tensor is written by {len(found)} blocks, not 1")
    return found[0]


def _contains(outer: Seg, inner: Seg) -> bool:
    if outer.stride == 1:
        return outer.lo <= inner.lo and inner.hi <= outer.hi and (inner.stride == 1 or inner.count == 0)
    return (outer.stride, outer.lo % outer.stride) == (inner.stride, inner.lo % inner.stride) and \
        outer.lo <= inner.lo and inner.hi <= outer.hi


def _check_tiling(edit, segs, per_head, env, name):
    """Each axis's segments cover the new axis (or one new head) exactly once."""
    for a, axis in enumerate(segs):
        covered = sorted(i for s in axis for i in range(s.lo, s.hi, s.stride))
        sel = edit.blocks[0].where[a]
        size = sel.width if per_head[a] else edit.new_shape[a]
        if covered != list(range(int(sp.sympify(size).xreplace(env)))):
            raise Stuck(f"{name}: the blocks do not tile axis {a} exactly once")


def _cell(edit, block, cell, cuts, pieces, env, name, serial, placements, zeros, atoms):
    dims = [c.size for c in cell]
    shape = dims if len(dims) == 2 else [1, dims[0]]
    src = block.source
    if isinstance(src, Const):
        return _scaled(exact(src.value), OneMatrix(*shape))
    if isinstance(src, Random):
        draw = MatrixSymbol(f"R{serial}:{name}", *shape)
        atoms[draw] = Atom("draw", _relative(block, cell, env), block)
        return _random(src, draw, zeros, atoms)
    if not isinstance(src, Old):
        raise Stuck(f"{name}: unknown block source")
    index = []
    for a, c in enumerate(cell):
        where, read = _seg(_inner(block.where[a]), env), _seg(_inner(src.index[a]), env)
        offset = (c.lo - where.lo) // where.stride
        lo = read.lo + offset
        hi = lo + c.count
        match = [i for i in range(len(cuts[a]) - 1)
                 if int(cuts[a][i].xreplace(env)) == lo and int(cuts[a][i + 1].xreplace(env)) == hi]
        if not match:
            raise Stuck(f"{name}: a cell reads across old pieces")
        index.append(match[-1] if c.count == 0 else match[0])
        if isinstance(block.where[a], Grouped):
            placements.append(Placement(cuts[a][index[-1]], cuts[a][index[-1] + 1],
                                        c.start, c.step, sp.sympify(src.scale)))
    value = _scaled(sp.sympify(src.scale), pieces[tuple(index)])
    if src.shift != 0:
        value = add(value, _scaled(sp.sympify(src.shift), OneMatrix(*value.shape)))
    if src.noise is not None:
        # the executor draws a block's noise from its seed by block-relative position: two
        # blocks of one seed hold equal values exactly where seed, position and block shape agree
        where = _relative(block, cell, env)
        lengths = [_seg(_inner(s), env).count * (s.groups if isinstance(s, Grouped) else 1)
                   for s in block.where]
        label = ",".join(f"{o}+{n}/{total}" for (o, n), total in zip(where, lengths))
        noise = MatrixSymbol(f"N{src.noise.seed}[{label}]:{name}", *shape)
        atoms[noise] = Atom("noise", where, block)
        value = add(value, _scaled(src.noise.sign * exact(src.noise.std), noise))
    return value


def _scaled(factor, matrix):
    """``factor * matrix``, the `ZeroMatrix` when the factor is 0."""
    return ZeroMatrix(*matrix.shape) if factor == 0 else mul(factor, matrix)


def _random(src, draw, zeros, atoms):
    """The meaning of a `Random` block over its standard draw (see `specgrow.ir.Random`)."""
    if src.dist != "like_old":
        return _scaled(exact(src.param), draw)
    if src.like in zeros:  # an all-zero tensor: mean 0, std 0
        return ZeroMatrix(*draw.shape)
    role, layer = src.like
    mean = sp.Symbol(f"mean[{role}@{layer}]", real=True)
    std = sp.Symbol(f"std[{role}@{layer}]", nonnegative=True)
    atoms[mean], atoms[std] = Atom("mean", like=src.like), Atom("std", like=src.like)
    return add(mul(mean, OneMatrix(*draw.shape)), _scaled(exact(src.param) * std, draw))


def _relative(block, cell, env):
    """Per axis, ``(offset, count)`` of the cell inside its block (within one head on per-head axes)."""
    out = []
    for a, c in enumerate(cell):
        where = _seg(_inner(block.where[a]), env)
        out.append(((c.lo - where.lo) // where.stride, c.count))
    return tuple(out)


def _assemble(cells, shape):
    if len(shape) == 1:
        row = list(cells)
        return row[0] if len(row) == 1 else BlockMatrix([row])
    rows = [cells[i * shape[1]:(i + 1) * shape[1]] for i in range(shape[0])]
    if shape == [1, 1]:
        return rows[0][0]
    return BlockMatrix(rows)
