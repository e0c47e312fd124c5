"""Growth during training of mixture-of-experts layers of the reference model, with AdamW state.

`grow_module` on `specgrow.models.reference.ReferenceModel` for ``experts`` (duplicate, split,
add), ``mlp`` growth of experts and ``upcycle`` (a dense MLP rebuilt as a `MoE`), and the
moment rules of `specgrow.lower.optimizer` for their blocks: copies read by m blocks take
``m / m`` and ``v / m**2``, the repeated `Old` blocks of upcycling (fewer axes than the block)
copy the dense tensor's moments into every expert, divided as E copies are, and new experts
start with zero ``exp_avg``.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from specgrow.errors import UnprovedError  # noqa: E402
from specgrow.grow import GrowthSchedule, grow_module  # noqa: E402
from specgrow.models.reference import MLP, MoE, build, random_state  # noqa: E402
from specgrow.shape import ModelShape  # noqa: E402
from specgrow.spec import load_spec_text  # noqa: E402

VOCAB = 11
MODEL = ("{dims: {hidden: 8, mlp: 16, heads: 2, layers: 2, vocab: 11, positions: 8}, "
         "activation: swiglu, position: rope%s}")
MOE = ", moe: {experts: 4, top_k: 2, width: 6, renormalize: %s}"
ATOL = 1e-5  # fp32 logits of the grown module against the old one's


def _spec(steps: str, moe: str | None = "true", stages: bool = False):
    model = MODEL % ("" if moe is None else MOE % moe)
    body = f"stages: [{{at_step: 3, steps: [{steps}]}}]" if stages else f"steps: [{steps}]"
    return load_spec_text(f"specgrow: 1\nmodel: {model}\nseed: 0\n{body}\n")


def _loss(model, tokens):
    logits = model(tokens[:, :-1])
    return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))


def _trained(spec, steps: int = 3):
    shape = ModelShape.from_spec(spec.model)
    model = build(shape, random_state(shape, seed=0)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    tokens = torch.randint(0, VOCAB, (4, 8), generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        optimizer.zero_grad()
        _loss(model, tokens).backward()
        optimizer.step()
    return model, optimizer, tokens


def _train_step(model, optimizer, tokens) -> float:
    optimizer.zero_grad()
    loss = _loss(model, tokens)
    loss.backward()
    optimizer.step()
    return float(loss)


def _check_state(model, optimizer):
    params = list(model.parameters())
    listed = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(listed) == len(params) and {id(p) for p in listed} == {id(p) for p in params}
    for p in params:
        state = optimizer.state[p]
        assert state["exp_avg"].shape == p.shape and state["exp_avg_sq"].shape == p.shape
        assert float(state["step"]) == 3
        assert torch.isfinite(state["exp_avg"]).all() and (state["exp_avg_sq"] >= 0).all()


GROWTHS = [
    ("{experts: {to: 8}}", "true"),
    ("{experts: {to: 8}}", "false"),
    ("{experts: {to: 12, method: duplicate, noise: 0.01}}", "true"),
    ("{experts: {to: 8, method: split}}", "true"),
    ("{experts: {to: 8, method: split}}", "false"),
    ("{mlp: {to: 12}}", "true"),
    ("{mlp: {to: 12, experts: [1, 2], init: {w_in: {normal: 0.5}}}}", "false"),
    ("{mlp: {to: 12, method: duplicate, noise: 0.01}}", "false"),
    ("{upcycle: {experts: 4, top_k: 2}}", None),
    ("{upcycle: {experts: 4, top_k: 2, renormalize: false}}", None),
    ("{upcycle: {experts: 4, top_k: 2, layers: [1], init: {router: {normal: 0.5}}}}", None),
    ("{upcycle: {experts: 4, top_k: 1}}", None),
]


@pytest.mark.parametrize("steps, moe", GROWTHS)
def test_grown_moe_keeps_the_logits_and_trains_on(steps, moe):
    spec = _spec(steps, moe)
    model, optimizer, tokens = _trained(spec)
    grown, grown_optimizer = grow_module(model, spec, optimizer)
    assert grown.training
    with torch.no_grad():
        assert torch.allclose(grown(tokens), model(tokens), atol=ATOL, rtol=0)
    _check_state(grown, grown_optimizer)
    assert grown_optimizer.defaults == optimizer.defaults
    assert torch.isfinite(torch.tensor(_train_step(grown, grown_optimizer, tokens)))
    assert float(grown_optimizer.state[next(grown.parameters())]["step"]) == 4


def test_upcycled_layers_are_mixtures():
    spec = _spec("{upcycle: {experts: 4, top_k: 2, layers: [1]}}", None)
    model, optimizer, _ = _trained(spec)
    grown, _ = grow_module(model, spec, optimizer)
    assert isinstance(grown.layers[0].mlp, MLP) and isinstance(grown.layers[1].mlp, MoE)
    assert grown.layers[1].mlp.experts.up.weight.shape == (4, 16, 8)
    assert grown.layers[1].mlp.router.weight.shape == (4, 8)


@pytest.mark.parametrize("renormalize", ["true", "false"])
def test_upcycled_experts_take_the_dense_moments(renormalize):
    """Each expert of an upcycled layer reads the dense tensor E times: ``m / E``, and ``v / (E s)**2``
    with s = E/k for the down projection stored times E/k without renormalisation; the new router
    starts with zero moments (no router to seed its ``v`` from)."""
    spec = _spec(f"{{upcycle: {{experts: 4, top_k: 2, renormalize: {renormalize}}}}}", None)
    model, optimizer, _ = _trained(spec)
    grown, new = grow_module(model, spec, optimizer)
    for i in range(2):
        dense, moe = model.layers[i].mlp, grown.layers[i].mlp
        for name in ("up", "gate", "down"):
            old = optimizer.state[getattr(dense, name).weight]
            state = new.state[getattr(moe.experts, name).weight]
            s = 2.0 if name == "down" and renormalize == "false" else 1.0
            for e in range(4):
                torch.testing.assert_close(state["exp_avg"][e], old["exp_avg"] / (4 * s))
                torch.testing.assert_close(state["exp_avg_sq"][e], old["exp_avg_sq"] / (4 * s * s) ** 2)
        router = new.state[moe.router.weight]
        assert not router["exp_avg"].any() and not router["exp_avg_sq"].any()


def test_duplicated_experts_step_as_the_old_model_does():
    """Duplicated experts (all copies selected, top_k doubled) have symmetric gradients, so the grown
    moments (``m / 2``, ``v / 4`` for every copy, router rows included) make one AdamW step of the grown
    model compute what the old model computes after its own step."""
    spec = _spec("{experts: {to: 8, method: duplicate}}")
    model, optimizer, tokens = _trained(spec)
    grown, new = grow_module(model, spec, optimizer)
    _train_step(model, optimizer, tokens)
    _train_step(grown, new, tokens)
    with torch.no_grad():
        assert torch.allclose(grown(tokens), model(tokens), atol=ATOL, rtol=0)


def test_added_experts_start_with_zero_moments():
    """``add`` is refuted (a bias-free router selects new experts); grown anyway, its new experts'
    ``exp_avg`` is zero and their ``exp_avg_sq`` the old tensor's mean; old experts keep theirs."""
    spec = _spec("{experts: {to: 6, method: add}}")
    model, optimizer, tokens = _trained(spec)
    with pytest.raises(UnprovedError):
        grow_module(model, spec, optimizer)
    with pytest.warns(UserWarning):
        grown, new = grow_module(model, spec, optimizer, allow_unproved=True, check=False)
    _check_state(grown, new)
    for i in range(2):
        old = optimizer.state[model.layers[i].mlp.experts.up.weight]
        state = new.state[grown.layers[i].mlp.experts.up.weight]
        torch.testing.assert_close(state["exp_avg"][:4], old["exp_avg"])
        assert not state["exp_avg"][4:].any()
        torch.testing.assert_close(state["exp_avg_sq"][4:], old["exp_avg_sq"].mean().expand(2, 6, 8))
    _train_step(grown, new, tokens)


