"""Phi-3 and GPT-NeoX (Pythia) on real HuggingFace checkpoints: tiny random models built by
`transformers` from configs (no hub), at the weight scale of trained ones
(`tests.test_hf.scale_like_trained`: norm gains 1 + 0.1·N(0, 1), norm and dense biases 0.1·N(0, 1)),
with partial rotary on (half of each head turns), saved with ``save_pretrained``, grown by
``specgrow apply``, reloaded with ``AutoModelForCausalLM.from_pretrained``.

Tolerance: fp32 logits, atol = rtol = 1e-4 (as `specgrow apply`'s own numeric check).

* Phi-3: fused ``qkv_proj`` (rows q | k | v, GQA) and ``gate_up_proj`` (rows gate | up), RMSNorm of
  one width: mlp (zero, duplicate), heads (whole kv groups, duplicate), key and value together
  (HF has one head_dim; placement append keeps the rotary dims, the new factor is rewritten so that
  ``int(head_dim' * factor') == rotary_dims``), hidden zero-pad, layers, and a composite of them.
* GPT-NeoX: ``query_key_value`` interleaved head by head ([q_j | k_j | v_j]), LayerNorms with biases,
  parallel residual, head_size = hidden / heads: mlp, layers, hidden x2 by duplicate with heads x2 by
  duplicate, key and value x2 with hidden x2 by duplicate; hidden zero-pad is REFUTED (a LayerNorm's
  mean moves), and a final shape with heads x key != hidden is refused by validate.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM, GPTNeoXConfig, Phi3Config

from specgrow.arch import FAMILIES
from specgrow.arch.hf import expected_model, grown_rotary_factor
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
NO_TOKENS = dict(pad_token_id=None, bos_token_id=None, eos_token_id=None)
PHI3 = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, partial_rotary_factor=0.5,
            **NO_TOKENS)  # head_dim 8 (hidden // heads), 4 of them turn
NEOX = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=64, layer_norm_eps=1e-5, rotary_pct=0.5, rotary_emb_base=10000,
            attention_bias=True, use_parallel_residual=True, **NO_TOKENS)  # head_size 8, 4 of them turn


def config_of(kind: str, **over):
    if kind == "phi3":
        return Phi3Config(**{**PHI3, **over})
    if kind == "neox-sequential":
        return GPTNeoXConfig(**{**NEOX, "use_parallel_residual": False, **over})
    return GPTNeoXConfig(**{**NEOX, **over})


def tiny(kind: str, **over):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config_of(kind, **over)).eval()
    scale_like_trained(model)
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


def grow_and_compare(tmp_path, capsys, kind, steps, **over):
    return applied_and_compared(tmp_path, capsys, lambda folder: save_tiny(kind, folder, **over), steps, logits)


# ------------------------------------------------------------------ the exact expansions of each family
HEAD_DIM = [{"key": {"to": 16}}, {"value": {"to": 16}}]  # placement append (auto, under partial rotary)
STEPS = {
    "mlp": [{"mlp": {"to": 96}}],
    "mlp-duplicate": [{"mlp": {"to": 128, "method": "duplicate", "noise": 0.01}}],
    "heads": [{"heads": {"add": 2}}],  # one whole kv group (2 query heads share a kv head)
    "heads-duplicate": [{"heads": {"add": 4, "method": "duplicate"}}],
    "head-dim": HEAD_DIM,
    "hidden": [{"hidden": {"to": 48}}],
    "layers": [{"layers": {"add": 1, "at": 1}}],
    "composite": [{"mlp": {"to": 96}}, {"heads": {"add": 2}}, *HEAD_DIM, {"hidden": {"to": 48}},
                  {"layers": {"add": 2, "at": 0}}],
    # GPT-NeoX: heads x key = hidden at the end
    "hidden-heads-duplicate": [{"mlp": {"to": 96}}, {"hidden": {"to": 64, "method": "duplicate"}},
                               {"heads": {"add": 4, "method": "duplicate"}}, {"layers": {"add": 1, "at": 1}}],
    "hidden-key-duplicate": [*HEAD_DIM, {"hidden": {"to": 64, "method": "duplicate"}}, {"layers": {"add": 1, "at": 2}}],
}
EXACT = {
    "phi3": ["mlp", "mlp-duplicate", "heads", "heads-duplicate", "head-dim", "hidden", "layers", "composite"],
    "neox": ["mlp", "mlp-duplicate", "layers", "hidden-heads-duplicate", "hidden-key-duplicate"],
    "neox-sequential": ["hidden-heads-duplicate"],
}
CASES = [(kind, name) for kind, names in EXACT.items() for name in names]


@pytest.mark.parametrize("kind, name", CASES, ids=[f"{kind}-{name}" for kind, name in CASES])
def test_exact_growth_reloads_with_the_same_logits(tmp_path, capsys, kind, name):
    original, grown, out = grow_and_compare(tmp_path, capsys, kind, STEPS[name])
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == ("phi3" if kind == "phi3" else "gpt_neox")
    rotary = original.model.rotary_emb if kind == "phi3" else original.gpt_neox.rotary_emb
    grown_rotary = grown.model.rotary_emb if kind == "phi3" else grown.gpt_neox.rotary_emb
    # the same 4 rotary dims turn at the same frequencies, whatever head_dim became
    torch.testing.assert_close(grown_rotary.inv_freq, rotary.inv_freq, atol=0, rtol=0)
    head_dim = 16 if "key" in json.dumps(STEPS[name]) else 8
    factor = config["rope_parameters"]["partial_rotary_factor"]
    assert int(head_dim * factor) == 4
    if kind == "phi3":
        assert config["head_dim"] == head_dim and config["partial_rotary_factor"] == factor
    else:
        assert config["rotary_pct"] == factor and config["use_parallel_residual"] == (kind == "neox")
        with safe_open(out / "model.safetensors", "pt") as files:  # the head under save_pretrained's name
            assert "embed_out.weight" in files.keys() and "lm_head.weight" not in files.keys()


REFUTED = {  # zero-padding hidden moves a LayerNorm's mean; 4 zero heads keep head_size 8 = 64 / 8
    "neox-hidden-zero": ("neox", [{"hidden": {"to": 64}}, {"heads": {"add": 4}}]),
}


@pytest.mark.parametrize("name", sorted(REFUTED))
def test_neox_hidden_zero_pad_is_refuted_and_apply_writes_nothing(tmp_path, capsys, name):
    kind, steps = REFUTED[name]
    original, src, out, spec = build_and_check(tmp_path, kind, steps, verdict="REFUTED")
    checked = capsys.readouterr().out
    assert f"{spec}: REFUTED" in checked
    assert "LayerNorm over a zero-padded stream [x, 0] has no exact rescale" in checked
    assert main(["apply", spec, "--input", str(src), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert "REFUTED" in err and "nothing written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "spec.yaml"]


@pytest.mark.parametrize("steps, field", [
    ([{"hidden": {"to": 64, "method": "duplicate"}}], "hidden"),  # 4 heads of 8 for hidden 64
    ([{"heads": {"add": 4, "method": "duplicate"}}], "heads"),  # 8 heads of 8 for hidden 32
    (HEAD_DIM, "key"),  # 4 heads of 16 for hidden 32: blamed on the last step changing hidden, heads or key
])
def test_neox_shapes_without_heads_x_key_equal_to_hidden_are_refused(tmp_path, capsys, steps, field):
    src = tmp_path / "in"
    save_tiny("neox", src)
    spec = spec_for(src, steps, tmp_path / "spec.yaml")
    capsys.readouterr()
    assert main(["validate", spec]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert f"{field}: gpt_neox has head_size = hidden / heads and no kv grouping" in line
    assert "grow hidden together with heads" in line


# ------------------------------------------------------------------ specgrow's own forward agrees with transformers
@pytest.mark.parametrize("kind, over", [("phi3", {}), ("neox", {}), ("neox-sequential", {}),
                                        ("neox", {"attention_bias": False, "rotary_pct": 1.0})])
def test_specgrow_forward_matches_transformers(tmp_path, kind, over):
    """The numeric check computes logits with specgrow's semantics (`streamed_logits`) from the stored
    tensors (fused, interleaved per head); they must be transformers' own."""
    model = save_tiny(kind, tmp_path / "in", **over)
    spec = load_spec(spec_for(tmp_path / "in", [{"layers": {"add": 1}}], tmp_path / "spec.yaml"))
    shape = ModelShape.from_spec(spec.model)
    assert shape.rotary_dims == (None if over.get("rotary_pct") == 1.0 else 4)
    with CheckpointFiles(tmp_path / "in") as files:
        ours = streamed_logits(shape, RoleSource(files, FAMILIES[spec.model.arch], shape, "in"), tokens())
    torch.testing.assert_close(ours, logits(model), atol=ATOL, rtol=RTOL)


