"""In-memory growth on a device against the device's copy bandwidth (a measurement: always exits 0).

Grows a LLaMA-7B-shaped model held in device memory (hidden 4096 -> 5120, MLP 11008 -> 13824,
layers 32 -> 40 inserted in the middle; 32 heads = 32 kv heads of 128; vocab 32000; bf16)
with specgrow's lowering, as ``apply`` runs it: one `StepSource` holding every step (`chain`) over a
`StateSource` of device tensors, every output tensor pulled whole (or in row bands of
``--band-mb``) into preallocated device tensors (views of one flat buffer). The input is
random bf16 made directly on the device, not the reference model (it is faster to make, and
the lowering's speed does not depend on the values). Timed with ``torch.cuda.synchronize``
on both sides, after one untimed warm-up of each; median of ``--runs`` interleaved runs.

The ratio is growth bandwidth / copy bandwidth, both counted as *output bytes per second*:
the growth writes the output's bytes; the baseline is one ``clone`` of the flat output buffer
(the same number of bytes) on the same device. Target >= 0.5.

``--device auto`` (the default) measures on CUDA and reports ``n/a (no CUDA)`` without it.
``--device cpu --tiny`` runs the same code path at tiny dims on the CPU (the tests and CI
use it; a 7B-shaped model needs about 62 GB of device memory: 13.5 GB in, 24.4 GB out and
its clone). Run from the repository root:

    python benchmarks/grow_bench.py [--device auto|cuda|cpu] [--tiny] [--band-mb MB] [--json FILE]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import yaml

from harness import Collected, Row, print_rows, run_facts, write_json

RUNS = 5
TARGET = 0.5
NO_CUDA = "n/a (no CUDA)"

# model dims and the growth: hidden to, mlp to, layers added at index
LLAMA_7B = dict(dims=dict(hidden=4096, mlp=11008, heads=32, kv_heads=32, key=128, value=128, layers=32, vocab=32000,
                          positions=4096), hidden=5120, mlp=13824, add=8, at=16, label="LLaMA-7B-shaped")
TINY = dict(dims=dict(hidden=64, mlp=176, heads=4, kv_heads=4, key=16, value=16, layers=4, vocab=256, positions=64),
            hidden=80, mlp=224, add=1, at=2, label="tiny LLaMA-shaped")


def growth_spec_text(shape: dict, seed: int = 0) -> str:
    """The spec of a growth in ``LLAMA_7B``/``TINY``'s form: hidden, then MLP, then layers."""
    return yaml.safe_dump({
        "specgrow": 1,
        "model": {"arch": "llama", "dims": dict(shape["dims"]), "norm": "rmsnorm", "norm_eps": 1e-5,
                  "activation": "swiglu", "position": "rope", "rope_theta": 10000.0, "tie_embeddings": False},
        "seed": seed,
        "steps": [{"hidden": {"to": shape["hidden"]}}, {"mlp": {"to": shape["mlp"]}},
                  {"layers": {"add": shape["add"], "at": shape["at"]}}],
    }, sort_keys=False)


def compile_growth(shape: dict):
    """The compiled plan of `growth_spec_text` (not proved here: `specgrow check` proves such specs)."""
    from specgrow.spec import load_spec_text
    from specgrow.transforms import compile_spec

    return compile_spec(load_spec_text(growth_spec_text(shape)))


def random_inputs(plan, device, dtype=None, seed: int = 0):
    """A `StateSource` of random tensors of ``plan.before``'s roles, made on ``device``
    (matrices ~ N(0, 0.02²), norm gains ~ 1 + N(0, 0.1²))."""
    import torch

    from specgrow.lower.stream import StateSource

    dtype = dtype or torch.bfloat16
    gen = torch.Generator(device=device).manual_seed(seed)
    tensors = {}
    for key in plan.before.tensor_keys():
        shape = plan.before.role_shape(*key)
        tensor = torch.randn(shape, generator=gen, device=device, dtype=dtype)
        tensors[key] = tensor.mul_(0.02) if len(shape) > 1 else tensor.mul_(0.1).add_(1)
    return StateSource(tensors)


def allocate_outputs(grown, device):
    """``(flat, {key: view})``: every output tensor preallocated as a view of one flat buffer."""
    import torch

    keys = grown.keys()
    dtypes = {grown.dtype(key) for key in keys}
    if len(dtypes) != 1:
        raise ValueError(f"outputs of several dtypes: {sorted(map(str, dtypes))}")
    shapes = {key: grown.shape(key) for key in keys}
    flat = torch.empty(sum(math.prod(s) for s in shapes.values()), dtype=dtypes.pop(), device=device)
    views, offset = {}, 0
    for key, shape in shapes.items():
        size = math.prod(shape)
        views[key] = flat[offset:offset + size].view(shape)
        offset += size
    return flat, views


def pull(grown, outputs: dict, band_bytes: int | None = None) -> None:
    """Pull every output tensor from ``grown`` into its preallocated tensor, whole or in row bands."""
    from specgrow.lower.stream import bands, whole

    for key, out in outputs.items():
        if band_bytes is None:
            out.copy_(whole(grown, key))
        else:
            for start, stop in bands(grown, key, band_bytes):
                out[start:stop].copy_(grown.rows(key, start, stop))


