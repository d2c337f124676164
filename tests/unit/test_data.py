"""release.data: a COCO split whose json is inconsistent fails up front with a located DataError
(the annotations file, the entry, the fix, the manifest's split), and never reads outside its folder."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from release.data import image_folder, load_split, open_split
from release.errors import DataError

CATEGORIES = [{"id": 1, "name": "ellipse"}, {"id": 2, "name": "rectangle"}]


def _png(path: Path, size: int = 8) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (200, 30, 30)).save(path)


def _image(i: int, **over) -> dict:
    return {"id": i, "file_name": f"{i:03d}.png", "width": 8, "height": 8, **over}


def _ann(i: int, image_id: int, **over) -> dict:
    return {"id": i, "image_id": image_id, "category_id": 1, "bbox": [1.0, 1.0, 4.0, 3.0], **over}


def write_split(root: Path, images=None, annotations=None, categories=None) -> tuple[Path, Path]:
    """annotations.json + an images/ folder holding a tiny PNG for every plain file_name listed."""
    images = [_image(1), _image(2)] if images is None else images
    annotations = [_ann(1, 1), _ann(2, 2)] if annotations is None else annotations
    folder = root / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for img in images:
        name = img.get("file_name")
        if isinstance(name, str) and "/" not in name and not Path(name).is_absolute():
            _png(folder / name)
    path = root / "annotations.json"
    doc = {"images": images, "annotations": annotations, "categories": CATEGORIES if categories is None else categories}
    path.write_text(json.dumps(doc), encoding="utf-8")  # json writes NaN / Infinity, as Python's json reads them
    return path, folder


def _error(path: Path, folder: Path, split: str = "eval", **kwargs) -> str:
    with pytest.raises(DataError) as caught:
        load_split(path, folder, split=split, **kwargs)
    message = str(caught.value)
    assert str(path) in message and "<split>" not in message
    return message


def test_a_consistent_split_loads(tmp_path):
    path, folder = write_split(tmp_path)
    split = load_split(path, folder, split="eval")
    assert [r.id for r in split.images] == [1, 2]
    boxes, labels = split.boxes(split.images[0])
    assert boxes.tolist() == [[1.0, 1.0, 4.0, 3.0]] and labels.tolist() == [0]
    assert split.read_image(split.images[1]).shape == (8, 8, 3)


def test_annotations_to_unknown_images_are_errors(tmp_path):
    path, folder = write_split(tmp_path, annotations=[_ann(1, 1), _ann(42, 99), _ann(7, 2)])
    message = _error(path, folder)
    assert "annotations[1] (id 42)" in message and "image_id 99" in message
    assert "data.eval" in message and "annotations[0]" not in message and "annotations[2]" not in message


def test_many_problems_are_listed_at_once_with_a_count_of_the_rest(tmp_path):
    anns = [_ann(1, 1)] + [_ann(100 + n, 500 + n) for n in range(25)]
    path, folder = write_split(tmp_path, annotations=anns)
    message = _error(path, folder, split="train")
    assert "25 annotations" in message and "data.train" in message
    assert "annotations[1] (id 100)" in message and "annotations[25]" not in message
    assert "and 15 more" in message


def test_every_kind_of_problem_of_a_file_is_reported_together(tmp_path):
    images = [_image(1), _image(2), _image(2, file_name="other.png"), _image(3, width=0)]
    anns = [_ann(1, 1), _ann(2, 77), _ann(3, 1, bbox=[1, 2, math.nan, 3]), _ann(4, 2, category_id=9)]
    path, folder = write_split(tmp_path, images=images, annotations=anns)
    message = _error(path, folder)
    for where in ("images[2] (id 2)", "images[3] (id 3)", "annotations[1] (id 2)", "annotations[2] (id 3)",
                  "annotations[3] (id 4)"):
        assert where in message, (where, message)


def test_annotations_of_images_beyond_the_limit_are_not_unknown(tmp_path):
    path, folder = write_split(tmp_path, images=[_image(1), _image(2), _image(3)],
                               annotations=[_ann(1, 1), _ann(2, 3)])
    split = load_split(path, folder, limit=1, split="eval")
    assert [r.id for r in split.images] == [1]
    assert [a["id"] for a in split.coco_dict()["annotations"]] == [1]


def test_duplicate_image_ids_are_errors(tmp_path):
    images = [_image(1), _image(2), _image(1, file_name="again.png")]
    message = _error(*write_split(tmp_path, images=images))
    assert "images[2] (id 1)" in message and "images[0]" in message and "duplicate" in message


def test_duplicate_annotation_ids_are_errors(tmp_path):
    message = _error(*write_split(tmp_path, annotations=[_ann(5, 1), _ann(6, 2), _ann(5, 2)]))
    assert "annotations[2] (id 5)" in message and "annotations[0]" in message and "duplicate" in message


def test_annotations_without_an_id_get_ids_that_do_not_collide(tmp_path):
    anns = [{k: v for k, v in _ann(0, 1).items() if k != "id"}, _ann(1, 2), _ann(2, 2)]
    split = load_split(*write_split(tmp_path, annotations=anns), split="eval")
    ids = [a["id"] for a in split.coco_dict()["annotations"]]
    assert len(set(ids)) == 3 and {1, 2} <= set(ids)


@pytest.mark.parametrize("bbox", [[math.nan, 1, 4, 3], [1, 1, math.inf, 3], [1, -math.inf, 4, 3],
                                  [1, 1, 0, 3], [1, 1, 4, 0], [1, 1, -2, 3], [1, 1, 4, -10]],
                         ids=["nan-x", "inf-w", "-inf-y", "w0", "h0", "w-neg", "h-neg"])
def test_non_finite_or_non_positive_boxes_are_errors(tmp_path, bbox):
    message = _error(*write_split(tmp_path, annotations=[_ann(1, 1), _ann(17, 2, bbox=bbox)]))
    assert "annotations[1] (id 17)" in message and "bbox" in message and "> 0" in message


@pytest.mark.parametrize("size", [{"width": 0}, {"height": -10}, {"width": None}, {"height": math.nan},
                                  {"width": 8.5}], ids=["w0", "h-neg", "w-null", "h-nan", "w-fraction"])
def test_missing_zero_or_negative_image_sizes_are_errors(tmp_path, size):
    message = _error(*write_split(tmp_path, images=[_image(1), _image(2, **size)]))
    assert "images[1] (id 2)" in message and "width" in message and "height" in message


def test_a_missing_image_size_is_an_error(tmp_path):
    image = {k: v for k, v in _image(2).items() if k != "height"}
    message = _error(*write_split(tmp_path, images=[_image(1), image]))
    assert "images[1] (id 2)" in message and "height" in message


def test_unknown_category_ids_are_located_errors(tmp_path):
    message = _error(*write_split(tmp_path, annotations=[_ann(1, 1), _ann(42, 2, category_id=9)]))
    assert "annotations[1] (id 42)" in message and "category_id 9" in message and "categories" in message


def test_duplicate_category_ids_are_errors(tmp_path):
    cats = CATEGORIES + [{"id": 1, "name": "again"}]
    message = _error(*write_split(tmp_path, categories=cats))
    assert "categories[2] (id 1)" in message


def _outside(tmp_path: Path) -> Path:
    secret = tmp_path / "outside" / "secret.png"
    _png(secret)
    return secret


@pytest.mark.parametrize("kind", ["dotdot", "nested-dotdot", "absolute"])
def test_file_names_that_leave_the_images_folder_are_errors(tmp_path, kind):
    secret = _outside(tmp_path)
    root = tmp_path / "split"
    name = {"dotdot": "../../outside/secret.png", "nested-dotdot": "sub/../../../outside/secret.png",
            "absolute": str(secret)}[kind]
    (root / "images" / "sub").mkdir(parents=True)
    message = _error(*write_split(root, images=[_image(1), _image(2, file_name=name)]))
    assert "images[1] (id 2)" in message and "images folder" in message


def test_a_symlink_resolving_outside_the_images_folder_is_an_error(tmp_path):
    secret = _outside(tmp_path)
    path, folder = write_split(tmp_path / "split", images=[_image(1), _image(2, file_name="link.png")])
    (folder / "link.png").unlink()
    (folder / "link.png").symlink_to(secret)
    message = _error(path, folder)
    assert "images[1] (id 2)" in message and "link.png" in message and "outside" in message


def test_a_symlink_inside_the_images_folder_is_fine(tmp_path):
    path, folder = write_split(tmp_path, images=[_image(1), _image(2, file_name="link.png")])
    (folder / "link.png").unlink()
    (folder / "link.png").symlink_to("001.png")
    assert len(load_split(path, folder, split="eval").images) == 2


def test_messages_name_the_split(tmp_path):
    path, folder = write_split(tmp_path)
    with pytest.raises(DataError, match=r"data\.train\.annotations"):
        load_split(tmp_path / "nope.json", folder, split="train")
    with pytest.raises(DataError, match=r"data\.eval\.images"):
        load_split(path, tmp_path / "nope", split="eval")
    with pytest.raises(DataError, match=r"data\.calibration\.images"):
        image_folder(tmp_path / "nope", split="calibration")
    (folder / "002.png").unlink()
    with pytest.raises(DataError, match=r"data\.tuning\.images") as caught:
        open_split(SimpleNamespace(annotations=path, images=folder, limit=None), split="tuning")
    assert "002.png" in str(caught.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"data\.calibration\.images"):
        open_split(SimpleNamespace(annotations=None, images=empty, limit=None), split="calibration")


def test_without_a_split_name_no_placeholder_is_shown(tmp_path):
    with pytest.raises(DataError) as caught:
        load_split(tmp_path / "nope.json", tmp_path)
    assert "<split>" not in str(caught.value) and "annotations" in str(caught.value)
