"""Growing inside a training loop: `grow_module`, Adam state, `apply --optimizer`, `GrowthSchedule`.

Tolerances: losses and logits of fp32 models are compared with atol = rtol = 1e-4 (the
numeric check's fp32 tolerance); optimizer-step identities are checked on fp64 models,
where "exact" means within 1e-12.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from specgrow import GrowthSchedule, grow_adam_state, grow_module
from specgrow.arch import REFERENCE
from specgrow.cli import main
from specgrow.errors import CheckpointError, InputError, NumericCheckError, SpecError, UnprovedError
from specgrow.ir import Old
from specgrow.lower.stream import indices
from specgrow.models.reference import build, random_state
from specgrow.shape import ModelShape, tensor_name
from specgrow.spec import load_spec, load_spec_text
from specgrow.transforms import compile_spec

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: threads only add overhead (and the machine may be shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
CANONICAL = sorted(p.stem for p in (ROOT / "proofs" / "specs").glob("*.yaml"))
ZERO_PAD = ["mlp", "heads", "value", "key", "hidden", "layers"]
DUPLICATE = ["mlp-duplicate", "heads-duplicate", "hidden-duplicate", "hidden-duplicate-layernorm"]
ATOL = RTOL = 1e-4  # fp32
EXACT = 1e-12  # fp64


def canonical(name: str):
    return load_spec(ROOT / "proofs" / "specs" / f"{name}.yaml")


def batch(shape, seed: int, size: int = 8, length: int = 12) -> torch.Tensor:
    return torch.randint(0, shape.vocab, (size, min(length, shape.positions - 1) + 1),
                         generator=torch.Generator().manual_seed(seed))


def loss_of(model, tokens) -> torch.Tensor:
    return F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1).float(), tokens[:, 1:].flatten())


def step(model, optimizer, tokens) -> None:
    optimizer.zero_grad()
    loss_of(model, tokens).backward()
    optimizer.step()


def trained(spec, *, steps: int = 5, dtype=torch.float32, lr: float = 1e-3, **adam):
    """A reference model of the spec's shape and its AdamW after ``steps`` steps on random tokens."""
    shape = ModelShape.from_spec(spec.model)
    model = build(shape, {k: v.to(dtype) for k, v in random_state(shape, spec.seed).items()}).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, **adam)
    for i in range(steps):
        step(model, optimizer, batch(shape, i))
    return model, optimizer


def old_blocks(spec):
    """``(grown name, where, old name, index, scale)`` of every block copied from an old tensor."""
    for plan_step in compile_spec(spec).concrete().steps:
        for edit in plan_step.edits:
            for block in edit.blocks:
                if isinstance(block.source, Old) and edit.source is not None:
                    yield (tensor_name(edit.role, edit.layer), block.where, tensor_name(*edit.source),
                           block.source.index, block.source.scale)


def take(tensor: torch.Tensor, selection) -> torch.Tensor:
    """``tensor`` at the outer product of per-axis selections."""
    for axis, sel in enumerate(selection):
        ix = indices(sel, "cpu")
        tensor = tensor[(slice(None),) * axis + (ix,)]
    return tensor


# ------------------------------------------------------------------ growth keeps the loss
@pytest.mark.parametrize("name", CANONICAL + ["six"])
def test_loss_unchanged_right_after_growth(name):
    spec = load_spec(ROOT / "examples" / "six.yaml") if name == "six" else canonical(name)
    model, optimizer = trained(spec)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moments = {k: v["exp_avg"].clone() for k, v in zip(model.state_dict(), optimizer.state.values())}
    tokens = batch(model.shape, 99)
    grown, grown_opt = grow_module(model, spec, optimizer)
    with torch.no_grad():
        torch.testing.assert_close(loss_of(grown, tokens), loss_of(model, tokens), atol=ATOL, rtol=RTOL)
    assert grown.shape == compile_spec(spec).after and grown.training
    for p in grown.parameters():  # every grown parameter has state of its shape, step counters kept
        state = grown_opt.state[p]
        assert state["exp_avg"].shape == p.shape and state["exp_avg_sq"].shape == p.shape
        assert float(state["step"]) == 5.0
    step(grown, grown_opt, tokens)  # the grown optimizer steps, and the input model is not touched
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for k, v in zip(model.state_dict(), optimizer.state.values()):
        assert torch.equal(v["exp_avg"], moments[k]), k


