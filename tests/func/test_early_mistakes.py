"""Every mistake before the first heavy step (issue 14, item 3): a user's builder, adapter or data
that is wrong is one located problem (the manifest file, its line, the field, the fix) from
`doit release`, never a traceback, and no stage runs, nor the generator that trains the model.

Each case is a small project: the tiny manifest with its data generator (seconds) and its
checkpoint generator (which trains, so it must never run here), and the user's own module beside
it, whose adapters each make one mistake.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import executed, run_doit, tiny_manifest_dict, write_manifest

pytestmark = pytest.mark.slow

USER_CODE = '''\
import numpy as np

from release.models.demo.detector import Adapter, build  # noqa: F401 - the builder users name


class WrongShape(Adapter):
    def preprocess(self, image):
        x, meta = super().preprocess(image)
        return x[None], meta  # batched: the build adds the batch itself


class WrongDtype(Adapter):
    def preprocess(self, image):
        x, meta = super().preprocess(image)
        return np.ascontiguousarray(image.transpose(2, 0, 1)), meta  # uint8, never normalised


class FiveColumns(Adapter):
    def postprocess(self, outputs, meta):
        return np.zeros((2, 5), np.float32)  # no class column


class ClassOutOfRange(Adapter):
    def postprocess(self, outputs, meta):
        return np.array([[1, 2, 10, 10, 0.9, 7]], np.float32)  # 3 classes


class RaisesInPostprocess(Adapter):
    def postprocess(self, outputs, meta):
        raise ValueError("no anchors for stride 4")  # RAISES HERE


class NoBoxesToInput:
    output_names = ["heatmap", "size", "offset"]

    def __init__(self, input_shape):
        self.inner = Adapter(input_shape)

    def preprocess(self, image):
        return self.inner.preprocess(image)

    def postprocess(self, outputs, meta):
        return self.inner.postprocess(outputs, meta)
'''

DATA = "artifacts/demo/data"
EMPTY_COCO = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}


def _doc(**model) -> dict:
    doc = tiny_manifest_dict()
    doc["model"].update({"builder": "userdet:build", "adapter": "userdet:Adapter", **model})
    doc["generate"]["data"]["kwargs"].update(train_images=8, calibration_images=4, eval_images=4)
    return doc


def _eval_folder(project, kind: str) -> dict:
    """data.eval at a folder of the user's own that is missing, a file, or holds no image."""
    doc = _doc()
    mine = project / "mydata"
    mine.mkdir()
    (mine / "annotations.json").write_text(json.dumps(EMPTY_COCO))
    if kind == "file":
        (mine / "images").write_text("not a folder")
    elif kind == "empty":
        (mine / "images").mkdir()
        (mine / "images" / "README.txt").write_text("the images are elsewhere")
    doc["data"]["eval"] = {"annotations": "mydata/annotations.json", "images": "mydata/images"}
    return doc


# name -> (manifest change, the field at fault, the YAML text on its line, what the message says)
CASES = {
    "misspelled builder": (lambda p: _doc(builder="userdet:biuld"), "model.builder", "userdet:biuld",
                           ["module 'userdet' has no 'biuld'. Did you mean 'build'?"]),
    "misspelled adapter": (lambda p: _doc(adapter="userdet:Adaptor"), "model.adapter", "userdet:Adaptor",
                           ["module 'userdet' has no 'Adaptor'. Did you mean 'Adapter'?"]),
    "adapter missing a method": (lambda p: _doc(adapter="userdet:NoBoxesToInput"), "model.adapter",
                                 "userdet:NoBoxesToInput", ["has no method boxes_to_input(boxes, meta)"]),
    "no such eval folder": (lambda p: _eval_folder(p, "missing"), "data.eval.images", "mydata/images",
                            ["no such folder:", "mydata/images"]),
    "eval folder is a file": (lambda p: _eval_folder(p, "file"), "data.eval.images", "mydata/images",
                              ["is not a folder (a regular file)"]),
    "eval folder without images": (lambda p: _eval_folder(p, "empty"), "data.eval.images", "mydata/images",
                                   ["holds no image files"]),
    "preprocess shape": (lambda p: _doc(adapter="userdet:WrongShape"), "model.adapter", "userdet:WrongShape",
                         ["gave x of shape (1, 3, 64, 64)", "needs (C, H, W) = (3, 64, 64)",
                          "It has a batch dimension", "data.eval's first image"]),
    "preprocess dtype": (lambda p: _doc(adapter="userdet:WrongDtype"), "model.adapter", "userdet:WrongDtype",
                         ["gave x of dtype uint8", "expected a float array", "x.astype(np.float32)"]),
    "rows of five": (lambda p: _doc(adapter="userdet:FiveColumns"), "model.adapter", "userdet:FiveColumns",
                     ["returned an array of shape (2, 5)", "expected (N, 6)", "Its rows have 5 values"]),
    "class out of range": (lambda p: _doc(adapter="userdet:ClassOutOfRange"), "model.adapter",
                           "userdet:ClassOutOfRange",
                           ["returned class index 7 (row 0)", "data.eval has 3 classes, indices 0..2"]),
    "exception in postprocess": (lambda p: _doc(adapter="userdet:RaisesInPostprocess"), "model.adapter",
                                 "userdet:RaisesInPostprocess",
                                 ["postprocess(outputs, meta) raised at ", "ValueError: no anchors for stride 4"]),
}
AT_LOAD = {"misspelled builder", "misspelled adapter", "adapter missing a method", "no such eval folder",
           "eval folder is a file", "eval folder without images"}


