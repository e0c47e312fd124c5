"""``specgrow apply``: execute a compiled plan on a checkpoint and check the result.

Order: check the input folder's config.json (types and ranges); prove the spec; open the
input (the reference model from the spec's seed, a specgrow file or folder, or a
HuggingFace folder whose config.json must describe the spec's model) and check every
tensor's name, shape and dtype; stream the grown tensors into a temporary folder (one band
of rows at a time, each file hashed as it is written, each input band checked finite);
compare the logits of the input and of the files just written, while they are fsynced; only
then add the config, certificate and manifest and rename
the folder into place. Anything not PROVED, or a failed numeric check, writes nothing
unless ``allow_unproved``.
"""

from __future__ import annotations

import hashlib
import json
import platform
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from specgrow import __version__
from specgrow.arch import FAMILIES, REFERENCE
from specgrow.arch.hf import (
    cross_check, family_of, grown_config, layer_origins, read_config, shortest_window, validate_config,
)
from specgrow.errors import InputError, NumericCheckError, SpecError, UnprovedError
from specgrow.lower.budget import check_apply
from specgrow.lower.checkpoint import (
    RoleSource, atomic_directory, copy_side_files, write_checkpoint,
)
from specgrow.lower.hashes import one_malloc_arena, sha256_file, sha256_later
from specgrow.lower.links import refuse_outside
from specgrow.lower.numeric import compare, streamed_logits, tokens_for
from specgrow.lower.safetensors_io import CheckpointFiles, fsync_files, parse_size
from specgrow.lower.stream import StateSource, chain, whole
from specgrow.models.reference import random_state
from specgrow.shape import tensor_name

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
    max_shard_size: str | None = None
    quiet: bool = False
    optimizer: str | None = None  # a saved Adam/AdamW state_dict to grow next to the weights


@dataclass
class Opened:
    """An input checkpoint, seen as roles of the spec's original model."""

    source: object
    family: object
    prefix: str
    config: dict | None  # the HF config.json, None for specgrow's own inputs
    manifest: dict
    shape: object  # the spec's original model
    files: object = None  # the open checkpoint files, None for the embedded default
    path: Path | None = None  # the input file or folder (a HF folder when config is set)

    def close(self):
        if self.files is not None:
            self.files.close()

    def reopen(self):
        """A second reader of the input's files (a DCP folder, or files `CheckpointFiles` reads)."""
        from specgrow.lower.dcp import DcpFiles, is_dcp

        return DcpFiles(self.path, self.family) if is_dcp(self.path) else CheckpointFiles(self.path)

    def reference_logits(self, tokens, pool: ThreadPoolExecutor):
        """The input's logits, computed on ``pool`` from a second reader of its own."""
        def run():
            if self.files is None:
                return streamed_logits(self.shape, self.source, tokens)
            with self.reopen() as files:
                source = RoleSource(files, self.family, self.shape, str(self.path), check_finite=True)
                return streamed_logits(self.shape, source, tokens)
        return pool.submit(run)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available", path="--device")
    return torch.device(name)


def grow_state(state, plan, device) -> list[dict[str, torch.Tensor]]:
    """The named state after each step of a concrete plan, in memory (first: the input on ``device``)."""
    source = StateSource.of_state(state, plan.before, device)
    states = [{tensor_name(*key): t for key, t in source.tensors.items()}]
    for step in plan.steps:
        grown = chain(source, [step], device)
        source = StateSource({key: whole(grown, key) for key in grown.keys()})
        states.append({tensor_name(*key): t for key, t in source.tensors.items()})
    return states


def prove(spec, allow_unproved: bool, log=print,
          hint: str = "nothing written (--allow-unproved writes it anyway)"):
    """The spec's certificate; raises `UnprovedError` at the first failure unless ``allow_unproved``."""
    from specgrow.verify.prover import prove_spec
    from specgrow.verify.report import failures
    from specgrow.verify.result import Verdict

    cert = prove_spec(spec)
    if cert.verdict is not Verdict.PROVED:
        first = failures(cert)[0]
        if not allow_unproved:
            raise UnprovedError(f"{first.message}; {hint}",
                                path=spec.path, line=first.line, column=first.column)
        log(f"{spec.path}:{first.line}:{first.column}: warning: {first.message}; writing it (--allow-unproved)")
    return cert


