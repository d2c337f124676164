"""COCO-format detection data: one annotations json and one image folder per split (YOLO txt
and Pascal VOC xml splits are read into the same CocoSplit by release/data_yolo.py and data_voc.py).

Reading is validated up front so that a broken dataset fails with the file, the entry and the fix,
not with a KeyError deep inside evaluation or a silently lower mAP: annotations to unknown images,
repeated ids, non-finite or empty boxes, missing image sizes, unknown categories and file names
that lead out of the images folder are all errors, reported together. Messages name the manifest's
split (data.eval, ...) when the caller passes it. Only numpy and Pillow are needed here.
"""

from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from release.errors import DataError
from release.fingerprint import IMAGE_SUFFIXES


@dataclass(frozen=True)
class ImageRecord:
    id: int
    file_name: str
    width: int
    height: int


@dataclass
class CocoSplit:
    """A validated COCO split. `categories` are sorted by id; class index i <-> categories[i]."""

    annotations_path: Path
    images_dir: Path
    images: list[ImageRecord]
    categories: list[dict]
    anns_by_image: dict[int, list[dict]] = field(default_factory=dict)
    split: str | None = None  # the manifest's name for it (eval, train, ...), for messages

    @property
    def category_ids(self) -> list[int]:
        return [c["id"] for c in self.categories]

    def image_path(self, record: ImageRecord) -> Path:
        return self.images_dir / record.file_name

    def read_image(self, record: ImageRecord) -> np.ndarray:
        """The image as an RGB uint8 array of shape (H, W, 3)."""
        from PIL import Image, UnidentifiedImageError

        path = self.image_path(record)
        try:
            with Image.open(path) as img:
                return np.asarray(img.convert("RGB"))
        except FileNotFoundError:
            raise DataError(
                f"{self.annotations_path}: image id {record.id} of {_split_name(self.split)} names file "
                f"'{record.file_name}', which is not in {self.images_dir}. Fix the file_name or "
                f"{_field(self.split, 'images')}."
            ) from None
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{path}: not a readable image ({exc}) in {_split_name(self.split)}. "
                            f"Replace or remove it.") from None

    def boxes(self, record: ImageRecord) -> tuple[np.ndarray, np.ndarray]:
        """Ground truth of one image: boxes (N, 4) as x, y, w, h in pixels, and class indices (N,)."""
        index = {cid: i for i, cid in enumerate(self.category_ids)}
        anns = [a for a in self.anns_by_image.get(record.id, []) if not a.get("iscrowd", 0)]
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)
        labels = np.array([index[a["category_id"]] for a in anns], dtype=np.int64)
        return boxes, labels

    def coco_dict(self) -> dict:
        """The (limited) split as a COCO dict, for pycocotools."""
        keep = {r.id for r in self.images}
        return {
            "images": [
                {"id": r.id, "file_name": r.file_name, "width": r.width, "height": r.height}
                for r in self.images
            ],
            "annotations": [a for i in sorted(keep) for a in self.anns_by_image.get(i, [])],
            "categories": self.categories,
        }


def _fail(path: Path, what: str, fix: str) -> DataError:
    return DataError(f"{path}: {what}. {fix}")


def _field(split: str | None, key: str) -> str:
    """The manifest field a fix points at: data.eval.images, or a description when the caller did
    not say which split it reads."""
    return f"data.{split}.{key}" if split else f"the '{key}' of this split (under data: in the manifest)"


def _split_name(split: str | None) -> str:
    return f"data.{split}" if split else "this data split"


LISTED = 10  # located entries shown in one message; the rest are counted


def open_split(ref, split: str | None = None, labels: bool = False) -> CocoSplit:
    """A manifest's DataRef in its format (COCO json, YOLO txt, VOC xml: release/data_formats.py),
    or just the images of a folder; `labels` True refuses the latter. `split` is the manifest's name
    for it (eval, train, ...), used in messages."""
    from release.data_formats import open_split as opened

    return opened(ref, split, labels)


