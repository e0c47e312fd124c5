"""Mixtral and Qwen3-MoE on real HuggingFace checkpoints, and dense LLaMA / Qwen3 upcycled into them: tiny
random models built by `transformers` from configs (no hub), saved with ``save_pretrained`` (experts one
tensor per expert), grown by ``specgrow apply``, reloaded with ``AutoModelForCausalLM.from_pretrained``.

Weights are N(0, 0.2²) (norm gains 1 + 0.1·N(0, 1)), so the routers' logits spread and routing is far from
uniform: a growth that mixed up experts, or their weights, would change which experts a token reaches.
Tolerance: fp32 logits, atol = rtol = 1e-4 (as `specgrow apply`'s own numeric check).

Exact and proved: experts duplicated or split (top_k x m), expert width growth, hidden growth by duplicate
(Mixtral: zero-pad too; Qwen3-MoE's QK-norm shares the eps), heads, layers, upcycling (LLaMA into Mixtral,
every layer, renormalised; Qwen3 into Qwen3-MoE, any layers, renormalised or under a zero router).
Refused: new experts at a fixed top_k and upcycling without renormalisation under a random router
(REFUTED: nothing written, and written anyway they change the logits); upcycling LLaMA into a Mixtral that
cannot hold the result (some layers only, renormalize false: spec errors).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, MixtralConfig, Qwen3Config, Qwen3MoeConfig

from specgrow.arch import FAMILIES, grown_family
from specgrow.arch.hf import expected_model, grown_config, mismatches, tensor_mismatches
from specgrow.cli import main
from specgrow.errors import CheckpointError, InputError
from specgrow.grow import grow_module
from specgrow.lower.checkpoint import MemoryTensors, RoleSource
from specgrow.lower.numeric import streamed_logits
from specgrow.lower.safetensors_io import CheckpointFiles
from specgrow.shape import ModelShape
from specgrow.spec import load_spec, load_spec_text
from specgrow.transforms import compile_spec
from tests.test_hf import applied_and_compared, built_and_checked, spec_for, tokens

ATOL = RTOL = 1e-4
COMMON = dict(vocab_size=97, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=64, rms_norm_eps=1e-5, head_dim=8, pad_token_id=None, bos_token_id=None,
              eos_token_id=None)
MOE = dict(num_experts_per_tok=2)


def config_of(kind: str, **over):
    """``mixtral``; ``qwen3_moe`` (layer 1 dense, norm_topk_prob false) or ``qwen3_moe-norm`` (true); dense
    ``llama`` and ``qwen3`` (2 layers, to upcycle)."""
    if kind == "mixtral":
        return MixtralConfig(**{**COMMON, **MOE, "intermediate_size": 16, "num_local_experts": 4, **over})
    if kind.startswith("qwen3_moe"):
        return Qwen3MoeConfig(**{**COMMON, **MOE, "intermediate_size": 24, "moe_intermediate_size": 16,
                                 "num_experts": 4, "mlp_only_layers": [1], "norm_topk_prob": kind.endswith("norm"),
                                 **over})
    cls = {"llama": LlamaConfig, "qwen3": Qwen3Config}[kind]
    return cls(**{**COMMON, "num_hidden_layers": 2, "intermediate_size": 16, **over})


def build(kind: str, **over):
    """A seeded random ``kind`` model at the scale of the module docstring."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config_of(kind, **over)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.2 * torch.randn_like(p))
    return model


def save_tiny(kind: str, folder: Path, **over):
    model = build(kind, **over)
    model.save_pretrained(folder)
    return model


def logits(model):
    with torch.no_grad():
        return model(tokens()).logits


def grow_and_compare(tmp_path, capsys, kind, steps, **over):
    return applied_and_compared(tmp_path, capsys, lambda folder: save_tiny(kind, folder, **over), steps, logits)


def stored_names(folder: Path) -> set[str]:
    with safe_open(folder / "model.safetensors", "pt") as f:
        return set(f.keys())


