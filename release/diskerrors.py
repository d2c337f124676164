"""A full or read-only disk, said as one line naming the folder.

Libraries report a full disk in their own words, or not at all: torch.onnx.export may leave a
truncated file that onnx then calls INVALID_PROTOBUF, protobuf raises DecodeError, SQLite says
"database or disk is full". So besides the errno of an OSError, a failed write is explained by the
state of the filesystem it wrote to: no space left, or mounted read-only.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
READ_ONLY = {errno.EROFS}
LOW_BYTES = 1 << 20  # below this much free space, a failed write is taken to be the full disk's doing


def _existing(folder: Path) -> Path:
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def disk_state(folder: Path) -> str | None:
    """'no space left on device' / 'read-only file system' for the filesystem holding `folder`, or None."""
    try:
        st = os.statvfs(_existing(folder))
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return "read-only file system"
    if st.f_bavail * st.f_frsize < LOW_BYTES:
        return "no space left on device"
    return None


def explain(exc: BaseException, folder: Path) -> str | None:
    """One line for a failure caused by the disk under `folder` (errno or its state), else None."""
    where = None
    for err in _chain(exc):
        if isinstance(err, OSError) and err.errno in FULL | READ_ONLY:
            what = "read-only file system" if err.errno in READ_ONLY else "no space left on device"
            where = Path(err.filename) if err.filename else Path(folder)
            return _line(what, where)
    what = disk_state(folder)
    return _line(what, Path(folder)) if what else None


def _line(what: str, where: Path) -> str:
    fix = ("free some space there (or point the build at a bigger disk) and run the build again; "
           "finished steps are kept" if what.startswith("no space") else
           "make it writable (or run the build in a writable copy of the project) and run the build again")
    return f"{where}: {what}. Nothing half-written was kept; {fix}."


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__
