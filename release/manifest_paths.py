"""The paths a manifest names, checked when it loads: each exists and is the right kind (a regular
file, a folder holding images), none is a special file, and what the build writes lies inside
artifacts/ -- but the stage store (`store.path` or RELEASE_STORE), which may also be a folder
outside the project, apart from everything the build reads."""

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
STORE_ENV = "RELEASE_STORE"  # the stage store's folder; wins over the manifest's store.path


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
    file / a folder / either (`want`: "file", "folder", "any", or "labels": either, said as a split's
    annotations; not a FIFO, socket, device or kernel
    pseudo-file, which would hang or fail the hashing), and an images folder must hold images."""
    if not isinstance(value, str):
        return  # a wrong type is reported by validation
    path = root / value
    shown = _short(value)
    noun = {"file": "file", "folder": "folder", "labels": "file"}.get(want, "file or folder")
    try:
        resolved = path.resolve()
        pseudo = _pseudo(resolved)
        if pseudo is not None:
            problems.add(loc, f"{shown} is on {pseudo}, a kernel pseudo-file system, not a data {noun}: "
                              f"point it at a {'folder' if want == 'folder' else 'regular file'}"
                              f"{' or a folder' if want == 'any' else ''}.")
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
    elif want == "any" and not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        problems.add(loc, f"{shown} is neither a regular file nor a folder ({_kind_name(st.st_mode)}).")
    elif want == "labels" and not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        problems.add(loc, f"{shown} is not a regular file ({_kind_name(st.st_mode)}) nor a folder: point it at the "
                          f"annotations file, or the folder of label files.")
    elif images and not _holds_images(path):
        problems.add(loc, f"{shown} holds no image files ({', '.join(IMAGE_SUFFIXES)}) among its first "
                          f"{IMAGE_SCAN} entries: point it at the folder of the split's images.")


def _resolved(root: Path, value: Any) -> Path | None:
    if not isinstance(value, str):
        return None
    try:
        return (root / value).resolve()
    except (OSError, RuntimeError, ValueError):
        return None


def _example(value: str, name: str) -> str:
    """Where under artifacts/ a refused out could go instead: its own name, or the generator's."""
    base = Path(value).name if "\x00" not in value else ""
    if base in ("", ".", "..", "artifacts", "stages", "measure", "mlflow") or base.startswith(".") or len(base) > 60:
        base = name
    return f"artifacts/{base}"


def _check_written(problems: _Problems, loc: tuple, value: Any, root: Path, raw: dict, writer: str,
                   example: str) -> Path | None:
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
                          f"{artifacts}/: {writer} writes here; point it under artifacts/ (e.g. {example}).")
        return None
    top = resolved.relative_to(inside).parts[0]
    name = raw.get("name") if isinstance(raw.get("name"), str) else None
    managed = top in ("stages", "measure", "mlflow") or top.startswith(".") or (
        top == name and resolved.relative_to(inside).parts[1:2] == ("release",))
    if managed:
        problems.add(loc, f"{_short(value)} is inside artifacts/{top}/, which the build manages itself: {writer} "
                          f"writes here; point it at a place of its own under artifacts/ (e.g. {example}).")
        return None
    return resolved


def _generator_outs(raw: dict, root: Path, problems: _Problems) -> dict[str, Path | None]:
    """generate.<name>.out, each checked: inside artifacts/, not a folder the build manages, apart
    from every other generator's out (each is replaced as a whole), a file or folder when it exists.
    Returns name -> resolved path, refused ones included, so that what they would hold is not also
    reported missing."""
    gens = raw.get("generate")
    if not isinstance(gens, dict):
        return {}
    outs: dict[str, Path | None] = {}
    accepted: dict[str, Path] = {}
    for name, g in gens.items():
        value = g.get("out") if isinstance(g, dict) else None
        if not isinstance(name, str) or not isinstance(value, str):
            continue
        loc = ("generate", name, "out")
        resolved = _check_written(problems, loc, value, root, raw, f"generate.{name}", _example(value, name))
        if resolved is not None:
            other = next((n for n, p in accepted.items() if resolved.is_relative_to(p) or p.is_relative_to(resolved)),
                         None)
            if other is not None:
                problems.add(loc, f"{_short(value)} overlaps generate.{other}.out ({_short(gens[other]['out'])}), "
                                  f"and each generator replaces its out as a whole: give each one a place of "
                                  f"its own under artifacts/.")
            else:
                accepted[name] = resolved
                _check_kind(problems, loc, value, root, "any", required=False)
        outs[name] = resolved or _resolved(root, value)
    return outs


