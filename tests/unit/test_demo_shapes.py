"""The synthetic shapes generator: determinism, COCO validity and the variety the demo relies on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from release.data import load_split
from release.models.demo import shapes

SPLITS = {"train": 40, "eval": 12}


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, dict]:
    dest = tmp_path_factory.mktemp("shapes")
    return dest, shapes.generate(dest, seed=7, splits=SPLITS, image_size=64, workers=1)


def test_summary_counts_match_files(generated):
    dest, summary = generated
    for split, count in SPLITS.items():
        doc = json.loads((dest / split / "annotations.json").read_text())
        assert summary["splits"][split] == {"images": count, "objects": len(doc["annotations"])}
        assert len(list((dest / split / "images").glob("*.png"))) == count


def test_same_seed_same_bytes_and_workers_do_not_matter(generated, tmp_path):
    dest, _ = generated
    again = tmp_path / "again"
    # Two worker processes must write exactly what one process writes.
    shapes.generate(again, seed=7, splits=SPLITS, image_size=64, workers=2)
    assert _digest(again) == _digest(dest)


def test_other_seed_differs(generated, tmp_path):
    dest, _ = generated
    other = tmp_path / "other"
    shapes.generate(other, seed=8, splits={"eval": 12}, image_size=64, workers=1)
    ours, theirs = _digest(dest), _digest(other)
    assert ours["eval/annotations.json"] != theirs["eval/annotations.json"]
    assert not {v for k, v in ours.items() if k.startswith("eval/images")} & set(theirs.values())


def test_splits_share_no_image(generated):
    dest, _ = generated
    digests = _digest(dest)
    train = {v for k, v in digests.items() if k.startswith("train/images/")}
    evaluation = {v for k, v in digests.items() if k.startswith("eval/images/")}
    assert len(train) == SPLITS["train"] and len(evaluation) == SPLITS["eval"]
    assert not train & evaluation


def test_valid_coco_with_boxes_inside_images(generated):
    dest, _ = generated
    for split in SPLITS:
        data = load_split(dest / split / "annotations.json", dest / split / "images")
        assert [c["id"] for c in data.categories] == [1, 2, 3]
        for record in data.images:
            with Image.open(data.image_path(record)) as img:
                assert img.size == (record.width, record.height) == (64, 64) and img.mode == "RGB"
            for ann in data.anns_by_image.get(record.id, []):
                x, y, w, h = ann["bbox"]
                assert x >= 0 and y >= 0 and x + w <= record.width and y + h <= record.height
                assert min(w, h) >= shapes.MIN_BOX
                # area is the visible pixel count, so it fits inside the box and is not empty.
                assert 0 < ann["area"] <= w * h and ann["iscrowd"] == 0


def test_variety(generated):
    dest, _ = generated
    doc = json.loads((dest / "train" / "annotations.json").read_text())
    per_image = np.bincount([a["image_id"] for a in doc["annotations"]], minlength=SPLITS["train"] + 1)[1:]
    assert {a["category_id"] for a in doc["annotations"]} == {1, 2, 3}
    assert per_image.max() >= 3 and per_image.min() <= 1
    boxes = np.array([a["bbox"] for a in doc["annotations"]], dtype=float)
    assert boxes[:, 2:].max() > 3 * boxes[:, 2:].min()  # sizes vary
    aspect = boxes[:, 2] / boxes[:, 3]
    assert aspect.min() < 0.75 and aspect.max() > 1.33  # so do aspect ratios
    # Overlap happens: some pair of boxes in some image intersects.
    by_image: dict[int, list] = {}
    for a in doc["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["bbox"])
    assert any(
        min(p[0] + p[2], q[0] + q[2]) > max(p[0], q[0]) and min(p[1] + p[3], q[1] + q[3]) > max(p[1], q[1])
        for bs in by_image.values() for i, p in enumerate(bs) for q in bs[i + 1:]
    )


def test_backgrounds_are_not_flat(generated):
    dest, _ = generated
    pixels = np.asarray(Image.open(dest / "train" / "images" / "000000.png"), dtype=float)
    # Clutter and texture: neighbouring pixels differ, and the colour field is not constant.
    assert np.abs(np.diff(pixels, axis=1)).mean() > 2
    assert pixels.reshape(-1, 3).std(axis=0).max() > 10
