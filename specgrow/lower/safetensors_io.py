"""Read and write safetensors files a band of rows at a time, and open whole checkpoints.

`SafetensorsReader` validates the header fully, then reads exactly the bytes asked for with
``seek`` + ``readinto`` (never an mmap of the file). `SafetensorsWriter` writes the header
first and then streams each tensor's rows in order, so growing a checkpoint holds about
one band in memory. `CheckpointFiles` serves a HuggingFace folder (one file, shards with
an index, or ``pytorch_model.bin``) or a single state-dict file through the same API.

>>> import os, tempfile
>>> tmp = tempfile.TemporaryDirectory()
>>> path = os.path.join(tmp.name, "w.safetensors")
>>> with SafetensorsWriter(path, [("w", torch.float32, (3, 2))], {"format": "pt"}) as out:
...     out.write("w", torch.zeros(2, 2))
...     out.write("w", torch.ones(1, 2))
>>> with SafetensorsReader(path) as f:
...     f.metadata, f.read_rows("w", 1, 3)
({'format': 'pt'}, tensor([[0., 0.],
        [1., 1.]]))
>>> tmp.cleanup()
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import struct
import warnings
from pathlib import Path

import torch

from specgrow.errors import CheckpointError, InputError
from specgrow.lower.links import refuse_outside

DTYPE_CODES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
_CODE_OF = {dtype: code for code, dtype in DTYPE_CODES.items()}
MAX_HEADER = 100_000_000  # bytes, the safetensors library's own limit
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# What a checkpoint folder is searched for, in HuggingFace's order of preference.
FOLDER_FILES = (SINGLE_FILE, INDEX_FILE, "pytorch_model.bin", "pytorch_model.bin.index.json")
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}

Entry = tuple  # (name, torch.dtype, shape)


def dtype_code(dtype: torch.dtype) -> str:
    """The safetensors code of a torch dtype.

    >>> dtype_code(torch.bfloat16)
    'BF16'
    """
    if dtype not in _CODE_OF:
        raise ValueError(f"dtype {dtype} has no safetensors code (expected one of {', '.join(_CODE_OF.values())})")
    return _CODE_OF[dtype]


def tensor_bytes(dtype: torch.dtype, shape) -> int:
    """Bytes of a tensor of ``dtype`` and ``shape``."""
    return math.prod(shape) * dtype.itemsize


def _check_rows(name: str, shape: tuple, start: int, stop: int) -> None:
    """Rows ``[start, stop)`` along axis 0 exist (a 0-d tensor has the single row ``[0, 1)``)."""
    if not shape and (start, stop) != (0, 1):
        raise ValueError(f"tensor '{name}' is 0-d: expected rows [0, 1), got [{start}, {stop})")
    rows = shape[0] if shape else 1
    if not 0 <= start <= stop <= rows:
        raise ValueError(f"tensor '{name}' has {rows} rows: expected 0 <= start <= stop <= {rows}, "
                         f"got [{start}, {stop})")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_header(raw: bytes, data_len: int) -> tuple[dict, dict]:
    """``(metadata, {name: (dtype, shape, begin, end)})`` in data order; ValueError names the fault."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"corrupt safetensors header: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except ValueError as exc:
        raise ValueError(f"corrupt safetensors header: not JSON ({exc})") from None
    except RecursionError:
        raise ValueError("corrupt safetensors header: JSON nested too deeply") from None
    if not isinstance(header, dict):
        raise ValueError(f"corrupt safetensors header: expected a JSON object, found {type(header).__name__}")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError("corrupt safetensors header: expected __metadata__ to map strings to strings, "
                         f"found {json.dumps(metadata)[:100]}")
    entries = {}
    for name, info in header.items():
        where = f"corrupt safetensors header: tensor '{name}'"
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
            found = json.dumps(info)[:100]
            raise ValueError(f"{where}: expected an object with dtype, shape and data_offsets, found {found}")
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if code not in DTYPE_CODES:
            known = ", ".join(DTYPE_CODES)
            raise ValueError(f"{where}: unknown dtype {json.dumps(code)[:30]} (expected one of {known})")
        if not isinstance(shape, list) or not all(_is_int(n) and n >= 0 for n in shape):
            raise ValueError(f"{where}: expected a shape of non-negative integers, found {json.dumps(shape)[:100]}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(n) for n in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise ValueError(f"{where}: expected data_offsets [begin, end] with 0 <= begin <= end, "
                             f"found {json.dumps(offsets)[:100]}")
        dtype, (begin, end) = DTYPE_CODES[code], offsets
        if end - begin != tensor_bytes(dtype, shape):
            raise ValueError(f"{where}: data_offsets {offsets} hold {end - begin} bytes, "
                             f"shape {tuple(shape)} of {code} needs {tensor_bytes(dtype, shape)}")
        entries[name] = (dtype, tuple(shape), begin, end)
    covered = 0
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda item: item[1][2:]):
        if end > data_len:
            raise ValueError(f"truncated safetensors file: tensor '{name}' ends at byte {end} of the data, "
                             f"the file holds {data_len}")
        if begin > covered:
            raise ValueError(f"corrupt safetensors header: bytes [{covered}, {begin}) of the data "
                             "belong to no tensor")
        if begin < covered:
            raise ValueError(f"corrupt safetensors header: tensor '{name}' starts at byte {begin} of the data, "
                             f"inside the tensor before it (which ends at {covered})")
        covered = end
    if covered != data_len:
        raise ValueError(f"corrupt safetensors file: bytes [{covered}, {data_len}) of the data belong to no tensor")
    return metadata, dict(sorted(entries.items(), key=lambda item: item[1][2:]))


