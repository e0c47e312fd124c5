"""Growing a synthetic LLaMA-shaped HuggingFace checkpoint: peak memory and wall time, as ratios.

Writes a seeded random checkpoint (config.json + model.safetensors, fp32) to a temporary
folder, then measures, each in a fresh process:

1. peak RSS of ``specgrow apply`` above the baseline of a process that only imports torch,
   divided by the size of the largest output tensor (target <= 1.5: the model is streamed,
   never held);
2. wall time of ``specgrow apply`` against a plain ``safetensors`` load + save of the same
   output bytes (target <= 1.3), median of ``--runs`` interleaved runs.

``--size`` picks the checkpoint: ``2gb`` (the default: hidden 2048 -> 2560, 8 layers, about
2.2 GB in, 2.7 GB out), ``quick`` (hidden 1024 -> 1280, 2 layers, vocab 16000: about 230 MB
in, what ``run.py --quick`` uses) or ``small`` (about 80 MB, for a first look). A
measurement: always exits 0 unless a command fails.

Run from the repository root: ``python benchmarks/apply_bench.py [--size quick] [--json FILE]``;
``python benchmarks/run.py`` prints these rows with the others in one table.
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

from harness import Collected, Row, print_rows, run_facts, write_json

RUNS = 3
SIZES = {
    "2gb": dict(hidden_size=2048, intermediate_size=5632, num_attention_heads=16, num_key_value_heads=16,
                num_hidden_layers=8, vocab_size=32000, grow_to=2560),
    "quick": dict(hidden_size=1024, intermediate_size=2816, num_attention_heads=8, num_key_value_heads=8,
                  num_hidden_layers=2, vocab_size=16000, grow_to=1280),
    "small": dict(hidden_size=512, intermediate_size=1408, num_attention_heads=8, num_key_value_heads=8,
                  num_hidden_layers=4, vocab_size=8000, grow_to=640),
}


def checkpoint_shapes(dims: dict) -> dict[str, tuple[int, ...]]:
    """HF LLaMA tensor names and shapes of a config's ``dims`` (``SIZES`` entries without ``grow_to``).

    >>> shapes = checkpoint_shapes(dict(SIZES["small"], grow_to=None))
    >>> shapes["model.embed_tokens.weight"], shapes["model.layers.3.mlp.down_proj.weight"], len(shapes)
    ((8000, 512), (512, 1408), 39)
    """
    h, p, v = dims["hidden_size"], dims["intermediate_size"], dims["vocab_size"]
    kv = dims["num_key_value_heads"] * (h // dims["num_attention_heads"])
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for i in range(dims["num_hidden_layers"]):
        pre = f"model.layers.{i}."
        shapes.update({pre + "input_layernorm.weight": (h,), pre + "post_attention_layernorm.weight": (h,),
                       pre + "self_attn.q_proj.weight": (h, h), pre + "self_attn.k_proj.weight": (kv, h),
                       pre + "self_attn.v_proj.weight": (kv, h), pre + "self_attn.o_proj.weight": (h, h),
                       pre + "mlp.gate_proj.weight": (p, h), pre + "mlp.up_proj.weight": (p, h),
                       pre + "mlp.down_proj.weight": (h, p)})
    return shapes


def largest_output_bytes(size: str) -> int:
    """fp32 bytes of the largest grown tensor (embeddings or an MLP matrix).

    >>> largest_output_bytes("quick") / 1e6
    81.92
    """
    dims = SIZES[size]
    return max(dims["vocab_size"], dims["intermediate_size"]) * dims["grow_to"] * 4


def make_checkpoint(folder: Path, size: str) -> tuple[Path, dict]:
    """A LLaMA-shaped HF folder with random fp32 weights (run in a child: the measuring process stays small)."""
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
    gen = torch.Generator().manual_seed(0)
    tensors = {name: (torch.randn(shape, generator=gen) * (0.02 if len(shape) == 2 else 0.1) + (len(shape) == 1))
               for name, shape in checkpoint_shapes(dims).items()}
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
    return spec_path, {"largest_output_bytes": largest_output_bytes(size),
                       "input_bytes": (folder / "model.safetensors").stat().st_size}


def run_measured(command: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS in bytes) of one fresh process, which must exit 0."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"command failed: {' '.join(command)}\n{err}")
    return wall, usage.ru_maxrss * 1024


def interleaved(script: str, size: str, runs: int, others=None) -> tuple[dict, int, dict, dict]:
    """``script --make`` a checkpoint of ``size`` in a temporary folder (in a child), then run ``specgrow apply``
    of its spec once to warm the page cache, and ``runs`` times in turn: apply and each of ``others`` (name ->
    ``(input folder, output folder) -> command``) into a fresh output folder, a plain safetensors load + save of
    the warm output, and a process that only imports torch. Outputs are removed between runs, outside the timing.

    Returns the child's facts, the bytes of apply's safetensors output, the median wall seconds and the max
    peak RSS bytes of each command (``apply``, the ``others``, ``plain``, ``baseline``). This process never
    imports torch: a child's ru_maxrss could count its pages."""
    others = others or {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        made = subprocess.run([sys.executable, script, "--size", size, "--make", tmp], check=True,
                              capture_output=True, text=True)
        facts = json.loads(made.stdout)
        source, warm, copy = root / "in", root / "warm", root / "plain.safetensors"

        def apply(_, out: Path) -> list[str]:  # a fresh output folder each time, as a user would write
            return [sys.executable, "-m", "specgrow.cli", "apply", facts["spec"], "--input", str(source),
                    "-o", str(out), "-q", "--device", "cpu"]

        plain = [sys.executable, "-c", "import sys; from safetensors.torch import load_file, save_file; "
                 "save_file(load_file(sys.argv[1]), sys.argv[2])", str(warm / "model.safetensors"), str(copy)]
        baseline = [sys.executable, "-c", "import torch"]
        run_measured(apply(source, warm))  # warms the page cache; its output is what the plain copy reads
        output_bytes = sum(f.stat().st_size for f in warm.glob("*.safetensors"))
        commands = {"apply": apply, **others}
        samples: dict[str, list] = {name: [] for name in (*commands, "plain", "baseline")}
        for run in range(runs):
            for name, command in commands.items():
                out = root / f"{name}-{run}"
                samples[name].append(run_measured(command(source, out)))
                shutil.rmtree(out)
            samples["plain"].append(run_measured(plain))
            copy.unlink()
            samples["baseline"].append(run_measured(baseline))
    wall = {name: statistics.median(s[0] for s in got) for name, got in samples.items()}
    rss = {name: max(s[1] for s in got) for name, got in samples.items()}
    return facts, output_bytes, wall, rss


def measure(size: str = "2gb", runs: int = RUNS) -> Collected:
    """Rows 3 and 4."""
    facts, _, wall, rss = interleaved(__file__, size, runs)
    largest = facts["largest_output_bytes"]
    where = f"{size} checkpoint, {facts['input_bytes'] / 1e6:,.0f} MB in (fp32, hidden growth)"
    rows = [
        Row("`specgrow apply` peak RSS above `import torch` / largest output tensor",
            (rss["apply"] - rss["baseline"]) / 1e6, largest / 1e6, "MB", "<=", 1.5,
            f"{where}; apply peaks at {rss['apply'] / 1e6:,.0f} MB, import torch at {rss['baseline'] / 1e6:,.0f} MB "
            f"(ru_maxrss, max of {runs} runs)"),
        Row("`specgrow apply` wall / safetensors load+save of the output", wall["apply"], wall["plain"], "s",
            "<=", 1.3, f"{where}; fresh processes, median of {runs} interleaved runs, warm page cache"),
    ]
    info = {"apply_checkpoint": size, "input_bytes": facts["input_bytes"], "largest_output_bytes": largest,
            "peak_rss_bytes": rss, "wall_seconds": wall}
    return Collected(rows, info)


def command_line(argv, doc: str, make, measure, default: str, describe=None) -> int:
    """The command line of a checkpoint benchmark: ``--size``, ``--runs``, ``--json``, and the internal
    ``--make DIR`` that writes the checkpoint (``make(folder, size) -> (spec, facts)``) in a child;
    ``describe(result, args)`` is printed above the table when given."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default=default)
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE ('-': stdout)")
    parser.add_argument("--make", metavar="DIR", help=argparse.SUPPRESS)  # internal: write the checkpoint
    args = parser.parse_args(argv)
    if args.make:
        spec, facts = make(Path(args.make) / "in", args.size)
        print(json.dumps({"spec": str(spec), **facts}))
        return 0
    facts = run_facts()
    result = measure(args.size, args.runs)
    if describe is not None:
        print(describe(result, args))
    print_rows(result.rows)
    if args.json:
        write_json(args.json, result.rows, facts, result.info)
    return 0


def main(argv: list[str] | None = None) -> int:
    return command_line(argv, __doc__, make_checkpoint, measure, "2gb", lambda result, args: (
        f"checkpoint {args.size}: {result.info['input_bytes'] / 1e9:.2f} GB in; largest output tensor "
        f"{result.info['largest_output_bytes'] / 1e6:.0f} MB; median of {args.runs} interleaved runs"))


if __name__ == "__main__":
    sys.exit(main())