@pytest.mark.parametrize("case", list(CASES))
def test_each_mistake_is_one_located_line_before_any_stage(tmp_path, case):
    change, field, text, says = CASES[case]
    (tmp_path / "userdet.py").write_text(USER_CODE)
    path = write_manifest(tmp_path, change(tmp_path))
    line = next(i for i, row in enumerate(path.read_text().splitlines(), 1) if text in row)

    done = run_doit(tmp_path, "release", "manifest=tiny.yaml", timeout=300)
    out = done.stdout + done.stderr

    assert done.returncode != 0, out
    assert "Traceback" not in out, out
    assert f"{path}: 1 problem" in out, out
    located = [row for row in out.splitlines() if f"line {line}, {field}: " in row]
    assert len(located) == 1, out
    for words in says:
        assert words in located[0], located[0]
    if case == "exception in postprocess":  # the user's own file and line, not the build's
        raising = next(i for i, row in enumerate(USER_CODE.splitlines(), 1) if "RAISES HERE" in row)
        assert f"raised at {tmp_path / 'userdet.py'}:{raising} on data.eval" in located[0], located[0]
    # Nothing heavy ran: no stage output, and the generator that trains the model did not run.
    assert not (tmp_path / "artifacts" / "stages").exists() or not any((tmp_path / "artifacts" / "stages").iterdir())
    assert not (tmp_path / "artifacts" / "demo" / "train_last.ckpt").exists()
    ran = executed(done.stdout)
    # A manifest mistake stops the build before any task; one the model check finds stops it there,
    # after the data it reads was made and before the checkpoint is trained.
    assert ran == ([] if case in AT_LOAD else ["generate:data", "check:tiny"]), ran


def test_a_good_adapter_passes_the_check_and_it_stays_up_to_date(tmp_path):
    """The same project with a correct adapter: the check passes on real images (run alone here, with
    the data generator it waits for), a second run finds it up to date, and an edit of the
    adapter's code runs it again."""
    (tmp_path / "userdet.py").write_text(USER_CODE)
    write_manifest(tmp_path, _doc())
    first = run_doit(tmp_path, "check", "manifest=tiny.yaml", timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    assert executed(first.stdout) == ["generate:data", "check:tiny"], first.stdout
    # The checkpoint is trained after the check (generate.checkpoint takes model.kwargs): not loaded, and said.
    assert "is made by generate.checkpoint, which runs after this check: the model is checked with the " \
           "builder's random weights" in first.stdout, first.stdout
    again = run_doit(tmp_path, "check", "manifest=tiny.yaml", timeout=300)
    assert again.returncode == 0 and executed(again.stdout) == [], again.stdout + again.stderr
    # The adapter's code edited: the check runs again (the data is still what it was).
    (tmp_path / "userdet.py").write_text(USER_CODE + "\n# tuned\n")
    edited = run_doit(tmp_path, "check", "manifest=tiny.yaml", timeout=300)
    assert edited.returncode == 0 and executed(edited.stdout) == ["check:tiny"], edited.stdout + edited.stderr
