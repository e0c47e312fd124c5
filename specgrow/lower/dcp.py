"""torch.distributed checkpoints (DCP): read them chunk by chunk, grow them across ranks.

A DCP folder (written by ``torch.distributed.checkpoint.save``, e.g. from FSDP2/DTensor
training) holds ``.metadata`` and ``*.distcp`` files. The metadata lists, for every tensor
(its model FQN), the chunks stored by the ranks that saved it (offsets and sizes) and where
each chunk's bytes lie (file, offset, length); `FileSystemWriter`'s default serialization
writes every chunk with ``torch.save``.

`DcpFiles` serves ``read_rows(name, start, stop)`` by loading only the chunks that
intersect the rows asked for (``torch.load(weights_only=True)`` of each chunk's byte
range, one chunk cached), so `RoleSource` shows a DCP checkpoint as roles like any other
input, by the family of the spec's ``model.arch``. `grow_dcp` runs on each of N ranks (or
alone): each rank computes only its even ``Shard(0)`` share of rows of each grown tensor,
band by band, through `chain` of the plan's steps, and the ranks save them together with
``dcp.save`` as DTensors on a 1-D CPU mesh, so a later ``dcp.load`` reshards them into any
layout. No rank holds a whole tensor: memory holds about one input chunk and one output
band (GPT-2's Conv1D tensors are computed a band of their roles at a time).

**Trust.** ``.metadata`` is a Python pickle; specgrow unpickles it with `MetadataUnpickler`,
which builds only DCP's own metadata classes, torch dtypes and sizes, and pure paths, so no
code named in the file runs (torch's ``FileSystemReader`` would unpickle anything). Chunk
payloads are loaded with ``weights_only=True``. ``.metadata`` and chunk files that are
symbolic links out of the folder are refused.

Not handled: optimizer entries (top-level ``optim.``/``optimizer.``) and non-tensor entries
are left out of the output, which holds the model's weights only; chunks written with
storage extensions (compression) or the safetensors serialization are refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import os
import pickle
import warnings
from pathlib import Path, PurePosixPath, PureWindowsPath

import torch

from specgrow.arch import FAMILIES, Family, Stored
from specgrow.errors import CheckpointError, InputError, NumericCheckError, SpecgrowError
from specgrow.lower.checkpoint import RoleSource, atomic_directory
from specgrow.lower.hashes import sha256_file
from specgrow.lower.links import refuse_outside
from specgrow.lower.safetensors_io import _check_rows, _reason, _Tensors, torch_load
from specgrow.lower.stream import bands, chain

METADATA = ".metadata"
BAND_BYTES = 64 << 20  # rows of one output write item (one file each), at most
IGNORED_TOP = ("optim", "optimizer")  # top-level keys of optimizer state in a training checkpoint
WRAPPERS = ("", "model.")  # where the model's FQNs sit: top level, or under {"model": ...}
METADATA_CLASSES = ("Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
                    "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING")
PATHS = {"PosixPath": PurePosixPath, "PurePosixPath": PurePosixPath,  # StorageMeta.checkpoint_id
         "WindowsPath": PureWindowsPath, "PureWindowsPath": PureWindowsPath}


def is_dcp(path) -> bool:
    """Whether ``path`` is a DCP folder: it has ``.metadata`` or ``*.distcp`` files."""
    folder = Path(path)
    return folder.is_dir() and ((folder / METADATA).is_file() or any(folder.glob("*.distcp")))


class MetadataUnpickler(pickle.Unpickler):
    """Unpickle a DCP ``.metadata``, admitting only the globals such a file names.

    Those are the classes of ``torch.distributed.checkpoint.metadata``, the filesystem
    writer's ``_StorageInfo``, torch dtypes, ``torch.Size``, ``torch.serialization._get_layout``
    (a lookup among torch's layouts) and paths, built as pure paths (never touched). Any other
    global, ``os.system`` or ``builtins.eval`` included, is refused before it is looked up,
    so nothing named in the file is imported or called.
    """

    def find_class(self, module: str, name: str):
        allowed = _metadata_globals().get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"refused global '{module}.{name}' (a DCP .metadata names only DCP's "
                                         "metadata classes, torch dtypes and sizes)")
        return allowed


@functools.lru_cache(maxsize=1)
def _metadata_globals() -> dict:
    """``{(module, name): object}`` that `MetadataUnpickler` admits."""
    import torch.distributed.checkpoint.filesystem as filesystem
    import torch.distributed.checkpoint.metadata as metadata

    allowed = {("torch.distributed.checkpoint.metadata", name): getattr(metadata, name)
               for name in METADATA_CLASSES if hasattr(metadata, name)}
    allowed[("torch.distributed.checkpoint.filesystem", "_StorageInfo")] = filesystem._StorageInfo
    allowed[("torch", "Size")] = torch.Size
    allowed[("torch.serialization", "_get_layout")] = torch.serialization._get_layout
    allowed.update({("torch", name): value for name, value in vars(torch).items() if isinstance(value, torch.dtype)})
    allowed.update({(module, name): cls for module in ("pathlib", "pathlib._local") for name, cls in PATHS.items()})
    return allowed


def read_metadata(folder: Path):
    """The ``Metadata`` of DCP folder ``folder``, unpickled by `MetadataUnpickler`; one-line errors."""
    path = folder / METADATA
    if not path.is_file():
        raise CheckpointError("DCP checkpoint without .metadata (an interrupted save?)", path=str(path))
    refuse_outside(path, folder)
    try:
        with open(path, "rb") as f:
            meta = MetadataUnpickler(f).load()
    except Exception as exc:  # corrupt, foreign or refused: one clear line, no traceback
        raise CheckpointError(f"cannot read DCP metadata: {_reason(exc)}", path=str(path)) from None
    _check_metadata(meta, str(path))
    return meta


def _check_metadata(meta, where: str) -> None:
    """`CheckpointError` unless ``meta`` has the structure `DcpFiles` reads (tensor entries checked)."""
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, Metadata, TensorStorageMetadata

    if not isinstance(meta, Metadata) or not isinstance(meta.state_dict_metadata, dict) \
            or not isinstance(meta.storage_data, dict):
        raise CheckpointError("not DCP metadata: expected a torch.distributed.checkpoint Metadata with "
                              "storage_data", path=where)
    for name, md in meta.state_dict_metadata.items():
        if not isinstance(name, str):
            raise CheckpointError(f"corrupt DCP metadata: entry name {name!r:.60} is not a string", path=where)
        if not isinstance(md, TensorStorageMetadata):
            continue
        dims = len(md.size) if _sizes(md.size) else -1
        if dims < 0 or not isinstance(getattr(md.properties, "dtype", None), torch.dtype) \
                or not isinstance(md.chunks, list) \
                or not all(isinstance(c, ChunkStorageMetadata) and _sizes(c.offsets, dims) and _sizes(c.sizes, dims)
                           for c in md.chunks):
            raise CheckpointError(f"corrupt DCP metadata: tensor '{name}' lacks a dtype, a size or chunks of "
                                  "its rank", path=where)
    for info in meta.storage_data.values():
        if not isinstance(getattr(info, "relative_path", None), str) \
                or not _sizes((getattr(info, "offset", None), getattr(info, "length", None))):
            raise CheckpointError("corrupt DCP metadata: a storage entry lacks a file name, offset or length",
                                  path=where)


def _sizes(values, count: int | None = None) -> bool:
    """Whether ``values`` is a tuple of ``count`` (any number if None) non-negative ints."""
    return isinstance(values, tuple) and (count is None or len(values) == count) \
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)


def shard_rows(rows: int, world: int, rank: int) -> tuple[int, int]:
    """The rows ``[start, stop)`` that ``Shard(0)`` gives ``rank`` of ``world`` (torch.chunk sizes).

    >>> [shard_rows(10, 3, r) for r in range(3)]
    [(0, 4), (4, 8), (8, 10)]
    """
    size = -(-rows // world)
    start = min(rows, rank * size)
    return start, min(rows, start + size)


class _Window(io.RawIOBase):
    """Bytes ``[offset, offset + length)`` of an open file, as a seekable file of their own."""

    def __init__(self, file, offset: int, length: int):
        super().__init__()
        self.file, self.offset, self.length, self.pos = file, offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.length}[whence]
        self.pos = max(0, base + pos)
        return self.pos

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), self.length - self.pos))
        self.file.seek(self.offset + self.pos)
        got = self.file.readinto(memoryview(buffer)[:count])
        self.pos += got
        return got


class DcpFiles(_Tensors):
    """The model tensors of a DCP folder, by name, read chunk by chunk.

    ``family`` picks where the model's names sit (top level, or under ``model.``); names
    are given without that wrapper. ``chunk_loads`` records ``(name, rows)`` of every chunk
    loaded (for tests and reports).
    """

    def __init__(self, path, family: Family | None = None):
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        self.path = Path(path)
        where = str(self.path / METADATA)
        meta = read_metadata(self.path)
        self.storage = meta.storage_data
        tensors = {name: md for name, md in meta.state_dict_metadata.items()
                   if isinstance(md, TensorStorageMetadata) and name.split(".")[0] not in IGNORED_TOP}
        self.wrapper = _wrapper(tensors, family) if family is not None else ""
        self._tensors = {name[len(self.wrapper):]: md for name, md in tensors.items() if name.startswith(self.wrapper)}
        self._files = sorted({getattr(info, "relative_path", "") for info in self.storage.values()})
        for name in self._files:
            if not name or Path(name).name != name or not (self.path / name).is_file():
                raise CheckpointError(f"chunk file '{name}' listed in the metadata is missing from {self.path}",
                                      path=where)
            refuse_outside(self.path / name, self.path)
        self._cached: tuple = (None, None)
        self.chunk_loads: list[tuple[str, int]] = []

    def names(self) -> list[str]:
        return list(self._tensors)

    def files(self) -> list[Path]:
        """The files read (metadata first, then each chunk file), e.g. for hashing."""
        return [self.path / METADATA] + [self.path / name for name in self._files]

    def _info(self, name: str) -> tuple:
        md = self._get(name)
        return md.properties.dtype, tuple(md.size)

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        dtype, shape = self._info(name)
        if not shape:
            return self._chunk(name, self._get(name).chunks[0])
        _check_rows(name, shape, start, stop)
        out = torch.empty((stop - start,) + shape[1:], dtype=dtype)
        covered = 0
        for chunk in self._get(name).chunks:
            first = chunk.offsets[0]
            low, high = max(start, first), min(stop, first + chunk.sizes[0])
            if low >= high:
                continue
            piece = self._chunk(name, chunk)[low - first:high - first]
            place = (slice(low - start, high - start),) + tuple(
                slice(o, o + s) for o, s in zip(chunk.offsets[1:], chunk.sizes[1:]))
            out[place] = piece
            covered += piece.numel()
        if covered != out.numel():
            raise CheckpointError(f"tensor '{name}': the DCP chunks do not cover rows {start}:{stop} exactly",
                                  path=str(self.path / METADATA))
        return out

    def close(self) -> None:
        self._cached = (None, None)

    def _get(self, name: str):
        if name not in self._tensors:
            raise CheckpointError(f"tensor '{name}' is missing from {self.path}", path=str(self.path / METADATA))
        return self._tensors[name]

    def _chunk(self, name: str, chunk) -> torch.Tensor:
        """One stored chunk, loaded from its byte range (the last one is kept for the next band)."""
        from torch.distributed.checkpoint.metadata import MetadataIndex

        key = (name, tuple(chunk.offsets))
        if self._cached[0] == key:
            return self._cached[1]
        self._cached = (None, None)
        fqn = self.wrapper + name
        where = f"{self.path / METADATA}"
        info = self.storage.get(MetadataIndex(fqn, chunk.offsets))
        if info is None:
            raise CheckpointError(f"tensor '{fqn}': no storage entry for its chunk at {tuple(chunk.offsets)}",
                                  path=where)
        if getattr(info, "transform_descriptors", None):
            raise CheckpointError(f"tensor '{fqn}' was saved with storage extensions "
                                  f"{info.transform_descriptors!r:.100}, which specgrow does not read", path=where)
        with open(self.path / info.relative_path, "rb") as f:
            window = _Window(f, info.offset, info.length)
            if window.read(2) != b"PK":
                raise CheckpointError(f"tensor '{fqn}': its chunk in '{info.relative_path}' is not torch.save data "
                                      "(only FileSystemWriter's default torch_save serialization is read)", path=where)
            window.seek(0)
            try:
                tensor = torch_load(io.BufferedReader(window))
            except Exception as exc:
                raise CheckpointError(f"tensor '{fqn}': cannot read its chunk in '{info.relative_path}': "
                                      f"{_reason(exc)}", path=where) from None
        dtype = self._get(name).properties.dtype
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != tuple(chunk.sizes) or tensor.dtype != dtype:
            found = (tuple(tensor.shape), tensor.dtype) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise CheckpointError(f"tensor '{fqn}': its chunk at {tuple(chunk.offsets)} holds {found}, the metadata "
                                  f"says {(tuple(chunk.sizes), dtype)}", path=where)
        self.chunk_loads.append((name, int(chunk.sizes[0]) if chunk.sizes else 1))
        self._cached = (key, tensor)
        return tensor


def _wrapper(tensors: dict, family: Family) -> str:
    """``""`` if the model's names are at the top level, ``"model."`` if under a ``model`` key."""
    for wrapper in WRAPPERS:
        inner = {name[len(wrapper):] for name in tensors if name.startswith(wrapper)}
        if any(family.name_of(family.globals[0], None, prefix) in inner for prefix in family.prefixes):
            return wrapper
    return ""


def open_dcp(spec, plan, path, hash_files: bool = True):
    """A DCP folder as an `Opened` input: roles of ``plan.before`` by the family of the spec's arch."""
    from specgrow.lower.apply import Opened, _hash_in_background

    family = FAMILIES[spec.model.arch]
    files = DcpFiles(path, family)
    try:
        source = RoleSource(files, family, plan.before, str(path), check_finite=True)
    except Exception:
        files.close()
        raise
    manifest = {"path": str(path), "format": "dcp", "model_key": files.wrapper.rstrip(".") or None}
    if hash_files:
        manifest["files"] = _hash_in_background(files.files())
    return Opened(source, family, source.prefix, None, manifest, plan.before, files, Path(path))


def stored_rows(source, stored: Stored, layer: int | None, start: int, stop: int) -> torch.Tensor:
    """Rows ``[start, stop)`` of a stored tensor (its roles stacked on axis 0, transposed if Conv1D)."""
    keys = [(role, layer) for role in stored.roles]
    if stored.transposed:  # stored rows are the roles' columns: read every role a band at a time
        parts = [torch.cat([source.rows(key, a, b)[:, start:stop] for a, b in bands(source, key)]) for key in keys]
        return torch.cat(parts).T
    parts, offset = [], 0
    for key in keys:
        rows = source.shape(key)[0]
        low, high = max(start, offset), min(stop, offset + rows)
        if low < high:
            parts.append(source.rows(key, low - offset, high - offset))
        offset += rows
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _save_planner(pull, band_bytes: int):
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


class _Ranks:
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


def grow_dcp(spec, input, output, world_size_out: int | None = None, *, device: str = "cpu",
             dtype: str | None = None, allow_unproved: bool = False, overwrite: bool = False,
             check: bool = True, band_bytes: int = BAND_BYTES, log=print) -> dict | None:
    """Grow ``input`` by ``spec`` into a DCP folder ``output``; run by every output rank.

    ``spec`` is a `Spec` or a spec file. ``input`` is anything ``specgrow apply`` reads, a DCP
    folder included (``None``: the reference model from the spec's seed). Ranks are those of
    the default process group (``world_size_out`` must equal its size), or this process alone
    when none is initialized. Rank 0 proves the spec and, unless ``check`` is false, compares
    the logits of the input with those of the files written (read back band by band); the
    output folder appears complete, or not at all. Returns the manifest on rank 0.
    """
    from specgrow.lower.apply import DTYPES, open_input, prove, resolve_device
    from specgrow.spec import Spec, load_spec
    from specgrow.transforms import compile_spec

    ranks = _Ranks()
    if world_size_out is not None and world_size_out != ranks.world:
        raise InputError(f"world_size_out {world_size_out}: this process group has {ranks.world} rank(s) "
                         "(start one process per output rank, e.g. with torchrun)", path="grow_dcp")
    log = log if ranks.rank == 0 and log is not None else (lambda *_: None)
    spec = ranks.run(lambda: spec if isinstance(spec, Spec) else load_spec(spec))
    plan = ranks.run(lambda: compile_spec(spec))
    cert = ranks.run(lambda: _certificate(prove(spec, allow_unproved, log)), on_rank0=True)
    dev = ranks.run(lambda: resolve_device(device))
    out_dtype = DTYPES[dtype] if dtype else None
    opened = ranks.run(lambda: open_dcp(spec, plan, input, hash_files=ranks.rank == 0)
                       if input is not None and is_dcp(input) else open_input(spec, plan, input))
    grown = chain(opened.source, plan.concrete().steps, dev)
    wrapper = opened.files.wrapper if isinstance(opened.files, DcpFiles) else ""
    stored = {wrapper + name: (entry, layer)
              for name, entry, layer in opened.family.stored_tensors(plan.after, opened.prefix)}

    def pull(fqn: str, start: int, stop: int) -> torch.Tensor:
        entry, layer = stored[fqn]
        rows = stored_rows(grown, entry, layer, start, stop)
        return rows.to(device="cpu", dtype=out_dtype or rows.dtype).contiguous()

    manifest, result, error = None, None, None
    try:
        state = ranks.run(lambda: _meta_state(stored, plan.after, grown, out_dtype, ranks))
        with contextlib.ExitStack() as stack:
            tmp = ranks.run(lambda: stack.enter_context(atomic_directory(output, overwrite, {"the input": input})),
                           on_rank0=True)
            ranks.run(lambda: _save(state, tmp, _save_planner(pull, band_bytes), ranks))
            if check:
                result, index = ranks.run(lambda: _check(spec, plan, opened, tmp, dev, out_dtype), on_rank0=True)
                if not result.passed:
                    mark = spec.step_marks[index]
                    message = (f"{spec.step_path(index)} ({plan.steps[index].kind}) changes the function: numeric "
                               f"check failed, {result.summary()}")
                    if not allow_unproved:
                        raise NumericCheckError(message + "; nothing written (--allow-unproved writes it anyway)",
                                                path=spec.path, line=mark.line, column=mark.column)
                    log(f"{spec.path}:{mark.line}:{mark.column}: warning: {message}; writing it (--allow-unproved)")
            if ranks.rank == 0:
                manifest = _manifest(spec, plan, opened, dev, ranks.world, result)
            ranks.run(lambda: _write_side_files(tmp, cert, manifest) if ranks.rank == 0 else None)
    except Exception as exc:  # raised on every rank alike, or by rank 0's rename
        error = exc
    finally:
        opened.close()
    ranks.agree(error)  # after this, the folder is in place (rank 0 renamed it)
    check_line = f"numeric check {'passed' if result.passed else 'FAILED'}: {result.summary()}; " if result else ""
    log(f"grew {plan.before.parameter_count():,} -> {plan.after.parameter_count():,} parameters in "
        f"{len(plan.steps)} step(s) on {ranks.world} rank(s); proof {cert['verdict']}; {check_line}wrote {output}")
    return manifest


def _certificate(cert) -> dict:
    from specgrow.verify.report import obligation_count, render_markdown

    return {"markdown": render_markdown(cert), "verdict": cert.verdict.value, "obligations": obligation_count(cert)}


def _meta_state(stored: dict, shape, grown, dtype, ranks: _Ranks) -> dict:
    """Shape-only stand-ins for the grown tensors: this rank's ``Shard(0)`` DTensors (plain
    meta tensors without a process group); the planner computes their data band by band."""
    from specgrow.arch import stored_shape

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


def _save(state: dict, folder: Path, planner, ranks: _Ranks) -> None:
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


def _check(spec, plan, opened, folder: Path, dev, out_dtype):
    """Rank 0: the input's logits against those of the DCP files just written; on a failure,
    also the index of the first step that changes the function."""
    from specgrow.lower.apply import _first_failing_step
    from specgrow.lower.numeric import compare, streamed_logits, tokens_for

    tokens = tokens_for(plan.before, spec.seed, dev)
    reference = streamed_logits(plan.before, opened.source, tokens)
    with DcpFiles(folder, opened.family) as written:
        after = streamed_logits(plan.after, RoleSource(written, opened.family, plan.after, str(folder)), tokens)
    dtype = out_dtype or opened.source.dtype(opened.source.keys()[0])
    result = compare(reference, after, dtype, spec.seed)
    index = None if result.passed else _first_failing_step(
        plan, plan.concrete(), opened.source, tokens, reference, dtype, spec.seed, dev)
    return result, index


def _manifest(spec, plan, opened, dev, world: int, result) -> dict:
    from specgrow.lower.apply import _resolved, _versions

    return {
        "spec": {"path": spec.path, "sha256": spec.sha256},
        "seed": spec.seed,
        "input": {key: _resolved(value) for key, value in opened.manifest.items()},
        "device": str(dev),
        "versions": _versions(),
        "numeric_check": result.as_dict() if result is not None else None,
        "parameters": {"before": plan.before.parameter_count(), "after": plan.after.parameter_count()},
        "output": {"format": "dcp", "world_size": world, "model": plan.after.to_config()},
    }


def _write_side_files(folder: Path, cert: dict, manifest: dict) -> None:
    import hashlib

    from specgrow import __version__
    from specgrow.lower.apply import CERTIFICATE, MANIFEST

    (folder / CERTIFICATE).write_text(cert["markdown"], encoding="utf-8")
    manifest = {"specgrow": __version__, **manifest, "proof": {
        "verdict": cert["verdict"], "obligations": cert["obligations"],
        "certificate_sha256": hashlib.sha256(cert["markdown"].encode("utf-8")).hexdigest()}}
    manifest["output"]["files"] = {p.name: sha256_file(p) for p in sorted(folder.iterdir())
                                   if p.name == METADATA or p.suffix == ".distcp"}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


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
