"""YOLO txt labels -> a validated release.data.CocoSplit.

The split is the image files at the top of the images folder, sorted by name: image ids 1..N in
that order, `limit` keeps the first N. An image's labels are `<stem>.txt` in the labels folder
(beside the images or the sibling labels folder, release/data_formats.py), one object per line:
`class x_center y_center width height`, normalized by the image's width and height. An image
without a label file, or with an empty one, has no objects. Category ids are 1..K in the order of
`names` (class index i -> category id i + 1).

Boxes become COCO's pixel x, y, width, height with the image size read from the file's header
(Pillow opens it without decoding pixels; EXIF orientation is not applied, as read_image does not):
x = (x_center - width / 2) * W, w = width * W. The arithmetic is exact (decimal, on the label's
text) and the result is rounded to 1e-9 pixel, then to a float. A converter writes a normalized
coordinate as a float, (x + w / 2) / W rounded to 17 digits, which is off by ~1e-12 pixel for a W
such as 480 or 75; the nanopixel rounding removes that error, so labels written from integer (or
short decimal) pixel boxes give back exactly those boxes whatever the image size, and no box moves
by more than 5e-10 pixel from the label's exact value.

A line with a segment's polygon (`class x1 y1 x2 y2 x3 y3 ...`, YOLO-seg labels) counts as the
polygon's bounding box, as a detector trained on such labels reads it.

Every label file of the split is parsed and every problem (column count, class index, numbers that
are not finite or outside 0..1 beyond TOLERANCE) is reported at once, by file and line.
"""

from __future__ import annotations

import decimal
import os
from decimal import Decimal
from pathlib import Path

from release.data import CocoSplit, ImageRecord, _fail, _field, _Problems
from release.data_formats import Layout, files_with, image_names

TOLERANCE = Decimal("0.001")  # how far outside 0..1 a normalized coordinate may be (exporters round)
EXACT = decimal.Context(prec=60)  # label text has at most ~20 digits; products with a size stay exact
NANOPIXEL = Decimal("1e-9")

COLUMNS = ("line that is neither a box (5 columns: class x_center y_center width height) nor a polygon "
           "(class x1 y1 x2 y2 x3 y3 ...: an odd count of at least 7)",
           "Each line of a YOLO label is `class x_center y_center width height`, or a segment's polygon, which "
           "counts as its bounding box; a confidence column is not read: write boxes only.")
NUMBER = ("value that is not a finite number",
          "Write each coordinate as a decimal number (no nan or inf).")
RANGE = ("box outside the image: normalized coordinates not within 0..1, or width/height not > 0",
         "YOLO coordinates are fractions of the image's width and height (0..1); pixel coordinates must be "
         "divided by the image size.")


def load(layout: Layout, names: list[str], limit: int | None, split: str | None) -> CocoSplit:
    """Read and check one YOLO split (its Layout from data_formats.locate, its class names)."""
    images, labels = layout.images, Path(layout.annotations)
    if not images.is_dir():
        raise _fail(images, "image folder not found", f"Check {_field(split, 'images')} in the manifest.")
    if not labels.is_dir():
        raise _fail(labels, "YOLO labels folder not found", f"Check {_field(split, 'annotations')} in the manifest.")
    files = image_names(images)
    if not files:
        raise _fail(images, "no images in the folder", f"Point {_field(split, 'images')} at a folder of images.")
    problems = _Problems(labels, split, "YOLO")
    present = set(files_with(labels, ".txt"))
    by_stem: dict[str, str] = {}
    rows: dict[str, list] = {}
    for name in files:
        stem = os.path.splitext(name)[0]
        if stem in by_stem:
            problems.add("image", "images that share one label file (same name, other suffix)",
                         "Rename one: a label file belongs to one image.", f"{by_stem[stem]} and {name} -> {stem}.txt")
            continue
        by_stem[stem] = name
        if f"{stem}.txt" in present:
            rows[name] = _parse(labels / f"{stem}.txt", len(names), problems, split)
    if not rows and not problems.kinds:
        raise _fail(labels, f"no label file (<image stem>.txt) for any of the {len(files)} images of {images}",
                    f"Point {_field(split, 'annotations')} at the folder of the split's YOLO labels.")
    kept = files[:limit]
    sizes = _sizes(images, kept, problems)
    problems.raise_any()
    records, anns_by_image, next_id = [], {}, 1
    for image_id, name in enumerate(kept, 1):
        width, height = sizes[name]
        records.append(ImageRecord(image_id, name, width, height))
        for cls, cx, cy, w, h in rows.get(name, []):
            box = [_pixels(EXACT.subtract(cx, EXACT.divide(w, 2)), width),
                   _pixels(EXACT.subtract(cy, EXACT.divide(h, 2)), height), _pixels(w, width), _pixels(h, height)]
            anns_by_image.setdefault(image_id, []).append(
                {"id": next_id, "image_id": image_id, "category_id": cls + 1, "bbox": box,
                 "area": box[2] * box[3], "iscrowd": 0})
            next_id += 1
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    return CocoSplit(labels, images, records, categories, anns_by_image, split=split)