def test_schedule_upcycles_then_duplicates():
    """A random router (any router keeps a renormalised upcycling exact): a zero one ties every logit,
    and with identical experts it gets no gradient, so the ties last (see the next test)."""
    text = ("specgrow: 1\nmodel: " + MODEL % "" + "\nseed: 0\nstages:\n"
            "  - {at_step: 3, steps: [{upcycle: {experts: 4, top_k: 2, init: {router: {normal: 0.5}}}}]}\n"
            "  - {at_step: 5, steps: [{experts: {to: 8, method: duplicate}}]}\n")
    spec = load_spec_text(text)
    shape = ModelShape.from_spec(spec.model)
    model = build(shape, random_state(shape, seed=0)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tokens = torch.randint(0, VOCAB, (4, 8), generator=torch.Generator().manual_seed(1))
    schedule = GrowthSchedule(spec)
    for step in range(7):
        before = model
        model, optimizer = schedule.step(step, model, optimizer)
        if model is not before:
            with torch.no_grad():
                assert torch.allclose(model(tokens), before(tokens), atol=ATOL, rtol=0)
        _train_step(model, optimizer, tokens)
    assert schedule.grown_at == [3, 5]
    assert model.layers[0].mlp.experts.up.weight.shape == (8, 16, 8)
    assert model.layers[0].mlp.top_k == 4


def test_default_upcycle_router_is_random_when_renormalised():
    """Renormalised, any router is exact: the default is a small random one (no ties)."""
    spec = _spec("{upcycle: {experts: 4, top_k: 2}}", None)
    model, optimizer, tokens = _trained(spec)
    model, optimizer = grow_module(model, spec, optimizer)
    assert model.layers[0].mlp.router.weight.abs().min() > 0


def test_duplicating_a_tied_router_is_caught():
    """After a zero-router upcycle (``init: {router: zeros}``) with renormalisation every router logit ties
    and stays tied in training (identical selected experts: the router's gradient is zero). ``experts:
    duplicate`` assumes a unique old top-k (`specgrow.verify.experts.TIES`); under ties the doubled top-k
    picks other copies, and the numeric check refuses the grown module."""
    from specgrow.errors import NumericCheckError

    spec = _spec("{upcycle: {experts: 4, top_k: 2, init: {router: zeros}}}", None)
    model, optimizer, tokens = _trained(spec)
    model, optimizer = grow_module(model, spec, optimizer)
    for _ in range(3):
        _train_step(model, optimizer, tokens)
    assert not model.layers[0].mlp.router.weight.any()
    model_text = MODEL % ", moe: {experts: 4, top_k: 2, width: 16, renormalize: true}"
    duplicate = load_spec_text(f"specgrow: 1\nmodel: {model_text}\nseed: 0\n"
                               "steps: [{experts: {to: 8, method: duplicate}}]\n")
    with pytest.raises(NumericCheckError):
        grow_module(model, duplicate, optimizer)
