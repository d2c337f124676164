"""YOLO txt and Pascal VOC xml splits: the same images and boxes in COCO json, YOLO (labels beside
the images and in the sibling labels/ folder; names from a list, a data.yaml, a classes.txt) and
VOC give exactly the same ground truth and the same mAP of the same detections through release's
pycocotools wrapper; malformed labels are one located DataError; the manifest detects, names and
records the format; a label edit changes the split's fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from release import data_formats, manifest, planner
from release.data import open_split
from release.errors import DataError, ManifestError
from release.fingerprint import HashCache
from release.manifest import DataRef
from release.measure.accuracy import score
from tests.conftest import tiny_manifest_dict

CLASSES = ["cat", "dog", "bird"]
# file name -> (width, height, [(class index, x, y, w, h)]), integer pixel boxes.
IMAGES = {
    "a.png": (64, 48, [(0, 4, 6, 20, 16), (1, 30, 10, 24, 30)]),
    "b.png": (100, 80, [(1, 10, 20, 30, 40), (2, 55, 5, 40, 33)]),
    "c.png": (50, 40, []),
    "d.png": (80, 64, [(0, 0, 0, 80, 64), (2, 41, 29, 13, 11)]),
    "e.png": (128, 100, [(1, 3, 7, 9, 5), (0, 60, 40, 61, 59), (2, 100, 80, 28, 20)]),
}
# Detections of the ground truth: shifted, rescored, one of a wrong class, false positives.
DETECTIONS = {
    "a.png": [(0, 5, 6, 20, 15, 0.9), (1, 28, 12, 24, 30, 0.8), (2, 1, 1, 10, 10, 0.7)],
    "b.png": [(1, 12, 22, 30, 36, 0.95), (0, 55, 5, 40, 33, 0.6), (2, 54, 6, 41, 30, 0.5)],
    "c.png": [(0, 3, 3, 20, 20, 0.4)],
    "d.png": [(0, 2, 1, 76, 60, 0.85), (2, 40, 30, 13, 11, 0.75)],
    "e.png": [(1, 3, 7, 10, 5, 0.3), (0, 58, 42, 61, 55, 0.9), (2, 100, 81, 28, 19, 0.65), (1, 0, 0, 5, 5, 0.2)],
}


def write_images(folder: Path, images=IMAGES) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, (w, h, _) in images.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / name)


def write_coco(root: Path, images=IMAGES) -> tuple[Path, Path]:
    write_images(root / "images", images)
    doc = {"images": [], "annotations": [], "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASSES)]}
    for image_id, (name, (w, h, boxes)) in enumerate(sorted(images.items()), 1):
        doc["images"].append({"id": image_id, "file_name": name, "width": w, "height": h})
        for cls, x, y, bw, bh in boxes:
            doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": image_id,
                                       "category_id": cls + 1, "bbox": [x, y, bw, bh], "iscrowd": 0})
    (root / "annotations.json").write_text(json.dumps(doc))
    return root / "annotations.json", root / "images"


def yolo_lines(w: int, h: int, boxes) -> str:
    """As a COCO -> YOLO converter writes them: the normalized floats, in full (repr)."""
    return "".join(f"{cls} {(x + bw / 2) / w!r} {(y + bh / 2) / h!r} {bw / w!r} {bh / h!r}\n"
                   for cls, x, y, bw, bh in boxes)


def write_yolo(images_dir: Path, labels_dir: Path, images=IMAGES, empty_files: bool = True) -> None:
    write_images(images_dir, images)
    labels_dir.mkdir(parents=True, exist_ok=True)
    for name, (w, h, boxes) in images.items():
        if boxes or empty_files:
            (labels_dir / f"{Path(name).stem}.txt").write_text(yolo_lines(w, h, boxes))


def write_voc(root: Path, images=IMAGES, difficult=()) -> tuple[Path, Path]:
    """VOC's 1-based inclusive corners from a COCO box: xmin = x + 1, xmax = x + w (data_voc.py)."""
    write_images(root / "JPEGImages", images)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for name, (w, h, boxes) in images.items():
        objects = "".join(
            f"<object><name>{CLASSES[cls]}</name><difficult>{int((name, i) in difficult)}</difficult>"
            f"<bndbox><xmin>{x + 1}</xmin><ymin>{y + 1}</ymin><xmax>{x + bw}</xmax><ymax>{y + bh}</ymax>"
            f"</bndbox></object>\n" for i, (cls, x, y, bw, bh) in enumerate(boxes))
        (root / "Annotations" / f"{Path(name).stem}.xml").write_text(
            f"<annotation>\n<filename>{name}</filename>\n<size><width>{w}</width><height>{h}</height>"
            f"<depth>3</depth></size>\n{objects}</annotation>\n")
    return root / "Annotations", root / "JPEGImages"


