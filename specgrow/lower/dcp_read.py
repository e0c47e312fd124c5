"""torch.distributed checkpoints (DCP): read them chunk by chunk.

A DCP folder (written by ``torch.distributed.checkpoint.save``, e.g. from FSDP2/DTensor
training) holds ``.metadata`` and ``*.distcp`` files. The metadata lists, for every tensor
(its model FQN), the chunks stored by the ranks that saved it (offsets and sizes) and where
each chunk's bytes lie (file, offset, length); `FileSystemWriter`'s default serialization
writes every chunk with ``torch.save``.

`DcpFiles` serves ``read_rows(name, start, stop)`` by loading only the chunks that
intersect the rows asked for (``torch.load(weights_only=True)`` of each chunk's byte
range, one chunk cached), so `RoleSource` shows a DCP checkpoint as roles like any other
input, by the family of the spec's ``model.arch``. Writing one, across ranks, is
`specgrow.lower.dcp_write`.

**Trust.** ``.metadata`` is a Python pickle; specgrow unpickles it with `MetadataUnpickler`,
which builds only DCP's own metadata classes, torch dtypes and sizes, and pure paths, so no
code named in the file runs (torch's ``FileSystemReader`` would unpickle anything). Chunk
payloads are loaded with ``weights_only=True``. ``.metadata`` and chunk files that are
symbolic links out of the folder are refused.

Not handled: optimizer entries (top-level ``optim.``/``optimizer.``) and non-tensor entries
are not read (a grown checkpoint holds the model's weights only); chunks written with
storage extensions (compression) or the safetensors serialization are refused.
"""

from __future__ import annotations

import functools
import io
import pickle
from pathlib import Path, PurePosixPath, PureWindowsPath

import torch

from specgrow.arch import Family
from specgrow.errors import CheckpointError
from specgrow.lower.links import refuse_outside
from specgrow.lower.safetensors_io import _check_rows, _reason, _Tensors, torch_load

METADATA = ".metadata"
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
