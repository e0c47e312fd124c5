"""How the prover reads a MoE layer's edits: one generic old expert and its new experts.

Every expert tensor (`specgrow.shape.EXPERT_ROLES`) has the experts axis first. The transforms
lay new experts out in bands of E (`specgrow.transforms.experts`): a block whose experts
selection is ``[a, a + E)`` and which reads all old experts ``[0, E)`` (or, upcycling, the dense
tensor repeated along the experts axis) makes new expert ``a + e`` from old expert ``e``. So every
old expert ``e`` has one new expert per band, and dropping the experts axis from a band's blocks
gives that new expert's tensor in terms of old expert ``e``'s: a 2-D edit (a row vector for the
router) that `specgrow.verify.build.symbolize` reads like any other. Blocks whose experts
selection is not a band (experts added beside the copies) are counted as ``added``.

The prover then writes the mixture on one generic expert (`specgrow.verify.ops.Mixture`) after the
routing lemma that the structure allows (`route_copies`, `route_identical`); the lemma and the
conditions it needs are returned as side conditions, each 0 when it holds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import sympy as sp

from specgrow.ir import Const, Old, Random, Range, sym
from specgrow.shape import EXPERT_ROLES
from specgrow.verify import build
from specgrow.verify.build import Stuck

E = sym("E")
ROUTER = "mlp.router.weight"
DISTINCT = 1e-6  # a random router row below this std: float32 softmax cannot tell its experts' logits apart
TIES = ("ties: exact for every token whose old top-k is unique (no tie between distinct experts at the k-th "
        "place); copies of one expert tie with each other and are selected together. For a token with such a tie "
        "the old output itself depends on how top-k breaks it; duplicated, the grown one is a convex combination of "
        "the old possible outputs (each tied expert's copies weigh alike); split, it may sum pieces of different "
        "tied experts. bfloat16 router logits tie often: on random "
        "routers 0.3 % of tokens for 8 experts, top-2, and 4-6 % for 64-128 experts, top-8")


@dataclass(frozen=True)
class Generic:
    """The new experts of one generic old expert: ``bands[j]`` maps each expert role to its 2-D (router:
    1-D) edit for the expert of band j; ``added`` counts the experts that copy none (symbolic)."""

    bands: tuple[dict, ...]
    added: sp.Expr
    upcycled: bool  # the layer was dense: every band's expert repeats the dense MLP


def generic(edits: dict, experts_before: int) -> Generic:
    """The bands of a MoE layer's expert edits (``edits``: role -> `TensorEdit`, other roles ignored)."""
    bands: dict = {}
    added = sp.Integer(0)
    upcycled = False
    for role, edit in edits.items():
        if role not in EXPERT_ROLES:
            continue
        env = {sym(n): sp.Integer(v) for n, v in edit.dims}
        size = E if edit.source is not None and edit.source[0] in EXPERT_ROLES else \
            sp.sympify(edit.new_shape[0])  # a new tensor (new layer, upcycled router): one band of all
        if edit.source is not None and edit.source[0] not in EXPERT_ROLES:
            upcycled = True
            if any(not isinstance(b.source, (Old, Const)) or getattr(b.source, "noise", None) is not None
                   for b in edit.blocks):
                raise Stuck(f"{role}: upcycled experts that are not all the same copy of the dense MLP")
        for block in edit.blocks:
            where = block.where[0]
            if not isinstance(where, Range) or sp.sympify(where.step) != 1:
                raise Stuck(f"{role}: a strided experts selection")
            length = sp.expand(sp.sympify(where.stop) - sp.sympify(where.start))
            if isinstance(block.source, Old) and len(block.source.index) == len(block.where):
                read = block.source.index[0]
                if sp.expand(sp.sympify(read.start)) != 0 or sp.expand(sp.sympify(read.stop) - E) != 0 \
                        or sp.sympify(read.step) != 1 or sp.expand(length - E) != 0:
                    raise Stuck(f"{role}: new experts read a part of the old experts, not all of them in order")
            if sp.expand(length - size) != 0:
                if role == "mlp.router.weight":
                    added = added + length
                continue
            key = sp.expand(sp.sympify(where.start))
            if sp.expand(key / size).xreplace(env).is_integer is not True:
                raise Stuck(f"{role}: experts in bands not aligned to the old experts")
            bands.setdefault(key, {}).setdefault(role, []).append(_dropped(block))
    edited = {role for role in edits if role in EXPERT_ROLES}
    for key, roles in bands.items():
        if set(roles) != edited:  # a band must say how each edited tensor makes its experts
            raise Stuck(f"new experts at {key} are written by {sorted(roles)} but not by "
                        f"{sorted(edited - set(roles))}")
    keys = sorted(bands, key=lambda k: int(sp.sympify(k).xreplace(_env_all(edits))))
    out = [] if keys else [{}]
    for key in keys:
        roles = {}
        for role, blocks in bands[key].items():
            edit = edits[role]
            roles[role] = dataclasses.replace(
                edit, old_shape=None if edit.old_shape is None else _rest(edit),
                new_shape=tuple(edit.new_shape[1:]), blocks=tuple(blocks))
        out.append(roles)
    return Generic(tuple(out), added, upcycled)


