"""The prover proves what the executor will do: it reads the IR, not the step's name.

Each test corrupts one edit of a correct plan, the way a buggy transform would, and checks
that the same step is no longer PROVED (REFUTED for a wrong value, UNKNOWN for a malformed edit).
"""

from __future__ import annotations

import dataclasses

import pytest

from specgrow.ir import Block, Const, Old, Random, Range
from specgrow.transforms import compile_spec
from specgrow.verify.prover import prove_step
from specgrow.verify.result import Verdict, combine
from tests.helpers import make_spec


def verdict_with(spec, role, change):
    """The step verdict after replacing the first edit of ``role`` by ``change(edit)``."""
    step_plan = compile_spec(spec).steps[0]
    edits = list(step_plan.edits)
    index = next(i for i, e in enumerate(edits) if e.role == role)
    edits[index] = change(edits[index])
    step_plan = dataclasses.replace(step_plan, edits=tuple(edits))
    obligations, _ = prove_step(step_plan, spec.steps[0], spec.model.norm_eps)
    return combine(o.verdict for o in obligations)


def replace_blocks(edit, fn):
    return dataclasses.replace(edit, blocks=tuple(fn(b) for b in edit.blocks))


def test_untouched_plan_is_proved():
    spec = make_spec([{"mlp": {"to": 48}}])
    assert verdict_with(spec, "mlp.down.weight", lambda e: e) is Verdict.PROVED


def test_random_where_the_transform_should_write_zeros_is_refuted():
    spec = make_spec([{"mlp": {"to": 48}}])
    noisy = lambda b: Block(b.where, Random("normal", 1.0, 7)) if isinstance(b.source, Const) else b  # noqa: E731
    assert verdict_with(spec, "mlp.down.weight", lambda e: replace_blocks(e, noisy)) is Verdict.REFUTED


def test_a_forgotten_rescale_is_refuted():
    spec = make_spec([{"key": {"to": 12}}])
    unscaled = lambda b: dataclasses.replace(b, source=dataclasses.replace(b.source, scale=1)) \
        if isinstance(b.source, Old) else b  # noqa: E731
    assert verdict_with(spec, "attn.k.weight", lambda e: replace_blocks(e, unscaled)) is Verdict.REFUTED


def test_a_wrong_half_in_duplication_is_refuted():
    spec = make_spec([{"mlp": {"to": 48, "method": "duplicate"}}])
    third = lambda b: dataclasses.replace(b, source=dataclasses.replace(b.source, scale=b.source.scale / 3 * 2)) \
        if isinstance(b.source, Old) and b.source.scale != 1 else b  # noqa: E731
    assert verdict_with(spec, "mlp.down.weight", lambda e: replace_blocks(e, third)) is Verdict.REFUTED


@pytest.mark.parametrize("damage", ["overlap", "gap"])
def test_a_malformed_edit_is_unknown_never_proved(damage):
    spec = make_spec([{"mlp": {"to": 48}}])

    def change(edit):
        blocks = list(edit.blocks)
        if damage == "overlap":  # a second writer of the old columns
            blocks.append(Block(blocks[0].where, Const(0.0)))
        else:  # the new columns written by nobody
            blocks = [b for b in blocks if not isinstance(b.source, Const)]
        return dataclasses.replace(edit, blocks=tuple(blocks))

    assert verdict_with(spec, "mlp.down.weight", change) is Verdict.UNKNOWN


def test_reads_from_the_wrong_old_rows_are_refuted():
    spec = make_spec([{"heads": {"add": 2, "method": "duplicate"}}])

    def shifted(edit):  # new heads copy query rows one head further on than their kv groups
        def move(b):
            if isinstance(b.source, Old) and b.where[0].start != 0:
                rows = b.source.index[0]
                k = 8
                return dataclasses.replace(b, source=dataclasses.replace(
                    b.source, index=(Range(rows.start + k, rows.stop + k),) + b.source.index[1:]))
            return b
        return replace_blocks(edit, move)

    assert verdict_with(spec, "attn.q.weight", shifted) is not Verdict.PROVED


def test_a_shifted_rotary_interleave_is_not_proved():
    """Old rotary pair i placed at new pair 2i + 1 instead of 2i: the pairing (i with i + k/2)
    still holds, but every old frequency changes (theta^(-2(2i+1)/2k) != theta^(-2i/k)). Only
    the rotary-frequency side condition tells the two placements apart."""
    spec = make_spec([{"key": {"to": 16, "placement": "interleave"}}], position="rope")

    def shift(edit):
        def move(b):
            where = b.where[0]
            inner = where.inner
            start = inner.start + 1 if isinstance(b.source, Old) else inner.start - 1
            return dataclasses.replace(b, where=(dataclasses.replace(
                where, inner=dataclasses.replace(inner, start=start)),) + b.where[1:])
        return replace_blocks(edit, move)

    def both(step_plan):
        return tuple(shift(e) if e.role in ("attn.q.weight", "attn.k.weight") else e for e in step_plan.edits)

    step_plan = compile_spec(spec).steps[0]
    shifted = dataclasses.replace(step_plan, edits=both(step_plan))
    obligations, _ = prove_step(shifted, spec.steps[0], spec.model.norm_eps)
    assert combine(o.verdict for o in obligations) is not Verdict.PROVED
    unshifted, _ = prove_step(step_plan, spec.steps[0], spec.model.norm_eps)
    assert combine(o.verdict for o in unshifted) is Verdict.PROVED


def test_zero_tracking_that_took_random_blocks_for_zeros_would_be_caught(monkeypatch):
    """The golden `layers-rest-normal-then-mlp` guards the zero-tracking: seeded with the bug of
    counting every random block as zero, it turns PROVED (and the function changes)."""
    from pathlib import Path

    from specgrow.spec import load_spec
    from specgrow.verify import prover

    golden = load_spec(Path(__file__).parent / "golden" / "layers-rest-normal-then-mlp.yaml")
    assert prover.prove_spec(golden).verdict is Verdict.REFUTED
    monkeypatch.setattr(prover, "is_zero", lambda edit, zeros=frozenset(): all(
        isinstance(b.source, (Random, Const)) and getattr(b.source, "value", 0) == 0 for b in edit.blocks))
    prover._CACHE.clear()
    try:
        assert prover.prove_spec(golden).verdict is Verdict.PROVED
    finally:
        prover._CACHE.clear()
