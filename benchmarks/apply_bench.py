"""Growing a synthetic LLaMA-shaped HuggingFace checkpoint: peak memory and wall time, as ratios.

Writes a seeded random checkpoint (config.json + model.safetensors, fp32) to a temporary
folder, then measures, each in a fresh process:

1. peak RSS of ``specgrow apply`` above the baseline of a process that only imports torch,
   divided by the size of the largest output tensor (target <= 1.5: the model is streamed,
   never held);
2. wall time of ``specgrow apply`` against a plain ``safetensors`` load + save of the same
   output bytes (target <= 1.3), median of ``--runs`` interleaved runs.

``--size`` picks the checkpoint: ``2gb`` (the default: hidden 2048 -> 2560, 8 layers, about
2.2 GB in, 2.7 GB out) or ``small`` (about 80 MB, for CI). A measurement: always exits 0.

Run from the repository root: ``python benchmarks/apply_bench.py [--size small]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from check_bench import report  # this folder's other harness: one way to print a ratio

SIZES = {
    "2gb": dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=16, num_key_value_heads=16,
                num_hidden_layers=8, vocab_size=32000, grow_to=2560),
    "small": dict(hidden_size=512, intermediate_size=1408, num_attention_heads=8, num_key_value_heads=8,
                  num_hidden_layers=4, vocab_size=8000, grow_to=640),
}


def make_checkpoint(folder: Path, size: str) -> tuple[Path, dict]:
    """A LLaMA-shaped HF folder with random fp32 weights (run in a child: this process stays small)."""
    import torch
    import yaml
    from safetensors.torch import save_file

    dims = dict(SIZES[size])
    grow_to = dims.pop("grow_to")
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_act": "silu",
              "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
              "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
              "head_dim": dims["hidden_size"] // dims["num_attention_heads"], **dims}
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    h, p, v = dims["hidden_size"], dims["intermediate_size"], dims["vocab_size"]
    kv = dims["num_key_value_heads"] * config["head_dim"]
    gen = torch.Generator().manual_seed(0)
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for i in range(dims["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        shapes.update({pre + "input_layernorm.weight": (h,), pre + "post_attention_layernorm.weight": (h,),
                       pre + "self_attn.q_proj.weight": (h, h), pre + "self_attn.k_proj.weight": (kv, h),
                       pre + "self_attn.v_proj.weight": (kv, h), pre + "self_attn.o_proj.weight": (h, h),
                       pre + "mlp.gate_proj.weight": (p, h), pre + "mlp.up_proj.weight": (p, h),
                       pre + "mlp.down_proj.weight": (h, p)})
    tensors = {name: (torch.randn(shape, generator=gen) * (0.02 if len(shape) == 2 else 0.1) + (len(shape) == 1))
               for name, shape in shapes.items()}
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    spec = {"specgrow": 1, "model": {
        "arch": "llama", "dims": {"hidden": h, "mlp": p, "heads": dims["num_attention_heads"],
                                  "kv_heads": dims["num_key_value_heads"], "key": config["head_dim"],
                                  "value": config["head_dim"], "layers": dims["num_hidden_layers"],
                                  "vocab": v, "positions": 2048},
        "norm": "rmsnorm", "norm_eps": 1e-5, "activation": "swiglu", "position": "rope", "tie_embeddings": False},
        "steps": [{"hidden": {"to": grow_to}}]}
    spec_path = folder.parent / "grow.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    largest = max(v * grow_to, p * grow_to) * 4
    return spec_path, {"largest_output_bytes": largest, "input_bytes": (folder / "model.safetensors").stat().st_size}


def run_measured(command: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS in bytes) of one fresh process."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"command failed: {' '.join(command)}\n{err}")
    return wall, usage.ru_maxrss * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="2gb")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--make", metavar="DIR", help=argparse.SUPPRESS)  # internal: write the checkpoint
    args = parser.parse_args()
    if args.make:
        spec, facts = make_checkpoint(Path(args.make) / "in", args.size)
        print(json.dumps({"spec": str(spec), **facts}))
        return 0
    # The parent never imports torch: a child's peak RSS (ru_maxrss) would include this
    # process's pages at fork time.
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        made = subprocess.run([sys.executable, __file__, "--size", args.size, "--make", tmp], check=True,
                              capture_output=True, text=True)
        facts = json.loads(made.stdout)
        spec = facts["spec"]
        out, copy = root / "out", root / "plain.safetensors"

        def apply(run: str) -> list[str]:  # a fresh output folder each time, as a user would write
            return [sys.executable, "-m", "specgrow.cli", "apply", spec, "--input", str(root / "in"),
                    "-o", str(root / run), "-q", "--device", "cpu"]

        plain = [sys.executable, "-c", "import sys; from safetensors.torch import load_file, save_file; "
                 "save_file(load_file(sys.argv[1]), sys.argv[2])", str(out / "model.safetensors"), str(copy)]
        baseline = [sys.executable, "-c", "import torch"]
        run_measured(apply("out"))  # warms the page cache; its output is what the plain copy reads
        samples: dict[str, list] = {"apply": [], "plain": [], "baseline": []}
        for run in range(args.runs):  # outputs are removed between runs, outside the timing
            samples["apply"].append(run_measured(apply(f"run-{run}")))
            shutil.rmtree(root / f"run-{run}")
            samples["plain"].append(run_measured(plain))
            copy.unlink()
            samples["baseline"].append(run_measured(baseline))
        wall = {name: statistics.median(s[0] for s in runs) for name, runs in samples.items()}
        rss = {name: max(s[1] for s in runs) for name, runs in samples.items()}
    largest = facts["largest_output_bytes"]
    peak_ratio = (rss["apply"] - rss["baseline"]) / largest
    wall_ratio = wall["apply"] / wall["plain"]
    print(f"checkpoint {args.size}: {facts['input_bytes'] / 1e9:.2f} GB in; largest output tensor "
          f"{largest / 1e6:.0f} MB; median of {args.runs} interleaved runs")
    report("peak RSS of apply above import-torch baseline / largest output tensor", peak_ratio, 1.5,
           f"{(rss['apply'] - rss['baseline']) / 1e6:.0f} MB above {rss['baseline'] / 1e6:.0f} MB")
    report("apply wall / plain safetensors load+save of the output", wall_ratio, 1.3,
           f"{wall['apply']:.2f} s vs {wall['plain']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
