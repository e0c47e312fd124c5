"""Checkpoints as sources of roles, the streaming output writer, and atomic output folders.

`RoleSource` shows a checkpoint's stored tensors (any family of `specgrow.arch`) as the
roles of a `ModelShape`, checking every name, shape and dtype up front and reading rows
lazily; `MemoryTensors` gives named tensors in memory the same read API, and
`stored_tensors` assembles a family's stored tensors whole from roles (`unshared` copies
those that share memory with an input). `write_checkpoint` pulls each stored tensor of the
grown model from a source band by band into streaming safetensors writers (one file, or
shards with an index). Outputs go to a temporary sibling folder that is renamed into place
only when everything succeeded; the input is only ever opened for reading.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import queue
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from specgrow.arch import Family, Saved, Stored, segments_of
from specgrow.errors import CheckpointError
from specgrow.lower.links import leaves
from specgrow.lower.safetensors_io import (
    SafetensorsWriter, _Tensors, index_json, plan_shards, shard_names, tensor_bytes,
)
from specgrow.lower.stream import bands, whole
from specgrow.publish import output_target, publish, refuse_overlap
from specgrow.shape import ModelShape

INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".distcp")


class RoleSource:
    """The tensors of checkpoint ``files`` as roles of ``shape``, by ``family``'s table.

    A fused tensor's roles are found by `specgrow.arch.segments_of` (one after the other, or head
    by head, or side by side along axis 1 for packed experts); a tensor may be stored under its
    `specgrow.arch.Stored.saved` name instead, and experts one tensor per expert
    (`specgrow.arch.Family.layout`): rows of an expert role are experts, each read from its own tensor.

    With ``check_finite`` every band read is checked: one that holds NaN or Inf is a
    `CheckpointError` naming the stored tensor and row (an input that is not a model to grow,
    rather than a numeric check that would blame a step).
    """

    def __init__(self, files, family: Family, shape: ModelShape, path: str, check_finite: bool = False):
        self.files, self.family, self.model, self.path = files, family, shape, path
        self.check_finite = check_finite
        names = files.names()
        self._names = set(names)
        self.prefix = family.prefix_of(names)
        self.where: dict = {}  # role key -> its `_Place`
        expected = set()
        for _, stored, layer in family.stored_tensors(shape, self.prefix):
            parts = family.layout(stored, layer, self.prefix, shape, self._names)
            for part in parts:
                self._check(part.name, part.shape(shape))
                expected.add(part.name)
            if parts[0].role is not None:  # one tensor per role and expert
                for role in stored.roles:
                    self.where[(role, layer)] = _Place(stored, experts=tuple(p.name for p in parts if p.role == role))
                continue
            offset = 0
            for role, start, stop in segments_of(stored, shape, layer):
                self.where.setdefault((role, layer), _Place(stored, parts[0].name)).pieces.append((offset, start, stop))
                offset += stop - start
        head = family.stored_of("unembed.weight", None)
        tied = {family.name_of(head, None, self.prefix), family.saved_name(head, None, self.prefix)} \
            if shape.tie_embeddings else set()  # a tied checkpoint may still store the head: ignored
        extra = sorted(n for n in names if n not in expected and n not in tied and not family.is_ignored(n))
        if extra:
            raise CheckpointError(f"the input has {len(extra)} tensor(s) the spec's model does not, "
                                  f"e.g. '{extra[0]}'", path=path)
        self._cached: tuple = (None, None)

    def _check(self, name: str, shape: tuple[int, ...]) -> None:
        if name not in self._names:
            raise CheckpointError(f"tensor '{name}' of the spec's model is missing from the input", path=self.path)
        found = tuple(self.files.shape(name))
        if found != shape:
            raise CheckpointError(f"tensor '{name}': the spec's model expects shape {shape}, found {found}",
                                  path=self.path)
        dtype = self.files.dtype(name)
        if not dtype.is_floating_point:
            raise CheckpointError(f"tensor '{name}': expected a floating-point dtype, found "
                                  f"{str(dtype).replace('torch.', '')}", path=self.path)

    def keys(self) -> list:
        return list(self.where)

    def shape(self, key) -> tuple[int, ...]:
        return self.model.role_shape(*key)

    def dtype(self, key) -> torch.dtype:
        place = self._locate(key)
        return self.files.dtype(place.name or place.experts[0])

    def rows(self, key, start: int, stop: int) -> torch.Tensor:
        place = self._locate(key)
        name, pieces, stored = place.name, place.pieces, place.stored
        if place.experts:  # experts start..stop, each from its own tensor
            if start >= stop:
                return torch.empty((0,) + self.shape(key)[1:], dtype=self.dtype(key))
            return torch.stack([self._finite(n, self.files.read(n), 0) for n in place.experts[start:stop]])
        if stored.axis:  # packed experts: experts start..stop, the role's columns
            band = self._finite(name, self.files.read_rows(name, start, stop), start)  # (experts, out, in)
            return torch.cat([band[:, at:at + high - low] for at, low, high in pieces], dim=1)
        spans = [(at + max(start, low) - low, at + min(stop, high) - low)  # the stored rows, in role order
                 for at, low, high in pieces if max(start, low) < min(stop, high)]
        if not spans:
            spans = [(pieces[0][0], pieces[0][0])]  # no rows: an empty band of the right width
        if not stored.transposed:
            parts = [self._finite(name, self.files.read_rows(name, a, b), a) for a, b in spans]
        else:
            if self._cached[0] != name:  # Conv1D [in, out]: read once, serve the roles' rows
                self._cached = (None, None)
                self._cached = (name, self._finite(name, self.files.read(name), 0).T)
            parts = [self._cached[1][a:b] for a, b in spans]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _finite(self, name: str, rows: torch.Tensor, first: int) -> torch.Tensor:
        """``rows`` of stored tensor ``name`` (from row ``first``), checked if ``check_finite``."""
        if not self.check_finite:
            return rows
        bad = ~torch.isfinite(rows.half() if rows.element_size() == 1 else rows)  # float8: no isfinite
        if not bad.any():
            return rows
        row = int(bad.reshape(len(bad) if bad.dim() else 1, -1).any(1).nonzero()[0])
        value = float(rows.reshape(-1)[bad.reshape(-1).nonzero()[0]])
        raise CheckpointError(f"input tensor '{name}' is not finite: row {first + row} holds {value}; "
                              "a checkpoint to grow must hold finite weights", path=self.path)

    def _locate(self, key) -> _Place:
        if key not in self.where:
            raise CheckpointError(f"the model has no tensor {key[0]} (layer {key[1]})", path=self.path)
        return self.where[key]


@dataclass
class _Place:
    """Where a role lies: in the stored tensor ``name``, as ``pieces`` ``(stored row, role row, role end)``
    along `specgrow.arch.Stored.axis`, or (``experts``) one tensor per expert."""

    stored: Stored
    name: str | None = None
    pieces: list = field(default_factory=list)
    experts: tuple[str, ...] = ()


class MemoryTensors(_Tensors):
    """In-memory named tensors with the read API of checkpoint files (`RoleSource` reads them)."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors

    def names(self) -> list[str]:
        return list(self.tensors)

    def _info(self, name: str) -> tuple:
        t = self.tensors[name]
        return t.dtype, tuple(t.shape)

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        return self.tensors[name][start:stop]

    def close(self) -> None:
        pass


