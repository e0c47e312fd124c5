"""sha256 of files on a worker thread, started as early as the caller knows the files.

``apply`` records its input files' hashes in the manifest. It asks for them as soon as it
has parsed its arguments, before torch and SymPy load: hashing releases the GIL, so another
core hashes while this one imports (about two seconds of a 2 GB checkpoint's hashing that
no longer waits for anything). Asking again for the same file (same size and modification
time) gives the same future. The worker is a daemon thread: a run that stops early does not
wait for hashing it no longer needs.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from concurrent.futures import Future
from pathlib import Path

from specgrow.lower.links import leaves

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".distcp")

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


def hash_in_background(paths) -> dict:
    """``{file name: future sha256}``, hashed on the worker thread while the caller works
    (files `prefetch` started on are not hashed twice)."""
    return {p.name: sha256_later(p) for p in paths}


def resolved(value):
    """``value`` with the futures of a `hash_in_background` dict waited for (anything else as it is)."""
    return {name: future.result() for name, future in value.items()} if isinstance(value, dict) else value


def prefetch(path) -> None:
    """Start hashing the weight file ``path``, or the weight files in folder ``path``.

    Nothing is checked here: a path that is missing or unreadable is reported by the
    caller's own reading, and its hash is simply not asked for; nor is a folder's file that
    is a symbolic link out of it (the caller refuses it), so nothing outside it is read.
    """
    path = Path(path)
    try:
        if path.is_dir():
            for item in sorted(path.iterdir()):
                if item.suffix in WEIGHT_SUFFIXES and item.is_file() and not leaves(item, path):
                    sha256_later(item)
        elif path.is_file():
            sha256_later(path)
    except OSError:
        pass


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
