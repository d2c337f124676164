"""Datasets as users have them: which format a split is in, where its labels are, its class names.

A manifest's `data.<split>` is one of:

- **COCO**: `annotations` is a COCO json file, `images` the folder its file names are relative to
  (release/data.py reads it).
- **YOLO txt**: `images` is a folder of images; each image's labels are `<stem>.txt` beside it or in
  the sibling labels folder (the path with its last `images` component replaced by `labels`, as
  YOLOv5 lays out `images/<split>` and `labels/<split>`), or in the folder `annotations` names.
  Class names come from `names`: a list, a `data.yaml` (its `names` key: a list or an
  {index: name} mapping) or a `classes.txt` (one per line). release/data_yolo.py reads it.
- **Pascal VOC xml**: `annotations` is the folder of `.xml` files, `images` the JPEGImages folder;
  release/data_voc.py reads it.

`format: auto` (the default) detects which: a json file is COCO, a folder of `.xml` is VOC, a
folder of `.txt` is YOLO; without `annotations`, label files found beside the images or in the
sibling labels folder make it YOLO when `names` is given, and otherwise it is a split of images
only (calibration). When a
manifest loads (release/manifest_paths.py), the detected format and labels folder are written into
the split, so the plan, the stages and the release lock all name them.

This module imports only the standard library (PyYAML when a data.yaml is read): the planner
calls it to hash a split.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from release.errors import DataError
from release.fingerprint import IMAGE_SUFFIXES

LABEL_SUFFIX = {"yolo": ".txt", "voc": ".xml"}
SCAN = 2000  # entries of a folder looked at to tell a folder of VOC xml from one of YOLO txt


class LayoutError(DataError):
    """A split whose format or labels cannot be found: `field` is the DataRef field to fix and
    `reason` the message without the split's name (the manifest adds its own location)."""

    def __init__(self, split: str | None, field: str, reason: str):
        self.field, self.reason = field, reason
        where = f"data.{split}.{field}" if split else f"the split's {field}"
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class Layout:
    format: str                     # coco, yolo, voc, or images (no labels)
    images: Path
    annotations: Path | None        # the COCO json, the YOLO labels folder, the VOC xml folder
    names: list[str] | Path | None
    probed: tuple[str, ...] = ()    # paths looked at to decide (the plan's stamps record them)
    unnamed: Path | None = None     # images only: YOLO labels are there, but no names to read them with


def image_names(folder: Path) -> list[str]:
    """The image files at the top of a folder, sorted by name: a YOLO split's images, in id order."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file())


def files_with(folder: Path, suffix: str) -> list[str]:
    """Names of the regular files at the top of a folder that end in `suffix`, sorted."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.name.lower().endswith(suffix) and e.is_file())


def sibling_labels(images: Path) -> Path | None:
    """images/<split> -> labels/<split> (the last 'images' component), or None when there is none."""
    parts = list(Path(images).parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts)
    return None


def _label_kinds(folder: Path) -> set[str]:
    """Which label suffixes (.xml, .txt) the first SCAN entries of a folder hold."""
    found: set[str] = set()
    with os.scandir(folder) as entries:
        for n, entry in enumerate(entries):
            if n >= SCAN:
                break
            suffix = os.path.splitext(entry.name)[1].lower()
            if suffix in (".xml", ".txt") and entry.name.lower() != "classes.txt":
                found.add(suffix)
    return found