# ------------------------------------------------------------------ reading: config, tensors, forward
MOE_KINDS = ["mixtral", "qwen3_moe", "qwen3_moe-norm"]


@pytest.mark.parametrize("kind", MOE_KINDS)
def test_init_restates_the_config(tmp_path, capsys, kind):
    src = tmp_path / "in"
    save_tiny(kind, src)
    assert main(["init", str(src)]) == 0
    text = capsys.readouterr().out.replace("steps: []", "steps: [{layers: {add: 1}}]")
    model = load_spec_text(text).model
    config = config_of(kind)
    assert (model.arch, model.experts, model.top_k) == (kind.partition("-")[0], 4, 2)
    if kind == "mixtral":
        assert (model.expert_mlp, model.dims.mlp, model.renormalize, model.dense_layers) == (16, 16, True, ())
        assert (model.qk_norm, model.rope_theta) == ("none", 1e6)  # MixtralConfig's default base
    else:
        assert (model.expert_mlp, model.dims.mlp, model.dense_layers) == (16, 24, (1,))
        assert (model.renormalize, model.qk_norm) == (config.norm_topk_prob, "head")
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    assert main(["validate", str(spec), "--input", str(src)]) == 0


@pytest.mark.parametrize("kind", MOE_KINDS)
def test_specgrow_forward_matches_transformers(tmp_path, kind):
    """The numeric check's forward, reading the experts one tensor per expert, computes transformers' logits."""
    model = save_tiny(kind, tmp_path / "in")
    spec = load_spec(spec_for(tmp_path / "in", [{"layers": {"add": 1}}], tmp_path / "spec.yaml"))
    shape = ModelShape.from_spec(spec.model)
    with CheckpointFiles(tmp_path / "in") as files:
        ours = streamed_logits(shape, RoleSource(files, FAMILIES[spec.model.arch], shape, "in"), tokens())
    torch.testing.assert_close(ours, logits(model), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("kind", ["mixtral", "qwen3_moe"])
def test_the_module_packs_what_the_folder_stores_expert_by_expert(tmp_path, kind):
    """A live module's packed gate_up_proj (gate | up along axis 1) and down_proj, and the folder's one tensor
    per expert, are the same roles; reading experts 1..3 of the folder opens only their tensors."""
    model = save_tiny(kind, tmp_path / "in")
    spec = load_spec(spec_for(tmp_path / "in", [{"layers": {"add": 1}}], tmp_path / "spec.yaml"))
    shape, family = ModelShape.from_spec(spec.model), FAMILIES[spec.model.arch]
    state = {name: t.detach() for name, t in model.state_dict().items()}
    packed = RoleSource(MemoryTensors(state), family, shape, "module")
    with CheckpointFiles(tmp_path / "in") as files:
        opened = []
        read = files.read
        files.read = lambda name: opened.append(name) or read(name)
        saved = RoleSource(files, family, shape, "in")
        for role in ("mlp.experts.gate.weight", "mlp.experts.up.weight", "mlp.experts.down.weight",
                     "mlp.router.weight"):
            assert torch.equal(saved.rows((role, 0), 1, 3), packed.rows((role, 0), 1, 3))
        gate_up = state["model.layers.0.mlp.experts.gate_up_proj"]
        assert torch.equal(packed.rows(("mlp.experts.up.weight", 0), 0, 4), gate_up[:, 16:])
    w = {"mixtral": ("block_sparse_moe.experts", "w1"), "qwen3_moe": ("mlp.experts", "gate_proj")}[kind]
    assert f"model.layers.0.{w[0]}.1.{w[1]}.weight" in opened and f"model.layers.0.{w[0]}.0.{w[1]}.weight" not in opened
    assert len(opened) == 3 * 2  # gate, up, down of experts 1 and 2


@pytest.mark.parametrize("kind, edit, field", [
    ("mixtral", lambda m: m["moe"].update(experts=8), "model.moe.experts"),
    ("qwen3_moe", lambda m: m["moe"].update(width=32), "model.moe.width"),
    ("qwen3_moe", lambda m: m["moe"].update(dense_layers=[0]), "model.moe.dense_layers"),
    ("qwen3_moe", lambda m: m["moe"].update(renormalize=True), "model.moe.renormalize"),
    ("qwen3_moe", lambda m: m.pop("moe"), "model.moe"),
])
def test_a_spec_of_other_experts_is_refused_at_the_field(tmp_path, capsys, kind, edit, field):
    src = tmp_path / "in"
    save_tiny(kind, src)
    model = expected_model(json.loads((src / "config.json").read_text()))
    edit(model)
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"specgrow": 1, "model": {**model, "bias": False}, "steps": [{"layers": {"add": 1}}]}))
    assert main(["validate", str(spec), "--input", str(src)]) == 1
    err = capsys.readouterr().err
    assert f"error: {field}: the spec says" in err