# ------------------------------------------------------------------ the first step after growth
@pytest.mark.parametrize("name", ZERO_PAD)
def test_zero_pad_step_moves_old_coordinates_as_the_old_model(name):
    """Zero-pad growth: one AdamW step puts every copied old coordinate where the old model's step puts it."""
    spec = canonical(name)
    model, optimizer = trained(spec, dtype=torch.float64, steps=300)
    grown, grown_opt = grow_module(model, spec, optimizer)
    tokens = batch(model.shape, 1234)
    step(model, optimizer, tokens)
    step(grown, grown_opt, tokens)
    old, new = dict(model.named_parameters()), dict(grown.named_parameters())
    copied = scaled = 0
    for grown_name, where, old_name, index, scale in old_blocks(spec):
        got, want = take(new[grown_name].detach(), where), scale * take(old[old_name].detach(), index)
        if scale == 1:
            torch.testing.assert_close(got, want, atol=EXACT, rtol=0)
            copied += 1
        else:  # rescaled (key: sqrt(k'/k), hidden: RMSNorm gains): Adam's step is s × the old one, up to
            # the fresh gradient's share of v (see specgrow.lower.optimizer); 1% of a step here
            torch.testing.assert_close(got, want, atol=0.01 * 1e-3 * scale, rtol=0)
            scaled += 1
    assert copied > 0
    assert scaled > 0 or name not in ("key", "hidden")


def _function_ratio(spec, rewrite=None) -> float:
    """max |grown after a step − old after a step| / max |old after − old before|, on fp64 logits."""
    model, optimizer = trained(spec, dtype=torch.float64, steps=300)
    grown, grown_opt = grow_module(model, spec, optimizer)
    if rewrite is not None:
        rewrite(grown, grown_opt)
    tokens, probe = batch(model.shape, 1234), batch(model.shape, 7)[:, :-1]
    with torch.no_grad():
        start = model(probe)
    step(model, optimizer, tokens)
    step(grown, grown_opt, tokens)
    with torch.no_grad():
        old, new = model(probe), grown(probe)
    return float((new - old).abs().max() / (old - start).abs().max())


@pytest.mark.parametrize("name", DUPLICATE)
def test_duplicate_moment_scaling_keeps_the_first_step_function_consistent(name):
    spec = canonical(name)
    assert _function_ratio(spec) < 1e-2

    def gradient_like(grown, grown_opt):  # v / S^2 instead of v / (S s)^2: Adam then moves halves a full step
        params = dict(grown.named_parameters())
        for grown_name, where, _, _, scale in old_blocks(spec):
            v = grown_opt.state[params[grown_name]]["exp_avg_sq"]
            ix = [indices(sel, "cpu") for sel in where]
            if len(ix) == 1:
                v[ix[0]] *= scale ** 2
            else:
                rows = torch.arange(v.shape[0])[ix[0]] if isinstance(ix[0], slice) else ix[0]
                cols = torch.arange(v.shape[1])[ix[1]] if isinstance(ix[1], slice) else ix[1]
                v[rows[:, None], cols[None, :]] *= scale ** 2

    assert _function_ratio(spec, gradient_like) > 0.1  # the check can fail


def test_new_slices_first_update_is_not_three_times_the_learning_rate():
    lr = 1e-3
    spec = canonical("mlp")  # new down-projection columns start at zero and get a gradient at once
    model, optimizer = trained(spec, steps=50, lr=lr)
    for state in optimizer.state.values():  # growth late in training: bias corrections ≈ 1
        state["step"].fill_(10_000)
    width = model.shape.layers[0].mlp

    def first_update(zero_v: bool) -> tuple[float, float]:
        """Largest first update of the new columns and of the old ones, of the grown down projections."""
        grown, grown_opt = grow_module(model, spec, optimizer)
        downs = [layer.mlp.down.weight for layer in grown.layers]
        if zero_v:
            for down in downs:
                grown_opt.state[down]["exp_avg_sq"][:, width:] = 0
        before = [down.detach().clone() for down in downs]
        step(grown, grown_opt, batch(model.shape, 77))
        moved = [(down.detach() - b).abs() for down, b in zip(downs, before)]
        return max(float(m[:, width:].max()) for m in moved), max(float(m[:, :width].max()) for m in moved)

    (seeded, old), (unseeded, _) = first_update(False), first_update(True)
    print(f"first update: new {seeded / lr:.2f} lr (v seeded), {unseeded / lr:.2f} lr (v = 0); old {old / lr:.2f} lr")
    assert seeded < 1.5 * old  # sized like the old coordinates' steps
    assert unseeded > 2.5 * lr  # v = 0: lr * (1 - beta1) / sqrt(1 - beta2) ≈ 3.16 lr


# ------------------------------------------------------------------ refusals
def test_mismatched_optimizer_state_is_refused():
    spec = canonical("mlp")
    model, _ = trained(spec, steps=1)
    other, other_opt = trained(canonical("mlp"), steps=1)
    with pytest.raises(InputError, match="not in the model"):
        grow_module(model, spec, other_opt)
    params = dict(model.named_parameters())
    state = {name: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3)}
             for name in params}
    groups = [{"lr": 1e-3, "params": list(params)}]
    with pytest.raises(CheckpointError, match="belongs to another model"):
        grow_adam_state(state, groups, params, REFERENCE, "", model.shape, compile_spec(spec).concrete().steps)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step(model, sgd, batch(model.shape, 0))
    with pytest.raises(CheckpointError, match="Adam/AdamW"):
        grow_module(model, spec, sgd)


