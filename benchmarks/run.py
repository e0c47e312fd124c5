"""Every benchmark of specgrow in one table of ratios, each measured in this run against its baseline.

    python benchmarks/run.py [--quick] [--json FILE]

| # | ratio | target | module |
|---|---|---|---|
| 1 | cold ``specgrow check examples/six.yaml`` / cold ``python -c "import sympy"`` | <= 2x | check_bench |
| 2 | cold check of a 96-layer spec / of a 2-layer spec | <= 1.2x | check_bench |
| 3 | peak RSS of ``apply`` above an import-torch process / largest output tensor | <= 1.5x | apply_bench |
| 4 | ``apply`` wall / plain safetensors load+save of the output | <= 1.3x | apply_bench |
| 5 | CUDA only: in-memory growth of a LLaMA-7B-shaped model / device clone bandwidth | >= 0.5x | grow_bench |
| 6 | upcycling to Mixtral: ``apply`` wall / transformers from_pretrained + copy + save_pretrained | <= 1x | moe_bench |
| 7 | upcycling: ``apply`` peak RSS / the transformers script's, above import torch | <= 1x | moe_bench |
| 8 | upcycling: ``apply`` wall / plain safetensors load+save of the output | <= 1.3x | moe_bench |

``--quick`` is the CI-sized run (3 runs per median, a ~230 MB checkpoint, about a minute
on 2 cores); without it, 5 runs and the ~2.2 GB checkpoint (several minutes). A missed target
is printed, not failed: the command exits 0 unless a benchmark itself fails (a command that
errors, a wrong result). Row 5 runs in a child process (this one never imports torch, so the
children's peak RSS is their own) and reads ``n/a (no CUDA)`` without a CUDA device;
``--grow-device cpu --grow-tiny`` runs its code path at tiny dims on the CPU instead.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import apply_bench
import check_bench
import moe_bench
from harness import HERE, Collected, Row, print_rows, run_facts, write_json

MODES = {  # runs per median for rows 1-2, checkpoint and runs for rows 3-4 and 6-8, runs for row 5
    "full": dict(check_runs=5, apply_size="2gb", apply_runs=3, grow_runs=5, moe_size="quick", moe_runs=3),
    "quick": dict(check_runs=3, apply_size="quick", apply_runs=2, grow_runs=3, moe_size="small", moe_runs=2),
}


def grow_row(device: str = "auto", tiny: bool = False, runs: int = 5, band_mb: float | None = None) -> Collected:
    """Row 5, measured by ``grow_bench.py`` in a child process (which imports torch)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "grow.json"
        command = [sys.executable, str(HERE / "grow_bench.py"), "--device", device, "--runs", str(runs),
                   "--json", str(out), "--quiet"] + (["--tiny"] if tiny else [])
        if band_mb:
            command += ["--band-mb", str(band_mb)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"command failed (exit {done.returncode}): {' '.join(command)}\n{done.stderr}")
        doc = json.loads(out.read_text())
    return Collected([Row.from_dict(row) for row in doc["rows"]], doc["info"])


def collect(mode: str = "full", grow_device: str = "auto", grow_tiny: bool = False, log=print) -> Collected:
    """All eight rows, in order; ``log`` is told when each part starts."""
    settings = MODES[mode]
    rows, info = [], {"mode": mode, "seconds": {}}

    def part(name, work):
        log(f"[{time.strftime('%H:%M:%S')}] {name} ...")
        start = time.perf_counter()
        got = work()
        info["seconds"][name] = round(time.perf_counter() - start, 1)
        rows.extend(got.rows)
        info.update(got.info)

    part("check_bench", lambda: check_bench.measure(settings["check_runs"]))
    part("apply_bench", lambda: apply_bench.measure(settings["apply_size"], settings["apply_runs"]))
    part("grow_bench", lambda: grow_row(grow_device, grow_tiny, settings["grow_runs"]))
    part("moe_bench", lambda: moe_bench.measure(settings["moe_size"], settings["moe_runs"]))
    return Collected(rows, info)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized: fewer runs, a ~230 MB checkpoint")
    parser.add_argument("--json", metavar="FILE", help="also write the rows and the run's facts as JSON to FILE")
    parser.add_argument("--grow-device", choices=("auto", "cuda", "cpu"), default="auto",
                        help="device of row 5 (auto: CUDA where there is one, else n/a)")
    parser.add_argument("--grow-tiny", action="store_true", help="row 5 at tiny dims (needed with --grow-device cpu)")
    args = parser.parse_args(argv)
    facts = run_facts(argv)
    mode = "quick" if args.quick else "full"
    load = facts.get("load_average_start")
    print(f"specgrow benchmarks ({mode}); {facts['date']}; python {facts['python']}; {facts['cpus']} CPUs; "
          f"load average {load if load is not None else 'n/a'}", flush=True)
    result = collect(mode, args.grow_device, args.grow_tiny, log=lambda line: print(line, flush=True))
    print()
    print_rows(result.rows)
    for line in check_bench.info_lines(result.info):
        print(line)
    missed = [row.metric for row in result.rows if row.met is False]
    print(f"{len(result.rows)} ratios: {sum(row.met is True for row in result.rows)} met, {len(missed)} missed, "
          f"{sum(row.met is None for row in result.rows)} n/a (a measurement: missed targets do not fail the run)")
    if args.json:
        write_json(args.json, result.rows, facts, result.info)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