def test_tensor_shapes_name_the_experts_fields(tmp_path):
    save_tiny("qwen3_moe", tmp_path / "in")
    config = json.loads((tmp_path / "in" / "config.json").read_text())
    with CheckpointFiles(tmp_path / "in") as files:
        shapes = {name: files.shape(name) for name in files.names()}
    model = load_spec_text(json.dumps({"specgrow": 1, "model": {**expected_model(config), "bias": False},
                                       "steps": [{"layers": {"add": 1}}]})).model
    assert tensor_mismatches(model, shapes) == []
    fields = {field: message for field, message, _ in tensor_mismatches(replace(model, expert_mlp=8), shapes)}
    assert "tensor 'model.layers.0.mlp.experts.0.gate_proj.weight' (and " in fields["model.moe.width"]
    fields = {field: message for field, message, _ in tensor_mismatches(replace(model, experts=3), shapes)}
    assert "'model.layers.0.mlp.experts.3.down_proj.weight'" in fields["model.moe"]  # one expert too many stored


# ------------------------------------------------------------------ the exact expansions
STEPS = {
    "experts-duplicate": [{"experts": {"to": 8}}],
    "experts-duplicate-noise": [{"experts": {"to": 8, "noise": 0.01}}],
    "experts-split": [{"experts": {"to": 8, "method": "split"}}],
    "mlp": [{"mlp": {"to": 32}}],  # every MoE layer's experts (and Qwen3-MoE's dense layer, padded to 32)
    "hidden": [{"hidden": {"to": 48}}],
    "hidden-duplicate": [{"hidden": {"to": 64, "method": "duplicate"}}],
    "heads": [{"heads": {"add": 2}}],
    "layers": [{"layers": {"add": 1, "at": 1}}],
    "composite": [{"experts": {"to": 8, "method": "split"}}, {"mlp": {"to": 16, "layers": [0, 2]}},
                  {"heads": {"add": 2}}, {"layers": {"add": 1, "at": 3}}, {"hidden": {"to": 64, "method": "duplicate"}}],
}
EXACT = {
    "mixtral": ["experts-duplicate", "experts-duplicate-noise", "experts-split", "mlp", "hidden", "hidden-duplicate",
                "heads", "layers", "composite"],
    "qwen3_moe": ["experts-duplicate", "experts-split", "mlp", "hidden-duplicate", "heads", "layers", "composite"],
    "qwen3_moe-norm": ["experts-duplicate", "experts-split", "layers"],
}
CASES = [(kind, name) for kind, names in EXACT.items() for name in names]


@pytest.mark.parametrize("kind, name", CASES, ids=[f"{kind}-{name}" for kind, name in CASES])
def test_exact_growth_reloads_with_the_same_logits(tmp_path, capsys, kind, name):
    original, grown, out = grow_and_compare(tmp_path, capsys, kind, STEPS[name])
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == kind.partition("-")[0]
    names = stored_names(out)
    assert not any("gate_up_proj" in n or n.endswith("experts.down_proj") for n in names)  # one tensor per expert
    experts = grown.config.num_local_experts
    assert experts == (8 if name.startswith("experts") or name == "composite" else 4)
    assert grown.config.num_experts_per_tok == (4 if name.startswith("experts") or name == "composite" else 2)
    if kind != "mixtral":
        assert config["num_experts"] == experts and grown.config.norm_topk_prob == original.config.norm_topk_prob
        # a layer inserted after an MoE one has experts: the dense layer 1 moves to 2 (at: 1), or stays (at: 3)
        assert config["mlp_only_layers"] == ([2] if name == "layers" else [1])


