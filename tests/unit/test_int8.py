"""INT8 that knows it is quantizing a detector: the decode tail found on graphs of several shapes,
the naive-INT8 collapse of a YOLO-style output and its recovery by keep_float: auto, sensitivity-
guided fallback to float, calibration methods and the calibration cache. Real ONNX Runtime
quantization, real COCO mAP, on the tiny project's trained detector."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch

from release import manifest as manifests
from release.measure import accuracy
from release.stages import export, quantize
from release.stages.quantize import calibration, keep_float, search
from release.stages.base import StageContext
from tests.conftest import tiny_manifest_dict, write_manifest
from tests.models import MultiLevel, build_yolo_style


def _export(model, path, names, size=64):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.zeros(1, 3, size, size),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=names)
    proto = onnx.load(str(path))
    keep_float.name_nodes(proto)
    return proto


def _ops(graph, names):
    by_name = {n.name: n.op_type for n in graph.node}
    return sorted({by_name[n] for n in names})


# ---------------------------------------------------------------- the decode tail, by graph shape

def test_tail_of_a_yolo_style_concatenated_output(tmp_path):
    torch.manual_seed(0)
    proto = _export(build_yolo_style(), tmp_path / "yolo.onnx", ["detections"])
    found = keep_float.decode_tail(proto.graph)["detections"]
    heads = sorted(found["heads"])
    assert heads == ["/heatmap/heatmap.2/Conv", "/offset/offset.2/Conv", "/size/size.2/Conv"]
    assert {"Sigmoid", "Exp", "Concat", "Reshape", "Mul", "Add"} <= set(_ops(proto.graph, found["tail"]))
    assert not set(_ops(proto.graph, found["tail"])) & set(keep_float.ANCHORS)


def test_tail_of_centernet_style_heatmap_and_regression_outputs(tmp_path):
    from release.models.demo.detector import build

    torch.manual_seed(0)
    proto = _export(build(3, 0.5), tmp_path / "centernet.onnx", ["heatmap", "size", "offset"])
    found = keep_float.decode_tail(proto.graph)
    assert _ops(proto.graph, found["heatmap"]["tail"]) == ["Sigmoid"]
    assert found["size"]["tail"] == [] and found["offset"]["tail"] == []  # a conv is the output
    assert found["size"]["heads"] == ["/size/size.2/Conv"]


def test_tail_of_multi_level_fcos_style_outputs(tmp_path):
    torch.manual_seed(0)
    proto = _export(MultiLevel(), tmp_path / "fcos.onnx", ["scores", "boxes"])
    found = keep_float.decode_tail(proto.graph)
    assert sorted(found["scores"]["heads"]) == [f"/cls.{i}/Conv" for i in range(3)]
    assert sorted(found["boxes"]["heads"]) == [f"/reg.{i}/Conv" for i in range(3)]
    assert {"Sigmoid", "Concat", "Transpose"} <= set(_ops(proto.graph, found["scores"]["tail"]))
    assert {"Exp", "Concat", "Mul"} <= set(_ops(proto.graph, found["boxes"]["tail"]))


def test_channel_spread_flags_coordinates_beside_scores():
    rng = np.random.default_rng(0)
    yolo = np.concatenate([rng.uniform(0, 640, (1, 256, 4)), rng.uniform(0, 1, (1, 256, 3))], axis=2)
    ratio, axis = keep_float.channel_spread([yolo.astype(np.float32)])
    assert ratio > keep_float.MIXED_RATIO and axis == 2
    heat = rng.uniform(0, 1, (1, 3, 16, 16)).astype(np.float32)
    assert keep_float.channel_spread([heat])[0] < keep_float.MIXED_RATIO


# ---------------------------------------------------------------- calibration methods

def test_entropy_and_percentile_clip_a_skewed_activation_that_minmax_keeps(tmp_path):
    """A heavy-tailed activation (log-normal with rare huge values): MinMax takes the outliers,
    Entropy (with enough bins) and Percentile clip them."""
    conv = torch.nn.Conv2d(3, 1, 1, bias=False)
    torch.nn.init.constant_(conv.weight, 1 / 3)
    path = tmp_path / "relu.onnx"
    _export(torch.nn.Sequential(conv, torch.nn.ReLU()), path, ["out"], size=16)
    rng = np.random.default_rng(0)
    samples = []
    for i in range(16):
        x = rng.lognormal(0.0, 0.5, (1, 3, 16, 16)).astype(np.float32)
        if i % 4 == 0:
            x.flat[rng.integers(x.size)] = 400.0  # a rare spike
        samples.append(x)
    highs = {}
    for method in ("minmax", "entropy", "percentile"):
        extra = {} if method == "minmax" else {"num_bins": 2048}
        if method == "percentile":
            extra["percentile"] = 99.9
        params = quantize.Params(calibration=method, max_samples=16, **extra)
        ctx = StageContext(input=path, out_dir=tmp_path, params=params, log=lambda m: None,
                           sample_source=lambda split: iter(samples))
        (tmp_path / method).mkdir()
        ranges = calibration.calibrate(ctx, path, tmp_path / method, "input", [1, 3, 16, 16], ["Conv", "Relu"])
        highs[method] = float(np.max(ranges["out"].range_value[1]))
    print(f"calibrated upper bound: {highs}")
    assert highs["minmax"] > 100  # the spike
    assert highs["percentile"] < 0.2 * highs["minmax"] and highs["entropy"] < 0.2 * highs["minmax"]
    assert highs["entropy"] != highs["percentile"]


# ---------------------------------------------------------------- a YOLO-style detector, end to end

def _yolo(tiny_project, root, nested=False):
    """The tiny project's trained detector with a YOLO-style output, exported; and its fp32 mAP."""
    root.mkdir(parents=True, exist_ok=True)
    doc = tiny_manifest_dict()
    doc.pop("generate")
    doc["model"] = {"builder": "tests.models:build_yolo_style",
                    "kwargs": {"num_classes": 3, "width": 0.5, "nested": nested},
                    "adapter": "tests.models:YoloStyleAdapter", "input_shape": [1, 3, 64, 64]}
    manifest = manifests.load(write_manifest(tiny_project.root, doc, f"yolo-{nested}.yaml"), tiny_project.root)
    ctx = StageContext(input=tiny_project.teacher, out_dir=root, params=export.Params(), manifest=manifest,
                       log=lambda m: None, spec_produces="onnx")
    export.run(ctx)
    fp32 = accuracy.evaluate(ctx.output, manifest.model, manifest.data.eval)["map"]
    return manifest, ctx.output, fp32


