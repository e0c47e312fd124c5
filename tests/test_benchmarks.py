"""The benchmark harness (benchmarks/), at tiny scale: its pure functions, the table, the JSON, and
the CUDA row's code path run on the CPU (and on CUDA where there is one). No timing is asserted."""

from __future__ import annotations

import doctest
import json
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import apply_bench  # noqa: E402
import moe_bench  # noqa: E402
import check_bench  # noqa: E402
import grow_bench  # noqa: E402
import harness  # noqa: E402
import run  # noqa: E402
from harness import Collected, Row, format_table, write_json  # noqa: E402
from specgrow.lower.stream import StateSource  # noqa: E402
from specgrow.spec import load_spec_text  # noqa: E402
from specgrow.verify.prover import prove_spec  # noqa: E402
from specgrow.verify.result import Verdict  # noqa: E402


@pytest.mark.parametrize("module", [harness, apply_bench, check_bench, grow_bench, moe_bench, run])
def test_doctests(module):
    failed, _ = doctest.testmod(module)
    assert failed == 0


def test_row_ratio_and_target():
    assert Row("m", 3.0, 2.0, "s", "<=", 2.0).met is True
    assert Row("m", 5.0, 2.0, "s", "<=", 2.0).met is False
    assert Row("m", 1.0, 4.0, "GB/s", ">=", 0.5).met is False
    assert Row("m", 3.0, 4.0, "GB/s", ">=", 0.5).ratio == 0.75
    na = Row("m", None, None, "GB/s", ">=", 0.5, na="n/a (no CUDA)")
    assert na.ratio is None and na.met is None
    with pytest.raises(ValueError):
        Row("m", 1.0, 1.0, "s", "<", 1.0)


def test_table_has_one_line_per_row_and_six_columns():
    rows = [Row("cold check / import sympy", 1.2, 0.6, "s", "<=", 2.0),
            Row("peak RSS / largest tensor", 300.0, 80.0, "MB", "<=", 1.5),
            Row("growth / clone", None, None, "GB/s", ">=", 0.5, na="n/a (no CUDA)")]
    lines = format_table(rows).splitlines()
    assert lines[0] == "| metric | measured | baseline | ratio | target | met? |"
    assert len(lines) == 2 + len(rows)
    assert all(line.count("|") == 7 for line in lines)
    assert lines[2] == "| cold check / import sympy | 1.20 s | 0.600 s | 2.00x | <= 2x | yes |"
    assert lines[3] == "| peak RSS / largest tensor | 300 MB | 80.0 MB | 3.75x | <= 1.5x | NO |"
    assert "n/a (no CUDA)" in lines[4] and lines[4].endswith("| >= 0.5x | n/a (no CUDA) |")


def test_json_round_trips_the_rows(tmp_path, capsys):
    rows = [Row("a / b", 3.0, 2.0, "s", "<=", 2.0, "detail"), Row("c / d", None, None, "GB/s", ">=", 0.5, na="n/a")]
    facts = harness.run_facts(["benchmarks/run.py", "--quick"])
    path = tmp_path / "out.json"
    write_json(path, rows, facts, {"k": 1})
    doc = json.loads(path.read_text())
    assert doc["command"] == "python benchmarks/run.py --quick" and doc["info"] == {"k": 1}
    assert {"date", "python", "cpus", "versions"} <= set(doc)
    assert doc["rows"][0]["ratio"] == 1.5 and doc["rows"][0]["met"] is True
    assert doc["rows"][1]["ratio"] is None and doc["rows"][1]["na"] == "n/a"
    assert [Row.from_dict(r) for r in doc["rows"]] == rows
    write_json("-", rows[:1], facts)
    assert json.loads(capsys.readouterr().out)["rows"][0]["metric"] == "a / b"


def test_depth_specs_differ_only_in_layers(tmp_path):
    specs = check_bench.depth_specs(tmp_path)
    docs = {layers: yaml.safe_load(path.read_text()) for layers, path in specs.items()}
    assert sorted(docs) == [2, 96]
    assert docs[96]["model"]["dims"]["layers"] == 96 and docs[2]["model"]["dims"]["layers"] == 2
    docs[96]["model"]["dims"]["layers"] = 2
    assert docs[96] == docs[2]


def test_wall_raises_when_the_command_fails():
    with pytest.raises(RuntimeError, match="command failed"):
        check_bench.wall([sys.executable, "-c", "raise SystemExit(3)"])


