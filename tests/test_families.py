"""Qwen3, OLMo 2 and LLaMA 3.x rope scaling on real HuggingFace checkpoints: tiny random models
built by `transformers` from configs (no hub), at the weight scale of trained ones
(`tests.test_hf.scale_like_trained`: norm gains 1 + 0.1·N(0, 1), QK-norm gains included, so
every gain matters), saved with ``save_pretrained`` (safetensors), grown by ``specgrow apply``,
reloaded with ``AutoModelForCausalLM.from_pretrained``.

Tolerance: fp32 logits, atol = rtol = 1e-4 (as `specgrow apply`'s own numeric check).

Which expansions are exact differs by family (each verdict below is the prover's, checked here
by ``specgrow check`` before the model is grown):

* Qwen3 (QK-norm per head over head_dim, the config's one ``rms_norm_eps``): mlp (zero and
  duplicate), heads (zero add of whole kv groups, duplicate), layers, hidden by ``duplicate``.
  Hidden zero-pad and key growth are REFUTED: the zero-padded norm needs its eps scaled, which
  the eps it shares with the other width cannot follow. (value alone is not expressible in HF:
  key = value = head_dim.)
* OLMo 2 (norms after each sublayer, QK-norm over all heads at once): mlp, layers, hidden by
  ``duplicate``, heads by ``duplicate`` adding every head (the all-heads norm sees [x, x]);
  heads zero-add and hidden zero-pad are REFUTED (shared eps); key growth is refused by `validate`.
* LLaMA with rope scaling ``llama3`` or ``linear``: all six, key growth by the integer multiple
  that keeps every old frequency (with value growth: HF has one head_dim); ``yarn`` and
  ``dynamic``: everything but key growth (their frequencies depend on head_dim itself).
  ``dynamic`` is compared on 80 tokens, beyond max_position_embeddings (64), where it rescales.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Olmo2Config, Qwen3Config

from specgrow.arch import FAMILIES
from specgrow.arch.hf import expected_model, grown_config, rope_parameters
from specgrow.cli import main
from specgrow.errors import CheckpointError
from specgrow.grow import grow_module
from specgrow.lower.checkpoint import RoleSource
from specgrow.lower.numeric import streamed_logits
from specgrow.lower.safetensors_io import CheckpointFiles
from specgrow.shape import ModelShape
from specgrow.spec import load_spec, load_spec_text
from tests.test_hf import applied_and_compared, built_and_checked, scale_like_trained, spec_for, tokens

ATOL = RTOL = 1e-4
COMMON = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, head_dim=8,
              pad_token_id=None, bos_token_id=None, eos_token_id=None)
ROPE = {  # rope_parameters of LLaMA configs; original context 16: llama3 has a smoothed band and a scaled one
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16, "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "rope_theta": 10000.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
}
LENGTH = {"dynamic": 80}  # tokens compared; default 12


def config_of(kind: str, **over):
    if kind == "qwen3":
        return Qwen3Config(**{**COMMON, **over})
    if kind == "olmo2":
        return Olmo2Config(**{**COMMON, **over})
    return LlamaConfig(**{**COMMON, "rope_parameters": dict(ROPE[kind]), **over})


def save_tiny(kind: str, folder: Path, **over):
    """A seeded random model of ``kind`` (qwen3, olmo2, or a rope scaling of LLaMA) saved to ``folder``."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config_of(kind, **over)).eval()
    scale_like_trained(model)
    model.save_pretrained(folder)
    return model


def logits(model, kind: str):
    with torch.no_grad():
        return model(tokens(length=LENGTH.get(kind, 12))).logits


def build_and_check(tmp_path, kind, steps, verdict="PROVED", **over):
    """`built_and_checked` for a tiny ``kind`` model: ``(original model, input, output, spec path)``."""
    return built_and_checked(tmp_path, lambda folder: save_tiny(kind, folder, **over), steps, verdict)


def grow_and_compare(tmp_path, capsys, kind, steps, **over):
    return applied_and_compared(tmp_path, capsys, lambda folder: save_tiny(kind, folder, **over), steps,
                                lambda model: logits(model, kind))


