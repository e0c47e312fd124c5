"""Real HuggingFace checkpoints: tiny random models built by `transformers` from configs (no hub),
grown by `specgrow apply`, reloaded with `AutoModelForCausalLM.from_pretrained`.

Weight scale: the models are redrawn at the scale of trained ones, not transformers' std-0.02
init, under which every activation is small and logits stay below about 0.3, so that a growth
that changes the function can still land under the tolerance (a forgotten √(k̂/k) key rescale
moves GPT-2's logits by about 3e-5). Every matrix is N(0, 1/fan_in) (fan_in is the input width:
dim 1 of an `nn.Linear` weight, dim 0 of GPT-2's Conv1D `[in, out]` weight); token and position
embeddings are N(0, 1/hidden), rows of norm about 1, so tied logits (normed state · embedding)
are of order 1 like untied ones, and the residual stream entering the first norm is small
enough that the norm's eps matters; norm gains are 1 + 0.1·N(0, 1) and biases 0.1·N(0, 1), so
they matter too. The models are seeded; the max |logit| of each family is about 3 to 4.

Tolerance: fp32 logits, atol = rtol = 1e-4 (as `specgrow apply`'s own numeric check). The
negative controls grow with specs that do not preserve the function and require the reloaded
logits to differ by more than that tolerance, so the comparison is shown to see such mistakes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import (
    AutoModelForCausalLM, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config,
)
from transformers.pytorch_utils import Conv1D

from specgrow.arch.hf import expected_model
from specgrow.cli import main

ATOL = RTOL = 1e-4
COMMON = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=64, rms_norm_eps=1e-5, head_dim=8)


def config_of(kind: str, **over):
    if kind == "gpt2":
        cfg = dict(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4, n_inner=64,
                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        return GPT2Config(**{**cfg, **over})
    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[kind]
    return cls(**{**COMMON, **over})


def scale_like_trained(model) -> None:
    """Redraw every parameter at the weight scale of the module docstring."""
    with torch.no_grad():
        for name, p in model.named_parameters():  # a tied lm_head is listed once, as the embedding
            module = model.get_submodule(name.rpartition(".")[0])
            if isinstance(module, torch.nn.Embedding):
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)  # [rows, hidden]
            elif "norm" in name or ".ln_" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p)) if name.endswith("weight") else p.copy_(0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:  # nn.Linear is [out, in]; GPT-2's Conv1D is [in, out]
                fan_in = p.shape[0] if isinstance(module, Conv1D) else p.shape[1]
                p.copy_(torch.randn_like(p) / fan_in ** 0.5)


def save_tiny(kind: str, folder: Path, max_shard_size=None, **over):
    """A seeded random model, at the weight scale of the module docstring, saved to ``folder``."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config_of(kind, **over)).eval()
    scale_like_trained(model)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kwargs)
    (folder / "tokenizer_config.json").write_text('{"model_max_length": 64}\n')
    return model


def spec_for(folder: Path, steps, path: Path) -> str:
    model = expected_model(json.loads((folder / "config.json").read_text()))
    model["bias"] = list(model["bias"])
    path.write_text(yaml.safe_dump({"specgrow": 1, "model": model, "seed": 3, "steps": steps}, sort_keys=False))
    return str(path)


def tokens(vocab=97, length=12):
    return torch.randint(0, vocab, (2, length), generator=torch.Generator().manual_seed(1))


def built_and_checked(tmp_path, save, steps, verdict="PROVED"):
    """``save(folder)`` writes a model to ``tmp_path/in`` and returns it; a spec of ``steps`` for that folder
    is written and ``specgrow check`` must exit as ``verdict`` does: ``(model, input, output, spec path)``."""
    src, out = tmp_path / "in", tmp_path / "out"
    original = save(src)
    spec = spec_for(src, steps, tmp_path / "spec.yaml")
    assert main(["check", spec]) == (0 if verdict == "PROVED" else 1)
    return original, src, out, spec


