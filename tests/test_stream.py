"""Streamed growth: banding never changes a bit, the streamed forward is the reference model's,
and a HuggingFace folder that does not match its spec is refused before anything is written."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from specgrow.cli import main
from specgrow.lower.numeric import streamed_logits, tokens_for
from specgrow.ir import StepPlan
from specgrow.lower.stream import StateSource, bands, chain, whole
from specgrow.models.reference import build, random_state
from specgrow.shape import tensor_name
from specgrow.spec import load_spec
from specgrow.transforms import compile_spec
from tests.helpers import make_spec
from tests.test_hf import save_tiny, spec_for

ROOT = Path(__file__).resolve().parents[1]
ERROR_LINE = re.compile(r"^[^\n]+:\d+:\d+: error: [^\n]+\n$")

# duplicate noise, like_old draws and per-head selections: every kind of block
MIXED = [{"mlp": {"to": 64, "method": "duplicate", "noise": 0.01}}, {"heads": {"add": 2}},
         {"key": {"to": 12}}, {"hidden": {"to": 24}}, {"layers": {"add": 1, "at": 1}}]


def _source(spec):
    plan = compile_spec(spec)
    state = random_state(plan.before, spec.seed)
    return plan, StateSource.of_state(state, plan.before)


@pytest.mark.parametrize("band_bytes", [64, 1000, 1 << 30])
def test_banding_never_changes_a_bit(band_bytes):
    spec = make_spec(MIXED, dims={"vocab": 600})  # more rows than one random tile
    plan, source = _source(spec)
    grown = chain(source, plan.concrete().steps, "cpu")
    for key in grown.keys():
        banded = torch.cat([grown.rows(key, a, b) for a, b in bands(grown, key, band_bytes)]) \
            if grown.shape(key) else whole(grown, key)
        assert torch.equal(banded, whole(grown, key)), key


def test_streamed_forward_is_the_reference_model():
    spec = make_spec(MIXED, activation="swiglu", position="rope", bias=True, tie_embeddings=True)
    plan, source = _source(spec)
    tokens = tokens_for(plan.before, 1, "cpu")
    state = {tensor_name(*key): t for key, t in source.tensors.items()}
    expected = build(plan.before, state)(tokens)
    torch.testing.assert_close(streamed_logits(plan.before, source, tokens, band_bytes=256), expected,
                               atol=1e-5, rtol=1e-5)


def _apply(tmp_path, spec, src, capsys):
    out = tmp_path / "out"
    code = main(["apply", spec, "--input", str(src), "-o", str(out), "-q"])
    err = capsys.readouterr().err
    return code, err, out


@pytest.fixture
def llama_folder(tmp_path):
    src = tmp_path / "in"
    save_tiny("llama", src)
    return src, spec_for(src, [{"mlp": {"to": 96}}], tmp_path / "spec.yaml")


def test_spec_config_mismatch_is_one_error_nothing_written(tmp_path, llama_folder, capsys):
    src, spec = llama_folder
    text = Path(spec).read_text().replace("mlp: 64", "mlp: 48").replace("to: 96", "to: 80")
    Path(spec).write_text(text)
    code, err, out = _apply(tmp_path, spec, src, capsys)
    assert code == 1 and ERROR_LINE.match(err), err
    assert "model.dims.mlp: the spec says 48, but config.json describes 64" in err
    assert not out.exists()


@pytest.mark.parametrize("fault,message", [
    ("missing", "tensor 'model.layers.1.mlp.up_proj.weight' of the spec's model is missing from the checkpoint"),
    ("dtype", "expected a floating-point dtype, found int32"),
    ("extra", "the checkpoint holds tensor 'model.extra', which the spec's model does not have"),
    ("truncated", "truncated safetensors file"),
])
def test_broken_checkpoint_is_one_error_nothing_written(tmp_path, llama_folder, capsys, fault, message):
    src, spec = llama_folder
    path = src / "model.safetensors"
    if fault == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    else:
        tensors = load_file(str(path))
        name = "model.layers.1.mlp.up_proj.weight"
        if fault == "missing":
            del tensors[name]
        elif fault == "dtype":
            tensors[name] = tensors[name].to(torch.int32)
        else:
            tensors["model.extra"] = torch.zeros(2)
        save_file(tensors, str(path), metadata={"format": "pt"})
    code, err, out = _apply(tmp_path, spec, src, capsys)
    assert code == 1 and ERROR_LINE.match(err), err
    assert message in err
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_hf_spec_without_input_or_with_a_file_is_refused(tmp_path, llama_folder, capsys):
    src, spec = llama_folder
    assert main(["apply", spec, "-o", str(tmp_path / "a")]) == 1
    assert "apply needs --input DIR" in capsys.readouterr().err
    code, err, _ = _apply(tmp_path, spec, src / "model.safetensors", capsys)
    assert code == 1 and "--input must be a HuggingFace folder with config.json" in err


def test_gpt2_hub_layout_without_prefix_and_with_mask_buffers(tmp_path, capsys):
    """The original GPT-2 files: names without ``transformer.`` and the causal-mask buffers."""
    src = tmp_path / "in"
    model = save_tiny("gpt2", src)
    tensors = {name.removeprefix("transformer."): t for name, t in load_file(str(src / "model.safetensors")).items()}
    tensors["h.0.attn.bias"] = torch.ones(1, 1, 64, 64).tril()
    save_file(tensors, str(src / "model.safetensors"), metadata={"format": "pt"})
    spec = spec_for(src, [{"mlp": {"to": 96}}], tmp_path / "spec.yaml")
    code, err, out = _apply(tmp_path, spec, src, capsys)
    assert code == 0, err
    written = load_file(str(out / "model.safetensors"))
    assert "h.0.mlp.c_fc.weight" in written and "h.0.attn.bias" not in written
    from transformers import AutoModelForCausalLM

    grown = AutoModelForCausalLM.from_pretrained(out).eval()
    t = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(grown(t).logits, model(t).logits, atol=1e-4, rtol=1e-4)


def test_reference_output_folder_records_files_and_hashes(tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["apply", str(ROOT / "examples" / "six.yaml"), "-o", str(out), "-q", "--max-shard-size", "1MB"]) == 0
    manifest = json.loads((out / "specgrow-manifest.json").read_text())
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1  # several shards, each hashed as it was written
    assert sorted(manifest["output"]["files"]) == sorted(shards + [
        "config.json", "model.safetensors.index.json", "proof.md", "spec.yaml"])  # every file but the manifest
    for name, digest in manifest["output"]["files"].items():
        assert digest == hashlib.sha256((out / name).read_bytes()).hexdigest(), name
    plan = compile_spec(load_spec(ROOT / "examples" / "six.yaml"))
    assert index["metadata"]["total_size"] == 4 * plan.after.parameter_count()


def test_plan_names_tensors_as_the_family_stores_them(tmp_path, llama_folder, capsys):
    _, spec = llama_folder
    assert main(["plan", spec]) == 0
    out = capsys.readouterr().out
    assert re.search(r"model\.layers\.1\.mlp\.up_proj\.weight +\(64, 32\) -> \(96, 32\)", out)


def test_pytorch_model_bin_folder_is_grown(tmp_path, capsys):
    """A folder with pytorch_model.bin (read with weights_only=True) instead of safetensors."""
    src = tmp_path / "in"
    model = save_tiny("llama", src)
    state = load_file(str(src / "model.safetensors"))
    torch.save(state, str(src / "pytorch_model.bin"))
    (src / "model.safetensors").unlink()
    spec = spec_for(src, [{"hidden": {"to": 48}}], tmp_path / "spec.yaml")
    code, err, out = _apply(tmp_path, spec, src, capsys)
    assert code == 0, err
    assert (out / "model.safetensors").is_file() and not (out / "pytorch_model.bin").exists()
    from transformers import AutoModelForCausalLM

    grown = AutoModelForCausalLM.from_pretrained(out).eval()
    t = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(grown(t).logits, model(t).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_like_old_moments_are_those_of_the_whole_tensor_across_bands(dtype):
    """Mean and unbiased std of an old tensor, merged over its 8 MB bands, match fp64 ones."""
    from specgrow.lower.stream import StepSource

    old = (torch.randn(20000, 300, generator=torch.Generator().manual_seed(3)) * 0.02 + 0.5).to(dtype)
    assert len(list(bands(StateSource({("w", None): old}), ("w", None)))) > 1
    grown = StepSource(StateSource({("w", None): old}), StepPlan(0, "mlp", None, None, ()), "cpu")
    mean, std = grown._moments_of(("w", None))
    exact = old.double()
    assert mean == pytest.approx(float(exact.mean()), rel=1e-9)
    assert std == pytest.approx(float(exact.std()), rel=1e-7)