def _check_paths(raw: dict, root: Path, problems: _Problems) -> None:
    """Paths the build writes stay inside artifacts/; paths it reads are a file / a folder, unless a
    generator makes them."""
    from release.generate import owner

    outs = _generator_outs(raw, root, problems)
    _check_store(raw, root, problems, outs)

    def made_by(value: Any) -> str | None:
        return owner(_resolved(root, value), outs) if isinstance(value, str) else None

    checkpoint = _get(raw, "source", "checkpoint")
    if made_by(checkpoint) is None:
        _check_kind(problems, ("source", "checkpoint"), checkpoint, root, "file", required=False)
    for split in ("train", "calibration", "tuning", "eval"):
        ref = _get(raw, "data", split)
        if not isinstance(ref, dict):
            continue
        owners = {key: made_by(ref.get(key)) for key in ("annotations", "images") if isinstance(ref.get(key), str)}
        made = [key for key, name in owners.items() if name is not None]
        if made and len(made) < len(owners):
            other = next(key for key in owners if key not in made)
            problems.add(("data", split), f"data.{split}.{made[0]} is inside generate.{owners[made[0]]}.out, but "
                                          f"data.{split}.{other} is not: a split is read from one place; point "
                                          f"both into what generate.{owners[made[0]]} makes, or both at your own "
                                          f"data.")
            continue
        # auto: a COCO json or a folder of VOC / YOLO labels (which one is told once the format is detected)
        want = {"coco": "file", "yolo": "folder", "voc": "folder"}.get(ref.get("format"), "labels")
        _check_kind(problems, ("data", split, "annotations"), ref.get("annotations"), root, want,
                    required=not made)
        _check_kind(problems, ("data", split, "images"), ref.get("images"), root, "folder", required=not made,
                    images=not made)
        if made_by(ref.get("names")) is None:
            _check_kind(problems, ("data", split, "names"), ref.get("names"), root, "file", required=True)


def _resolve_data(manifest, problems: _Problems):
    """The manifest with each split's format detected (release/data_formats.py) and, for YOLO, its
    labels folder written into `annotations`; its names file read. Problems are located at the field
    to fix. A split a generator makes is not looked at (its files do not exist yet)."""
    from release import fingerprint
    from release.data_formats import LayoutError, check_labels, locate, read_names
    from release.errors import DataError
    from release.generate import owner

    outs = {name: g.out for name, g in manifest.generate.items()}
    updates = {}
    for split in ("train", "calibration", "tuning", "eval"):
        ref = getattr(manifest.data, split)
        if ref is None:
            continue
        paths = [p for p in (ref.annotations, ref.images) if p is not None]
        made = any(owner(p, outs) for p in paths)
        if not made and not (_there(ref.images, folder=True) and (ref.annotations is None or _there(ref.annotations))):
            continue  # reported by _check_paths
        try:
            layout = locate(ref, split, on_disk=not made)
            if not made:
                check_labels(layout, split)
        except LayoutError as exc:
            problems.add(("data", split, exc.field), exc.reason)
            continue
        fingerprint.READ.update(layout.probed)
        if isinstance(ref.names, Path) and owner(ref.names, outs) is None and ref.names.is_file():
            try:
                read_names(ref.names, split)
            except DataError as exc:
                problems.add(("data", split, "names"), str(exc).replace(":\n- ", ": ").replace("\n- ", "; "))
        if split == "eval" and layout.format == "images":
            if layout.unnamed is not None:
                problems.add(("data", "eval"), f"mAP needs labels, and the YOLO labels in {layout.unnamed} cannot be "
                                               f"read without the class names: give data.eval.names (a list, a "
                                               f"data.yaml or a classes.txt).")
            else:
                problems.add(("data", "eval"), _unlabelled(layout, made))
            continue
        if layout.format != "images":
            updates[split] = ref.model_copy(update={"format": layout.format, "annotations": layout.annotations})
    return manifest.model_copy(update={"data": manifest.data.model_copy(update=updates)}) if updates else manifest


def _there(path: Path, folder: bool = False) -> bool:
    try:
        return path.is_dir() if folder else (path.is_file() or path.is_dir())
    except (OSError, ValueError):
        return False


def _unlabelled(layout, made: bool) -> str:
    from release.data_formats import sibling_labels

    if made:
        return ("mAP needs labels: give data.eval its annotations, or format: yolo with names when the "
                "generator writes YOLO labels")
    sibling = sibling_labels(layout.images)
    return ("mAP needs labels: give data.eval its annotations (a COCO json, a folder of VOC xml), or YOLO "
            "<image stem>.txt label files beside the images" + (f" or in {sibling}" if sibling else "")
            + ", with names")


