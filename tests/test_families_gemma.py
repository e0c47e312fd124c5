"""Gemma 2 and Gemma 3 (text) on real HuggingFace checkpoints: tiny random models built by
`transformers` from configs (no hub), saved with ``save_pretrained`` (safetensors), grown by
``specgrow apply`` (or `grow_module` on the live module), reloaded with
``AutoModelForCausalLM.from_pretrained``.

Tolerance: fp32 logits, atol = rtol = 1e-4 (as `specgrow apply`'s own numeric check).

The models: hidden 32, 3 layers, vocab 97, 4 heads on 2 kv heads of head_dim 8,
``query_pre_attn_scalar`` 12 (not head_dim: the scale must not follow key growth), every weight
at the scale of a trained model (`tests.test_hf.scale_like_trained`) and then every stored norm
gain w redrawn as 0.3 + 0.2·N(0, 1), so that the gains 1 + w are away from 1 and a forgotten
offset shows. Gemma 2: soft-capping on with small caps that bite (attention 5.0, final logits
3.0: the caps move the logits by more than 0.1), layers sliding, full, sliding (its config's own
pattern). Gemma 3: sliding, full, sliding layers, full layers at rope_theta 1e6 with a linear
rope scaling (factor 8), sliding layers at their own base 1e4. The sliding window (32) is longer
than any sequence compared (12 tokens here, 16 in the numeric check), and no test's new hidden
width leaves it indivisible by the heads (transformers refuses such a Gemma config).

Which expansions are exact (each verdict is the prover's, checked by ``specgrow check`` before
the model is grown):

* Gemma 2: mlp (zero, duplicate), heads (zero add of whole kv groups, duplicate), key and value
  growth x2 together (HF has one head_dim; ``rescale: none`` is the default under
  ``attn_scale``), hidden zero-pad (gain-and-eps: the one eps of Gemma 2 scales with every norm)
  and duplicate, layers, and composites of them.
* Gemma 3 (QK-norm per head over head_dim, sharing the hidden norms' ``rms_norm_eps``): mlp,
  heads, hidden by ``duplicate``, layers (an inserted layer keeps its neighbour's attention
  type, RoPE base included), a composite. Hidden zero-pad and key growth are REFUTED: the
  zero-padded norm needs its eps scaled, which the eps it shares cannot follow.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, Gemma2Config, Gemma3TextConfig

from specgrow.arch import FAMILIES
from specgrow.arch.hf import expected_model, family_of, grown_config, layer_origins, shortest_window
from specgrow.cli import main
from specgrow.errors import CheckpointError, SpecError
from specgrow.grow import grow_module
from specgrow.lower.checkpoint import RoleSource
from specgrow.lower.numeric import streamed_logits
from specgrow.lower.safetensors_io import CheckpointFiles
from specgrow.shape import ModelShape
from specgrow.spec import load_spec, load_spec_text
from specgrow.transforms import compile_spec
from tests.test_hf import built_and_checked, scale_like_trained, spec_for, tokens

ATOL = RTOL = 1e-4
COMMON = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, max_position_embeddings=64, rms_norm_eps=1e-5,
              query_pre_attn_scalar=12, sliding_window=32, pad_token_id=None, bos_token_id=None, eos_token_id=None)
GEMMA3_ROPE = {"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
               "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}}
TYPES = ["sliding_attention", "full_attention", "sliding_attention"]


def config_of(kind: str, **over):
    if kind == "gemma2":  # layer_types left to Gemma2Config: sliding, full, sliding
        return Gemma2Config(**{**COMMON, "attn_logit_softcapping": 5.0, "final_logit_softcapping": 3.0, **over})
    return Gemma3TextConfig(**{**COMMON, "layer_types": list(TYPES), "rope_parameters": json.loads(
        json.dumps(GEMMA3_ROPE)), **over})


def tiny(kind: str, **over):
    """A seeded random model of ``kind`` at trained scale, its stored norm gains w redrawn away from 0."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config_of(kind, **over)).eval()
    scale_like_trained(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(0.3 + 0.2 * torch.randn_like(p))
    return model


def save_tiny(kind: str, folder: Path, **over):
    model = tiny(kind, **over)
    model.save_pretrained(folder)
    return model


def logits(model):
    with torch.no_grad():
        return model(tokens()).logits


def build_and_check(tmp_path, kind, steps, verdict="PROVED", **over):
    """`built_and_checked` for a tiny ``kind`` model: ``(original model, input, output, spec path)``."""
    return built_and_checked(tmp_path, lambda folder: save_tiny(kind, folder, **over), steps, verdict)


# ------------------------------------------------------------------ the exact expansions
COMPOSITE = [{"mlp": {"to": 96}}, {"heads": {"add": 4, "method": "duplicate"}}, {"layers": {"add": 1, "at": 1}},
             {"hidden": {"to": 64, "method": "duplicate"}}]
STEPS = {
    "mlp": [{"mlp": {"to": 96}}],
    "mlp-duplicate": [{"mlp": {"to": 128, "method": "duplicate", "noise": 0.01}}],
    "heads": [{"heads": {"add": 4}}],  # two whole kv groups (2 query heads a kv head); 8 heads divide 32
    "heads-duplicate": [{"heads": {"add": 4, "method": "duplicate"}}],
    "head-dim": [{"key": {"to": 16}}, {"value": {"to": 16}}],  # x2: old rotary pair i at pair 2i, no rescale
    "hidden": [{"hidden": {"to": 48}}],
    "hidden-duplicate": [{"hidden": {"to": 64, "method": "duplicate"}}],
    "layers": [{"layers": {"add": 2, "at": 2}}],  # after the full layer: two more full layers
    "composite": COMPOSITE,
    "composite-zero": [{"mlp": {"to": 96}}, {"heads": {"add": 4}}, {"value": {"to": 16}}, {"key": {"to": 16}},
                       {"hidden": {"to": 48}}, {"layers": {"add": 1, "at": 0}}],
}
EXACT = {
    "gemma2": ["mlp", "mlp-duplicate", "heads", "heads-duplicate", "head-dim", "hidden", "hidden-duplicate",
               "layers", "composite", "composite-zero"],
    "gemma3": ["mlp", "heads", "heads-duplicate", "hidden-duplicate", "layers", "composite"],
}
CASES = [(kind, name) for kind, names in EXACT.items() for name in names]


@pytest.mark.parametrize("kind, name", CASES, ids=[f"{kind}-{name}" for kind, name in CASES])
def test_exact_growth_reloads_with_the_same_logits(tmp_path, capsys, kind, name):
    original, src, out, spec = build_and_check(tmp_path, kind, STEPS[name])
    assert f"{spec}: PROVED" in capsys.readouterr().out
    assert main(["apply", spec, "--input", str(src), "-o", str(out), "-q"]) == 0
    grown = AutoModelForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(logits(grown), logits(original), atol=ATOL, rtol=RTOL)
    config, before = json.loads((out / "config.json").read_text()), json.loads((src / "config.json").read_text())
    assert config["model_type"] == before["model_type"] == ("gemma2" if kind == "gemma2" else "gemma3_text")
    assert config["query_pre_attn_scalar"] == 12 and config["head_dim"] == grown.config.head_dim
    # every layer keeps its attention type; an inserted one takes its neighbour's
    assert config["layer_types"] == [TYPES[i] for i in layer_origins(load_spec(spec))]
    assert grown.config.layer_types == config["layer_types"]
    if name == "layers":  # inserted after the full layer 1: full, as transformers rebuilds them
        assert grown.config.layer_types == ["sliding_attention"] + ["full_attention"] * 3 + ["sliding_attention"]
    if kind == "gemma3":  # rope per layer type, written as transformers standardizes it
        assert config["rope_parameters"] == GEMMA3_ROPE
        assert (config["rope_theta"], config["rope_local_base_freq"]) == (1e6, 1e4)
        assert config["rope_scaling"] == {"rope_type": "linear", "factor": 8.0}
        if grown.config.head_dim == original.config.head_dim:
            for layer_type in ("full_attention", "sliding_attention"):
                torch.testing.assert_close(getattr(grown.model.rotary_emb, f"{layer_type}_inv_freq"),
                                           getattr(original.model.rotary_emb, f"{layer_type}_inv_freq"), atol=0, rtol=0)
    else:
        assert (config["attn_logit_softcapping"], config["final_logit_softcapping"]) == (5.0, 3.0)


def test_gemma3_inserted_layers_keep_their_neighbours_type():
    spec = load_spec_text(yaml.safe_dump({"specgrow": 1, "model": _model("gemma3"), "steps": [
        {"layers": {"add": 2, "at": 2}}, {"layers": {"add": 1, "at": 0}}]}))
    assert [TYPES[i] for i in layer_origins(spec)] == \
        ["sliding_attention", "sliding_attention", "full_attention", "full_attention", "full_attention",
         "sliding_attention"]


def test_the_softcaps_bite():
    """Without its caps the Gemma 2 model computes other logits: the tests above would see a lost cap."""
    capped = logits(tiny("gemma2"))
    for over in ({"attn_logit_softcapping": None}, {"final_logit_softcapping": None}):
        assert float((logits(tiny("gemma2", **over)) - capped).abs().max()) > 0.1
    assert float(capped.abs().max()) < 3.0


# ------------------------------------------------------------------ what the shared eps refuses
REFUTED = {  # steps the prover refutes on Gemma 3, and the smallest logit change of the model they write
    "gemma3-hidden-zero": ([{"hidden": {"to": 48}}], 1e-6),
    "gemma3-key": ([{"key": {"to": 16}}, {"value": {"to": 16}}], 1e-2),
}


@pytest.mark.parametrize("name", sorted(REFUTED))
def test_shared_eps_growth_is_refuted_and_apply_writes_nothing(tmp_path, capsys, name):
    steps, change = REFUTED[name]
    original, src, out, spec = build_and_check(tmp_path, "gemma3", steps, verdict="REFUTED")
    checked = capsys.readouterr().out
    assert f"{spec}: REFUTED" in checked and "one eps (HF rms_norm_eps)" in checked
    assert main(["apply", spec, "--input", str(src), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert "REFUTED" in err and "rms_norm_eps" in err and "nothing written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "spec.yaml"]
    # written anyway, the grown model computes another function
    assert main(["apply", spec, "--input", str(src), "-o", str(out), "-q", "--allow-unproved"]) == 0
    difference = float((logits(AutoModelForCausalLM.from_pretrained(out).eval()) - logits(original)).abs().max())
    print(f"{name}: max |Δlogit| = {difference:.2e}")
    assert difference > change


# ------------------------------------------------------------------ grow_module on the live module
@pytest.mark.parametrize("kind, name", [("gemma2", "composite-zero"), ("gemma3", "composite")])
def test_grow_module_on_the_live_module_with_adamw(tmp_path, kind, name):
    model = save_tiny(kind, tmp_path / "in")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    model(tokens()).logits.square().mean().backward()
    optimizer.step()
    model.eval()
    spec = spec_for(tmp_path / "in", STEPS[name], tmp_path / "spec.yaml")  # the checkpoint's model = the module's
    grown, grown_optimizer = grow_module(model, spec, optimizer)
    assert type(grown) is type(model) and type(grown_optimizer) is torch.optim.AdamW
    torch.testing.assert_close(logits(grown.eval()), logits(model), atol=ATOL, rtol=RTOL)
    assert grown.config.layer_types == [TYPES[i] for i in layer_origins(load_spec(spec))]
    assert grown.lm_head.weight is grown.model.embed_tokens.weight  # still tied
    for parameter in grown.parameters():  # every moment has its parameter's grown shape
        state = grown_optimizer.state[parameter]
        assert state["exp_avg"].shape == state["exp_avg_sq"].shape == parameter.shape
    if kind == "gemma3":
        assert grown.model.layers[0].self_attn.q_norm.weight.shape == (8,)
    grown.train()
    grown(tokens()).logits.square().mean().backward()
    grown_optimizer.step()


# ------------------------------------------------------------------ specgrow's own forward agrees with transformers
@pytest.mark.parametrize("kind", ["gemma2", "gemma3"])
def test_specgrow_forward_matches_transformers(tmp_path, kind):
    """The numeric check computes logits with specgrow's semantics (`streamed_logits`): (1+w) gains, the
    embedding normaliser, sandwich norms, softcaps, query_pre_attn_scalar, per-layer-type RoPE. Each
    feature matters: the model without it computes logits more than 0.1 away."""
    model = save_tiny(kind, tmp_path / "in", attention_bias=True)
    spec = load_spec(spec_for(tmp_path / "in", [{"layers": {"add": 1}}], tmp_path / "spec.yaml"))
    assert spec.model.bias == ("q", "k", "v", "o")
    theirs = logits(model)
    with CheckpointFiles(tmp_path / "in") as files:
        for change in [{}, *WITHOUT[kind]]:
            shape = ModelShape.from_spec(dataclasses.replace(spec.model, **change))
            ours = streamed_logits(shape, RoleSource(files, FAMILIES[spec.model.arch], shape, "in"), tokens())
            if not change:
                torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=RTOL)
            else:
                assert float((ours - theirs).abs().max()) > 0.1, change


WITHOUT = {  # each Gemma feature taken away from the spec's model
    "gemma2": [{"norm_offset": 0.0}, {"embed_scale": False}, {"attn_softcap": None}, {"logit_softcap": None},
               {"attn_scale": None}],
    "gemma3": [{"norm_offset": 0.0}, {"rope_local_theta": None}, {"rope_scaling": ()},
               {"layer_types": ()}],
}


# ------------------------------------------------------------------ specgrow init
@pytest.mark.parametrize("kind", ["gemma2", "gemma3"])
def test_init_describes_the_folder(tmp_path, capsys, kind):
    src = tmp_path / "in"
    save_tiny(kind, src)
    assert main(["init", str(src)]) == 0
    text = capsys.readouterr().out
    assert "  norm_offset: 1\n  embed_scale: true\n" in text and "  norm_position: sandwich\n" in text
    model = load_spec_text(text.replace("steps: []", "steps: [{mlp: {to: 96}}]")).model
    assert (model.arch, model.norm_offset, model.embed_scale, model.attn_scale) == (kind, 1.0, True, 12.0)
    assert model.layer_types == tuple(TYPES) and model.activation == "geglu_tanh"
    if kind == "gemma2":
        assert (model.attn_softcap, model.logit_softcap, model.rope_local_theta) == (5.0, 3.0, None)
    else:
        assert (model.qk_norm, model.rope_theta, model.rope_local_theta) == ("head", 1e6, 1e4)
        assert dict(model.rope_scaling) == {"type": "linear", "factor": 8.0}
    spec = tmp_path / "spec.yaml"
    spec.write_text(text.replace("steps: []", "steps: [{mlp: {to: 96}}]"))
    assert main(["validate", str(spec), "--input", str(src)]) == 0
    capsys.readouterr()
    edited = tmp_path / "edited.yaml"  # a spec that leaves a Gemma field out disagrees with the folder
    key = {"gemma2": "  logit_softcap:", "gemma3": "  rope_local_theta:"}[kind]
    edited.write_text("".join(line for line in spec.read_text().splitlines(keepends=True) if not line.startswith(key)))
    assert main(["validate", str(edited), "--input", str(src)]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    field = {"gemma2": "model.logit_softcap: the spec says null (not written: the default), but config.json "
                       "describes 3.0",
             "gemma3": "model.rope_local_theta: the spec says null (not written: the default), but config.json "
                       "describes 10000.0"}[kind]
    assert field in line


def test_init_writes_no_gemma_field_for_other_families(tmp_path, capsys):
    from tests.test_hf import save_tiny as save_llama

    save_llama("llama", tmp_path / "in")
    assert main(["init", str(tmp_path / "in")]) == 0
    text = capsys.readouterr().out
    assert not any(key in text for key in ("norm_offset", "embed_scale", "softcap", "attn_scale", "layer_types",
                                           "rope_local_theta"))


# ------------------------------------------------------------------ config.json
def _model(kind: str, **over) -> dict:
    model = expected_model(config_of(kind).to_dict())
    model["bias"] = list(model["bias"])
    return {**model, **over}


def test_multimodal_gemma3_is_refused_in_one_line():
    with pytest.raises(CheckpointError) as caught:
        family_of({"model_type": "gemma3", "text_config": {"model_type": "gemma3_text"}}, "config.json")
    assert caught.value.message == ("config.json: model_type gemma3 is the multimodal Gemma 3, which is not "
                                    "supported: use its text model (model_type gemma3_text, Gemma3ForCausalLM)")


@pytest.mark.parametrize("kind, over, message", [
    ("gemma2", {"hidden_activation": "gelu"},
     'hidden_activation "gelu" is not supported (expected gelu_pytorch_tanh: the gated MLP is geglu_tanh)'),
    ("gemma3", {"use_bidirectional_attention": True},
     "use_bidirectional_attention true is not supported (specgrow's attention is causal)"),
    ("gemma3", {"rope_parameters": {"rope_type": "linear", "factor": 8.0}},
     "rope_parameters.rope_type: gemma3_text keeps its rope parameters per layer type (expected full_attention "
     "and sliding_attention objects only)"),
    ("gemma3", {"rope_parameters": {"sliding_attention": {"rope_type": "linear", "factor": 2.0}}},
     "rope_parameters.sliding_attention.rope_type: rope type linear on sliding-attention layers is not supported "
     "(expected default: the spec's rope_local_theta is unscaled)"),
    ("gemma3", {"rope_parameters": {"full_attention": {"rope_type": "longrope"}}},
     'rope_parameters.full_attention.rope_type: rope type "longrope" is not supported (expected default, linear, '
     "llama3, yarn or dynamic)"),
    ("gemma2", {"rope_parameters": GEMMA3_ROPE},
     "rope_parameters: per-layer-type rope parameters are not supported (expected one object with rope_type and "
     "its parameters)"),
    ("gemma3", {"layer_types": ["sliding_attention", "chunked_attention", "full_attention"]},
     'layer_types[1]: expected full_attention or sliding_attention, found "chunked_attention"'),
])
def test_what_specgrow_cannot_say_is_one_line_naming_the_key(kind, over, message):
    config = {"model_type": {"gemma2": "gemma2", "gemma3": "gemma3_text"}[kind], **COMMON, **over}
    from specgrow.arch.hf import validate_config

    with pytest.raises(CheckpointError) as caught:
        validate_config(config, "config.json")
        expected_model(config)
    assert caught.value.message == "config.json: " + message


HUB_GEMMA2 = {"model_type": "gemma2", "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 8, "num_hidden_layers": 5, "vocab_size": 97,
              "max_position_embeddings": 64, "hidden_act": "gelu_pytorch_tanh",
              "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 12, "rope_theta": 10000.0,
              "sliding_window": 4096, "cache_implementation": "hybrid"}  # no layer_types, softcaps default
HUB_GEMMA3 = {"model_type": "gemma3_text", "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
              "num_key_value_heads": 1, "head_dim": 8, "num_hidden_layers": 7, "vocab_size": 97,
              "max_position_embeddings": 64, "query_pre_attn_scalar": 12, "rope_theta": 1000000.0,
              "rope_local_base_freq": 10000.0, "rope_scaling": {"rope_type": "linear", "factor": 8.0}, "sliding_window": 512,
              "sliding_window_pattern": 3, "attn_logit_softcapping": None, "final_logit_softcapping": None}


def test_legacy_hub_configs_are_read_as_transformers_builds_them():
    """Configs of transformers 4.x (what the Hub holds): layer_types from the pattern, Gemma 3's rope from
    rope_theta, rope_local_base_freq and rope_scaling, Gemma 2's softcaps by default."""
    gemma2, built2 = expected_model(HUB_GEMMA2), Gemma2Config.from_dict(HUB_GEMMA2)
    assert gemma2["layer_types"] == built2.layer_types == ["sliding_attention", "full_attention"] * 2 + [
        "sliding_attention"]
    assert (gemma2["attn_softcap"], gemma2["logit_softcap"]) == (built2.attn_logit_softcapping,
                                                                built2.final_logit_softcapping) == (50.0, 30.0)
    assert gemma2["norm_eps"] == built2.rms_norm_eps and gemma2["tie_embeddings"] is built2.tie_word_embeddings
    gemma3, built3 = expected_model(HUB_GEMMA3), Gemma3TextConfig.from_dict(HUB_GEMMA3)
    assert gemma3["layer_types"] == built3.layer_types == (["sliding_attention"] * 2 + ["full_attention"]) * 2 + [
        "sliding_attention"]
    full, sliding = built3.rope_parameters["full_attention"], built3.rope_parameters["sliding_attention"]
    assert (gemma3["rope_theta"], gemma3["rope_local_theta"]) == (full["rope_theta"], sliding["rope_theta"])
    assert gemma3["rope_scaling"] == {"type": full["rope_type"], "factor": full["factor"]}
    assert (gemma3["attn_softcap"], gemma3["logit_softcap"], gemma3["dims"]["kv_heads"]) == (None, None, 1)
    assert shortest_window(HUB_GEMMA3) == 512 and shortest_window({**HUB_GEMMA2, "num_hidden_layers": 1}) == 4096
    assert shortest_window({**HUB_GEMMA3, "sliding_window_pattern": 1}) is None  # every layer full


@pytest.mark.parametrize("hub", [HUB_GEMMA2, HUB_GEMMA3], ids=["gemma2", "gemma3"])
def test_grown_config_writes_what_transformers_needs(hub):
    """Layers inserted at 1: layer_types explicit (the pattern would move them), the rope per layer type
    in both the new and the legacy keys, the eps and head_dim of the grown shape; transformers builds the
    grown model's rope as the original's."""
    model = {**expected_model(hub), "bias": False}
    spec = load_spec_text(yaml.safe_dump({"specgrow": 1, "model": model, "steps": [
        {"layers": {"add": 2, "at": 1}}, {"key": {"to": 16}}, {"value": {"to": 16}}]}))
    after = compile_spec(spec).steps[-1].after
    origins = layer_origins(spec)
    grown = grown_config(hub, after, origins)
    assert grown["layer_types"] == [model["layer_types"][i] for i in origins]
    assert grown["num_hidden_layers"] == len(origins) and grown["query_pre_attn_scalar"] == 12
    assert grown["head_dim"] == 16 and grown["rms_norm_eps"] == model["norm_eps"]
    built = (Gemma2Config if hub is HUB_GEMMA2 else Gemma3TextConfig).from_dict(grown)
    original = (Gemma2Config if hub is HUB_GEMMA2 else Gemma3TextConfig).from_dict(hub)
    assert built.layer_types == grown["layer_types"] and built.rope_parameters == original.rope_parameters
    again = expected_model(grown)
    for key in ("rope_theta", "rope_scaling", "rope_local_theta", "attn_softcap", "logit_softcap", "attn_scale"):
        assert again.get(key) == model.get(key)


@pytest.mark.parametrize("kind, field, value, message", [
    ("gemma2", "norm_offset", 0, "model.norm_offset: arch gemma2 has norm_offset: 1.0 (every gemma2 checkpoint "
                                 "does), found 0.0"),
    ("gemma2", "embed_scale", False, "model.embed_scale: arch gemma2 has embed_scale: true"),
    ("gemma3", "attn_softcap", 50.0, "model.attn_softcap: arch gemma3 has attn_softcap: null"),
    ("gemma3", "qk_norm", "none", "model.qk_norm: arch gemma3 has qk_norm: head"),
    ("gemma2", "rope_local_theta", 10.0, "model.rope_local_theta: arch gemma2 has rope_local_theta: null"),
])
def test_a_spec_that_says_otherwise_than_every_gemma_checkpoint_is_refused(kind, field, value, message):
    with pytest.raises(SpecError) as caught:
        load_spec_text(yaml.safe_dump({"specgrow": 1, "model": _model(kind, **{field: value}),
                                       "steps": [{"mlp": {"to": 96}}]}))
    assert message in caught.value.message