class _Tensors:
    """The read API shared by every checkpoint source: subclasses give ``_info`` and ``read_rows``."""

    def dtype(self, name: str) -> torch.dtype:
        return self._info(name)[0]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._info(name)[1]

    def nbytes(self, name: str) -> int:
        return tensor_bytes(*self._info(name))

    def read(self, name: str) -> torch.Tensor:
        """The whole tensor, on the CPU."""
        shape = self.shape(name)
        return self.read_rows(name, 0, shape[0] if shape else 1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SafetensorsReader(_Tensors):
    """One safetensors file, read band by band through ordinary file reads."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            self._file = open(path, "rb")
            size = os.fstat(self._file.fileno()).st_size
        except OSError as exc:
            raise InputError(f"cannot read checkpoint: {exc.strerror}", path=str(path)) from None
        try:
            if size < 8:
                raise ValueError(f"not a safetensors file: it holds {size} bytes, expected at least 8 "
                                 "(the header length)")
            (length,) = struct.unpack("<Q", self._file.read(8))
            if length > min(MAX_HEADER, size - 8):
                limit = "the 100 MB limit" if length > MAX_HEADER else f"the {size - 8} bytes after it"
                raise ValueError(f"corrupt safetensors header: its length {length} exceeds {limit}")
            self._metadata, self._entries = _parse_header(self._file.read(length), size - 8 - length)
        except (ValueError, RecursionError) as exc:  # RecursionError: showing a deeply nested value
            self._file.close()
            raise CheckpointError(f"cannot read checkpoint: {exc}", path=str(path)) from None
        self._data_start = 8 + length

    def names(self) -> list[str]:
        """Tensor names in the order of their data in the file."""
        return list(self._entries)

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self._metadata)

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``[start, stop)`` along axis 0, on the CPU; only these bytes are read."""
        dtype, shape = self._info(name)
        begin = self._entries[name][2]
        _check_rows(name, shape, start, stop)
        row_bytes = tensor_bytes(dtype, shape[1:])
        count = (stop - start) * row_bytes
        buf = torch.empty(count, dtype=torch.uint8)
        self._file.seek(self._data_start + begin + start * row_bytes)
        got = self._file.readinto(buf.numpy())
        if got != count:
            raise CheckpointError(f"short read: rows [{start}, {stop}) of tensor '{name}' need {count} bytes, "
                                  f"the file gave {got} (did it change while being read?)", path=str(self.path))
        return buf.view(dtype).reshape((stop - start, *shape[1:]) if shape else ())

    def close(self) -> None:
        self._file.close()

    def _info(self, name: str) -> tuple:
        if name not in self._entries:
            raise CheckpointError(f"tensor '{name}' is missing from {self.path}", path=str(self.path))
        return self._entries[name][:2]


class SafetensorsWriter:
    """Write a safetensors file whose header is known up front, streaming rows in entry order."""

    def __init__(self, path, entries: list[Entry], metadata: dict[str, str] | None = None, sync: bool = True):
        """``sync``: fsync the file on `close` (else the caller makes it durable, see `fsync_files`)."""
        header: dict = {}
        if metadata is not None:
            if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
                raise ValueError(f"metadata must map strings to strings, got {metadata!r}")
            header["__metadata__"] = metadata
        offset = 0
        for name, dtype, shape in entries:
            if name in header or name == "__metadata__":
                raise ValueError(f"tensor name '{name}' appears twice or is reserved")
            end = offset + tensor_bytes(dtype, shape)
            header[name] = {"dtype": dtype_code(dtype), "shape": [int(n) for n in shape],
                            "data_offsets": [offset, end]}
            offset = end
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        raw += b" " * (-len(raw) % 8)  # 8 + N a multiple of 8, as the safetensors library pads
        self.path = Path(path)
        self._entries = [(name, dtype, tuple(shape)) for name, dtype, shape in entries]
        self._position = {name: i for i, (name, _, _) in enumerate(self._entries)}
        self._rows = [shape[0] if shape else 1 for _, _, shape in self._entries]
        self._done = [0] * len(self._entries)
        self._at = 0  # the tensor being written
        self._sync = sync
        self._sha256 = hashlib.sha256()  # of the bytes written, in file order
        head = struct.pack("<Q", len(raw)) + raw
        try:
            self._file = open(path, "wb")
            try:
                _preallocate(self._file.fileno(), len(head) + offset, self.path)
                self._file.write(head)
                self._file.flush()
            except BaseException:
                self._file.close()
                raise
        except OSError as exc:
            raise InputError(f"cannot write checkpoint: {exc.strerror}", path=str(path)) from None
        self._sha256.update(head)

    def write(self, name: str, chunk: torch.Tensor) -> None:
        """Append the next rows of tensor ``name`` (a 0-d tensor is written whole)."""
        self.put(self.accept(name, chunk))

    def accept(self, name: str, chunk: torch.Tensor):
        """Check and count the next rows of ``name`` and hash them: the bytes `put` appends next.

        `write` is ``put(accept(...))``; apart, one thread can check and hash while another
        writes (in the same order).
        """
        i = self._position.get(name)
        if i is None:
            raise ValueError(f"tensor '{name}' is not among this file's entries")
        while self._at < i and self._done[self._at] == self._rows[self._at]:
            self._at += 1
        if i < self._at:
            raise ValueError(f"tensor '{name}' is already complete "
                             "(tensors are written in entry order, each completely)")
        if i > self._at:
            at, done, rows = self._entries[self._at][0], self._done[self._at], self._rows[self._at]
            raise ValueError(f"expected rows of tensor '{at}' ({done} of {rows} rows written), got rows of "
                             f"'{name}'; tensors are written in entry order, each completely")
        _, dtype, shape = self._entries[i]
        if chunk.dtype != dtype:
            raise ValueError(f"tensor '{name}': expected dtype {dtype}, got {chunk.dtype}")
        if chunk.dim() != len(shape) or tuple(chunk.shape[1:]) != shape[1:]:
            want = "a 0-d tensor" if not shape else f"rows of shape {shape[1:]}"
            raise ValueError(f"tensor '{name}' of shape {shape}: expected {want}, "
                             f"got a chunk of shape {tuple(chunk.shape)}")
        rows = chunk.shape[0] if shape else 1
        if self._done[i] + rows > self._rows[i]:
            raise ValueError(f"tensor '{name}' has {self._rows[i]} rows: {self._done[i]} written, "
                             f"{rows} more are too many")
        data = chunk.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        self._sha256.update(data)
        self._done[i] += rows
        return data

    def put(self, data) -> None:
        """Append bytes from `accept`, in the order it returned them."""
        self._file.write(data)

    def sha256(self) -> str:
        """The hex sha256 of the file, from the bytes as they were written (once it is complete)."""
        if not self._file.closed or any(done < rows for done, rows in zip(self._done, self._rows)):
            raise ValueError("the file is not complete yet")
        return self._sha256.hexdigest()

    def close(self) -> None:
        """Check every tensor is complete, then flush (and fsync); the file is closed either way."""
        if self._file.closed:
            return
        try:
            for (name, _, _), done, rows in zip(self._entries, self._done, self._rows):
                if done < rows:
                    raise ValueError(f"tensor '{name}' is incomplete: {done} of {rows} rows written")
            self._file.flush()
            if self._sync:
                os.fsync(self._file.fileno())
        finally:
            self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
        else:
            self._file.close()


def fsync_files(paths) -> None:
    """Make written files durable: each one's data and size reach the disk (`os.fsync`)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _preallocate(fd: int, size: int, path: Path) -> None:
    """Reserve the file's ``size`` bytes before writing (the header fixes the size up front).

    The file system allocates its blocks at once rather than as every write extends the
    file, which on ext4 made the writes several times slower; a disk too small fails here,
    before anything is computed. Where the system cannot preallocate, nothing is done.
    """
    if size <= 0 or not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise InputError(f"not enough disk space: {size:,} bytes needed for {path.name}",
                             path=str(path)) from None
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise


def parse_size(text: str | int) -> int:
    """Bytes in a size such as ``5GB`` (decimal) or ``2GiB`` (binary).

    >>> parse_size("500MB"), parse_size("2GiB"), parse_size("123")
    (500000000, 2147483648, 123)
    """
    if _is_int(text):
        value = text
    else:
        match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(text))
        unit = _UNITS.get(match[2].upper()) if match else None
        if unit is None:
            raise ValueError(f"invalid size {text!r}: expected a whole number of bytes with an optional unit "
                             "(KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. 5GB")
        value = int(match[1]) * unit
    if value <= 0:
        raise ValueError(f"invalid size {text!r}: expected a positive number of bytes")
    return value


def plan_shards(entries: list[Entry], max_shard_bytes: int | None) -> list[list[Entry]]:
    """Split entries in order into shards of at most ``max_shard_bytes`` (an oversize tensor stands alone).

    >>> e = [("a", torch.float32, (2,)), ("b", torch.float32, (2,)), ("c", torch.float32, (4,))]
    >>> [[name for name, _, _ in shard] for shard in plan_shards(e, 12)]
    [['a'], ['b'], ['c']]
    """
    if max_shard_bytes is None or not entries:
        return [list(entries)]
    shards: list[list[Entry]] = [[]]
    size = 0
    for entry in entries:
        nbytes = tensor_bytes(entry[1], entry[2])
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(entry)
        size += nbytes
    return shards


def shard_names(count: int) -> list[str]:
    """HuggingFace's file names for ``count`` shards.

    >>> shard_names(2)
    ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']
    """
    if count < 1:
        raise ValueError(f"expected at least one shard, got {count}")
    if count == 1:
        return [SINGLE_FILE]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def index_json(shards: list[list[Entry]], names: list[str]) -> dict:
    """The content of ``model.safetensors.index.json`` for shards written to files ``names``."""
    if len(shards) != len(names):
        raise ValueError(f"expected one file name per shard ({len(shards)}), got {len(names)}")
    weight_map = {entry[0]: file for shard, file in zip(shards, names) for entry in shard}
    total = sum(tensor_bytes(dtype, shape) for shard in shards for _, dtype, shape in shard)
    return {"metadata": {"total_size": total}, "weight_map": weight_map}


def _reason(exc: Exception) -> str:
    """One short line out of whatever ``torch.load`` raised."""
    text = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split())
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().split(". ")[0]
        detail = detail.split(" Check the documentation")[0]
        if detail.startswith("Unsupported operand"):
            text = (f"its pickle uses an instruction weights_only loading does not read ({detail}); "
                    "save it again with torch.save's default (zip) format")
        else:
            text = f"it holds objects other than tensors, which weights_only loading refuses ({detail})"
    return f"{type(exc).__name__}: {text[:300]}"


def torch_load(file, **options):
    """``torch.load(file, map_location="cpu", weights_only=True, **options)``, torch's warnings
    silenced (e.g. about an old pickle protocol): a failure is reported in one line by the caller.

    The only way specgrow unpickles a ``torch.save`` file: nothing but tensors and plain
    containers is ever built, no code named in the file runs.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(file, map_location="cpu", weights_only=True, **options)


class _StateDictFile(_Tensors):
    """A ``torch.save``d dict of tensors, loaded with ``weights_only=True`` and memory-mapped."""

    def __init__(self, path: Path):
        self.path = path
        try:
            try:
                state = torch_load(path, mmap=True)
            except RuntimeError as exc:
                if "mmap" not in str(exc):
                    raise
                state = torch_load(path, mmap=False)  # pre-zip format
        except Exception as exc:  # corrupt or foreign file: one clear line, no traceback
            raise CheckpointError(f"cannot read checkpoint: {_reason(exc)}", path=str(path)) from None
        if not isinstance(state, dict):
            raise CheckpointError(f"expected a state dict (a dict of tensors), found a {type(state).__name__}",
                                  path=str(path))
        for key, value in state.items():
            if not isinstance(key, str) or not isinstance(value, torch.Tensor):
                raise CheckpointError(f"expected a state dict of tensors, but entry {key!r} holds a "
                                      f"{type(value).__name__}", path=str(path))
        self._tensors = state

    def names(self) -> list[str]:
        return list(self._tensors)

    def _info(self, name: str) -> tuple:
        return self._tensors[name].dtype, tuple(self._tensors[name].shape)

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        tensor = self._tensors[name]
        _check_rows(name, tuple(tensor.shape), start, stop)
        return tensor if tensor.dim() == 0 else tensor[start:stop]

    def close(self) -> None:
        self._tensors = {}


def header_shapes(folder) -> dict[str, tuple[int, ...]] | None:
    """Every tensor's shape in a folder's safetensors weights (``model.safetensors``, or the shards
    its index lists), read from their headers alone; None when the folder holds no safetensors weights."""
    where = Path(folder)
    if not any((where / name).is_file() for name in (SINGLE_FILE, INDEX_FILE)):
        return None
    with CheckpointFiles(where) as files:
        return {name: files.shape(name) for name in files.names()}


class CheckpointFiles(_Tensors):
    """Every tensor of a checkpoint folder or file, by name, whatever file holds it.

    A folder's weight files and index may be symbolic links only to files inside it
    (`specgrow.lower.links`); ``path`` itself may be a link.
    """

    def __init__(self, path):
        self.path = Path(path)
        self._files: list[Path] = []
        self._owner: dict = {}  # tensor name -> the open file holding it
        self._open: list = []
        try:
            self._load(self.path)
        except BaseException:
            self.close()
            raise

    def _load(self, path: Path) -> None:
        if path.is_dir():
            found = [path / name for name in FOLDER_FILES if (path / name).is_file()]
            if not found:
                raise CheckpointError(f"no checkpoint in folder: expected one of {', '.join(FOLDER_FILES)}",
                                      path=str(path))
            refuse_outside(found[0], path)
            path = found[0]
        elif not path.is_file():
            raise InputError("cannot read checkpoint: no such file or folder", path=str(path))
        if path.name.endswith(".index.json"):
            self._load_index(path)
        else:
            self._add(path)

    def _load_index(self, index: Path) -> None:
        try:
            doc = json.loads(index.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InputError(f"cannot read checkpoint index: {exc.strerror}", path=str(index)) from None
        except ValueError as exc:
            raise CheckpointError(f"corrupt checkpoint index: not JSON ({exc})", path=str(index)) from None
        except RecursionError:
            raise CheckpointError("corrupt checkpoint index: JSON nested too deeply", path=str(index)) from None
        weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError('corrupt checkpoint index: expected a JSON object whose "weight_map" maps '
                                  "tensor names to shard file names", path=str(index))
        self._files.append(index)
        for shard in sorted(set(weight_map.values())):
            if Path(shard).name != shard or not (index.parent / shard).is_file():
                raise CheckpointError(f"shard '{shard}' listed in the index is missing from {index.parent}",
                                      path=str(index))
            refuse_outside(index.parent / shard, index.parent)
            self._add(index.parent / shard)
        for name, shard in weight_map.items():
            if name not in self._owner or self._owner[name].path.name != shard:
                raise CheckpointError(f"tensor '{name}' is listed under shard '{shard}', which does not hold it",
                                      path=str(index))

    def _add(self, path: Path) -> None:
        if path.suffix == ".safetensors":
            source = SafetensorsReader(path)
        elif path.suffix in (".pt", ".pth", ".bin"):
            source = _StateDictFile(path)
        else:
            raise InputError(f"unsupported checkpoint file type '{path.suffix}' "
                             "(expected .safetensors, .pt, .pth or .bin)", path=str(path))
        self._open.append(source)
        self._files.append(path)
        for name in source.names():
            if name in self._owner:
                raise CheckpointError(f"tensor '{name}' is stored in both '{self._owner[name].path.name}' "
                                      f"and '{path.name}'", path=str(self.path))
            self._owner[name] = source

    def names(self) -> list[str]:
        return list(self._owner)

    def files(self) -> list[Path]:
        """The files read (index first, then each shard), e.g. for hashing."""
        return list(self._files)

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        return self._source(name).read_rows(name, start, stop)

    def close(self) -> None:
        for source in self._open:
            source.close()

    def _info(self, name: str) -> tuple:
        return self._source(name)._info(name)

    def _source(self, name: str) -> _Tensors:
        if name not in self._owner:
            raise CheckpointError(f"tensor '{name}' is missing from {self.path}", path=str(self.path))
        return self._owner[name]
