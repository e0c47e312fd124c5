"""Block algebra over SymPy matrix expressions, with a trace of every rule applied.

SymPy's `block_collapse` does not push element-wise functions, Hadamard products or
broadcast vectors through blocks. These rules do, each one small and separately tested:

* ``elementwise``: f.([A, B]) -> [f.(A), f.(B)]
* ``hadamard``: [A, B] o [C, D] -> [A o C, B o D] (splitting a OneMatrix/ZeroMatrix conformally)
* ``split_const``: OneMatrix/ZeroMatrix next to a block matrix in a product splits conformally
* ``zero_elementwise``: f.(0) -> 0, **only** when f(0) simplifies to 0
* ``const_elementwise``: f.(c*1) -> f(c)*1 for a constant block
* ``zero_hadamard``: A o 0 -> 0
* SymPy's own ``bc_matmul``, ``bc_matadd``, ``bc_transpose`` and block unpacking.

`collapse` applies them bottom-up to a fixed point and records ``(rule, count)``.

>>> import sympy as sp
>>> from sympy import MatrixSymbol, ZeroMatrix, BlockMatrix
>>> n, h, p, q = sp.symbols("n h p q", positive=True, integer=True)
>>> x, W, R = MatrixSymbol("x", n, h), MatrixSymbol("W", h, p), MatrixSymbol("R", h, q)
>>> relu = elementwise_fn("relu")
>>> y = apply_fn(relu, x * BlockMatrix([[W, R]])) * BlockMatrix([[MatrixSymbol("V", p, h)], [ZeroMatrix(q, h)]])
>>> trace = Trace()
>>> collapse(y, trace)
Lambda(t, relu(t)).(x*W)*V
"""

from __future__ import annotations

import functools
from collections import Counter

import sympy as sp
from sympy import BlockMatrix, HadamardProduct, MatAdd, MatMul, MatrixExpr, MatrixSymbol, OneMatrix, ZeroMatrix
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction as EAF
from sympy.matrices.expressions.blockmatrix import bc_matadd, bc_matmul, bc_transpose, bc_unpack, deblock
from sympy.matrices.expressions.transpose import Transpose
from sympy.strategies import exhaust

_T = sp.Symbol("t")


class Activation(sp.Function):
    """An element-wise activation, opaque but for its exact value at 0 (``AT_ZERO``).

    The only fact the rules use is f(0); `tests/test_algebra.py` checks each declared value
    against the exact formula (relu = max(0, t), gelu = t(1 + erf(t/sqrt 2))/2,
    gelu_tanh = t(1 + tanh(sqrt(2/pi)(t + 0.044715 t^3)))/2, silu = t/(1 + e^-t)) and
    against torch.
    """

    AT_ZERO = sp.Integer(0)

    @classmethod
    def eval(cls, x):
        if x.is_zero:
            return cls.AT_ZERO
        return None


class relu(Activation):  # noqa: N801 (printed as the activation's name)
    pass


class gelu(Activation):  # noqa: N801
    pass


class gelu_tanh(Activation):  # noqa: N801
    pass


class silu(Activation):  # noqa: N801
    pass


FUNCTIONS = {cls.__name__: sp.Lambda(_T, cls(_T)) for cls in (relu, gelu, gelu_tanh, silu)}


@functools.lru_cache(maxsize=None)
def _at_zero(fn: sp.Lambda):
    """f(0), simplified: the side condition of ``zero_elementwise``."""
    return sp.simplify(fn(0))


def elementwise_fn(name: str) -> sp.Lambda:
    """The scalar function of an activation, with one canonical bound variable."""
    return FUNCTIONS[name]


def apply_fn(fn: sp.Lambda, arg: MatrixExpr) -> MatrixExpr:
    return EAF(fn, arg)


class Trace:
    """Counts of rewrite rules and lemmas applied during one proof."""

    def __init__(self):
        self.rules: Counter = Counter()
        self.lemmas: list[str] = []

    def rule(self, name: str) -> None:
        self.rules[name] += 1

    def lemma(self, name: str) -> None:
        if name not in self.lemmas:
            self.lemmas.append(name)


def _grid(block: BlockMatrix, fn) -> BlockMatrix:
    b = block.blocks
    return BlockMatrix([[fn(b[i, j], i, j) for j in range(b.shape[1])] for i in range(b.shape[0])])


def _split(matrix: MatrixExpr, rows, cols) -> BlockMatrix | None:
    """A OneMatrix or ZeroMatrix cut conformally to the given block sizes."""
    if isinstance(matrix, (OneMatrix, ZeroMatrix)):
        kind = type(matrix)
        return BlockMatrix([[kind(r, c) for c in cols] for r in rows])
    coeff, mats = matrix.as_coeff_matrices() if isinstance(matrix, MatMul) else (1, (matrix,))
    if len(mats) == 1 and isinstance(mats[0], OneMatrix):
        return BlockMatrix([[coeff * OneMatrix(r, c) for c in cols] for r in rows])
    return None


