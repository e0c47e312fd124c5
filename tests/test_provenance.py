"""Provenance: the spec, the sha256 of every input and output file, the command line and the
lineage travel with an output, and ``specgrow audit`` checks them.

The HuggingFace folders are tiny random models built by `transformers` (`tests.test_hf.save_tiny`),
grown twice (``init`` -> ``validate --input`` -> ``apply``, then again on the output); each
folder is built once per module and never modified (a test that tampers copies it first).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch.distributed.checkpoint as dcp

import specgrow
from specgrow.cli import main
from specgrow.models.reference import random_state
from specgrow.pipeline import record
from specgrow.pipeline.apply import ApplyOptions, apply_plan
from specgrow.pipeline.dcp import grow_dcp
from specgrow.spec import load_spec
from specgrow.transforms import compile_spec
from tests.test_hf import save_tiny
from tests.test_light_install import _blocker, heavy_imports, run_light

ROOT = Path(__file__).resolve().parents[1]
SIX = str(ROOT / "examples" / "six.yaml")
# six.yaml's grown model, grown again by STEPS
GROWN_SIX = """specgrow: 1
model:
  dims: {{hidden: 96, mlp: {mlp}, heads: 6, kv_heads: 6, key: 24, value: 24, layers: 3, vocab: 256, positions: 64}}
  norm_eps: 6.666666666666666e-07
  activation: gelu
  position: learned