@pytest.mark.parametrize("name, step, dense", [
    ("experts-duplicate", 2, [0, 2, 3]),  # the pattern holds: decoder_sparse_step kept
    ("layers", 1, [0, 1, 3, 4]),  # the MoE layer moves to 2, off the pattern: every dense layer listed, step 1
])
def test_qwen3_moe_dense_layers_of_a_sparse_step_are_kept_exactly(tmp_path, capsys, name, step, dense):
    """decoder_sparse_step 2 (layers 1 and 3 sparse), layer 3 also in mlp_only_layers."""
    _, grown, out = grow_and_compare(tmp_path, capsys, "qwen3_moe", STEPS[name], num_hidden_layers=4,
                                     decoder_sparse_step=2, mlp_only_layers=[3])
    config = json.loads((out / "config.json").read_text())
    assert (config["decoder_sparse_step"], config["mlp_only_layers"]) == (step, dense)
    assert [i for i, layer in enumerate(grown.model.layers) if type(layer.mlp).__name__ == "Qwen3MoeMLP"] == dense


# ------------------------------------------------------------------ upcycling changes the family
DUPLICATE = {"experts": {"to": 8}}  # then top_k x 2


@pytest.mark.parametrize("kind, steps, dense", [
    ("llama", [{"upcycle": {"experts": 4, "top_k": 2}}, DUPLICATE], []),
    ("qwen3", [{"upcycle": {"experts": 4, "top_k": 2}}, DUPLICATE], []),
    ("qwen3", [{"upcycle": {"experts": 4, "top_k": 1, "layers": [1]}}, DUPLICATE], [0]),
    ("qwen3", [{"upcycle": {"experts": 8, "top_k": 4, "renormalize": False}}], []),  # zero router, down x E/k
])
def test_upcycled_checkpoint_is_written_in_the_moe_family(tmp_path, capsys, kind, steps, dense):
    _, grown, out = grow_and_compare(tmp_path, capsys, kind, steps)
    config = json.loads((out / "config.json").read_text())
    target = {"llama": "mixtral", "qwen3": "qwen3_moe"}[kind]
    step = steps[0]
    assert config["model_type"] == target and type(grown).__name__ == config["architectures"][0]
    assert (config["num_local_experts"], config["num_experts_per_tok"]) == (8, len(steps) * step["upcycle"]["top_k"])
    assert config["intermediate_size"] == 16  # the dense width: Mixtral's experts', Qwen3-MoE's dense layers'
    names = stored_names(out)
    if target == "mixtral":
        assert "model.layers.1.block_sparse_moe.experts.7.w2.weight" in names
        assert not any(key in config for key in ("mlp_bias", "attention_bias"))
    else:
        assert config["mlp_only_layers"] == dense and config["moe_intermediate_size"] == 16
        assert config["norm_topk_prob"] == step["upcycle"].get("renormalize", True)
        assert "layer_types" not in config and config["use_sliding_window"] is False
        assert ("model.layers.0.mlp.up_proj.weight" in names) == (dense == [0])
    assert all(".mlp.gate_proj." not in n for n in names if ".layers.1." in n)  # layer 1 upcycled in every case
    spec = tmp_path / "again.yaml"  # the written folder is the MoE family's, as its own spec says
    spec_for(out, [{"layers": {"add": 1}}], spec)
    assert main(["validate", str(spec), "--input", str(out)]) == 0