# ------------------------------------------------------------------ the exact expansions of each family
COMPOSITE = [{"mlp": {"to": 96}}, {"heads": {"add": 4, "method": "duplicate"}}, {"layers": {"add": 1, "at": 1}},
             {"hidden": {"to": 64, "method": "duplicate"}}]
STEPS = {
    "mlp": [{"mlp": {"to": 96}}],
    "mlp-duplicate": [{"mlp": {"to": 128, "method": "duplicate", "noise": 0.01}}],
    "heads": [{"heads": {"add": 2}}],  # one whole kv group (2 query heads share a kv head)
    "heads-4": [{"heads": {"add": 4}}],  # LLaMA: hidden stays divisible by heads
    "heads-duplicate": [{"heads": {"add": 4, "method": "duplicate"}}],
    "head-dim": [{"key": {"to": 16}}, {"value": {"to": 16}}],  # x2: old rotary pair i at pair 2i
    "hidden": [{"hidden": {"to": 48}}],
    "hidden-duplicate": [{"hidden": {"to": 64, "method": "duplicate"}}],
    "layers": [{"layers": {"add": 1, "at": 1}}],
    "composite": COMPOSITE,
    "composite-zero": [{"mlp": {"to": 96}}, {"heads": {"add": 2}}, {"value": {"to": 16}}, {"key": {"to": 16}},
                       {"hidden": {"to": 48}}, {"layers": {"add": 2, "at": 0}}],
}
EXACT = {
    "qwen3": ["mlp", "mlp-duplicate", "heads", "heads-duplicate", "layers", "hidden-duplicate", "composite"],
    "olmo2": ["mlp", "mlp-duplicate", "heads-duplicate", "layers", "hidden-duplicate", "composite"],
    "llama3": ["mlp", "heads-4", "head-dim", "hidden", "hidden-duplicate", "layers", "composite", "composite-zero"],
    "linear": ["mlp", "heads-4", "head-dim", "hidden", "layers", "composite-zero"],
    "yarn": ["mlp", "heads-4", "hidden", "hidden-duplicate", "layers", "composite"],
    "dynamic": ["mlp", "heads-4", "hidden", "layers", "composite"],
}
CASES = [(kind, name) for kind, names in EXACT.items() for name in names]


@pytest.mark.parametrize("kind, name", CASES, ids=[f"{kind}-{name}" for kind, name in CASES])
def test_exact_growth_reloads_with_the_same_logits(tmp_path, capsys, kind, name):
    _, grown, out = grow_and_compare(tmp_path, capsys, kind, STEPS[name])
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == ("llama" if kind in ROPE else kind)
    if kind in ROPE:  # the scaling is written back, in rope_parameters and the legacy rope_scaling alike
        params = config["rope_parameters"]
        assert params["rope_type"] == kind and params["factor"] == ROPE[kind]["factor"]
        assert config["rope_scaling"] == {key: value for key, value in params.items() if key != "rope_theta"}
        assert config["rope_theta"] == params["rope_theta"] == 10000.0
        assert grown.model.rotary_emb.rope_type == kind


@pytest.mark.parametrize("kind", ["llama3", "linear"])
def test_key_growth_keeps_every_old_frequency_of_the_scaled_rope(tmp_path, capsys, kind):
    """transformers rebuilds the scaled inverse frequencies for head_dim 16: old pair i sits at pair 2i."""
    original, grown, _ = grow_and_compare(tmp_path, capsys, kind, STEPS["head-dim"])
    old, new = original.model.rotary_emb.inv_freq, grown.model.rotary_emb.inv_freq
    assert new.shape == (8,) and old.shape == (4,)
    torch.testing.assert_close(new[::2], old, atol=0, rtol=1e-6)


@pytest.mark.parametrize("kind", ["yarn", "dynamic", "qwen3", "olmo2"])
def test_the_rope_is_rebuilt_the_same_when_head_dim_is_kept(tmp_path, capsys, kind):
    original, grown, _ = grow_and_compare(tmp_path, capsys, kind, STEPS["layers"])
    torch.testing.assert_close(grown.model.rotary_emb.inv_freq, original.model.rotary_emb.inv_freq, atol=0, rtol=0)
    assert grown.model.rotary_emb.attention_scaling == original.model.rotary_emb.attention_scaling