# ------------------------------------------------------------------ rules
def r_elementwise(e, trace):
    if isinstance(e.expr, BlockMatrix):
        trace.rule("elementwise")
        return _grid(e.expr, lambda b, i, j: EAF(e.function, b))
    if isinstance(e.expr, ZeroMatrix):
        if _at_zero(e.function) == 0:
            trace.rule("zero_elementwise (f(0)=0)")
            return ZeroMatrix(*e.shape)
        trace.rule("const_elementwise")
        return e.function(0) * OneMatrix(*e.shape)
    coeff, mats = e.expr.as_coeff_matrices() if isinstance(e.expr, MatMul) else (None, ())
    if len(mats) == 1 and isinstance(mats[0], OneMatrix):
        trace.rule("const_elementwise")
        return sp.simplify(e.function(coeff)) * OneMatrix(*e.shape)
    return e


def r_hadamard(e, trace):
    args = list(e.args)
    if any(isinstance(a, ZeroMatrix) for a in args):
        trace.rule("zero_hadamard")
        return ZeroMatrix(*e.shape)
    blocks = [a for a in args if isinstance(a, BlockMatrix)]
    if not blocks:
        return e
    ref = blocks[0]
    rows, cols = ref.rowblocksizes, ref.colblocksizes
    parts = []
    for a in args:
        part = a if isinstance(a, BlockMatrix) else _split(a, rows, cols)
        if part is None or part.rowblocksizes != rows or part.colblocksizes != cols:
            return e
        parts.append(part)
    trace.rule("hadamard")
    return _grid(ref, lambda b, i, j: HadamardProduct(*[p.blocks[i, j] for p in parts]).doit())


def r_matmul(e, trace):
    coeff, mats = e.as_coeff_matrices()
    mats = list(mats)
    if len(mats) == 1 and isinstance(mats[0], BlockMatrix) and coeff != 1:
        trace.rule("scalar_into_blocks")
        return _grid(mats[0], lambda b, i, j: coeff * b)
    for i in range(len(mats) - 1):
        a, b = mats[i], mats[i + 1]
        if isinstance(a, BlockMatrix) and a.blockshape[1] > 1 and not isinstance(b, BlockMatrix):
            split = _split(b, a.colblocksizes, [b.shape[1]])
            if split is not None:
                mats[i + 1] = split
                trace.rule("split_const")
                return coeff * MatMul(*mats)
        if isinstance(b, BlockMatrix) and b.blockshape[0] > 1 and not isinstance(a, BlockMatrix):
            split = _split(a, [a.shape[0]], b.rowblocksizes)
            if split is not None:
                mats[i] = split
                trace.rule("split_const")
                return coeff * MatMul(*mats)
    if any(isinstance(m, BlockMatrix) for m in mats):
        out = bc_matmul(e)
        if out != e:
            trace.rule("block_matmul")
            return out
    elif any(isinstance(m, MatAdd) for m in mats):
        trace.rule("distribute")
        return e.expand().doit()
    return e


def r_matadd(e, trace):
    args = list(e.args)
    blocks = [a for a in args if isinstance(a, BlockMatrix)]
    if blocks and len(blocks) < len(args):
        ref = blocks[0]
        parts = [a if isinstance(a, BlockMatrix) else _split(a, ref.rowblocksizes, ref.colblocksizes) for a in args]
        if all(p is not None for p in parts):
            trace.rule("split_const")
            return MatAdd(*parts)
        return e
    if len(blocks) > 1:
        out = bc_matadd(e)
        if out != e:
            trace.rule("block_add")
            return out
    return e


def r_transpose(e, trace):
    if isinstance(e.arg, BlockMatrix):
        trace.rule("block_transpose")
        return bc_transpose(e)
    return e


def r_unpack(e, trace):
    out = bc_unpack(deblock(e))
    if out != e:
        trace.rule("block_unpack")
    return out


_LEAVES = (MatrixSymbol, ZeroMatrix, OneMatrix)


def collapse(expr, trace: Trace, extra=None):
    """Rewrite ``expr`` bottom-up to a fixed point with the block rules (and ``extra``)."""
    table = {
        EAF: r_elementwise, HadamardProduct: r_hadamard, MatMul: r_matmul, MatAdd: r_matadd,
        Transpose: r_transpose, BlockMatrix: r_unpack,
    }
    table.update(extra or {})

    def step(e):
        for kind, rule in table.items():
            if isinstance(e, kind):
                out = rule(e, trace)
                if out is not e and out != e:
                    return out.doit(deep=False) if isinstance(out, (MatAdd, MatMul)) else out
                return e
        return e

    def walk(e):
        """Bottom-up: rebuild a node only when one of its matrix arguments changed."""
        if isinstance(e, BlockMatrix):
            blocks = e.blocks
            new = [[walk(blocks[i, j]) for j in range(blocks.shape[1])] for i in range(blocks.shape[0])]
            if any(new[i][j] is not blocks[i, j] for i in range(blocks.shape[0]) for j in range(blocks.shape[1])):
                e = BlockMatrix(new)
        elif isinstance(e, MatrixExpr) and not isinstance(e, _LEAVES):
            args = [walk(a) if isinstance(a, MatrixExpr) else a for a in e.args]
            if any(a is not b for a, b in zip(args, e.args)):
                e = e.func(*args)
                if isinstance(e, (MatAdd, MatMul)):
                    e = e.doit(deep=False)
        return exhaust(step)(e)

    result = exhaust(walk)(expr)
    if isinstance(result, MatrixExpr):
        result = result.doit()
        if isinstance(result, (MatAdd, MatMul)):
            expanded = result.expand().doit()
            if expanded != result:
                trace.rule("distribute")
                result = expanded
    return result
