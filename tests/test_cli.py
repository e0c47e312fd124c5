"""The command line: exit codes, one-line errors, atomic output, determinism, inputs."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from specgrow.cli import main
from specgrow.models.reference import random_state
from specgrow.shape import ModelShape
from specgrow.spec import load_spec
from tests.helpers import spec_text
from tests.malformed_cases import CASES

ROOT = Path(__file__).resolve().parents[1]
SIX = str(ROOT / "examples" / "six.yaml")
ERROR_LINE = re.compile(r"^[^\n]+:\d+:\d+: error: [^\n]+\n$")


def run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def write_spec(tmp_path, steps, name="spec.yaml", **model):
    path = tmp_path / name
    path.write_text(spec_text(steps, **model))
    return str(path)


def test_apply_six_writes_checked_output(tmp_path, capsys):
    out = tmp_path / "grown"
    code, stdout, err = run(["apply", SIX, "--output", str(out)], capsys)
    assert code == 0, err
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "proof.md", "spec.yaml",
                                     "specgrow-manifest.json"]
    manifest = json.loads((out / "specgrow-manifest.json").read_text())
    assert manifest["proof"]["verdict"] == "PROVED"
    assert manifest["numeric_check"]["passed"] is True
    assert manifest["numeric_check"]["max_abs_diff"] <= 1e-4
    assert manifest["spec"]["sha256"] == load_spec(SIX).sha256
    config = json.loads((out / "config.json").read_text())
    assert config["hidden"] == 96 and len(config["layers"]) == 3
    assert config["layers"][0] == {"mlp": 512, "heads": 6, "kv_heads": 6, "key": 24, "value": 24}
    tensors = load_file(str(out / "model.safetensors"))
    assert tensors["layers.0.attn.q.weight"].shape == (6 * 24, 96)
    assert [p.name for p in tmp_path.iterdir()] == ["grown"]  # no temporary left behind


def test_apply_is_bit_identical_run_to_run(tmp_path, capsys):
    for name in ("a", "b"):
        assert run(["apply", SIX, "-o", str(tmp_path / name), "-q"], capsys)[0] == 0
    a, b = (load_file(str(tmp_path / n / "model.safetensors")) for n in ("a", "b"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_existing_output_is_refused_then_overwritten(tmp_path, capsys):
    out = tmp_path / "grown"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, _, err = run(["apply", SIX, "-o", str(out)], capsys)
    assert code == 2 and ERROR_LINE.match(err) and "--overwrite" in err
    assert os.listdir(out) == ["keep.txt"]
    assert run(["apply", SIX, "-o", str(out), "--overwrite", "-q"], capsys)[0] == 0
    assert "keep.txt" not in os.listdir(out)


def test_refuted_spec_is_refused_located_and_writes_nothing(tmp_path, capsys):
    spec = write_spec(tmp_path, [{"mlp": {"to": 48}}, {"mlp": {"to": 64, "init": {"w_out": {"normal": 1.0}}}}])
    out = tmp_path / "grown"
    code, _, err = run(["apply", spec, "-o", str(out)], capsys)
    assert code == 1 and ERROR_LINE.match(err), err
    assert re.search(r"spec\.yaml:\d+:\d+: error: steps\[1\] \(mlp\) REFUTED", err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]


def test_failed_numeric_check_is_located_and_writes_nothing(tmp_path, capsys, monkeypatch):
    """Even if a (wrongly) PROVED spec reached it, the numeric check stops a changed model."""
    from tests.test_report import fake_prover

    monkeypatch.setattr("specgrow.verify.prover.prove_spec", fake_prover())
    spec = write_spec(tmp_path, [{"mlp": {"to": 48}}, {"mlp": {"to": 64, "init": {"w_out": {"normal": 1.0}}}}])
    out = tmp_path / "grown"
    code, _, err = run(["apply", spec, "-o", str(out)], capsys)
    assert code == 1
    assert ERROR_LINE.match(err), err
    assert re.search(r"spec\.yaml:\d+:\d+: error: steps\[1\] \(mlp\) changes the function", err)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["spec.yaml"]
    code, stdout, _ = run(["apply", spec, "-o", str(out), "--allow-unproved"], capsys)
    assert code == 0 and "warning: steps[1] (mlp) changes the function" in stdout, stdout
    manifest = json.loads((out / "specgrow-manifest.json").read_text())
    assert manifest["numeric_check"]["passed"] is False


@pytest.mark.parametrize("case_id,content,pattern,line", CASES, ids=[c[0] for c in CASES])
def test_malformed_spec_one_located_line_nothing_written(tmp_path, capsys, case_id, content, pattern, line):
    spec = tmp_path / "bad.yaml"
    spec.write_bytes(content)
    out = tmp_path / "grown"
    for args in (["validate", str(spec)], ["plan", str(spec)], ["apply", str(spec), "-o", str(out)]):
        code, _, err = run(args, capsys)
        assert code in (1, 2)
        assert ERROR_LINE.match(err), err
        assert err.startswith(f"{spec}:{line}:"), err
        assert re.search(pattern, err.split(": error: ", 1)[1]), err
        assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_missing_spec_file_is_exit_2(tmp_path, capsys):
    code, _, err = run(["apply", str(tmp_path / "nope.yaml"), "-o", str(tmp_path / "g")], capsys)
    assert code == 2 and ERROR_LINE.match(err) and "cannot read spec" in err
    assert not (tmp_path / "g").exists()


def test_usage_error_is_exit_2():
    proc = subprocess.run([sys.executable, "-m", "specgrow.cli", "apply", SIX], capture_output=True, text=True)
    assert proc.returncode == 2 and "--output" in proc.stderr and "Traceback" not in proc.stderr


def test_validate_and_plan_do_not_import_torch():
    code = (
        "import sys\n"
        "from specgrow.cli import main\n"
        f"assert main(['validate', {SIX!r}]) == 0\n"
        "assert 'sympy' not in sys.modules, 'validate imported sympy'\n"
        f"assert main(['plan', {SIX!r}]) == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "layers.0.mlp.up.weight" in proc.stdout and "(256, 64) -> (512, 64)" in proc.stdout


def test_check_freezes_the_prover_import_and_keeps_collecting():
    """The prover's import (SymPy's objects) is frozen out of the collector's scans; the
    collector itself is on again afterwards, with its thresholds untouched."""
    code = (
        "import gc, sys\n"
        "from specgrow.cli import main\n"
        "thresholds = gc.get_threshold()\n"
        f"assert main(['check', {SIX!r}]) == 0\n"
        "assert 'sympy' in sys.modules and gc.get_freeze_count() > 50_000, gc.get_freeze_count()\n"
        "assert gc.isenabled() and gc.get_threshold() == thresholds\n"
        "gc.disable()\n"
        f"assert main(['check', {SIX!r}]) == 0\n"
        "assert not gc.isenabled(), 'a caller that turned the collector off keeps it off'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def _reference_checkpoint(tmp_path, spec_path, suffix):
    spec = load_spec(spec_path)
    state = random_state(ModelShape.from_spec(spec.model), seed=7)
    path = tmp_path / f"in{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, str(path))
    return path, state


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_apply_input_checkpoint_is_grown_and_left_untouched(tmp_path, capsys, suffix):
    spec = write_spec(tmp_path, [{"hidden": {"to": 24}}, {"layers": {"add": 1}}])
    path, state = _reference_checkpoint(tmp_path, spec, suffix)
    before = path.read_bytes()
    out = tmp_path / "grown"
    code, _, err = run(["apply", spec, "--input", str(path), "-o", str(out), "-q"], capsys)
    assert code == 0, err
    assert path.read_bytes() == before
    grown = load_file(str(out / "model.safetensors"))
    torch.testing.assert_close(grown["embed.weight"][:, :16], state["embed.weight"], atol=0, rtol=0)
    manifest = json.loads((out / "specgrow-manifest.json").read_text())
    assert manifest["input"]["files"][path.name] == hashlib.sha256(before).hexdigest()
    assert manifest["numeric_check"]["passed"]
    # the output directory is itself a valid input for a further spec
    spec2 = write_spec(tmp_path, [{"mlp": {"to": 40}}], name="spec2.yaml",
                       dims={"hidden": 24, "layers": 4})
    assert run(["apply", spec2, "--input", str(out), "-o", str(tmp_path / "g2"), "-q"], capsys)[0] == 0


def test_input_shape_mismatch_is_one_clear_error(tmp_path, capsys):
    spec = write_spec(tmp_path, [{"mlp": {"to": 48}}])
    other = write_spec(tmp_path, [{"mlp": {"to": 48}}], name="other.yaml", dims={"mlp": 24})
    path, _ = _reference_checkpoint(tmp_path, other, ".safetensors")
    code, _, err = run(["apply", spec, "--input", str(path), "-o", str(tmp_path / "g")], capsys)
    assert code == 1 and ERROR_LINE.match(err)
    assert "expects shape (32, 16), found (24, 16)" in err
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("payload,message", [
    (b"", "not a safetensors file: it holds 0 bytes"),
    (b"not a checkpoint at all", "corrupt safetensors header: its length"),
    (b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}", "corrupt safetensors header: its length 8 exceeds"),
])
def test_corrupt_input_is_one_clear_error(tmp_path, capsys, payload, message):
    spec = write_spec(tmp_path, [{"mlp": {"to": 48}}])
    path = tmp_path / "in.safetensors"
    path.write_bytes(payload)
    code, _, err = run(["apply", spec, "--input", str(path), "-o", str(tmp_path / "g")], capsys)
    assert code == 1 and ERROR_LINE.match(err) and message in err
    assert not (tmp_path / "g").exists()


def test_pickled_code_in_pt_input_is_refused(tmp_path, capsys):
    spec = write_spec(tmp_path, [{"mlp": {"to": 48}}])
    path = tmp_path / "evil.pt"
    torch.save({"x": torch.zeros(1), "f": os.getcwd}, str(path))
    code, _, err = run(["apply", spec, "--input", str(path), "-o", str(tmp_path / "g")], capsys)
    assert code == 1 and ERROR_LINE.match(err) and "cannot read checkpoint" in err


def test_dtype_option_converts_output(tmp_path, capsys):
    out = tmp_path / "g"
    assert run(["apply", SIX, "-o", str(out), "--dtype", "bfloat16", "-q"], capsys)[0] == 0
    tensors = load_file(str(out / "model.safetensors"))
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}


def test_plan_table_lists_blocks(capsys):
    code, out, _ = run(["plan", SIX], capsys)
    assert code == 0
    assert "norm_eps: 1e-06 -> 6.66667e-07" in out
    assert re.search(r"layers\.0\.attn\.k\.weight +\(96, 64\) -> \(144, 64\) .*\*1\.2247", out)
    assert "moved unchanged" not in out  # six.yaml inserts at the end: nothing moves


def test_prove_spec_pauses_the_collector_and_restores_it(monkeypatch):
    import gc

    import specgrow.verify.prover as prover

    seen = []
    real = prover.compile_spec

    def compile_spec(spec):
        seen.append(gc.isenabled())
        return real(spec)

    monkeypatch.setattr(prover, "compile_spec", compile_spec)
    assert gc.isenabled()
    assert prover.prove_spec(load_spec(SIX)).verdict.value == "PROVED"
    assert seen == [False] and gc.isenabled()