def test_qwen3_inserted_layers_keep_their_neighbours_layer_type(tmp_path, capsys):
    types = ["full_attention", "sliding_attention"]
    _, grown, out = grow_and_compare(tmp_path, capsys, "qwen3", [{"layers": {"add": 2, "at": 1}}],
                                     use_sliding_window=True, sliding_window=8, layer_types=types)
    config = json.loads((out / "config.json").read_text())
    assert config["layer_types"] == ["full_attention"] * 3 + ["sliding_attention"]
    assert grown.config.sliding_window == 8


# ------------------------------------------------------------------ what the shared eps refuses
REFUTED = {  # kind, steps the prover refutes, and the smallest logit change of the model they write
    # a zero-padded norm needs eps x old/new width, which the eps shared with the other norms cannot follow:
    # off by only ~2e-5 here, under the tolerance (the numeric check alone would let it through)
    "qwen3-hidden-zero": ("qwen3", [{"hidden": {"to": 48}}], 1e-6),
    # the √(k̂/k) rescale goes to k_proj, which the k_norm takes back
    "qwen3-key": ("qwen3", [{"key": {"to": 16}}, {"value": {"to": 16}}], 1e-2),
    # the all-heads norm sees the new zero heads: its eps would have to change
    "olmo2-heads-zero": ("olmo2", [{"heads": {"add": 2}}], 1e-2),
    "olmo2-hidden-zero": ("olmo2", [{"hidden": {"to": 48}}], ATOL),
}


