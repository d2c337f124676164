"""Atomic outputs: a file or folder is either absent or complete, never half-written.

Everything is written to a temporary sibling first and moved into place with os.replace, which is
atomic on one filesystem. An interrupted build leaves only `<name>.tmp-<pid>-*` siblings, which
are never targets, so doit re-runs the task; the next write of the same name removes them, but only
those whose writing process is gone: a live writer's temp file is never touched (another build, a
`doit list` saving the hash cache, a parallel worker).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"
_UMASK = os.umask(0)
os.umask(_UMASK)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user holds that pid: alive
        return True
    return True


def _prefix(final: Path) -> str:
    return f"{final.name}{TMP_MARK}{os.getpid()}-"


def _remove_stale(final: Path) -> None:
    """Leftovers of an interrupted write of the same target, by a process that is gone."""
    for stale in final.parent.glob(glob.escape(final.name) + TMP_MARK + "*"):
        owner = stale.name[len(final.name) + len(TMP_MARK):].split("-", 1)[0]
        if owner.isdigit() and _alive(int(owner)):  # a live writer (this process too: a thread)
            continue
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it replaces `final` in one rename."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(final)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(final), dir=final.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700; a published folder must be readable
    try:
        yield tmp
        if final.exists():
            # A folder from an earlier, complete run of the same fingerprint: move it aside first
            # (os.replace cannot replace a non-empty folder), then drop it.
            old = final.with_name(_prefix(final) + "old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(final: Path, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary sibling of `final` for writing; it becomes `final` only on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(final)
    fd, name = tempfile.mkstemp(prefix=_prefix(final), dir=final.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(name, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(name, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling path, not yet created, for code that writes a file by its name
    (a library's save(path), a generator); on success the file written there becomes `final` in
    one rename."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(final)
    tmp = final.with_name(_prefix(final) + os.urandom(4).hex())
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


def write_text(path: Path, text: str) -> None:
    with atomic_file(path, "w") as handle:
        handle.write(text)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
