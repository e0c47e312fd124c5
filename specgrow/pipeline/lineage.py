"""The growths an output descends from, kept under ``history/``.

When the input of a growth is itself a specgrow output (a folder holding
``specgrow-manifest.json``), the output keeps the input's record: the entries of the input's
own ``history/`` as they are, then its manifest, certificate and spec as the next entry.
Entry 1 is the first growth of the chain and the last entry is the parent, so a chain of N
growths leaves N-1 entries, and each manifest's ``parent`` names the manifest of the entry
before it by its sha256. Only regular files inside the input are copied (a symbolic link out
of it is not followed).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from specgrow.lower.hashes import folder_files, sha256_file
from specgrow.lower.links import leaves

MANIFEST = "specgrow-manifest.json"
MANIFEST_FORMAT = 2  # the first format that records every file, the command line, the spec and the lineage
CERTIFICATE = "proof.md"
SPEC_COPY = "spec.yaml"
HISTORY = "history"
ENTRY_FILES = (MANIFEST, CERTIFICATE, SPEC_COPY)
NUMBER = re.compile(r"^[1-9][0-9]*$")


def grown_folder(path) -> Path | None:
    """``path`` as a folder written by specgrow (it holds a manifest, not a link out of it), else None."""
    where = Path(path)
    manifest = where / MANIFEST
    return where if where.is_dir() and manifest.is_file() and not leaves(manifest, where) else None


def entries(folder: Path) -> list[tuple[int, Path]]:
    """The numbered entries of ``folder/history``, in order (first growth first)."""
    history = folder / HISTORY
    if not history.is_dir() or history.is_symlink():
        return []
    return sorted((int(p.name), p) for p in history.iterdir()
                  if NUMBER.match(p.name) and p.is_dir() and not p.is_symlink())


def keep_history(input_path, folder: Path) -> dict | None:
    """Copy the lineage of ``input_path`` into ``folder/history`` when it is a specgrow output,
    and return the manifest's ``parent`` entry; None (nothing copied) for any other input."""
    parent = grown_folder(input_path)
    if parent is None:
        return None
    earlier = entries(parent)
    for number, entry in earlier:
        _copy(folder_files(entry)[0], folder / HISTORY / str(number))
    number = max((n for n, _ in earlier), default=0) + 1
    record = folder / HISTORY / str(number)
    _copy({name: parent / name for name in ENTRY_FILES
           if (parent / name).is_file() and not leaves(parent / name, parent)}, record)
    return {"manifest_sha256": sha256_file(record / MANIFEST), "path": str(input_path),
            "record": f"{HISTORY}/{number}"}


def _copy(files: dict[str, Path], target: Path) -> None:
    """Copy ``{relative path: file}`` under ``target``."""
    for rel, path in files.items():
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / rel)
