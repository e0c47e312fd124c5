"""``specgrow apply``: execute a compiled plan on a checkpoint and check the result.

Order: prove the spec, read (or initialise) the input, check its shapes against the spec,
run each step's edits on the device, compare logits, and only then write the output
directory atomically, the proof certificate included. A spec that is not PROVED, or a failed
numeric check, writes nothing unless ``allow_unproved``.
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from specgrow import __version__
from specgrow.errors import InputError, NumericCheckError, SpecError, UnprovedError
from specgrow.lower.checkpoint import (
    MODEL_FILE, atomic_directory, check_shapes, load_state, resolve_input, sha256_file,
)
from specgrow.lower.edits import apply_step
from specgrow.lower.numeric import compare, logits, tokens_for
from specgrow.models.reference import random_state
from specgrow.shape import ModelShape, tensor_name

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
MANIFEST = "specgrow-manifest.json"
CERTIFICATE = "proof.md"


@dataclass(frozen=True)
class ApplyOptions:
    output: str
    input: str | None = None
    device: str = "auto"
    dtype: str | None = None
    allow_unproved: bool = False
    overwrite: bool = False


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available", path="--device")
    return torch.device(name)


def expected_shapes(shape: ModelShape) -> dict[str, tuple[int, ...]]:
    return {tensor_name(role, layer): dims for (role, layer), dims in shape.tensor_shapes().items()}


def grow_state(state, plan, device) -> list[dict[str, torch.Tensor]]:
    """The state after each step of a concrete plan (first element: the input on ``device``)."""
    states = [{name: t.to(device) for name, t in state.items()}]
    for step in plan.steps:
        states.append(apply_step(states[-1], step, tensor_name, device))
    return states


def prove(spec, allow_unproved: bool, log=print):
    """The spec's certificate; raises `UnprovedError` at the first failure unless ``allow_unproved``."""
    from specgrow.verify.prover import prove_spec
    from specgrow.verify.report import failures
    from specgrow.verify.result import Verdict

    cert = prove_spec(spec)
    if cert.verdict is not Verdict.PROVED:
        first = failures(cert)[0]
        if not allow_unproved:
            raise UnprovedError(first.message + "; nothing written (--allow-unproved writes it anyway)",
                                path=spec.path, line=first.line, column=first.column)
        log(f"{spec.path}:{first.line}:{first.column}: warning: {first.message}; writing it (--allow-unproved)")
    return cert


def apply_plan(spec, plan, options: ApplyOptions, log=print) -> dict:
    """Prove, grow, check and write; returns the manifest that was written."""
    if spec.model.arch != "reference":
        raise SpecError(f"model.arch: '{spec.model.arch}' checkpoints are not supported by apply yet "
                        "(expected 'reference')", path=spec.path)
    from specgrow.verify.report import obligation_count, render_markdown

    cert = prove(spec, options.allow_unproved, log)
    certificate = render_markdown(cert)
    device = resolve_device(options.device)
    if options.input is None:
        state = random_state(plan.before, spec.seed)
        source = {"reference_model_seed": spec.seed}
    else:
        path = resolve_input(options.input)
        state = load_state(path)
        check_shapes(state, expected_shapes(plan.before), str(path))
        source = {"path": str(path), "sha256": sha256_file(path)}
    concrete = plan.concrete()
    states = grow_state(state, concrete, device)
    grown = states[-1]
    check_shapes(grown, expected_shapes(plan.after), "<grown model>")
    dtype = next(iter(state.values())).dtype
    tokens = tokens_for(plan.before, spec.seed, device)
    reference = logits(plan.before, states[0], tokens)
    result = compare(reference, logits(plan.after, grown, tokens), dtype, spec.seed)
    if not result.passed:
        index = _first_failing_step(plan, states, tokens, reference, dtype, spec.seed)
        mark = spec.step_marks[index]
        message = (f"steps[{index}] ({plan.steps[index].kind}) changes the function: numeric check failed, "
                   f"{result.summary()}")
        if not options.allow_unproved:
            raise NumericCheckError(message + "; nothing written (--allow-unproved writes it anyway)",
                                    path=spec.path, line=mark.line, column=mark.column)
        log(f"{spec.path}:{mark.line}:{mark.column}: warning: {message}; writing it (--allow-unproved)")
    if options.dtype is not None:
        grown = {name: t.to(DTYPES[options.dtype]) for name, t in grown.items()}
    manifest = {
        "specgrow": __version__,
        "spec": {"path": spec.path, "sha256": spec.sha256},
        "seed": spec.seed,
        "input": source,
        "device": str(device),
        "versions": _versions(),
        "proof": {
            "verdict": cert.verdict.value,
            "obligations": obligation_count(cert),
            "certificate_sha256": hashlib.sha256(certificate.encode("utf-8")).hexdigest(),
        },
        "numeric_check": result.as_dict(),
        "parameters": {"before": plan.before.parameter_count(), "after": plan.after.parameter_count()},
    }
    with atomic_directory(options.output, options.overwrite) as tmp:
        _write_model(tmp / MODEL_FILE, grown, spec.sha256)
        (tmp / "config.json").write_text(json.dumps(plan.after.to_config(), indent=2) + "\n")
        (tmp / CERTIFICATE).write_text(certificate, encoding="utf-8")
        manifest["output"] = {"file": MODEL_FILE, "sha256": sha256_file(tmp / MODEL_FILE)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"grew {plan.before.parameter_count():,} -> {plan.after.parameter_count():,} parameters "
        f"in {len(plan.steps)} step(s) on {device}; proof {cert.verdict.value}; "
        f"numeric check {'passed' if result.passed else 'FAILED'}: {result.summary()}; wrote {options.output}")
    return manifest


def _versions() -> dict:
    import safetensors
    import sympy

    return {"python": platform.python_version(), "torch": torch.__version__,
            "sympy": sympy.__version__, "safetensors": safetensors.__version__}


def _first_failing_step(plan, states, tokens, reference, dtype, seed) -> int:
    shapes = [plan.before] + [step.after for step in plan.steps]
    for index in range(1, len(states)):
        if not compare(reference, logits(shapes[index], states[index], tokens), dtype, seed).passed:
            return index - 1
    return len(plan.steps) - 1


def _write_model(path: Path, state: dict[str, torch.Tensor], spec_sha256: str) -> None:
    from safetensors.torch import save_file

    contiguous = {name: t.detach().contiguous().cpu() for name, t in sorted(state.items())}
    save_file(contiguous, str(path), metadata={"format": "pt", "specgrow_spec_sha256": spec_sha256})