@pytest.fixture(scope="module")
def yolo(tiny_project, tmp_path_factory):
    return _yolo(tiny_project, tmp_path_factory.mktemp("yolo"))


def _quantize(manifest, onnx_path, out, cache=None, **params):
    out.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(input=onnx_path, out_dir=out, params=quantize.Params(**params), manifest=manifest,
                       log=lambda m: None, spec_produces="onnx", cache_dir=cache)
    facts = quantize.run(ctx)
    return facts, accuracy.evaluate(ctx.output, manifest.model, manifest.data.eval)["map"]


def test_naive_int8_collapses_a_yolo_style_output_and_auto_recovers_it(yolo, tmp_path):
    manifest, model, fp32 = yolo
    assert fp32 > 0.05, "the detector must find something for the comparison to mean anything"
    naive_facts, naive = _quantize(manifest, model, tmp_path / "naive", keep_float="none")
    auto_facts, auto = _quantize(manifest, model, tmp_path / "auto")
    print(f"yolo-style: fp32 {fp32:.4f}, naive INT8 {naive:.4f}, keep_float auto {auto:.4f}")
    assert naive < 0.2 * fp32  # one scale for coordinates up to 640 and scores: the scores are gone
    assert auto >= fp32 - 0.03  # the bound this project states for keep_float: auto on this case
    kept = auto_facts["float_nodes"]
    assert {k["why"] for k in kept} >= {"decode tail of detections", "head of mixed-range output detections"}
    assert auto_facts["mixed_outputs"]["detections"]["ratio"] > keep_float.MIXED_RATIO
    assert naive_facts["float_nodes"] == []


