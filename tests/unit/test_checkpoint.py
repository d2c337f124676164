"""Reading checkpoints safely and diagnosing mismatches (real torch files in tmp_path)."""

import pytest
import torch

from release import checkpoint
from release.errors import CheckpointError


def tiny_model():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Conv2d(4, 2, 1))


class Payload:
    """Unpickling this object would run code that writes a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_lightning_checkpoint_prefers_ema_and_strips_prefix(tmp_path):
    state = tiny_model().state_dict()
    ckpt = {"epoch": 3, "global_step": 30, "optimizer_states": [{"state": {}}],
            "state_dict": {**{f"model.{k}": v for k, v in state.items()},
                           **{f"avg_model.{k}": v + 1 for k, v in state.items()}}}
    path = tmp_path / "last.ckpt"
    torch.save(ckpt, path)
    fmt, obj = checkpoint.read(path)
    assert fmt == "lightning"
    weights, facts = checkpoint.extract(path, fmt, obj)
    assert facts["copy"] == "ema" and facts["prefix"] == "avg_model."
    assert set(weights) == set(state) and torch.equal(weights["0.weight"], state["0.weight"] + 1)
    raw, facts = checkpoint.extract(path, fmt, obj, "raw")
    assert facts["copy"] == "raw" and torch.equal(raw["0.weight"], state["0.weight"])


def test_plain_state_dict(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(tiny_model().state_dict(), path)
    assert checkpoint.read(path)[0] == "state_dict"


def test_a_code_running_pickle_is_refused_even_when_trusted_and_never_runs(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "x": Payload(marker)}, path)
    for trusted in (False, True):  # trusted means "its model classes may be rebuilt", not "run exec"
        with pytest.raises(CheckpointError, match="asks to run builtins.exec when loaded: it is not a checkpoint a "
                                                  "training run writes; do not load it") as err:
            checkpoint.read(path, trusted=trusted)
        assert "trusted" not in str(err.value) and str(path) in str(err.value)
    assert not marker.exists()


def test_a_pickled_class_needs_trust_and_says_so(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"model": tiny_model()}, path)  # a pickled nn.Module, as YOLOv5 saves
    with pytest.raises(CheckpointError, match="needs code to unpickle.*Sequential.*source.trusted: true"):
        checkpoint.read(path)
    assert checkpoint.read(path, trusted=True)[0] == "yolov5"


@pytest.mark.parametrize("content, expected", [
    (b"", "the file is empty"),
    (b"hello world, not a model", "not a PyTorch checkpoint"),
])
def test_malformed_files_get_one_clear_line(tmp_path, content, expected):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=expected):
        checkpoint.read(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(tiny_model().state_dict(), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated"):
        checkpoint.read(path)


def test_drop_patterns(tmp_path):
    state = {"backbone.w": torch.zeros(1), "aux_head.w": torch.zeros(1), "aux_head.b": torch.zeros(1)}
    kept, dropped = checkpoint.drop(state, ["aux_head.*"], tmp_path)
    assert list(kept) == ["backbone.w"] and dropped == ["aux_head.b", "aux_head.w"]
    with pytest.raises(CheckpointError, match=r"'aux_neck\.\*' matches no parameter"):
        checkpoint.drop(state, ["aux_neck.*"], tmp_path)


def test_mismatch_report_lists_missing_unexpected_and_shapes(tmp_path):
    expected = tiny_model().state_dict()
    state = dict(expected)
    state["2.wieght"] = state.pop("2.weight")
    state["0.bias"] = torch.zeros(7)
    report = checkpoint.mismatch_report(state, expected, tmp_path / "c.pt")
    assert "1 missing from the checkpoint, in 1 module:" in report and "    2: weight  (closest: 2.wieght)" in report
    assert "1 unexpected in the checkpoint" in report
    assert "0.bias: checkpoint (7,), model (4,)" in report
    assert checkpoint.mismatch_report(expected, expected, tmp_path) is None


def test_keys_are_grouped_by_module_and_renamed_modules_are_named(tmp_path):
    expected = {f"head.cls.{leaf}": torch.zeros(3) for leaf in ("weight", "bias")}
    expected.update({f"backbone.{i}.weight": torch.zeros(4) for i in range(30)})
    state = {k.replace("head.cls.", "head.classifier."): v for k, v in expected.items()}
    state = {k: v for k, v in state.items() if not k.startswith("backbone.")}
    report = checkpoint.mismatch_report(state, expected, tmp_path / "c.pt")
    assert "(0 of 32 parameters match)" in report
    assert "32 missing from the checkpoint, in 31 modules:" in report and "    head.cls: weight, bias" in report
    assert "... and 11 more modules" in report
    assert "'head.classifier' -> 'head.cls'" in report and "Renamed modules?" in report


def test_prefix_hint(tmp_path):
    expected = tiny_model().state_dict()
    wrapped = {f"net.{k}": v for k, v in expected.items()}
    report = checkpoint.mismatch_report(wrapped, expected, tmp_path / "c.pt")
    assert "extra 'net.' prefix" in report


def test_a_named_format_that_does_not_fit_is_a_clear_error(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"weights": tiny_model().state_dict()}, path)
    fmt, obj = checkpoint.read(path, "lightning")
    with pytest.raises(CheckpointError, match="source.format is 'lightning' but the file holds no 'state_dict'"):
        checkpoint.extract(path, fmt, obj)
