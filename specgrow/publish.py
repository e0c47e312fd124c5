"""Output paths that never lose the user's data.

`refuse_overlap` refuses an output that is, lies inside or contains one of the run's inputs
(the spec, the checkpoint, the optimizer state). `output_target` refuses an output that is a
file or a symbolic link (``--overwrite`` replaces a folder, never anything else) or that
exists without ``--overwrite``. `publish` moves a complete temporary folder into place:

- without ``overwrite``, with ``renameat2(RENAME_NOREPLACE)``: whatever appeared at the
  output meanwhile (another run's folder included) is kept, and the run fails;
- with ``overwrite``, with ``renameat2(RENAME_EXCHANGE)``: the new folder and the old one
  trade places in one call, so the output holds the old or the new complete folder at every
  instant; the old one, now at the temporary name, is then removed.

Where ``renameat2`` is missing (not Linux, or a file system without these flags), the same
steps run under a lock file ``.NAME.lock`` created with ``O_CREAT | O_EXCL`` beside the
output, so concurrent specgrow runs still publish one at a time and exactly one of them wins;
a plain ``rename`` can then replace only an empty folder that another program creates in the
instant after the check, and with ``overwrite`` the output is missing for the instant
between two renames (a kill then leaves the old folder at ``.NAME.tmp-*.old``).

Stdlib only: ``prove`` uses it from the light install.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import shutil
import stat
import time
from pathlib import Path

from specgrow.errors import InputError

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
UNSUPPORTED = (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP)  # renameat2 or its flag is not available
LOCK_WAIT_S = 10.0  # a lock is held for two renames: longer means a run was killed holding it


def refuse_overlap(output: str, sources: dict[str, str | None]) -> None:
    """Raise unless ``output`` is apart from every ``{label: path}`` (``None``: no such input).

    Paths are compared resolved (symbolic links and ``..`` followed), and as files where both
    exist (hard links, bind mounts)."""
    out = Path(os.path.realpath(output))
    for label, source in sources.items():
        if source is None:
            continue
        real = Path(os.path.realpath(source))
        if out == real or out in real.parents or real in out.parents or _same_file(output, source):
            raise InputError(f"output '{output}' overlaps {label} '{source}' (the same path, inside it or "
                             "containing it); nothing written", path=output)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def output_target(output: str, overwrite: bool) -> Path:
    """The folder ``output`` names, its parent resolved; raises for a file, a symbolic link,
    or an existing folder without ``overwrite``."""
    path = Path(output)
    final = path.resolve() if path.name in ("", "..") else Path(os.path.realpath(path.parent)) / path.name
    if not final.name:
        raise InputError(f"output '{output}' names no folder", path=output)
    if os.path.lexists(final) and not _is_folder(final):
        raise InputError(f"output '{output}' is a {_kind(final)}: --overwrite replaces a folder, never a file "
                         "or a symbolic link", path=output)
    if final.exists() and not overwrite:
        raise InputError(f"output '{output}' already exists (pass --overwrite to replace it)", path=output)
    return final


def _is_folder(path: Path) -> bool:
    """A real folder, not a symbolic link to one."""
    return stat.S_ISDIR(os.lstat(path).st_mode)


def _kind(path: Path) -> str:
    return "symbolic link" if path.is_symlink() else "file"


def publish(tmp: Path, final: Path, overwrite: bool, shown: str) -> None:
    """Rename the complete folder ``tmp`` to ``final`` (named ``shown`` in errors).

    Without ``overwrite`` nothing at ``final`` is ever replaced: a folder that appeared there
    since `output_target` makes it fail, ``tmp`` left as it was. With ``overwrite``, a folder
    at ``final`` is exchanged with ``tmp`` atomically, then removed."""
    if not (overwrite and _swap(tmp, final, shown)):
        _rename_new(tmp, final, shown)


def _rename_new(tmp: Path, final: Path, shown: str) -> None:
    try:
        done = _rename2(tmp, final, RENAME_NOREPLACE)
    except FileExistsError:
        raise _appeared(shown) from None
    if not done:
        with _locked(final, shown):
            if os.path.lexists(final):
                raise _appeared(shown)
            os.rename(tmp, final)


def _swap(tmp: Path, final: Path, shown: str) -> bool:
    """Exchange ``tmp`` with the folder at ``final`` and remove the old one; False if none is there."""
    try:
        done = _rename2(tmp, final, RENAME_EXCHANGE)
    except FileNotFoundError:
        return False
    if not done:
        return _swap_locked(tmp, final, shown)
    if not _is_folder(tmp):  # a file or link took the folder's place since the check: put it back
        _rename2(tmp, final, RENAME_EXCHANGE)
        raise _not_folder(shown, final)
    shutil.rmtree(tmp, ignore_errors=True)  # the old output: the new one is in place already
    return True


def _swap_locked(tmp: Path, final: Path, shown: str) -> bool:
    """`_swap` by two renames, under the lock: ``final`` is missing between them."""
    with _locked(final, shown):
        if not os.path.lexists(final):
            return False
        if not _is_folder(final):
            raise _not_folder(shown, final)
        aside = tmp.with_name(tmp.name + ".old")
        os.rename(final, aside)
        try:
            os.rename(tmp, final)
        except OSError:
            os.rename(aside, final)
            raise
    shutil.rmtree(aside, ignore_errors=True)
    return True


def _appeared(shown: str) -> InputError:
    return InputError(f"output '{shown}' appeared while apply ran; nothing replaced", path=shown)


def _not_folder(shown: str, final: Path) -> InputError:
    return InputError(f"output '{shown}' became a {_kind(final)} while apply ran; nothing replaced "
                      "(--overwrite replaces a folder, never a file or a symbolic link)", path=shown)


@contextlib.contextmanager
def _locked(final: Path, shown: str):
    """Hold ``.NAME.lock`` beside ``final``, waiting up to `LOCK_WAIT_S` for another run's."""
    lock = final.with_name(f".{final.name}.lock")
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            break
        except FileExistsError:
            if time.monotonic() > deadline:
                raise InputError(f"output '{shown}' is locked by '{lock}' (left by a killed run? remove it "
                                 "if no specgrow runs)", path=shown) from None
            time.sleep(0.01)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _rename2(src: Path, dst: Path, flag: int) -> bool:
    """``renameat2(src, dst, flag)``: True when done, False when the call or the flag is not
    available here; other failures raise `OSError` (FileExistsError, FileNotFoundError, ...)."""
    call = _renameat2()
    if call is None:
        return False
    if call(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flag) == 0:
        return True
    code = ctypes.get_errno()
    if code in UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(src), None, str(dst))


@functools.cache
def _renameat2():
    """The C library's ``renameat2`` (glibc 2.28+, musl 1.2.2+), or None where it is missing."""
    try:
        call = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError, TypeError):  # no such symbol, or no C library to look in
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    call.restype = ctypes.c_int
    return call

