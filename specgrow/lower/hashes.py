"""sha256 of files on a worker thread, started as early as the caller knows the files.

``apply`` records in the manifest the hash of every file of its input and of its output. It
asks for the input's as soon as it has parsed its arguments, before torch and SymPy load:
hashing releases the GIL, so another core hashes while this one imports (about two seconds
of a 2 GB checkpoint's hashing that no longer waits for anything). Asking again for the same
file (same size and modification time) gives the same future. The worker is a daemon
thread: a run that stops early does not wait for hashing it no longer needs.

A folder's files are every regular file under it (`folder_files`); a symbolic link out of it
(`specgrow.lower.links`) is not read but listed as skipped.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from concurrent.futures import Future
from pathlib import Path

from specgrow.lower.links import leaves

_futures: dict = {}
_lock = threading.Lock()
_work: queue.Queue | None = None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_later(path) -> Future:
    """A future of the file's hex sha256, computed once on the worker thread."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (path, stat.st_size, stat.st_mtime_ns)
    with _lock:
        future = _futures.get(key)
        if future is None:
            future = _futures[key] = Future()
            _queue().put((path, future))
        return future


def hash_in_background(files: dict) -> dict:
    """``{name: future sha256}`` of ``{name: path}``, hashed on the worker thread while the
    caller works (files `prefetch` started on are not hashed twice)."""
    return {name: sha256_later(path) for name, path in files.items()}


def resolved(value):
    """``value`` with the futures of a `hash_in_background` dict waited for (anything else as it is)."""
    if not isinstance(value, dict):
        return value
    return {name: item if isinstance(item, str) else item.result() for name, item in value.items()}


def folder_files(folder) -> tuple[dict[str, Path], list[str]]:
    """The regular files under ``folder``, recursively, as ``{relative POSIX path: path}``, and the
    relative paths of the symbolic links that lead out of it, which are not read.

    A link to a file inside is listed (read through the link); a link to a folder inside is not
    descended into (its files are listed where they are). An unreadable folder raises `OSError`.
    """
    root = Path(folder)
    files, skipped = {}, []
    for top, dirs, names in os.walk(root, onerror=_raise):
        file_names = set(names)
        for name in dirs + names:
            path = Path(top) / name
            rel = path.relative_to(root).as_posix()
            if leaves(path, root):
                skipped.append(rel)
            elif name in file_names and path.is_file():
                files[rel] = path
    return dict(sorted(files.items())), sorted(skipped)


def hash_input(path) -> dict:
    """The manifest's record of an input file or folder: its path, the future sha256 of each of its
    files (`folder_files`; a file alone under its name) and, for a folder, the links it skipped."""
    where = Path(path)
    if not where.is_dir():
        return {"path": str(path), "files": hash_in_background({where.name: where})}
    files, skipped = folder_files(where)
    return {"path": str(path), "files": hash_in_background(files), "skipped": skipped}


def prefetch(path) -> None:
    """Start hashing the file ``path``, or every file of folder ``path`` (`hash_input`).

    Nothing is checked here: a path that is missing or unreadable is reported by the
    caller's own reading, and its hash is simply not asked for; nor is a folder's file that
    is a symbolic link out of it, so nothing outside it is read.
    """
    try:
        hash_input(path)
    except OSError:
        pass


def _raise(error: OSError) -> None:
    raise error


def one_malloc_arena() -> None:
    """Make glibc's threads share one malloc arena (a no-op elsewhere); call it before any
    worker thread starts (a thread keeps the arena it first allocated from).

    The writer and hashing threads free bands that other threads allocated; with an arena
    per thread each keeps its freed bands, and peak memory of growing a 2 GB checkpoint
    roughly doubles (benchmarks/apply_bench.py measures it).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "mallopt"):
            libc.mallopt(-8, 1)  # M_ARENA_MAX
    except OSError:
        pass


def _queue() -> queue.Queue:
    global _work
    if _work is None:
        one_malloc_arena()
        _work = queue.Queue()
        threading.Thread(target=_worker, args=(_work,), name="specgrow-sha256", daemon=True).start()
    return _work


def _worker(work: queue.Queue) -> None:
    while True:
        path, future = work.get()
        if not future.set_running_or_notify_cancel():
            continue
        try:
            future.set_result(sha256_file(path))
        except BaseException as exc:  # handed to whoever waits on the future
            future.set_exception(exc)
