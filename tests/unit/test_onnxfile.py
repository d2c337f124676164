"""release/onnxfile.py: the shared check of a converted ONNX model against its float source, the
write-then-replace of a stage's output, and the size facts; on small onnx.helper graphs run by the
real ONNX Runtime."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from release import onnxfile
from release.errors import ReleaseError

FAILURES = onnxfile.Failures(load="test: cannot load: {exc}", run="test: cannot run: {exc}",
                             nonfinite="test: output '{output}' is not finite")


def _scale(path: Path, factor: float, shape=(1, 4), dtype=TensorProto.FLOAT) -> Path:
    """y = x * factor, with an input of `shape` (a str is a symbolic dimension)."""
    k = numpy_helper.from_array(np.array([factor], np.float16 if dtype == TensorProto.FLOAT16 else np.float32), "k")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["y"])], "scale",
                              [helper.make_tensor_value_info("x", dtype, list(shape))],
                              [helper.make_tensor_value_info("y", dtype, list(shape))], [k])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(path))
    return path


def test_importing_it_loads_nothing_heavy_and_not_the_stage_layer():
    code = ("import sys, release.onnxfile; heavy = [m for m in ('onnx', 'onnxruntime', 'numpy', 'release.stages') "
            "if m in sys.modules]; print(heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_verify_reports_the_largest_difference_over_all_feeds(tmp_path):
    reference, converted = _scale(tmp_path / "ref.onnx", 2.0), _scale(tmp_path / "new.onnx", 2.5)
    feeds = [{"x": np.full((1, 4), v, np.float32)} for v in (1.0, -4.0, 2.0)]
    outputs = onnxfile.verify(converted, reference, feeds, FAILURES)
    assert outputs == {"y": {"max_abs_diff": 2.0, "ref_max_abs": 8.0}}  # |(-4) * 0.5|, |(-4) * 2|
    same = onnxfile.verify(reference, reference, feeds, FAILURES, dtypes=True)
    assert same == {"y": {"dtype": "float32", "max_abs_diff": 0.0, "ref_max_abs": 8.0}}


def test_a_random_input_is_seeded_and_symbolic_dimensions_are_not_guessed(tmp_path):
    model = _scale(tmp_path / "m.onnx", 3.0)
    first = onnxfile.verify(model, model, None, FAILURES)
    assert first == onnxfile.verify(model, model, None, FAILURES) and first["y"]["ref_max_abs"] > 0
    batch = _scale(tmp_path / "batch.onnx", 3.0, shape=("N", 4))
    assert onnxfile.verify(batch, batch, None, FAILURES) is None  # loaded, not run
    assert onnxfile.verify(batch, batch, None, FAILURES, symbolic_batch=1)["y"]["max_abs_diff"] == 0.0
    wide = _scale(tmp_path / "wide.onnx", 3.0, shape=(1, "W"))
    assert onnxfile.verify(wide, wide, None, FAILURES, symbolic_batch=1) is None


def test_a_float16_model_gets_float16_input_and_its_reference_float32(tmp_path):
    half, full = _scale(tmp_path / "half.onnx", 2.0, dtype=TensorProto.FLOAT16), _scale(tmp_path / "full.onnx", 2.0)
    session = onnxfile.session(half)
    feeds = onnxfile.random_feeds(session.get_inputs())
    assert feeds["x"].dtype == np.float16
    outputs = onnxfile.compare(session, onnxfile.session(full), [feeds], FAILURES, dtypes=True)
    assert outputs["y"]["dtype"] == "float16" and outputs["y"]["max_abs_diff"] == 0.0  # x2 is exact in both


def test_failures_are_release_errors_in_the_stage_s_words(tmp_path):
    good = _scale(tmp_path / "good.onnx", 1.0)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    with pytest.raises(ReleaseError, match="^test: cannot load: "):
        onnxfile.verify(broken, good, None, FAILURES)
    with pytest.raises(ReleaseError, match="^test: cannot run: "):
        onnxfile.verify(good, good, [{"x": np.zeros((2, 3), np.float32)}], FAILURES)  # wrong shape
    nan = _scale(tmp_path / "nan.onnx", float("nan"))
    with pytest.raises(ReleaseError, match="^test: output 'y' is not finite$"):
        onnxfile.verify(nan, good, None, FAILURES)
    with pytest.raises(Exception) as info:  # the reference is the stage's own input: no stage words
        onnxfile.verify(good, broken, None, FAILURES)
    assert not isinstance(info.value, ReleaseError)


def test_replacing_moves_the_model_into_place_only_on_success(tmp_path):
    final = tmp_path / "model.onnx"
    with onnxfile.replacing(final, ".stage-") as (scratch, out):
        assert scratch.parent == tmp_path and out.parent == scratch and out.name == "model.onnx"
        (scratch / "preprocessed.onnx").write_bytes(b"scratch")
        out.write_bytes(b"model")
        assert not final.exists()
    assert final.read_bytes() == b"model" and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]

    with pytest.raises(ReleaseError), onnxfile.replacing(final, ".stage-") as (_, out):
        out.write_bytes(b"a model that failed its check")
        raise ReleaseError("check failed")
    assert final.read_bytes() == b"model" and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_size_facts(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 1000)
    (tmp_path / "b").write_bytes(b"x" * 251)
    assert onnxfile.size_facts(tmp_path / "a", tmp_path / "b") == {
        "size_bytes_before": 1000, "size_bytes_after": 251, "size_ratio": 0.251}