def applied_and_compared(tmp_path, capsys, save, steps, logits):
    """`built_and_checked` PROVED, applied, reloaded with transformers: ``logits(model)`` of the grown model
    equal the original's within atol = rtol = 1e-4 (fp32). Returns ``(original, grown, output folder)``."""
    original, src, out, spec = built_and_checked(tmp_path, save, steps)
    assert f"{spec}: PROVED" in capsys.readouterr().out
    assert main(["apply", spec, "--input", str(src), "-o", str(out), "-q"]) == 0
    grown = AutoModelForCausalLM.from_pretrained(out).eval()
    torch.testing.assert_close(logits(grown), logits(original), atol=ATOL, rtol=RTOL)
    return original, grown, out


def grow_and_compare(tmp_path, kind, steps, *, shard_in=None, shard_out=None, **over):
    src, out = tmp_path / "in", tmp_path / "out"
    original = save_tiny(kind, src, shard_in, **over)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    spec = spec_for(src, steps, tmp_path / "spec.yaml")
    args = ["apply", spec, "--input", str(src), "-o", str(out), "-q"]
    assert main(args + (["--max-shard-size", shard_out] if shard_out else [])) == 0
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # the input is never touched
    grown = AutoModelForCausalLM.from_pretrained(out).eval()
    t = tokens()
    with torch.no_grad():
        torch.testing.assert_close(grown(t).logits, original(t).logits, atol=ATOL, rtol=RTOL)
    return grown, out


LLAMA_STEPS = {
    "mlp": [{"mlp": {"to": 96}}],
    "mlp-duplicate": [{"mlp": {"to": 128, "method": "duplicate", "noise": 0.01}}],
    "heads": [{"heads": {"add": 4}}],
    "head-dim": [{"key": {"to": 16}}, {"value": {"to": 16}}],
    "hidden": [{"hidden": {"to": 48}}],
    "hidden-duplicate": [{"hidden": {"to": 64, "method": "duplicate"}}],
    "layers": [{"layers": {"add": 1, "at": 1}}],
    "subset": [{"mlp": {"to": 80, "layers": [0]}}, {"heads": {"add": 4, "layers": [1]}}],
    "composite": [{"mlp": {"to": 96}}, {"heads": {"add": 2}}, {"value": {"to": 16}}, {"key": {"to": 16}},
                  {"hidden": {"to": 48}}, {"layers": {"add": 2, "at": 0}}],
}


@pytest.mark.parametrize("name", sorted(LLAMA_STEPS))
def test_llama_mha_untied(tmp_path, name):
    grow_and_compare(tmp_path, "llama", LLAMA_STEPS[name])


@pytest.mark.parametrize("name", ["heads", "hidden", "composite"])
def test_llama_gqa_tied(tmp_path, name):
    grow_and_compare(tmp_path, "llama", LLAMA_STEPS[name], num_key_value_heads=2, tie_word_embeddings=True)


