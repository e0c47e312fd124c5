"""A second, numeric check of a proof: both sides evaluated at random dims and weights.

The prover rewrites ``new - target`` to zero with its own rules (`specgrow.verify.algebra`,
`specgrow.verify.ops`); a wrong rule would prove a changed function. This module gives the
same expressions their meaning directly, in float64 with NumPy, sharing no code with the
rules: it reads the operator and activation classes only to recognise nodes.

The opaque operators mean what the reference model (`specgrow.models.reference`) computes:
row-wise norms, causal softmax, GQA heads with optional RoPE. ``Rope`` with a tag other than
``old`` (a grown head's rotation) is a fixed but arbitrary linear function of its arguments.
Dims are drawn from 2 to 6, not 1: one position, or a norm over one column, would hide what
attention, RoPE and the norms do. `agree` checks an obligation; `first_bad_rule` replays
`collapse` and names the first rewrite that changed the value.
"""

from __future__ import annotations

import math
import operator
import random
from collections import ChainMap
from dataclasses import dataclass
from functools import reduce

import numpy as np
import sympy as sp
from sympy import (BlockMatrix, HadamardPower, HadamardProduct, Identity, MatAdd, MatMul, MatrixExpr,
                   MatrixSymbol, OneMatrix, ZeroMatrix)
from sympy.matrices.expressions.applyfunc import ElementwiseApplyFunction
from sympy.matrices.expressions.transpose import Transpose

from specgrow.verify.algebra import Activation
from specgrow.verify.ops import HeadNorm, Heads, LayerNorm, Mixture, RMSNorm, Rope, Softmax

MIN_DIM, MAX_DIM = 2, 6  # integer dims are drawn from MIN_DIM..MAX_DIM: every shape stays tiny
DRAWS = 200  # random draws tried for one assignment before giving up
TOLERANCE = 1e-9  # relative to max(1, max|target|)
THETA = 10000.0  # the RoPE base of ``Rope(x, width, old)`` and of heads with rope


class EvaluationError(Exception):
    """An expression without a numeric value: an unknown node, or shapes that do not fit."""


class ShapeError(EvaluationError):
    """Shapes that do not fit at this assignment of the dims."""


@dataclass(frozen=True)
class Agreement:
    """Whether two expressions took the same values in every trial (within `TOLERANCE`)."""

    agrees: bool
    max_difference: float
    trials: int
    reason: str | None = None


# ------------------------------------------------------------------ public API
def evaluate(expr, values):
    """The float64 value of a matrix (or scalar) expression.

    ``values`` maps scalar symbols (the dims, epsilon, ...) to numbers; `evaluate` adds to it
    a random N(0, 1) array for each matrix symbol (keyed by name and concrete shape, so equal
    symbols get equal arrays), the `random.Random` that draws them (key ``"rng"``), and the
    value of each node it evaluated.

    >>> n = sp.Symbol("n", positive=True, integer=True)
    >>> x = MatrixSymbol("x", n, 2)
    >>> values = {n: 3}
    >>> evaluate(Softmax(x * x.T), values)[0]
    array([1., 0., 0.])
    >>> bool(np.allclose(evaluate(2 * x - x, values), evaluate(x, values)))
    True
    """
    done = values.get(expr)
    if done is None:
        done = values[expr] = _node(expr, values)
    return done


def assignments(exprs, rng, trials: int) -> list[dict]:
    """``trials`` assignments of the scalar symbols of ``exprs`` under which all of them evaluate.

    Positive integer symbols get `MIN_DIM`..`MAX_DIM`, drawn again until every shape fits
    (every size whole, ``k/2`` included; heads that split evenly; ...); other
    nonnegative symbols a real in [0.01, 1]; the rest a standard normal real. ``rng`` is a
    `random.Random`. Each assignment already holds the values of ``exprs`` (see `evaluate`).
    Raises `ShapeError` when no draw fits.
    """
    symbols = sorted(_symbols(exprs), key=str)
    return [_fitting(exprs, symbols, rng) for _ in range(trials)]


