"""A release whose data.eval is YOLO txt, then Pascal VOC xml, converted from the tiny build's COCO
json: only the mAP measurement (and what follows it) runs again, on the same images with the same
detections and figures, the report and the model card list the class names in output order, the
lock records the labels folder found, and editing one label file re-measures. (The tiny model's mAP
is near 0 after its 20 training steps; that the same detections score exactly the same mAP on the
three formats with figures far from 0 is tests/unit/test_data_formats.py's.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import copy_project, executed, run_doit, tiny_manifest_dict, write_manifest

EVAL = Path("artifacts/demo/data/eval")


def to_yolo(root: Path) -> list[str]:
    """data/images/eval + data/labels/eval + data/data.yaml, as Ultralytics lays a dataset out."""
    doc = json.loads((root / EVAL / "annotations.json").read_text())
    cats = sorted(doc["categories"], key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(cats)}
    images, labels = root / "data/images/eval", root / "data/labels/eval"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    for img in doc["images"]:
        (images / img["file_name"]).write_bytes((root / EVAL / "images" / img["file_name"]).read_bytes())
        w, h = img["width"], img["height"]
        lines = [f"{index[a['category_id']]} {(x + bw / 2) / w!r} {(y + bh / 2) / h!r} {bw / w!r} {bh / h!r}\n"
                 for a in doc["annotations"] if a["image_id"] == img["id"] for x, y, bw, bh in [a["bbox"]]]
        (labels / f"{Path(img['file_name']).stem}.txt").write_text("".join(lines))
    names = [c["name"] for c in cats]
    (root / "data/data.yaml").write_text(yaml.safe_dump({"path": "data", "val": "images/eval", "names": names}))
    return names


def to_voc(root: Path) -> None:
    """VOC/Annotations + VOC/JPEGImages, corners 1-based and inclusive: xmin = x + 1, xmax = x + w."""
    doc = json.loads((root / EVAL / "annotations.json").read_text())
    names = {c["id"]: c["name"] for c in doc["categories"]}
    (root / "VOC/Annotations").mkdir(parents=True)
    (root / "VOC/JPEGImages").mkdir(parents=True)
    for img in doc["images"]:
        (root / "VOC/JPEGImages" / img["file_name"]).write_bytes((root / EVAL / "images" / img["file_name"]).read_bytes())
        objects = "".join(f"<object><name>{names[a['category_id']]}</name><bndbox><xmin>{x + 1}</xmin>"
                          f"<ymin>{y + 1}</ymin><xmax>{x + bw}</xmax><ymax>{y + bh}</ymax></bndbox></object>"
                          for a in doc["annotations"] if a["image_id"] == img["id"] for x, y, bw, bh in [a["bbox"]])
        (root / "VOC/Annotations" / f"{Path(img['file_name']).stem}.xml").write_text(
            f"<annotation><size><width>{img['width']}</width><height>{img['height']}</height></size>"
            f"{objects}</annotation>")


def figures(root: Path) -> dict:
    """variant -> what its mAP measurement wrote, but the time it took."""
    report = json.loads((root / "artifacts/tiny/report.json").read_text())
    out = {}
    for name, row in report["variants"].items():
        folder = root / "artifacts/measure" / row["fingerprint"][:16]
        measured = sorted((p for p in folder.glob("map-*.json") if not p.name.endswith(".release-owner.json")),
                          key=lambda p: p.stat().st_mtime)[-1]
        out[name] = {k: v for k, v in json.loads(measured.read_text()).items() if k != "seconds"}
    return out


def build(root: Path, version: str, eval_split: dict):
    doc = tiny_manifest_dict(version=version)
    doc["data"]["eval"] = eval_split
    write_manifest(root, doc)
    done = run_doit(root, "release", "manifest=tiny.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.mark.slow
def test_yolo_and_voc_eval_splits_give_the_release_the_same_map(tiny_built, tmp_path):
    root = copy_project(tiny_built, tmp_path)
    coco = figures(root)
    assert all(f["images"] == 16 and f["detections"] > 0 for f in coco.values()), coco
    names = to_yolo(root)
    to_voc(root)

    done = build(root, "0.0.2", {"format": "yolo", "images": "data/images/eval", "names": "data/data.yaml"})
    ran = executed(done.stdout)
    assert figures(root) == coco  # exactly: the same boxes, the same detections
    assert any(t.startswith("measure:map@") for t in ran) and not any(t.startswith("stage:") for t in ran), ran
    report = json.loads((root / "artifacts/tiny/report.json").read_text())
    assert report["classes"] == names
    card = (root / "artifacts/tiny/release/0.0.2/MODEL_CARD.md").read_text()
    assert ", ".join(f"{i} `{n}`" for i, n in enumerate(names)) in card
    lock = json.loads((root / "artifacts/tiny/release/0.0.2/release.lock").read_text())
    assert lock["data"]["eval"]["annotations"] == "data/labels/eval"  # found, and recorded

    build(root, "0.0.3", {"annotations": "VOC/Annotations", "images": "VOC/JPEGImages", "names": names})
    assert figures(root) == coco

    label = next(iter(sorted((root / "data/labels/eval").glob("*.txt"))))
    label.write_text("")  # one image's objects gone: mAP is measured again, nothing else is built
    done = build(root, "0.0.4", {"format": "yolo", "images": "data/images/eval", "names": "data/data.yaml"})
    ran = executed(done.stdout)
    assert any(t.startswith("measure:map@") for t in ran) and not any(t.startswith("stage:") for t in ran), ran