def results(split, detections=DETECTIONS) -> list[dict]:
    ids = {r.file_name: r.id for r in split.images}
    return [{"image_id": ids[name], "category_id": split.category_ids[cls], "bbox": [x, y, w, h], "score": s}
            for name, found in detections.items() for cls, x, y, w, h, s in found]


def truth(split) -> dict:
    """file name -> sorted (category name, bbox, iscrowd) of the split's ground truth."""
    names = {c["id"]: c["name"] for c in split.categories}
    files = {r.id: r.file_name for r in split.images}
    out = {name: [] for name in files.values()}
    for a in split.coco_dict()["annotations"]:
        out[files[a["image_id"]]].append((names[a["category_id"]], a["bbox"], a["iscrowd"]))
    return {k: sorted(v) for k, v in out.items()}


def all_formats(tmp_path: Path) -> dict:
    """The same split as COCO, YOLO (beside; sibling labels/ with names from a list, a data.yaml,
    a classes.txt) and VOC, opened through release.data.open_split."""
    ann, images = write_coco(tmp_path / "coco")
    write_yolo(tmp_path / "yolo1" / "val", tmp_path / "yolo1" / "val", empty_files=False)
    write_yolo(tmp_path / "yolo2" / "images" / "val", tmp_path / "yolo2" / "labels" / "val")
    (tmp_path / "yolo2" / "data.yaml").write_text(yaml.safe_dump({"path": ".", "names": dict(enumerate(CLASSES))}))
    (tmp_path / "yolo2" / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    voc_ann, voc_images = write_voc(tmp_path / "voc")
    refs = {
        "coco": DataRef(annotations=ann, images=images),
        "yolo beside, names list": DataRef(format="yolo", images=tmp_path / "yolo1" / "val", names=CLASSES),
        "yolo labels/, data.yaml": DataRef(format="yolo", images=tmp_path / "yolo2/images/val",
                                           names=tmp_path / "yolo2/data.yaml"),
        "yolo auto, classes.txt": DataRef(images=tmp_path / "yolo2/images/val", names=tmp_path / "yolo2/classes.txt"),
        "yolo labels named": DataRef(annotations=tmp_path / "yolo2/labels/val", images=tmp_path / "yolo2/images/val",
                                     names=CLASSES),
        "voc": DataRef(annotations=voc_ann, images=voc_images, names=CLASSES),
        "voc named": DataRef(format="voc", annotations=voc_ann, images=voc_images, names=CLASSES),
    }
    return {name: open_split(ref, "eval") for name, ref in refs.items()}


# ---------------------------------------------------------------- parity

def test_the_same_data_in_three_formats_is_the_same_ground_truth_and_the_same_map(tmp_path):
    splits = all_formats(tmp_path)
    coco = splits.pop("coco")
    expected_truth, expected = truth(coco), score(coco, results(coco))
    assert 0.2 < expected[0] < 0.9  # the detections are neither all right nor all wrong
    for name, split in splits.items():
        assert [c["name"] for c in split.categories] == CLASSES, name
        assert [(r.file_name, r.width, r.height) for r in split.images] == \
               [(r.file_name, r.width, r.height) for r in coco.images], name
        assert truth(split) == expected_truth, name  # exact: bbox floats equal, not close
        assert score(split, results(split)) == expected, name  # all 12 statistics, exactly


def test_sizes_that_are_no_short_decimal_convert_exactly(tmp_path):
    """1/75 and 1/480 have no finite decimal: the normalized coordinates a converter writes are
    rounded floats, off by ~1e-12 pixel; the reader's nanopixel rounding gives back the exact boxes."""
    images = {"odd.png": (75, 45, [(0, 7, 11, 31, 13), (1, 40, 2, 33, 41)]),
              "vga.png": (640, 480, [(2, 13, 17, 101, 333), (0, 0, 0, 640, 480), (1, 639, 479, 1, 1)])}
    detections = {"odd.png": [(0, 7, 12, 30, 13, 0.9), (1, 41, 2, 30, 40, 0.8)],
                  "vga.png": [(2, 14, 17, 100, 330, 0.7), (0, 3, 3, 630, 470, 0.9), (1, 639, 478, 1, 2, 0.5)]}
    ann, folder = write_coco(tmp_path / "coco", images)
    write_yolo(tmp_path / "y/images", tmp_path / "y/labels", images)
    coco = open_split(DataRef(annotations=ann, images=folder))
    yolo = open_split(DataRef(format="yolo", images=tmp_path / "y/images", names=CLASSES))
    assert truth(yolo) == truth(coco)
    assert score(yolo, results(yolo, detections)) == score(coco, results(coco, detections))


def test_voc_without_names_takes_the_sorted_names_and_difficult_is_ignored(tmp_path):
    ann, images = write_voc(tmp_path, difficult={("b.png", 1)})
    split = open_split(DataRef(annotations=ann, images=images), "eval")
    assert [c["name"] for c in split.categories] == sorted(CLASSES)
    assert split.category_ids == [1, 2, 3]
    crowd = [(n, box) for n, box, c in truth(split)["b.png"] if c]
    assert crowd == [("bird", [55.0, 5.0, 40.0, 33.0])]
    boxes, labels = split.boxes(next(r for r in split.images if r.file_name == "b.png"))
    assert boxes.tolist() == [[10, 20, 30, 40]] and labels.tolist() == [sorted(CLASSES).index("dog")]


def test_limit_keeps_the_first_images_by_file_name(tmp_path):
    write_yolo(tmp_path / "images", tmp_path / "labels")
    split = open_split(DataRef(format="yolo", images=tmp_path / "images", names=CLASSES, limit=2))
    assert [(r.id, r.file_name) for r in split.images] == [(1, "a.png"), (2, "b.png")]
    assert sorted(a["image_id"] for a in split.coco_dict()["annotations"]) == [1, 1, 2, 2]


# ---------------------------------------------------------------- located errors

def test_malformed_yolo_labels_are_one_located_error(tmp_path):
    write_yolo(tmp_path / "images", tmp_path / "labels")
    (tmp_path / "labels" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2\n7 0.5 0.5 0.1 0.1\n")
    (tmp_path / "labels" / "b.txt").write_text("1 0.5 0.5 0.2 0.2\n1 1.2 0.5 0.1 0.1\n2 nan 0.5 0.1 0.1\n"
                                               "1 0.9 0.5 0.4 0.1\n0 x 1 1 1\n1 0.5 0.5 0 0.1\n")
    with pytest.raises(DataError) as err:
        open_split(DataRef(format="yolo", images=tmp_path / "images", names=CLASSES), "eval")
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'labels'}: data.eval is not a consistent YOLO split (7 problems)")
    for where in ("a.txt:2:", "a.txt:3:", "b.txt:2:", "b.txt:3:", "b.txt:4:", "b.txt:5:"):
        assert where in message, (where, message)
    assert "... and 1 more" in message  # b.txt:6, the third box outside the image (two listed per kind)
    assert "a.txt:1:" not in message and "b.txt:1:" not in message
    assert "neither a box (5 columns" in message and "class index not an integer in 0..2" in message
    assert "not a finite number" in message and "outside the image" in message and "data.eval.names" in message


def test_malformed_voc_files_are_one_located_error(tmp_path):
    ann, images = write_voc(tmp_path)
    (ann / "a.xml").write_text("<annotation>\n<size><width>64</width></size>\n"
                               "<object><name>cat</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax>"
                               "</bndbox></object>\n</annotation>\n")
    (ann / "b.xml").write_text("<annotation><size><width>100</width><height>80</height></size>\n"
                               "<object><name>cow</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax>"
                               "<ymax>9</ymax></bndbox></object>\n"
                               "<object><name>cat</name></object>\n"
                               "<object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>190</xmax>"
                               "<ymax>9</ymax></bndbox></object>\n</annotation>\n")
    (ann / "c.xml").write_text("<annotation><size>")
    (ann / "z.xml").write_text("<annotation/>")
    (ann / "e.xml").write_text('<?xml version="1.0"?>\n<!DOCTYPE a [<!ENTITY x "xxxxxxxx">]>\n<annotation>&x;</annotation>')
    with pytest.raises(DataError) as err:
        open_split(DataRef(annotations=ann, images=images, names=CLASSES), "eval")
    message = str(err.value)
    assert message.startswith(f"{ann}: data.eval is not a consistent VOC split (7 problems)"), message
    for where in ("a.xml:2:", "b.xml:2: 'cow'", "b.xml:3:", "b.xml:4:", "c.xml:1:", "z.xml: no z.*", "e.xml"):
        assert where in message, (where, message)
    assert "not in names" in message and "not well-formed" in message and "DOCTYPE (refused" in message


def test_names_files_are_checked_with_their_lines(tmp_path):
    (tmp_path / "data.yaml").write_text("nc: 3\nnames:\n  - cat\n  - dog\n  - cat\n")
    (tmp_path / "gaps.yaml").write_text("names:\n  0: cat\n  2: dog\n")
    (tmp_path / "classes.txt").write_text("cat\n\ndog\n\n")
    with pytest.raises(DataError, match=r"data\.yaml:5: class name 'cat' repeats line 3") as err:
        data_formats.read_names(tmp_path / "data.yaml", "eval")
    assert "nc is 3 but" not in str(err.value)
    with pytest.raises(DataError, match=r"gaps\.yaml:2: the names mapping's keys must be the class indices 0\.\.1"):
        data_formats.read_names(tmp_path / "gaps.yaml", "eval")
    with pytest.raises(DataError, match=r"classes\.txt:2: a blank line"):
        data_formats.read_names(tmp_path / "classes.txt", "eval")
    (tmp_path / "ok.yaml").write_text("names: {1: dog, 0: cat}\nnc: 2\n")
    assert data_formats.read_names(tmp_path / "ok.yaml") == ["cat", "dog"]


def test_detection_failures_name_the_field(tmp_path):
    write_images(tmp_path / "images")
    with pytest.raises(DataError, match=r"data\.eval\.annotations: no YOLO label files \(<image stem>\.txt\) "
                                        r"beside the images in .* or in .*labels"):
        open_split(DataRef(format="yolo", images=tmp_path / "images", names=CLASSES), "eval")
    with pytest.raises(DataError, match=r"data\.eval\.annotations: labels are needed"):
        open_split(DataRef(images=tmp_path / "images"), "eval", labels=True)
    assert open_split(DataRef(images=tmp_path / "images")).categories == []  # images only: calibration
    write_yolo(tmp_path / "images", tmp_path / "images")
    write_yolo(tmp_path / "images", tmp_path / "labels")
    with pytest.raises(DataError, match="both beside the images"):
        open_split(DataRef(images=tmp_path / "images", names=CLASSES), "eval")
    with pytest.raises(DataError, match=r"data\.eval\.names: YOLO labels hold class indices only"):
        open_split(DataRef(annotations=tmp_path / "labels", images=tmp_path / "images"), "eval")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError, match=r"no label file \(<image stem>\.txt\) for any of the 5 images"):
        open_split(DataRef(format="yolo", annotations=tmp_path / "other", images=tmp_path / "images", names=CLASSES))


