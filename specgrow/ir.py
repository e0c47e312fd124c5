"""The IR: per-tensor edits that the prover reads and the executor runs.

A `TensorEdit` says how every element of a grown tensor is made. Its `blocks` tile the
new tensor: each block selects a set of indices per axis (`Range` or `Grouped`) and
names a source: `Old` (a selection of the old tensor, times a scale, optionally plus
cancelling noise), `Const` (zeros, ones) or `Random` (a seeded distribution).

Each source has exactly one meaning, written here and nowhere else; the executor
(`specgrow.lower.stream`) realises it, the prover (`specgrow.verify.build`) reads it, the
float64 witness (`specgrow.verify.witness`) realises it again, and neither special-cases a
parameter value this definition does not (``tests/test_translation.py`` checks the first two
against each other element by element). With ``Z`` a standard normal draw and ``U`` a
uniform draw on [-1, 1], both fixed by the block's seed and the element's position in the
block:

======================  ===================================================================
``Old(sel, s, noise,    ``s * old[sel] + t + sign * std * Z_noise`` (the noise's own seed: two
shift t)``              blocks with one seed and one shape draw equal values, so ±std cancel;
                        ``t`` is 0 but for (1+w) norm gains rescaled by s: ``t = s - 1``)
``Old`` with fewer axes  the selection of the old tensor's own axes, the same in every index of
than the block          the block's leading axis (a dense MLP repeated into each expert)
``Const(c)``            ``c``
``Random(normal, s)``   ``s * Z``
``Random(uniform, a)``  ``a * U``
``Random(like_old, f)`` ``mean + std * f * Z``, the mean and the (unbiased) std of the old
                        tensor ``like``: with ``f = 0`` that is the mean, not zero
======================  ===================================================================

Sizes, offsets and scales are SymPy expressions of the step's dims (``h``, ``p``,
``dp``, ...); `TensorEdit.concrete()` substitutes the edit's own ``dims`` and returns
the same structure with plain ints and floats, which is all the executor sees.

>>> import sympy
>>> p, dp = sympy.symbols("p dp", positive=True, integer=True)
>>> r = Range(0, p + dp)
>>> r.length()
dp + p
>>> Range(0, 8, 2).length()
4
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, Union

Expr = Any  # a sympy.Expr in symbolic form, int/float once concrete

NAMES = ("h", "dh", "V", "T", "p", "dp", "G", "dG", "r", "k", "dk", "v", "dv", "E", "dE")


@functools.lru_cache(maxsize=None)
def sym(name: str):
    """The positive-integer SymPy symbol of a dim (SymPy is imported on first use only)."""
    import sympy

    if name not in NAMES:
        raise KeyError(name)
    return sympy.Symbol(name, positive=True, integer=True)


@dataclass(frozen=True)
class Range:
    """Indices ``start, start+step, ... < stop``."""

    start: Expr
    stop: Expr
    step: Expr = 1

    def length(self) -> Expr:
        if isinstance(self.start, int) and isinstance(self.stop, int):
            return max(0, -(-(self.stop - self.start) // self.step))
        import sympy

        return sympy.ceiling((self.stop - self.start) / self.step)

    def describe(self) -> str:
        step = "" if self.step == 1 else f":{self.step}"
        return f"{self.start}:{self.stop}{step}"


@dataclass(frozen=True)
class Grouped:
    """``{g*width + i : g < groups, i in inner}`` in group-major order (per-head slices)."""

    groups: Expr
    width: Expr
    inner: Range

    def length(self) -> Expr:
        return self.groups * self.inner.length()

    def describe(self) -> str:
        return f"{self.groups}x[{self.inner.describe()} of {self.width}]"


Sel = Union[Range, Grouped]


@dataclass(frozen=True)
class Noise:
    """``sign * std * N(0, 1)`` drawn from ``seed``; equal seeds with opposite signs cancel."""

    std: float
    seed: int
    sign: int


@dataclass(frozen=True)
class Old:
    """A selection of the old tensor (one `Sel` per axis) times ``scale``, plus ``shift``, plus
    optional noise. ``shift`` is nonzero only for the stored offset of (1+w) norm gains: a gain g
    stored as w = g - 1 and rescaled by c is stored as c*w + (c - 1)."""

    index: tuple[Sel, ...]
    scale: Expr = 1
    noise: Noise | None = None
    shift: Expr = 0

    def describe(self) -> str:
        where = ", ".join(s.describe() for s in self.index)
        text = f"old[{where}]"
        if self.scale != 1:
            text += f"*{self.scale}"
        if self.shift != 0:
            shift = str(self.shift)
            text += shift if shift.startswith("-") else f"+{shift}"
        if self.noise is not None:
            text += f"{'+' if self.noise.sign > 0 else '-'}noise({self.noise.std})"
        return text


@dataclass(frozen=True)
class Const:
    """Every element equal to ``value`` (0 for zeros, 1 for ones)."""

    value: float

    def describe(self) -> str:
        return "zeros" if self.value == 0 else f"const({self.value})"


@dataclass(frozen=True)
class Random:
    """Seeded random values.

    ``dist`` is ``normal`` (std ``param``), ``uniform`` (on [-param, param]) or ``like_old``
    (normal with the mean of the tensor ``like`` and its std times ``param``; the table in
    the module docstring is the definition).
    """

    dist: str
    param: float
    seed: int
    like: tuple[str, int | None] | None = None

    def describe(self) -> str:
        if self.dist == "like_old":
            return f"like_old({self.param})"
        return f"{self.dist}({self.param})"


Source = Union[Old, Const, Random]


@dataclass(frozen=True)
class Block:
    where: tuple[Sel, ...]
    source: Source

    def size(self) -> Expr:
        n = 1
        for s in self.where:
            n = n * s.length()
        return n


@dataclass(frozen=True)
class TensorEdit:
    """How one tensor of the grown model is made from the old model's tensors.

    ``source`` is the old tensor's (role, layer), None for a tensor that is new as a whole.
    ``dims`` binds the symbols used in shapes, selections and scales to this tensor's values.
    """

    role: str
    layer: int | None
    source: tuple[str, int | None] | None
    old_shape: tuple[Expr, ...] | None
    new_shape: tuple[Expr, ...]
    blocks: tuple[Block, ...]
    dims: tuple[tuple[str, int], ...] = ()

    def concrete(self) -> TensorEdit:
        """The same edit with every expression evaluated (ints for sizes, floats for scales)."""
        import sympy

        env = {sym(name): sympy.Integer(value) for name, value in self.dims}
        blocks = tuple(
            b for b in (_concrete(block, env) for block in self.blocks) if _nonempty(b)
        )
        return dataclasses.replace(
            self,
            old_shape=None if self.old_shape is None else tuple(_int(e, env) for e in self.old_shape),
            new_shape=tuple(_int(e, env) for e in self.new_shape),
            blocks=blocks,
        )

    def is_identity(self) -> bool:
        """True for a tensor copied unchanged (possibly under a new layer index)."""
        if len(self.blocks) != 1 or self.old_shape != self.new_shape:
            return False
        src = self.blocks[0].source
        return isinstance(src, Old) and src.scale == 1 and src.noise is None and all(
            isinstance(s, Range) and s.start == 0 and s.step == 1 for s in src.index
        )


@dataclass(frozen=True)
class StepPlan:
    """The edits of one step, with the shapes before and after it.

    ``eps_scale`` is the factor applied to the norm epsilon (RMSNorm under hidden growth).
    Tensors not named by any edit are carried over unchanged.
    """

    index: int
    kind: str
    before: Any  # ModelShape
    after: Any  # ModelShape
    edits: tuple[TensorEdit, ...]
    eps_scale: Expr = 1
    eps_dims: tuple[tuple[str, int], ...] = ()

    def concrete(self) -> StepPlan:
        import sympy

        env = {sym(name): sympy.Integer(value) for name, value in self.eps_dims}
        return dataclasses.replace(
            self,
            edits=tuple(e.concrete() for e in self.edits),
            eps_scale=_float(self.eps_scale, env),
        )


@dataclass(frozen=True)
class Plan:
    steps: tuple[StepPlan, ...]
    before: Any  # ModelShape
    after: Any  # ModelShape

    def concrete(self) -> Plan:
        return dataclasses.replace(self, steps=tuple(s.concrete() for s in self.steps))


# ------------------------------------------------------------------ evaluation
def _int(expr: Expr, env) -> int:
    import sympy

    value = sympy.sympify(expr).xreplace(env)
    if not value.is_Integer:
        raise ValueError(f"expression {expr} did not evaluate to an integer: {value}")
    return int(value)


def _float(expr: Expr, env) -> float:
    import sympy

    return float(sympy.sympify(expr).xreplace(env).evalf())


def _concrete(obj, env):
    if isinstance(obj, (Range, Grouped, Block, Old)):
        values = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.name in ("scale", "shift"):
                values[f.name] = _float(value, env)
            elif isinstance(value, tuple):
                values[f.name] = tuple(_concrete(v, env) for v in value)
            elif isinstance(value, (Range, Grouped, Old, Const, Random)):
                values[f.name] = _concrete(value, env)
            elif f.name in ("start", "stop", "step", "groups", "width"):
                values[f.name] = _int(value, env)
            else:
                values[f.name] = value
        return type(obj)(**values)
    return obj


def _nonempty(block: Block) -> bool:
    return all(s.length() > 0 for s in block.where)
