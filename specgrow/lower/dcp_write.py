"""Write a torch.distributed checkpoint (DCP) across ranks, band by band.

Each of N ranks (or one process alone) computes only its even ``Shard(0)`` share of rows of
each grown tensor, band by band, and the ranks save them together with ``dcp.save`` as
DTensors on a 1-D CPU mesh, so a later ``dcp.load`` reshards them into any layout. The
tensors handed to ``dcp.save`` are shape-only stand-ins (`meta_state`); `band_planner`
splits each write item into row bands and computes a band only when the writer asks for it,
so no rank holds a whole tensor (GPT-2's Conv1D tensors are computed a band of their roles at
a time). `Ranks` runs a step on every rank (or on rank 0) and raises the first rank's error on
all of them.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import torch

from specgrow.arch import Stored, segments_of, stored_shape
from specgrow.errors import CheckpointError, SpecgrowError
from specgrow.lower.stream import bands

BAND_BYTES = 64 << 20  # rows of one output write item (one file each), at most


def shard_rows(rows: int, world: int, rank: int) -> tuple[int, int]:
    """The rows ``[start, stop)`` that ``Shard(0)`` gives ``rank`` of ``world`` (torch.chunk sizes).

    >>> [shard_rows(10, 3, r) for r in range(3)]
    [(0, 4), (4, 8), (8, 10)]
    """
    size = -(-rows // world)
    start = min(rows, rank * size)
    return start, min(rows, start + size)


def stored_rows(source, stored: Stored, layer: int | None, start: int, stop: int, shape) -> torch.Tensor:
    """Rows ``[start, stop)`` of a stored tensor of ``shape`` (the grown `ModelShape`): its roles' rows in
    stored order (`specgrow.arch.segments_of`), transposed if Conv1D; of packed experts (`Stored.axis` 1),
    experts ``[start, stop)`` with each role's columns side by side."""
    keys = [(role, layer) for role in stored.roles]
    segments = segments_of(stored, shape, layer)
    if stored.axis:
        return torch.cat([source.rows((role, layer), start, stop)[:, a:b] for role, a, b in segments], dim=1)
    if stored.transposed:  # stored rows are the roles' columns: read every role a band at a time
        columns = {key: torch.cat([source.rows(key, a, b)[:, start:stop] for a, b in bands(source, key)])
                   for key in keys}
        return torch.cat([columns[(role, layer)][a:b] for role, a, b in segments]).T
    parts, offset = [], 0
    for role, first, end in segments:
        low, high = max(start, offset), min(stop, offset + end - first)
        if low < high:
            parts.append(source.rows((role, layer), first + low - offset, first + high - offset))
        offset += end - first
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def band_planner(pull, band_bytes: int):
    """A `DefaultSavePlanner` that splits each tensor's write item into row bands and computes
    each band only when the writer asks for it (``pull(fqn, start, stop)``)."""
    from torch.distributed.checkpoint import DefaultSavePlanner
    from torch.distributed.checkpoint.planner import WriteItemType

    def split(item):
        if item.type == WriteItemType.BYTE_IO or not item.tensor_data.size:
            return [item]
        chunk, data = item.tensor_data.chunk, item.tensor_data
        row_bytes = data.properties.dtype.itemsize * max(1, torch.Size(chunk.sizes[1:]).numel())
        step = max(1, band_bytes // row_bytes)
        out = []
        for a in range(0, chunk.sizes[0], step):
            b = min(chunk.sizes[0], a + step)
            band = dataclasses.replace(chunk, offsets=torch.Size((chunk.offsets[0] + a,) + tuple(chunk.offsets[1:])),
                                       sizes=torch.Size((b - a,) + tuple(chunk.sizes[1:])))
            out.append(dataclasses.replace(item, index=dataclasses.replace(item.index, offset=band.offsets),
                                           type=WriteItemType.SHARD,
                                           tensor_data=dataclasses.replace(data, chunk=band)))
        return out

    class GrowPlanner(DefaultSavePlanner):
        def create_local_plan(self):
            plan = super().create_local_plan()
            self.plan = dataclasses.replace(plan, items=[band for item in plan.items for band in split(item)])
            return self.plan

        def resolve_data(self, write_item):
            chunk = write_item.tensor_data.chunk
            assert not any(chunk.offsets[1:]), "bands span every column"
            return pull(write_item.index.fqn, chunk.offsets[0], chunk.offsets[0] + chunk.sizes[0])

    return GrowPlanner()


class Ranks:
    """This process's place among the ranks (rank 0 of 1 without a process group)."""

    def __init__(self):
        import torch.distributed as dist

        self.dist = dist if dist.is_available() and dist.is_initialized() else None
        self.rank = self.dist.get_rank() if self.dist else 0
        self.world = self.dist.get_world_size() if self.dist else 1

    def agree(self, error: BaseException | None) -> None:
        """Raise on every rank the first rank's error, if any rank had one (every rank calls it)."""
        if self.dist is None:
            if error is not None:
                raise error
            return
        gathered = [None] * self.world
        mine = error if error is None or isinstance(error, SpecgrowError) else f"{type(error).__name__}: {error}"
        self.dist.all_gather_object(gathered, mine)
        if error is not None:
            raise error
        for rank, other in enumerate(gathered):
            if isinstance(other, SpecgrowError):
                raise other
            if other is not None:
                raise CheckpointError(f"rank {rank} failed: {' '.join(str(other).split())[:300]}", path="grow_dcp")

    def run(self, fn, on_rank0: bool = False):
        """``fn()`` on every rank (or on rank 0 only, its result sent to all); errors as `agree`."""
        result, error = None, None
        if not on_rank0 or self.rank == 0:
            try:
                result = fn()
            except Exception as exc:
                error = exc
        self.agree(error)
        if on_rank0 and self.dist is not None:
            box = [result]
            self.dist.broadcast_object_list(box, src=0)
            result = box[0]
        return result


def meta_state(stored: dict, shape, grown, dtype, ranks: Ranks) -> dict:
    """Shape-only stand-ins for the grown tensors: this rank's ``Shard(0)`` DTensors (plain
    meta tensors without a process group); the planner computes their data band by band."""
    state, mesh = {}, None
    if ranks.dist is not None:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import DTensor, Shard

        mesh = init_device_mesh("cpu", (ranks.world,))
    for fqn, (entry, layer) in stored.items():
        full = stored_shape(entry, shape, layer)
        out_dtype = dtype or grown.dtype((entry.roles[0], layer))
        if mesh is None:
            state[fqn] = torch.empty(full, dtype=out_dtype, device="meta")
            continue
        start, stop = shard_rows(full[0], ranks.world, ranks.rank)
        local = torch.empty((stop - start,) + tuple(full[1:]), dtype=out_dtype, device="meta")
        state[fqn] = DTensor.from_local(local, mesh, [Shard(0)], run_check=False, shape=torch.Size(full),
                                        stride=torch.empty(full, device="meta").stride())
    return state


def save_state(state: dict, folder: Path, planner, ranks: Ranks) -> None:
    """``dcp.save`` of ``state`` into ``folder`` by every rank; a failure is its first cause, in one line."""
    import torch.distributed.checkpoint as dcp

    writer = dcp.FileSystemWriter(str(folder), single_file_per_rank=False)  # one file per band: bounded memory
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*single process.*")
            dcp.save(state, storage_writer=writer, planner=planner, no_dist=ranks.dist is None)
    except BaseException as exc:  # CheckpointException is a BaseException: show the first rank's cause
        failures = getattr(exc, "failures", None)
        if failures:
            cause = next(iter(failures.values()))
            cause = cause[0] if isinstance(cause, tuple) else cause
            if isinstance(cause, SpecgrowError):
                raise cause from None
            raise CheckpointError(f"dcp.save failed: {type(cause).__name__}: {cause}", path=str(folder)) from None
        raise