# ---------------------------------------------------------------- the manifest

def yolo_project(root: Path) -> dict:
    """The layout of an Ultralytics project: data/images/{train,val}, data/labels/{train,val}, data/data.yaml."""
    for split in ("train", "val"):
        write_yolo(root / "data/images" / split, root / "data/labels" / split)
    (root / "data/data.yaml").write_text(yaml.safe_dump({"path": "data", "train": "images/train", "val": "images/val",
                                                          "names": CLASSES}))
    doc = tiny_manifest_dict()
    doc.pop("generate")
    (root / "model.ckpt").write_bytes(b"not really a checkpoint")
    doc["source"]["checkpoint"] = "model.ckpt"
    doc["data"] = {"eval": {"format": "yolo", "images": "data/images/val", "names": "data/data.yaml"},
                   "train": {"images": "data/images/train", "names": "data/data.yaml"},
                   "calibration": {"images": "data/images/train"}}
    return doc


def load(root: Path, doc: dict):
    path = root / "m.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return manifest.load(path, root)


def test_a_yolo_manifest_loads_with_its_format_and_labels_recorded(tmp_path):
    m = load(tmp_path, yolo_project(tmp_path))
    assert (m.data.eval.format, m.data.eval.annotations) == ("yolo", tmp_path / "data/labels/val")
    assert (m.data.train.format, m.data.train.annotations) == ("yolo", tmp_path / "data/labels/train")  # detected
    assert (m.data.calibration.format, m.data.calibration.annotations) == ("auto", None)  # no names: images only
    split = open_split(m.data.eval, "eval", labels=True)
    assert [c["name"] for c in split.categories] == CLASSES and len(split.images) == len(IMAGES)