def grow_into(inputs, steps, device, outputs: dict, band_bytes: int | None = None) -> None:
    """One growth: a fresh chain of `StepSource`s (as ``apply`` builds one) pulled into ``outputs``."""
    from specgrow.lower.stream import chain

    pull(chain(inputs, steps, device), outputs, band_bytes)


def spot_check(plan, inputs, outputs: dict) -> None:
    """Old slices are copied (layer 0's MLP up rows, the embeddings' old columns) and new embedding columns are 0."""
    import torch

    h, p = plan.before.hidden, plan.before.role_shape("mlp.up.weight", 0)[0]
    up = ("mlp.up.weight", 0)
    if not torch.equal(outputs[up][:p, :h], inputs.tensors[up]):
        raise AssertionError("layer 0's old MLP up-projection was not copied into the grown model")
    embed = ("embed.weight", None)
    if not torch.equal(outputs[embed][:, :h], inputs.tensors[embed]) or bool(outputs[embed][:, h:].any()):
        raise AssertionError("the grown embeddings are not [old, 0]")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, work) -> float:
    """Wall seconds of ``work()``, with the device synchronized before and after."""
    _sync(device)
    start = time.perf_counter()
    work()
    _sync(device)
    return time.perf_counter() - start


def clone_seconds(device, flat) -> float:
    """One device ``clone`` of the flat output buffer: the copy-bandwidth baseline."""
    def work():
        copy = flat.clone()
        del copy
    return timed(device, work)


def row_name(shape: dict, device: str, band_bytes: int | None) -> str:
    how = "whole tensors" if band_bytes is None else f"{band_bytes / 2**20:.3g} MiB bands"
    return f"growth of a {shape['label']} bf16 model on {device} ({how}) / `clone`, GB/s of output"


def measure(device: str = "auto", tiny: bool = False, runs: int = RUNS, band_mb: float | None = None) -> Collected:
    """Row 5 (or its ``n/a`` row where ``device`` is auto and there is no CUDA)."""
    import torch

    shape = TINY if tiny else LLAMA_7B
    band_bytes = None if not band_mb else int(band_mb * 2**20)
    if device == "auto":
        if not torch.cuda.is_available():
            return Collected([Row(row_name(shape, "cuda", band_bytes), None, None, "GB/s", ">=", TARGET, na=NO_CUDA)],
                             {"grow_device": None})
        device = "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if device == "cpu" and not tiny:
        raise SystemExit("--device cpu needs --tiny: a 7B-shaped model does not fit a CPU benchmark")
    dev = torch.device(device)
    plan = compile_growth(shape)
    steps = plan.concrete().steps
    inputs = random_inputs(plan, dev)
    from specgrow.lower.stream import chain

    flat, outputs = allocate_outputs(chain(inputs, steps, dev), dev)
    out_bytes = flat.numel() * flat.element_size()
    in_bytes = sum(t.numel() * t.element_size() for t in inputs.tensors.values())
    grow_into(inputs, steps, dev, outputs, band_bytes)  # warm-up (kernels, allocator), then checked
    spot_check(plan, inputs, outputs)
    clone_seconds(dev, flat)
    grow, copy = [], []
    for _ in range(runs):
        grow.append(timed(dev, lambda: grow_into(inputs, steps, dev, outputs, band_bytes)))
        copy.append(clone_seconds(dev, flat))
    grow_s, copy_s = statistics.median(grow), statistics.median(copy)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    row = Row(row_name(shape, device, band_bytes), out_bytes / grow_s / 1e9, out_bytes / copy_s / 1e9, "GB/s",
              ">=", TARGET,
              f"{name}; {in_bytes / 1e9:.3g} GB in, {out_bytes / 1e9:.3g} GB out; growth {grow_s * 1e3:.3g} ms, "
              f"clone {copy_s * 1e3:.3g} ms (median of {runs} interleaved runs after a warm-up; "
              "bandwidth = output bytes / time)")
    info = {"grow_device": name, "input_bytes": in_bytes, "output_bytes": out_bytes, "grow_seconds": grow,
            "clone_seconds": copy, "band_bytes": band_bytes, "torch": torch.__version__}
    return Collected([row], info)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument("--tiny", action="store_true", help="tiny dims (a smoke run of the code path)")
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--band-mb", type=float, default=None,
                        help="pull the outputs in row bands of this many MiB (default: whole tensors)")
    parser.add_argument("--json", metavar="FILE", help="also write the row as JSON to FILE ('-': stdout)")
    parser.add_argument("--quiet", action="store_true", help="print nothing (with --json)")
    args = parser.parse_args(argv)
    facts = run_facts()
    result = measure(args.device, args.tiny, args.runs, args.band_mb)
    if not args.quiet:
        print_rows(result.rows)
    if args.json:
        write_json(args.json, result.rows, facts, result.info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
