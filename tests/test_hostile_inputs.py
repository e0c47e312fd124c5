"""Hostile inputs: no code runs from a file, nothing outside the input is read, every bad
input is one located error line (and nothing is written).

Pickles with code (DCP ``.metadata``, legacy ``.pt``), symbolic links out of the input
folder, deeply nested JSON, config.json values of the wrong type or range, and weights that
are NaN or Inf.
"""

from __future__ import annotations

import builtins
import json
import os
import pickle
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file

import specgrow.lower.hashes as hashes
import specgrow.pipeline.apply as apply_module
from specgrow.arch.hf import expected_model
from specgrow.cli import main
from specgrow.errors import CheckpointError
from specgrow.lower.dcp_read import read_metadata
from specgrow.lower.safetensors_io import CheckpointFiles, SafetensorsReader
from specgrow.models.reference import random_state
from specgrow.spec import load_spec
from specgrow.transforms import compile_spec
from tests.test_cli import ERROR_LINE
from tests.test_hf import save_tiny, spec_for

ROOT = Path(__file__).resolve().parents[1]
SIX = str(ROOT / "examples" / "six.yaml")
DEEP = "[" * 100_000 + "]" * 100_000
WARNING_LINE = re.compile(r"^[^\n]+:\d+:\d+: warning: [^\n]+\n$")


def apply(capsys, spec, source, out, *extra):
    """``specgrow apply`` in process: ``(exit code, its stderr)``; nothing may be left at ``out``."""
    capsys.readouterr()  # e.g. transformers' progress bars while the input was saved
    code = main(["apply", str(spec), "--input", str(source), "--output", str(out), "--quiet", *extra])
    err = capsys.readouterr().err
    if code != 0:
        assert not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*")), err
    return code, err


def one_error(code, err, *parts, exit_code=1):
    """The run failed with ``exit_code`` and one error line that holds every one of ``parts``."""
    assert code == exit_code and ERROR_LINE.match(err), err
    assert all(part in err for part in parts), err


def six_state() -> dict:
    plan = compile_spec(load_spec(SIX))
    return random_state(plan.before, load_spec(SIX).seed)


def save_dcp(state: dict, folder: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=str(folder), no_dist=True)


def tiny_hf(tmp_path, kind="llama"):
    """A tiny HF folder and a spec for it."""
    folder = tmp_path / "hf"
    save_tiny(kind, folder)
    return folder, spec_for(folder, [{"mlp": {"to": 96}}], tmp_path / "spec.yaml")


# ------------------------------------------------------------------ 1. DCP metadata: an allow-list
class RunsCode:
    """Unpickling it runs ``fn(arg)``: the marker file appears if anything is run."""

    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


def payloads(marker: Path) -> dict:
    return {"os.system": RunsCode(os.system, f"touch '{marker}'"),
            "builtins.exec": RunsCode(builtins.exec, f"open({str(marker)!r}, 'w').close()")}


@pytest.mark.parametrize("payload", ["os.system", "builtins.exec"])
@pytest.mark.parametrize("where", ["dcp", "hf"])
def test_metadata_with_code_is_refused_and_never_run(tmp_path, capsys, where, payload):
    marker = tmp_path / "ran"
    if where == "dcp":
        folder, spec = tmp_path / "in", SIX
        save_dcp(six_state(), folder)
    else:  # dropped into a HuggingFace folder: the folder counts as DCP, and is refused as one
        folder, spec = tiny_hf(tmp_path)
    (folder / ".metadata").write_bytes(pickle.dumps(payloads(marker)[payload]))
    for fmt in ("dcp", "safetensors"):
        code, err = apply(capsys, spec, folder, tmp_path / "out", "--output-format", fmt)
        assert not marker.exists()
        if where == "hf" and fmt == "safetensors":  # refused before the metadata is read
            one_error(code, err, "a DCP input grows into safetensors only for the reference model")
        else:
            one_error(code, err, str(folder / ".metadata"), "cannot read DCP metadata", "refused global")


def test_real_metadata_reads_through_the_allow_list_as_torch_reads_it(tmp_path):
    state = {"model": {**six_state(), "half": torch.ones(3, dtype=torch.bfloat16), "scalar": torch.tensor(2.0)},
             "optim": {"step": 3, "param_groups": [{"lr": 0.1}]},
             "channels_last": torch.ones(1, 2, 3, 4).to(memory_format=torch.channels_last)}
    save_dcp(state, tmp_path)
    ours, torchs = read_metadata(tmp_path), dcp.FileSystemReader(str(tmp_path)).read_metadata()
    assert ours.state_dict_metadata == torchs.state_dict_metadata
    assert ours.storage_data == torchs.storage_data


