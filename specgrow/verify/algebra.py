"""Block algebra over SymPy matrix expressions, with a trace of every rule applied.

SymPy's `block_collapse` does not push element-wise functions, Hadamard products or
broadcast vectors through blocks. These rules do, each one small and separately tested:

* ``elementwise``: f.([A, B]) -> [f.(A), f.(B)]
* ``hadamard``: [A, B] o [C, D] -> [A o C, B o D] (splitting a OneMatrix/ZeroMatrix conformally)
* ``split_const``: OneMatrix/ZeroMatrix next to a block matrix in a product splits conformally
* ``zero_elementwise``: f.(0) -> 0, **only** when f(0) simplifies to 0
* ``const_elementwise``: f.(c*1) -> f(c)*1 for a constant block
* ``zero_hadamard``: A o 0 -> 0
* ``block_matmul``, ``block_add``, ``block_transpose``: products, sums and transposes of
  conformal block matrices, block by block (as SymPy's ``bc_matmul`` etc., but built with
  the shallow `mul`/`add` below); SymPy's own block unpacking.

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
from sympy.matrices.expressions.blockmatrix import bc_unpack, deblock
from sympy.matrices.expressions.transpose import Transpose
from sympy.strategies import condition, do_one, exhaust, flatten, glom, rm_id, sort, unpack

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


def softcap_fn(cap: float) -> sp.Lambda:
    """``t -> cap * tanh(t / cap)`` (Gemma 2's soft-capping), exact in ``cap``."""
    c = sp.nsimplify(cap)
    return sp.Lambda(_T, c * sp.tanh(_T / c))


def apply_fn(fn: sp.Lambda, arg: MatrixExpr) -> MatrixExpr:
    return EAF(fn, arg)


# SymPy's ``*``, ``+`` and ``-`` on matrix expressions run a deep ``doit()`` over their
# operands, so a sublayer built one product at a time is canonicalized again at every
# product: quadratic in its size. The prover builds from leaves and from results of these
# helpers, which are canonical already, so canonicalizing the new node alone gives the same
# expression.
def mul(*factors) -> MatrixExpr:
    """The product of matrices and scalars (in order), canonicalized at the top only."""
    return MatMul(*factors).doit(deep=False)


def _combine(count, matrix):
    return matrix if count == 1 else mul(count, matrix)


# SymPy's canonical form of a sum (the rules of `sympy.matrices.expressions.matadd`, less
# the merging of explicit matrices, which the prover never builds), but like terms are
# combined with the shallow `mul`: SymPy's ``count * matrix`` canonicalizes the whole term
# again each time a coefficient is not 1 (every subtraction). Should this form ever differ
# from SymPy's, terms would fail to cancel: a residual left standing (REFUTED only with a
# numeric counterexample, else UNKNOWN), never a false PROVED.
_canonical_sum = exhaust(condition(lambda x: isinstance(x, MatAdd), do_one(
    rm_id(lambda x: x == 0 or isinstance(x, ZeroMatrix)),
    unpack,
    flatten,
    glom(lambda term: unpack(term.as_coeff_mmul()[1]), lambda term: term.as_coeff_mmul()[0], _combine),
    sort(sp.default_sort_key),
)))


def add(*terms) -> MatrixExpr:
    """The sum of matrix terms, canonicalized at the top only."""
    return _canonical_sum(MatAdd(*terms))


def sub(a, b) -> MatrixExpr:
    """``a - b``, canonicalized at the top only."""
    return add(a, mul(sp.S.NegativeOne, b))


class Trace:
    """Counts of rewrite rules and lemmas applied during one proof.

    ``on_rewrite``, when given, is called as ``on_rewrite(name, before, after)`` for each
    rewrite `collapse` makes, ``name`` being the rule or lemma that made it (the last one
    recorded); `specgrow.verify.evaluate.first_bad_rule` checks each one numerically.
    """

    def __init__(self, on_rewrite=None):
        self.rules: Counter = Counter()
        self.lemmas: list[str] = []
        self.on_rewrite = on_rewrite
        self.last: str | None = None

    def rule(self, name: str) -> None:
        self.rules[name] += 1
        self.last = name

    def lemma(self, name: str) -> None:
        if name not in self.lemmas:
            self.lemmas.append(name)
        self.last = name


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
        return BlockMatrix([[mul(coeff, OneMatrix(r, c)) for c in cols] for r in rows])
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
        return mul(e.function(0), OneMatrix(*e.shape))
    coeff, mats = e.expr.as_coeff_matrices() if isinstance(e.expr, MatMul) else (None, ())
    if len(mats) == 1 and isinstance(mats[0], OneMatrix):
        trace.rule("const_elementwise")
        return mul(sp.simplify(e.function(coeff)), OneMatrix(*e.shape))
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


def _block_chain(coeff, mats):
    """``coeff * mats`` with each conformal product next to a block matrix done block by block.

    A plain factor next to a block matrix counts as a 1x1 grid; a product whose cuts do not
    line up is left as it is. None when no product was done.
    """
    mats, done, i = list(mats), False, 0
    while i + 1 < len(mats):
        a, b = mats[i], mats[i + 1]
        if isinstance(a, BlockMatrix) or isinstance(b, BlockMatrix):
            a = a if isinstance(a, BlockMatrix) else BlockMatrix([[a]])
            b = b if isinstance(b, BlockMatrix) else BlockMatrix([[b]])
            if a.colblocksizes == b.rowblocksizes:
                x, y = a.blocks, b.blocks
                mats[i:i + 2] = [BlockMatrix([[add(*[mul(x[r, k], y[k, c]) for k in range(x.shape[1])])
                                               for c in range(y.shape[1])] for r in range(x.shape[0])])]
                done = True
                continue
        i += 1
    return mul(coeff, *mats) if done else None


def r_matmul(e, trace):
    coeff, mats = e.as_coeff_matrices()
    mats = list(mats)
    if len(mats) == 1 and isinstance(mats[0], BlockMatrix) and coeff != 1:
        trace.rule("scalar_into_blocks")
        return _grid(mats[0], lambda b, i, j: mul(coeff, b))
    for i in range(len(mats) - 1):
        a, b = mats[i], mats[i + 1]
        if isinstance(a, BlockMatrix) and a.blockshape[1] > 1 and not isinstance(b, BlockMatrix):
            split = _split(b, a.colblocksizes, [b.shape[1]])
            if split is not None:
                mats[i + 1] = split
                trace.rule("split_const")
                return mul(coeff, *mats)
        if isinstance(b, BlockMatrix) and b.blockshape[0] > 1 and not isinstance(a, BlockMatrix):
            split = _split(a, [a.shape[0]], b.rowblocksizes)
            if split is not None:
                mats[i] = split
                trace.rule("split_const")
                return mul(coeff, *mats)
    if any(isinstance(m, BlockMatrix) for m in mats):
        out = _block_chain(coeff, mats)
        if out is not None:
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
        ref = blocks[0]
        if all(b.rowblocksizes == ref.rowblocksizes and b.colblocksizes == ref.colblocksizes for b in blocks):
            trace.rule("block_add")
            return _grid(ref, lambda _, i, j: add(*[b.blocks[i, j] for b in blocks]))
    return e


def r_transpose(e, trace):
    if isinstance(e.arg, BlockMatrix):
        trace.rule("block_transpose")
        b = e.arg.blocks
        return BlockMatrix([[b[i, j].T for i in range(b.shape[0])] for j in range(b.shape[1])])
    return e


def r_unpack(e, trace):
    out = bc_unpack(deblock(e))
    if out != e:
        trace.rule("block_unpack")
    return out


_LEAVES = (MatrixSymbol, ZeroMatrix, OneMatrix)


def _shallow(e):
    """A product or sum whose arguments are canonical, canonicalized at the top."""
    if isinstance(e, MatAdd):
        return add(*e.args)
    if isinstance(e, MatMul):
        return mul(*e.args)
    return e


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
                    out = _shallow(out)
                    if trace.on_rewrite is not None:
                        trace.on_rewrite(trace.last, e, out)
                    return out
                return e
        return e

    seen: dict = {}  # node -> its rewrite in this collapse (repeated subterms are rewritten once)

    def walk(e):
        """Bottom-up: rebuild a node only when one of its matrix arguments changed."""
        done = seen.get(e)
        if done is None:
            done = seen[e] = _walk(e)
        return done

    def _walk(e):
        if isinstance(e, BlockMatrix):
            blocks = e.blocks
            new = [[walk(blocks[i, j]) for j in range(blocks.shape[1])] for i in range(blocks.shape[0])]
            if any(new[i][j] is not blocks[i, j] for i in range(blocks.shape[0]) for j in range(blocks.shape[1])):
                e = BlockMatrix(new)
        elif isinstance(e, MatrixExpr) and not isinstance(e, _LEAVES):
            args = [walk(a) if isinstance(a, MatrixExpr) else a for a in e.args]
            if any(a is not b for a, b in zip(args, e.args)):
                e = _shallow(e.func(*args))
        return exhaust(step)(e)

    result = exhaust(walk)(expr)
    if isinstance(result, MatrixExpr):
        result = result.doit()
        if isinstance(result, (MatAdd, MatMul)):
            expanded = result.expand().doit()
            if expanded != result:
                trace.rule("distribute")
                if trace.on_rewrite is not None:
                    trace.on_rewrite("distribute", result, expanded)
                result = expanded
    return result