def test_sensitivity_fallback_meets_the_requested_drop(yolo, tmp_path):
    manifest, model, fp32 = yolo
    # Naive INT8 as the start (no automatic fallback), so the search has something to find.
    facts, got = _quantize(manifest, model, tmp_path / "tuned", keep_float="none", max_map_drop=0.03, max_trials=8)
    tuning = facts["sensitivity"]
    print(f"sensitivity: fp32 {tuning['fp32_map']:.4f}; curve "
          + ", ".join(f"{c['fallback_groups']} -> {c['map']:.4f}" for c in tuning["curve"]))
    print("ranked:", [(r["node"], r["op"], r["added"]) for r in tuning["ranked"][:5]])
    assert tuning["split"] == "calibration" and tuning["met"] is True
    assert tuning["fp32_map"] - tuning["chosen"]["map"] <= 0.03 + 1e-9
    assert 1 <= len(tuning["curve"]) - 1 <= 8  # the base point, then at most max_trials trials
    for point in tuning["curve"]:
        assert {"float_nodes", "map", "bytes", "latency_ms"} <= set(point)
    assert any(k["why"].startswith("sensitivity") for k in facts["float_nodes"])
    assert tuning["ranked"][0]["op"] == "Concat"  # coordinates beside scores: the worst to quantize


def test_sensitivity_search_stops_at_max_trials(tiny_project, tmp_path):
    # Two nested Concats each mix coordinates with scores: no single fallback saves the scores, so
    # one trial cannot meet the drop, and max_trials: 1 ends the search there, saying so.
    manifest, model, _ = _yolo(tiny_project, tmp_path / "nested", nested=True)
    facts, _ = _quantize(manifest, model, tmp_path / "capped", keep_float="none", max_map_drop=0.03, max_trials=1)
    assert facts["sensitivity"]["met"] is False and len(facts["sensitivity"]["curve"]) == 2
    assert facts["sensitivity"]["chosen"]["map"] == max(c["map"] for c in facts["sensitivity"]["curve"])


def test_calibration_is_cached_by_content_and_reused_across_formats(yolo, tmp_path):
    manifest, model, _ = yolo
    cache = tmp_path / "cache"
    first, _ = _quantize(manifest, model, tmp_path / "qdq", cache=cache, format="qdq")
    second, _ = _quantize(manifest, model, tmp_path / "qop", cache=cache, format="qoperator", keep_float="none")
    assert first["calibration"]["cached"] is False and second["calibration"]["cached"] is True
    assert first["calibration"]["key"] == second["calibration"]["key"]
    third, _ = _quantize(manifest, model, tmp_path / "pct", cache=cache, calibration="percentile")
    assert third["calibration"]["cached"] is False  # another method is another range set


# ---------------------------------------------------------------- the search, the names, the manifest

def test_fallback_search_doubles_then_bisects_within_max_trials():
    calls = []

    def holds(k):  # 5 of 20 groups in float are needed
        calls.append(k)
        return k >= 5

    assert search.fallback_search(20, 8, holds) == ([1, 2, 4, 8, 6, 5], 5) and calls == [1, 2, 4, 8, 6, 5]
    assert search.fallback_search(20, 3, holds) == ([1, 2, 4], None)  # stopped by max_trials, not met
    assert search.fallback_search(3, 8, lambda k: False) == ([1, 2, 3], None)  # all float and still no
    assert search.fallback_search(0, 8, holds) == ([], None)


def test_unnamed_and_duplicate_node_names_become_unique():
    from onnx import helper

    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"], name="r"),
             helper.make_node("Relu", ["b"], ["c"], name="r")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    assert keep_float.name_nodes(model) == 2
    names = [n.name for n in model.graph.node]
    assert len(set(names)) == 3 and names[1] == "r"


def test_probabilities_with_a_class_that_rarely_fires_are_not_mixed():
    heat = np.zeros((1, 3, 8, 8), np.float32)
    heat[0, 0] = 0.9
    heat[0, 1] = 0.005  # a class that barely fired on these images
    assert keep_float.channel_spread([heat])[0] == 1.0


@pytest.mark.parametrize("data, expected", [
    ({}, "reads data.tuning, which the manifest does not define"),
    ({"tuning": {"images": "artifacts/demo/data/eval/images"}}, "needs the labels of data.tuning"),
])
def test_a_tuning_split_must_exist_and_be_labelled(tmp_path, data, expected):
    from release.errors import ManifestError

    doc = tiny_manifest_dict()
    doc["data"].update(data)
    doc["variants"]["int8"] = ["strip", "export", {"quantize": {"max_map_drop": 0.01, "tuning_split": "tuning"}}]
    with pytest.raises(ManifestError, match=expected):
        manifests.load(write_manifest(tmp_path, doc), tmp_path)
    assert quantize.reads(quantize.Params(max_map_drop=0.01, tuning_split="tuning")) == ("calibration", "tuning")
    assert quantize.reads(quantize.Params()) == ("calibration",)