seed: 1
steps: [{step}]
"""
RECORD = ("specgrow-manifest.json", "proof.md", "spec.yaml")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / "specgrow-manifest.json").read_text())


def audit(folder: Path, capsys) -> tuple[int, list[str]]:
    """``specgrow audit folder``: its exit code and the lines it printed (stdout, then stderr)."""
    capsys.readouterr()  # what ran before
    code = main(["audit", str(folder)])
    out, err = capsys.readouterr()
    return code, (out + err).splitlines()


def passes(folder: Path, capsys) -> str:
    """The one summary line of an audit that passes."""
    code, lines = audit(folder, capsys)
    assert code == 0 and len(lines) == 1 and lines[0].startswith(f"{folder}: OK: "), lines
    return lines[0]


def copy(folder: Path, target: Path) -> Path:
    shutil.copytree(folder, target, symlinks=True)
    return target


def grown_six(tmp_path: Path, mlp: int, step: str, name: str) -> str:
    path = tmp_path / name
    path.write_text(GROWN_SIX.format(mlp=mlp, step=step))
    return str(path)


def init_spec(folder: Path, path: Path, steps: str) -> str:
    """``specgrow init`` of ``folder`` into ``path``, its ``steps: []`` filled in, then ``validate --input``."""
    assert main(["init", str(folder), "-o", str(path)]) == 0
    path.write_text(path.read_text().replace("\nsteps: []\n", f"\nsteps: {steps}\n"))
    assert main(["validate", str(path), "--input", str(folder)]) == 0
    return str(path)


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """A tiny LLaMA folder (a side file, one in a subfolder, a link out of it), grown once (g1)
    and its output grown again (g2); every step from ``init``, checked by ``validate --input``."""
    root = tmp_path_factory.mktemp("provenance")
    save_tiny("llama", root / "hf", num_key_value_heads=2)
    (root / "hf" / "notes").mkdir()
    (root / "hf" / "notes" / "readme.txt").write_text("a subfolder's file is hashed, not copied\n")
    (root / "secret.txt").write_text("private\n")
    (root / "hf" / "secret.txt").symlink_to(root / "secret.txt")
    first = init_spec(root / "hf", root / "grow1.yaml", "[{mlp: {to: 128}}]")
    args1 = ["apply", first, "--input", str(root / "hf"), "--output", str(root / "g1"), "-q"]
    assert main(args1) == 0
    second = init_spec(root / "g1", root / "grow2.yaml", "[{layers: {add: 1}}]")
    assert main(["apply", second, "--input", str(root / "g1"), "--output", str(root / "g2"), "-q"]) == 0
    return {"root": root, "g1": root / "g1", "g2": root / "g2", "spec1": first, "spec2": second, "args1": args1}


def test_reference_model_apply_then_audit(tmp_path, capsys):
    out = tmp_path / "grown"
    assert main(["apply", SIX, "--output", str(out), "-q"]) == 0
    line = passes(out, capsys)
    assert "4 files agree" in line and "spec.yaml re-proves PROVED" in line and "0 earlier growth(s)" in line
    assert (out / "spec.yaml").read_bytes() == Path(SIX).read_bytes()
    manifest = manifest_of(out)
    assert manifest["spec"] == {"path": SIX, "sha256": sha256(out / "spec.yaml"), "copy": "spec.yaml"}
    assert manifest["input"] == {"reference_model_seed": 0} and "parent" not in manifest
    assert manifest["output"]["files"] == {name: sha256(out / name)
                                           for name in ("config.json", "model.safetensors", "proof.md", "spec.yaml")}


def test_hf_folder_init_validate_apply_audit(hf, capsys):
    g1, hf_in = hf["g1"], hf["root"] / "hf"
    passes(g1, capsys)
    manifest = manifest_of(g1)
    inputs = {p.relative_to(hf_in).as_posix() for p in hf_in.rglob("*") if p.is_file() and p.name != "secret.txt"}
    assert set(manifest["input"]["files"]) == inputs and "notes/readme.txt" in inputs
    assert manifest["input"]["files"]["notes/readme.txt"] == sha256(hf_in / "notes" / "readme.txt")
    assert manifest["input"]["skipped"] == ["secret.txt"]  # a link out of the folder: not read
    assert sorted(manifest["output"]["copied"]) == ["generation_config.json", "tokenizer_config.json"]
    listed = {p.relative_to(g1).as_posix() for p in g1.rglob("*") if p.is_file()} - {"specgrow-manifest.json"}
    assert set(manifest["output"]["files"]) == listed
    assert all(digest == sha256(g1 / rel) for rel, digest in manifest["output"]["files"].items())
    assert (g1 / "spec.yaml").read_bytes() == Path(hf["spec1"]).read_bytes()


def expected_commit() -> str | None:
    """HEAD of this checkout, resolved from its .git folder (None outside a plain checkout)."""
    git = ROOT / ".git"
    if not git.is_dir() or Path(specgrow.__file__).resolve().parents[1] != ROOT:
        return None
    head = (git / "HEAD").read_text().strip()
    if not head.startswith("ref: "):
        return head
    ref = head[len("ref: "):]
    if (git / ref).is_file():
        return (git / ref).read_text().strip()
    packed = (git / "packed-refs").read_text().splitlines() if (git / "packed-refs").is_file() else []
    return next((line.split()[0] for line in packed if line.endswith(" " + ref)), None)


def test_manifest_records_the_command_line_version_and_commit(hf):
    manifest = manifest_of(hf["g1"])
    assert manifest["manifest_format"] == 2
    assert manifest["invocation"]["argv"] == ["specgrow", *hf["args1"]]
    options = manifest["invocation"]["options"]
    assert options["command"] == "apply" and options["spec"] == hf["spec1"] and options["quiet"] is True
    assert options["input"] == str(hf["root"] / "hf") and options["output"] == str(hf["g1"])
    assert manifest["specgrow"]["version"] == specgrow.__version__
    assert set(manifest["versions"]) == {"python", "torch", "sympy", "safetensors"}
    commit = expected_commit()
    if commit is None:
        pytest.skip("not run from a git checkout of specgrow")
    assert re.fullmatch(r"[0-9a-f]{40}", manifest["specgrow"]["commit"])
    assert manifest["specgrow"]["commit"] == commit


def test_python_api_records_the_call(tmp_path):
    spec = load_spec(SIX)
    options = ApplyOptions(output=str(tmp_path / "out"), quiet=True)
    manifest = apply_plan(spec, compile_spec(spec), options, log=lambda *_: None)
    assert manifest["invocation"] == {"function": "specgrow.pipeline.apply.apply_plan",
                                      "arguments": {"spec": SIX, "options": vars(options)}}


def test_a_flipped_byte_in_any_file_is_named(hf, tmp_path, capsys):
    g2 = hf["g2"]
    files = sorted(p.relative_to(g2).as_posix() for p in g2.rglob("*") if p.is_file())
    assert {"config.json", "model.safetensors", "spec.yaml", "proof.md", "tokenizer_config.json",
            "history/1/specgrow-manifest.json", "history/1/proof.md", "history/1/spec.yaml"} <= set(files)
    for number, rel in enumerate(f for f in files if f != "specgrow-manifest.json"):
        folder = copy(g2, tmp_path / f"flip{number}")
        data = bytearray((folder / rel).read_bytes())
        data[len(data) // 2] ^= 1
        (folder / rel).write_bytes(bytes(data))
        code, lines = audit(folder, capsys)
        assert code == 1, (rel, lines)
        assert any(line.startswith(f"{folder / rel}: ") for line in lines), (rel, lines)
        assert lines[-1] == f"{folder}: {len(lines) - 1} difference(s) from the record", lines


def test_a_damaged_manifest_is_named(hf, tmp_path, capsys):
    folder = copy(hf["g1"], tmp_path / "g")
    manifest = folder / "specgrow-manifest.json"
    manifest.write_text(manifest.read_text()[:-10])
    code, lines = audit(folder, capsys)
    assert code == 1 and lines[0].startswith(f"{manifest}: not JSON (") and len(lines) == 2, lines


def test_extra_and_missing_files_are_reported(hf, tmp_path, capsys):
    folder = copy(hf["g1"], tmp_path / "g")
    (folder / "extra.txt").write_text("added later\n")
    (folder / "sub").mkdir()
    (folder / "sub" / "more.bin").write_bytes(b"\0")
    (folder / "config.json").unlink()
    code, lines = audit(folder, capsys)
    assert code == 1
    assert f"{folder / 'extra.txt'}: not listed in the manifest" in lines
    assert f"{folder / 'sub' / 'more.bin'}: not listed in the manifest" in lines
    assert f"{folder / 'config.json'}: listed in the manifest, but missing" in lines
    assert lines[-1] == f"{folder}: 3 difference(s) from the record"


def test_a_chain_keeps_its_lineage_and_audits_through_it(hf, capsys):
    g1, g2 = hf["g1"], hf["g2"]
    assert "1 earlier growth(s) in history/ agree" in passes(g2, capsys)
    for name in RECORD:  # the parent's record, byte for byte, under history/1
        assert (g2 / "history" / "1" / name).read_bytes() == (g1 / name).read_bytes()
    manifest = manifest_of(g2)
    assert manifest["parent"] == {"manifest_sha256": sha256(g1 / "specgrow-manifest.json"), "path": str(g1),
                                  "record": "history/1"}
    assert not set(RECORD) & set(manifest["output"]["copied"])  # the parent's record is history, not a side file
    assert (g2 / "proof.md").read_text().startswith(f"# Proof certificate: {hf['spec2']}")
    assert (g2 / "spec.yaml").read_bytes() == Path(hf["spec2"]).read_bytes()


def test_a_tampered_history_manifest_is_caught_even_with_the_list_updated(hf, tmp_path, capsys):
    folder = copy(hf["g2"], tmp_path / "g")
    entry = folder / "history" / "1" / "specgrow-manifest.json"
    entry.write_text(entry.read_text().replace('"device": "cpu"', '"device": "cuda"'))
    manifest = manifest_of(folder)
    manifest["output"]["files"]["history/1/specgrow-manifest.json"] = sha256(entry)
    (folder / "specgrow-manifest.json").write_text(json.dumps(manifest))
    code, lines = audit(folder, capsys)
    assert code == 1
    assert lines[0] == f"{entry}: sha256 differs from the parent's in {folder / 'specgrow-manifest.json'}", lines


def test_a_certificate_or_verdict_that_the_spec_does_not_prove_is_caught(hf, tmp_path, capsys):
    folder = copy(hf["g1"], tmp_path / "g")
    proof = folder / "proof.md"
    proof.write_text(proof.read_text().replace("PROVED", "PROVED (checked by hand)", 1))
    manifest = manifest_of(folder)
    manifest["output"]["files"]["proof.md"] = sha256(proof)
    manifest["proof"]["verdict"] = "UNKNOWN"
    (folder / "specgrow-manifest.json").write_text(json.dumps(manifest))
    code, lines = audit(folder, capsys)
    assert code == 1
    assert f"{folder / 'specgrow-manifest.json'}: records the verdict UNKNOWN, but spec.yaml re-proves PROVED" in lines
    assert f"{proof}: differs from the certificate spec.yaml re-proves to" in lines


def test_three_growths_leave_two_history_entries_oldest_first(tmp_path, capsys):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert main(["apply", SIX, "--output", str(a), "-q"]) == 0
    assert main(["apply", grown_six(tmp_path, 512, "{mlp: {to: 1024}}", "s2.yaml"), "--input", str(a),
                 "--output", str(b), "-q"]) == 0
    assert main(["apply", grown_six(tmp_path, 1024, "{layers: {add: 1}}", "s3.yaml"), "--input", str(b),
                 "--output", str(c), "-q"]) == 0
    assert "2 earlier growth(s) in history/ agree" in passes(c, capsys)
    assert sorted(p.name for p in (c / "history").iterdir()) == ["1", "2"]
    assert (c / "history" / "1" / "specgrow-manifest.json").read_bytes() == (a / "specgrow-manifest.json").read_bytes()
    assert manifest_of(c / "history" / "2")["parent"]["manifest_sha256"] == sha256(a / "specgrow-manifest.json")
    shutil.rmtree(c / "history" / "1")
    code, lines = audit(c, capsys)
    assert code == 1 and f"{c / 'history'}: entries numbered 2; expected 1" in lines, lines
    shutil.rmtree(c / "history")
    code, lines = audit(c, capsys)
    assert code == 1 and f"{c / 'specgrow-manifest.json'}: records a parent whose record history/ does not hold" \
        in lines, lines


def test_the_input_is_rechecked_while_it_is_there_as_notes(hf, tmp_path, capsys):
    hf_in = copy(hf["root"] / "hf", tmp_path / "hf")
    out = tmp_path / "out"
    assert main(["apply", hf["spec1"], "--input", str(hf_in), "--output", str(out), "-q"]) == 0
    assert "the input's" in passes(out, capsys)
    (hf_in / "tokenizer_config.json").write_text("{}\n")
    code, lines = audit(out, capsys)
    assert code == 0 and f"{out}: note: input '{hf_in / 'tokenizer_config.json'}': changed since the growth" in lines
    shutil.rmtree(hf_in)
    code, lines = audit(out, capsys)
    assert code == 0 and f"{out}: note: the input '{hf_in}' is not there: its files are not re-checked" in lines


def test_dcp_outputs_have_the_same_record_and_lineage(tmp_path, capsys):
    spec = load_spec(SIX)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(random_state(compile_spec(spec).before, spec.seed), checkpoint_id=str(tmp_path / "in"), no_dist=True)
    first, second = tmp_path / "dcp1", tmp_path / "dcp2"
    assert main(["apply", SIX, "--input", str(tmp_path / "in"), "--output", str(first), "-q"]) == 0
    passes(first, capsys)
    manifest = manifest_of(first)
    assert manifest["invocation"]["argv"][:2] == ["specgrow", "apply"] and manifest["output"]["format"] == "dcp"
    assert {".metadata", "spec.yaml", "proof.md"} <= set(manifest["output"]["files"])
    assert any(name.endswith(".distcp") for name in manifest["output"]["files"])
    assert ".metadata" in manifest["input"]["files"]
    grown = grown_six(tmp_path, 512, "{mlp: {to: 1024}}", "s2.yaml")
    manifest = grow_dcp(grown, first, second, log=None)
    assert manifest["invocation"]["function"] == "specgrow.pipeline.dcp.grow_dcp"
    assert manifest["invocation"]["arguments"]["input"] == str(first)
    assert manifest["parent"]["manifest_sha256"] == sha256(first / "specgrow-manifest.json")
    assert "1 earlier growth(s)" in passes(second, capsys)


def test_audit_runs_without_torch(hf, tmp_path):
    modules = tmp_path / "modules"
    proc = run_light(_blocker(tmp_path / "blocker", "missing"), ["audit", str(hf["g2"])], modules)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"{hf['g2']}: OK: ") and proc.stderr == ""
    assert not [name for name in heavy_imports(modules) if name.split(".")[0] in ("torch", "safetensors")]


def test_audit_of_what_is_not_an_output_is_exit_2(hf, tmp_path, capsys):
    code, lines = audit(tmp_path / "missing", capsys)
    assert code == 2 and lines == [f"{tmp_path / 'missing'}:1:1: error: '{tmp_path / 'missing'}' is not a folder"]
    code, lines = audit(tmp_path, capsys)
    assert code == 2 and lines == [f"{tmp_path}:1:1: error: not a specgrow output: no specgrow-manifest.json"]
    folder = copy(hf["g1"], tmp_path / "old")
    manifest = manifest_of(folder)
    del manifest["manifest_format"]
    (folder / "specgrow-manifest.json").write_text(json.dumps(manifest))
    code, lines = audit(folder, capsys)
    assert code == 2 and len(lines) == 1 and "format 1, written by a specgrow before audit" in lines[0], lines


def fake_checkout(tmp_path: Path, monkeypatch) -> Path:
    """A folder laid out like a checkout of specgrow, which `record.checkout_commit` reads."""
    (tmp_path / "specgrow").mkdir(parents=True)
    monkeypatch.setattr(specgrow, "__file__", str(tmp_path / "specgrow" / "__init__.py"))
    return tmp_path


def test_checkout_commit_reads_loose_packed_detached_and_worktree_heads(tmp_path, monkeypatch):
    repo = fake_checkout(tmp_path / "repo", monkeypatch)
    assert record.checkout_commit() is None  # not a checkout
    git, one, two = repo / ".git", "1" * 40, "2" * 40
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "packed-refs").write_text(f"# pack-refs with: peeled\n{two} refs/heads/main\n")
    assert record.checkout_commit() == two
    (git / "refs" / "heads" / "main").write_text(one + "\n")
    assert record.checkout_commit() == one
    (git / "HEAD").write_text(two + "\n")
    assert record.checkout_commit() == two
    worktree = fake_checkout(tmp_path / "worktree", monkeypatch)
    (git / "worktrees" / "w").mkdir(parents=True)
    (git / "worktrees" / "w" / "HEAD").write_text("ref: refs/heads/main\n")
    (git / "worktrees" / "w" / "commondir").write_text("../..\n")
    (worktree / ".git").write_text(f"gitdir: {git / 'worktrees' / 'w'}\n")
    assert record.checkout_commit() == one
    (git / "refs" / "heads" / "main").write_text("not a commit\n")
    assert record.checkout_commit() is None