def test_metadata_of_the_wrong_structure_is_one_line(tmp_path, capsys):
    from torch.distributed.checkpoint.metadata import Metadata

    save_dcp(six_state(), tmp_path / "in")
    meta = read_metadata(tmp_path / "in")
    broken = Metadata({name: md for name, md in meta.state_dict_metadata.items()}, storage_data={1: 2})
    (tmp_path / "in" / ".metadata").write_bytes(pickle.dumps(broken))
    code, err = apply(capsys, SIX, tmp_path / "in", tmp_path / "out")
    one_error(code, err, "corrupt DCP metadata: a storage entry lacks a file name")


# ------------------------------------------------------------------ 2. symbolic links
def secret(tmp_path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text("private\n")
    path.chmod(0o600)
    return path


def test_side_file_linked_out_is_skipped_with_a_warning_and_one_inside_is_copied(tmp_path, capsys):
    folder, spec = tiny_hf(tmp_path)
    (folder / "notes.txt").symlink_to(secret(tmp_path))
    (folder / "alias.json").symlink_to("tokenizer_config.json")
    code, err = apply(capsys, spec, folder, tmp_path / "out")
    assert code == 0, err
    assert WARNING_LINE.match(err) and "notes.txt" in err and "warning: not copied" in err, err
    out = tmp_path / "out"
    assert not (out / "notes.txt").exists() and "private" not in err
    assert not (out / "alias.json").is_symlink()
    assert (out / "alias.json").read_text() == (folder / "tokenizer_config.json").read_text()
    copied = json.loads((out / "specgrow-manifest.json").read_text())["output"]["copied"]
    assert "notes.txt" not in copied and "alias.json" in copied


def move_out(folder: Path, name: str) -> None:
    """Move ``folder/name`` beside the folder and leave a link to it in its place."""
    moved = folder.parent / f"elsewhere-{name}"
    (folder / name).rename(moved)
    (folder / name).symlink_to(moved)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "model.safetensors.index.json", "shard"])
def test_checkpoint_file_linked_out_is_refused(tmp_path, capsys, name):
    folder = tmp_path / "hf"
    save_tiny("llama", folder, max_shard_size=None if name in ("model.safetensors", "config.json") else "40KB")
    spec = spec_for(folder, [{"mlp": {"to": 96}}], tmp_path / "spec.yaml")
    if name == "shard":
        name = sorted(p.name for p in folder.glob("model-*-of-*.safetensors"))[-1]
    move_out(folder, name)
    code, err = apply(capsys, spec, folder, tmp_path / "out")
    one_error(code, err, f"'{name}' is a symbolic link out of the input folder")


@pytest.mark.parametrize("name", [".metadata", "__0_0.distcp"])
def test_dcp_file_linked_out_is_refused(tmp_path, capsys, name):
    save_dcp(six_state(), tmp_path / "in")
    move_out(tmp_path / "in", name)
    code, err = apply(capsys, SIX, tmp_path / "in", tmp_path / "out")
    one_error(code, err, f"'{name}' is a symbolic link out of the input folder")


def test_huggingface_cache_snapshot_links_into_its_blobs(tmp_path, capsys):
    """snapshots/REV/NAME -> ../../blobs/NAME is HuggingFace's cache layout: read and copied;
    a blob that links further out is still refused."""
    folder, spec = tiny_hf(tmp_path)
    repo = tmp_path / "models--tiny"
    snapshot, blobs = repo / "snapshots" / "rev", repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for item in folder.iterdir():
        item.rename(blobs / item.name)
        (snapshot / item.name).symlink_to(Path("..") / ".." / "blobs" / item.name)
    (blobs / "notes").symlink_to(secret(tmp_path))
    (snapshot / "notes.txt").symlink_to(Path("..") / ".." / "blobs" / "notes")
    code, err = apply(capsys, spec, snapshot, tmp_path / "out")
    assert code == 0 and WARNING_LINE.match(err) and "notes.txt" in err, err
    assert (tmp_path / "out" / "tokenizer_config.json").is_file()
    assert not (tmp_path / "out" / "notes.txt").exists()


def test_prefetch_hashes_no_file_outside_the_folder(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(hashes, "sha256_later", asked.append)
    (tmp_path / "in").mkdir()
    save_file({"w": torch.ones(2)}, tmp_path / "in" / "a.safetensors")
    save_file({"w": torch.ones(2)}, tmp_path / "other.safetensors")
    (tmp_path / "in" / "b.safetensors").symlink_to(tmp_path / "other.safetensors")
    hashes.prefetch(tmp_path / "in")
    assert [p.name for p in asked] == ["a.safetensors"]


# ------------------------------------------------------------------ 3. deeply nested JSON
def deep_header(path: Path) -> None:
    raw = DEEP.encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw)


