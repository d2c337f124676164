"""The quantize stage on a tiny exported detector-like net, with the real ONNX Runtime (no mocks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from pydantic import ValidationError

from release.errors import ReleaseError
from tests.models import export_tiny_detector
from release.stages import quantize
from release.stages.base import StageContext

# Closeness to fp32 on held-out inputs. Signal-to-quantization-noise ratio var(fp32)/var(error):
# measured ~21 dB for static and ~42 dB for dynamic on this random-weight net; a wrong scale or a
# dropped branch gives ~0 dB. The mean of each output may move by at most 5% of mean |fp32| (measured
# <= 1.3%).
MIN_SQNR_DB = 15.0
MEAN_REL_ERR = 0.05


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory) -> Path:
    # 64/128/128 channels: ~220k weights, so int8 storage dominates the file.
    return export_tiny_detector(tmp_path_factory.mktemp("fp32") / "model.onnx", (64, 128, 128), trained_bn=True)


def _images(n: int, seed: int = 0, skewed: bool = False) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    if skewed:  # heavy right tail: a few very bright pixels, as in real images with highlights
        return [rng.exponential(1.0, (1, 3, 32, 32)).astype(np.float32) ** 2 for _ in range(n)]
    return [rng.standard_normal((1, 3, 32, 32)).astype(np.float32) for _ in range(n)]


def _run(fp32_model: Path, out_dir: Path, images=None, **params) -> tuple[dict, StageContext]:
    images = _images(8) if images is None else images
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(input=fp32_model, out_dir=out_dir, params=quantize.Params(**params),
                       sample_source=lambda split: iter(images), log=lambda message: None,
                       spec_produces="onnx")
    return quantize.run(ctx), ctx


def _infer(path: Path, x: np.ndarray) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})


def _assert_close_to_fp32(fp32_model: Path, quantized: Path) -> None:
    for x in _images(3, seed=123):  # held-out inputs, not the calibration ones
        for ref, got in zip(_infer(fp32_model, x), _infer(quantized, x)):
            assert got.dtype == np.float32 and got.shape == ref.shape
            assert 10 * np.log10(np.var(ref) / np.var(got - ref)) >= MIN_SQNR_DB
            assert abs(got.mean() - ref.mean()) <= MEAN_REL_ERR * np.abs(ref).mean()


def _ops(path: Path) -> list[str]:
    return [node.op_type for node in onnx.load(str(path)).graph.node]


def _input_scale(path: Path) -> float:
    """The scale with which the QDQ model quantizes its input tensor."""
    graph = onnx.load(str(path)).graph
    node = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    init = next(i for i in graph.initializer if i.name == node.input[1])
    return float(numpy_helper.to_array(init))


def test_params_reject_unknown_keys_and_nonsense():
    with pytest.raises(ValidationError, match="extra"):
        quantize.Params(mdoe="static")
    for bad in (90.0, 100.0, 80.0):
        with pytest.raises(ValidationError, match="percentile"):
            quantize.Params(calibration="percentile", percentile=bad)
    assert quantize.Params(calibration="percentile", percentile=99.9).percentile == 99.9
    with pytest.raises(ValidationError, match="format is only used in mode 'static'"):
        quantize.Params(mode="dynamic", format="qdq")
    with pytest.raises(ValidationError, match="only applies to calibration 'percentile'"):
        quantize.Params(percentile=99.9)
    with pytest.raises(ValidationError, match="num_bins"):
        quantize.Params(calibration="minmax", num_bins=512)
    with pytest.raises(ValidationError, match="int8 activations with uint8 weights"):
        quantize.Params(activation_type="int8", weight_type="uint8")
    with pytest.raises(ValidationError, match="non-empty"):
        quantize.Params(keep_float_nodes=[""])


def test_reads_calibration_only_when_static():
    assert quantize.reads(quantize.Params()) == ("calibration",)
    assert quantize.reads(quantize.Params(mode="dynamic")) == ()
    assert quantize.SPEC.consumes == quantize.SPEC.produces == "onnx"


def test_dynamic_quantization_runs_and_shrinks(fp32_model, tmp_path):
    facts, ctx = _run(fp32_model, tmp_path, images=[], mode="dynamic", preprocess=False)
    assert ctx.output == tmp_path / "model.onnx"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    assert "ConvInteger" in _ops(ctx.output) and "QuantizeLinear" not in _ops(ctx.output)
    assert facts["format"] == "qoperator-integer" and "calibration" not in facts
    assert facts["size_bytes_after"] <= 0.4 * facts["size_bytes_before"]
    _assert_close_to_fp32(fp32_model, ctx.output)


@pytest.mark.parametrize(("fmt", "expected_op"), [("qdq", "QuantizeLinear"), ("qoperator", "QLinearConv")])
def test_static_formats_run_close_to_fp32(fp32_model, tmp_path, fmt, expected_op):
    facts, ctx = _run(fp32_model, tmp_path, format=fmt)  # preprocess on, the default
    ops = _ops(ctx.output)
    assert expected_op in ops
    if fmt == "qdq":
        assert "DequantizeLinear" in ops and "QLinearConv" not in ops
    else:
        assert "Conv" not in ops
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    assert {k: facts["calibration"][k] for k in ("method", "samples")} == {"method": "minmax", "samples": 8}
    assert json.loads(json.dumps(facts)) == facts
    assert facts["shape_inference"] in ("symbolic+onnx", "onnx")
    assert facts["check"]["ran"] and set(facts["check"]["outputs_vs_fp32"]) == {"scores", "boxes"}
    assert facts["size_bytes_after"] <= 0.4 * facts["size_bytes_before"]
    _assert_close_to_fp32(fp32_model, ctx.output)
    model = onnx.load(str(ctx.output), load_external_data=False)
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)


def test_max_samples_caps_what_is_read(fp32_model, tmp_path):
    pulled = []

    def source(split):
        assert split == "calibration"
        for x in _images(10):
            pulled.append(x)
            yield x

    ctx = StageContext(input=fp32_model, out_dir=tmp_path, sample_source=source, log=lambda m: None,
                       params=quantize.Params(max_samples=3, preprocess=False))
    assert quantize.run(ctx)["calibration"]["samples"] == 3
    assert len(pulled) == 3


@pytest.mark.parametrize("fmt", ["qdq", "qoperator"])
def test_keep_float_ops_leaves_sigmoid_unquantized(fp32_model, tmp_path, fmt):
    def sigmoid_and_consumers(path):
        graph = onnx.load(str(path)).graph
        sigmoid = [n for n in graph.node if "Sigmoid" in n.op_type]
        consumers = [n.op_type for n in graph.node if set(n.input) & {o for s in sigmoid for o in s.output}]
        return [n.op_type for n in sigmoid], consumers

    _, ctx = _run(fp32_model, tmp_path / "all", format=fmt, preprocess=False, keep_float="none")
    ops, consumers = sigmoid_and_consumers(ctx.output)  # without keep_float it is quantized: the test can fail
    if fmt == "qoperator":
        assert ops == ["QLinearSigmoid"]
    else:
        assert consumers == ["QuantizeLinear"]

    facts, ctx = _run(fp32_model, tmp_path / "kept", format=fmt, preprocess=False, keep_float_ops=["Sigmoid"],
                      keep_float="none")
    ops, consumers = sigmoid_and_consumers(ctx.output)
    assert ops == ["Sigmoid"] and "QuantizeLinear" not in consumers
    assert facts["nodes_kept_float"] == 1 and facts["float_nodes"][0]["why"] == "keep_float_ops"
    _assert_close_to_fp32(fp32_model, ctx.output)


def test_keep_float_nodes_keeps_matching_nodes_in_float(fp32_model, tmp_path):
    facts, ctx = _run(fp32_model, tmp_path, format="qoperator", preprocess=False, keep_float_nodes=["/reg/*"])
    assert [k["node"] for k in facts["float_nodes"] if k["why"] == "keep_float_nodes '/reg/*'"] == ["/reg/Conv"]
    graph = onnx.load(str(ctx.output)).graph
    assert [n.op_type for n in graph.node if n.name == "/reg/Conv"] == ["Conv"]


def test_keep_float_nodes_pattern_matching_nothing_is_an_error(fp32_model, tmp_path):
    with pytest.raises(ReleaseError) as info:
        _run(fp32_model, tmp_path, preprocess=False, keep_float_nodes=["/head/*"])
    message = str(info.value)
    assert "keep_float_nodes" in message and "'/head/*'" in message and "/body/" in message
    assert list(tmp_path.iterdir()) == []


def test_keep_float_ops_typo_suggests_the_real_op(fp32_model, tmp_path):
    with pytest.raises(ReleaseError, match=r"keep_float_ops: op type 'Sigmiod'.*Did you mean 'Sigmoid'\?"):
        _run(fp32_model, tmp_path, preprocess=False, keep_float_ops=["Sigmiod"])


def test_histogram_calibrations_clip_a_skewed_input_unlike_minmax(fp32_model, tmp_path):
    images = _images(8, skewed=True)
    scales = {}
    methods = [("minmax", {}), ("entropy", {"num_bins": 512}), ("percentile", {"percentile": 99.9})]
    for method, extra in methods:
        facts, ctx = _run(fp32_model, tmp_path / method, images=images, calibration=method, preprocess=False,
                          **extra)
        assert facts["calibration"]["method"] == method
        scales[method] = _input_scale(ctx.output)
    # minmax spans the largest outlier; the histogram methods clip the tail, so their steps are finer.
    assert scales["minmax"] == pytest.approx(max(x.max() for x in images) / 255, rel=1e-3)
    assert scales["entropy"] < 0.8 * scales["minmax"]
    assert scales["percentile"] < 0.8 * scales["minmax"]
    assert scales["entropy"] != pytest.approx(scales["percentile"], rel=1e-3)


def test_static_without_calibration_images_is_an_error(fp32_model, tmp_path):
    with pytest.raises(ReleaseError, match="calibration images"):
        _run(fp32_model, tmp_path, images=[], preprocess=False)


def test_wrong_sample_shape_is_an_error(fp32_model, tmp_path):
    with pytest.raises(ReleaseError, match=r"shape \(1, 3, 16, 16\)"):
        _run(fp32_model, tmp_path, images=[np.zeros((1, 3, 16, 16), np.float32)], preprocess=False)


def test_already_quantized_input_is_refused(fp32_model, tmp_path):
    _, ctx = _run(fp32_model, tmp_path / "first", mode="dynamic", preprocess=False)
    with pytest.raises(ReleaseError, match="already quantized"):
        _run(ctx.output, tmp_path / "second", mode="dynamic", preprocess=False)
