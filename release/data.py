"""COCO-format detection data: one annotations json and one image folder per split.

Reading is validated up front so that a broken dataset fails with the file, the field and the fix,
not with a KeyError deep inside evaluation. Only numpy and Pillow are needed here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from release.errors import DataError


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
                f"{self.annotations_path}: image id {record.id} names file '{record.file_name}', "
                f"which is not in {self.images_dir}. Fix the file_name or the data 'images' folder."
            ) from None
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{path}: not a readable image ({exc}). Replace or remove it.") from None

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


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def open_split(ref) -> CocoSplit:
    """A manifest's DataRef: a COCO split, or (no annotations) just the images of a folder."""
    if ref.annotations is None:
        return image_folder(ref.images, ref.limit)
    return load_split(ref.annotations, ref.images, ref.limit)


def image_folder(images: Path, limit: int | None = None) -> CocoSplit:
    """The images of a folder (sorted by name; no labels) for what needs only images: calibration,
    distillation with `labels: false`. Width and height are read when an image is."""
    images = Path(images)
    if not images.is_dir():
        raise _fail(images, "image folder not found", "Check data.<split>.images in the manifest.")
    files = sorted(f.name for f in images.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise _fail(images, f"no images ({', '.join(IMAGE_SUFFIXES)}) in the folder",
                    "Point data.<split>.images at a folder of images.")
    return CocoSplit(images, images, [ImageRecord(i + 1, f, 0, 0) for i, f in enumerate(files)], [])


def load_split(annotations: Path, images: Path, limit: int | None = None) -> CocoSplit:
    """Read and check one COCO split; `limit` keeps the first N images by id."""
    annotations, images = Path(annotations), Path(images)
    if not annotations.is_file():
        raise _fail(annotations, "annotations file not found", "Check data.<split>.annotations in the manifest.")
    if not images.is_dir():
        raise _fail(images, "image folder not found", "Check data.<split>.images in the manifest.")
    try:
        doc = json.loads(annotations.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _fail(annotations, f"not valid JSON ({exc})", "It must be a COCO-format annotations file.") from None
    if not isinstance(doc, dict):
        raise _fail(annotations, "top level is not an object", "A COCO file is an object with images, annotations and categories.")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise _fail(annotations, f"field '{key}' is missing or not a list", "A COCO file needs images, annotations and categories lists.")
    if not doc["categories"]:
        raise _fail(annotations, "field 'categories' is empty", "List at least one category with an id and a name.")

    try:
        categories = sorted(({"id": int(c["id"]), "name": str(c["name"])} for c in doc["categories"]), key=lambda c: c["id"])
    except (KeyError, TypeError, ValueError):
        raise _fail(annotations, "a category lacks an integer 'id' or a 'name'", "Each category needs both.") from None
    cat_ids = {c["id"] for c in categories}

    records: list[ImageRecord] = []
    for n, img in enumerate(doc["images"]):
        try:
            records.append(ImageRecord(int(img["id"]), str(img["file_name"]), int(img["width"]), int(img["height"])))
        except (KeyError, TypeError, ValueError):
            raise _fail(annotations, f"images[{n}] lacks id, file_name, width or height", "Each image entry needs all four.") from None
    records.sort(key=lambda r: r.id)
    if limit is not None:
        records = records[:limit]
    if not records:
        raise _fail(annotations, "no images", "The split must list at least one image.")
    keep = {r.id for r in records}

    anns_by_image: dict[int, list[dict]] = {}
    for n, ann in enumerate(doc["annotations"]):
        try:
            image_id = int(ann["image_id"])
            bbox = [float(v) for v in ann["bbox"]]
            category = int(ann["category_id"])
        except (KeyError, TypeError, ValueError):
            raise _fail(annotations, f"annotations[{n}] lacks image_id, category_id or a 4-number bbox", "Each annotation needs all three.") from None
        if len(bbox) != 4 or bbox[2] < 0 or bbox[3] < 0:
            raise _fail(annotations, f"annotations[{n}].bbox is {ann['bbox']}", "A bbox is [x, y, width, height] with width, height >= 0.")
        if category not in cat_ids:
            raise _fail(annotations, f"annotations[{n}].category_id {category} is not a listed category", "Add it to 'categories' or fix the id.")
        if image_id in keep:
            entry = dict(ann)
            entry.setdefault("id", n + 1)
            entry.setdefault("area", bbox[2] * bbox[3])
            entry.setdefault("iscrowd", 0)
            entry["bbox"] = bbox
            anns_by_image.setdefault(image_id, []).append(entry)

    missing = [r.file_name for r in records if not (images / r.file_name).is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise _fail(images, f"{len(missing)} listed image(s) are missing: {', '.join(missing[:3])}{more}",
                    f"Check data.<split>.images, or the file_name entries in {annotations.name}.")
    return CocoSplit(annotations, images, records, categories, anns_by_image)