@pytest.mark.parametrize("name", sorted(REFUTED))
def test_shared_eps_growth_is_refuted_and_apply_writes_nothing(tmp_path, capsys, name):
    kind, steps, change = REFUTED[name]
    original, src, out, spec = build_and_check(tmp_path, kind, steps, verdict="REFUTED")
    checked = capsys.readouterr().out
    assert f"{spec}: REFUTED" in checked and "rms_norm_eps" in checked
    assert main(["apply", spec, "--input", str(src), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert "REFUTED" in err and "rms_norm_eps" in err and "nothing written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "spec.yaml"]
    # written anyway, the grown model computes another function
    assert main(["apply", spec, "--input", str(src), "-o", str(out), "-q", "--allow-unproved"]) == 0
    grown = AutoModelForCausalLM.from_pretrained(out).eval()
    difference = float((logits(grown, kind) - logits(original, kind)).abs().max())
    print(f"{name}: max |Δlogit| = {difference:.2e}")
    assert difference > change


def test_olmo2_key_growth_is_refused(tmp_path, capsys):
    _, src, out, spec = build_and_check(tmp_path, "olmo2", STEPS["head-dim"], verdict="invalid")
    said = "".join(capsys.readouterr())
    assert "steps[0].key: qk_norm all" in said and "rms_norm_eps" in said
    assert main(["apply", spec, "--input", str(src), "-o", str(out), "-q"]) == 1 and not out.exists()


@pytest.mark.parametrize("kind", ["yarn", "dynamic"])
def test_key_growth_under_a_width_dependent_scaling_is_refused(tmp_path, capsys, kind):
    src = tmp_path / "in"
    save_tiny(kind, src)
    spec = spec_for(src, STEPS["head-dim"], tmp_path / "spec.yaml")
    assert main(["validate", spec]) == 1
    assert kind in capsys.readouterr().err


# ------------------------------------------------------------------ grow_module on the live module
@pytest.mark.parametrize("kind, name", [("qwen3", "composite"), ("olmo2", "composite"), ("llama3", "composite-zero"),
                                        ("yarn", "composite"), ("dynamic", "composite")])
def test_grow_module_on_the_live_module(tmp_path, kind, name):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config_of(kind)).eval()
    scale_like_trained(model)
    model.save_pretrained(tmp_path / "in")
    spec = spec_for(tmp_path / "in", STEPS[name], tmp_path / "spec.yaml")
    grown, optimizer = grow_module(model, spec)
    assert optimizer is None and type(grown) is type(model)
    torch.testing.assert_close(logits(grown.eval(), kind), logits(model, kind), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("kind", ["qwen3", "olmo2"])
def test_grow_module_grows_the_adam_state_with_the_qk_norm_gains(tmp_path, kind):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config_of(kind))
    scale_like_trained(model)
    model.save_pretrained(tmp_path / "in")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(tokens()).logits.square().mean().backward()
    optimizer.step()
    spec = spec_for(tmp_path / "in", STEPS["composite"], tmp_path / "spec.yaml")
    grown, grown_optimizer = grow_module(model.eval(), spec, optimizer)
    for parameter in grown.parameters():  # every moment has its parameter's grown shape
        state = grown_optimizer.state[parameter]
        assert state["exp_avg"].shape == state["exp_avg_sq"].shape == parameter.shape
    norm = grown.model.layers[0].self_attn.q_norm.weight
    assert norm.shape == ((8,) if kind == "qwen3" else (8 * 8,))  # head_dim / all 8 heads of 8
    grown.train()
    grown(tokens()).logits.square().mean().backward()
    grown_optimizer.step()


# ------------------------------------------------------------------ specgrow's own forward agrees with transformers
@pytest.mark.parametrize("kind", ["qwen3", "olmo2", "llama3", "linear", "yarn", "dynamic"])
def test_specgrow_forward_matches_transformers(tmp_path, kind):
    """The numeric check computes logits with specgrow's semantics (`streamed_logits`); they must
    be transformers' own, or the check would compare the wrong functions."""
    model = save_tiny(kind, tmp_path / "in", attention_bias=True)
    spec = load_spec(spec_for(tmp_path / "in", [{"layers": {"add": 1}}], tmp_path / "spec.yaml"))
    shape = ModelShape.from_spec(spec.model)
    t = tokens(length=LENGTH.get(kind, 12))
    with CheckpointFiles(tmp_path / "in") as files:
        ours = streamed_logits(shape, RoleSource(files, FAMILIES[spec.model.arch], shape, "in"), t)
    torch.testing.assert_close(ours, logits(model, kind), atol=ATOL, rtol=RTOL)


# ------------------------------------------------------------------ specgrow init
@pytest.mark.parametrize("kind", ["qwen3", "olmo2", "llama3", "yarn"])
def test_init_describes_the_folder(tmp_path, capsys, kind):
    src = tmp_path / "in"
    save_tiny(kind, src)
    assert main(["init", str(src)]) == 0
    text = capsys.readouterr().out
    model = load_spec_text(text.replace("steps: []", "steps: [{mlp: {to: 96}}]")).model
    assert model.arch == ("llama" if kind in ROPE else kind)
    assert model.qk_norm == {"qwen3": "head", "olmo2": "all"}.get(kind, "none")
    assert model.norm_position == ("post" if kind == "olmo2" else "pre")
    if kind in ROPE:
        assert dict(model.rope_scaling)["type"] == kind
    spec = tmp_path / "spec.yaml"
    spec.write_text(text.replace("steps: []", "steps: [{mlp: {to: 96}}]"))
    assert main(["validate", str(spec), "--input", str(src)]) == 0
    capsys.readouterr()
    edited = tmp_path / "edited.yaml"  # a spec that leaves the feature out disagrees with the folder
    key = {"qwen3": "  qk_norm: head\n", "olmo2": "  norm_position: post\n"}.get(kind, "  rope_scaling:")
    lines = [line for line in spec.read_text().splitlines(keepends=True) if not line.startswith(key.rstrip("\n"))]
    edited.write_text("".join(lines))
    assert main(["validate", str(edited), "--input", str(src)]) == 1
    field = {"qwen3": "model.qk_norm", "olmo2": "model.norm_position"}.get(kind, "model.rope_scaling")
    assert field in capsys.readouterr().err


@pytest.mark.parametrize("kind, old, new, valid", [
    ("yarn", "factor: 4.0,", "factor: 4, beta_fast: 32.0, beta_slow: 1, truncate: true,", True),  # the defaults
    ("yarn", "factor: 4.0,", "factor: 4.0, beta_fast: 16.0,", False),
    ("llama3", "factor: 8.0,", "factor: 4.0,", False),
    ("llama3", "{type: llama3,", "{type: linear,", False),
])
def test_rope_scaling_is_compared_by_its_effect(tmp_path, capsys, kind, old, new, valid):
    src = tmp_path / "in"
    save_tiny(kind, src)
    assert main(["init", str(src)]) == 0
    text = capsys.readouterr().out.replace("steps: []", "steps: [{mlp: {to: 96}}]")
    assert text.count(old) == 1
    spec = tmp_path / "spec.yaml"
    spec.write_text(text.replace(old, new))
    assert main(["validate", str(spec), "--input", str(src)]) == (0 if valid else 1)
    err = capsys.readouterr().err
    if not valid:
        (line,) = err.splitlines()
        assert "model.rope_scaling: the spec says {type: " in line and f"but config.json describes {{type: {kind}" in line


# ------------------------------------------------------------------ config.json: rope settings
BASE = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
        "num_hidden_layers": 2, "vocab_size": 97, "max_position_embeddings": 64}