# ------------------------------------------------------------------ grow_module with AdamW on the live module
@pytest.mark.parametrize("kind, name", [("phi3", "composite"), ("neox", "hidden-heads-duplicate")])
def test_grow_module_grows_the_live_module_and_its_adamw_state(tmp_path, kind, name):
    model = tiny(kind)
    model.save_pretrained(tmp_path / "in")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    model(tokens()).logits.square().mean().backward()
    optimizer.step()
    model.eval()
    spec = spec_for(tmp_path / "in", STEPS[name], tmp_path / "spec.yaml")
    grown, grown_optimizer = grow_module(model, spec, optimizer)
    assert type(grown) is type(model) and type(grown_optimizer) is torch.optim.AdamW
    torch.testing.assert_close(logits(grown.eval()), logits(model), atol=ATOL, rtol=RTOL)
    for parameter in grown.parameters():
        state = grown_optimizer.state[parameter]
        assert state["exp_avg"].shape == state["exp_avg_sq"].shape == parameter.shape
    if kind == "neox":
        old = optimizer.state[model.gpt_neox.layers[0].attention.query_key_value.weight]["exp_avg"]
        new = grown_optimizer.state[grown.gpt_neox.layers[0].attention.query_key_value.weight]["exp_avg"]
        assert_moved_head_by_head(old.view(4, 3, 8, 32), new.view(8, 3, 8, 64))
    grown.train()
    grown(tokens()).logits.square().mean().backward()
    grown_optimizer.step()