def stored_tensors(source, family: Family, prefix: str, shape: ModelShape) -> dict[str, torch.Tensor]:
    """The tensors a ``family`` checkpoint of ``shape`` stores, assembled whole from a role ``source``
    (named as the module names them: `specgrow.arch.Family.name_of`)."""
    return {name: assemble(source, stored, layer, shape)
            for name, stored, layer in family.stored_tensors(shape, prefix)}


def assemble(source, stored, layer: int | None, shape: ModelShape) -> torch.Tensor:
    """A stored tensor whole from its roles: their rows in stored order (`specgrow.arch.segments_of`) along
    `specgrow.arch.Stored.axis`, transposed if Conv1D."""
    if len(stored.roles) == 1:
        value = whole(source, (stored.roles[0], layer))
    else:
        roles = {role: whole(source, (role, layer)) for role in stored.roles}
        value = torch.cat([roles[role].narrow(stored.axis, start, stop - start)
                           for role, start, stop in segments_of(stored, shape, layer)], dim=stored.axis)
    return value.T.contiguous() if stored.transposed else value


def unshared(tensors: dict, inputs) -> dict:
    """``tensors`` with every one that shares memory with an input tensor copied (the input stays untouched)."""
    taken = {t.untyped_storage().data_ptr() for t in inputs if t.device.type != "meta"}
    return {name: t.clone() if t.device.type != "meta" and t.untyped_storage().data_ptr() in taken else t
            for name, t in tensors.items()}


class Progress:
    """A one-line progress report on stderr, refreshed at most every half second."""

    def __init__(self, total_bytes: int, quiet: bool):
        self.total, self.done = total_bytes, 0
        self.quiet = quiet or total_bytes < 256 << 20  # small models finish before a report helps
        self.started = self.shown = time.monotonic()

    def advance(self, nbytes: int, name: str) -> None:
        self.done += nbytes
        now = time.monotonic()
        if self.quiet or (now - self.shown < 0.5 and self.done < self.total):
            return
        self.shown = now
        end = "\r" if sys.stderr.isatty() and self.done < self.total else "\n"
        print(f"writing {self.done / 1e9:.2f}/{self.total / 1e9:.2f} GB "
              f"({100 * self.done / max(self.total, 1):.0f}%, {now - self.started:.0f} s) {name[:60]}",
              end=end, file=sys.stderr, flush=True)