def test_format_mistakes_are_located_manifest_errors(tmp_path):
    doc = yolo_project(tmp_path)
    doc["data"]["eval"]["format"] = "yaml"
    doc["data"]["train"].pop("names")
    doc["data"]["tuning"] = {"format": "voc", "images": "data/images/val"}
    with pytest.raises(ManifestError) as err:
        load(tmp_path, doc)
    message = str(err.value)
    assert "data.eval.format: got 'yaml'; input should be 'auto', 'coco', 'yolo' or 'voc'" in message
    assert "data.tuning: " in message and "format: voc needs annotations" in message
    lines = {line.split("data.")[1].split(":")[0]: line for line in message.splitlines()[1:]}
    assert lines["eval.format"].strip().startswith("line ")


def test_detection_problems_are_located_manifest_errors(tmp_path):
    doc = yolo_project(tmp_path)
    doc["data"]["train"] = {"annotations": "data/labels/train", "images": "data/images/train"}
    doc["data"]["eval"] = {"images": "data/images/val", "names": "data/classes.txt"}
    (tmp_path / "data/classes.txt").write_text("cat\ncat\n")
    for f in (tmp_path / "data/labels/val").iterdir():
        f.unlink()
    with pytest.raises(ManifestError) as err:
        load(tmp_path, doc)
    message = str(err.value)
    assert "data.train.names: YOLO labels hold class indices only" in message
    assert "data.eval.names: the class names of data.eval" in message and "classes.txt:2: class name 'cat'" in message
    assert "data.eval: mAP needs labels" in message and len(message.splitlines()) == 4


