"""The certificates in proofs/ match what the prover says now (CI fails when one is stale)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from specgrow.verify import regen
from specgrow.verify.result import Verdict
from tests.test_report import fake_prover

ROOT = Path(__file__).resolve().parents[1]


def test_certificates_in_proofs_are_fresh():
    proc = subprocess.run([sys.executable, "-m", "specgrow.verify.regen", "--check"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = {p.stem for p in (ROOT / "proofs").glob("*.md")}
    assert {"mlp", "heads", "value", "key", "hidden", "layers", "mlp-duplicate", "heads-duplicate",
            "hidden-duplicate", "hidden-duplicate-layernorm", "six"} <= names


def _tree(tmp_path):
    (tmp_path / "proofs" / "specs").mkdir(parents=True)
    (tmp_path / "examples").mkdir()
    shutil.copy(ROOT / "proofs" / "specs" / "mlp.yaml", tmp_path / "proofs" / "specs")
    shutil.copy(ROOT / "examples" / "six.yaml", tmp_path / "examples")
    return tmp_path


def test_check_names_missing_stale_and_orphaned_certificates(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("specgrow.verify.prover.prove_spec", fake_prover())
    root = _tree(tmp_path)
    assert regen.main(["--root", str(root), "--check"]) == 1
    assert "proofs/mlp.md: missing (spec proofs/specs/mlp.yaml)" in capsys.readouterr().err
    assert regen.main(["--root", str(root)]) == 0
    assert sorted(p.name for p in (root / "proofs").glob("*.md")) == ["mlp.md", "six.md"]
    assert "# Proof certificate: examples/six.yaml" in (root / "proofs" / "six.md").read_text()
    assert regen.main(["--root", str(root), "--check"]) == 0

    spec = root / "proofs" / "specs" / "mlp.yaml"
    spec.write_text(spec.read_text() + "# edited\n")  # a new sha256
    (root / "proofs" / "old.md").write_text("# Proof certificate: gone.yaml\n")
    capsys.readouterr()
    assert regen.main(["--root", str(root), "--check"]) == 1
    err = capsys.readouterr().err
    assert "proofs/mlp.md: stale (spec proofs/specs/mlp.yaml)" in err
    assert "proofs/old.md: no spec" in err and "six.md" not in err
    assert regen.main(["--root", str(root)]) == 0
    assert not (root / "proofs" / "old.md").exists()
    assert regen.main(["--root", str(root), "--check"]) == 0


def test_versions_line_alone_is_not_stale(tmp_path, monkeypatch):
    monkeypatch.setattr("specgrow.verify.prover.prove_spec", fake_prover())
    root = _tree(tmp_path)
    assert regen.main(["--root", str(root)]) == 0
    cert = root / "proofs" / "mlp.md"
    text = cert.read_text().replace("Versions: ", "Versions: torch 0.0, ")
    cert.write_text(text)
    assert regen.main(["--root", str(root), "--check"]) == 0
    assert regen.main(["--root", str(root)]) == 0 and cert.read_text() == text  # not rewritten
    monkeypatch.setattr("specgrow.verify.prover.prove_spec", fake_prover({0: Verdict.UNKNOWN}))
    assert regen.main(["--root", str(root), "--check"]) == 1


def test_outside_a_checkout_is_a_usage_error(tmp_path, capsys):
    assert regen.main(["--root", str(tmp_path), "--check"]) == 2
    assert "run from the repository root" in capsys.readouterr().err
