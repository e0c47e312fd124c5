#!/usr/bin/env bash
# The GPU part of the benchmarks (row 5 of benchmarks/run.py), for one CUDA device with at
# least 64 GB of memory (made for an H200; a few minutes there). From the repository root:
#
#   OUT=results/ bash benchmarks/gpu.sh
#
# Runs with the machine's python3 and its torch (PYTHON=... to choose another); specgrow is
# taken from this checkout (PYTHONPATH), so nothing is installed. Needs torch, sympy, pyyaml,
# safetensors, numpy and pytest. Writes under $OUT (default benchmarks/gpu-out/):
#   environment.txt         nvidia-smi, python, torch and CUDA versions
#   grow-whole.json/.txt    row 5: a LLaMA-7B-shaped bf16 model grown in device memory, every
#                           output tensor pulled whole, vs a device clone of the output bytes
#   grow-bands.json/.txt    the same, pulled in 64 MiB row bands (as a streaming writer would)
#   pytest.txt              tests/test_benchmarks.py, whose CUDA test runs the tiny growth on the device
# Exits non-zero if any part failed or ran past its time limit (the others still run);
# a missed target is not a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/gpu-out}"
PY="${PYTHON:-python3}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0

step() {  # step NAME SECONDS COMMAND...: run with a time limit, output to $OUT/NAME.txt and the terminal
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    local rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "== $name FAILED (exit $rc$([ "$rc" -eq 124 ] && echo ': timed out after '"$limit"' s'))" | tee -a "$OUT/$name.txt"
        status=1
    fi
}

{
    date -u +%Y-%m-%dT%H:%M:%SZ
    nvidia-smi || echo "nvidia-smi: not available"
    "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| available', torch.cuda.is_available())"
} >"$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device: nothing to measure" | tee -a "$OUT/environment.txt"
    exit 1
fi

step grow-whole 120 "$PY" benchmarks/grow_bench.py --device cuda --runs 5 --json "$OUT/grow-whole.json"
step grow-bands 100 "$PY" benchmarks/grow_bench.py --device cuda --runs 3 --band-mb 64 --json "$OUT/grow-bands.json"
step pytest 60 "$PY" -m pytest tests/test_benchmarks.py -q -p no:cacheprovider -rs
exit $status
