"""Each verdict stands for its own step: no witness borrowed from another step, none faked by rounding.

* A step with a nonzero residual is REFUTED only by a float64 witness of that step alone; a
  step that changes nothing on its own is never REFUTED because another step of the spec does.
* Float32 rounding of an earlier step cannot refute a later one: witnesses run in float64.
* What a spec may ask is bounded at validation where floating point would break PROVED
  (huge inits give inf and NaN; large cancelling noise rounds apart).
"""

from __future__ import annotations

import pytest
import torch

from specgrow.errors import SpecError
from specgrow.spec import load_spec_text
from specgrow.verify.prover import prove_spec
from specgrow.verify.result import Verdict
from tests.helpers import changed64, grow, spec_text

LAYERNORM = dict(norm="layernorm", activation="gelu_tanh", bias=True, tie_embeddings=True)
REFUTED_MLP = {"mlp": {"to": 40, "init": {"w_out": {"normal": 1.0}}}}
INVISIBLE_SHIFT = {"layers": {"add": 1, "init": {"o": "ones"}}}  # c * [1, ..., 1]: LayerNorm removes it


def verdicts(certificate):
    return [s.verdict for s in certificate.steps]


def test_a_step_that_preserves_on_its_own_is_not_refuted_beside_one_that_does_not():
    alone = load_spec_text(spec_text([INVISIBLE_SHIFT], **LAYERNORM))
    before, after, _, _ = grow(alone, torch.float64)
    assert not changed64(before, after)  # the shift really is invisible
    cert = prove_spec(load_spec_text(spec_text([REFUTED_MLP, INVISIBLE_SHIFT], **LAYERNORM)))
    assert cert.verdict is Verdict.REFUTED
    assert verdicts(cert) == [Verdict.REFUTED, Verdict.UNKNOWN]
    assert cert.steps[0].counterexample.step == 0 and cert.steps[1].counterexample is None
    assert all(o.verdict is not Verdict.REFUTED for o in cert.steps[1].obligations)


def test_each_stage_is_judged_alone():
    text = spec_text([], **LAYERNORM).replace("steps: []\n", "")
    text += ("stages:\n"
             "- {at_step: 10, steps: [{mlp: {to: 40, init: {w_out: {normal: 1.0}}}}]}\n"
             "- {at_step: 20, steps: [{layers: {add: 1, init: {o: ones}}}]}\n"
             "- {at_step: 30, steps: [{heads: {add: 2}}]}\n")
    cert = prove_spec(load_spec_text(text))
    assert [s.verdict for s in cert.stages] == [Verdict.REFUTED, Verdict.UNKNOWN, Verdict.PROVED]
    assert cert.stages[0].counterexample.stage == 0
    assert cert.stages[1].counterexample is None and cert.stages[2].counterexample is None


def test_float32_rounding_of_an_earlier_step_does_not_refute_a_later_one():
    """Hidden duplicate with cancelling noise, then an inserted layer whose output adds a constant
    to every residual dim under LayerNorm (invisible downstream). In float32 with amplified norm
    gains the first step's rounding once passed for a change made by the second; in float64 the
    grown model equals the original to rounding, and the second step is not REFUTED."""
    steps = [{"hidden": {"to": 32, "method": "duplicate", "noise": 0.1}}, INVISIBLE_SHIFT]
    spec = load_spec_text(spec_text(steps, **LAYERNORM))
    before, after, _, _ = grow(spec, torch.float64)
    assert not changed64(before, after)
    cert = prove_spec(spec)
    assert verdicts(cert) == [Verdict.PROVED, Verdict.UNKNOWN] and cert.verdict is Verdict.UNKNOWN


def test_a_missing_eps_rescale_below_float32_resolution_is_refuted():
    """RMSNorm zero-pad with the gain rescaled but not eps = 1e-6: about 1e-6 relative, which a
    float32 witness cannot tell from rounding. The float64 witness refutes it."""
    spec = load_spec_text(spec_text([{"hidden": {"to": 20, "rescale": "gain"}}], norm_eps=1e-6))
    before, after, _, _ = grow(spec, torch.float64)
    relative = float((after - before).abs().max() / before.abs().max())
    assert 1e-9 < relative < 1e-4
    cert = prove_spec(spec)
    assert cert.verdict is Verdict.REFUTED
    cx = cert.steps[0].counterexample
    assert cx.dtype == "float64" and cx.max_abs_diff > cx.relative_bound


