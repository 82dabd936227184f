"""Atomic writes: a reader (or a killed writer) never sees a half-written artifact.

Every file is written to a temporary sibling and renamed into place; a directory
is built under a temporary name and swapped in only when complete (on Linux with one
`renameat2(RENAME_EXCHANGE)`, so the target never disappears, not even for an instant).

Temporary names are hidden and say whose they are, `.<target name>.<writer pid>.<random>.tmp`,
so no reader mistakes one for the artifact. A writer killed mid-write (SIGKILL runs no clean-up)
leaves its temporary behind; the next write of the same target removes it once its writer is
gone, so a killed stage does not leave litter inside a DVC output that a later run would cache.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

TEMP_SUFFIXES = (".tmp", ".old")
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_LIBC = ctypes.CDLL(None, use_errno=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."


def _new_temp(target: Path, suffix: str, directory: bool) -> Path:
    """A fresh temporary next to `target`, created with the modes plain `open`/`mkdir` give (umask
    applied), so artifacts keep the permissions users expect rather than mkstemp's private 0600."""
    while True:
        path = target.parent / f"{_temp_prefix(target)}{secrets.token_hex(6)}{suffix}"
        try:
            if directory:
                os.mkdir(path, 0o777)
            else:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return path


def _writer_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def stale_temps(target: str | os.PathLike[str]) -> list[Path]:
    """Temporaries of `target` whose writer process no longer exists (killed mid-write)."""
    target = Path(target)
    prefix = f".{target.name}."
    if not target.parent.is_dir():
        return []
    stale = []
    for entry in target.parent.iterdir():
        name = entry.name
        if not name.startswith(prefix) or not name.endswith(TEMP_SUFFIXES):
            continue
        pid, dot, random_part = name[len(prefix) : -len(".tmp")].partition(".")
        if dot and pid.isdigit() and "." not in random_part and not _writer_alive(int(pid)):
            stale.append(entry)
    return stale


def remove_stale_temps(target: str | os.PathLike[str]) -> list[Path]:
    """Delete what killed writers of `target` left behind; returns what was removed."""
    removed = stale_temps(target)
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return removed


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `target`; rename it onto `target` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    tmp = _new_temp(target, ".tmp", directory=False)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike[str], text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | os.PathLike[str], obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_npy(target: str | os.PathLike[str], array: np.ndarray) -> None:
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step; False where the kernel or file system cannot."""
    renameat2 = getattr(_LIBC, "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _swap_in(tmp: Path, target: Path) -> None:
    """Put the complete `tmp` in place of `target`; the old content ends up at `tmp` (then deleted)."""
    if not os.path.lexists(target):
        os.replace(tmp, target)
    elif not _exchange(tmp, target):
        # two renames, with a moment where `target` is absent: its old content waits at `.old`
        old = _new_temp(target, ".old", directory=True)
        old.rmdir()
        os.replace(target, old)
        os.replace(tmp, target)
        os.replace(old, tmp)


def _restore_interrupted_swap(target: Path) -> None:
    """A writer killed between the two renames of the fallback swap left the old content at `.old`."""
    if not os.path.lexists(target):
        for path in stale_temps(target):
            if path.name.endswith(".old"):
                os.replace(path, target)
                return


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary directory that replaces `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _restore_interrupted_swap(target)
    remove_stale_temps(target)
    tmp = _new_temp(target, ".tmp", directory=True)
    try:
        yield tmp
        _swap_in(tmp, target)
        _fsync_dir(target.parent)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp)
        else:
            tmp.unlink(missing_ok=True)
