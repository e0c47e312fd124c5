"""examples/grow_during_training.py: three runs at equal FLOPs; growth raises the cost per step, not the loss."""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "grow_during_training.py"
# The validation loss just before and just after a growth: the mean cross-entropy of the same held-out
# windows under the old and the grown model, equal up to fp32 rounding (grown logits agree to ~1e-5).
LOSS_ATOL = 1e-4


def _example():
    spec = importlib.util.spec_from_file_location("grow_during_training", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_grows_without_changing_the_loss(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    with open(tmp_path / "out" / "results.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == ["run", "step", "tokens", "flops", "val_loss", "params"]
        rows = [dict(r, step=int(r["step"]), flops=int(r["flops"]), val_loss=float(r["val_loss"]),
                     params=int(r["params"])) for r in reader]
    runs = {name: [r for r in rows if r["run"] == name] for name in ("small", "grown", "large")}
    assert all(runs.values()) and len(rows) == sum(map(len, runs.values()))

    grown = runs["grown"]
    growths = [i for i in range(1, len(grown)) if grown[i]["step"] == grown[i - 1]["step"]]
    assert len(growths) == 2  # the spec's two stages
    for i in growths:
        before, after = grown[i - 1], grown[i]
        assert after["params"] > before["params"]
        assert after["val_loss"] == pytest.approx(before["val_loss"], abs=LOSS_ATOL)
        earlier, later = grown[i - 2], grown[i + 1]
        per_step_before = (before["flops"] - earlier["flops"]) / (before["step"] - earlier["step"])
        per_step_after = (later["flops"] - after["flops"]) / (later["step"] - after["step"])
        assert per_step_after > per_step_before

    assert runs["small"][-1]["params"] < runs["large"][-1]["params"] == grown[-1]["params"]
    finals = [r[-1]["flops"] for r in runs.values()]
    assert max(finals) <= 1.05 * min(finals)  # the same budget, less at most one step of each run
    assert "FLOPs to reach (a)'s final loss" in proc.stdout
    if importlib.util.find_spec("matplotlib") is not None:
        assert (tmp_path / "out" / "loss_vs_flops.png").stat().st_size > 0
    else:
        assert "pip install specgrow[plot]" in proc.stdout


def test_without_matplotlib_the_plot_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    rows = [dict(run=run, step=1, tokens=1, flops=1, val_loss=1.0, params=1) for run in ("small", "grown", "large")]
    assert _example().plot(rows, [], 1.0, tmp_path / "plot.png") is False
    assert not (tmp_path / "plot.png").exists()


def test_flops_per_step_counts_the_current_model():
    example = _example()
    from specgrow.models.reference import build, random_state
    from specgrow.shape import LayerShape, ModelShape

    shape = ModelShape(hidden=8, vocab=256, positions=example.CONTEXT, layers=(LayerShape(16, 2, 2, 4, 4),))
    model = build(shape, random_state(shape, seed=0))
    matrices = 4 * 8 * 8 + 2 * 8 * 16 + 256 * 8  # q k v o, up down, unembedding
    gains = 3 * 8  # two norms per layer and the final norm; embedding and position tables excluded
    attention = example.CONTEXT * 2 * (4 + 4)  # T x heads x (key + value)
    tokens = example.BATCH * example.CONTEXT
    assert example.step_flops(model) == 3 * (2 * (matrices + gains) + 2 * attention) * tokens
