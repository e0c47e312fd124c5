"""Symbolic links in an input folder: followed only to files inside it.

A checkpoint folder may hold links between its own files (``pytorch_model.bin`` ->
``model.bin``); a link out of it (``notes.txt`` -> a private file elsewhere) would make
specgrow read, and copy into the output, a file the input does not hold. The one exception
is HuggingFace's cache, whose ``snapshots/REV/`` folders link every file to
``../../blobs/HASH`` of the same repository: there the repository's ``blobs`` folder counts
as inside. Links are resolved fully (a link to a link is followed to its end).

Stdlib only: `specgrow.lower.hashes.prefetch` uses it before torch is imported.
"""

from __future__ import annotations

from pathlib import Path

from specgrow.errors import CheckpointError


def inside(folder: Path) -> tuple[Path, ...]:
    """The resolved folders whose files count as inside ``folder``."""
    root = Path(folder).resolve()
    if root.parent.name == "snapshots":  # HuggingFace's cache: snapshots/REV/NAME -> ../../blobs/HASH
        return root, root.parent.parent / "blobs"
    return (root,)


def leaves(path: Path, folder: Path) -> bool:
    """Whether ``path``, an entry of ``folder``, is a symbolic link to something outside it
    (or a loop of links)."""
    if not path.is_symlink():
        return False
    try:
        target = path.resolve()
    except (OSError, RuntimeError):  # a loop of links
        return True
    return not any(target.is_relative_to(root) for root in inside(folder))


def refuse_outside(path: Path, folder: Path) -> None:
    """One-line `CheckpointError` if ``path`` (in ``folder``) links outside ``folder``."""
    if leaves(path, folder):
        raise CheckpointError(f"'{path.name}' is a symbolic link out of the input folder; specgrow reads only "
                              "files inside it", path=str(path))
