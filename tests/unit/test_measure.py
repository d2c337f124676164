"""Size, latency and mAP measured for real: ONNX files built here, ONNX Runtime, pycocotools."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from release.measure import accuracy, size


def export_tiny(path: Path, channels: int = 8) -> Path:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, channels, 3, padding=1), torch.nn.ReLU()).eval()
    torch.onnx.export(model, (torch.zeros(1, 3, 16, 16),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["out"])
    return path


def test_size_counts_external_data(tmp_path):
    single = export_tiny(tmp_path / "single.onnx", channels=64)
    one = size.measure(single)
    assert one["files"] == ["single.onnx"] and one["bytes"] == single.stat().st_size
    assert one["size_mb"] == one["bytes"] / 1e6
    proto = onnx.load(str(single))
    split = tmp_path / "split" / "model.onnx"
    split.parent.mkdir()
    onnx.save_model(proto, str(split), save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    two = size.measure(split)
    assert two["files"] == ["model.onnx", "model.onnx.data"]
    assert two["bytes"] == split.stat().st_size + (split.parent / "model.onnx.data").stat().st_size
    assert two["bytes"] > split.stat().st_size


class OracleAdapter:
    """Returns the ground truth it is given through `meta`: checks the COCO plumbing, not a model."""

    output_names = ["out"]

    def __init__(self, input_shape, truth=None, shuffle_classes=False):
        self.truth, self.shuffle = truth, shuffle_classes

    def preprocess(self, image):
        return np.zeros((3, 16, 16), np.float32), {"key": int(image[0, 0, 0])}

    def postprocess(self, outputs, meta):
        rows = json.loads(Path(self.truth).read_text())[str(meta["key"])]
        dets = np.array([[*r[:4], 0.9, (r[4] + 1) % 2 if self.shuffle else r[4]] for r in rows], np.float32)
        return dets.reshape(-1, 6)

    def boxes_to_input(self, boxes, meta):  # the adapter protocol's; evaluation never calls it
        return boxes


def write_split(folder: Path):
    images, anns, truth = [], [], {}
    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((32, 32, 3), i, np.uint8)).save(folder / "images" / f"{i}.png")
        images.append({"id": 10 + i, "file_name": f"{i}.png", "width": 32, "height": 32})
        truth[str(i)] = []
        for k in range(2):
            x, y = (float(v) for v in rng.uniform(0, 16, 2))
            box = [x, y, 8.0, 10.0]
            cat = [7, 3][k]  # category ids need not be 0-based or sorted
            anns.append({"id": len(anns) + 1, "image_id": 10 + i, "category_id": cat, "bbox": box,
                         "area": 80.0, "iscrowd": 0})
            truth[str(i)].append([*box, sorted([3, 7]).index(cat)])
    (folder / "ann.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                 "categories": [{"id": 7, "name": "b"}, {"id": 3, "name": "a"}]}))
    (folder / "truth.json").write_text(json.dumps(truth))


@pytest.mark.parametrize("shuffle, expected", [(False, 1.0), (True, 0.0)])
def test_map_through_onnxruntime_and_pycocotools(tmp_path, shuffle, expected):
    write_split(tmp_path)
    model = export_tiny(tmp_path / "m.onnx")
    spec = SimpleNamespace(adapter="tests.unit.test_measure:OracleAdapter", input_shape=(1, 3, 16, 16),
                           adapter_kwargs={"truth": str(tmp_path / "truth.json"), "shuffle_classes": shuffle})
    ref = SimpleNamespace(annotations=tmp_path / "ann.json", images=tmp_path / "images", limit=None)
    result = accuracy.evaluate(model, spec, ref)
    assert result["images"] == 4 and result["detections"] == 8
    assert result["map"] == pytest.approx(expected) and result["map50"] == pytest.approx(expected)
