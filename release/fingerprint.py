"""Fingerprints: content hashes that chain through the pipeline, and a stat cache for large files.

A stage's fingerprint covers what can change its output: its name, version and source code, its
params, its input's fingerprint, the versions of the tools it calls, and the content of any data it
reads. Never timestamps or absolute paths. Hashing a 125 MB checkpoint on every no-op would be slow,
so file hashes are cached by (path, size, mtime) like DVC does.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")  # the image files a split is read from
# Every path a fingerprint read (files hashed, folders listed): the plan records their stamps.
READ: set[str] = set()


def digest(*parts: Any) -> str:
    """sha256 of a canonical JSON rendering of `parts`."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def tool_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Installed versions from package metadata: costs no import of the tools themselves."""
    return {name: _version(name) for name in names}


@functools.lru_cache(maxsize=None)
def _version(name: str) -> str:
    # Parsing a package's METADATA costs ~2 ms; a plan asks for each tool once per stage node, so
    # without the cache a nine-variant manifest spent 0.35 s of its no-op here.
    from importlib import metadata  # ~15 ms to import: only when a plan is made, never on a no-op

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


class HashCache:
    """sha256 of files, remembered by (size, mtime_ns) in a json file under artifacts/."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._dirty = False
        try:
            self._entries: dict[str, list] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self._entries = {}

    def file(self, path: Path) -> str:
        path = Path(path)
        READ.add(str(path))
        st = path.stat()
        key = str(path.resolve())
        entry = self._entries.get(key)
        if entry and entry[0] == st.st_size and entry[1] == st.st_mtime_ns:
            return entry[2]
        sha = file_sha256(path)
        self._entries[key] = [st.st_size, st.st_mtime_ns, sha]
        self._dirty = True
        return sha

    def folder(self, path: Path, names: list[str] | None = None) -> str:
        """Hash of the named files (or every file) of a folder, by relative name and content."""
        path = Path(path)
        names = sorted(names) if names is not None else sorted(
            str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
        return digest([(n, self.file(path / n) if (path / n).is_file() else "missing") for n in names])

    def split(self, annotations: Path | None, images: Path, format: str = "auto", names=None) -> str:
        """Hash of what a data split is read from: its annotations and the images they name, or, for
        an images-only split, the image files at the top of its folder (as release.data reads them);
        for YOLO and VOC (`format`, `names` as in the manifest's DataRef), every label file and the
        names file too (self.labels). Only those files are hashed, so a folder that holds other
        things (or /usr) costs nothing more."""
        images = Path(images)
        READ.add(str(images))
        if format in ("yolo", "voc") or (annotations is not None and os.path.isdir(annotations)):
            labels, read = self._labelled(annotations, images, format, names)
            return digest(labels, self.folder(images, read))
        if annotations is None:
            with os.scandir(images) as entries:
                names = [e.name for e in entries if e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file()]
            return self.folder(images, names)
        ann = self.file(annotations)
        key = f"names:{ann}"  # the names an annotations file lists, remembered by its content
        names = self._entries.get(key)
        if names is None:
            try:
                doc = json.loads(Path(annotations).read_text(encoding="utf-8"))
                names = sorted({str(im["file_name"]) for im in doc["images"]})
            except (OSError, ValueError, KeyError, TypeError):
                return digest(ann, "unreadable")  # the stage reading it reports the problem, located
            self._entries[key] = names
            self._dirty = True
        # A name that leaves the folder is never opened (release.data refuses it, located).
        safe = [n for n in names if not os.path.isabs(n) and ".." not in Path(n).parts]
        return digest(ann, self.folder(images, safe))

    def labels(self, annotations: Path | None, images: Path, format: str = "auto", names=None) -> str:
        """Hash of a split's labels: the COCO json, or YOLO / VOC label files and the class names."""
        if format in ("yolo", "voc") or (annotations is not None and os.path.isdir(annotations)):
            return self._labelled(annotations, images, format, names)[0]
        return self.file(annotations)

    def _labelled(self, annotations, images: Path, format: str, names) -> tuple[str, list[str]]:
        """(hash of the label files and names, the image files read) of a YOLO or VOC split: YOLO
        reads every image at the top of its folder and <stem>.txt where there is one, VOC every
        .xml and the image of its stem (release/data_yolo.py, data_voc.py)."""
        from types import SimpleNamespace

        from release.data_formats import files_with, image_names, locate
        from release.errors import DataError

        try:
            layout = locate(SimpleNamespace(format=format, annotations=annotations, images=images, names=names))
            folder = Path(layout.annotations)
            READ.update([str(folder), *layout.probed])
            pictures = image_names(images)
            stems = {os.path.splitext(n)[0]: n for n in reversed(pictures)}
            if layout.format == "voc":
                labels = files_with(folder, ".xml")
                pictures = sorted(stems[s] for s in (os.path.splitext(x)[0] for x in labels) if s in stems)
            else:
                labels = sorted(set(files_with(folder, ".txt")) & {f"{s}.txt" for s in stems})
        except (DataError, OSError, TypeError):
            return digest(format, str(annotations), "unreadable"), []  # the stage reading it says why, located
        named = names if not isinstance(names, (str, Path)) else self.file(names) if os.path.isfile(names) else "missing"
        return digest(layout.format, named, self.folder(folder, labels)), pictures

    def save(self) -> None:
        if not self._dirty:
            return
        from release.atomic import write_text

        # Merge with what another process (a parallel doit worker) may have written meanwhile.
        try:
            on_disk = json.loads(self.path.read_text())
        except (OSError, ValueError):
            on_disk = {}
        on_disk.update(self._entries)
        write_text(self.path, json.dumps(on_disk))
        self._dirty = False


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in blocks of 1 MiB (a report or a source file, a model, a checkpoint)."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_hash(path: Path | None) -> str:
    """sha256 of a source file (a stage's or a model's code); 'none' when there is no file."""
    if path:
        READ.add(str(path))
    return file_sha256(path) if path and os.path.isfile(path) else "none"