def test_apply_bench_checkpoint_at_tiny_size(tmp_path, monkeypatch):
    monkeypatch.setitem(apply_bench.SIZES, "tiny", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                                        num_key_value_heads=4, num_hidden_layers=2, vocab_size=50,
                                                        grow_to=48))
    spec, facts = apply_bench.make_checkpoint(tmp_path / "in", "tiny")
    from safetensors.torch import load_file

    tensors = load_file(str(tmp_path / "in" / "model.safetensors"))
    assert {name: tuple(t.shape) for name, t in tensors.items()} == apply_bench.checkpoint_shapes(
        apply_bench.SIZES["tiny"])
    assert facts["largest_output_bytes"] == 64 * 48 * 4
    assert prove_spec(load_spec_text(spec.read_text())).verdict is Verdict.PROVED


def test_the_benchmarked_growths_are_proved():
    for shape in (grow_bench.TINY, grow_bench.LLAMA_7B):
        assert prove_spec(load_spec_text(grow_bench.growth_spec_text(shape))).verdict is Verdict.PROVED


def test_llama_7b_growth_pulls_every_output_on_meta():
    """The CUDA row's code path at its real shapes, on the meta device (nothing is allocated)."""
    plan = grow_bench.compile_growth(grow_bench.LLAMA_7B)
    steps = plan.concrete().steps
    inputs = StateSource({key: torch.empty(plan.before.role_shape(*key), dtype=torch.bfloat16, device="meta")
                          for key in plan.before.tensor_keys()})
    from specgrow.lower.stream import chain

    flat, outputs = grow_bench.allocate_outputs(chain(inputs, steps, "meta"), "meta")
    assert flat.numel() * flat.element_size() == 24_354_007_040  # bytes of the grown bf16 model
    assert len(plan.after.layers) == 40 and plan.after.hidden == 5120
    assert {key: tuple(t.shape) for key, t in outputs.items()} == {
        key: plan.after.role_shape(*key) for key in plan.after.tensor_keys()}
    assert outputs[("mlp.down.weight", 39)].shape == (5120, 13824)
    grow_bench.grow_into(inputs, steps, torch.device("meta"), outputs)


def _tiny(device):
    plan = grow_bench.compile_growth(grow_bench.TINY)
    steps = plan.concrete().steps
    inputs = grow_bench.random_inputs(plan, torch.device(device))
    from specgrow.lower.stream import chain

    return plan, steps, inputs, chain(inputs, steps, device)


def _banded_equals_whole(device):
    plan, steps, inputs, grown = _tiny(device)
    dev = torch.device(device)
    flat, outputs = grow_bench.allocate_outputs(grown, dev)
    grow_bench.grow_into(inputs, steps, dev, outputs)
    grow_bench.spot_check(plan, inputs, outputs)
    whole = flat.clone()
    flat.zero_()
    grow_bench.grow_into(inputs, steps, dev, outputs, band_bytes=1000)  # several bands per tensor
    assert torch.equal(flat, whole)
    assert flat.dtype == torch.bfloat16 and outputs[("embed.weight", None)].shape == (256, 80)
    return plan, inputs, outputs


def test_tiny_growth_on_cpu_banded_equals_whole_and_keeps_old_slices():
    plan, inputs, outputs = _banded_equals_whole("cpu")
    outputs[("embed.weight", None)][0, -1] = 1.0
    with pytest.raises(AssertionError, match="embeddings"):
        grow_bench.spot_check(plan, inputs, outputs)


def test_grow_bench_measures_tiny_on_cpu():
    result = grow_bench.measure("cpu", tiny=True, runs=1)
    (row,) = result.rows
    assert row.na is None and row.measured > 0 and row.baseline > 0 and row.op == ">="
    assert row.met in (True, False) and "tiny" in row.metric and "cpu" in row.metric
    assert result.info["output_bytes"] == 2 * sum(
        torch.Size(grow_bench.compile_growth(grow_bench.TINY).after.role_shape(*key)).numel()
        for key in grow_bench.compile_growth(grow_bench.TINY).after.tensor_keys())
    banded = grow_bench.measure("cpu", tiny=True, runs=1, band_mb=0.001)
    assert "MiB bands" in banded.rows[0].metric


