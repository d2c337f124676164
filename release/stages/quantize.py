"""Quantize stage: owns fp32 ONNX -> INT8 ONNX with ONNX Runtime (dynamic, or static on calibration data).

What onnxruntime 1.32 does that shapes this module:
- `quantize_static` forwards symmetric/moving-average/percentile to its calibrator but never
  `num_bins`, and with ORT's default 128 bins the entropy search has a single candidate (the full
  histogram), so "entropy" silently returns the min/max range. We therefore call `create_calibrator`
  (which takes `num_bins`) ourselves and pass the ranges to `quantize_static` through its
  `calibration_cache_path` (a JSON file written by `save_tensors_data`).
- `CalibMaxIntermediateOutputs` discards the outputs it collected instead of merging them. We bound
  memory by calling `collect_data` once per chunk of samples, which does merge.
- Dynamic quantization always emits integer ops (DynamicQuantizeLinear + ConvInteger/MatMulInteger)
  with uint8 activations; there is no QDQ form of it, so static-only params are rejected in dynamic
  mode rather than silently ignored.
"""

from __future__ import annotations

import fnmatch
from typing import Literal

from pydantic import Field, field_validator, model_validator

from release.stages.base import StageContext, StageParams, StageSpec

SPEC = StageSpec(
    name="quantize",
    version=1,
    consumes="onnx",
    produces="onnx",
    summary="INT8 quantization with ONNX Runtime: dynamic, or static calibrated on the calibration split",
    reads=("calibration",),
)

# Every calibrated activation of every sample in a chunk is held in memory until the chunk is merged.
CALIBRATION_CHUNK = 8

QType = Literal["uint8", "int8"]
STATIC_ONLY = ("format", "activation_type", "calibration", "percentile", "num_bins", "max_samples")


def reads(params) -> tuple[str, ...]:
    """Data splits this configuration reads (for the fingerprint): dynamic quantization reads none."""
    mode = params.get("mode", "static") if isinstance(params, dict) else params.mode
    return ("calibration",) if mode == "static" else ()


class Params(StageParams):
    mode: Literal["dynamic", "static"] = Field("static", description=(
        "static: activation ranges calibrated offline on the calibration split. dynamic: weights only, "
        "activation ranges computed on every inference; no data needed, but ConvInteger is slow on CPU "
        "(a small conv net ran ~4x slower than fp32 on the build CPU)."))
    format: Literal["qdq", "qoperator"] = Field("qdq", description=(
        "Static only. qdq: QuantizeLinear/DequantizeLinear pairs around float ops, fused by ORT at load "
        "(ORT's recommended, portable form). qoperator: explicit QLinearConv etc. Speed depends on the "
        "CPU and the types: measure both (see activation_type)."))
    per_channel: bool = Field(True, description="One weight scale per output channel instead of per tensor.")
    reduce_range: bool = Field(False, description=(
        "Quantize weights to 7 bits. ORT advises it for uint8 x int8 on x86 CPUs without VNNI "
        "(avoids int16 saturation in the dot product), at a small accuracy cost."))
    activation_type: QType = Field("uint8", description=(
        "Static only: activation integer type. uint8 activations with int8 weights is ORT's advice for "
        "x86 CPUs in either format; int8/int8 suits ARM, GPU and TensorRT. On the build CPU (AVX2, no "
        "VNNI) QDQ with int8 activations ran no faster than fp32, with uint8 ~1.2-2x faster."))
    weight_type: QType = Field("int8", description="Weight integer type (int8 weights are symmetric).")
    calibration: Literal["minmax", "entropy", "percentile"] = Field("minmax", description=(
        "Static only: how activation ranges are chosen. minmax: observed extremes. entropy: "
        "KL-optimal clipping (slow: ~1 s per tensor at 2048 bins on the build CPU). percentile: "
        "clip at a percentile of |x|."))
    percentile: float = Field(99.999, gt=90.0, lt=100.0, description=(
        "Percentile calibration only: percent of |activation| values kept unclipped, in (90, 100)."))
    num_bins: int = Field(2048, ge=256, le=65536, description=(
        "Entropy/percentile calibration only: histogram bins per tensor (entropy needs far more than "
        "its 128 quantized bins to search thresholds; its cost grows ~quadratically with this)."))
    max_samples: int = Field(64, ge=1, le=100_000, description="Static only: cap on calibration images used.")
    keep_float_ops: tuple[str, ...] = Field((), description=(
        "Op types left in float, e.g. [Sigmoid]; each must occur in the model."))
    keep_float_nodes: tuple[str, ...] = Field((), description=(
        "fnmatch patterns on node names left in float, e.g. ['/head/*']; each must match a node "
        "(names as in the model after preprocessing)."))
    preprocess: bool = Field(True, description=(
        "Run ORT's quant_pre_process (symbolic + ONNX shape inference, basic graph optimizations) "
        "first, as ORT recommends."))

    @field_validator("keep_float_ops", "keep_float_nodes")
    @classmethod
    def _no_blank(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not item.strip() for item in value):
            raise ValueError("entries must be non-empty strings")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Params:
        if self.mode == "dynamic":
            bad = [name for name in STATIC_ONLY if name in self.model_fields_set]
            if bad:
                raise ValueError(
                    f"{', '.join(bad)} {'is' if len(bad) == 1 else 'are'} only used in mode 'static'; "
                    "dynamic quantization reads no calibration data and always produces integer ops "
                    "with uint8 activations"
                )
        if "percentile" in self.model_fields_set and self.calibration != "percentile":
            raise ValueError("percentile only applies to calibration 'percentile'")
        if "num_bins" in self.model_fields_set and self.calibration == "minmax":
            raise ValueError("num_bins only applies to calibration 'entropy' or 'percentile'")
        if self.activation_type == "int8" and self.weight_type == "uint8":
            raise ValueError("ONNX Runtime does not support int8 activations with uint8 weights")
        return self