def open_input(spec, plan, path: str | None) -> Opened:
    """The input checkpoint as roles of ``plan.before``, every tensor checked against the spec."""
    arch = spec.model.arch
    if path is None:
        if arch != "reference":
            raise SpecError(f"model.arch {arch}: apply needs --input DIR, a HuggingFace checkpoint folder "
                            "(only the reference model has an embedded default)", path=spec.path)
        source = StateSource.of_state(random_state(plan.before, spec.seed), plan.before)
        return Opened(source, REFERENCE, "", None, {"reference_model_seed": spec.seed}, plan.before)
    where = Path(path)
    if not where.exists():
        raise InputError(f"cannot read input checkpoint: no such file or folder '{where}'", path=path)
    from specgrow.lower.dcp import is_dcp, open_dcp

    if is_dcp(where):  # a torch.distributed checkpoint, grown here into safetensors
        if arch != "reference":
            raise SpecError(f"model.arch {arch}: a DCP input grows into safetensors only for the reference model; "
                            "use --output-format dcp", path=spec.path)
        return open_dcp(spec, plan, where)
    config = hf_config(where)
    if config is None and arch != "reference":
        raise SpecError(f"model.arch {arch}: --input must be a HuggingFace folder with config.json, "
                        f"found '{path}'", path=spec.path)
    if config is not None:
        cross_check(spec.model, config, str(where / "config.json"))
        family = FAMILIES[family_of(config, str(where))]
    else:
        family = REFERENCE
    files = CheckpointFiles(where)  # raises for a corrupt or incomplete checkpoint
    try:
        source = RoleSource(files, family, plan.before, path, check_finite=True)
    except Exception:
        files.close()
        raise
    manifest = {"path": str(where), "files": _hash_in_background(files.files())}
    return Opened(source, family, source.prefix, config, manifest, plan.before, files, where)


def hf_config(path) -> dict | None:
    """The validated config.json of a HuggingFace input folder; None for any other input (a
    file, a DCP folder, a folder written by specgrow apply for the reference model)."""
    from specgrow.lower.dcp import is_dcp

    where = Path(path)
    if not where.is_dir() or is_dcp(where) or not (where / "config.json").is_file():
        return None
    refuse_outside(where / "config.json", where)
    config = read_config(where)
    if "specgrow_config" in config:
        return None
    validate_config(config, str(where / "config.json"))
    return config


def apply_plan(spec, plan, options: ApplyOptions, log=print) -> dict:
    """Prove, grow, write, check and rename into place; returns the manifest that was written."""
    from specgrow.verify.report import obligation_count, render_markdown

    max_shard = _shard_bytes(options.max_shard_size)
    one_malloc_arena()  # before any worker thread starts
    if options.input is not None:
        hf_config(options.input)  # a wrong config.json is reported before the proof runs
    cert = prove(spec, options.allow_unproved, log)
    certificate = render_markdown(cert)
    device = resolve_device(options.device)
    concrete = plan.concrete()
    opened = _open_within_budget(spec, plan, concrete, options, device)
    try:
        return _grow_and_write(spec, plan, concrete, opened, options, device, max_shard, cert, certificate,
                               obligation_count(cert), log)
    finally:
        opened.close()


def _open_within_budget(spec, plan, concrete, options, device) -> Opened:
    """The input, opened once `check_apply` finds the memory, disk and device memory the growth
    needs: for the reference model (no ``--input``) before it is built in memory."""
    if options.input is None and spec.model.arch == "reference":
        check_apply(spec.path, plan, REFERENCE, options, device, lambda key: torch.float32)
        return open_input(spec, plan, None)
    opened = open_input(spec, plan, options.input)
    try:
        grown = chain(opened.source, concrete.steps, device)
        check_apply(spec.path, plan, opened.family, options, device, grown.dtype, opened.source)
    except BaseException:
        opened.close()
        raise
    return opened