def classes(edits: dict) -> list[tuple[str, dict]]:
    """The layer's edits cut into classes of experts treated alike: one class (all experts, label "") unless
    some block selects a fixed run of experts (`mlp` growth of listed experts); then each class [a, b)
    between the runs' bounds gets the blocks that cover it, their experts selection widened to all the
    experts (``generic`` then reads the class's generic expert). Bands of copies do not mix with runs."""
    runs = set()
    size = None
    for role, edit in edits.items():
        if role not in EXPERT_ROLES:
            continue
        env = {sym(n): sp.Integer(v) for n, v in edit.dims}
        size = int(E.xreplace(env)) if E in env else size
        for block in edit.blocks:
            where = block.where[0]
            if isinstance(where.start, int) and isinstance(where.stop, int):
                runs |= {where.start, where.stop}
    if not runs:
        return [("", edits)]
    bounds = sorted(runs | {0, size})
    out = []
    for a, b in zip(bounds, bounds[1:]):
        cut = {}
        for role, edit in edits.items():
            if role not in EXPERT_ROLES:
                cut[role] = edit
                continue
            blocks = []
            for block in edit.blocks:
                where = block.where[0]
                if isinstance(where.start, int) and isinstance(where.stop, int):
                    if where.start <= a and b <= where.stop:
                        blocks.append(dataclasses.replace(block, where=(Range(0, E),) + block.where[1:]))
                elif sp.expand(sp.sympify(where.start)) == 0 and sp.expand(sp.sympify(where.stop) - E) == 0:
                    blocks.append(block)
                else:
                    raise Stuck(f"{role}: runs of listed experts mixed with bands of new experts")
            cut[role] = dataclasses.replace(edit, blocks=tuple(blocks))
        out.append((f"experts {a}-{b - 1}" if b - a > 1 else f"expert {a}", cut))
    return out


def _rest(edit):
    """The old shape without the experts axis (a dense source has none)."""
    return tuple(edit.old_shape[1:]) if edit.source[0] in EXPERT_ROLES else tuple(edit.old_shape)


def _dropped(block):
    """The block without its experts axis (an old selection repeated along it has none to drop)."""
    source = block.source
    if isinstance(source, Old) and len(source.index) == len(block.where):
        source = dataclasses.replace(source, index=source.index[1:])
    return dataclasses.replace(block, where=block.where[1:], source=source)


def _env_all(edits):
    env = {}
    for edit in edits.values():
        env.update({sym(n): sp.Integer(v) for n, v in edit.dims})
    return env


def is_zero(edit, zeros=frozenset()) -> bool:
    """`specgrow.verify.build.is_zero`, reading an expert tensor as the proofs do: band by band, each band's
    2-D (1-D) edit of one generic expert; zero when every band is and the bands cover every block."""
    if edit.role not in EXPERT_ROLES:
        return build.is_zero(edit, zeros)
    try:
        parts = [band[edit.role] for band in generic({edit.role: edit}, 0).bands if edit.role in band]
    except Stuck:
        return False
    return bool(parts) and sum(len(p.blocks) for p in parts) == len(edit.blocks) and \
        all(build.is_zero(part, zeros) for part in parts)


def ties_after(step_plan, tied: frozenset, zeros: frozenset) -> frozenset:
    """The (router, layer) keys whose logits may tie for every token between experts of different origin.

    The routing lemma for copies (``route_copies``) needs each token's old top-k to be unique: no tie
    between distinct experts at the k-th place. On a trained router that is an assumption about the
    checkpoint (stated in the certificate). A router that an earlier step wrote can make every token
    tie: a zero or constant row shared by the experts, tiny random rows. Tracked like
    `specgrow.verify.prover.zeros_after`, but through the stages too: training need not break such a tie
    (a zero router over identical, renormalised experts gets no gradient). The routers a step writes get
    their status from their edit (`router_ties`); the others keep theirs.
    """
    return build.carried(step_plan, tied, lambda edit: router_ties(edit, tied, zeros))


def router_ties(edit, tied=frozenset(), zeros=frozenset()) -> bool:
    """Whether a router edit may leave experts of different origin with logits that tie for every token.

    Rows that read the old router's rows (the experts grown from old ones) tie as the old logits do: a
    growth that keeps the function keeps each expert's logits, and noise or new columns in such rows
    meet a duplicated or zero-padded stream, where they cancel or read zeros. Fresh rows (a new layer,
    an upcycled router, added experts) are distinct only when drawn at random, per element, with std at
    least `DISTINCT`. Conservative: anything else (constants, a tiny draw, a layout it cannot read) ties.
    """
    if edit.role != ROUTER:
        return False
    inherited = edit.source is not None and (edit.source in zeros or edit.source in tied)
    env = {sym(n): sp.Integer(v) for n, v in edit.dims}
    bounds, spans = set(), []
    for block in edit.blocks:
        where = block.where[0]
        if not isinstance(where, Range) or sp.sympify(where.step) != 1:
            return True
        lo, hi = (int(sp.sympify(v).xreplace(env)) for v in (where.start, where.stop))
        bounds |= {lo, hi}
        spans.append((lo, hi, block))
    bounds = sorted(bounds)
    for lo, hi in zip(bounds, bounds[1:]):
        covering = [block for a, b, block in spans if a <= lo and hi <= b]
        if any(_grown(block) for block in covering):
            if inherited:
                return True
        elif not any(_drawn(block, tied, zeros) for block in covering):
            return True
    return False


def _grown(block) -> bool:
    """A block that gives each row its old expert's row."""
    src = block.source
    return isinstance(src, Old) and len(src.index) == len(block.where) and sp.sympify(src.scale) != 0


def _drawn(block, tied, zeros) -> bool:
    """A block of random values drawn per element, large enough for float32 to tell the rows apart."""
    src = block.source
    if not isinstance(src, Random):
        return False
    if src.dist == "like_old" and (src.like in zeros or src.like in tied):
        return False  # a zero or constant router has std 0: its draws are its mean, one row for all
    return abs(float(src.param)) >= DISTINCT