class _ChunkReader:
    """A CalibrationDataReader over a list of arrays (ORT only calls get_next)."""

    def __init__(self, input_name: str, arrays: list):
        self._items = iter(arrays)
        self._name = input_name

    def get_next(self):
        x = next(self._items, None)
        return None if x is None else {self._name: x}


def run(ctx: StageContext) -> dict:
    """Quantize ctx.input into ctx.output; return facts for the stage record."""
    import os
    import tempfile
    import time
    from collections import Counter
    from pathlib import Path

    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry, QLinearOpsRegistry

    p: Params = ctx.params
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    facts: dict = {"mode": p.mode, "format": p.format if p.mode == "static" else "qoperator-integer",
                   "per_channel": p.per_channel, "reduce_range": p.reduce_range, "weight_type": p.weight_type,
                   "activation_type": p.activation_type if p.mode == "static" else "uint8"}
    common = dict(per_channel=p.per_channel, reduce_range=p.reduce_range, weight_type=qtype[p.weight_type])
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=ctx.out_dir) as tmp_name:
        tmp, src = Path(tmp_name), Path(ctx.input)
        _refuse_quantized(onnx.load(str(src), load_external_data=False))
        if p.preprocess:
            ctx.log("quantize: preprocessing (shape inference + ORT basic optimizations)")
            facts["shape_inference"] = _preprocess(src, tmp / "preprocessed.onnx", ctx.log)
            src = tmp / "preprocessed.onnx"
        model = onnx.load(str(src))
        input_name, input_shape = _single_input(model)
        excluded, kept_ops = _float_selection(model.graph, p)
        del model
        registry = IntegerOpsRegistry if p.mode == "dynamic" else {**QLinearOpsRegistry, **QDQRegistry}
        op_types = sorted(set(registry) - set(p.keep_float_ops))
        facts.update(nodes_kept_float=len(excluded) + kept_ops, excluded_node_names=excluded[:20])
        seconds["preprocess"] = time.perf_counter() - start
        out = tmp / "model.onnx"
        if p.mode == "dynamic":
            t = time.perf_counter()
            quantize_dynamic(str(src), str(out), op_types_to_quantize=op_types, nodes_to_exclude=excluded,
                             **common)
            check_input, check_source = _random_input(input_shape), "random N(0,1)"
        else:
            t = time.perf_counter()
            ranges, method, count, check_input = _calibrate(ctx, src, tmp, input_name, input_shape, op_types)
            check_source = "calibration[0]"
            seconds["calibrate"] = time.perf_counter() - t
            facts["calibration"] = {"method": p.calibration, "samples": count, **_calibration_options(p)}
            save_tensors_data(ranges, tmp / "calibration.json")
            t = time.perf_counter()
            quantize_static(str(src), str(out), None, calibration_cache_path=tmp / "calibration.json",
                            calibrate_method=method, op_types_to_quantize=op_types, nodes_to_exclude=excluded,
                            quant_format=QuantFormat.QDQ if p.format == "qdq" else QuantFormat.QOperator,
                            activation_type=qtype[p.activation_type], **common)
        seconds["quantize"] = time.perf_counter() - t
        t = time.perf_counter()
        quantized = onnx.load(str(out), load_external_data=False)
        if any(init.data_location == onnx.TensorProto.EXTERNAL for init in quantized.graph.initializer):
            raise RuntimeError("quantize: ONNX Runtime wrote external data; expected a single-file model")
        facts["ops_after"] = dict(sorted(Counter(node.op_type for node in quantized.graph.node).items()))
        del quantized
        facts["check"] = {"input": check_source, **_verify(out, Path(ctx.input), input_name, check_input)}
        seconds["verify"] = time.perf_counter() - t
        os.replace(out, ctx.output)
    size_in, size_out = Path(ctx.input).stat().st_size, ctx.output.stat().st_size
    seconds["total"] = time.perf_counter() - start
    facts.update(size_bytes_before=size_in, size_bytes_after=size_out,
                 size_ratio=round(size_out / size_in, 4))
    facts["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    ctx.log(f"quantize: {size_in:,} -> {size_out:,} bytes in {seconds['total']:.1f} s")
    return facts


def _calibration_options(p: Params) -> dict:
    """The create_calibrator extra_options that matter for the chosen method."""
    if p.calibration == "minmax":
        return {}
    return {"num_bins": p.num_bins, **({"percentile": p.percentile} if p.calibration == "percentile" else {})}


def _refuse_quantized(model) -> None:
    from release.errors import ReleaseError

    quantized_ops = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                     "MatMulInteger", "DynamicQuantizeLinear"}
    if found := {n.op_type for n in model.graph.node} & quantized_ops:
        raise ReleaseError(f"quantize: the input model is already quantized (it has {sorted(found)}); "
                           "quantize an fp32 model instead.")


