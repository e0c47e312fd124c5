"""How fast ``specgrow check`` is, as ratios measured in one run (a measurement: always exits 0).

1. Cold ``specgrow check examples/six.yaml`` (a fresh ``python -m specgrow.cli`` process)
   against a fresh ``python -c "import sympy"``: the gate should cost at most 2x importing
   SymPy. Median of ``--runs`` runs each (5 by default), interleaved.
2. ``specgrow check`` of a 96-layer spec against a 2-layer spec with the same steps
   (six.yaml's, with ``layers`` changed), each a fresh process: proofs compose per
   sublayer and identical layers share one proof, so depth should cost at most 1.2x.
   Printed too, for information: ``prove_spec`` alone in a fresh process (startup
   excluded; it includes compiling the plan, whose IR grows linearly with depth).
   Median of ``--runs``, interleaved.

A command that fails (a spec not PROVED, say) stops the benchmark with an error.
Run from the repository root: ``python benchmarks/check_bench.py [--runs N] [--json FILE]``;
``python benchmarks/run.py`` prints these rows with the others in one table.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from harness import ROOT, Collected, Row, interleaved, print_rows, run_facts, write_json

SIX = ROOT / "examples" / "six.yaml"
RUNS = 5
DEPTHS = (2, 96)
PROVE_TIME = (
    "import sys, time\n"
    "from specgrow.spec import load_spec\n"
    "from specgrow.verify.prover import prove_spec\n"
    "spec = load_spec(sys.argv[1])\n"
    "start = time.perf_counter()\n"
    "cert = prove_spec(spec)\n"
    "print(time.perf_counter() - start, cert.verdict.value)\n"
)


def wall(command: list[str]) -> float:
    """Wall seconds of one fresh process, which must exit 0."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"command failed (exit {done.returncode}): {' '.join(command)}\n"
                           f"{done.stderr.decode(errors='replace')}")
    return seconds


def check_command(spec: Path) -> list[str]:
    return [sys.executable, "-m", "specgrow.cli", "check", str(spec)]


def prove_seconds(spec: Path) -> tuple[float, str]:
    out = subprocess.run([sys.executable, "-c", PROVE_TIME, str(spec)], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), out[1]


def depth_specs(folder: Path, depths=DEPTHS) -> dict[int, Path]:
    """six.yaml with ``model.dims.layers`` set to each depth, written to ``folder``."""
    doc = yaml.safe_load(SIX.read_text())
    paths = {}
    for layers in depths:
        doc["model"]["dims"]["layers"] = layers
        paths[layers] = folder / f"six-{layers}-layers.yaml"
        paths[layers].write_text(yaml.safe_dump(doc, sort_keys=False))
    return paths


def cold_check(runs: int = RUNS) -> Row:
    """Row 1: cold ``specgrow check examples/six.yaml`` / cold ``import sympy``."""
    cold = interleaved({
        "check": lambda: wall(check_command(SIX)),
        "sympy": lambda: wall([sys.executable, "-c", "import sympy"]),
    }, runs)
    return Row("cold `specgrow check examples/six.yaml` / `import sympy`", cold["check"], cold["sympy"],
               "s", "<=", 2.0, f"fresh processes, median of {runs} interleaved runs")


def depth(runs: int = RUNS) -> Collected:
    """Row 2: cold check of a 96-layer spec / of a 2-layer one; prove_spec alone for information."""
    low, high = DEPTHS
    with tempfile.TemporaryDirectory() as tmp:
        specs = depth_specs(Path(tmp))
        verdicts = {layers: prove_seconds(spec)[1] for layers, spec in specs.items()}
        proving = interleaved({layers: (lambda s=spec: prove_seconds(s)[0]) for layers, spec in specs.items()}, runs)
        checks = interleaved({layers: (lambda s=spec: wall(check_command(s))) for layers, spec in specs.items()}, runs)
    row = Row(f"cold `specgrow check`, {high} layers / {low} layers", checks[high], checks[low], "s",
              "<=", 1.2, f"six.yaml's steps; verdicts {verdicts[high]} / {verdicts[low]}; "
              f"fresh processes, median of {runs} interleaved runs")
    info = {"prove_spec_seconds": {str(layers): proving[layers] for layers in DEPTHS},
            "prove_spec_ratio": proving[high] / proving[low]}
    return Collected([row], info)


def measure(runs: int = RUNS) -> Collected:
    rows = [cold_check(runs)]
    deep = depth(runs)
    return Collected(rows + deep.rows, deep.info)


def info_lines(info: dict) -> list[str]:
    if "prove_spec_seconds" not in info:
        return []
    low, high = (info["prove_spec_seconds"][str(d)] for d in DEPTHS)
    return [f"for information: prove_spec alone, {DEPTHS[1]} layers / {DEPTHS[0]} layers: "
            f"{info['prove_spec_ratio']:.2f}x [{high:.2f} s vs {low:.2f} s] (start-up excluded)"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=RUNS, help="interleaved runs per median (default %(default)s)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows as JSON to FILE ('-': stdout)")
    args = parser.parse_args(argv)
    facts = run_facts()
    print(f"python {facts['python']}; median of {args.runs} interleaved runs")
    result = measure(args.runs)
    print_rows(result.rows)
    for line in info_lines(result.info):
        print(line)
    if args.json:
        write_json(args.json, result.rows, facts, result.info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