def write_checkpoint(folder: Path, family: Family, prefix: str, shape: ModelShape, source, *,
                     dtype: torch.dtype | None, max_shard_bytes: int | None, metadata: dict[str, str],
                     quiet: bool = True, sync: bool = True) -> dict[str, str]:
    """Write the stored tensors of ``shape`` pulled from ``source``: ``{file name: sha256}``.

    Each file's hash is taken from its bytes as they are written, not by reading it back. Tensors
    are written under the names ``save_pretrained`` gives them (`specgrow.arch.Family.saved_tensors`:
    experts one tensor per expert, computed a band of experts at a time). Without ``sync`` the files
    are not fsynced: the caller does it (`fsync_files`), e.g. while it checks them.
    """
    tensors = family.saved_tensors(shape, prefix)
    entries = [(part.name, dtype or source.dtype((part.role or part.stored.roles[0], part.layer)), part.shape(shape))
               for part in tensors]
    by_name = {part.name: part for part in tensors}
    shards = plan_shards(entries, max_shard_bytes)
    files = shard_names(len(shards))
    progress = Progress(sum(tensor_bytes(dtype, shape) for _, dtype, shape in entries), quiet)
    experts = _ExpertBands(source)
    hashes = {}
    for shard, file in zip(shards, files):
        with SafetensorsWriter(folder / file, shard, metadata, sync=sync) as writer:
            with _Background(writer.put) as put:  # the writes overlap computing (and hashing) the next band
                for name, out_dtype, out_shape in shard:
                    for chunk in _stored_chunks(source, by_name[name], shape, experts):
                        put(writer.accept(name, chunk.to(out_dtype)))
                    progress.advance(tensor_bytes(out_dtype, out_shape), name)
        hashes[file] = writer.sha256()
    if len(shards) > 1:
        index = index_json(shards, files)
        (folder / INDEX_FILES[0]).write_text(json.dumps(index, indent=2) + "\n")
    return hashes


class _Background:
    """Run ``fn(*args)`` calls in order on one worker thread.

    Writing is bound by the kernel's write-back, computing the next band by the CPU: a
    worker lets the two overlap. A failure in the worker is raised at the next call or on
    leaving the block.
    """

    def __init__(self, fn):
        self.fn, self.calls, self.error = fn, queue.Queue(maxsize=1), None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while (call := self.calls.get()) is not None:
            if self.error is None:
                try:
                    self.fn(*call)
                except BaseException as exc:  # re-raised in the calling thread
                    self.error = exc

    def __call__(self, *args):
        if self.error is not None:
            raise self.error
        self.calls.put(args)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, exc_type, *_):
        self.calls.put(None)
        self.thread.join()
        if self.error is not None and exc_type is None:
            raise self.error


class _ExpertBands:
    """Experts of a role served one by one from the band of experts that holds them (`bands`): the band
    is computed once and held until an expert of another band or role is asked for."""

    def __init__(self, source):
        self.source, self.key, self.start, self.band = source, None, 0, None

    def expert(self, key, expert: int) -> torch.Tensor:
        if key != self.key or not self.start <= expert < self.start + len(self.band):
            self.band = None
            start, stop = next((a, b) for a, b in bands(self.source, key) if a <= expert < b)
            self.key, self.start, self.band = key, start, self.source.rows(key, start, stop)
        return self.band[expert - self.start]


def _stored_chunks(source, part: Saved, shape: ModelShape, experts: _ExpertBands):
    """A saved tensor in row bands (one role, [out, in]), whole (fused or Conv1D), or one expert's slice."""
    if part.role is not None:
        yield experts.expert((part.role, part.layer), part.expert)
        return
    stored, layer = part.stored, part.layer
    if len(stored.roles) == 1 and not stored.transposed:
        key = (stored.roles[0], layer)
        for start, stop in bands(source, key):
            yield source.rows(key, start, stop)
        return
    yield assemble(source, stored, layer, shape)


def copy_side_files(src: Path, dst: Path, reserved=()) -> list[str]:
    """Copy a HF folder's other files (tokenizer, generation config, ...) but weights, config and
    the ``reserved`` names (the files the output records itself in).

    A symbolic link to a file inside the folder is copied as a regular file; one that leads
    out of it (`specgrow.lower.links`) is not followed: it is skipped, with a warning on stderr.
    """
    copied = []
    for item in sorted(src.iterdir()):
        if item.name == "config.json" or item.name in INDEX_FILES or item.suffix in WEIGHT_SUFFIXES \
                or item.name in reserved:
            continue
        if leaves(item, src):
            print(f"{item}:1:1: warning: not copied: a symbolic link out of the input folder", file=sys.stderr)
        elif item.is_file():
            shutil.copy2(item, dst / item.name)
            copied.append(item.name)
    return copied


@contextlib.contextmanager
def atomic_directory(output: str, overwrite: bool, sources: dict[str, str | None] | None = None):
    """Yield a temporary directory that becomes ``output`` only if the block succeeds.

    ``output`` must be apart from every path of ``sources`` (``{label: path}``, see
    `specgrow.publish.refuse_overlap`); `specgrow.publish.publish` moves the folder into place.
    """
    refuse_overlap(output, sources or {})
    final = output_target(output, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below on kill
    try:
        yield tmp
        _public(tmp)
        publish(tmp, final, overwrite, output)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _public(folder: Path) -> None:
    """Give the finished output the usual permissions (mkdtemp makes it private), its
    subfolders too."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for item in folder.iterdir():
        if item.is_dir():
            _public(item)
        else:
            item.chmod(0o666 & ~umask)