def test_deep_safetensors_header_is_one_line(tmp_path, capsys):
    deep_header(tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="JSON nested too deeply"):
        SafetensorsReader(tmp_path / "m.safetensors")
    code, err = apply(capsys, SIX, tmp_path / "m.safetensors", tmp_path / "out")
    one_error(code, err, "m.safetensors", "nested too deeply")


def test_deep_index_is_one_line(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "model.safetensors.index.json").write_text(DEEP)
    with pytest.raises(CheckpointError, match="nested too deeply"):
        CheckpointFiles(tmp_path / "in")
    code, err = apply(capsys, SIX, tmp_path / "in", tmp_path / "out")
    one_error(code, err, "model.safetensors.index.json", "nested too deeply")


# ------------------------------------------------------------------ 4. config.json, validated before the proof
LLAMA = {"model_type": "mistral", "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
         "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 97, "max_position_embeddings": 64,
         "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "sliding_window": 4096,
         "tie_word_embeddings": False}
GPT2 = {"model_type": "gpt2", "n_embd": 32, "n_head": 4, "n_layer": 2, "n_inner": 64, "vocab_size": 97,
        "n_positions": 64, "layer_norm_epsilon": 1e-5, "activation_function": "gelu_new"}
DIM = r"expected an integer in 1\.\.1048576"
CONFIG_CASES = [  # (id, base, changes, the message after "config.json: ")
    ("heads-zero", LLAMA, {"num_attention_heads": 0}, rf"num_attention_heads: {DIM}, found 0$"),
    ("string-for-int", LLAMA, {"hidden_size": "32"}, rf'hidden_size: {DIM}, found "32"$'),
    ("float-for-int", LLAMA, {"num_hidden_layers": 2.0},
     r"num_hidden_layers: expected an integer in 1\.\.4096, found 2.0$"),
    ("bool-for-int", LLAMA, {"vocab_size": True}, r"vocab_size: expected an integer in 1\.\.4194304, found true$"),
    ("huge-dim", LLAMA, {"intermediate_size": 10**9}, rf"intermediate_size: {DIM}, found 1000000000$"),
    ("4000-digits", LLAMA, {"hidden_size": 10**3999}, rf"hidden_size: {DIM}, found an integer of 4000 digits$"),
    ("5000-digits", LLAMA, {"hidden_size": "HUGE"},  # written as 1 and 4999 zeros
     r"hidden_size: expected a number, found an integer of 5000 digits$"),
    ("rope-theta-string", LLAMA, {"rope_theta": "abc"}, r'rope_theta: expected a finite number > 0, found "abc"$'),
    ("rope-theta-zero", LLAMA, {"rope_theta": 0}, r"rope_theta: expected a finite number > 0, found 0$"),
    ("rope-parameters-list", LLAMA, {"rope_parameters": [1, 2]}, r"rope_parameters: expected an object, found a list$"),
    ("rope-parameters-theta", LLAMA, {"rope_parameters": {"rope_type": "default", "rope_theta": -1}},
     r"rope_parameters.rope_theta: expected a finite number > 0, found -1$"),
    ("rope-type-number", LLAMA, {"rope_scaling": {"type": 3}}, r"rope_scaling.type: expected a string, found 3$"),
    ("eps-string", LLAMA, {"rms_norm_eps": "x"}, r'rms_norm_eps: expected a finite number >= 0, found "x"$'),
    ("eps-nan", LLAMA, {"rms_norm_eps": float("nan")}, r"rms_norm_eps: expected a finite number >= 0, found NaN$"),
    ("eps-negative", LLAMA, {"rms_norm_eps": -1e-5}, r"rms_norm_eps: expected a finite number >= 0, found -1e-05$"),
    ("sliding-window-string", LLAMA, {"sliding_window": "abc"},
     r'sliding_window: expected an integer >= 0 \(0: no sliding window\), found "abc"$'),
    ("tie-string", LLAMA, {"tie_word_embeddings": "yes"}, r'tie_word_embeddings: expected true or false, found "yes"$'),
    ("hidden-act-list", LLAMA, {"hidden_act": ["silu"]}, r"hidden_act: expected a string, found a list$"),
    ("layer-types-short", LLAMA, {"layer_types": ["full_attention"]},
     r"layer_types: expected one type per layer \(2\), found 1$"),
    ("gpt2-heads-zero", GPT2, {"n_head": 0}, rf"n_head: {DIM}, found 0$"),
    ("gpt2-eps-string", GPT2, {"layer_norm_epsilon": "1e-5"},
     r'layer_norm_epsilon: expected a finite number >= 0, found "1e-5"$'),
    ("gpt2-activation-object", GPT2, {"activation_function": {"name": "gelu"}},
     r"activation_function: expected a string, found an object$"),
]