def _preprocess(src, dst, log) -> str:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst))
        return "symbolic+onnx"
    except Exception as exc:  # noqa: BLE001 - sympy missing, or an op the symbolic engine can't handle
        # onnxruntime does not depend on sympy (torch brings it); ONNX shape inference alone is
        # enough for the fixed-size CNNs we export, so we degrade instead of failing the build.
        log(f"quantize: symbolic shape inference failed ({type(exc).__name__}: {exc}); using ONNX's only")
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        return "onnx"


def _single_input(model) -> tuple[str, list]:
    from release.errors import ReleaseError

    inits = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ReleaseError(f"quantize: expected a model with one input, found {[i.name for i in inputs]}")
    dims = inputs[0].type.tensor_type.shape.dim
    return inputs[0].name, [d.dim_value if d.HasField("dim_value") else None for d in dims]


def _float_selection(graph, p: Params) -> tuple[list[str], int]:
    """Node names matched by keep_float_nodes, and the node count of keep_float_ops; typos raise."""
    from release.errors import ReleaseError, did_you_mean

    names = [n.name for n in graph.node if n.name]
    op_types = sorted({n.op_type for n in graph.node})
    unknown = [op for op in p.keep_float_ops if op not in op_types]
    if unknown:
        op = unknown[0]
        raise ReleaseError(f"quantize.keep_float_ops: op type '{op}' does not occur in the model."
                           f"{did_you_mean(op, op_types)} Op types in the model: {', '.join(op_types)}.")
    excluded: list[str] = []
    for pattern in p.keep_float_nodes:
        if not (hits := fnmatch.filter(names, pattern)):
            where = " after preprocessing" if p.preprocess else ""
            raise ReleaseError(
                f"quantize.keep_float_nodes: pattern '{pattern}' matches no node name{where}."
                f"{did_you_mean(pattern, names)} Some node names: {', '.join(names[:6])}"
                f"{' ...' if len(names) > 6 else ''}")
        excluded += [h for h in hits if h not in excluded]
    return excluded, sum(n.op_type in p.keep_float_ops and n.name not in excluded for n in graph.node)