# ---------------------------------------------------------------- the stage store

def store_folder(configured: Path | str | None, root: Path) -> Path | None:
    """The stage store: RELEASE_STORE when set (relative to the project root), else the manifest's
    store.path, else None, meaning artifacts/ (as is a store that is artifacts/ itself)."""
    value = os.environ.get(STORE_ENV) or configured
    if not value:
        return None
    path, artifacts = Path(os.path.abspath(Path(root) / value)), Path(os.path.abspath(Path(root) / "artifacts"))
    return None if path == artifacts else path


def _reads(raw: dict, root: Path, outs: dict[str, Path | None]) -> list[tuple[str, Path]]:
    """(field, resolved path) of what the build reads or a generator writes."""
    found = [("source.checkpoint", _resolved(root, _get(raw, "source", "checkpoint")))]
    for split in ("train", "calibration", "tuning", "eval"):
        found += [(f"data.{split}.{key}", _resolved(root, _get(raw, "data", split, key))) for key in ("annotations", "images")]
    found += [(f"generate.{name}.out", out) for name, out in outs.items()]
    return [(field, path) for field, path in found if path is not None]


def _store_problem(value: str, root: Path, raw: dict, outs: dict[str, Path | None]) -> str | None:
    """Why a store folder cannot be used, or None. It is artifacts/ (or a folder under it the build
    does not manage), or a folder outside the project; it neither lies in nor holds what the build
    reads (a restore or `doit clean` of the store would touch it, and writing there would move the
    stamps of the data)."""
    fix = "point it at artifacts/ (the default), or at a folder of its own outside the project (e.g. ../release-store)"
    try:
        store, project = (root / value).resolve(), root.resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        return f"{_short(value)} cannot be used as a path ({_reason(exc)})."
    artifacts = project / "artifacts"
    shown = f"{_short(value)} (resolved: {_short(str(store))})"
    if _pseudo(store) is not None:
        return f"{shown} is on {_pseudo(store)}, a kernel pseudo-file system: {fix}."
    if store.exists() and not store.is_dir():
        return f"{shown} exists and is not a folder: {fix}."
    if project.is_relative_to(store):
        return f"{shown} holds the project folder {project}: {fix}."
    if store == artifacts:
        return None
    if store.is_relative_to(artifacts):
        top = store.relative_to(artifacts).parts[0]
        if top in ("stages", "measure", "mlflow") or top.startswith(".") or top == raw.get("name"):
            return f"{shown} is inside artifacts/{top}/, which the build manages itself: {fix}."
    elif store.is_relative_to(project):
        return (f"{shown} is inside the project folder but not under artifacts/, and the build writes in the "
                f"project only under artifacts/: {fix}.")
    for field, path in _reads(raw, root, outs):
        if store.is_relative_to(path) or path.is_relative_to(store):
            where = "inside" if store.is_relative_to(path) else "around"
            return (f"{shown} is {where} {field} ({_short(str(path))}), which the build reads or makes: a "
                    f"restored or cleaned store would touch it; {fix}.")
    return None


def _check_store(raw: dict, root: Path, problems: _Problems, outs: dict[str, Path | None]) -> None:
    """store.path and RELEASE_STORE (both when both are set: the manifest is checked whatever the
    environment says)."""
    value = _get(raw, "store", "path")
    if isinstance(value, str):
        problem = _store_problem(value, root, raw, outs)
        if problem:
            problems.add(("store", "path"), problem)
    env = os.environ.get(STORE_ENV)
    if env:
        problem = _store_problem(env, root, raw, outs)
        if problem:  # not in the YAML: no line (add() would locate it at the top of the file)
            problems.count += 1
            if len(problems.items) < problems.SHOWN:
                problems.items.append(f"  {STORE_ENV} (environment variable, relative to {root}): {problem} "
                                      f"Or unset {STORE_ENV}.")


def _absolute(manifest, root: Path):
    """The manifest with every relative path in it resolved against the project root."""
    from pydantic import BaseModel

    def fix(model: BaseModel) -> BaseModel:
        updates = {}
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, Path) and not value.is_absolute():
                updates[name] = root / value
            elif isinstance(value, BaseModel):
                updates[name] = fix(value)
            elif isinstance(value, dict) and any(isinstance(v, BaseModel) for v in value.values()):
                updates[name] = {k: fix(v) if isinstance(v, BaseModel) else v for k, v in value.items()}
        return model.model_copy(update=updates) if updates else model

    return fix(manifest)