def never_proved(*_args, **_kwargs):
    raise AssertionError("the config must be refused before the proof runs")


@pytest.mark.parametrize("base, changes, message", [case[1:] for case in CONFIG_CASES],
                         ids=[case[0] for case in CONFIG_CASES])
def test_config_values_are_validated_before_the_proof(tmp_path, capsys, monkeypatch, base, changes, message):
    folder = tmp_path / "hf"
    folder.mkdir()
    spec = spec_for_config(base, tmp_path / "spec.yaml")
    (folder / "config.json").write_text(json.dumps({**base, **changes}).replace('"HUGE"', "1" + "0" * 4999))
    monkeypatch.setattr(apply_module, "prove", never_proved)
    code, err = apply(capsys, spec, folder, tmp_path / "out")
    one_error(code, err, str(folder / "config.json"))
    assert re.search(r"error: config\.json: " + message, err), err


def test_deep_config_is_one_line_before_the_proof(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "hf"
    folder.mkdir()
    spec = spec_for_config(LLAMA, tmp_path / "spec.yaml")
    (folder / "config.json").write_text(DEEP)
    monkeypatch.setattr(apply_module, "prove", never_proved)
    code, err = apply(capsys, spec, folder, tmp_path / "out")
    one_error(code, err, "config.json", "nested too deeply")


def spec_for_config(config: dict, path: Path) -> str:
    model = expected_model(config)
    path.write_text(json.dumps({"specgrow": 1, "model": {**model, "bias": list(model["bias"])},
                                "steps": [{"mlp": {"to": 96}}]}))
    return str(path)


# ------------------------------------------------------------------ 5. NaN and Inf weights
@pytest.mark.parametrize("value, dtype", [(float("nan"), torch.float32), (float("-inf"), torch.bfloat16)],
                         ids=["nan-float32", "inf-bfloat16"])
def test_non_finite_input_tensor_is_named(tmp_path, capsys, value, dtype):
    state = {name: t.to(dtype) for name, t in six_state().items()}
    state["layers.1.mlp.up.weight"][3, 5] = value
    save_file(state, tmp_path / "m.safetensors")
    code, err = apply(capsys, SIX, tmp_path / "m.safetensors", tmp_path / "out")
    one_error(code, err, f"input tensor 'layers.1.mlp.up.weight' is not finite: row 3 holds {value}")
    assert "changes the function" not in err


def test_non_finite_conv1d_tensor_of_gpt2_is_named(tmp_path, capsys):
    folder, spec = tiny_hf(tmp_path, "gpt2")
    from safetensors.torch import load_file

    state = load_file(folder / "model.safetensors")
    state["transformer.h.0.attn.c_attn.weight"][7, 2] = float("inf")
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    code, err = apply(capsys, spec, folder, tmp_path / "out")
    one_error(code, err, "input tensor 'transformer.h.0.attn.c_attn.weight' is not finite: row 7 holds inf")


def test_non_finite_dcp_tensor_is_named(tmp_path, capsys):
    state = six_state()
    state["embed.weight"][0, 0] = float("nan")
    save_dcp(state, tmp_path / "in")
    code, err = apply(capsys, SIX, tmp_path / "in", tmp_path / "out")
    one_error(code, err, "input tensor 'embed.weight' is not finite: row 0 holds nan")


# ------------------------------------------------------------------ 6. legacy .pt files: one line, no warning
class Opaque:
    """A class weights_only loading refuses."""


@pytest.mark.parametrize("protocol, opaque", [(2, True), (4, False), (4, True)])
def test_legacy_pt_is_one_line_without_torch_warnings(tmp_path, capsys, protocol, opaque):
    state = {**six_state(), **({"extra": Opaque()} if opaque else {})}
    torch.save(state, tmp_path / "m.pt", _use_new_zipfile_serialization=False, pickle_protocol=protocol)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, err = apply(capsys, SIX, tmp_path / "m.pt", tmp_path / "out")
    assert not [w for w in caught if "pickle" in str(w.message)], [str(w.message) for w in caught]
    reason = "holds objects other than tensors" if opaque and protocol == 2 else "instruction weights_only"
    one_error(code, err, "m.pt", reason)


def test_legacy_pt_prints_one_stderr_line_from_the_command(tmp_path):
    torch.save(six_state(), tmp_path / "m.pt", _use_new_zipfile_serialization=False, pickle_protocol=4)
    run = subprocess.run([sys.executable, "-m", "specgrow.cli", "apply", SIX, "--input", str(tmp_path / "m.pt"),
                          "--output", str(tmp_path / "out"), "-q"], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 1 and ERROR_LINE.match(run.stderr), run.stderr
    assert not (tmp_path / "out").exists()

