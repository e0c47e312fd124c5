"""examples/moe_upcycle_training.py: a dense model upcycled into experts mid-training keeps its loss."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "moe_upcycle_training.py"
# The loss of one batch just before and just after a growth: equal up to fp32 rounding (the grown
# logits agree to ~1e-6); the example's own LOSS_ATOL.
LOSS_ATOL = 1e-4


def test_quick_run_upcycles_without_changing_the_loss(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    with open(out / "losses.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    train = [r for r in rows if r["kind"] == "train"]
    assert [int(r["step"]) for r in train] == list(range(30))
    before = [r for r in rows if r["kind"] == "growth_before"]
    after = [r for r in rows if r["kind"] == "growth_after"]
    assert [int(r["step"]) for r in before] == [int(r["step"]) for r in after] == [12, 21]
    assert [int(r["experts"]) for r in after] == [4, 8]
    for b, a in zip(before, after):
        assert abs(float(a["loss"]) - float(b["loss"])) <= LOSS_ATOL
    experts = [int(r["experts"]) for r in train]
    assert experts[11] == 0 and experts[12] == 4 and experts[21] == 8
    params = [int(r["params"]) for r in train]
    assert params[12] > params[11] and params[21] > params[20]
    svg = (out / "loss_vs_step.svg").read_text(encoding="utf-8")
    assert svg.startswith("<svg") and svg.count("stroke-dasharray") == 2  # the two growths marked
    assert "tolerance 0.0001" in proc.stdout