def assert_moved_head_by_head(old: torch.Tensor, new: torch.Tensor) -> None:
    """GPT-NeoX's query_key_value moments (heads, [q k v], head_size, hidden) after hidden x2 and heads x2 by
    duplicate: each new head's [q | k | v] is one old head's, its two hidden halves alike, all by one factor."""
    assert torch.equal(new[..., :32], new[..., 32:])
    half = new[..., :32]
    factor = float((half[:4] * old).sum() / (old * old).sum())
    assert factor != 0
    for head in range(8):  # the copies of old head j: j and j + 4
        torch.testing.assert_close(half[head], factor * old[head % 4], atol=1e-9, rtol=1e-5)


def test_apply_grows_a_saved_adamw_state_head_by_head(tmp_path):
    """``apply --optimizer``: a state_dict keyed by ids (named_parameters() order of the HF module)."""
    model = save_tiny("neox", tmp_path / "in")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    model(tokens()).logits.square().mean().backward()
    optimizer.step()
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    spec = spec_for(tmp_path / "in", STEPS["hidden-heads-duplicate"], tmp_path / "spec.yaml")
    assert main(["apply", spec, "--input", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-q",
                 "--optimizer", str(tmp_path / "optimizer.pt")]) == 0
    grown = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    grown_optimizer = torch.optim.AdamW(grown.parameters(), lr=1e-3)
    grown_optimizer.load_state_dict(torch.load(tmp_path / "out" / "optimizer.pt"))
    for parameter in grown.parameters():
        assert grown_optimizer.state[parameter]["exp_avg"].shape == parameter.shape
    old = optimizer.state[model.gpt_neox.layers[1].attention.query_key_value.weight]["exp_avg"]
    new = grown_optimizer.state[grown.gpt_neox.layers[2].attention.query_key_value.weight]["exp_avg"]  # 1 inserted
    assert_moved_head_by_head(old.view(4, 3, 8, 32), new.view(8, 3, 8, 64))


def test_role_source_reads_any_rows_of_the_interleaved_query_key_value(tmp_path):
    """Bands of a role that cross heads gather that role's rows from every head block it spans."""
    model = save_tiny("neox", tmp_path / "in")
    spec = load_spec(spec_for(tmp_path / "in", [{"layers": {"add": 1}}], tmp_path / "spec.yaml"))
    shape = ModelShape.from_spec(spec.model)
    attention = model.gpt_neox.layers[1].attention.query_key_value
    weight, bias = attention.weight.detach().view(4, 3, 8, 32), attention.bias.detach().view(4, 3, 8)
    with CheckpointFiles(tmp_path / "in") as files:
        source = RoleSource(files, FAMILIES["gpt_neox"], shape, "in")
        for index, role in enumerate("qkv"):
            full, full_bias = weight[:, index].reshape(32, 32), bias[:, index].reshape(32)
            for start, stop in [(0, 32), (3, 21), (8, 16), (7, 9), (5, 5)]:
                assert torch.equal(source.rows((f"attn.{role}.weight", 1), start, stop), full[start:stop])
                assert torch.equal(source.rows((f"attn.{role}.bias", 1), start, stop), full_bias[start:stop])
        assert torch.equal(source.rows(("unembed.weight", None), 0, 97), model.lm_head.weight.detach())