def test_a_named_format_whose_folder_holds_no_labels_is_a_located_error(tmp_path):
    doc = yolo_project(tmp_path)
    doc["data"]["calibration"] = {"format": "voc", "annotations": "data/labels/val", "images": "data/images/val"}
    doc["data"]["train"] = {"format": "yolo", "annotations": "data/images/val", "images": "data/images/train",
                            "names": CLASSES}
    with pytest.raises(ManifestError) as err:
        load(tmp_path, doc)
    found = str(err.value).splitlines()[1:]
    assert len(found) == 2 and "data.calibration.annotations: " in found[1] and "holds no .xml files" in found[1]
    assert "data.train.annotations: " in found[0] and "holds no label file (<image stem>.txt)" in found[0]


def test_yolo_labels_without_names_are_images_only_and_eval_says_so(tmp_path):
    doc = yolo_project(tmp_path)
    doc["data"]["eval"].pop("format")
    doc["data"]["eval"].pop("names")
    with pytest.raises(ManifestError, match=r"data\.eval: mAP needs labels, and the YOLO labels in .*labels/val "
                                            r"cannot be read without the class names: give data\.eval\.names"):
        load(tmp_path, doc)


def test_a_label_edit_changes_the_fingerprint_and_no_folder_is_a_file_dep(tmp_path):
    m = load(tmp_path, yolo_project(tmp_path))
    plan = planner.build(m, tmp_path)
    from release import tasks

    made = [*tasks.generate_tasks(plan), *tasks.check_tasks(plan), *tasks.stage_tasks(plan),
            *tasks.measure_tasks(plan), tasks.gate_task(plan)]
    assert all(not (tmp_path / d).is_dir() for t in made for d in t.get("file_dep", []))  # doit cannot hash a folder
    label = tmp_path / "data/labels/val/a.txt"
    label.write_text(label.read_text().replace("0 ", "1 ", 1))
    again = planner.build(manifest.load(tmp_path / "m.yaml", tmp_path), tmp_path)
    assert again.data_fp["eval"] != plan.data_fp["eval"]
    (tmp_path / "data/data.yaml").write_text(yaml.safe_dump({"names": ["dog", "cat", "bird"]}))
    third = planner.build(manifest.load(tmp_path / "m.yaml", tmp_path), tmp_path)
    assert third.data_fp["eval"] != again.data_fp["eval"]