def agree(new, target, trials: int = 2, seed: int = 0) -> Agreement:
    """Whether ``new`` and ``target`` take the same values under ``trials`` random assignments."""
    rng = random.Random(seed)
    worst = 0.0
    with np.errstate(all="ignore"):
        try:
            for values in assignments((new, target), rng, trials):
                a, b = evaluate(new, values), evaluate(target, values)
                difference = _difference(a, b)
                if not _close(difference, b):
                    dims = ", ".join(f"{s}={v}" for s, v in values.items() if isinstance(v, int))
                    return Agreement(False, difference, trials, f"the sides differ by {difference:.3g} at {dims}")
                worst = max(worst, difference)
        except EvaluationError as err:
            return Agreement(False, math.inf, trials, str(err))
    return Agreement(True, worst, trials)


def first_bad_rule(expr, trials: int = 2, seed: int = 0, extra=None) -> str | None:
    """The rule or lemma of the first rewrite in ``collapse(expr, ..., extra)`` that changed
    the value of what it rewrote (``extra`` defaults to the prover's `LEMMAS`); None if none
    did, or if ``expr`` itself has no value.
    """
    from specgrow.verify.algebra import Trace, collapse  # replays the prover's own rewriting
    from specgrow.verify.ops import LEMMAS

    rng = random.Random(seed)
    with np.errstate(all="ignore"):
        try:
            fitting = assignments((expr,), rng, trials)
        except EvaluationError:
            return None
        for values in fitting:
            bad: list[str] = []

            def check(rule, before, after, values=values, bad=bad):
                if not bad and not _same(before, after, values):
                    bad.append(rule)

            collapse(expr, Trace(on_rewrite=check), extra=LEMMAS if extra is None else extra)
            if bad:
                return bad[0]
    return None


# ------------------------------------------------------------------ assignments
def _symbols(exprs) -> set:
    """The scalar symbols of ``exprs``: dims and the like (not RoPE tags, not bound variables)."""
    found, seen, stack = set(), set(), list(exprs)
    while stack:
        e = stack.pop()
        if e in seen:
            continue
        seen.add(e)
        if isinstance(e, sp.Symbol):
            found.add(e)
        elif isinstance(e, Rope):
            stack += [e.args[0], e.args[1], e.args[3]]
        elif isinstance(e, sp.Lambda):
            found |= {s for s in e.free_symbols if isinstance(s, sp.Symbol)}
        else:
            stack += e.args
    return found


def _fitting(exprs, symbols, rng) -> dict:
    error, draws = None, DRAWS if symbols else 1  # without symbols every draw has the same shapes
    for _ in range(draws):
        values = {s: _draw(s, rng) for s in symbols}
        values["rng"] = random.Random(rng.getrandbits(64))
        try:
            for e in exprs:
                evaluate(e, values)
            return values
        except ShapeError as err:
            error = err
    raise ShapeError(f"no dims in {MIN_DIM}..{MAX_DIM} fit all shapes in {draws} draws; the last: {error}")


def _draw(symbol, rng):
    if symbol.is_integer:
        return rng.randint(MIN_DIM, MAX_DIM) if symbol.is_positive else rng.randint(-3, 3)
    if symbol.is_nonnegative:
        return rng.uniform(0.01, 1)
    return rng.gauss(0.0, 1.0)


def _difference(a, b) -> float:
    if np.shape(a) != np.shape(b) and np.ndim(a) and np.ndim(b):
        raise ShapeError(f"the sides have shapes {np.shape(a)} and {np.shape(b)}")
    difference = float(np.max(np.abs(np.subtract(a, b)), initial=0.0))
    if not math.isfinite(difference):
        raise EvaluationError("a side is not finite (nan or inf)")
    return difference


def _close(difference, target) -> bool:
    return difference <= TOLERANCE * max(1.0, float(np.max(np.abs(target), initial=0.0)))


def _same(a, b, values) -> bool:
    try:
        target = evaluate(b, values)
        return _close(_difference(evaluate(a, values), target), target)
    except EvaluationError:
        return False


