"""The model check with the checkpoint's weights (release/check.py): source.checkpoint is loaded into
the checked model as strip reads it (never unpickled unless trusted), a checkpoint that does not fit
is one located problem, one a training generator makes later is not loaded (and the check says so),
and real weights that detect nothing on every image checked are a warning naming the images and the
adapter's score threshold. On real images of the demo's shapes data, with the demo detector."""

from __future__ import annotations

from pathlib import Path

import pytest

from release import check
from release.errors import ManifestError
from release.manifest import load
from tests.conftest import tiny_manifest_dict, write_manifest


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from release.models.demo import shapes

    root = tmp_path_factory.mktemp("check-weights")
    shapes.generate(root / "artifacts" / "demo" / "data", seed=0, image_size=64, workers=1,
                    splits={"train": 2, "calibration": 2, "eval": 2})
    return root


def _project(data_root: Path, tmp_path: Path, checkpoint: str = "artifacts/demo/train_last.ckpt", **source) -> Path:
    """A project folder whose data is the module's (linked) and whose manifest reads `checkpoint`."""
    (tmp_path / "artifacts").mkdir(exist_ok=True)
    (tmp_path / "artifacts" / "demo").mkdir(exist_ok=True)
    link = tmp_path / "artifacts" / "demo" / "data"
    if not link.exists():
        link.symlink_to(data_root / "artifacts" / "demo" / "data")
    doc = tiny_manifest_dict()
    doc.pop("generate")
    doc["source"] = {**doc["source"], "checkpoint": checkpoint, **source}
    doc["variants"] = {"fp32": ["strip", "export"]}  # reads data.eval only
    write_manifest(tmp_path, doc)
    return tmp_path


def _weights(path: Path, heat_bias: float, width: float = 0.5, safetensors: bool = False) -> Path:
    """The demo detector (with its training-only aux head, which source.drop removes) whose heatmap
    bias makes every location a detection (+20) or none (-20), saved as training would."""
    import torch

    from release.models.demo.detector import build

    torch.manual_seed(0)
    model = build(num_classes=3, width=width, aux_head=True)
    with torch.no_grad():
        model.heatmap[-1].bias.fill_(heat_bias)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if safetensors:
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    return path


def _run(root: Path, capsys) -> list[str]:
    """The check as the build runs it (what it says is printed); the lines it printed."""
    capsys.readouterr()
    check.run(load(root / "tiny.yaml", root))
    return capsys.readouterr().out.splitlines()


def test_the_checkpoint_is_loaded_so_its_detections_are_judged(data_root, tmp_path, capsys):
    root = _project(data_root, tmp_path)
    ckpt = _weights(root / "artifacts" / "demo" / "train_last.ckpt", heat_bias=20.0)
    said = _run(root, capsys)
    assert any(f"checked with the weights of {ckpt}" in s for s in said), said
    assert not any("warning" in s for s in said), said  # these weights detect: nothing to warn about

    _weights(ckpt, heat_bias=-20.0)  # the same model, weights that keep no detection anywhere
    said = _run(root, capsys)
    (warning,) = [s for s in said if "warning" in s]
    image = data_root / "artifacts" / "demo" / "data" / "eval" / "images"
    assert "release.models.demo.detector:Adapter.postprocess kept no detection on data.eval's " in warning, warning
    assert str(image) in warning or str(root / "artifacts/demo/data/eval/images") in warning, warning
    assert "score threshold: score_threshold=0.05" in warning and f"weights of {ckpt}" in warning, warning


def test_a_safetensors_checkpoint_is_loaded(data_root, tmp_path, capsys):
    root = _project(data_root, tmp_path, checkpoint="weights.safetensors")
    _weights(root / "weights.safetensors", heat_bias=-20.0, safetensors=True)
    said = _run(root, capsys)
    assert any("(safetensors," in s for s in said) and any("kept no detection" in s for s in said), said


def test_an_untrusted_checkpoint_that_needs_code_is_refused_never_run(data_root, tmp_path, monkeypatch, capsys):
    import torch

    (tmp_path / "payload.py").write_text(
        "from pathlib import Path\n\n\ndef touch(path):\n    Path(path).write_text('ran')\n    return {}\n\n\n"
        "class Payload:\n    def __init__(self, path):\n        self.path = path\n\n"
        "    def __reduce__(self):\n        return touch, (self.path,)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import payload

    root = _project(data_root, tmp_path)
    ran = tmp_path / "ran.txt"
    torch.save({"state_dict": {}, "extra": payload.Payload(str(ran))}, root / "artifacts/demo/train_last.ckpt")
    with pytest.raises(ManifestError) as err:
        _run(root, capsys)
    assert not ran.exists()  # never unpickled: source.trusted is false
    text = str(err.value)
    assert "1 problem" in text and "source.checkpoint: " in text and "needs code to unpickle" in text, text


def test_a_checkpoint_that_does_not_fit_is_located_at_source_checkpoint(data_root, tmp_path, capsys):
    root = _project(data_root, tmp_path)
    _weights(root / "artifacts/demo/train_last.ckpt", heat_bias=0.0, width=0.25)  # model.kwargs say 0.5
    with pytest.raises(ManifestError) as err:
        _run(root, capsys)
    line = next(i for i, row in enumerate((root / "tiny.yaml").read_text().splitlines(), 1) if "checkpoint:" in row)
    text = str(err.value)
    assert f"line {line}, source.checkpoint: " in text and "the weights do not fit model.builder" in text, text


def test_a_checkpoint_a_training_generator_makes_is_not_loaded_and_the_check_says_so(data_root, tmp_path, capsys):
    root = _project(data_root, tmp_path)
    doc = tiny_manifest_dict()  # generate.checkpoint trains the model after the check
    del doc["generate"]["data"]  # (the data is the project's own here)
    doc["generate"]["checkpoint"]["after"] = []
    doc["variants"] = {"fp32": ["strip", "export"]}
    write_manifest(root, doc)
    (root / "artifacts/demo/train_last.ckpt").write_bytes(b"last night's, about to be trained again")
    said = _run(root, capsys)
    assert any("is made by generate.checkpoint, which runs after this check: the model is checked with the "
               "builder's random weights" in s for s in said), said
    assert not any("warning" in s for s in said), said