def test_grow_bench_refuses_a_7b_model_on_cpu():
    with pytest.raises(SystemExit, match="--tiny"):
        grow_bench.measure("cpu", tiny=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_grow_bench_without_cuda_is_na():
    (row,) = grow_bench.measure("auto").rows
    assert row.na == "n/a (no CUDA)" and row.met is None and "LLaMA-7B" in row.metric


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tiny_growth_on_cuda_banded_equals_whole_and_keeps_old_slices():
    plan, inputs, outputs = _banded_equals_whole("cuda")
    assert outputs[("mlp.down.weight", 0)].device.type == "cuda"
    (row,) = grow_bench.measure("cuda", tiny=True, runs=1).rows
    assert row.na is None and row.measured > 0 and row.baseline > 0


def test_grow_bench_command_writes_json(tmp_path):
    out = tmp_path / "grow.json"
    assert grow_bench.main(["--device", "cpu", "--tiny", "--runs", "1", "--json", str(out), "--quiet"]) == 0
    doc = json.loads(out.read_text())
    assert len(doc["rows"]) == 1 and doc["rows"][0]["unit"] == "GB/s" and doc["info"]["output_bytes"] > 0


def test_run_prints_one_table_and_writes_json(tmp_path, monkeypatch, capsys):
    """run.py end to end with rows 1-4 stubbed (no timing here) and row 5 at tiny dims on the CPU, in a child."""
    monkeypatch.setattr(check_bench, "measure", lambda runs: Collected(
        [Row("check", 1.0, 0.8, "s", "<=", 2.0), Row("depth", 1.0, 1.0, "s", "<=", 1.2)],
        {"prove_spec_seconds": {"2": 0.4, "96": 0.6}, "prove_spec_ratio": 1.5}))
    monkeypatch.setattr(apply_bench, "measure", lambda size, runs: Collected(
        [Row("rss", 400.0, 80.0, "MB", "<=", 1.5), Row("wall", 2.0, 1.0, "s", "<=", 1.3)], {"apply_checkpoint": size}))
    monkeypatch.setattr(moe_bench, "measure", lambda size, runs: Collected(
        [Row("moe wall", 1.0, 2.0, "s", "<=", 1.0), Row("moe rss", 100.0, 400.0, "MB", "<=", 1.0),
         Row("moe floor", 2.0, 1.0, "s", "<=", 1.3)], {"moe_checkpoint": size}))
    out = tmp_path / "bench.json"
    assert run.main(["--quick", "--json", str(out), "--grow-device", "cpu", "--grow-tiny"]) == 0
    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 8 and table[0] == "| metric | measured | baseline | ratio | target | met? |"
    assert re.search(r"^8 ratios: [45] met, [34] missed, 0 n/a", printed, re.M)  # row 5's verdict varies
    doc = json.loads(out.read_text())
    assert [r["metric"] for r in doc["rows"]][:4] == ["check", "depth", "rss", "wall"]
    assert [r["metric"] for r in doc["rows"]][5:] == ["moe wall", "moe rss", "moe floor"]
    assert doc["rows"][4]["unit"] == "GB/s" and doc["rows"][4]["na"] is None
    assert doc["info"]["mode"] == "quick" and doc["info"]["apply_checkpoint"] == "quick"
    assert doc["info"]["moe_checkpoint"] == "small"


def test_gpu_script_parses():
    import subprocess

    assert subprocess.run(["bash", "-n", str(BENCHMARKS / "gpu.sh")]).returncode == 0


def test_run_fails_when_a_benchmark_crashes(monkeypatch):
    def crash(runs):
        raise RuntimeError("command failed (exit 1): specgrow check")
    monkeypatch.setattr(check_bench, "measure", crash)
    with pytest.raises(RuntimeError, match="command failed"):
        run.main(["--quick"])


def test_moe_bench_upcycles_a_tiny_checkpoint_both_ways(tmp_path, monkeypatch):
    """The benchmark's two upcycling paths at tiny dims, in this process: specgrow's output and the
    transformers script's load as the same Mixtral (router aside: each draws its own)."""
    import subprocess
    import sys

    import torch
    from transformers import AutoModelForCausalLM

    from specgrow.cli import main

    monkeypatch.setitem(apply_bench.SIZES, "tiny", dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                                        num_key_value_heads=2, num_hidden_layers=2, vocab_size=50,
                                                        grow_to=48))
    spec, _ = moe_bench.make(tmp_path / "in", "tiny")
    assert main(["apply", str(spec), "--input", str(tmp_path / "in"), "-o", str(tmp_path / "ours"), "-q"]) == 0
    subprocess.run([sys.executable, "-c", moe_bench.TRANSFORMERS, str(tmp_path / "in"), str(tmp_path / "theirs")],
                   check=True, capture_output=True)
    ours = AutoModelForCausalLM.from_pretrained(str(tmp_path / "ours"))
    theirs = AutoModelForCausalLM.from_pretrained(str(tmp_path / "theirs"))
    assert type(ours).__name__ == type(theirs).__name__ == "MixtralForCausalLM"
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        if not name.endswith("mlp.gate.weight"):
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
