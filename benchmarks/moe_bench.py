"""Upcycling a LLaMA-shaped checkpoint into a Mixtral one: ``specgrow apply`` against the alternatives, as ratios.

The checkpoint is `apply_bench`'s synthetic LLaMA folder (fp32); the spec upcycles every layer into
``EXPERTS`` experts with top-``TOP_K`` routing (renormalised: Mixtral's), so the output holds each MLP
``EXPERTS`` times. Each command runs in a fresh process; medians of ``--runs`` interleaved runs:

1. ``specgrow apply`` wall / what a user would write instead: ``LlamaForCausalLM.from_pretrained``, a
   ``MixtralForCausalLM`` of the upcycled config, every tensor copied in (each expert a copy of the MLP,
   the router drawn), ``save_pretrained`` (target <= 1: no slower);
2. peak RSS of both, above a process that only imports torch (target <= 1: no more memory);
3. ``specgrow apply`` wall / plain ``safetensors`` load + save of the same output (the floor; target
   <= 1.3, as for the other growths).

A measurement: always exits 0 unless a command fails. Run from the repository root:
``python benchmarks/moe_bench.py [--size quick] [--runs N] [--json FILE]``; ``run.py`` prints these rows.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

import apply_bench
from harness import Collected, Row

EXPERTS, TOP_K = 4, 2
RUNS = 3

# What a user would do instead, in one process: ``python -c TRANSFORMERS IN OUT``.
TRANSFORMERS = f"""
import sys, torch
from transformers import LlamaForCausalLM, MixtralConfig, MixtralForCausalLM
dense = LlamaForCausalLM.from_pretrained(sys.argv[1], torch_dtype=torch.float32)
c = dense.config
config = MixtralConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                       num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                       num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim, rms_norm_eps=c.rms_norm_eps,
                       max_position_embeddings=c.max_position_embeddings, rope_theta=10000.0,
                       tie_word_embeddings=c.tie_word_embeddings, num_local_experts={EXPERTS},
                       num_experts_per_tok={TOP_K})
with torch.device("meta"):
    moe = MixtralForCausalLM(config)
state = {{}}
for name, tensor in dense.state_dict().items():
    if ".mlp." not in name:
        state[name] = tensor
for i, layer in enumerate(dense.model.layers):
    mlp, pre = layer.mlp, f"model.layers.{{i}}.mlp."
    gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
    state[pre + "experts.gate_up_proj"] = gate_up.expand({EXPERTS}, *gate_up.shape).clone()
    state[pre + "experts.down_proj"] = mlp.down_proj.weight.expand({EXPERTS}, *mlp.down_proj.weight.shape).clone()
    state[pre + "gate.weight"] = torch.randn({EXPERTS}, c.hidden_size) * 0.02
moe.load_state_dict(state, strict=True, assign=True)
moe.save_pretrained(sys.argv[2])
"""


def make(folder: Path, size: str) -> tuple[Path, dict]:
    """The LLaMA folder and an upcycling spec beside it (in a child: the measuring process stays small)."""
    spec_path, facts = apply_bench.make_checkpoint(folder, size)
    spec = yaml.safe_load(spec_path.read_text())
    spec["steps"] = [{"upcycle": {"experts": EXPERTS, "top_k": TOP_K}}]
    path = folder.parent / "upcycle.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path, facts


def measure(size: str = "quick", runs: int = RUNS) -> Collected:
    """The three rows."""

    def transformers(source: Path, out: Path) -> list[str]:
        return [sys.executable, "-c", TRANSFORMERS, str(source), str(out)]

    facts, output_bytes, wall, rss = apply_bench.interleaved(__file__, size, runs, {"transformers": transformers})
    where = (f"{size} checkpoint, {facts['input_bytes'] / 1e6:,.0f} MB in, {output_bytes / 1e6:,.0f} MB out (fp32, "
             f"every layer upcycled to {EXPERTS} experts, top-{TOP_K})")
    above = {name: (rss[name] - rss["baseline"]) / 1e6 for name in ("apply", "transformers")}
    rows = [
        Row("upcycling: `specgrow apply` wall / transformers from_pretrained + copy + save_pretrained",
            wall["apply"], wall["transformers"], "s", "<=", 1.0,
            f"{where}; fresh processes, median of {runs} interleaved runs, warm page cache"),
        Row("upcycling: `specgrow apply` peak RSS / transformers', above `import torch`", above["apply"],
            above["transformers"], "MB", "<=", 1.0,
            f"{where}; apply peaks at {rss['apply'] / 1e6:,.0f} MB, transformers at {rss['transformers'] / 1e6:,.0f} "
            f"MB, import torch at {rss['baseline'] / 1e6:,.0f} MB (ru_maxrss, max of {runs} runs)"),
        Row("upcycling: `specgrow apply` wall / safetensors load+save of the output", wall["apply"], wall["plain"],
            "s", "<=", 1.3, f"{where}; the floor: the same output bytes read and written"),
    ]
    info = {"moe_checkpoint": size, "moe_output_bytes": output_bytes, "moe_peak_rss_bytes": rss,
            "moe_wall_seconds": wall}
    return Collected(rows, info)


def main(argv: list[str] | None = None) -> int:
    return apply_bench.command_line(argv, __doc__, make, measure, "quick")


if __name__ == "__main__":
    sys.exit(main())
