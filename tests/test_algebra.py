"""Each block rewrite rule: it fires, and the rewritten expression evaluates to the same numbers."""

from __future__ import annotations

import random

import pytest
import sympy as sp
from sympy import BlockMatrix, HadamardProduct, MatrixSymbol, OneMatrix, ZeroMatrix

from specgrow.verify.algebra import Trace, add, apply_fn, collapse, elementwise_fn, mul, sub
from specgrow.verify.build import exact

n, h, p, q = sp.symbols("n h p q", positive=True, integer=True)
DIMS = {n: 3, h: 4, p: 2, q: 3}
x, W, R, V, Vn = (MatrixSymbol("x", n, h), MatrixSymbol("W", h, p), MatrixSymbol("R", h, q),
                  MatrixSymbol("V", p, h), MatrixSymbol("Vn", q, h))
A, B = MatrixSymbol("A", n, p), MatrixSymbol("B", n, q)


def evaluate(expr, seed=0):
    """The explicit value of a matrix expression at DIMS with seeded random symbols."""
    expr = expr.xreplace(DIMS) if hasattr(expr, "xreplace") else expr
    values = {}
    for s in sorted(expr.free_symbols, key=str):
        if isinstance(s, MatrixSymbol):
            rng = random.Random(f"{seed}/{s.name}")  # the same symbol gets the same values
            rows, cols = (int(d) for d in s.shape)
            values[s] = sp.ImmutableMatrix(rows, cols, [sp.Rational(rng.randint(-9, 9), 7)
                                                         for _ in range(rows * cols)])
    explicit = expr.xreplace(values).doit()
    return sp.Matrix(explicit.as_explicit()).evalf()


def same_value(before, after):
    for seed in range(2):
        diff = evaluate(before, seed) - evaluate(after, seed)
        assert max(abs(v) for v in diff) < 1e-9


CASES = {
    "elementwise": (apply_fn(elementwise_fn("gelu"), BlockMatrix([[A, B]])), "elementwise"),
    "zero_elementwise": (apply_fn(elementwise_fn("silu"), ZeroMatrix(n, p)), "zero_elementwise (f(0)=0)"),
    "const_elementwise": (apply_fn(sp.Lambda(sp.Symbol("t"), sp.exp(sp.Symbol("t"))), 2 * OneMatrix(n, p)),
                          "const_elementwise"),
    "hadamard": (HadamardProduct(BlockMatrix([[A, B]]), BlockMatrix([[2 * A, ZeroMatrix(n, q)]])), "hadamard"),
    "hadamard_split_one": (HadamardProduct(BlockMatrix([[A, B]]), 3 * OneMatrix(n, p + q)), "hadamard"),
    "zero_hadamard": (HadamardProduct(A, ZeroMatrix(n, p)), "zero_hadamard"),
    "split_const": (OneMatrix(n, 1) * BlockMatrix([[MatrixSymbol("b", 1, p), MatrixSymbol("c", 1, q)]]),
                    "block_matmul"),
    "block_matmul": (x * BlockMatrix([[W, R]]) * BlockMatrix([[V], [Vn]]), "block_matmul"),
    "scalar_into_blocks": (2 * BlockMatrix([[A, B]]) + BlockMatrix([[A, ZeroMatrix(n, q)]]), "scalar_into_blocks"),
    "block_transpose": (sp.Transpose(x * BlockMatrix([[W, R]])), "block_transpose"),
    "block_add": (BlockMatrix([[A, B]]) + BlockMatrix([[2 * A, -B]]), "block_add"),
    "distribute": (x * (W + MatrixSymbol("U", h, p)) - x * W, "distribute"),
}


@pytest.mark.parametrize("name", CASES)
def test_rule_fires_and_keeps_the_value(name):
    expr, rule = CASES[name]
    trace = Trace()
    out = collapse(expr, trace)
    assert trace.rules[rule] >= 1, dict(trace.rules)
    same_value(expr, out)


def test_relu_of_zero_is_zero_but_exp_of_zero_is_not():
    trace = Trace()
    assert collapse(apply_fn(elementwise_fn("relu"), ZeroMatrix(n, p)), trace) == ZeroMatrix(n, p)
    shifted = sp.Lambda(sp.Symbol("t"), sp.Symbol("t") + 1)  # f(0) = 1: must not become 0
    out = collapse(apply_fn(shifted, ZeroMatrix(n, p)), Trace())
    assert out != ZeroMatrix(n, p) and out == OneMatrix(n, p)


