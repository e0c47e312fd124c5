"""Reading input checkpoints and writing the output directory atomically.

Inputs: a ``.safetensors`` file, a ``.pt``/``.bin`` state dict (loaded with
``weights_only=True`` only), or a directory written by ``specgrow apply`` (its
``model.safetensors``). Outputs go to a temporary sibling directory that is renamed
into place only when everything succeeded; the input is only ever opened for reading.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import torch

from specgrow.errors import CheckpointError, InputError

MODEL_FILE = "model.safetensors"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_input(path: str) -> Path:
    """The checkpoint file behind ``--input`` (a file, or a specgrow output directory)."""
    p = Path(path)
    if p.is_dir():
        p = p / MODEL_FILE
    if not p.is_file():
        raise InputError(f"cannot read input checkpoint: no such file '{p}'", path=path)
    return p


def load_state(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint file, on the CPU."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        if path.suffix in (".pt", ".pth", ".bin"):
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise CheckpointError("expected a state dict of tensors", path=str(path))
            return state
    except CheckpointError:
        raise
    except Exception as exc:  # corrupt or foreign file: one clear line, no traceback
        reason = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"cannot read checkpoint: {type(exc).__name__}: {reason}", path=str(path)) from None
    raise InputError(
        f"unsupported checkpoint type '{path.suffix}' (expected .safetensors, .pt, .pth or .bin)",
        path=str(path),
    )


def check_shapes(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], path: str) -> None:
    """Every expected tensor present with its shape, and nothing else."""
    for name, shape in expected.items():
        if name not in state:
            raise CheckpointError(f"tensor '{name}' of the spec's model is missing from the input", path=path)
        if tuple(state[name].shape) != shape:
            raise CheckpointError(
                f"tensor '{name}': the spec's model expects shape {shape}, found {tuple(state[name].shape)}",
                path=path,
            )
    extra = sorted(set(state) - set(expected))
    if extra:
        raise CheckpointError(
            f"the input has {len(extra)} tensor(s) the spec's model does not, e.g. '{extra[0]}'", path=path
        )


@contextlib.contextmanager
def atomic_directory(output: str, overwrite: bool):
    """Yield a temporary directory that becomes ``output`` only if the block succeeds."""
    final = Path(output)
    if final.exists() and not overwrite:
        raise InputError(f"output '{output}' already exists (pass --overwrite to replace it)", path=output)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup below on kill
    try:
        yield tmp
        _public(tmp)
        if final.exists():
            trash = final.parent / f".{final.name}.old-{os.getpid()}"
            final.rename(trash)
            tmp.rename(final)
            shutil.rmtree(trash)
        else:
            tmp.rename(final)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _public(folder: Path) -> None:
    """Give the finished output the usual permissions (mkdtemp makes it private)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for item in folder.iterdir():
        item.chmod(0o666 & ~umask)
