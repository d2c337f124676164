"""Pascal VOC xml -> a validated release.data.CocoSplit.

The split is the `.xml` files at the top of the annotations folder; each describes the image of the
same stem in the images folder (`<stem>.jpg`, or any image suffix; the xml's `<filename>` is not
used, as the common VOC loaders do not). Images without an xml are not part of the split. Image ids
are 1..N by image file name, `limit` keeps the first N. The image size is the xml's `<size>`.

Classes: `names` gives their order (an object of another class is an error); without it, the
sorted names found in the split's xml files, which the release records. Category ids are 1..K in
that order.

Coordinates: VOC writes 1-based, inclusive pixel indices (xmin = 1, xmax = W covers the whole row).
As Detectron2's VOC loader and the usual VOC -> COCO converters do, the COCO box is
x = xmin - 1, y = ymin - 1, width = xmax - xmin + 1, height = ymax - ymin + 1 (so VOC xmin = x + 1,
xmax = x + width). Corners must satisfy 0 <= xmin <= xmax <= width + 1 (a pixel of slack for
writers that count from 0), likewise for y. `difficult` objects are kept as COCO `iscrowd: 1`:
like VOC's own metric, mAP neither rewards nor penalizes detections of them, and training skips
them, as mmdetection's VOC -> COCO converter does.

The xml is read with expat, and a DOCTYPE (the door to entity expansion) is refused; every
problem of every file is reported at once, by file and line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from xml.parsers import expat

from release.data import CocoSplit, ImageRecord, _fail, _field, _Problems
from release.data_formats import Layout, files_with, image_names

STRUCTURE = ("xml without a positive <size> <width> and <height>, or an <object> without <name> and "
             "<bndbox> <xmin> <ymin> <xmax> <ymax> numbers",
             "Each VOC file has <size><width>W</width><height>H</height></size> and, per object, <name> and "
             "<bndbox> with finite xmin, ymin, xmax, ymax.")
OUTSIDE = ("box corners not 0 <= xmin <= xmax <= width + 1 (likewise y)",
           "VOC boxes are 1-based pixel indices within the image: fix the corners or the <size>.")


@dataclass
class _Node:
    tag: str
    line: int
    text: str = ""
    children: list[_Node] = field(default_factory=list)

    def find(self, tag: str) -> _Node | None:
        return next((c for c in self.children if c.tag == tag), None)

    def value(self, tag: str) -> str | None:
        node = self.find(tag)
        return node.text.strip() if node is not None else None


class _Refused(Exception):
    pass


def _tree(path: Path) -> _Node:
    """The xml as nodes with their line numbers (ElementTree keeps none)."""
    parser = expat.ParserCreate()
    root = _Node("", 0)
    stack = [root]

    def start(tag, _attrs):
        node = _Node(tag, parser.CurrentLineNumber)
        stack[-1].children.append(node)
        stack.append(node)

    def doctype(*_args):
        raise _Refused

    parser.StartElementHandler = start
    parser.EndElementHandler = lambda _tag: stack.pop()
    parser.CharacterDataHandler = lambda data: setattr(stack[-1], "text", stack[-1].text + data)
    parser.StartDoctypeDeclHandler = doctype
    parser.Parse(path.read_bytes(), True)
    return root.children[0]


def load(layout: Layout, names: list[str] | None, limit: int | None, split: str | None) -> CocoSplit:
    """Read and check one VOC split (its Layout from data_formats.locate; names None: sorted found)."""
    images, folder = layout.images, Path(layout.annotations)
    if not images.is_dir():
        raise _fail(images, "image folder not found", f"Check {_field(split, 'images')} in the manifest.")
    if not folder.is_dir():
        raise _fail(folder, "VOC annotations folder not found", f"Check {_field(split, 'annotations')} in the manifest.")
    xmls = files_with(folder, ".xml")
    if not xmls:
        raise _fail(folder, "no .xml files in the folder", f"Point {_field(split, 'annotations')} at the folder "
                                                           f"of VOC xml files (Annotations).")
    by_stem: dict[str, list[str]] = {}
    for name in image_names(images):
        by_stem.setdefault(os.path.splitext(name)[0], []).append(name)
    problems = _Problems(folder, split, "VOC")
    parsed = []  # (image file name, xml name, width, height, objects)
    for xml in xmls:
        stem = os.path.splitext(xml)[0]
        found = by_stem.get(stem, [])
        if len(found) != 1:
            problems.add("file", "xml whose image is not in the images folder, or is there twice (other suffixes)",
                         f"Each <stem>.xml describes <stem>.jpg (or another image suffix) in "
                         f"{_field(split, 'images')}: add the image or remove the xml.",
                         f"{xml}: {', '.join(found) or 'no ' + stem + '.*'}")
            continue
        one = _read(folder / xml, problems)
        if one is not None:
            parsed.append((found[0], xml, *one))
    classes = names if names is not None else sorted({o[0] for *_, objects in parsed for o in objects})
    _unknown(parsed, classes, names is not None, problems, split)
    problems.raise_any()
    if not classes:
        raise _fail(folder, "no objects, so no classes", f"Give the class names in {_field(split, 'names')}.")
    index = {name: i + 1 for i, name in enumerate(classes)}
    records, anns_by_image, next_id = [], {}, 1
    for image_id, (file_name, _, width, height, objects) in enumerate(sorted(parsed, key=lambda p: p[0])[:limit], 1):
        records.append(ImageRecord(image_id, file_name, width, height))
        for name, difficult, (x0, y0, x1, y1), _ in objects:
            box = [float(x0 - 1), float(y0 - 1), float(x1 - x0 + 1), float(y1 - y0 + 1)]
            anns_by_image.setdefault(image_id, []).append(
                {"id": next_id, "image_id": image_id, "category_id": index[name], "bbox": box,
                 "area": box[2] * box[3], "iscrowd": int(difficult)})
            next_id += 1
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(classes)]
    return CocoSplit(folder, images, records, categories, anns_by_image, split=split)


def _read(path: Path, problems: _Problems):
    """(width, height, [(name, difficult, corners, line)]) of one xml, or None when it is unusable."""
    try:
        root = _tree(path)
    except _Refused:
        problems.add("file", "xml with a DOCTYPE (refused: it can expand entities)", "Remove the DOCTYPE line.",
                     path.name)
        return None
    except expat.ExpatError as exc:
        problems.add("file", "file that is not well-formed xml", "Fix or regenerate it.", f"{path.name}:{exc.lineno}: "
                                                                                        f"{expat.ErrorString(exc.code)}")
        return None
    except OSError as exc:
        problems.add("file", "xml that cannot be read", "Check its permissions.", f"{path.name}: {exc.strerror}")
        return None
    size = root.find("size")
    width, height = (_whole(size.value("width")), _whole(size.value("height"))) if size else (None, None)
    ok = bool(width and height and width > 0 and height > 0)
    if not ok:
        problems.add("file", *STRUCTURE, f"{path.name}:{(size or root).line}: size {width} x {height}")
    objects = []
    for obj in (c for c in root.children if c.tag == "object"):
        box = obj.find("bndbox")
        corners = [_number(box.value(k)) if box else None for k in ("xmin", "ymin", "xmax", "ymax")]
        name = obj.value("name")
        if not name or None in corners:
            problems.add("object", *STRUCTURE, f"{path.name}:{obj.line}: name {name!r}, bndbox {corners}")
            continue
        x0, y0, x1, y1 = corners
        if ok and not (0 <= x0 <= x1 <= width + 1 and 0 <= y0 <= y1 <= height + 1):
            problems.add("object", *OUTSIDE, f"{path.name}:{box.line}: {[str(c) for c in corners]} in {width} x {height}")
            continue
        objects.append((name, (_number(obj.value("difficult")) or 0) != 0, corners, obj.line))
    return (width, height, objects) if ok else None


def _number(text: str | None) -> Decimal | None:
    try:
        value = Decimal(text) if text is not None else None
    except InvalidOperation:
        return None
    return value if value is not None and value.is_finite() else None


def _whole(text: str | None) -> int | None:
    value = _number(text)
    return int(value) if value is not None and value == value.to_integral_value() else None


def _unknown(parsed: list, classes: list[str], given: bool, problems: _Problems, split: str | None) -> None:
    if not given:
        return
    known = set(classes)
    for _, xml, _, _, objects in parsed:
        for name, _, _, line in objects:
            if name not in known:
                problems.add("object", "object of a class that is not in names",
                             f"Add the class to {_field(split, 'names')} or fix the object's <name>.",
                             f"{xml}:{line}: {name!r}")
