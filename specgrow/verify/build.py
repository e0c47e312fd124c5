"""From a `TensorEdit` to symbolic block matrices the prover can rewrite.

The old tensor is cut, on each axis, at every boundary an `Old` block reads from; each
piece becomes a `MatrixSymbol`. The new tensor is cut on the same boundaries (its own
segments refined where a read spans several old pieces), and each cell becomes the old
piece it reads (times its scale, plus ``sign * eta * N`` for cancelling noise), a
`ZeroMatrix`, ``c * OneMatrix``, or a fresh `MatrixSymbol` for random values: the proof
must then hold whatever those values are.

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
        return sp.expand((self.stop - self.start) / self.step)

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


@dataclass
class Symbolic:
    new: sp.MatrixExpr  # the grown tensor, transposed, in segment order
    old: sp.MatrixExpr  # the old tensor, transposed, cut into the same pieces
    placements: tuple[Placement, ...]  # for the per-head axis
    segments: tuple  # the new per-head/axis segments of each axis (structure, for the shared-permutation check)


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
    pieces = _pieces(name, cuts, env, edit.source in zeros)
    cells, placements = [], []
    for index in _grid(segs):
        cell = [segs[a][i] for a, i in enumerate(index)]
        block = _block_at(edit, cell, env)
        cells.append(_cell(edit, block, cell, cuts, pieces, env, name, len(cells), placements, zeros))
    shape = [len(s) for s in segs]
    new = _assemble(cells, shape)
    old = _assemble([pieces[i] for i in _grid([range(len(c) - 1) for c in cuts])],
                    [len(c) - 1 for c in cuts])
    if ndim == 2:
        new, old = new.T, old.T
    return Symbolic(new, old, tuple(dict.fromkeys(placements)), tuple(segs))


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


def _pieces(name, cuts, env, zero=False):
    pieces = {}
    for index in _grid([range(len(c) - 1) for c in cuts]):
        sizes = [sp.expand(cuts[a][i + 1] - cuts[a][i]) for a, i in enumerate(index)]
        label = ",".join(f"{cuts[a][i]}:{cuts[a][i + 1]}" for a, i in enumerate(index))
        dims = sizes if len(sizes) == 2 else [1, sizes[0]]
        pieces[index] = ZeroMatrix(*dims) if zero else MatrixSymbol(f"{name}[{label}]", *dims)
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


def _cell(edit, block, cell, cuts, pieces, env, name, serial, placements, zeros):
    dims = [c.size for c in cell]
    shape = dims if len(dims) == 2 else [1, dims[0]]
    src = block.source
    if isinstance(src, Const):
        return ZeroMatrix(*shape) if src.value == 0 else mul(exact(src.value), OneMatrix(*shape))
    if isinstance(src, Random):
        if src.param == 0 or (src.dist == "like_old" and src.like in zeros):
            return ZeroMatrix(*shape)  # no spread around a zero mean
        return MatrixSymbol(f"R{serial}:{name}", *shape)
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
    value = mul(sp.sympify(src.scale), pieces[tuple(index)])
    if src.noise is not None:
        noise = MatrixSymbol(f"N{src.noise.seed % 10007}:{name}", *shape)
        value = add(value, mul(src.noise.sign * exact(src.noise.std), noise))
    return value


def _assemble(cells, shape):
    if len(shape) == 1:
        row = list(cells)
        return row[0] if len(row) == 1 else BlockMatrix([row])
    rows = [cells[i * shape[1]:(i + 1) * shape[1]] for i in range(shape[0])]
    if shape == [1, 1]:
        return rows[0][0]
    return BlockMatrix(rows)
