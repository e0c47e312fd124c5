"""`apply` refuses, in one line and before allocating or writing anything, a growth that needs
more memory, disk or device memory than is available (`specgrow.lower.budget`)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from specgrow.arch import GPT2, REFERENCE
from specgrow.cli import main
from specgrow.lower import budget
from specgrow.models.reference import random_state
from specgrow.pipeline.apply import ApplyOptions
from specgrow.spec import load_spec_text
from specgrow.transforms import compile_spec
from tests.helpers import spec_text

ROOT = Path(__file__).resolve().parents[1]
STEPS = [{"mlp": {"to": 48}}, {"hidden": {"to": 24}}]
F32 = lambda key: torch.float32  # noqa: E731


class Float32Input:
    """An input checkpoint, as far as the estimates ask."""

    dtype = staticmethod(F32)


def _plan(steps=STEPS, **model):
    return compile_spec(load_spec_text(spec_text(steps, **model)))


@pytest.fixture
def spec(tmp_path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(spec_text(STEPS))
    return path


def _apply(spec: Path, capsys, *extra) -> tuple[int, str]:
    code = main(["apply", str(spec), "--output", str(spec.parent / "out"), "--device", "cpu", "--quiet", *extra])
    return code, capsys.readouterr().err


def test_reference_estimate_is_the_bytes_of_the_reference_model():
    plan = _plan()
    state = random_state(plan.before, 0)
    assert budget.reference_bytes(plan.before) == sum(t.numel() * t.element_size() for t in state.values())
    largest = max(t.numel() * t.element_size() for t in state.values())
    assert budget.memory_needed(plan, REFERENCE, F32) == budget.reference_bytes(plan.before) + largest \
        + budget.streaming_bytes(plan.after, F32)


@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_disk_estimate_is_the_bytes_of_the_written_tensors(spec, capsys, dtype):
    code, err = _apply(spec, capsys, *(["--dtype", dtype] if dtype else []))
    assert code == 0, err
    written = (spec.parent / "out" / "model.safetensors").read_bytes()
    data = len(written) - 8 - int.from_bytes(written[:8], "little")  # less the header
    out_dtype = (lambda key: getattr(torch, dtype)) if dtype else F32
    assert budget.disk_needed(_plan(), REFERENCE, out_dtype) == data


def test_memory_short_of_the_reference_model_is_one_line_and_nothing_written(spec, capsys, monkeypatch):
    monkeypatch.setattr(budget, "available_memory", lambda: 1000)
    need = budget.memory_needed(_plan(), REFERENCE, F32)
    code, err = _apply(spec, capsys)
    assert code == 2
    assert err == f"{spec}:1:1: error: the reference model needs {budget.size(need)} of memory, 1.0 kB is available\n"
    assert [p.name for p in spec.parent.iterdir()] == ["spec.yaml"]


def test_the_dcp_output_of_the_reference_model_is_checked_too(spec, capsys, monkeypatch):
    monkeypatch.setattr(budget, "available_memory", lambda: 1000)
    code, err = _apply(spec, capsys, "--output-format", "dcp")
    assert code == 2 and err.count("\n") == 1, err
    assert "error: the reference model needs " in err and "of memory, 1.0 kB is available" in err
    assert [p.name for p in spec.parent.iterdir()] == ["spec.yaml"]


def test_with_an_input_the_model_itself_is_not_counted(spec, capsys, monkeypatch):
    """Streaming holds bands, not the model: memory for them suffices with ``--input``, not without."""
    plan = _plan()
    save_file(random_state(plan.before, 0), str(spec.parent / "in.safetensors"))
    monkeypatch.setattr(budget, "available_memory", lambda: budget.streaming_bytes(plan.after, F32))
    assert _apply(spec, capsys)[0] == 2
    code, err = _apply(spec, capsys, "--input", str(spec.parent / "in.safetensors"))
    assert code == 0, err


def test_fused_and_conv1d_tensors_held_whole_are_counted():
    """GPT-2 reads and writes c_attn (q | k | v) and its Conv1D tensors whole: the largest counts,
    once per input reader and three times on output (assembled, transposed, queued)."""
    plan = _plan([{"mlp": {"to": 64}}], arch="gpt2", norm="layernorm", bias=True, activation="gelu_tanh",
                 dims={"hidden": 16, "heads": 4, "kv_heads": 4, "key": 4, "value": 4})
    c_attn, c_fc_before, c_fc_after = 3 * 16 * 16 * 4, 16 * 32 * 4, 16 * 64 * 4
    assert budget.whole_bytes(GPT2, plan.before, F32) == max(c_attn, c_fc_before) == c_attn
    assert budget.whole_bytes(GPT2, plan.after, F32) == max(c_attn, c_fc_after) == c_fc_after
    assert budget.whole_bytes(REFERENCE, plan.after, F32) == 0
    assert budget.memory_needed(plan, GPT2, F32, source=Float32Input) == \
        2 * c_attn + 3 * c_fc_after + budget.streaming_bytes(plan.after, F32)


def test_disk_short_is_one_line_and_nothing_written(spec, capsys, monkeypatch):
    monkeypatch.setattr(budget, "free_disk", lambda output: 10)
    code, err = _apply(spec, capsys)
    assert code == 2
    need = budget.disk_needed(_plan(), REFERENCE, F32)
    assert err == (f"{spec}:1:1: error: the grown model needs {budget.size(need)} of disk space for "
                   f"'{spec.parent / 'out'}', 10 bytes is free there\n")
    assert [p.name for p in spec.parent.iterdir()] == ["spec.yaml"]


def test_gpu_memory_is_checked_on_cuda(monkeypatch, tmp_path):
    monkeypatch.setattr(budget, "available_memory", lambda: None)  # unknown: not checked
    monkeypatch.setattr(budget, "free_device_memory", lambda device: 2_000_000)
    plan = _plan()
    options = ApplyOptions(output=str(tmp_path / "out"))
    with pytest.raises(budget.InputError) as caught:
        budget.check_apply("spec.yaml", plan, REFERENCE, options, torch.device("cuda", 0), F32)
    need = budget.device_needed(plan, REFERENCE, F32)
    assert caught.value.render() == (f"spec.yaml:1:1: error: the reference model needs {budget.size(need)} of "
                                     "memory on cuda:0, 2.0 MB is free")
    budget.check_apply("spec.yaml", plan, REFERENCE, options, torch.device("cpu"), F32)  # no device to check


def test_available_memory_is_memavailable_capped_by_the_cgroup(monkeypatch, tmp_path):
    meminfo, cgroup = tmp_path / "meminfo", tmp_path / "cgroup"
    cgroup.mkdir()
    meminfo.write_text("MemTotal:       8000000 kB\nMemFree:         100000 kB\nMemAvailable:    3000000 kB\n")
    monkeypatch.setattr(budget, "MEMINFO", meminfo)
    monkeypatch.setattr(budget, "CGROUP", cgroup)
    assert budget.available_memory() == 3_072_000_000  # no cgroup files: MemAvailable
    (cgroup / "memory.max").write_text("max\n")
    assert budget.available_memory() == 3_072_000_000
    (cgroup / "memory.max").write_text("2000000000\n")
    (cgroup / "memory.current").write_text("500000000\n")
    assert budget.available_memory() == 1_500_000_000
    meminfo.unlink()  # no /proc/meminfo: the free pages (where the system tells them), still capped
    assert budget.available_memory() == min(1_500_000_000, budget._free_pages() or 1_500_000_000)


def test_sizes_read_as_a_person_would():
    assert [budget.size(n) for n in (512, 1000, 8_400_000, 412_345_678_901, 6_600_000_000_000)] == \
        ["512 bytes", "1.0 kB", "8.4 MB", "412.3 GB", "6.6 TB"]


def test_a_model_larger_than_the_machine_is_refused_before_anything_is_allocated(tmp_path):
    """hidden 16384 × vocab 262144 (and 512 layers: about 6.6 TB in float32) with no --input."""
    dims = {"hidden": 16384, "mlp": 65536, "heads": 128, "kv_heads": 128, "key": 128, "value": 128,
            "layers": 512, "vocab": 262144, "positions": 64}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"specgrow": 1, "model": {"dims": dims}, "steps": [{"mlp": {"to": 131072}}]}))
    proc = subprocess.run([sys.executable, "-m", "specgrow.cli", "apply", "spec.yaml", "--output", "out"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert re.fullmatch(r"spec\.yaml:1:1: error: the reference model needs \d+\.\d TB of memory, "
                        r"\d+\.\d [kMGT]?B is available\n", proc.stderr), proc.stderr
    assert proc.stdout == "" and [p.name for p in tmp_path.iterdir()] == ["spec.yaml"]