def test_module_of_another_shape_is_refused():
    model, _ = trained(canonical("heads"), steps=0)
    with pytest.raises(CheckpointError, match="not the one the spec grows from"):
        grow_module(model, load_spec_text(
            (ROOT / "proofs" / "specs" / "mlp.yaml").read_text().replace("hidden: 16", "hidden: 24")), None)


def test_unproved_spec_is_refused_unless_allowed():
    text = (ROOT / "proofs" / "specs" / "mlp.yaml").read_text().replace(
        "mlp: {to: 48}", "mlp: {to: 48, init: {w_out: {normal: 0.5}}}")
    spec = load_spec_text(text, "bad.yaml")
    model, optimizer = trained(spec, steps=1)
    with pytest.raises(UnprovedError, match="REFUTED"):
        grow_module(model, spec, optimizer)
    with pytest.warns(UserWarning, match="changes the function"):
        grown, _ = grow_module(model, spec, optimizer, allow_unproved=True)
    assert grown.layers[0].mlp.up.weight.shape[0] == 48
    from specgrow.grow import _grow  # the numeric check alone also catches it

    with pytest.raises(NumericCheckError, match="changes the function"):
        _grow(model, None, spec, compile_spec(spec).steps, allow_unproved=False, check=True)


# ------------------------------------------------------------------ apply --optimizer
def _saved_optimizer(tmp_path: Path, spec, by_name: bool = False) -> tuple[Path, object, object]:
    model, optimizer = trained(spec)
    state = optimizer.state_dict()
    if by_name:  # the layout of torch.distributed.checkpoint.state_dict.get_optimizer_state_dict
        names = [n for n, _ in model.named_parameters()]
        state = {"state": {names[i]: v for i, v in state["state"].items()},
                 "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]]}
    path = tmp_path / ("opt-names.pt" if by_name else "opt.pt")
    torch.save(state, path)
    return path, model, optimizer


@pytest.mark.parametrize("by_name", [False, True])
def test_apply_optimizer_file_equals_grow_module(tmp_path, by_name):
    spec = load_spec(ROOT / "examples" / "six.yaml")
    path, model, optimizer = _saved_optimizer(tmp_path, spec, by_name)
    out = tmp_path / "out"
    assert main(["apply", str(ROOT / "examples" / "six.yaml"), "-o", str(out), "--optimizer", str(path), "-q"]) == 0
    saved = torch.load(out / "optimizer.pt", weights_only=True)
    grown, grown_opt = grow_module(model, spec, optimizer)
    names = [n for n, _ in grown.named_parameters()]
    if by_name:
        assert sorted(saved["state"]) == sorted(names)
        state = saved["state"]
    else:  # loads into a fresh AdamW over the grown model's parameters
        fresh = torch.optim.AdamW(grown.parameters(), lr=1e-3, weight_decay=0.1)
        fresh.load_state_dict(saved)
        state = {n: fresh.state[p] for n, p in grown.named_parameters()}
    for name, p in grown.named_parameters():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(state[name][key], grown_opt.state[p][key]), (name, key)
    manifest = (out / "specgrow-manifest.json").read_text()
    assert '"optimizer"' in manifest and "optimizer.pt" in manifest


def test_apply_refuses_a_foreign_optimizer_file_and_writes_nothing(tmp_path, capsys):
    path, _, _ = _saved_optimizer(tmp_path, canonical("mlp"))  # another model than six.yaml's
    out = tmp_path / "out"
    code = main(["apply", str(ROOT / "examples" / "six.yaml"), "-o", str(out), "--optimizer", str(path), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "belongs to another model" in err[0]
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    torch.save({"not": "an optimizer"}, tmp_path / "junk.pt")
    assert main(["apply", str(ROOT / "examples" / "six.yaml"), "-o", str(out), "--optimizer",
                 str(tmp_path / "junk.pt"), "-q"]) == 1
    assert "'state' and 'param_groups'" in capsys.readouterr().err
    assert main(["apply", str(ROOT / "examples" / "six.yaml"), "-o", str(out), "--optimizer",
                 str(tmp_path / "missing.pt"), "-q"]) == 2
    assert not out.exists()


# ------------------------------------------------------------------ HuggingFace modules
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_grow_module_on_huggingface_models(tmp_path, kind):
    transformers = pytest.importorskip("transformers")
    from test_hf import save_tiny, spec_for, tokens

    folder = tmp_path / "in"
    save_tiny(kind, folder, **({"num_key_value_heads": 2} if kind == "llama" else {}))
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).train()
    steps = [{"mlp": {"to": 96}}, {"heads": {"add": 4}}, {"hidden": {"to": 48}}, {"layers": {"add": 1, "at": 1}}]
    if kind == "gpt2":
        steps = [{"mlp": {"to": 96}}, {"heads": {"add": 4}}, {"hidden": {"to": 64, "method": "duplicate"}},
                 {"layers": {"add": 1, "at": 1}}]  # LayerNorm: hidden grows by duplication
    spec = load_spec(spec_for(folder, steps, tmp_path / "spec.yaml"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    t = tokens()
    for _ in range(3):
        optimizer.zero_grad()
        model(t, labels=t).loss.backward()
        optimizer.step()
    grown, grown_opt = grow_module(model, spec, optimizer)
    model.eval(), grown.eval()
    with torch.no_grad():
        torch.testing.assert_close(grown(t).logits, model(t).logits, atol=ATOL, rtol=RTOL)
    assert type(grown) is type(model) and grown.config.num_hidden_layers == 3
    for p in grown.parameters():
        assert grown_opt.state[p]["exp_avg"].shape == p.shape
    grown.train()
    grown_opt.zero_grad()
    grown(t, labels=t).loss.backward()
    grown_opt.step()
    # the same state through the CLI, from a saved optimizer keyed by ids
    torch.save(optimizer.state_dict(), tmp_path / "opt.pt")
    out = tmp_path / "out"
    assert main(["apply", str(tmp_path / "spec.yaml"), "--input", str(folder), "-o", str(out),
                 "--optimizer", str(tmp_path / "opt.pt"), "-q"]) == 0
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    fresh = torch.optim.AdamW(reloaded.parameters(), lr=1e-3)
    fresh.load_state_dict(torch.load(out / "optimizer.pt", weights_only=True))
    again, again_opt = grow_module(model, spec, optimizer)  # before grown_opt's step above
    expected = {n: again_opt.state[p] for n, p in again.named_parameters()}
    assert [n for n, _ in reloaded.named_parameters()] == list(expected)
    for name, p in reloaded.named_parameters():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(fresh.state[p][key], expected[name][key]), (name, key)


# ------------------------------------------------------------------ growth plans
PLAN = """\
specgrow: 1
model:
  dims: {hidden: 16, mlp: 32, heads: 2, kv_heads: 2, key: 8, value: 8, layers: 2, vocab: 32, positions: 16}
seed: 0
stages:
  - at_step: 3
    steps: [{mlp: {to: 48}}, {heads: {add: 1}}]
  - at_step: 6
    steps: [{hidden: {to: 24}}, {layers: {add: 1, at: 1}}]
"""


def test_growth_schedule_grows_at_each_stage_without_changing_the_loss():
    spec = load_spec_text(PLAN, "plan.yaml")
    schedule = GrowthSchedule(spec)
    model, optimizer = trained(spec, steps=0)
    probe = batch(model.shape, 5)
    for n in range(9):
        with torch.no_grad():
            before = loss_of(model, probe)
        grown, optimizer = schedule.step(n, model, optimizer)
        if grown is not model:
            with torch.no_grad():
                torch.testing.assert_close(loss_of(grown, probe), before, atol=ATOL, rtol=RTOL)
        model = grown
        step(model, optimizer, batch(model.shape, n))
    assert schedule.grown_at == [3, 6]
    assert model.shape == compile_spec(spec).after
    assert float(optimizer.state[model.layers[0].mlp.up.weight]["step"]) == 9.0


def test_growth_schedule_resumed_past_a_stage_applies_it_and_needs_stages():
    spec = load_spec_text(PLAN, "plan.yaml")
    schedule = GrowthSchedule(spec)
    model, optimizer = trained(spec, steps=1)
    model, optimizer = schedule.step(100, model, optimizer)  # both stages at once
    assert schedule.grown_at == [100, 100] and model.shape == compile_spec(spec).after
    with pytest.raises(SpecError, match="stages"):
        GrowthSchedule(canonical("mlp"))


def test_copies_do_not_share_memory_with_the_input():
    spec = canonical("layers")
    model, optimizer = trained(spec, steps=2)
    grown, grown_opt = grow_module(model, spec, optimizer)
    inputs = {t.untyped_storage().data_ptr() for t in model.state_dict().values()}
    inputs |= {s[k].untyped_storage().data_ptr() for s in optimizer.state.values() for k in s}
    outputs = {t.untyped_storage().data_ptr() for t in grown.state_dict().values()}
    outputs |= {s[k].untyped_storage().data_ptr() for s in grown_opt.state.values() for k in s}
    assert not inputs & outputs