@pytest.mark.parametrize("step, message", [
    ({"upcycle": {"experts": 4, "top_k": 2, "layers": [0]}},
     "steps[0].upcycle: mixtral (what llama becomes with experts) has experts in every layer: layer 1 of the "
     "grown model keeps a dense MLP; upcycle every layer"),
    ({"upcycle": {"experts": 4, "top_k": 2, "renormalize": False}},
     "steps[0].upcycle: mixtral (what llama becomes with experts) always renormalises the top-k weights to sum 1 "
     "(renormalize: true); the grown model has renormalize: false"),
])
def test_llama_upcycling_mixtral_cannot_hold_is_a_spec_error(tmp_path, capsys, step, message):
    src, out = tmp_path / "in", tmp_path / "out"
    save_tiny("llama", src)
    spec = spec_for(src, [step], tmp_path / "spec.yaml")
    assert main(["validate", spec]) == 1
    assert message in capsys.readouterr().err
    assert main(["apply", spec, "--input", str(src), "-o", str(out), "-q"]) == 1 and not out.exists()


def test_qwen3_of_mixed_attention_types_cannot_become_qwen3_moe(tmp_path, capsys):
    """Qwen3-MoE's sliding window is every layer's or none's: layer 0 full and layer 1 sliding cannot be written."""
    src, out = tmp_path / "in", tmp_path / "out"
    save_tiny("qwen3", src, use_sliding_window=True, sliding_window=8, max_window_layers=1)
    spec = spec_for(src, [{"upcycle": {"experts": 4, "top_k": 2}}], tmp_path / "spec.yaml")
    assert main(["apply", spec, "--input", str(src), "-o", str(out), "-q"]) == 1 and not out.exists()
    assert "layer_types: qwen3_moe has one attention type for every layer" in capsys.readouterr().err


def test_apply_refuses_optimizer_state_across_an_upcycle(tmp_path, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    model = save_tiny("llama", src)
    torch.save(torch.optim.Adam(model.parameters()).state_dict(), tmp_path / "optimizer.pt")
    spec = spec_for(src, [{"upcycle": {"experts": 2, "top_k": 1}}], tmp_path / "spec.yaml")
    args = ["apply", spec, "--input", str(src), "-o", str(out), "-q", "--optimizer", str(tmp_path / "optimizer.pt")]
    assert main(args) == 2 and not out.exists()  # an input error
    assert "growing optimizer state from llama into mixtral (upcycled experts) is not supported" in \
        capsys.readouterr().err


def test_qwen2_with_attention_biases_cannot_become_mixtral(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    model = {**expected_model({**config_of("llama").to_dict(), "model_type": "qwen2"}), "bias": ["q", "k", "v"]}
    spec.write_text(json.dumps({"specgrow": 1, "model": model, "steps": [{"upcycle": {"experts": 2, "top_k": 1}}]}))
    assert main(["validate", str(spec)]) == 1
    assert "mixtral (what llama becomes with experts) has no biases; the grown model has biases on q, k, v" in \
        capsys.readouterr().err


def test_a_dense_family_has_no_experts(tmp_path, capsys):
    model = expected_model(config_of("mixtral").to_dict())
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"specgrow": 1, "model": {**model, "arch": "llama", "bias": False},
                               "steps": [{"layers": {"add": 1}}]}))
    assert main(["validate", str(spec)]) == 1
    assert "model.moe: arch llama has no mixture-of-experts layers: a checkpoint with experts is arch mixtral" in \
        capsys.readouterr().err


# ------------------------------------------------------------------ what changes the function is refused
REFUSED = {  # kind, steps the prover refutes, the smallest logit change of the model they write
    "experts-add": ("mixtral", [{"experts": {"to": 6, "method": "add"}}], 1e-2),
    "upcycle-random-router": ("qwen3", [{"upcycle": {"experts": 4, "top_k": 2, "renormalize": False,
                                                     "init": {"router": {"normal": 0.2}}}}], 1e-2),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_routing_changes_are_refuted_and_apply_writes_nothing(tmp_path, capsys, name):
    kind, steps, change = REFUSED[name]
    original, src, out, spec = built_and_checked(tmp_path, lambda folder: save_tiny(kind, folder), steps,
                                                 verdict="REFUTED")
    assert f"{spec}: REFUTED" in capsys.readouterr().out
    assert main(["apply", spec, "--input", str(src), "-o", str(out), "-q"]) == 1
    assert "nothing written" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "spec.yaml"]
    assert main(["apply", spec, "--input", str(src), "-o", str(out), "-q", "--allow-unproved"]) == 0
    grown = AutoModelForCausalLM.from_pretrained(out).eval()
    assert float((logits(grown) - logits(original)).abs().max()) > change