def locate(ref, split: str | None = None, on_disk: bool = True) -> Layout:
    """The format and labels of a DataRef (format, annotations, images, names); `on_disk` False
    for a split a generator makes, which is not there yet (nothing is detected from files)."""
    fmt, names = getattr(ref, "format", "auto"), getattr(ref, "names", None)  # a ref of before them: COCO
    ann, images = ref.annotations, Path(ref.images)
    if fmt in ("coco", "voc") or (fmt == "yolo" and ann is not None):
        return _with_names(Layout(fmt, images, ann, names), split)
    if ann is not None:
        return _with_names(_by_annotations(Path(ann), images, names, split, on_disk), split)
    if not on_disk:
        return Layout("yolo" if fmt == "yolo" else "images", images, None, names)
    sibling = sibling_labels(images)
    stems = {os.path.splitext(n)[0] for n in image_names(images)}
    found = [folder for folder in dict.fromkeys([sibling, images]) if folder is not None and folder.is_dir()
             and stems & {os.path.splitext(n)[0] for n in files_with(folder, ".txt")}]
    probed = tuple(str(p) for p in (sibling, images) if p is not None)
    if len(found) > 1:
        raise LayoutError(split, "annotations", f"YOLO label files are both beside the images in {images} and "
                                                f"in {sibling}: point annotations at the labels folder to read.")
    if found and (names is not None or fmt == "yolo"):
        return _with_names(Layout("yolo", images, found[0], names, probed), split)
    if found:  # format auto without names: the labels cannot be read, the images can (calibration)
        return Layout("images", images, None, names, probed, unnamed=found[0])
    if fmt == "yolo":
        where = f"beside the images in {images}" + (f" or in {sibling}" if sibling else "")
        raise LayoutError(split, "annotations", f"no YOLO label files (<image stem>.txt) {where}: put them "
                                                f"there, or point annotations at the folder that holds them.")
    return Layout("images", images, None, names, probed)


def check_labels(layout: Layout, split: str | None = None) -> None:
    """When a manifest loads: a VOC folder holds .xml files, a YOLO folder the label of at least one
    image (the readers check every file when the split is read)."""
    folder = layout.annotations
    if layout.format not in ("yolo", "voc") or folder is None or not Path(folder).is_dir():
        return
    if layout.format == "voc" and not files_with(folder, ".xml"):
        raise LayoutError(split, "annotations", f"{folder} holds no .xml files: point annotations at the folder "
                                                f"of VOC xml files (Annotations).")
    stems = {os.path.splitext(n)[0] for n in image_names(layout.images)}
    if layout.format == "yolo" and not stems & {os.path.splitext(n)[0] for n in files_with(folder, ".txt")}:
        raise LayoutError(split, "annotations", f"{folder} holds no label file (<image stem>.txt) of an image in "
                                                f"{layout.images}: point annotations at the split's YOLO labels.")


def _by_annotations(ann: Path, images: Path, names, split: str | None, on_disk: bool) -> Layout:
    """format auto with annotations: a json file is COCO, a folder of xml VOC, a folder of txt YOLO."""
    if not on_disk:
        if ann.suffix.lower() == ".json":
            return Layout("coco", images, ann, names)
        raise LayoutError(split, "format", f"{ann} is made by a generator, so its format cannot be detected "
                                           f"before it exists: set format (coco, yolo or voc).")
    if not ann.is_dir():
        return Layout("coco", images, ann, names)
    kinds = _label_kinds(ann)
    if kinds == {".xml"}:
        return Layout("voc", images, ann, names, (str(ann),))
    if kinds == {".txt"}:
        return Layout("yolo", images, ann, names, (str(ann),))
    if kinds:
        raise LayoutError(split, "format", f"{ann} holds both .xml (VOC) and .txt (YOLO) files: set format "
                                           f"to voc or yolo.")
    raise LayoutError(split, "annotations", f"{ann} is not a regular file (a folder) and holds no VOC .xml or "
                                            f"YOLO .txt label files: point annotations at a COCO json file, a "
                                            f"folder of VOC xml files or a folder of YOLO txt labels.")


def _with_names(layout: Layout, split: str | None) -> Layout:
    if layout.format == "yolo" and layout.names is None:
        raise LayoutError(split, "names", "YOLO labels hold class indices only: give the class names in "
                                          "index order, as a list (names: [cat, dog]) or the path of a "
                                          "data.yaml or a classes.txt.")
    if layout.format == "coco" and layout.names is not None:
        raise LayoutError(split, "names", "a COCO json names its categories itself: leave names out "
                                          "(names is for YOLO and VOC splits).")
    return layout


# ---------------------------------------------------------------- class names

