"""How fast ``specgrow check`` is, as ratios measured in one run (a measurement: always exits 0).

1. Cold ``specgrow check examples/six.yaml`` (a fresh ``python -m specgrow.cli`` process)
   against a fresh ``python -c "import sympy"``: the gate should cost at most 2x importing
   SymPy. Median of 5 runs each, interleaved.
2. ``specgrow check`` of a 96-layer spec against a 2-layer spec with the same steps
   (six.yaml's, with ``layers`` changed), each a fresh process: proofs compose per
   sublayer and identical layers share one proof, so depth should cost at most 1.2x.
   Printed too, for information: ``prove_spec`` alone in a fresh process (startup
   excluded; it includes compiling the plan, whose IR grows linearly with depth).
   Median of 5, interleaved.

Run from the repository root: ``python benchmarks/check_bench.py``.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SIX = ROOT / "examples" / "six.yaml"
RUNS = 5
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
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def prove_seconds(spec: Path) -> tuple[float, str]:
    out = subprocess.run([sys.executable, "-c", PROVE_TIME, str(spec)], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), out[1]


def interleaved(measures: dict, runs: int = RUNS) -> dict[str, float]:
    """Median of ``runs`` calls of each measure, the measures taking turns."""
    samples: dict[str, list[float]] = {name: [] for name in measures}
    for _ in range(runs):
        for name, measure in measures.items():
            samples[name].append(measure())
    return {name: statistics.median(values) for name, values in samples.items()}


def depth_specs(folder: Path) -> dict[int, Path]:
    doc = yaml.safe_load(SIX.read_text())
    paths = {}
    for layers in (2, 96):
        doc["model"]["dims"]["layers"] = layers
        paths[layers] = folder / f"six-{layers}-layers.yaml"
        paths[layers].write_text(yaml.safe_dump(doc, sort_keys=False))
    return paths


def report(name: str, ratio: float, target: float, detail: str) -> None:
    verdict = "PASS" if ratio <= target else "FAIL"
    print(f"{name}: {ratio:.2f}x (target <= {target}x) {verdict}  [{detail}]")


def main() -> int:
    print(f"python {sys.version.split()[0]}; median of {RUNS} interleaved runs")
    cold = interleaved({
        "check": lambda: wall([sys.executable, "-m", "specgrow.cli", "check", str(SIX)]),
        "sympy": lambda: wall([sys.executable, "-c", "import sympy"]),
    })
    report("cold check six.yaml / import sympy", cold["check"] / cold["sympy"], 2.0,
           f"{cold['check']:.2f} s vs {cold['sympy']:.2f} s")
    with tempfile.TemporaryDirectory() as tmp:
        specs = depth_specs(Path(tmp))
        verdicts = {layers: prove_seconds(spec)[1] for layers, spec in specs.items()}
        proving = interleaved({layers: (lambda s=spec: prove_seconds(s)[0]) for layers, spec in specs.items()})
        checks = interleaved({layers: (lambda s=spec: wall([sys.executable, "-m", "specgrow.cli", "check", str(s)]))
                              for layers, spec in specs.items()})
    report("check 96 layers / 2 layers", checks[96] / checks[2], 1.2,
           f"{checks[96]:.2f} s vs {checks[2]:.2f} s; verdicts {verdicts[96]} / {verdicts[2]}")
    print(f"prove_spec 96 layers / 2 layers: {proving[96] / proving[2]:.2f}x  "
          f"[{proving[96]:.2f} s vs {proving[2]:.2f} s] (for information)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