# ------------------------------------------------------------------ config.json round trips
@pytest.mark.parametrize("kind, steps", [
    ("mixtral", STEPS["composite"]),
    ("qwen3_moe", STEPS["composite"]),
    ("qwen3", [{"upcycle": {"experts": 4, "top_k": 2, "layers": [0], "renormalize": False}}]),
    ("llama", [{"upcycle": {"experts": 4, "top_k": 2}}, {"mlp": {"to": 32}}]),
])
def test_grown_config_describes_the_grown_model(kind, steps):
    """The grown config read back (`expected_model`) is the grown model, and transformers builds it."""
    config = config_of(kind).to_dict()
    model = {**expected_model(config), "bias": False}
    spec = load_spec_text(json.dumps({"specgrow": 1, "model": model, "steps": steps}))
    after = compile_spec(spec).after
    grown = grown_config(config, after, list(range(len(after.layers))))
    assert grown["model_type"] == grown_family(FAMILIES[spec.model.arch], after).name
    read = load_spec_text(json.dumps({"specgrow": 1, "model": {**expected_model(grown), "bias": False},
                                      "steps": [{"layers": {"add": 1}}]}))
    assert ModelShape.from_spec(read.model).layers == after.layers
    assert read.model.renormalize == after.renormalize
    AutoModelForCausalLM.from_config(AutoConfig.for_model(**grown))


def test_either_experts_key_is_read_and_they_must_agree():
    config = config_of("qwen3_moe").to_dict()
    del config["num_local_experts"]
    assert expected_model({**config, "num_experts": 6})["moe"]["experts"] == 6
    assert expected_model({**config, "num_local_experts": 6})["moe"]["experts"] == 6
    with pytest.raises(CheckpointError, match="num_local_experts 6 and num_experts 5 disagree"):
        expected_model({**config, "num_local_experts": 6, "num_experts": 5})
    no_experts = expected_model({**config, "num_experts": 0})
    assert "moe" not in no_experts and no_experts["dims"]["mlp"] == 24  # every layer dense


def test_mismatches_compare_the_moe_section():
    config = config_of("mixtral").to_dict()
    spec = load_spec_text(json.dumps({"specgrow": 1, "model": {**expected_model(config), "bias": False},
                                      "steps": [{"layers": {"add": 1}}]}))
    assert mismatches(spec.model, config, "config.json") == []
    assert mismatches(spec.model, {**config, "num_experts_per_tok": 3}, "config.json") == [("model.moe.top_k", 2, 3)]


# ------------------------------------------------------------------ a live module, and DCP
@pytest.mark.parametrize("kind, steps", [
    ("mixtral", STEPS["composite"]),
    ("qwen3_moe", STEPS["experts-split"]),
    ("qwen3", [{"upcycle": {"experts": 4, "top_k": 2, "layers": [1]}}]),
])
def test_grow_module_on_the_live_module(tmp_path, kind, steps):
    """A module's state_dict holds the experts packed (gate_up_proj, down_proj): grown as such, and an
    upcycled Qwen3 module comes back a Qwen3MoeForCausalLM."""
    model = save_tiny(kind, tmp_path / "in")
    spec = spec_for(tmp_path / "in", steps, tmp_path / "spec.yaml")
    grown, _ = grow_module(model, spec)
    assert type(grown).__name__ == ("Qwen3MoeForCausalLM" if kind == "qwen3" else type(model).__name__)
    torch.testing.assert_close(logits(grown.eval()), logits(model), atol=ATOL, rtol=RTOL)


