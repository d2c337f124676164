"""The simplify stage on a small ONNX graph with something to simplify (an Identity, a BatchNorm after
a Conv, a constant-foldable Add), with the real onnxslim and ONNX Runtime (no mocks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError

from release import stages
from release.errors import ReleaseError
from release.stages import simplify
from release.stages.base import StageContext


def _tensor(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.float32), name)


@pytest.fixture(scope="module")
def redundant(tmp_path_factory) -> Path:
    """x -> Conv -> BatchNormalization -> Identity -> Mul(Add(Constant 1.5, Constant 0.25)) -> Relu."""
    rng = np.random.default_rng(0)
    weights = [_tensor("W", rng.standard_normal((4, 3, 3, 3)) * 0.5), _tensor("B", rng.standard_normal(4)),
               _tensor("scale", rng.uniform(0.5, 1.5, 4)), _tensor("bias", rng.standard_normal(4)),
               _tensor("mean", rng.standard_normal(4) * 0.1), _tensor("var", rng.uniform(0.5, 1.5, 4))]
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["bn"], name="bn"),
             helper.make_node("Identity", ["bn"], ["id"], name="identity"),
             helper.make_node("Constant", [], ["k1"], name="k1", value=_tensor("k1", [1.5])),
             helper.make_node("Constant", [], ["k2"], name="k2", value=_tensor("k2", [0.25])),
             helper.make_node("Add", ["k1", "k2"], ["k"], name="k"),
             helper.make_node("Mul", ["id", "k"], ["m"], name="mul"),
             helper.make_node("Relu", ["m"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "redundant", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path_factory.mktemp("redundant") / "model.onnx"
    onnx.save(model, str(path))
    return path


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, 3, 8, 8)).astype(np.float32) for _ in range(n)]


def _run(model: Path, out_dir: Path, images=None, **params) -> tuple[dict, StageContext]:
    images = _images(4) if images is None else images
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(input=model, out_dir=out_dir, params=simplify.Params(**params), log=lambda message: None,
                       sample_source=lambda split: iter(images), spec_produces="onnx")
    return simplify.run(ctx), ctx


def _infer(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_fewer_nodes_same_outputs(redundant, tmp_path):
    facts, ctx = _run(redundant, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    ops = [n.op_type for n in onnx.load(str(ctx.output)).graph.node]
    assert facts["nodes_before"] == 8 and facts["nodes_after"] == len(ops) < 8
    assert {"Identity", "BatchNormalization", "Constant", "Add"} <= set(facts["ops_removed"])
    assert "Identity" not in ops and "BatchNormalization" not in ops
    assert facts["check"]["ran"] and facts["check"]["input"] == "4 eval images"
    assert facts["max_abs_diff"] <= 1e-5 * facts["check"]["outputs_vs_input"]["y"]["ref_max_abs"]
    assert facts["size_bytes_before"] > 0 and facts["size_bytes_after"] > 0
    assert json.loads(json.dumps(facts)) == facts
    for x in _images(3, seed=7):  # held-out inputs, not the parity ones
        expected, got = _infer(redundant, x), _infer(ctx.output, x)
        assert np.max(np.abs(got - expected)) <= 1e-5 * np.max(np.abs(expected))
    onnx.checker.check_model(onnx.load(str(ctx.output)), full_check=True)


def test_describe_says_what_it_took_out(redundant, tmp_path):
    facts, _ = _run(redundant, tmp_path)
    stage = stages.load("simplify")
    assert stage.SPEC.tools == ("onnx", "onnxruntime", "onnxslim")
    assert stage.describe(facts).summary == f"onnxslim: 8 -> {facts['nodes_after']} nodes"


def test_a_simplification_that_changes_the_outputs_is_an_error(redundant, tmp_path):
    # Without constant folding, onnxslim 0.1.98 drops the Mul whose factor is the unfolded
    # Add(Constant, Constant): the graph computes something else, and the parity check says so.
    with pytest.raises(ReleaseError) as info:
        _run(redundant, tmp_path, skip=["constant_folding"])
    message = str(info.value)
    assert message.startswith("simplify: output 'y' of the simplified model differs from its input model")
    assert "on 4 eval images" in message and "not rounding" in message
    assert "with simplify.skip: [constant_folding]" in message and "skip less, or skip none" in message
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_tolerance_zero_demands_identical_outputs(redundant, tmp_path):
    facts, _ = _run(redundant, tmp_path, tolerance=0.0)  # ORT fuses the BatchNorm at load either way
    assert facts["max_abs_diff"] == 0.0


def test_without_eval_images_a_random_input_is_compared(redundant, tmp_path):
    facts, _ = _run(redundant, tmp_path, images=[])
    assert facts["check"]["input"] == "random N(0,1)" and facts["check"]["ran"]


def test_params_reject_unknown_optimizations_and_negative_tolerance():
    with pytest.raises(ValidationError, match="graph_fusion"):
        simplify.Params(skip=["graph_fuse"])
    with pytest.raises(ValidationError, match="tolerance"):
        simplify.Params(tolerance=-1e-6)
    with pytest.raises(ValidationError, match="extra"):
        simplify.Params(tolerence=1e-3)
    assert simplify.Params(skip=["graph_fusion"]).skip == ("graph_fusion",)


def test_a_difference_of_rounding_size_is_named_as_such():
    # Figures as a fused BatchNorm gives where ORT does not fuse it the same way (relative 2e-7).
    outputs = {"y": {"max_abs_diff": 2e-6, "ref_max_abs": 10.0}}
    with pytest.raises(ReleaseError, match=r"allows 1e-06 .* That is float32 rounding .* raise simplify\.tolerance"):
        simplify._within_tolerance(outputs, simplify.Params(tolerance=1e-7), "4 eval images")
    simplify._within_tolerance(outputs, simplify.Params(), "4 eval images")  # the default allows it
