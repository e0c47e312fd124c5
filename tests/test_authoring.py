"""Authoring a spec for a HuggingFace folder: ``specgrow init``, ``validate``/``check --input``, and
the messages a spec author meets first.

The folders are tiny random models built by `transformers` from configs (`tests.test_hf.save_tiny`);
each is built once per module and never modified (a test that edits one copies it first).
"""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
import yaml

import specgrow
from specgrow.arch.hf import cross_check_all, refuse_mismatches, tensor_mismatches
from specgrow.cli import main
from specgrow.errors import SpecError, SpecErrors
from specgrow.lower.safetensors_io import header_shapes
from specgrow.models.reference import ReferenceModel
from specgrow.shape import ModelShape
from specgrow.spec import load_spec, load_spec_text
from tests.helpers import make_spec
from tests.test_hf import save_tiny
from tests.test_light_install import _blocker, heavy_imports, run_light

FAMILIES = {  # folder name: (family, config overrides)
    "gpt2": ("gpt2", {}),
    "gpt2-untied": ("gpt2", {"tie_word_embeddings": False}),
    "llama": ("llama", {"num_key_value_heads": 2}),
    "llama-biases-tied": ("llama", {"attention_bias": True, "mlp_bias": True, "tie_word_embeddings": True}),
    "mistral": ("mistral", {"num_key_value_heads": 2, "sliding_window": 32}),
    "qwen2": ("qwen2", {"num_key_value_heads": 2}),
}
LOCATED = re.compile(r"^(?P<file>[^:]+):(?P<line>\d+):(?P<col>\d+): error: (?P<msg>.*)$")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    for name, (kind, over) in FAMILIES.items():
        save_tiny(kind, root / name, **over)
    return {name: root / name for name in FAMILIES}


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def init(folder, tmp_path, capsys, steps="[{mlp: {to: 128}}]", name="spec.yaml") -> Path:
    """``specgrow init`` of ``folder`` written to a spec file, its ``steps: []`` filled with ``steps``."""
    code, text, err = run(["init", folder], capsys)
    assert code == 0 and err == "", err
    path = tmp_path / name
    path.write_text(text.replace("\nsteps: []\n", f"\nsteps: {steps}\n"))
    return path


def errors_of(err: str) -> list[dict]:
    lines = err.splitlines()
    assert all(LOCATED.match(line) for line in lines), err
    return [LOCATED.match(line).groupdict() for line in lines]


def line_of(path: Path, text: str) -> int:
    """The 1-based line of ``path`` holding ``text`` (once)."""
    (number,) = [i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line]
    return number


def edited(path: Path, *changes: tuple[str, str]) -> Path:
    text = path.read_text()
    for old, new in changes:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    path.write_text(text)
    return path


# ---------------------------------------------------------------- init
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_init_restates_config_then_validates_and_proves_once_steps_are_filled(folders, tmp_path, capsys, name):
    folder = folders[name]
    code, text, _ = run(["init", folder], capsys)
    assert code == 0
    lines = text.splitlines()
    assert lines[0] == f"# A specgrow spec for the HuggingFace checkpoint {json.dumps(str(folder))}"
    assert re.fullmatch(r"  dims: \{hidden: \d+, mlp: \d+, heads: \d+, kv_heads: \d+, key: \d+, value: \d+,", lines[5])
    assert lines[-1] == "steps: []" and any(line.startswith("# Fill in the growth steps") for line in lines)
    model = yaml.safe_load(text)["model"]  # a YAML 1.1 reader reads it the same
    assert list(model) == ["arch", "dims", "norm", "norm_eps", "activation", "position", "rope_theta",
                           "final_norm", "tie_embeddings", "bias"]
    assert list(model["dims"]) == ["hidden", "mlp", "heads", "kv_heads", "key", "value", "layers", "vocab",
                                   "positions"]
    assert isinstance(model["norm_eps"], float)

    bare = tmp_path / "bare.yaml"
    bare.write_text(text)
    code, _, err = run(["validate", bare, "--input", folder], capsys)  # the model is valid: only steps is missing
    assert code == 1 and [e["line"] for e in errors_of(err)] == [str(len(lines))]
    assert "steps: expected at least 1 item(s), found an empty list" in err

    spec = init(folder, tmp_path, capsys)
    code, out, err = run(["validate", spec, "--input", folder], capsys)
    assert (code, err) == (0, "")
    tensors = len(header_shapes(folder))
    assert out == f"{spec}: valid (1 step(s)); matches {folder} (config.json, {tensors} tensor shapes)\n"
    code, out, _ = run(["check", spec, "--input", folder], capsys)
    assert code == 0 and out.startswith(f"{spec}: PROVED")