# ------------------------------------------------------------------ DCP: a live module's names, per-head bands
def test_neox_state_dict_in_dcp_grows_like_apply_on_the_folder(tmp_path):
    """GPT-NeoX's state_dict (lm_head, not embed_out) saved as DCP grows, in bands that cut the interleaved
    query_key_value across heads, into the tensors `apply` writes for its folder."""
    import warnings

    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file

    from specgrow.pipeline.dcp import grow_dcp

    model = save_tiny("neox", tmp_path / "hf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({name: t.clone() for name, t in model.state_dict().items()}, checkpoint_id=str(tmp_path / "in"),
                 no_dist=True)
    spec = spec_for(tmp_path / "hf", STEPS["hidden-heads-duplicate"], tmp_path / "spec.yaml")
    assert main(["apply", spec, "--input", str(tmp_path / "hf"), "--output", str(tmp_path / "st"), "-q"]) == 0
    grow_dcp(spec, tmp_path / "in", tmp_path / "out", 1, band_bytes=700, log=None)
    expected = {("lm_head.weight" if name == "embed_out.weight" else name): t
                for name, t in load_file(tmp_path / "st" / "model.safetensors").items()}
    got = {name: torch.zeros_like(t) for name, t in expected.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(got, checkpoint_id=str(tmp_path / "out"), no_dist=True)
    assert all(torch.equal(got[name], expected[name]) for name in expected)


# ------------------------------------------------------------------ specgrow init
@pytest.mark.parametrize("kind, lines", [
    ("phi3", ["  arch: phi3\n", "  rotary_dims: 4\n", "  bias: false\n"]),
    ("neox", ["  arch: gpt_neox\n", "  rotary_dims: 4\n", "  parallel_residual: true\n", "  norm: layernorm\n",
              "  bias: [q, k, v, o, up, down]\n"]),
    ("neox-sequential", ["  rotary_dims: 4\n"]),
])
def test_init_describes_the_folder(tmp_path, capsys, kind, lines):
    src = tmp_path / "in"
    save_tiny(kind, src)
    assert main(["init", str(src)]) == 0
    text = capsys.readouterr().out
    assert all(line in text for line in lines)
    assert ("parallel_residual" in text) == (kind == "neox")
    spec = tmp_path / "spec.yaml"
    spec.write_text(text.replace("steps: []", "steps: [{mlp: {to: 96}}]"))
    assert main(["validate", str(spec), "--input", str(src)]) == 0
    capsys.readouterr()
    edited = tmp_path / "edited.yaml"  # a spec that leaves the rotary width out disagrees with the folder
    edited.write_text(spec.read_text().replace("  rotary_dims: 4\n", ""))
    assert main(["validate", str(edited), "--input", str(src)]) == 1
    assert "model.rotary_dims: the spec says null (not written: the default), but config.json describes 4" \
        in capsys.readouterr().err


def test_a_pythia_style_folder_with_legacy_keys_and_buffers_grows(tmp_path, capsys):
    """Pythia's config.json: rotary_pct and rotary_emb_base, no rope_parameters; its safetensors hold the
    causal-mask and rotary buffers of older transformers (dropped: recomputed on load)."""
    from safetensors.torch import load_file, save_file

    src = tmp_path / "in"
    original = save_tiny("neox", src)
    config = json.loads((src / "config.json").read_text())
    del config["rope_parameters"]
    config.update(rotary_pct=0.5, rotary_emb_base=10000, rope_scaling=None)
    (src / "config.json").write_text(json.dumps(config))
    tensors = load_file(src / "model.safetensors")
    for i in range(2):
        tensors[f"gpt_neox.layers.{i}.attention.bias"] = torch.ones(1, 1, 64, 64, dtype=torch.bool).tril()
        tensors[f"gpt_neox.layers.{i}.attention.masked_bias"] = torch.tensor(-1e9)
        tensors[f"gpt_neox.layers.{i}.attention.rotary_emb.inv_freq"] = torch.ones(2)
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    assert main(["init", str(src)]) == 0
    spec = tmp_path / "spec.yaml"
    spec.write_text(capsys.readouterr().out.replace("steps: []", "steps: [{mlp: {to: 96}}, {layers: {add: 1}}]"))
    assert main(["apply", str(spec), "--input", str(src), "-o", str(tmp_path / "out"), "-q"]) == 0
    grown = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(logits(grown), logits(original), atol=ATOL, rtol=RTOL)
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert (written["rotary_pct"], written["rotary_emb_base"], written["rope_parameters"]["partial_rotary_factor"]) \
        == (0.5, 10000.0, 0.5)


# ------------------------------------------------------------------ config.json
BASE = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
        "vocab_size": 97, "max_position_embeddings": 64}