def image_folder(images: Path, limit: int | None = None, split: str | None = None) -> CocoSplit:
    """The images of a folder (sorted by name; no labels) for what needs only images: calibration,
    distillation with `labels: false`. Width and height are read when an image is."""
    images = Path(images)
    if not images.is_dir():
        raise _fail(images, "image folder not found", f"Check {_field(split, 'images')} in the manifest.")
    files = sorted(f.name for f in images.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise _fail(images, f"no images ({', '.join(IMAGE_SUFFIXES)}) in the folder",
                    f"Point {_field(split, 'images')} at a folder of images.")
    return CocoSplit(images, images, [ImageRecord(i + 1, f, 0, 0) for i, f in enumerate(files)], [], split=split)


class _Problems:
    """Located problems of one annotations file, grouped by kind, raised as one DataError."""

    def __init__(self, path: Path, split: str | None, kind: str = "COCO") -> None:
        self.path, self.split, self.kind = path, split, kind  # kind: the format, for the message
        self.kinds: dict[str, tuple[str, str, list[str]]] = {}  # what -> (noun, fix, entries)

    def add(self, noun: str, what: str, fix: str, entry: str) -> None:
        self.kinds.setdefault(what, (noun, fix, []))[2].append(entry)

    def raise_any(self) -> None:
        if not self.kinds:
            return
        total = sum(len(entries) for _, _, entries in self.kinds.values())
        per_kind = max(2, LISTED // len(self.kinds))
        lines = [f"{self.path}: {_split_name(self.split)} is not a consistent {self.kind} split "
                 f"({total} problem{'s' if total > 1 else ''}):"]
        for what, (noun, fix, entries) in self.kinds.items():
            n = len(entries)
            lines.append(f"- {what} ({n} {noun}{'s' if n > 1 else ''}). {fix}")
            lines.extend(f"    {e}" for e in entries[:per_kind])
            if n > per_kind:
                lines.append(f"    ... and {n - per_kind} more")
        raise DataError("\n".join(lines))


def _int(value) -> int | None:
    """A COCO id or pixel size as an int: whole numbers (and digit strings) only, never a bool."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _show(value) -> str:
    text = json.dumps(value)  # NaN and Infinity as such
    return text if len(text) <= 60 else text[:57] + "..."


def _leaves_folder(name: str) -> bool:
    """A file_name that names something outside its images folder without looking at the disk."""
    return name.startswith(("/", "\\")) or Path(name).is_absolute() or ".." in Path(name).parts


def load_split(annotations: Path, images: Path, limit: int | None = None, split: str | None = None) -> CocoSplit:
    """Read and check one COCO split; `limit` keeps the first N images by id. `split` is the
    manifest's name for it (eval, train, ...), used in messages.

    The json is checked as a whole (ids, references, boxes, sizes, file names) in pure Python, and
    every problem found is reported at once; on disk only the kept images' entries are looked up
    (one lstat each), none is decoded."""
    annotations, images = Path(annotations), Path(images)
    if not annotations.is_file():
        raise _fail(annotations, "annotations file not found", f"Check {_field(split, 'annotations')} in the manifest.")
    if not images.is_dir():
        raise _fail(images, "image folder not found", f"Check {_field(split, 'images')} in the manifest.")
    try:
        doc = json.loads(annotations.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _fail(annotations, f"not valid JSON ({exc})",
                    f"{_field(split, 'annotations')} must be a COCO-format annotations file.") from None
    if not isinstance(doc, dict):
        raise _fail(annotations, "top level is not an object", "A COCO file is an object with images, annotations and categories.")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise _fail(annotations, f"field '{key}' is missing or not a list", "A COCO file needs images, annotations and categories lists.")
    if not doc["categories"]:
        raise _fail(annotations, "field 'categories' is empty", "List at least one category with an id and a name.")

    problems = _Problems(annotations, split)
    categories, cat_at = _categories(doc["categories"], problems)
    records, image_at = _images(doc["images"], problems)
    anns = _annotations(doc["annotations"], set(image_at), set(cat_at), problems)
    problems.raise_any()

    records.sort(key=lambda r: r.id)
    if limit is not None:
        records = records[:limit]
    if not records:
        raise _fail(annotations, "no images", "The split must list at least one image.")
    keep = {r.id for r in records}
    anns_by_image: dict[int, list[dict]] = {}
    for image_id, entry in anns:
        if image_id in keep:
            anns_by_image.setdefault(image_id, []).append(entry)

    _check_files(annotations, images, records, image_at, split)
    return CocoSplit(annotations, images, records, categories, anns_by_image, split=split)


def _categories(entries: list, problems: _Problems) -> tuple[list[dict], dict[int, int]]:
    fix_entry = "Each category needs an integer 'id' and a 'name'."
    categories, at = [], {}
    for n, cat in enumerate(entries):
        cid = _int(cat.get("id")) if isinstance(cat, dict) else None
        if cid is None or "name" not in cat:
            problems.add("category", "category without an integer 'id' or a 'name'", fix_entry,
                         f"categories[{n}]: {_show(cat)}")
        elif cid in at:
            problems.add("category", "duplicate category id",
                         "Give each category its own id: class indices follow the sorted ids.",
                         f"categories[{n}] (id {cid}) repeats categories[{at[cid]}]")
        else:
            at[cid] = n
            categories.append({"id": cid, "name": str(cat["name"])})
    return sorted(categories, key=lambda c: c["id"]), at


def _images(entries: list, problems: _Problems) -> tuple[list[ImageRecord], dict[int, int]]:
    records, at = [], {}
    for n, img in enumerate(entries):
        if not isinstance(img, dict):
            problems.add("image", "image entry that is not an object",
                         "Each image is an object with id, file_name, width and height.", f"images[{n}]: {_show(img)}")
            continue
        image_id = _int(img.get("id"))
        where = f"images[{n}] (id {image_id if image_id is not None else _show(img.get('id'))})"
        if image_id is None:
            problems.add("image", "image without an integer id", "Give each image a unique integer 'id'.", where)
            continue
        if image_id in at:
            problems.add("image", "duplicate image id",
                         "Give each image its own id: annotations refer to images by id, so a repeated id "
                         "puts boxes on the wrong picture.", f"{where} repeats images[{at[image_id]}]")
            continue
        at[image_id] = n
        name, width, height = img.get("file_name"), _int(img.get("width")), _int(img.get("height"))
        bad = False
        if not isinstance(name, str) or not name:
            problems.add("image", "image without a file_name",
                         "Name the image's file, relative to the images folder.", f"{where}: file_name {_show(name)}")
            bad = True
        elif _leaves_folder(name):
            problems.add("image", "file_name that leaves the images folder (absolute or '..')",
                         "Name each file relative to the images folder, inside it; move the images there.",
                         f"{where}: file_name {_show(name)}")
            bad = True
        if width is None or height is None or width <= 0 or height <= 0:
            problems.add("image", "image width or height missing, zero, negative or not a whole number",
                         "Give each image its width and height in pixels (positive integers): pycocotools "
                         "and the adapters use them.",
                         f"{where}: width {_show(img.get('width'))}, height {_show(img.get('height'))}")
            bad = True
        if not bad:
            records.append(ImageRecord(image_id, name, width, height))
    return records, at


def _annotations(entries: list, image_ids: set[int], cat_ids: set[int],
                 problems: _Problems) -> list[tuple[int, dict]]:
    """(image id, normalized entry) of every valid annotation; problems for the others."""
    explicit = [_int(a.get("id")) for a in entries if isinstance(a, dict) and "id" in a]
    next_id = max([i for i in explicit if i is not None], default=0) + 1
    seen: dict[int, int] = {}
    out = []
    for n, ann in enumerate(entries):
        if not isinstance(ann, dict):
            problems.add("annotation", "annotation that is not an object",
                         "Each annotation is an object with image_id, category_id and bbox.",
                         f"annotations[{n}]: {_show(ann)}")
            continue
        ann_id = _int(ann.get("id")) if "id" in ann else None
        where = f"annotations[{n}]" + (f" (id {ann_id if ann_id is not None else _show(ann['id'])})" if "id" in ann else "")
        bad = False
        if "id" in ann and ann_id is None:
            problems.add("annotation", "annotation id that is not an integer",
                         "Give it a unique integer 'id', or leave 'id' out to have one assigned.", where)
            bad = True
        elif ann_id is not None and ann_id in seen:
            problems.add("annotation", "duplicate annotation id",
                         "Give each annotation its own id: pycocotools matches detections to annotations by id.",
                         f"{where} repeats annotations[{seen[ann_id]}]")
            bad = True
        elif ann_id is not None:
            seen[ann_id] = n
        image_id, category, bbox, wrong = _fields(ann, where, image_ids, cat_ids, problems)
        bad = bad or wrong
        if bad:
            continue
        entry = dict(ann)
        if ann_id is None:
            entry["id"], next_id = next_id, next_id + 1
        entry["image_id"], entry["category_id"] = image_id, category
        entry["bbox"] = [float(v) for v in bbox]
        entry.setdefault("area", entry["bbox"][2] * entry["bbox"][3])
        entry.setdefault("iscrowd", 0)
        out.append((image_id, entry))
    return out


def _fields(ann: dict, where: str, image_ids: set[int], cat_ids: set[int],
            problems: _Problems) -> tuple[int | None, int | None, object, bool]:
    """(image id, category id, bbox, whether any is wrong) of one annotation; problems for the wrong."""
    wrong = False
    image_id = _int(ann.get("image_id"))
    if image_id is None:
        problems.add("annotation", "annotation without an integer image_id",
                     "Each annotation names the id of its image.", f"{where}: image_id {_show(ann.get('image_id'))}")
        wrong = True
    elif image_id not in image_ids:
        problems.add("annotation", "annotation whose image_id matches no image",
                     "Add the image to 'images' or remove the annotation: otherwise its object would be "
                     "left out of training and mAP without a word.", f"{where}: image_id {image_id}")
        wrong = True
    category = _int(ann.get("category_id"))
    if category is None or category not in cat_ids:
        problems.add("annotation", "annotation whose category_id is not in 'categories'",
                     "Add the category to 'categories' or fix the annotation's category_id.",
                     f"{where}: category_id {_show(ann.get('category_id'))}")
        wrong = True
    bbox = ann.get("bbox")
    numbers = (isinstance(bbox, list) and len(bbox) == 4
               and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox))
    if not numbers or not all(math.isfinite(v) for v in bbox) or bbox[2] <= 0 or bbox[3] <= 0:
        problems.add("annotation", "bbox that is not 4 finite numbers with width and height > 0",
                     "A bbox is [x, y, width, height] in pixels, finite, with width > 0 and height > 0; "
                     "fix or remove the annotation.", f"{where}: bbox {_show(bbox)}")
        wrong = True
    return image_id, category, bbox, wrong


def _check_files(annotations: Path, images: Path, records: list[ImageRecord], image_at: dict[int, int],
                 split: str | None) -> None:
    """Every kept image is a file inside the images folder: one lstat per image, and a realpath
    per distinct subfolder and per symlink (a symlink may point anywhere)."""
    root = os.path.realpath(images)

    def inside(real: str) -> bool:
        return real == root or real.startswith(root.rstrip(os.sep) + os.sep)

    problems = _Problems(annotations, split)
    folders: dict[str, str] = {}
    missing = []
    for r in records:
        where = f"images[{image_at[r.id]}] (id {r.id})"
        sub = os.path.dirname(r.file_name)
        if sub not in folders:
            folders[sub] = os.path.realpath(os.path.join(images, sub))
        path = os.path.join(folders[sub], os.path.basename(r.file_name))
        real = path
        try:
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                real = os.path.realpath(path)
                mode = os.stat(real).st_mode
        except (FileNotFoundError, NotADirectoryError):
            mode = None
        except ValueError:  # an embedded NUL
            mode, real = None, ""
        if not inside(folders[sub]) or not inside(real):
            problems.add("image", "file that resolves outside the images folder",
                         "Keep each image (not a symlink to it) inside the images folder; a file_name "
                         "may not lead elsewhere.", f"{where}: file_name {_show(r.file_name)} -> {real or '?'}")
        elif mode is None or not stat.S_ISREG(mode):
            missing.append(r.file_name)
    problems.raise_any()
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise _fail(images, f"{len(missing)} listed image(s) of {_split_name(split)} are missing: "
                            f"{', '.join(missing[:3])}{more}",
                    f"Check {_field(split, 'images')}, or the file_name entries in {annotations}.")
