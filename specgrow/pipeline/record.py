"""What an output folder records beside the weights: the certificate and the manifest.

The manifest holds the spec's path and sha256, the seed, the input (its path and the sha256
of each of its files, or the reference model's seed), the device, the versions of Python,
torch, SymPy and safetensors, the proof (verdict, number of obligations, sha256 of the
certificate), the numeric check, the parameter counts and the output's files with their sha256.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

from specgrow import __version__
from specgrow.lower.hashes import resolved

MANIFEST = "specgrow-manifest.json"
CERTIFICATE = "proof.md"


def build_manifest(spec, plan, opened, device, proof: dict, check, output: dict) -> dict:
    """The manifest of growing ``opened`` by ``plan`` (``proof``: a `specgrow.pipeline.proof.summary`;
    ``check``: the numeric check's result, or None when it did not run)."""
    return {
        "specgrow": __version__,
        "spec": {"path": spec.path, "sha256": spec.sha256},
        "seed": spec.seed,
        "input": {key: resolved(value) for key, value in opened.manifest.items()},
        "device": str(device),
        "versions": versions(),
        "proof": {
            "verdict": proof["verdict"],
            "obligations": proof["obligations"],
            "certificate_sha256": hashlib.sha256(proof["markdown"].encode("utf-8")).hexdigest(),
        },
        "numeric_check": check.as_dict() if check is not None else None,
        "parameters": {"before": plan.before.parameter_count(), "after": plan.after.parameter_count()},
        "output": output,
    }


def write_record(folder: Path, proof: dict, manifest: dict) -> None:
    """The certificate and the manifest, written into ``folder``."""
    (folder / CERTIFICATE).write_text(proof["markdown"], encoding="utf-8")
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def versions() -> dict:
    """The versions the manifest records."""
    import safetensors
    import sympy
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "sympy": sympy.__version__, "safetensors": safetensors.__version__}
