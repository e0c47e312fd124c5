"""``specgrow apply`` into safetensors: prove, open, grow, write, check, record.

Order: check the input folder's config.json (types and ranges); prove the spec; find the
memory, disk and device memory the growth needs; open the input (`specgrow.lower.inputs`:
every tensor's name, shape and dtype checked against the spec); grow the optimizer state
first, if any, so that a mismatch fails fast; stream the grown tensors into a temporary
folder (one band of rows at a time, each file hashed as it is written, each input band
checked finite); compare the logits of the input and of the files just written, while they
are fsynced; only then add the config, the side files, the record (`specgrow.pipeline.record`:
spec, certificate, lineage, manifest) and rename the folder into place. Anything not PROVED,
or a failed numeric check, writes nothing unless ``allow_unproved``.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from specgrow.arch import REFERENCE, grown_family
from specgrow.arch.hf import grown_config, layer_origins, shortest_window
from specgrow.errors import InputError
from specgrow.lower.budget import check_apply
from specgrow.lower.checkpoint import RoleSource, atomic_directory, copy_side_files, write_checkpoint
from specgrow.lower.hashes import hash_in_background, one_malloc_arena, sha256_later
from specgrow.lower.inputs import Opened, hf_config, open_input
from specgrow.lower.numeric import compare, streamed_logits, tokens_for
from specgrow.lower.optimizer import OPTIMIZER_FILE, grow_optimizer_file
from specgrow.lower.safetensors_io import CheckpointFiles, fsync_files, parse_size
from specgrow.lower.stream import chain
from specgrow.pipeline.check import first_failing_step, refuse_or_warn
from specgrow.pipeline.proof import prove, summary
from specgrow.pipeline.record import RECORD_FILES, build_manifest, python_call, write_record

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available", path="--device")
    return torch.device(name)


def apply_plan(spec, plan, options: ApplyOptions, log=print, invocation: dict | None = None) -> dict:
    """Prove, grow, write, check and rename into place; returns the manifest that was written.

    ``invocation`` is how the growth was asked for (`specgrow.pipeline.record.command_line`);
    by default this call, `specgrow.pipeline.record.python_call`."""
    invocation = invocation or python_call("specgrow.pipeline.apply.apply_plan", spec=spec.path, options=options)
    max_shard = _shard_bytes(options.max_shard_size)
    one_malloc_arena()  # before any worker thread starts
    if options.input is not None:
        hf_config(options.input)  # a wrong config.json is reported before the proof runs
    cert = prove(spec, options.allow_unproved, log)
    device = resolve_device(options.device)
    concrete = plan.concrete()
    opened = open_within_budget(spec, plan, concrete, options, device)
    try:
        return _grow_and_write(spec, plan, concrete, opened, options, device, max_shard, summary(cert), log,
                               invocation)
    finally:
        opened.close()


def open_within_budget(spec, plan, concrete, options, device) -> Opened:
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


def _grow_and_write(spec, plan, concrete, opened: Opened, options, device, max_shard, proof: dict, log,
                    invocation: dict) -> dict:
    grown = chain(opened.source, concrete.steps, device)
    family = grown_family(opened.family, plan.after)  # the input's, or the MoE family upcycling makes it
    first_key = opened.source.keys()[0]
    dtype = DTYPES[options.dtype] if options.dtype else None
    check_dtype = dtype or opened.source.dtype(first_key)
    window = shortest_window(opened.config) if opened.config else None
    tokens = tokens_for(plan.before, spec.seed, device, window)
    metadata = {"format": "pt", "specgrow_spec_sha256": spec.sha256}
    config = grown_config(opened.config, plan.after, layer_origins(spec)) if opened.config is not None else None
    optimizer = None
    if options.optimizer is not None:  # grown before the weights: a mismatch fails fast
        if family is not opened.family:
            raise InputError(f"--optimizer: growing optimizer state from {opened.family.name} into {family.name} "
                             "(upcycled experts) is not supported", path=options.optimizer)
        optimizer = grow_optimizer_file(options.optimizer, opened.family, opened.prefix, plan.before, plan.after,
                                        concrete.steps, opened.config, config)
    sources = {"the input": options.input, "the optimizer state": options.optimizer}
    with atomic_directory(options.output, options.overwrite, sources) as tmp, \
            ThreadPoolExecutor(max_workers=1) as pool:
        reference_future = opened.reference_logits(tokens, pool)  # overlaps with writing
        output_hashes = write_checkpoint(tmp, family, opened.prefix, plan.after, grown, dtype=dtype,
                                         max_shard_bytes=max_shard, metadata=metadata, quiet=options.quiet,
                                         sync=False)
        reference = reference_future.result()
        synced = pool.submit(fsync_files, [tmp / name for name in output_hashes])  # while the check reads
        with CheckpointFiles(tmp) as written:
            after = streamed_logits(plan.after, RoleSource(written, family, plan.after, str(tmp)), tokens)
        result = compare(reference, after, check_dtype, spec.seed)
        synced.result()
        if not result.passed:
            index = first_failing_step(plan, concrete, opened.source, tokens, reference, check_dtype, spec.seed,
                                       device)
            refuse_or_warn(spec, plan, index, result, options.allow_unproved, log)
        hashes = dict(output_hashes)  # the weights, hashed as they were written
        if config is not None:
            if dtype is not None:  # transformers 5 reads "dtype", 4.x "torch_dtype"
                config.update({key: options.dtype for key in ("dtype", "torch_dtype") if key in config or key == "dtype"})
            copied = copy_side_files(opened.path, tmp, RECORD_FILES)
            hashes.update(hash_in_background({name: tmp / name for name in copied}))  # while the rest is written
        else:
            config, copied = plan.after.to_config(), []
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        manifest = build_manifest(spec, plan, opened, device, proof, result, {"copied": copied}, invocation)
        if optimizer is not None:
            torch.save(optimizer, tmp / OPTIMIZER_FILE)
            hashes[OPTIMIZER_FILE] = sha256_later(tmp / OPTIMIZER_FILE)
            manifest["optimizer"] = {
                "input": {"path": options.optimizer, "sha256": sha256_later(options.optimizer).result()},
                "output": {"file": OPTIMIZER_FILE, "sha256": hashes[OPTIMIZER_FILE].result()}}
        write_record(tmp, spec, proof, manifest, opened.path, hashes)
    log(f"grew {plan.before.parameter_count():,} -> {plan.after.parameter_count():,} parameters "
        f"in {len(plan.steps)} step(s) on {device}; proof {proof['verdict']}; "
        f"numeric check {'passed' if result.passed else 'FAILED'}: {result.summary()}; wrote {options.output}")
    return manifest


def _shard_bytes(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_size(text)
    except ValueError as exc:
        raise InputError(f"--max-shard-size: {exc}", path="--max-shard-size") from None