def _parse(path: Path, classes: int, problems: _Problems, split: str | None) -> list:
    """(class index, cx, cy, w, h as Decimal) of each valid line of one label file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.add("file", "label file that cannot be read as text", "Write labels as UTF-8 text.",
                     f"{path.name}: {getattr(exc, 'strerror', None) or exc}")
        return []
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        cols = line.split()
        if not cols:
            continue
        where = f"{path.name}:{n}: {line.strip()[:60]!r}"
        polygon = len(cols) >= 7 and len(cols) % 2 == 1
        if len(cols) != 5 and not polygon:
            problems.add("line", *COLUMNS, where)
            continue
        cls = _index(cols[0])
        try:
            values = [Decimal(c) for c in cols[1:]]
        except decimal.InvalidOperation:
            values = None
        if values is None or not all(v.is_finite() for v in values):
            problems.add("line", *NUMBER, where)
            continue
        if polygon:  # a segment (YOLO-seg labels): its bounding box, as detector training reads it
            values = _polygon_box(values[0::2], values[1::2])
        if cls is None or not 0 <= cls < classes:
            problems.add("line", f"class index not an integer in 0..{classes - 1}",
                         f"{_field(split, 'names')} has {classes} class{'es' * (classes != 1)}: fix the index, "
                         f"or add the class to names.", where)
            continue
        cx, cy, w, h = values
        edges = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        if w <= 0 or h <= 0 or not all(-TOLERANCE <= v <= 1 + TOLERANCE for v in (*values, *edges)):
            problems.add("line", *RANGE, where)
            continue
        out.append((cls, cx, cy, w, h))
    return out


def _polygon_box(xs: list[Decimal], ys: list[Decimal]) -> list[Decimal]:
    """cx, cy, w, h of the box around a polygon's points (exact decimal arithmetic)."""
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    return [EXACT.divide(x0 + x1, 2), EXACT.divide(y0 + y1, 2), EXACT.subtract(x1, x0), EXACT.subtract(y1, y0)]


def _pixels(fraction: Decimal, size: int) -> float:
    """A normalized coordinate in pixels, to the nanopixel (see the module's docstring)."""
    return float(EXACT.quantize(EXACT.multiply(fraction, size), NANOPIXEL))


def _index(text: str) -> int | None:
    """A class index: '3', or '3.0' as some exporters write it."""
    try:
        return int(text)
    except ValueError:
        try:
            value = Decimal(text)
        except decimal.InvalidOperation:
            return None
        return int(value) if value.is_finite() and value == value.to_integral_value() else None


def _sizes(images: Path, names: list[str], problems: _Problems) -> dict[str, tuple[int, int]]:
    """Width and height of each image from its header (no pixel is decoded)."""
    from PIL import Image, UnidentifiedImageError

    sizes = {}
    for name in names:
        try:
            with Image.open(images / name) as img:
                sizes[name] = img.size
        except (UnidentifiedImageError, OSError) as exc:
            problems.add("image", "image whose size cannot be read",
                         "Replace or remove it: a YOLO box is placed by the image's size.", f"{name}: {exc}")
    return sizes