def test_mlp_growth_residual_is_zero_only_with_zero_out_rows():
    f = elementwise_fn("gelu")
    old = apply_fn(f, x * W) * V
    good = apply_fn(f, x * BlockMatrix([[W, R]])) * BlockMatrix([[V], [ZeroMatrix(q, h)]])
    bad = apply_fn(f, x * BlockMatrix([[W, R]])) * BlockMatrix([[V], [Vn]])
    assert collapse(good - old, Trace()) == ZeroMatrix(n, h)
    residual = collapse(bad - old, Trace())
    assert residual != ZeroMatrix(n, h)
    same_value(residual, apply_fn(f, x * R) * Vn)


def test_cancelling_noise_over_copies():
    N = MatrixSymbol("N", h, p)
    expr = BlockMatrix([[x, x]]) * BlockMatrix([[W / 2 + N], [W / 2 - N]]) - x * W
    assert collapse(expr, Trace()) == ZeroMatrix(n, p)


@pytest.mark.parametrize("name,formula,torch_fn", [
    ("relu", lambda t: sp.Max(0, t), "relu"),
    ("gelu", lambda t: t * (1 + sp.erf(t / sp.sqrt(2))) / 2, "gelu"),
    ("gelu_tanh", lambda t: t * (1 + sp.tanh(sp.sqrt(2 / sp.pi) * (t + sp.Rational(44715, 10**6) * t**3))) / 2,
     "gelu_tanh"),
    ("silu", lambda t: t / (1 + sp.exp(-t)), "silu"),
])
def test_activation_value_at_zero_is_the_true_one(name, formula, torch_fn):
    """Activations are opaque but for f(0): the declared value is the exact formula's and torch's."""
    import torch
    import torch.nn.functional as F

    declared = elementwise_fn(name)(0)
    assert declared == sp.simplify(formula(sp.Integer(0))) == 0
    fn = (lambda v: F.gelu(v, approximate="tanh")) if torch_fn == "gelu_tanh" else getattr(F, torch_fn)
    assert float(fn(torch.zeros(1))) == float(declared)
    t = sp.Symbol("t")
    assert elementwise_fn(name)(t) != 0  # elsewhere it stays opaque, never rewritten


def _operands():
    """Canonical operands as the prover builds them: leaves, products, sums, blocks, scalars."""
    f = elementwise_fn("relu")
    xw = x * W
    return [
        (xw, V), (2 * xw, V), (apply_fn(f, xw + x * W), V), (x * BlockMatrix([[W, R]]), BlockMatrix([[V], [Vn]])),
        (-(xw * V), x), (sp.Rational(1, 3) * (A + 2 * A), OneMatrix(p, h)), (ZeroMatrix(n, p), V),
    ]


@pytest.mark.parametrize("index", range(7))
def test_shallow_helpers_give_sympys_canonical_forms(index):
    """``mul``/``add``/``sub`` canonicalize only the new node; on canonical operands that is
    what SymPy's operators (a deep ``doit``) give."""
    a, b = _operands()[index]
    assert mul(a, b) == a * b
    assert mul(sp.Integer(-3), a, b) == -3 * a * b
    ab = a * b
    assert add(ab, ab) == ab + ab and sub(ab, ab) == ZeroMatrix(*ab.shape)
    other = (x * W * V) if ab.shape == (n, h) else ab
    assert add(ab, 2 * other) == ab + 2 * other
    assert sub(ab, sp.Rational(1, 2) * other) == ab - other / 2


def test_block_product_leaves_cuts_that_do_not_line_up():
    """A product whose cuts differ (p | q against q | p) is not multiplied block by block."""
    left, right = BlockMatrix([[A, B]]), BlockMatrix([[MatrixSymbol("C", q, h)], [MatrixSymbol("D", p, h)]])
    trace = Trace()
    out = collapse(left * right, trace)
    assert "block_matmul" not in trace.rules
    same_value(left * right, out)


@pytest.mark.parametrize("value,rational", [
    (0.02, sp.Rational(1, 50)), (1e-5, sp.Rational(1, 100000)), (1.0, sp.Integer(1)), (3, sp.Integer(3)),
    (0.1, sp.Rational(1, 10)), (2.5, sp.Rational(5, 2)), (-0.75, sp.Rational(-3, 4)),
])
def test_spec_numbers_are_the_rationals_they_are_written_as(value, rational):
    assert exact(value) == rational