# ------------------------------------------------------------------ scalars and sizes
_erf = np.vectorize(math.erf, otypes=[float])
ACTIVATIONS = {
    "relu": lambda t: np.maximum(t, 0.0),
    "gelu": lambda t: 0.5 * t * (1 + _erf(t / math.sqrt(2))),
    "gelu_tanh": lambda t: 0.5 * t * (1 + np.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t ** 3))),
    "silu": lambda t: t / (1 + np.exp(-t)),
}
FUNCTIONS = {"exp": np.exp, "tanh": np.tanh, "erf": _erf}


def _scalar(e, env):
    """A scalar expression at ``env`` (numbers, or arrays inside an element-wise function)."""
    if isinstance(e, sp.Symbol):
        if e not in env:
            raise EvaluationError(f"Symbol {e} has no value")
        return env[e]
    if e.is_Number or e.is_NumberSymbol:
        return float(e)
    if isinstance(e, (sp.Add, sp.Mul)):
        return reduce(operator.add if e.is_Add else operator.mul, (_scalar(a, env) for a in e.args))
    if isinstance(e, sp.Pow):
        return _scalar(e.base, env) ** _scalar(e.exp, env)
    name = type(e).__name__
    fn = ACTIVATIONS.get(name) if isinstance(e, Activation) else FUNCTIONS.get(name)
    if fn is None:
        raise EvaluationError(f"no numeric meaning for {name}")
    return fn(_scalar(e.args[0], env))


def _size(dim, values, node) -> int:
    """A size of ``node`` (a shape, a head's width): a positive whole number, else `ShapeError`."""
    x = float(evaluate(dim, values))
    if x < 1 or abs(x - round(x)) > 1e-9:
        raise ShapeError(f"{type(node).__name__}: the size {dim} is {x:g}, not a positive whole number")
    return round(x)


def _shape(e, values) -> tuple[int, int]:
    return _size(e.shape[0], values, e), _size(e.shape[1], values, e)


# ------------------------------------------------------------------ matrix nodes
def _node(e, values):
    if not isinstance(e, MatrixExpr):
        return _scalar(e, values)
    for kind, rule in NODES:
        if isinstance(e, kind):
            return rule(e, values)
    raise EvaluationError(f"no numeric meaning for {type(e).__name__}")


def _symbol(e, values):
    shape = _shape(e, values)
    key = (e.name, *shape)
    if key not in values:
        values[key] = _normal(values.setdefault("rng", random.Random(0)), shape[0] * shape[1]).reshape(shape)
    return values[key]


def _uniform(draw, count):
    """``count`` values uniform in [0, 1) from ``draw``'s bytes (NumPy's own generators load slowly)."""
    return (np.frombuffer(draw.randbytes(8 * count), dtype=np.uint64) >> 11) * 2.0 ** -53


def _normal(draw, count):
    """``count`` standard normal values (Box-Muller)."""
    u = _uniform(draw, 2 * count)
    return np.sqrt(-2 * np.log(1 - u[:count])) * np.cos(2 * np.pi * u[count:])


def _fits(node, *shapes) -> None:
    if len(set(shapes)) > 1:
        raise ShapeError(f"{type(node).__name__}: operands of shapes {', '.join(map(str, shapes))}")


def _product(e, values):
    coefficient, out = 1.0, None
    for a in e.args:
        if not isinstance(a, MatrixExpr):
            coefficient = coefficient * evaluate(a, values)
            continue
        m = evaluate(a, values)
        if out is not None:
            _fits(e, out.shape[1], m.shape[0])
        out = m if out is None else out @ m
    return coefficient * out


def _entrywise(combine):
    """The node of a sum or a Hadamard product: its operands, of one shape, combined entrywise."""
    def node(e, values):
        operands = [evaluate(a, values) for a in e.args]
        _fits(e, *(m.shape for m in operands))
        return reduce(combine, operands)
    return node