def _grow_and_write(spec, plan, concrete, opened, options, device, max_shard, cert, certificate, obligations,
                    log) -> dict:
    grown = chain(opened.source, concrete.steps, device)
    first_key = opened.source.keys()[0]
    dtype = DTYPES[options.dtype] if options.dtype else None
    check_dtype = dtype or opened.source.dtype(first_key)
    window = shortest_window(opened.config) if opened.config else None
    tokens = tokens_for(plan.before, spec.seed, device, window)
    metadata = {"format": "pt", "specgrow_spec_sha256": spec.sha256}
    config = grown_config(opened.config, plan.after, layer_origins(spec)) if opened.config is not None else None
    optimizer = None
    if options.optimizer is not None:  # grown before the weights: a mismatch fails fast
        from specgrow.grow import grow_optimizer_file

        optimizer = grow_optimizer_file(options.optimizer, opened.family, opened.prefix, plan.before, plan.after,
                                        concrete.steps, opened.config, config)
    sources = {"the input": options.input, "the optimizer state": options.optimizer}
    with atomic_directory(options.output, options.overwrite, sources) as tmp, \
            ThreadPoolExecutor(max_workers=1) as pool:
        reference_future = opened.reference_logits(tokens, pool)  # overlaps with writing
        output_hashes = write_checkpoint(tmp, opened.family, opened.prefix, plan.after, grown, dtype=dtype,
                                         max_shard_bytes=max_shard, metadata=metadata, quiet=options.quiet,
                                         sync=False)
        reference = reference_future.result()
        synced = pool.submit(fsync_files, [tmp / name for name in output_hashes])  # while the check reads
        with CheckpointFiles(tmp) as written:
            after = streamed_logits(plan.after, RoleSource(written, opened.family, plan.after, str(tmp)), tokens)
        result = compare(reference, after, check_dtype, spec.seed)
        synced.result()
        if not result.passed:
            index = _first_failing_step(plan, concrete, opened.source, tokens, reference, check_dtype, spec.seed,
                                        device)
            mark = spec.step_marks[index]
            message = (f"{spec.step_path(index)} ({plan.steps[index].kind}) changes the function: numeric check failed, "
                       f"{result.summary()}")
            if not options.allow_unproved:
                raise NumericCheckError(message + "; nothing written (--allow-unproved writes it anyway)",
                                        path=spec.path, line=mark.line, column=mark.column)
            log(f"{spec.path}:{mark.line}:{mark.column}: warning: {message}; writing it (--allow-unproved)")
        if config is not None:
            if dtype is not None:  # transformers 5 reads "dtype", 4.x "torch_dtype"
                config.update({key: options.dtype for key in ("dtype", "torch_dtype") if key in config or key == "dtype"})
            copied = copy_side_files(opened.path, tmp)
        else:
            config, copied = plan.after.to_config(), []
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / CERTIFICATE).write_text(certificate, encoding="utf-8")
        optimizer_record = None
        if optimizer is not None:
            from specgrow.grow import OPTIMIZER_FILE

            torch.save(optimizer, tmp / OPTIMIZER_FILE)
            optimizer_record = {"input": {"path": options.optimizer, "sha256": sha256_file(Path(options.optimizer))},
                                "output": {"file": OPTIMIZER_FILE, "sha256": sha256_file(tmp / OPTIMIZER_FILE)}}
        manifest = {
            "specgrow": __version__,
            "spec": {"path": spec.path, "sha256": spec.sha256},
            "seed": spec.seed,
            "input": {key: _resolved(value) for key, value in opened.manifest.items()},
            "device": str(device),
            "versions": _versions(),
            "proof": {
                "verdict": cert.verdict.value,
                "obligations": obligations,
                "certificate_sha256": hashlib.sha256(certificate.encode("utf-8")).hexdigest(),
            },
            "numeric_check": result.as_dict(),
            "parameters": {"before": plan.before.parameter_count(), "after": plan.after.parameter_count()},
            "output": {"files": output_hashes, "copied": copied},
        }
        if optimizer_record is not None:
            manifest["optimizer"] = optimizer_record
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"grew {plan.before.parameter_count():,} -> {plan.after.parameter_count():,} parameters "
        f"in {len(plan.steps)} step(s) on {device}; proof {cert.verdict.value}; "
        f"numeric check {'passed' if result.passed else 'FAILED'}: {result.summary()}; wrote {options.output}")
    return manifest


def _hash_in_background(paths) -> dict:
    """``{file name: future sha256}``, hashed on a worker thread while the main thread works
    (files `specgrow.lower.hashes.prefetch` started on are not hashed twice)."""
    return {p.name: sha256_later(p) for p in paths}


def _resolved(value):
    return {name: future.result() for name, future in value.items()} if isinstance(value, dict) else value


def _shard_bytes(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_size(text)
    except ValueError as exc:
        raise InputError(f"--max-shard-size: {exc}", path="--max-shard-size") from None


def _versions() -> dict:
    import safetensors
    import sympy

    return {"python": platform.python_version(), "torch": torch.__version__,
            "sympy": sympy.__version__, "safetensors": safetensors.__version__}


def _first_failing_step(plan, concrete, source, tokens, reference, dtype, seed, device) -> int:
    grown = chain(source, concrete.steps, device)  # one chain: every step's state shares its caches
    for index, step in enumerate(plan.steps):
        if not compare(reference, streamed_logits(step.after, grown.after(index + 1), tokens), dtype, seed).passed:
            return index
    return len(plan.steps) - 1
