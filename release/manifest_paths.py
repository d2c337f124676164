"""The paths a manifest names, checked when it loads: each exists and is the right kind (a regular
file, a folder holding images), none is a special file, and what the build writes lies inside
artifacts/."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from release.fingerprint import IMAGE_SUFFIXES
from release.manifest_problems import _Problems, _short
from release.manifest_yaml import _kind_name

IMAGE_SCAN = 2000     # entries of an images folder looked at, breadth first, for one image file
PSEUDO_FS = (Path("/proc"), Path("/sys"), Path("/dev"))


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _pseudo(resolved: Path) -> Path | None:
    """The kernel pseudo-file system (/proc, /sys, /dev but /dev/shm) a path lies on, if any."""
    if resolved.is_relative_to("/dev/shm"):
        return None
    return next((p for p in PSEUDO_FS if resolved.is_relative_to(p)), None)


def _holds_images(folder: Path) -> bool:
    """Whether an image file is among the first IMAGE_SCAN entries of a folder, breadth first
    (COCO file names may name subfolders). Bounded: `/usr` is answered at once, never walked."""
    queue, seen = [folder], 0
    while queue:
        current = queue.pop(0)
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    seen += 1
                    if seen > IMAGE_SCAN:
                        return False
                    try:
                        if entry.name.lower().endswith(IMAGE_SUFFIXES) and entry.is_file():
                            return True
                        if entry.is_dir() and _pseudo(Path(entry.path)) is None:
                            queue.append(entry.path)
                    except OSError:
                        continue
        except OSError:
            continue
    return False


def _get(raw: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(raw, dict):
            return None
        raw = raw.get(key)
    return raw


def _check_kind(problems: _Problems, loc: tuple, value: Any, root: Path, want: str, required: bool,
                images: bool = False) -> None:
    """A path the build reads: when it exists (or always, when `required`), it must be a regular
    file / a folder (not a FIFO, socket, device or kernel pseudo-file, which would hang or fail
    the hashing), and an images folder must hold images."""
    if not isinstance(value, str):
        return  # a wrong type is reported by validation
    path = root / value
    shown = _short(value)
    noun = "file" if want == "file" else "folder"
    try:
        resolved = path.resolve()
        pseudo = _pseudo(resolved)
        if pseudo is not None:
            problems.add(loc, f"{shown} is on {pseudo}, a kernel pseudo-file system, not a data {noun}: "
                              f"point it at a {'regular file' if want == 'file' else 'folder'}.")
            return
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        if required:
            problems.add(loc, f"no such {noun}: {path}. Check the path (relative to the project folder {root}).")
        return
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL byte, a name too long
        problems.add(loc, f"{shown} cannot be used as a path ({_reason(exc)}).")
        return
    if want == "file" and not stat.S_ISREG(st.st_mode):
        problems.add(loc, f"{shown} is not a regular file ({_kind_name(st.st_mode)}): point it at the file itself.")
    elif want == "folder" and not stat.S_ISDIR(st.st_mode):
        problems.add(loc, f"{shown} is not a folder ({_kind_name(st.st_mode)}): point it at a folder.")
    elif images and not _holds_images(path):
        problems.add(loc, f"{shown} holds no image files ({', '.join(IMAGE_SUFFIXES)}) among its first "
                          f"{IMAGE_SCAN} entries: point it at the folder of the split's images.")


def _check_written(problems: _Problems, loc: tuple, value: Any, root: Path, raw: dict, example: str) -> Path | None:
    """A path the build writes (and may replace wholesale) must resolve inside <root>/artifacts/,
    outside the folders the build manages itself. Returns the resolved path when it is fine."""
    if not isinstance(value, str):
        return None
    artifacts = root / "artifacts"
    try:
        resolved, inside = (root / value).resolve(), artifacts.resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        problems.add(loc, f"{_short(value)} cannot be used as a path ({_reason(exc)}).")
        return None
    if resolved == inside or not resolved.is_relative_to(inside):
        problems.add(loc, f"{_short(value)} resolves to {_short(str(resolved))}, outside the build folder "
                          f"{artifacts}/: the demo writes here; point it under artifacts/ (e.g. {example}).")
        return None
    top = resolved.relative_to(inside).parts[0]
    name = raw.get("name") if isinstance(raw.get("name"), str) else None
    managed = top in ("stages", "measure", "mlflow") or top.startswith(".") or (
        top == name and resolved.relative_to(inside).parts[1:2] == ("release",))
    if managed:
        problems.add(loc, f"{_short(value)} is inside artifacts/{top}/, which the build manages itself: the demo "
                          f"writes here; point it at a place of its own under artifacts/ (e.g. {example}).")
        return None
    return resolved


def _check_paths(raw: dict, root: Path, problems: _Problems) -> None:
    """Paths the build writes stay inside artifacts/; paths it reads are a file / a folder."""
    demo = isinstance(raw.get("demo"), dict)
    checkpoint = _get(raw, "source", "checkpoint")
    if demo:
        data_dir = _check_written(problems, ("demo", "data_dir"), _get(raw, "demo", "data_dir"), root, raw,
                                  "artifacts/demo/data")
        ckpt = _check_written(problems, ("source", "checkpoint"), checkpoint, root, raw,
                              "artifacts/demo/train_last.ckpt")
        if data_dir is not None and ckpt is not None and (
                ckpt.is_relative_to(data_dir) or data_dir.is_relative_to(ckpt)):
            problems.add(("source", "checkpoint"), "the demo trains this checkpoint and regenerates demo.data_dir as "
                                                   "a whole: keep the checkpoint outside demo.data_dir.")
        _check_kind(problems, ("demo", "data_dir"), _get(raw, "demo", "data_dir"), root, "folder", required=False)
    _check_kind(problems, ("source", "checkpoint"), checkpoint, root, "file", required=False)
    for split in ("train", "calibration", "tuning", "eval"):
        ref = _get(raw, "data", split)
        if not isinstance(ref, dict):
            continue
        _check_kind(problems, ("data", split, "annotations"), ref.get("annotations"), root, "file",
                    required=not demo)
        _check_kind(problems, ("data", split, "images"), ref.get("images"), root, "folder", required=not demo,
                    images=not demo)