def test_apply_output_reinits_to_a_spec_that_validates(folders, tmp_path, capsys):
    grown = tmp_path / "grown"
    steps = "[{mlp: {to: 128}}, {heads: {add: 2}}, {hidden: {to: 48}}, {layers: {add: 1}}]"
    spec = init(folders["qwen2"], tmp_path, capsys, steps)
    assert run(["apply", spec, "--input", folders["qwen2"], "-o", grown, "-q"], capsys)[0] == 0
    again = init(grown, tmp_path, capsys, "[{layers: {add: 1}}]", "again.yaml")
    model = load_spec(again).model
    assert (model.dims.hidden, model.dims.mlp, model.dims.heads, model.dims.layers) == (48, 128, 6, 3)
    assert model.bias == ("q", "k", "v")
    assert run(["validate", again, "--input", grown], capsys)[0] == 0
    assert run(["check", again, "--input", grown], capsys)[0] == 0


def test_init_output_file_is_new_or_refused(folders, tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    code, out, _ = run(["init", folders["llama"], "-o", spec], capsys)
    assert code == 0 and out == f"wrote {spec}\n"
    written = spec.read_text()
    assert written.startswith("# A specgrow spec for the HuggingFace checkpoint")
    code, out, err = run(["init", folders["gpt2"], "-o", spec], capsys)
    assert (code, out) == (2, "") and err == f"{spec}:1:1: error: '{spec}' already exists; nothing written " \
                                             "(init never replaces a file)\n"
    assert spec.read_text() == written and sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


@pytest.mark.parametrize("config,code,message", [
    (None, 2, "does not exist: expected a HuggingFace checkpoint folder with config.json"),
    ({}, 1, "the input directory has no config.json"),
    ({"model_type": "bert"}, 1,
     'config.json: model_type "bert" is not supported (expected gpt2, llama, mistral, qwen2, qwen3, olmo2, '
     'gemma2, gemma3_text, phi3, gpt_neox, mixtral or qwen3_moe)'),
    ({"model_type": "qwen2", "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
      "num_key_value_heads": 32, "num_hidden_layers": 2, "vocab_size": 97, "max_position_embeddings": 64},
     1, "config.json describes a model no spec can restate: model.dims.kv_heads: expected a divisor of heads 4, "
        "found 32"),
])
def test_init_errors_are_one_line(tmp_path, capsys, config, code, message):
    folder = tmp_path / "model"
    if config is not None:
        folder.mkdir()
        if config:
            (folder / "config.json").write_text(json.dumps(config))
    got, out, err = run(["init", folder], capsys)
    assert (got, out) == (code, "") and len(err.splitlines()) == 1 and message in err


# ---------------------------------------------------------------- validate / check --input
def test_every_mismatch_is_reported_at_its_line_in_the_spec(folders, tmp_path, capsys):
    spec = edited(init(folders["qwen2"], tmp_path, capsys), ("mlp: 64,", "mlp: 48,"),
                  ("norm_eps: 1.0e-05", "norm_eps: 1.0e-6"), ("bias: [q, k, v]", "bias: false"),
                  ("  rope_theta: 10000.0\n", ""), ("tie_embeddings: false", "tie_embeddings: true"))
    code, out, err = run(["validate", spec, "--input", folders["qwen2"]], capsys)
    assert (code, out) == (1, "")
    assert [(int(e["line"]), e["msg"]) for e in errors_of(err)] == [
        (line_of(spec, "mlp: 48"), "model.dims.mlp: the spec says 48, but config.json describes 64"),
        (line_of(spec, "norm_eps"), "model.norm_eps: the spec says 1e-06, but config.json describes 1e-05"),
        (line_of(spec, "tie_embeddings"), "model.tie_embeddings: the spec says true, but config.json describes false"),
        (line_of(spec, "bias:"), "model.bias: the spec says false (no biases), but config.json describes "
                                 "biases on q, k, v"),
    ]
    assert errors_of(err)[0]["col"] == str(spec.read_text().splitlines()[5].index("48") + 1)


def test_refuse_mismatches_raises_every_line_at_once(folders, tmp_path, capsys):
    """What `apply --input` calls: one error rendering one located line per disagreement."""
    spec = edited(init(folders["mistral"], tmp_path, capsys), ("layers: 2,", "layers: 3,"),
                  ("vocab: 97,", "vocab: 98,"))
    with pytest.raises(SpecErrors) as caught:
        refuse_mismatches(load_spec(spec), folders["mistral"], header_shapes(folders["mistral"]))
    assert [e["msg"] for e in errors_of(caught.value.render())] == [
        "model.dims.layers: the spec says 3, but config.json describes 2",
        "model.dims.vocab: the spec says 98, but config.json describes 97"]
    assert (caught.value.line, caught.value.exit_code) == (line_of(spec, "layers: 3,"), 1)


def test_a_default_the_spec_leaves_out_is_said_so(tmp_path, capsys, folders):
    spec = edited(init(folders["llama"], tmp_path, capsys), ("  norm_eps: 1.0e-05\n", ""))
    code, _, err = run(["validate", spec, "--input", folders["llama"]], capsys)
    (error,) = errors_of(err)
    assert code == 1 and int(error["line"]) == line_of(spec, "model:") and error["col"] == "1"
    assert error["msg"] == ("model.norm_eps: the spec says 1e-06 (not written: the default), "
                            "but config.json describes 1e-05")


def test_tensor_shapes_are_checked_where_config_json_does_not_explain_them(folders, tmp_path, capsys):
    folder = tmp_path / "liar"
    shutil.copytree(folders["llama"], folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(intermediate_size=48, num_hidden_layers=3)  # the weights say 64 and 2
    (folder / "config.json").write_text(json.dumps(config))
    spec = init(folder, tmp_path, capsys)
    code, _, err = run(["validate", spec, "--input", folder], capsys)
    assert code == 1 and [(int(e["line"]), e["msg"]) for e in errors_of(err)] == [
        (6, "model.dims.mlp: tensor 'model.layers.0.mlp.gate_proj.weight' (and 5 more like it) has shape [64, 32] "
            "in the checkpoint, the spec's model expects [48, 32]"),
        (7, "model.dims.layers: tensor 'model.layers.2.input_layernorm.weight' (and 8 more like it) of the spec's "
            "model is missing from the checkpoint"),
    ]
    # the spec's mlp against a config and weights that agree: the config's line alone
    spec = edited(init(folders["llama"], tmp_path, capsys, name="other.yaml"), ("mlp: 64,", "mlp: 96,"))
    errors = cross_check_all(load_spec(spec), folders["llama"], header_shapes(folders["llama"]))
    assert [e.message for e in errors] == ["model.dims.mlp: the spec says 96, but config.json describes 64"]


def test_missing_and_unexpected_tensors_name_the_field_that_decides_them(folders, tmp_path, capsys):
    spec = edited(init(folders["llama-biases-tied"], tmp_path, capsys), ("bias: true", "bias: [q]"))
    shapes = header_shapes(folders["llama-biases-tied"])
    found = {field: message for field, message, _ in tensor_mismatches(load_spec(spec).model, shapes)}
    assert found == {"model.bias": "the checkpoint holds tensor 'model.layers.0.mlp.down_proj.bias' (and 11 more "
                                   "like it), which the spec's model does not have"}
    untied = edited(spec, ("tie_embeddings: true", "tie_embeddings: false"), ("bias: [q]", "bias: true"))
    found = {field: message for field, message, _ in tensor_mismatches(load_spec(untied).model, shapes)}
    assert found == {"model.tie_embeddings": "tensor 'lm_head.weight' of the spec's model is missing from the "
                                             "checkpoint"}


def test_check_input_reports_a_disagreeing_spec_invalid(folders, tmp_path, capsys):
    good = init(folders["gpt2"], tmp_path, capsys)
    bad = edited(init(folders["gpt2"], tmp_path, capsys, name="bad.yaml"),
                 ("heads: 4, kv_heads: 4, key: 8, value: 8", "heads: 2, kv_heads: 2, key: 16, value: 16"),
                 ("activation: gelu_tanh", "activation: gelu"))
    code, out, _ = run(["check", good, bad, "--input", folders["gpt2"], "--format", "json"], capsys)
    data = json.loads(out)
    assert code == 1 and data[0]["spec"] == str(good) and data[0]["verdict"] == "PROVED"
    assert [(e["spec"], e["error"].split(":")[0]) for e in data[1:]] == [
        (str(bad), f"model.dims.{dim}") for dim in ("heads", "kv_heads", "key", "value")] + [
        (str(bad), "model.activation")]
    code, out, _ = run(["check", bad, "--input", folders["gpt2"]], capsys)
    assert code == 1 and out.splitlines()[-1] == "1 spec: 0 PROVED, 0 REFUTED, 0 UNKNOWN, 1 invalid"
    code, out, _ = run(["check", bad, "--input", folders["gpt2"], "--format", "sarif"], capsys)
    assert len(json.loads(out)["runs"][0]["results"]) == 5


def test_a_folder_without_safetensors_is_checked_by_its_config_and_says_so(folders, tmp_path, capsys):
    folder = tmp_path / "config-only"
    folder.mkdir()
    shutil.copy(folders["mistral"] / "config.json", folder)
    spec = init(folder, tmp_path, capsys)
    code, out, err = run(["validate", spec, "--input", folder], capsys)
    assert code == 0 and out == f"{spec}: valid (1 step(s)); matches {folder} (config.json)\n"
    assert err == (f"{folder}: note: tensor shapes not checked (config.json only): the folder holds no "
                   "model.safetensors or model.safetensors.index.json\n")
    code, _, err = run(["validate", spec, "--input", tmp_path / "nowhere"], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "does not exist" in err


@pytest.mark.parametrize("kind", ["missing", "broken"])
def test_without_torch_the_config_alone_is_checked_with_one_note(folders, tmp_path, capsys, kind):
    spec = edited(init(folders["qwen2"], tmp_path, capsys), ("norm_eps: 1.0e-05", "norm_eps: 1.0e-06"))
    proc = run_light(_blocker(tmp_path / "blocker", kind), ["validate", str(spec), "--input", str(folders["qwen2"])])
    notes = [line for line in proc.stderr.splitlines() if ": note: " in line]
    assert len(notes) == 1 and notes[0].startswith(f"{folders['qwen2']}: note: tensor shapes not checked "
                                                   "(config.json only): reading safetensors headers needs PyTorch")
    assert notes[0].endswith('pip install "specgrow[torch]"')
    assert proc.returncode == 1 and f"{spec}:{line_of(spec, 'norm_eps')}:13: error: model.norm_eps: the spec " \
                                    "says 1e-06, but config.json describes 1e-05" in proc.stderr


def test_init_needs_no_torch(folders, tmp_path, capsys):
    record = tmp_path / "modules"
    proc = run_light(_blocker(tmp_path / "blocker", "missing"), ["init", str(folders["mistral"])], record)
    assert proc.returncode == 0 and proc.stdout == run(["init", folders["mistral"]], capsys)[1]
    assert heavy_imports(record) == []


# ---------------------------------------------------------------- shape errors point at the step
@pytest.mark.parametrize("name,steps,path,at", [
    ("llama", "[{mlp: {to: 128}}, {heads: {add: 2}}, {layers: {add: 1}}]", "steps[1].heads", "steps: ["),
    ("gpt2", "[{mlp: {to: 128}}, {key: {to: 16}}]", "steps[1].key", "steps: ["),
    ("qwen2", "\n  - key: {to: 16}\n  - value: {to: 24}\n  - mlp: {to: 96}", "steps[1].value", "- value:"),
])
def test_a_shape_hf_configs_cannot_express_points_at_its_step(folders, tmp_path, capsys, name, steps, path, at):
    """Not at model.arch: at the last step that changed a width involved (hidden and heads; key and value)."""
    spec = init(folders[name], tmp_path, capsys, steps)
    code, _, err = run(["validate", spec], capsys)
    (error,) = errors_of(err)
    assert code == 1 and error["msg"].startswith(f"{path}: ") and int(error["line"]) == line_of(spec, at)


# ---------------------------------------------------------------- messages
def test_an_unknown_key_is_reported_before_the_missing_one_it_misspells():
    text = "specgrow: 1\nmodel:\n  dims: {hidden: 8, mlp: 16, heads: 2, layers: 1, vocab: 10, positions: 4}\n" \
           "steps:\n  - mlp: {too: 256}\n"
    with pytest.raises(SpecError) as caught:
        load_spec_text(text, "spec.yaml")
    assert caught.value.render() == ("spec.yaml:5:11: error: steps[0].mlp: unknown key 'too' "
                                     "(expected one of: experts, init, layers, method, noise, to)")


def test_prove_json_names_the_spec_spec(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("specgrow: 1\nmodel:\n  dims: {hidden: 8, mlp: 16, heads: 2, layers: 1, vocab: 10, positions: 4}\n"
                    "steps: [{mlp: {to: 32}}]\n")
    code, out, _ = run(["prove", spec, "--json"], capsys)
    data = json.loads(out)
    assert code == 0 and data["spec"] == str(spec) and "spec_path" not in data


def test_grow_module_warnings_speak_to_a_python_caller():
    spec = make_spec([{"mlp": {"to": 48, "init": {"w_out": {"normal": 0.5}}}}])
    model = ReferenceModel(ModelShape.from_spec(spec.model))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        specgrow.grow_module(model, spec, allow_unproved=True)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and all(m.endswith("growing it anyway (allow_unproved=True)") for m in messages)
    assert not any("--allow-unproved" in m for m in messages)