def read_names(names, split: str | None = None) -> list[str]:
    """The class names in index order: a list as given, or read from a data.yaml / classes.txt.
    Every problem of the file is reported at once, each with its line."""
    if names is None or isinstance(names, list):
        return list(names or [])
    path = Path(names)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: the class names file of {_split(split)} cannot be read "
                        f"({getattr(exc, 'strerror', None) or exc}). Check data.{split or '<split>'}.names.") from None
    found, problems = (_yaml_names if path.suffix.lower() in (".yaml", ".yml") else _text_names)(text)
    seen: dict[str, int] = {}
    for line, name in found:
        if name in seen:
            problems.append((line, f"class name '{name}' repeats line {seen[name]}: give each class once."))
        seen.setdefault(name, line)
    if not found and not problems:
        problems.append((None, "no class names in it: list one name per class, in index order."))
    if problems:
        raise DataError(f"the class names of {_split(split)} ({path}) are not usable:\n"
                        + "\n".join(f"- {path}{'' if n is None else f':{n}'}: {p}" for n, p in problems))
    return [name for _, name in found]


def _split(split: str | None) -> str:
    return f"data.{split}" if split else "this data split"


def _text_names(text: str) -> tuple[list[tuple[int, str]], list[tuple[int | None, str]]]:
    """classes.txt: one name per line (blank lines at the end ignored)."""
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    found, problems = [], []
    for n, name in enumerate(lines, 1):
        if name:
            found.append((n, name))
        else:
            problems.append((n, "a blank line among the names would shift every class after it: remove it."))
    return found, problems


def _yaml_names(text: str) -> tuple[list[tuple[int, str]], list[tuple[int | None, str]]]:
    """data.yaml's `names`: a list, or an {index: name} mapping with the indices 0..K-1."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        return [], [(mark.line + 1 if mark else None, f"not valid YAML ({getattr(exc, 'problem', None) or exc})")]
    node = next((v for k, v in root.value if k.value == "names"), None) if isinstance(root, yaml.MappingNode) else None
    if node is None or not isinstance(doc, dict):
        return [], [(None, "no 'names' key: a data.yaml lists the class names under names: (a list, or index: name).")]
    names, line = doc["names"], node.start_mark.line + 1
    items = [(i.start_mark.line + 1, v) for i, v in zip(node.value, names)] if isinstance(names, list) else []
    if isinstance(names, dict):
        items = [(k.start_mark.line + 1, names[key]) for (k, _), key in zip(node.value, names)]
        if not all(type(k) is int for k in names) or sorted(names) != list(range(len(names))):
            return [], [(line, f"the names mapping's keys must be the class indices 0..{len(names) - 1}, "
                               f"each once (got {sorted(names, key=str)[:10]}).")]
        items = [items[list(names).index(i)] for i in range(len(names))]
    elif not isinstance(names, list):
        return [], [(line, "names is neither a list nor an index: name mapping.")]
    found, problems = [], []
    for n, value in items:
        if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
            problems.append((n, f"class name {value!r} is not a non-empty name."))
        else:
            found.append((n, str(value).strip()))
    nc = doc.get("nc")
    if nc is not None and nc != len(items):
        problems.append((line, f"nc is {nc!r} but names lists {len(items)} classes: make them agree."))
    return found, problems


# ---------------------------------------------------------------- reading a split

def open_split(ref, split: str | None = None, labels: bool = False):
    """The release.data.CocoSplit of a DataRef in any format; `labels` True refuses a split of
    images only (mAP, a loss)."""
    from release import data

    layout = locate(ref, split)
    if layout.format == "coco":
        return data.load_split(layout.annotations, layout.images, ref.limit, split=split)
    if layout.format == "yolo":
        from release.data_yolo import load

        return load(layout, read_names(layout.names, split), ref.limit, split)
    if layout.format == "voc":
        from release.data_voc import load

        return load(layout, read_names(layout.names, split) if layout.names is not None else None, ref.limit, split)
    if labels and layout.unnamed is not None:
        raise LayoutError(split, "names", f"labels are needed, and the YOLO labels in {layout.unnamed} cannot be "
                                          f"read without the class names: give names (a list, a data.yaml or a "
                                          f"classes.txt).")
    if labels:
        where = f" or in {sibling_labels(layout.images)}" if sibling_labels(layout.images) else ""
        raise LayoutError(split, "annotations", f"labels are needed, and there are none: no annotations, and no "
                                                f"YOLO label files beside the images in {layout.images}{where}.")
    return data.image_folder(layout.images, ref.limit, split=split)