def test_grow_module_refuses_optimizer_state_across_an_upcycle(tmp_path):
    model = save_tiny("llama", tmp_path / "in")
    spec = spec_for(tmp_path / "in", [{"upcycle": {"experts": 2, "top_k": 1}}], tmp_path / "spec.yaml")
    with pytest.raises(InputError, match="from llama into mixtral"):
        grow_module(model, spec, torch.optim.Adam(model.parameters()))


@pytest.mark.parametrize("kind, steps", [
    ("mixtral", STEPS["experts-split"]),  # from a DCP of the module's state_dict
    ("llama", [{"upcycle": {"experts": 4, "top_k": 2}}]),  # from the folder, into Mixtral's packed names
])
def test_dcp_holds_the_experts_packed_as_the_module_does(tmp_path, kind, steps):
    """Grown into DCP (in bands of a few experts), the tensors are those transformers packs from the folder
    `apply` writes: a DCP checkpoint loads into the grown module's state_dict."""
    import torch.distributed.checkpoint as dcp

    from specgrow.pipeline.dcp import grow_dcp

    model = save_tiny(kind, tmp_path / "hf")
    source = tmp_path / "hf"
    if kind == "mixtral":
        source = tmp_path / "in"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.save({name: t.clone() for name, t in model.state_dict().items()}, checkpoint_id=str(source),
                     no_dist=True)
    spec = spec_for(tmp_path / "hf", steps, tmp_path / "spec.yaml")
    assert main(["apply", spec, "--input", str(tmp_path / "hf"), "--output", str(tmp_path / "st"), "-q"]) == 0
    grow_dcp(spec, source, tmp_path / "out", 1, band_bytes=700, log=None)
    expected = AutoModelForCausalLM.from_pretrained(tmp_path / "st").state_dict()
    got = {name: torch.zeros_like(t) for name, t in expected.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(got, checkpoint_id=str(tmp_path / "out"), no_dist=True)
    assert "model.layers.1.mlp.experts.gate_up_proj" in got
    assert all(torch.equal(got[name], expected[name]) for name in expected)


@pytest.mark.parametrize("kind", ["mixtral", "qwen3_moe"])
def test_apply_grows_a_saved_adamw_state_expert_by_expert(tmp_path, kind):
    """``apply --optimizer`` on a MoE folder: duplicated experts (router rows, gate_up_proj, down_proj) each get
    half the old first moment and a quarter of the second (each copy takes half the gradient)."""
    model = save_tiny(kind, tmp_path / "in")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    model(torch.randint(0, 50, (2, 8))).logits.square().mean().backward()
    optimizer.step()
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    spec = spec_for(tmp_path / "in", [{"experts": {"to": 8}}], tmp_path / "spec.yaml")
    assert main(["apply", str(spec), "--input", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-q",
                 "--optimizer", str(tmp_path / "optimizer.pt")]) == 0
    grown = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    grown_optimizer = torch.optim.AdamW(grown.parameters(), lr=1e-3)
    grown_optimizer.load_state_dict(torch.load(tmp_path / "out" / "optimizer.pt"))
    for parameter in grown.parameters():
        assert grown_optimizer.state[parameter]["exp_avg"].shape == parameter.shape
    old_mlp, new_mlp = model.model.layers[0].mlp, grown.model.layers[0].mlp
    for old, new in [(old_mlp.experts.down_proj, new_mlp.experts.down_proj),
                     (old_mlp.experts.gate_up_proj, new_mlp.experts.gate_up_proj), (old_mlp.gate.weight, new_mlp.gate.weight)]:
        before, after = optimizer.state[old], grown_optimizer.state[new]
        count = before["exp_avg"].shape[0]
        for band in (slice(0, count), slice(count, 2 * count)):
            torch.testing.assert_close(after["exp_avg"][band], before["exp_avg"] / 2, rtol=1e-6, atol=0)
            torch.testing.assert_close(after["exp_avg_sq"][band], before["exp_avg_sq"] / 4, rtol=1e-6, atol=0)