def test_split_hashes_cover_every_label_file(tmp_path):
    cache = HashCache(tmp_path / "cache.json")
    write_yolo(tmp_path / "y/images", tmp_path / "y/labels")
    ann, images = write_voc(tmp_path / "voc")
    first = [cache.split(tmp_path / "y/labels", tmp_path / "y/images", "yolo", CLASSES),
             cache.split(ann, images, "voc", None)]
    assert cache.split(tmp_path / "y/labels", tmp_path / "y/images", "yolo", CLASSES[::-1]) != first[0]
    (tmp_path / "y/labels/e.txt").write_text("")
    (ann / "d.xml").write_text((ann / "d.xml").read_text().replace("<xmin>1</xmin>", "<xmin>2</xmin>"))
    assert [cache.split(tmp_path / "y/labels", tmp_path / "y/images", "yolo", CLASSES),
            cache.split(ann, images, "voc", None)] != first
    assert cache.labels(ann, images, "voc") != cache.labels(tmp_path / "y/labels", tmp_path / "y/images", "yolo",
                                                            CLASSES)


def test_the_report_and_the_model_card_list_the_classes_in_output_order():
    from release import render
    from release.report import Report

    base = {"key": "k", "name": "n", "version": "1", "target": {"name": "host"}, "budget": {}, "select": "best_map",
            "variants": {}}
    assert "classes" not in Report(**base).dump()  # a report of before: the same JSON as before
    report = Report(**base, classes=CLASSES)
    assert report.dump()["classes"] == CLASSES and Report.model_validate(report.dump()) == report
    assert "class index: name): 0 `cat`, 1 `dog`, 2 `bird`." in render.markdown(report)


def test_the_model_check_runs_the_adapter_on_a_yolo_split(tmp_path, monkeypatch):
    """The check's real-image pass reads YOLO (and VOC) splits too, whose annotations are a folder
    of labels: an adapter that fails there is one located problem before any stage runs."""
    from release import check
    from release.errors import ManifestError

    doc = yolo_project(tmp_path)
    (tmp_path / "userdet.py").write_text(
        "from release.models.demo.detector import Adapter as Demo, build  # noqa: F401\n\n\n"
        "class Adapter(Demo):\n"
        "    def postprocess(self, outputs, meta):\n"
        "        raise ValueError('no anchors for stride 4')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    doc["model"].update(builder="userdet:build", adapter="userdet:Adapter")
    doc["variants"] = {"fp32": ["strip", "export"]}
    m = load(tmp_path, doc)
    with pytest.raises(ManifestError) as err:
        check.run(m)
    text = str(err.value)
    assert "model.adapter" in text and "postprocess" in text and "no anchors for stride 4" in text, text
    assert "data.eval's first image" in text and "userdet.py:6" in text, text


def test_yolo_segment_polygons_count_as_their_boxes_and_crlf_and_suffix_case_are_read(tmp_path):
    """YOLO-seg label lines (class x1 y1 ... xn yn) are read as their polygon's bounding box, the
    same as the equivalent box line; Windows line ends and an upper-case suffix are fine."""
    from PIL import Image

    from release.manifest import DataRef

    for name, labels in (("box", b"1 0.2 0.2 0.2 0.2\r\n"), ("seg", b"1 0.1 0.1 0.3 0.1 0.3 0.3 0.1 0.3\r\n")):
        (tmp_path / name / "images").mkdir(parents=True)
        (tmp_path / name / "labels").mkdir()
        Image.new("RGB", (64, 48)).save(tmp_path / name / "images" / "a.JPG")
        (tmp_path / name / "labels" / "a.txt").write_bytes(labels)
    boxes = [open_split(DataRef(format="yolo", images=tmp_path / n / "images", names=["x", "y"]), "eval",
                        labels=True) for n in ("box", "seg")]
    (box,), (seg,) = [s.images for s in boxes]
    assert boxes[0].boxes(box)[0].tolist() == boxes[1].boxes(seg)[0].tolist()
    assert np.allclose(boxes[1].boxes(seg)[0], [[6.4, 4.8, 12.8, 9.6]])
    six = tmp_path / "box" / "labels" / "a.txt"
    six.write_text("1 0.2 0.2 0.2 0.2 0.9\n")  # a confidence column: not a label
    with pytest.raises(DataError, match="a.txt:1"):
        open_split(DataRef(format="yolo", images=tmp_path / "box" / "images", names=["x", "y"]), "eval", labels=True)
