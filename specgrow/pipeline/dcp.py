"""``specgrow apply`` into a torch.distributed checkpoint (DCP), run by every output rank.

Rank 0 proves the spec; every rank opens the input (a DCP folder is read chunk by chunk,
`specgrow.lower.dcp_read`) and saves its even ``Shard(0)`` share of rows of every grown
tensor, band by band (`specgrow.lower.dcp_write`); rank 0 then compares the logits of the
input with those of the files written, read back band by band (while they are hashed), and
adds the record (`specgrow.pipeline.record`: spec, certificate, lineage, manifest) before the
folder is renamed into place. An error on any rank is raised on
every rank, and the output folder appears complete, or not at all.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from specgrow.arch import grown_family
from specgrow.errors import InputError
from specgrow.lower.checkpoint import RoleSource, atomic_directory
from specgrow.lower.dcp_read import DcpFiles, is_dcp
from specgrow.lower.dcp_write import BAND_BYTES, Ranks, band_planner, meta_state, save_state, stored_rows
from specgrow.lower.hashes import folder_files, hash_in_background
from specgrow.lower.inputs import open_dcp
from specgrow.lower.numeric import compare, streamed_logits, tokens_for
from specgrow.lower.stream import chain
from specgrow.pipeline.apply import DTYPES, ApplyOptions, open_within_budget, resolve_device
from specgrow.pipeline.check import first_failing_step, refuse_or_warn
from specgrow.pipeline.proof import prove, summary
from specgrow.pipeline.record import build_manifest, python_call, write_record


def grow_dcp(spec, input, output, world_size_out: int | None = None, *, device: str = "cpu",
             dtype: str | None = None, allow_unproved: bool = False, overwrite: bool = False,
             check: bool = True, band_bytes: int = BAND_BYTES, log=print,
             invocation: dict | None = None) -> dict | None:
    """Grow ``input`` by ``spec`` into a DCP folder ``output``; run by every output rank.

    ``spec`` is a `Spec` or a spec file. ``input`` is anything ``specgrow apply`` reads, a DCP
    folder included (``None``: the reference model from the spec's seed). Ranks are those of
    the default process group (``world_size_out`` must equal its size), or this process alone
    when none is initialized. Rank 0 proves the spec and, unless ``check`` is false, compares
    the logits of the input with those of the files written (read back band by band); the
    output folder appears complete, or not at all. Returns the manifest on rank 0, which records
    ``invocation`` (`specgrow.pipeline.record.command_line`), by default this call.
    """
    from specgrow.spec import Spec, load_spec
    from specgrow.transforms import compile_spec

    invocation = invocation or python_call(
        "specgrow.pipeline.dcp.grow_dcp", spec=getattr(spec, "path", spec), input=input, output=output,
        world_size_out=world_size_out, device=device, dtype=dtype, allow_unproved=allow_unproved,
        overwrite=overwrite, check=check, band_bytes=band_bytes)
    ranks = Ranks()
    if world_size_out is not None and world_size_out != ranks.world:
        raise InputError(f"world_size_out {world_size_out}: this process group has {ranks.world} rank(s) "
                         "(start one process per output rank, e.g. with torchrun)", path="grow_dcp")
    log = log if ranks.rank == 0 and log is not None else (lambda *_: None)
    spec = ranks.run(lambda: spec if isinstance(spec, Spec) else load_spec(spec))
    plan = ranks.run(lambda: compile_spec(spec))
    proof = ranks.run(lambda: summary(prove(spec, allow_unproved, log)), on_rank0=True)
    dev = ranks.run(lambda: resolve_device(device))
    out_dtype = DTYPES[dtype] if dtype else None
    budget = ApplyOptions(output=str(output), input=input, dtype=dtype)  # what the up-front checks read
    opened = ranks.run(lambda: open_dcp(spec, plan, input, hash_files=ranks.rank == 0)
                       if input is not None and is_dcp(input) else
                       open_within_budget(spec, plan, plan.concrete(), budget, dev))
    grown = chain(opened.source, plan.concrete().steps, dev)
    wrapper = opened.files.wrapper if isinstance(opened.files, DcpFiles) else ""
    family = grown_family(opened.family, plan.after)  # the input's, or the MoE family upcycling makes it
    stored = {wrapper + name: (entry, layer) for name, entry, layer in family.stored_tensors(plan.after, opened.prefix)}

    def pull(fqn: str, start: int, stop: int) -> torch.Tensor:
        entry, layer = stored[fqn]
        rows = stored_rows(grown, entry, layer, start, stop, plan.after)
        return rows.to(device="cpu", dtype=out_dtype or rows.dtype).contiguous()

    manifest, result, error = None, None, None
    try:
        state = ranks.run(lambda: meta_state(stored, plan.after, grown, out_dtype, ranks))
        with contextlib.ExitStack() as stack:
            tmp = ranks.run(lambda: stack.enter_context(atomic_directory(output, overwrite, {"the input": input})),
                            on_rank0=True)
            ranks.run(lambda: save_state(state, tmp, band_planner(pull, band_bytes), ranks))
            written = ranks.run(lambda: hash_in_background(folder_files(tmp)[0]) if ranks.rank == 0 else {})
            if check:
                result, index = ranks.run(lambda: _check(spec, plan, opened, family, tmp, dev, out_dtype),
                                          on_rank0=True)
                if not result.passed:
                    refuse_or_warn(spec, plan, index, result, allow_unproved, log)
            if ranks.rank == 0:
                manifest = build_manifest(spec, plan, opened, dev, proof, result,
                                          {"format": "dcp", "world_size": ranks.world, "model": plan.after.to_config()},
                                          invocation)
            ranks.run(lambda: write_record(tmp, spec, proof, manifest, input, written) if ranks.rank == 0 else None)
    except Exception as exc:  # raised on every rank alike, or by rank 0's rename
        error = exc
    finally:
        opened.close()
    ranks.agree(error)  # after this, the folder is in place (rank 0 renamed it)
    check_line = f"numeric check {'passed' if result.passed else 'FAILED'}: {result.summary()}; " if result else ""
    log(f"grew {plan.before.parameter_count():,} -> {plan.after.parameter_count():,} parameters in "
        f"{len(plan.steps)} step(s) on {ranks.world} rank(s); proof {proof['verdict']}; {check_line}wrote {output}")
    return manifest


def _check(spec, plan, opened, family, folder: Path, dev, out_dtype):
    """Rank 0: the input's logits against those of the DCP files just written; on a failure,
    also the index of the first step that changes the function."""
    tokens = tokens_for(plan.before, spec.seed, dev)
    reference = streamed_logits(plan.before, opened.source, tokens)
    with DcpFiles(folder, family) as written:
        after = streamed_logits(plan.after, RoleSource(written, family, plan.after, str(folder)), tokens)
    dtype = out_dtype or opened.source.dtype(opened.source.keys()[0])
    result = compare(reference, after, dtype, spec.seed)
    index = None if result.passed else first_failing_step(
        plan, plan.concrete(), opened.source, tokens, reference, dtype, spec.seed, dev)
    return result, index


def grow_dcp_from_env(spec, input, output, **options) -> dict | None:
    """`grow_dcp` under ``torchrun``: a gloo process group from ``WORLD_SIZE``/``RANK`` when
    there are several ranks (and none is initialized yet), destroyed afterwards."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    started = world > 1 and not dist.is_initialized()
    if started:
        dist.init_process_group("gloo")
    try:
        return grow_dcp(spec, input, output, world, **options)
    finally:
        if started:
            dist.destroy_process_group()
