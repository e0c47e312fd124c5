"""What ``specgrow apply`` needs of memory, disk and device memory, checked before it starts.

The estimates count what `specgrow.pipeline.apply` holds: the reference model it builds in
memory when there is no ``--input`` (float32, plus the largest tensor while it is drawn);
the stored tensors read or written whole (GPT-2's fused and Conv1D tensors: the largest input
one, once per reader, and the largest output one, assembled, transposed and queued); a few
bands of rows for the streaming itself; and a grown optimizer state. On disk: the grown
model's tensors (and optimizer state). On a GPU: the bands, the tensors assembled whole and
the logits of the numeric check. What is available comes from the operating system:
``MemAvailable`` of ``/proc/meminfo`` (else the free pages), capped by a cgroup v2
``memory.max``; the free space of the output's file system; ``torch.cuda.mem_get_info``.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import torch

from specgrow.arch import grown_family, stored_shape
from specgrow.errors import InputError

BAND = 8 << 20  # bytes of one band of rows (`specgrow.lower.stream.bands`)
BANDS = 4  # bands held at once: computed, queued to the writer, written, read by the check
TOKENS = 2 * 16  # the numeric check's tokens (`specgrow.lower.numeric.tokens_for`)
MEMINFO = Path("/proc/meminfo")
CGROUP = Path("/sys/fs/cgroup")


def check_apply(where: str, plan, family, options, device: torch.device, dtype_of, source=None) -> None:
    """Raise a one-line `InputError` (at ``where``) when the growth needs more memory, disk or
    device memory than is available. ``dtype_of`` gives a grown tensor's dtype; ``source`` is
    the input checkpoint (None: the reference model, built in memory from the spec's seed)."""
    out_dtype = (lambda key: getattr(torch, options.dtype)) if options.dtype else dtype_of
    label = "the reference model" if source is None else "the growth"
    _require(where, f"{label} needs", memory_needed(plan, family, out_dtype, source, options.optimizer),
             "of memory", available_memory(), "is available")
    _require(where, "the grown model needs", disk_needed(plan, family, out_dtype, options.optimizer),
             f"of disk space for '{options.output}'", free_disk(options.output), "is free there")
    if device.type == "cuda":
        _require(where, f"{label} needs", device_needed(plan, family, out_dtype), f"of memory on {device}",
                 free_device_memory(device), "is free")


def _require(where: str, what: str, need: int, resource: str, have: int | None, verb: str) -> None:
    if have is not None and need > have:
        raise InputError(f"{what} {size(need)} {resource}, {size(have)} {verb}", path=where)


# ------------------------------------------------------------------ estimates
def memory_needed(plan, family, dtype_of, source=None, optimizer: str | None = None) -> int:
    """Bytes of host memory: the reference model (``source`` None) or the input tensors read
    whole, the output tensors assembled whole, the streamed bands and a grown optimizer state."""
    if source is None:
        held = reference_bytes(plan.before) + max(_role_bytes(plan.before).values(), default=0)
    else:
        held = 2 * whole_bytes(family, plan.before, source.dtype)  # the growth's reader and the check's
    loaded, grown = _optimizer_bytes(plan, optimizer)
    return held + 3 * whole_bytes(grown_family(family, plan.after), plan.after, dtype_of) \
        + streaming_bytes(plan.after, dtype_of) + loaded + 2 * grown


def disk_needed(plan, family, dtype_of, optimizer: str | None = None) -> int:
    """Bytes the output's tensors take on disk (headers, config and certificate aside)."""
    return stored_bytes(grown_family(family, plan.after), plan.after, dtype_of) + _optimizer_bytes(plan, optimizer)[1]


def device_needed(plan, family, dtype_of) -> int:
    """Bytes of GPU memory: the streamed bands, the tensors assembled whole and the check's logits."""
    logits = 2 * TOKENS * max(plan.before.vocab, plan.after.vocab) * 4
    return streaming_bytes(plan.after, dtype_of) + 3 * whole_bytes(grown_family(family, plan.after), plan.after,
                                                                   dtype_of) + logits


def reference_bytes(shape) -> int:
    """Bytes of the reference model of ``shape`` (float32, as `specgrow.models.reference.random_state`)."""
    return sum(_role_bytes(shape).values())


def stored_bytes(family, shape, dtype_of) -> int:
    """Bytes of every tensor a ``family`` checkpoint of ``shape`` stores."""
    return sum(_stored_bytes(stored, shape, layer, dtype_of) for _, stored, layer in family.stored_tensors(shape, ""))


def whole_bytes(family, shape, dtype_of) -> int:
    """Bytes of the largest stored tensor read or written whole (fused or Conv1D; not experts, which are
    read and written expert by expert), 0 if none."""
    return max((_stored_bytes(stored, shape, layer, dtype_of) for _, stored, layer in family.stored_tensors(shape, "")
                if (stored.transposed or len(stored.roles) > 1) and not stored.per_expert), default=0)


def streaming_bytes(shape, dtype_of) -> int:
    """Bytes of the bands held at once: `BANDS` bands of `BAND` bytes, or of the widest row."""
    row = max((max(1, math.prod(dims[1:])) * dtype_of(key).itemsize for key, dims in shape.tensor_shapes().items()),
              default=0)
    return BANDS * max(BAND, row)


def _stored_bytes(stored, shape, layer, dtype_of) -> int:
    return math.prod(stored_shape(stored, shape, layer)) * dtype_of((stored.roles[0], layer)).itemsize


def _role_bytes(shape) -> dict:
    return {key: math.prod(dims) * 4 for key, dims in shape.tensor_shapes().items()}


def _optimizer_bytes(plan, path: str | None) -> tuple[int, int]:
    """(bytes of the optimizer state file, bytes of its grown state), scaled by the parameter counts."""
    if path is None or not Path(path).is_file():
        return 0, 0
    loaded = Path(path).stat().st_size
    return loaded, loaded * plan.after.parameter_count() // max(1, plan.before.parameter_count())


# ------------------------------------------------------------------ what is available
def available_memory() -> int | None:
    """Bytes of memory this process may still take: ``MemAvailable`` (else the free pages),
    capped by the room under a cgroup v2 ``memory.max``; None when unknown."""
    found = _meminfo_available()
    if found is None:
        found = _free_pages()
    room = _cgroup_room()
    if room is None:
        return found
    return room if found is None else min(found, room)


def free_disk(output: str) -> int:
    """Free bytes on the file system the output folder goes to (its nearest existing folder)."""
    folder = Path(output).absolute().parent
    while not folder.exists():
        folder = folder.parent
    return shutil.disk_usage(folder).free


def free_device_memory(device: torch.device) -> int:
    return torch.cuda.mem_get_info(device)[0]


def _meminfo_available() -> int | None:
    try:
        lines = MEMINFO.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024  # kB
    return None


def _free_pages() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_room() -> int | None:
    """``memory.max`` less ``memory.current`` of the cgroup v2 root this process sees; None without a limit."""
    try:
        limit = (CGROUP / "memory.max").read_text().strip()
    except OSError:
        return None
    if limit == "max":
        return None
    try:
        used = int((CGROUP / "memory.current").read_text())
    except (OSError, ValueError):
        used = 0
    return max(0, int(limit) - used)


def size(count: int) -> str:
    """``count`` bytes for a person: ``412.3 GB``, ``8.4 MB``, ``512 bytes`` (powers of 1000)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"