def _calibrate(ctx: StageContext, src, tmp, input_name: str, shape: list, op_types: list[str]):
    """Activation ranges over at most max_samples calibration images, computed chunk by chunk."""
    import contextlib
    import io
    import itertools

    import numpy as np
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator
    from tqdm import tqdm

    from release.errors import ReleaseError

    p: Params = ctx.params
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[p.calibration]
    extra = _calibration_options(p)

    def checked(x):
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != len(shape) or any(d is not None and d != s for d, s in zip(shape, x.shape)):
            raise ReleaseError(f"quantize: a calibration sample has shape {x.shape}, but the model input "
                               f"'{input_name}' expects {['?' if d is None else d for d in shape]}.")
        return x

    stream = (checked(x) for x in itertools.islice(ctx.samples("calibration"), p.max_samples))
    first = next(stream, None)
    if first is None:
        raise ReleaseError("quantize: static quantization needs calibration images, but the "
                           "'calibration' split yielded none. Add images to it or use mode: dynamic.")
    ctx.log(f"quantize: calibrating ({p.calibration}) on up to {p.max_samples} images")
    calibrator = create_calibrator(src, op_types, augmented_model_path=str(tmp / "augmented.onnx"),
                                   calibrate_method=method, extra_options=extra)
    count, stream = 0, itertools.chain([first], stream)
    # ORT's histogram collector print()s on every chunk; keep the build log readable.
    with tqdm(total=p.max_samples, desc="calibrate", unit="img", disable=None, leave=False) as bar, \
            contextlib.redirect_stdout(io.StringIO()):
        while chunk := list(itertools.islice(stream, CALIBRATION_CHUNK)):
            calibrator.collect_data(_ChunkReader(input_name, chunk))
            count += len(chunk)
            bar.update(len(chunk))
        ranges = calibrator.compute_data()
    return ranges, method, count, first


def _random_input(shape: list):
    """A seeded input of the model's shape (batch 1 if symbolic), or None if other dims are symbolic."""
    import numpy as np

    shape = [1 if i == 0 and d is None else d for i, d in enumerate(shape)]
    if not shape or not all(d and d > 0 for d in shape):
        return None
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _verify(path, reference, input_name: str, x) -> dict:
    """Load (and when an input is at hand, run) the output in ORT; compare it with the fp32 model."""
    import numpy as np
    import onnxruntime as ort

    from release.errors import ReleaseError

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = None if x is None else session.run(None, {input_name: x})
    except Exception as exc:  # noqa: BLE001 - any ORT failure means the artifact is unusable
        raise ReleaseError(f"quantize: ONNX Runtime cannot run the quantized model: {exc}\nTry other "
                           "format/activation_type/weight_type, or keep the failing ops in float.") from exc
    if got is None:
        return {"loaded": True, "ran": False}
    reference_session = ort.InferenceSession(str(reference), providers=["CPUExecutionProvider"])
    expected = reference_session.run(None, {input_name: x})
    outputs = {}
    for meta, a, b in zip(session.get_outputs(), got, expected):
        if not np.all(np.isfinite(a)):
            raise ReleaseError(f"quantize: the quantized model's output '{meta.name}' is not finite.")
        outputs[meta.name] = {"max_abs_diff": float(np.max(np.abs(a - b))),
                              "ref_max_abs": float(np.max(np.abs(b)))}
    return {"loaded": True, "ran": True, "outputs_vs_fp32": outputs}


def needs_labels(params) -> bool:
    return False  # calibration reads images only
