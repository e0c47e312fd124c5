"""Planning at scale on the meta device, and an `apply` killed mid-write."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from specgrow.arch import LLAMA, stored_shape
from specgrow.lower.stream import StateSource, chain, whole
from specgrow.models.reference import random_state
from specgrow.spec import load_spec_text
from specgrow.transforms import compile_spec

LLAMA2_70B = {"hidden": 8192, "mlp": 28672, "heads": 64, "kv_heads": 8, "key": 128, "value": 128,
              "layers": 80, "vocab": 32000, "positions": 4096}


def test_llama2_70b_growth_plans_on_meta_without_memory():
    spec = load_spec_text(yaml.safe_dump({
        "specgrow": 1,
        "model": {"arch": "llama", "dims": LLAMA2_70B, "norm": "rmsnorm", "norm_eps": 1e-5,
                  "activation": "swiglu", "position": "rope", "tie_embeddings": False},
        "steps": [{"hidden": {"to": 10240}}, {"layers": {"add": 16}}],
    }))
    plan = compile_spec(spec)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    inputs = StateSource({key: torch.empty(plan.before.role_shape(*key), dtype=torch.bfloat16, device="meta")
                          for key in plan.before.tensor_keys()})
    grown = chain(inputs, plan.concrete().steps, "meta")
    after = plan.after
    assert len(after.layers) == 96 and after.hidden == 10240
    assert sorted(grown.keys(), key=str) == sorted(after.tensor_keys(), key=str)
    for key in after.tensor_keys():
        tensor = whole(grown, key)
        assert tensor.device.type == "meta" and tuple(tensor.shape) == after.role_shape(*key), key
    shapes = {name: stored_shape(s, after, layer) for name, s, layer in LLAMA.stored_tensors(after, "model.")}
    assert shapes["model.embed_tokens.weight"] == (32000, 10240)
    assert shapes["model.layers.95.self_attn.k_proj.weight"] == (1024, 10240)
    assert shapes["model.layers.95.mlp.down_proj.weight"] == (10240, 28672)
    assert sum(torch.Size(s).numel() for s in shapes.values()) > 80e9  # a ~84B-parameter model...
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert grown_kib < 512 * 1024, f"planning allocated {grown_kib} KiB"  # ...planned in well under 1 GiB


def _big_input(tmp_path: Path) -> tuple[str, Path]:
    dims = {"hidden": 256, "mlp": 1024, "heads": 4, "layers": 8, "vocab": 16000, "positions": 64}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"specgrow": 1, "model": {"dims": dims}, "steps": [{"hidden": {"to": 1024}}]}))
    plan = compile_spec(load_spec_text(spec.read_text()))
    source = tmp_path / "in.safetensors"
    save_file(random_state(plan.before, 0), str(source))
    return str(spec), source


def test_killed_apply_leaves_nothing_at_the_output(tmp_path):
    spec, source = _big_input(tmp_path)
    before = source.read_bytes()
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "specgrow.cli", "apply", spec, "--input", str(source),
                             "-o", str(out), "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    partial = None
    while time.monotonic() < deadline and proc.poll() is None:
        partial = next((f for f in tmp_path.glob(".out.tmp-*/model.safetensors") if f.stat().st_size > 0), None)
        if partial is not None:
            break
        time.sleep(0.002)
    assert partial is not None, "apply finished or failed before it started writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    assert source.read_bytes() == before
    assert partial.parent.name.startswith(".out.tmp-")  # partial bytes only ever sit in a temporary sibling


def test_terminated_apply_cleans_up(tmp_path):
    spec, source = _big_input(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "specgrow.cli", "apply", spec, "--input", str(source),
                             "-o", str(out), "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any(f.stat().st_size > 0 for f in tmp_path.glob(".out.tmp-*/model.safetensors")):
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait() != 0
    assert not out.exists()
    assert not list(tmp_path.glob(".out.tmp-*"))  # SIGTERM runs the cleanup
