"""What the build made, so that it never replaces or deletes what it did not.

A folder the build generates carries `.release-owner.json` (written inside it before it is renamed
into place, so a folder with the mark is complete); a file it writes has a sidecar
`<file>.release-owner.json`, written before the file (claiming the path) and sealed with the file's
hash after it. An existing folder or file without the mark was put there by someone else: the build
refuses to touch it and says how to fix the manifest.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from release.atomic import read_json, write_json
from release.errors import ReleaseError

MARK = ".release-owner.json"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + MARK)


def _refuse(path: Path, field: str, kind: str) -> ReleaseError:
    return ReleaseError(
        f"{field}: {path} already exists and was not made by this build, so it is never replaced or "
        f"deleted. Point {field} at a new {kind} under artifacts/, or move the existing one away.")


def owned_folder(path: Path, fingerprint: str, field: str) -> bool:
    """True: the folder is this build's, made for `fingerprint` (nothing to do). False: absent, empty,
    or the build's for another fingerprint (may be replaced). Raises for a folder that is not ours."""
    path = Path(path)
    if not path.exists():
        return False
    if not path.is_dir():
        raise _refuse(path, field, "folder")
    try:
        return read_json(path / MARK).get("fingerprint") == fingerprint
    except (OSError, ValueError, AttributeError):
        if any(path.iterdir()):
            raise _refuse(path, field, "folder") from None
        return False


def mark_folder(folder: Path, fingerprint: str) -> None:
    write_json(Path(folder) / MARK, {"made_by": "release", "fingerprint": fingerprint})


def owned_file(path: Path, fingerprint: str, field: str) -> bool:
    """True: the file is this build's, complete, made for `fingerprint`. False: absent, or ours but
    stale or unfinished. Raises for an existing file the build never claimed."""
    from release.fingerprint import file_sha256

    path = Path(path)
    try:
        mark = read_json(_sidecar(path))
    except (OSError, ValueError):
        mark = None
    if not path.exists():
        return False
    if not isinstance(mark, dict) or not path.is_file():
        raise _refuse(path, field, "file")
    return mark.get("fingerprint") == fingerprint and mark.get("sha256") == file_sha256(path)


def claim_file(path: Path, fingerprint: str) -> None:
    """Mark `path` as the build's before writing it (a kill mid-write leaves a claimed path)."""
    write_json(_sidecar(Path(path)), {"made_by": "release", "fingerprint": fingerprint, "sha256": None})


def seal_file(path: Path, fingerprint: str) -> None:
    from release.fingerprint import file_sha256

    st = Path(path).stat()
    write_json(_sidecar(Path(path)), {"made_by": "release", "fingerprint": fingerprint,
                                      "sha256": file_sha256(Path(path)), "size": st.st_size,
                                      "mtime_ns": st.st_mtime_ns})


def is_current_file(path: str, fingerprint: str) -> bool:
    """doit uptodate (cheap, by stat): the file is ours, sealed for this fingerprint, unchanged since."""
    try:
        mark, st = read_json(_sidecar(Path(path))), Path(path).stat()
        return mark["fingerprint"] == fingerprint and mark["sha256"] is not None and \
            (mark["size"], mark["mtime_ns"]) == (st.st_size, st.st_mtime_ns)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def is_current_folder(path: str, fingerprint: str) -> bool:
    """doit uptodate: the folder is ours, generated for this fingerprint."""
    try:
        return read_json(Path(path) / MARK)["fingerprint"] == fingerprint
    except (OSError, ValueError, KeyError, TypeError):
        return False


def remove_owned(path: str) -> None:
    """`doit clean` for generated folders and files: remove them only when they carry our mark."""
    path = Path(path)
    if path.is_dir() and (path / MARK).is_file():
        shutil.rmtree(path, ignore_errors=True)
    elif path.is_file() and _sidecar(path).is_file():
        path.unlink()
        _sidecar(path).unlink()