def _blocks(e, values):
    grid = e.blocks
    rows = [[evaluate(grid[i, j], values) for j in range(grid.shape[1])] for i in range(grid.shape[0])]
    for row in rows:
        _fits(e, *(b.shape[0] for b in row))
    for column in zip(*rows):
        _fits(e, *(b.shape[1] for b in column))
    return np.concatenate([np.concatenate(row, axis=1) for row in rows], axis=0)


def _elementwise(e, values):
    (variable,), body = e.function.variables, e.function.expr
    arg = evaluate(e.expr, values)
    return np.broadcast_to(_scalar(body, ChainMap({variable: arg}, values)), arg.shape).astype(float)


def _rmsnorm(e, values):
    x, g, eps = (evaluate(a, values) for a in e.args)
    _fits(e, g.shape, (1, x.shape[1]))
    return x * g / np.sqrt((x ** 2).mean(axis=1, keepdims=True) + eps)


def _headnorm(e, values):
    x, g, eps = (evaluate(a, values) for a in e.args[:3])
    width = _size(e.args[3], values, e)
    if x.shape[1] % width:
        raise ShapeError(f"HeadNorm: {x.shape[1]} columns are not whole heads of {width}")
    _fits(e, g.shape, (1, width))
    heads = x.reshape(x.shape[0], x.shape[1] // width, width)  # (n, heads, width)
    normed = heads * g[0] / np.sqrt((heads ** 2).mean(axis=2, keepdims=True) + eps)
    return normed.reshape(x.shape)


def _layernorm(e, values):
    x, g, b, eps = (evaluate(a, values) for a in e.args)
    _fits(e, g.shape, b.shape, (1, x.shape[1]))
    centered = x - x.mean(axis=1, keepdims=True)
    return centered / np.sqrt((centered ** 2).mean(axis=1, keepdims=True) + eps) * g + b


def _mixture(e, values):
    """The generic expert (its logits and output F) among ``experts - 1`` others, whose logits and outputs
    are fixed draws of the evaluation, equal on both sides of an obligation: an other expert's output
    is a per-token draw times F, so the value, like the mixture, is linear in F column by column for
    fixed logits. Softmax, top-k by a stable sort, renormalised when asked, weighted sum."""
    logits, out = evaluate(e.args[0], values), evaluate(e.args[1], values)
    top_k, renormalize, experts = (int(a) for a in e.args[2:])
    _fits(e, logits.shape, (out.shape[0], 1))
    key = ("mixture others", out.shape[0], experts)
    if key not in values:
        draw = values.setdefault("rng", random.Random(0))
        values[key] = (_normal(draw, out.shape[0] * (experts - 1)).reshape(out.shape[0], experts - 1),
                       _normal(draw, out.shape[0] * (experts - 1)).reshape(out.shape[0], experts - 1))
    others, factors = values[key]
    scores = np.concatenate([logits, others], axis=1)  # (n, E): the generic expert first
    probs = np.exp(scores - scores.max(axis=1, keepdims=True))
    probs = probs / probs.sum(axis=1, keepdims=True)
    chosen = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
    weights = np.take_along_axis(probs, chosen, 1)
    if renormalize:
        weights = weights / weights.sum(axis=1, keepdims=True)
    factor = np.take_along_axis(np.concatenate([np.ones((out.shape[0], 1)), factors], axis=1), chosen, 1)
    return (weights * factor).sum(axis=1, keepdims=True) * out


def _softmax(e, values):
    scores = evaluate(e.args[0], values)
    _fits(e, *scores.shape)  # positions by positions
    return causal_softmax(scores)


def causal_softmax(scores):
    """Row-wise softmax where row i (a position) weighs columns j <= i only (last two axes)."""
    masked = np.where(np.tri(*scores.shape[-2:], dtype=bool), scores, -np.inf)
    weights = np.exp(masked - masked.max(axis=-1, keepdims=True))
    return weights / weights.sum(axis=-1, keepdims=True)


def rotary(x, frequencies):
    """``x`` (last axes: positions 0..n-1, w columns) rotated: column i pairs with i + w/2,
    by the angle position * f_i."""
    half = x.shape[-1] // 2
    angles = np.arange(x.shape[-2])[:, None] * np.concatenate([frequencies, frequencies])
    turned = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * np.cos(angles) + turned * np.sin(angles)


def rope(x, node="Rope", turned: int = 0):
    """The true RoPE of ``x`` (its width even), ``inv_freq_i = THETA^(-2i/width)``; with ``turned``
    (partial rotary) only the first ``turned`` columns, at the frequencies of that width."""
    width = turned or x.shape[-1]
    if width % 2 or width > x.shape[-1]:
        raise ShapeError(f"{node}: RoPE of width {width} on {x.shape[-1]} columns")
    head = rotary(x[..., :width], THETA ** (-np.arange(0, width, 2) / width))
    return np.concatenate([head, x[..., width:]], axis=-1)


def _rope(e, values):
    x, width, tag = evaluate(e.args[0], values), float(evaluate(e.args[1], values)), e.args[2].name
    turned = _size(e.args[3], values, e) if e.args[3] != 0 else 0
    if tag == "old":
        _fits(e, x.shape[1], width)
        return rope(x, "Rope", turned)
    draw = random.Random(f"{tag}/{width:g}")
    if x.shape[1] % 2 == 0:
        return rotary(x, 0.1 + _uniform(draw, x.shape[1] // 2))
    return x * (1 + np.arange(x.shape[0])[:, None] * (2 * _uniform(draw, x.shape[1]) - 1))


def _heads(e, values):
    q, k, v = (evaluate(a, values) for a in e.args[:3])
    key, value = (_size(a, values, e) for a in e.args[3:5])
    scale, cap = evaluate(e.args[5], values), float(e.args[7])
    rotate = e.args[6] != 0
    turned = 0 if e.args[6] in (0, 1) else _size(e.args[6], values, e)
    heads, groups = q.shape[1] // key, k.shape[1] // key
    _fits(e, q.shape[0], k.shape[0], v.shape[0])
    _fits(e, (q.shape[1], k.shape[1], v.shape[1]), (heads * key, groups * key, groups * value))
    if heads % groups:
        raise ShapeError(f"Heads: {heads} query heads do not split into {groups} kv groups")
    n, q = q.shape[0], _split_heads(q, heads, key, 1)
    k = _split_heads(k, groups, key, heads // groups)  # query head j reads kv head j // (heads/groups)
    v = _split_heads(v, groups, value, heads // groups)
    if rotate:
        q, k = rope(q, "Heads", turned), rope(k, "Heads", turned)
    scores = scale * q @ k.transpose(0, 2, 1)
    out = causal_softmax(cap * np.tanh(scores / cap) if cap else scores) @ v
    return out.transpose(1, 0, 2).reshape(n, heads * value)


def _split_heads(x, count, width, repeats):
    """(n, count*width) -> (count*repeats, n, width): each head's columns, each repeated."""
    return np.repeat(x.reshape(x.shape[0], count, width).transpose(1, 0, 2), repeats, axis=0)


NODES = (
    (MatrixSymbol, _symbol),
    (ZeroMatrix, lambda e, values: np.zeros(_shape(e, values))),
    (OneMatrix, lambda e, values: np.ones(_shape(e, values))),
    (Identity, lambda e, values: np.eye(_size(e.shape[0], values, e))),
    (MatMul, _product),
    (MatAdd, _entrywise(operator.add)),
    (Transpose, lambda e, values: evaluate(e.arg, values).T),
    (BlockMatrix, _blocks),
    (HadamardProduct, _entrywise(operator.mul)),
    (HadamardPower, lambda e, values: evaluate(e.base, values) ** evaluate(e.exp, values)),
    (ElementwiseApplyFunction, _elementwise),
    (RMSNorm, _rmsnorm),
    (HeadNorm, _headnorm),
    (LayerNorm, _layernorm),
    (Softmax, _softmax),
    (Heads, _heads),
    (Mixture, _mixture),
    (Rope, _rope),
)
