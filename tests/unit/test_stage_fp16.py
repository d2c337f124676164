"""The fp16 stage on a tiny exported detector-like net, with the real ONNX Runtime (no mocks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from pydantic import ValidationError

from release.errors import ReleaseError
from tests.models import export_tiny_detector
from release.stages import fp16
from release.stages.base import StageContext

# float16 has an 11-bit significand (relative step ~1e-3); through 5 convs on this net the outputs
# measured within 6e-4 of fp32 relative to their largest magnitude; 1e-2 flags real damage only.
MAX_REL_DIFF = 1e-2


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory) -> Path:
    return export_tiny_detector(tmp_path_factory.mktemp("fp32") / "model.onnx")


def _run(model: Path, out_dir: Path, **params) -> tuple[dict, StageContext]:
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(input=model, out_dir=out_dir, params=fp16.Params(**params), log=lambda message: None,
                       spec_produces="onnx")
    return fp16.run(ctx), ctx


def _infer(path: Path, x: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})


def test_params_reject_unknown_keys_and_nonsense():
    with pytest.raises(ValidationError, match="extra"):
        fp16.Params(keep_io=True)
    with pytest.raises(ValidationError, match="max_finite_val"):
        fp16.Params(max_finite_val=70000.0)
    with pytest.raises(ValidationError, match="min_positive_val"):
        fp16.Params(min_positive_val=1e-9)
    with pytest.raises(ValidationError, match="must be below"):
        fp16.Params(min_positive_val=1.0, max_finite_val=0.5)
    with pytest.raises(ValidationError, match="non-empty"):
        fp16.Params(op_block_list=[" "])
    assert fp16.Params(op_block_list=["Resize"]).op_block_list == ("Resize",)


def test_float16_weights_float32_io_and_close_outputs(fp32_model, tmp_path):
    facts, ctx = _run(fp32_model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    model = onnx.load(str(ctx.output))
    onnx.checker.check_model(model, full_check=True)  # includes: nodes topologically sorted
    assert {init.data_type for init in model.graph.initializer} == {onnx.TensorProto.FLOAT16}
    float_io = onnx.TensorProto.FLOAT
    assert [v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]] == [float_io] * 3
    assert facts["op_block_list_source"] == "onnxruntime default" and facts["initializers_float32"] == 0
    assert facts["size_bytes_after"] <= 0.55 * facts["size_bytes_before"]
    assert facts["check"]["ran"] and json.loads(json.dumps(facts)) == facts

    x = np.random.default_rng(7).standard_normal((1, 3, 32, 32)).astype(np.float32)
    for ref, got in zip(_infer(fp32_model, x), _infer(ctx.output, x)):
        assert got.dtype == np.float32 and got.shape == ref.shape
        assert np.max(np.abs(got - ref)) <= MAX_REL_DIFF * np.max(np.abs(ref))


def test_op_block_list_keeps_sigmoid_in_float32(fp32_model, tmp_path):
    facts, ctx = _run(fp32_model, tmp_path, op_block_list=["Sigmoid"])
    assert facts["nodes_kept_float32"] == {"Sigmoid": 1}
    graph = onnx.load(str(ctx.output)).graph
    sigmoid = next(n for n in graph.node if n.op_type == "Sigmoid")
    producer = {out: n for n in graph.node for out in n.output}
    cast = producer[sigmoid.input[0]]  # a float16 -> float32 Cast feeds it
    assert cast.op_type == "Cast" and cast.attribute[0].i == onnx.TensorProto.FLOAT
    assert all(o.dtype == np.float32 for o in _infer(ctx.output, np.zeros((1, 3, 32, 32), np.float32)))


def test_unknown_block_op_suggests_the_real_op(fp32_model, tmp_path):
    with pytest.raises(ReleaseError, match=r"'Sigmiod' is not an ONNX op type\. Did you mean 'Sigmoid'\?"):
        _run(fp32_model, tmp_path, op_block_list=["Sigmiod"])
    assert list(tmp_path.iterdir()) == []


def test_without_keep_io_types_io_is_float16(fp32_model, tmp_path):
    facts, ctx = _run(fp32_model, tmp_path, keep_io_types=False)
    session = ort.InferenceSession(str(ctx.output), providers=["CPUExecutionProvider"])
    assert {v.type for v in [*session.get_inputs(), *session.get_outputs()]} == {"tensor(float16)"}
    assert facts["check"]["ran"] and facts["cast_nodes_added"] == 0


def test_float16_input_is_refused(fp32_model, tmp_path):
    _, ctx = _run(fp32_model, tmp_path / "first")
    with pytest.raises(ReleaseError, match="no float32 weights"):
        _run(ctx.output, tmp_path / "second")