@pytest.mark.parametrize("step, bound", [
    ({"hidden": {"to": 20, "init": {"read": {"normal": 1e39}}}}, "<= 10"),
    ({"mlp": {"to": 40, "init": {"w_in": {"normal": 1e39}}}}, "<= 10"),
    ({"heads": {"add": 2, "init": {"q": {"like_old": 1e40}, "k": {"like_old": 1e40}}}}, "<= 10"),
    ({"heads": {"add": 2, "method": "duplicate", "noise": 1e40}}, "<= 0.1"),
    ({"mlp": {"to": 40, "method": "duplicate", "noise": 10}}, "<= 0.1"),
    ({"hidden": {"to": 32, "method": "duplicate", "noise": 10}}, "<= 0.1"),
    ({"heads": {"add": 2, "method": "duplicate", "noise": 100}}, "<= 0.1"),
    ({"hidden": {"to": 32, "method": "duplicate", "noise": 1.0}}, "<= 0.1"),
])
def test_what_floating_point_cannot_keep_is_refused_at_validation(step, bound):
    """NaN logits (1e39 overflows float32) and noise that rounds apart beyond apply's tolerance
    were PROVED; they are refused, the message quoting the bound and why."""
    with pytest.raises(SpecError, match=rf"expected {bound}, found .*(float32|round)"):
        load_spec_text(spec_text([step]))


def test_the_largest_allowed_noise_passes_apply_check_in_float32_and_bfloat16():
    """At the bound (0.1) the cancelling copies round apart well within apply's tolerance."""
    from specgrow.lower.stream import grow_state
    from specgrow.lower.numeric import compare, logits, tokens_for
    from specgrow.models.reference import random_state
    from specgrow.transforms import compile_spec

    dims = dict(hidden=64, mlp=256, heads=4, kv_heads=4, key=16, value=16, layers=2, vocab=256, positions=64)
    for step in ({"mlp": {"to": 512, "method": "duplicate", "noise": 0.1}},
                 {"heads": {"add": 4, "method": "duplicate", "noise": 0.1}},
                 {"hidden": {"to": 128, "method": "duplicate", "noise": 0.1}}):
        spec = load_spec_text(spec_text([step], dims=dims, norm_eps=1e-6))
        plan = compile_spec(spec)
        for dtype in (torch.float32, torch.bfloat16):
            states = grow_state(random_state(plan.before, 0, dtype), plan.concrete(), "cpu")
            tokens = tokens_for(plan.before, 0, "cpu")
            result = compare(logits(plan.before, states[0], tokens), logits(plan.after, states[-1], tokens), dtype, 0)
            assert result.passed, (step, dtype, result.max_abs_diff)


UNDERFLOWING = """specgrow: 1
model:
  dims: {hidden: 4, mlp: 4, heads: 1, kv_heads: 1, key: 2, value: 1, layers: 1, vocab: 5, positions: 3}
  norm_eps: 0.0
  activation: relu
  position: none
  final_norm: false
  qk_norm: head
  norm_offset: 1
  parallel_residual: true
seed: 0
steps:
- layers: {add: 1, at: 0, init: {rest: {normal: %s}}}
"""


def test_a_norm_with_eps_0_of_an_underflowing_input_is_not_proved():
    """A new layer whose query projection is normal(1e-30): in real numbers its eps-0 QK-norm rescales the tiny
    query back, but in float32 the query's mean square underflows to 0 and the norm gives 0/0, so apply's
    check sees NaN. The prover does not promise what the bytes cannot keep: UNKNOWN, not PROVED. At 1e-8 the
    mean square (1e-16) stays representable: PROVED, and apply's float32 check passes."""
    from specgrow.lower.numeric import compare, logits, tokens_for
    from specgrow.lower.stream import grow_state
    from specgrow.models.reference import random_state
    from specgrow.transforms import compile_spec

    tiny = prove_spec(load_spec_text(UNDERFLOWING % "1.0e-30"))
    assert tiny.verdict is Verdict.UNKNOWN
    assert any("underflows" in (o.stuck or "") for s in tiny.steps for o in s.obligations)
    spec = load_spec_text(UNDERFLOWING % "1.0e-8")
    assert prove_spec(spec).verdict is Verdict.PROVED
    plan = compile_spec(spec)
    states = grow_state(random_state(plan.before, 0), plan.concrete(), "cpu")
    tokens = tokens_for(plan.before, 0, "cpu")
    assert compare(logits(plan.before, states[0], tokens), logits(plan.after, states[-1], tokens),
                   torch.float32, 0).passed
