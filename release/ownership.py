"""What the build made, so that it never replaces or deletes what it did not.

A folder the build generates carries `.release-owner.json` (written inside it before it is renamed
into place, so a folder with the mark is complete); a file it writes has a sidecar
`<file>.release-owner.json`, written before the file (claiming the path) and sealed with the file's
hash after it. An existing folder or file without the mark was put there by someone else: the build
refuses to touch it and says how to fix the manifest.

What the stage store holds (release/manifest_paths.py) is verified before it is reused, wherever it
came from (this build, another project sharing the store, a CI cache): a stage output against the
hash its stage.json records, a measurement against the hash its sidecar seals.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from release.atomic import read_json, write_json
from release.errors import ReleaseError
from release.fingerprint import file_sha256

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


# ---------------------------------------------------------------- the stage store

def output_verified(out_dir: str, fingerprint: str, stamps: str) -> bool:
    """doit uptodate for a stage (it has no file_dep, so doit's own state is not needed: a store
    restored on a fresh runner is up to date): out_dir holds the output committed for this very
    fingerprint, byte for byte what its stage.json records. Each file is hashed once as it is on
    this machine, then checked by a stamp under `stamps` (this project's artifacts/.cache, never the
    store) of its size, mtime, ctime and inode: a restore or any write gives a new ctime, which
    cannot be set back, so bytes changed behind the build's back are hashed again and seen."""
    from release.plan import OUTPUT_FILE

    try:
        record = read_json(Path(out_dir) / "stage.json")
        output = Path(out_dir) / OUTPUT_FILE[record["produces"]]
        expected, st = record["output_sha256"], output.stat()
        if record["fingerprint"] != fingerprint or not isinstance(expected, str):
            return False
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    now = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    stamp = Path(stamps) / f"{hashlib.sha256(str(output).encode()).hexdigest()[:32]}.json"
    try:
        known = read_json(stamp)
        if known["stat"] == now and known["sha256"] == expected:
            return True
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        if file_sha256(output) != expected:
            return False  # the stage runs; its action finds no committed output and builds it anew
        write_json(stamp, {"path": str(output), "stat": now, "sha256": expected})
    except OSError:
        return False
    return True


def is_sealed(path: str, key: str) -> bool:
    """doit uptodate for a measurement: the file is the one sealed for this key, byte for byte (a
    measurement is a small json file: hashed every time)."""
    try:
        mark = read_json(_sidecar(Path(path)))
        return mark["fingerprint"] == key and mark["sha256"] == file_sha256(Path(path))
    except (OSError, ValueError, KeyError, TypeError):
        return False


def drop_unsealed(path: str, key: str) -> None:
    """Before a measurement: a file there not sealed for its key (edited, damaged, or written by a
    run killed before it sealed it) is removed, so it is measured again, never served."""
    if Path(path).exists() and not is_sealed(path, key):
        Path(path).unlink(missing_ok=True)
        _sidecar(Path(path)).unlink(missing_ok=True)


def remove_sealed(path: str) -> None:
    """`doit clean` for a measurement: the file and its seal."""
    Path(path).unlink(missing_ok=True)
    _sidecar(Path(path)).unlink(missing_ok=True)