def test_legacy_rope_scaling_is_read_as_transformers_does():
    """A set ``rope_scaling`` replaces ``rope_parameters``; rope_theta then comes from the top level."""
    config = {**BASE, "rope_theta": 500000.0, "rope_parameters": {"rope_type": "default", "rope_theta": 3.0},
              "rope_scaling": {"type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4}}
    model = expected_model(config)
    assert model["rope_theta"] == 500000.0
    assert model["rope_scaling"] == {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    built = LlamaConfig.from_dict(config)
    assert built.rope_parameters["rope_theta"] == 500000.0
    assert built.rope_parameters["original_max_position_embeddings"] == 64


def test_grown_config_round_trips_a_legacy_scaling(tmp_path):
    config = {**BASE, "rope_theta": 500000.0, "rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                                                              "beta_fast": None, "truncate": True}}
    spec = load_spec_text(json.dumps({"specgrow": 1, "model": {**expected_model(config), "bias": False},
                                      "steps": [{"layers": {"add": 1}}]}))
    after = ModelShape.from_spec(spec.model)
    grown = grown_config(config, after, [0, 1])
    assert grown["rope_parameters"] == {"rope_type": "yarn", "rope_theta": 500000.0, "factor": 4.0,
                                        "original_max_position_embeddings": 64}
    assert rope_parameters(grown, "config.json") == grown["rope_parameters"]
    assert expected_model(grown)["rope_scaling"] == expected_model(config)["rope_scaling"]
    for source in (config, grown):  # transformers builds the same rope from both
        built = AutoModelForCausalLM.from_config(LlamaConfig.from_dict(source))
        torch.testing.assert_close(built.model.rotary_emb.inv_freq,
                                   AutoModelForCausalLM.from_config(LlamaConfig.from_dict(config)).model
                                   .rotary_emb.inv_freq)


@pytest.mark.parametrize("rope, message", [
    ({"rope_parameters": {"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}},
     "rope_parameters.rope_type: rope type \"longrope\" is not supported (expected default, linear, llama3, "
     "yarn or dynamic)"),
    ({"rope_scaling": {"type": "su", "factor": 2.0}},
     "rope_scaling.type: rope type \"su\" is not supported (expected default, linear, llama3, yarn or dynamic)"),
    ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0}},
     "rope_parameters.low_freq_factor: rope type llama3 needs it, found none"),
    ({"rope_parameters": {"rope_type": "linear", "factor": "2"}},
     "rope_parameters.factor: expected a finite number > 0, found \"2\""),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0, "partial_rotary_factor": 0.5}},
     "partial_rotary_factor other than 1 is not supported"),
])
def test_unsupported_rope_is_one_line_naming_the_key(rope, message):
    with pytest.raises(CheckpointError) as caught:
        expected_model({**BASE, **rope})
    assert caught.value.message == "config.json: " + message


def test_qwen3_and_olmo2_defaults_are_those_of_their_config_classes():
    qwen3 = {**BASE, "model_type": "qwen3"}
    assert expected_model(qwen3)["dims"]["key"] == Qwen3Config().head_dim == 128
    olmo2 = {**BASE, "model_type": "olmo2", "num_key_value_heads": 2, "attention_bias": True}
    model = expected_model(olmo2)
    assert model["norm_eps"] == Olmo2Config().rms_norm_eps == 1e-5
    assert (model["dims"]["key"], model["bias"], model["qk_norm"], model["norm_position"]) == \
        (8, ("q", "k", "v", "o"), "all", "post")