@pytest.mark.parametrize("config, message", [
    ({"model_type": "phi3", "rope_scaling": {"type": "su", "short_factor": [1.0], "long_factor": [1.0]}},
     "rope_scaling.type: rope type \"su\" is not supported for phi3 (expected default; Phi-3's su, yarn and "
     "longrope are all LongRoPE, whose factor lists are sized by the rotary width)"),
    ({"model_type": "phi3", "rope_parameters": {"rope_type": "yarn", "factor": 2.0}},
     "rope_parameters.rope_type: rope type \"yarn\" is not supported for phi3"),
    ({"model_type": "phi3", "rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}},
     "rope_parameters.rope_type: rope type \"longrope\" is not supported for phi3"),
    ({"model_type": "gpt_neox", "rotary_pct": 0.375},  # int(8 * 0.375) = 3: transformers turns 4 dims at width 3
     "rotary_pct: 0.375 turns int(8 x 0.375) = 3 dims of each head; specgrow supports an even number of rotary "
     "dims, at least 2"),
    ({"model_type": "gpt_neox", "rope_parameters": {"rope_type": "default", "partial_rotary_factor": 1.5}},
     "rope_parameters.partial_rotary_factor: expected a number in (0, 1], found 1.5"),
    ({"model_type": "gpt_neox", "hidden_act": "gelu_fast"},
     "hidden_act \"gelu_fast\" is not supported (expected gelu, gelu_new, gelu_pytorch_tanh, relu or silu)"),
])
def test_unsupported_configs_are_one_line_naming_the_key(config, message):
    with pytest.raises(CheckpointError) as caught:
        expected_model({**BASE, **config})
    assert caught.value.message.startswith("config.json: " + message)


def test_configs_are_read_with_the_defaults_and_precedence_of_transformers():
    """GPTNeoXConfig: rope_parameters first, then rotary_pct / rotary_emb_base (a top-level rope_theta or
    partial_rotary_factor is not read), defaults 0.25 and 10000; Phi3Config: head_dim = hidden // heads."""
    cases = [
        ({}, 2, 10000.0),
        ({"rotary_pct": 0.5, "rotary_emb_base": 7000, "rope_theta": 5.0, "partial_rotary_factor": 1.0}, 4, 7000.0),
        ({"rope_parameters": {"rope_type": "default", "rope_theta": 3.0, "partial_rotary_factor": 1.0},
          "rotary_pct": 0.5, "rotary_emb_base": 7000}, None, 3.0),
    ]
    for extra, rotary, theta in cases:
        config = {**BASE, "model_type": "gpt_neox", **extra}
        model = expected_model(config)
        built = GPTNeoXConfig.from_dict(json.loads(json.dumps(config)))
        assert (model.get("rotary_dims"), model["rope_theta"]) == (rotary, theta)
        assert int(8 * built.rope_parameters["partial_rotary_factor"]) == (rotary or 8)
        assert built.rope_parameters["rope_theta"] == theta
        assert model["parallel_residual"] is True and model["bias"] == ("q", "k", "v", "o", "up", "down")
    phi3 = expected_model({**BASE, "model_type": "phi3", "rope_theta": 5.0, "partial_rotary_factor": 0.5})
    assert (phi3["dims"]["key"], phi3["rotary_dims"], phi3["rope_theta"], phi3["norm_eps"]) == (8, 4, 5.0, 1e-5)


def test_the_grown_rotary_factor_survives_float_truncation():
    assert int(98 * (64 / 98)) == 63  # the naive factor turns one dim too few
    factor = grown_rotary_factor(64, 98, 0.25)
    assert int(98 * factor) == 64 and int(98 * json.loads(json.dumps(factor))) == 64
    assert grown_rotary_factor(4, 8, 0.5) == 0.5 and grown_rotary_factor(None, 16, 1.0) == 1.0
    built = Phi3Config(**{**PHI3, "head_dim": 98, "partial_rotary_factor": factor})  # as transformers reads it
    from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding
    assert Phi3RotaryEmbedding(built).inv_freq.shape == (32,)
    spec = load_spec_text(json.dumps({"specgrow": 1, "model": {**expected_model(built.to_dict()), "bias": False},
                                      "steps": [{"layers": {"add": 1}}]}))
    assert spec.model.rotary_dims == 64