def test_llama_biases_sharded_in_and_out(tmp_path):
    grown, out = grow_and_compare(tmp_path, "llama", LLAMA_STEPS["composite"], attention_bias=True, mlp_bias=True,
                                  shard_in="40KB", shard_out="60KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert grown.config.num_hidden_layers == 4 and grown.config.hidden_size == 48


def test_mistral_sliding_window(tmp_path):
    grown, out = grow_and_compare(tmp_path, "mistral", LLAMA_STEPS["composite"], num_key_value_heads=2,
                                  sliding_window=32)
    assert grown.config.sliding_window == 32
    manifest = json.loads((out / "specgrow-manifest.json").read_text())
    assert manifest["numeric_check"]["passed"]


def test_qwen2_qkv_biases_and_layer_types(tmp_path):
    grown, out = grow_and_compare(tmp_path, "qwen2", LLAMA_STEPS["composite"], num_key_value_heads=2)
    config = json.loads((out / "config.json").read_text())
    assert len(config["layer_types"]) == config["num_hidden_layers"] == 4
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"]
    assert (out / "tokenizer_config.json").is_file()


GPT2_STEPS = {
    "mlp": [{"mlp": {"to": 96}}],
    "mlp-duplicate": [{"mlp": {"to": 128, "method": "duplicate"}}],
    "layers": [{"layers": {"add": 1, "at": 0}}],
    "hidden-heads": [{"hidden": {"to": 64, "method": "duplicate"}}, {"heads": {"add": 4}}],
    "hidden-duplicate-head-dim": [{"hidden": {"to": 64, "method": "duplicate"}}, {"key": {"to": 16}},
                                  {"value": {"to": 16}}],
    "composite": [{"mlp": {"to": 96}}, {"heads": {"add": 4}}, {"hidden": {"to": 64, "method": "duplicate"}},
                  {"layers": {"add": 1}}],
}


@pytest.mark.parametrize("name", sorted(GPT2_STEPS))
def test_gpt2(tmp_path, name):
    grow_and_compare(tmp_path, "gpt2", GPT2_STEPS[name])


def test_gpt2_untied_sharded(tmp_path):
    grow_and_compare(tmp_path, "gpt2", GPT2_STEPS["composite"], tie_word_embeddings=False, shard_in="30KB",
                     shard_out="50KB")


def test_bfloat16_checkpoint_stays_bfloat16(tmp_path):
    """bf16 weights: scaled blocks are computed in fp32 and rounded once; bf16 tolerance 5e-2."""
    src, out = tmp_path / "in", tmp_path / "out"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config_of("llama", num_key_value_heads=2)).to(torch.bfloat16).eval()
    model.save_pretrained(src)
    spec = spec_for(src, LLAMA_STEPS["composite"], tmp_path / "spec.yaml")
    assert main(["apply", spec, "--input", str(src), "-o", str(out), "-q"]) == 0
    manifest = json.loads((out / "specgrow-manifest.json").read_text())
    assert manifest["numeric_check"]["dtype"] == "bfloat16"
    grown = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16).eval()
    assert {p.dtype for p in grown.parameters()} == {torch.bfloat16}
    t = tokens()
    with torch.no_grad():
        torch.testing.assert_close(grown(t).logits.float(), model(t).logits.float(), atol=5e-2, rtol=5e-2)


# Specs that do not preserve the function (`apply` needs --allow-unproved to write them).
NOT_PRESERVING = {
    # the softmax scale becomes 1/√k̂ but neither q nor k absorbs √(k̂/k)
    "llama-key-rescale-none": ("llama", [{"key": {"to": 16, "rescale": "none"}}, {"value": {"to": 16}}]),
    "gpt2-key-rescale-none": ("gpt2", [{"hidden": {"to": 64, "method": "duplicate"}},
                                       {"key": {"to": 16, "rescale": "none"}}, {"value": {"to": 16}}]),
    # RMSNorm gains take √(h/ĥ) but eps (1e-5) is not scaled by ĥ/h
    "llama-hidden-rescale-gain": ("llama", [{"hidden": {"to": 48, "rescale": "gain"}}]),
    # the new down-projection columns are not zero
    "llama-mlp-w-out-normal": ("llama", [{"mlp": {"to": 96, "init": {"w_out": {"normal": 0.02}}}}]),
    "gpt2-mlp-w-out-normal": ("gpt2", [{"mlp": {"to": 96, "init": {"w_out": {"normal": 0.02}}}}]),
    # zero-padding the residual stream changes LayerNorm's mean and variance
    "gpt2-hidden-zero-layernorm": ("gpt2", [{"hidden": {"to": 64, "method": "zero"}}, {"heads": {"add": 4}}]),
}


@pytest.mark.parametrize("name", sorted(NOT_PRESERVING))
def test_growth_that_changes_the_function_fails_the_comparison(tmp_path, capsys, name):
    kind, steps = NOT_PRESERVING[name]
    src, out = tmp_path / "in", tmp_path / "out"
    original = save_tiny(kind, src)
    spec = spec_for(src, steps, tmp_path / "spec.yaml")
    assert main(["check", spec]) == 1
    assert f"{spec}: PROVED" not in capsys.readouterr().out
    assert main(["apply", spec, "--input", str(src), "-o", str(out), "-q", "--allow-unproved"]) == 0
    assert not json.loads((out / "specgrow-manifest.json").read_text())["numeric_check"]["passed"]
    grown = AutoModelForCausalLM.from_pretrained(out).eval()
    t = tokens()
    with torch.no_grad():
        before, after = original(t).logits, grown(t).logits
    print(f"{name}: max |Δlogit| = {float((after - before).abs().max()):.2e}")
    assert not torch.allclose(after, before, atol=ATOL, rtol=RTOL)
