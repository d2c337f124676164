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

What a detector needs on top (release/int8.py): `keep_float: auto` keeps each output's decode tail
in float, and the head convolutions of an output whose channels mix very different ranges (pixel
coordinates beside scores: one INT8 scale rounds every score to zero). With `max_map_drop`, the
nodes whose quantization adds the most error (measured against the float model on calibration
images) fall back to float, doubling then bisecting their number, until the mAP measured on a
tuning split (never data.eval) holds, within `max_trials`. Calibration ranges are cached by content
(model, images, method), so a change of format or fallback does not recalibrate.
"""

from __future__ import annotations

import fnmatch
from typing import Literal

from pydantic import Field, field_validator, model_validator

from release.stages.base import Description, StageContext, StageParams, StageSpec, hook

SPEC = StageSpec(
    name="quantize",
    version=1,
    consumes="onnx",
    produces="onnx",
    summary="INT8 quantization with ONNX Runtime: dynamic, or static calibrated on the calibration split",
    reads=("calibration",),
    # The calibration images come through the adapter's preprocessing, and max_map_drop scores
    # trials with its postprocessing: the model's code is part of what this stage writes.
    uses_model=True,
    code=("release.int8", "release.measure.accuracy"),
    tools=("onnx", "onnxruntime", "numpy", "pycocotools"),
)

# Every calibrated activation of every sample in a chunk is held in memory until the chunk is merged.
CALIBRATION_CHUNK = 8

QType = Literal["uint8", "int8"]
STATIC_ONLY = ("format", "activation_type", "calibration", "percentile", "num_bins", "max_samples",
               "max_map_drop", "max_trials", "tuning_split", "sensitivity_samples")
CALIBRATION_CACHE_VERSION = 1


def _getter(params):
    """Field lookup on Params or on the raw dict a manifest wrote."""
    return params.get if isinstance(params, dict) else lambda k, d=None: getattr(params, k, d)


@hook
def reads(params) -> tuple[str, ...]:
    """Data splits this configuration reads (for the fingerprint): dynamic quantization reads none."""
    get = _getter(params)
    if get("mode", "static") != "static":
        return ()
    tuning = get("tuning_split", "calibration") if get("max_map_drop") is not None else "calibration"
    return tuple(dict.fromkeys(("calibration", tuning)))


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
    keep_float: Literal["auto", "none"] = Field("auto", description=(
        "auto: keep each output's decode tail (the nodes after its last Conv/MatMul) in float, and the "
        "head convolutions of any output whose channels mix very different ranges (coordinates beside "
        "scores). Combines with keep_float_ops/keep_float_nodes. none: only what those name."))
    max_map_drop: float | None = Field(None, gt=0, lt=1, description=(
        "Static only: fall back the most error-prone nodes to float until the mAP on the tuning split "
        "is at most this much below the float model's (e.g. 0.01)."))
    max_trials: int = Field(8, ge=1, le=50, description=(
        "max_map_drop: most fallback quantizations tried (each scored on the tuning split). Ranking "
        "before them costs one more quantization per layer group, on sensitivity_samples images."))
    tuning_split: Literal["calibration", "tuning", "train"] = Field("calibration", description=(
        "max_map_drop: the labelled split the mAP is measured on (data.<split>); never data.eval, so "
        "the release's mAP is not tuned on itself."))
    sensitivity_samples: int = Field(8, ge=1, le=256, description=(
        "max_map_drop: calibration images used to rank nodes by the error their quantization adds."))

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
        tuning = [k for k in ("max_trials", "tuning_split", "sensitivity_samples") if k in self.model_fields_set]
        if tuning and self.max_map_drop is None:
            raise ValueError(f"{', '.join(tuning)} only applies with max_map_drop")
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
    from onnxruntime.quantization import quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry, QDQRegistry, QLinearOpsRegistry

    from release import int8

    p: Params = ctx.params
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    facts: dict = {"mode": p.mode, "format": p.format if p.mode == "static" else "qoperator-integer",
                   "per_channel": p.per_channel, "reduce_range": p.reduce_range, "weight_type": p.weight_type,
                   "activation_type": p.activation_type if p.mode == "static" else "uint8",
                   "keep_float": p.keep_float}
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=ctx.out_dir) as tmp_name:
        tmp, src = Path(tmp_name), Path(ctx.input)
        _refuse_quantized(onnx.load(str(src), load_external_data=False))
        if p.preprocess:
            ctx.log("quantize: preprocessing (shape inference + ORT basic optimizations)")
            facts["shape_inference"] = _preprocess(src, tmp / "preprocessed.onnx", ctx.log)
            src = tmp / "preprocessed.onnx"
        model = onnx.load(str(src))
        if int8.name_nodes(model):  # nodes are kept in float by name: every node needs one
            src = tmp / "named.onnx"
            onnx.save(model, str(src))
        input_name, input_shape = _single_input(model)
        registry = IntegerOpsRegistry if p.mode == "dynamic" else {**QLinearOpsRegistry, **QDQRegistry}
        op_types = sorted(set(registry) - set(p.keep_float_ops))
        kept = _float_selection(model.graph, p)
        seconds["preprocess"] = time.perf_counter() - start
        out = tmp / "model.onnx"
        t = time.perf_counter()
        if p.mode == "dynamic":
            kept += _auto_float(model.graph, {}, kept) if p.keep_float == "auto" else []
            quantize_dynamic(str(src), str(out), op_types_to_quantize=op_types,
                             nodes_to_exclude=[k["node"] for k in kept], **_common(p))
            check_input, check_source = _random_input(input_shape), "random N(0,1)"
        else:
            samples = _calibration_samples(ctx, input_name, input_shape)
            ranges_file, facts["calibration"] = _ranges(ctx, src, tmp, input_name, input_shape, samples,
                                                        sorted(registry))
            seconds["calibrate"] = time.perf_counter() - t
            if p.keep_float == "auto":
                facts["mixed_outputs"] = int8.mixed_outputs(src, input_name, samples[:8])
                kept += _auto_float(model.graph, facts["mixed_outputs"], kept)
            t = time.perf_counter()
            _quantize_static(p, src, out, ranges_file, op_types, [k["node"] for k in kept])
            if p.max_map_drop is not None:
                kept, facts["sensitivity"] = _search(ctx, src, out, tmp, ranges_file, op_types, kept, model.graph,
                                                     input_name, samples, set(registry))
            check_input, check_source = samples[0], "calibration[0]"
        del model
        facts["float_nodes"] = [k for k in kept if k["op"] in registry]  # not the ones never quantized anyway
        facts["nodes_kept_float"] = len(facts["float_nodes"])
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
    why = Counter(k["why"].split(" (")[0] for k in facts["float_nodes"])
    ctx.log(f"quantize: {size_in:,} -> {size_out:,} bytes in {seconds['total']:.1f} s; in float: "
            + (", ".join(f"{n} ({w})" for w, n in why.items()) or "nothing"))
    return facts


def _common(p: Params) -> dict:
    from onnxruntime.quantization import QuantType

    return dict(per_channel=p.per_channel, reduce_range=p.reduce_range,
                weight_type={"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[p.weight_type])


def _quantize_static(p: Params, src, out, ranges_file, op_types: list[str], excluded: list[str],
                     fmt: str | None = None) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    fmt = fmt or p.format
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[p.calibration]
    quantize_static(str(src), str(out), None, calibration_cache_path=str(ranges_file), calibrate_method=method,
                    op_types_to_quantize=op_types, nodes_to_exclude=excluded,
                    quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                    activation_type={"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}[p.activation_type],
                    **_common(p))


def _auto_float(graph, mixed: dict, already: list[dict]) -> list[dict]:
    """keep_float: auto: every output's decode tail, and the heads of mixed-range outputs."""
    from release import int8

    ops = {n.name: n.op_type for n in graph.node}
    seen = {k["node"] for k in already}
    found = []
    for output, part in int8.decode_tail(graph).items():
        for name in part["tail"]:
            if name not in seen:
                seen.add(name)
                found.append({"node": name, "op": ops[name], "why": f"decode tail of {output}"})
        if output in mixed:
            for name in part["heads"]:
                if name not in seen:
                    seen.add(name)
                    found.append({"node": name, "op": ops[name], "why": f"head of mixed-range output {output}"})
    return found


def _calibration_samples(ctx: StageContext, input_name: str, shape: list) -> list:
    """At most max_samples calibration inputs, checked against the model's input shape."""
    import itertools

    import numpy as np

    from release.errors import ReleaseError

    p: Params = ctx.params

    def checked(x):
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != len(shape) or any(d is not None and d != s for d, s in zip(shape, x.shape)):
            raise ReleaseError(f"quantize: a calibration sample has shape {x.shape}, but the model input "
                               f"'{input_name}' expects {['?' if d is None else d for d in shape]}.")
        return x

    samples = [checked(x) for x in itertools.islice(ctx.samples("calibration"), p.max_samples)]
    if not samples:
        raise ReleaseError("quantize: static quantization needs calibration images, but the "
                           "'calibration' split yielded none. Add images to it or use mode: dynamic.")
    return samples


def _ranges(ctx: StageContext, src, tmp, input_name: str, shape: list, samples: list, op_types: list[str]):
    """The calibration ranges file, from the cache when the same model, images and method were
    calibrated before (format and float fallback do not change ranges), else computed and cached."""
    import hashlib
    import os
    from pathlib import Path

    import onnxruntime
    from onnxruntime.quantization.calibrate import load_tensors_data, save_tensors_data

    p: Params = ctx.params
    key = hashlib.sha256()
    key.update(f"v{CALIBRATION_CACHE_VERSION} ort {onnxruntime.__version__} {p.calibration} "
               f"{sorted(_calibration_options(p).items())} {op_types} chunk {CALIBRATION_CHUNK}".encode())
    key.update(Path(src).read_bytes())
    for x in samples:
        key.update(x.tobytes())
    digest = key.hexdigest()
    info = {"method": p.calibration, "samples": len(samples), **_calibration_options(p), "key": digest[:16]}
    cached = Path(ctx.cache_dir) / "calibration" / f"{digest}.json" if ctx.cache_dir else None
    if cached is not None and cached.is_file():
        try:
            load_tensors_data(cached)  # a damaged entry is recomputed, never trusted
            ctx.log(f"quantize: calibration ranges from the cache ({digest[:12]})")
            return cached, {**info, "cached": True}
        except Exception:  # noqa: BLE001 - unreadable for any reason: drop it and calibrate
            cached.unlink(missing_ok=True)
    ranges = _calibrate(ctx, src, tmp, input_name, shape, op_types, samples)
    path = Path(tmp) / "calibration.json"
    save_tensors_data(ranges, path)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(f".{cached.name}.{os.getpid()}.partial")
        try:
            with partial.open("wb") as handle:
                handle.write(path.read_bytes())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, cached)
        finally:
            partial.unlink(missing_ok=True)
    return path, {**info, "cached": False}


def _search(ctx: StageContext, src, out, tmp, ranges_file, op_types, kept, graph, input_name, samples,
            quantizable):
    """max_map_drop: fall back the nodes whose quantization adds the most error, doubling then
    bisecting their number, until the tuning mAP holds or max_trials quantizations were tried.
    Leaves the chosen model at `out`; returns the float list and the search's record."""
    import shutil
    from pathlib import Path

    from release import int8
    from release.errors import ReleaseError
    from release.measure import accuracy

    p: Params = ctx.params
    manifest = ctx.manifest
    ref = getattr(manifest.data, p.tuning_split, None) if manifest is not None else None
    if ref is None or ref.annotations is None:
        raise ReleaseError(f"quantize.max_map_drop measures mAP on data.{p.tuning_split}, which "
                           f"{'is not defined' if ref is None else 'has no annotations'}: add "
                           f"data.{p.tuning_split}{'' if ref is None else '.annotations'} or set tuning_split.")

    floats = sum(k["op"] in quantizable for k in kept)
    order: list[list[str]] = []  # layer groups, most error-adding first (ranked below)

    def measured(path, extra: int) -> dict:  # extra: layer groups in float by sensitivity
        return {"float_nodes": floats + sum(len(g) for g in order[:extra]), "fallback_groups": extra,
                "map": accuracy.evaluate(path, manifest.model, ref, split=p.tuning_split)["map"], "bytes": Path(path).stat().st_size,
                "latency_ms": _quick_latency(path, input_name, samples[0])}

    ctx.log(f"quantize: tuning to a max mAP drop of {p.max_map_drop} on data.{p.tuning_split}")
    fp32 = accuracy.evaluate(ctx.input, manifest.model, ref, split=p.tuning_split)["map"]
    curve = [measured(out, 0)]
    record = {"split": p.tuning_split, "max_map_drop": p.max_map_drop, "fp32_map": fp32}
    holds = lambda point: fp32 - point["map"] <= p.max_map_drop  # noqa: E731
    if holds(curve[0]):
        return kept, {**record, "met": True, "chosen": curve[0], "curve": curve, "ranked": []}
    excluded = [k["node"] for k in kept]
    ops = {n.name: n.op_type for n in graph.node}
    candidates = [n.name for n in graph.node if n.op_type in op_types and n.name not in set(excluded)]
    groups = int8.layer_groups(graph, candidates)
    probe = Path(tmp) / "probe.onnx"

    def quantize_with(extra: list[str]):
        _quantize_static(p, src, probe, ranges_file, op_types, excluded + extra)
        return probe

    ctx.log(f"quantize: ranking {len(groups)} layer groups by the output error their quantization adds")
    ranked = int8.sensitivity(ctx.input, quantize_with, groups, input_name, samples[: p.sensitivity_samples],
                              log=ctx.log)
    for r in ranked:
        r["op"] = "+".join(ops[n] for n in r["nodes"])
    order[:] = [r["nodes"] for r in ranked]
    paths = {0: Path(tmp) / "trial-0.onnx"}
    shutil.copyfile(out, paths[0])

    def trial(k: int) -> bool:
        paths[k] = Path(tmp) / f"trial-{k}.onnx"
        _quantize_static(p, src, paths[k], ranges_file, op_types, excluded + [n for g in order[:k] for n in g])
        curve.append(measured(paths[k], k))
        return holds(curve[-1])

    _, ok = int8.fallback_search(len(order), p.max_trials, trial)
    # The fewest fallbacks that hold; when none holds, the best mAP tried.
    chosen = (next(c for c in curve if c["fallback_groups"] == ok) if ok is not None
              else max(curve, key=lambda c: (c["map"], -c["fallback_groups"])))
    extra = chosen["fallback_groups"]
    shutil.copyfile(paths[extra], out)
    kept = kept + [{"node": n, "op": ops[n], "why": f"sensitivity rank {i + 1} (adds error {r['added']:.3g})"}
                   for i, r in enumerate(ranked[:extra]) for n in r["nodes"]]
    met = holds(chosen)
    ctx.log(f"quantize: tuning {'met' if met else 'did NOT meet'} the drop with {extra} layer group(s) more in "
            f"float after {len(curve) - 1} trial(s): mAP {chosen['map']:.4f} vs float {fp32:.4f}")
    return kept, {**record, "met": met, "chosen": chosen, "curve": curve, "ranked": ranked[:20]}


def _quick_latency(path, input_name: str, x) -> float:
    """An indicative in-stage latency (1 thread, median of 20 runs) for the search's curve; the
    variant's real figure comes from the latency runner."""
    import statistics
    import time

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for _ in range(3):
        session.run(None, {input_name: x})
    times = []
    for _ in range(20):
        started = time.perf_counter()
        session.run(None, {input_name: x})
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 3)


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


def _float_selection(graph, p: Params) -> list[dict]:
    """Nodes kept in float by keep_float_nodes and keep_float_ops, with why; typos raise."""
    from release.errors import ReleaseError, did_you_mean

    names = [n.name for n in graph.node if n.name]
    ops = {n.name: n.op_type for n in graph.node}
    op_types = sorted({n.op_type for n in graph.node})
    unknown = [op for op in p.keep_float_ops if op not in op_types]
    if unknown:
        op = unknown[0]
        raise ReleaseError(f"quantize.keep_float_ops: op type '{op}' does not occur in the model."
                           f"{did_you_mean(op, op_types)} Op types in the model: {', '.join(op_types)}.")
    kept: list[dict] = []
    seen: set[str] = set()
    for pattern in p.keep_float_nodes:
        if not (hits := fnmatch.filter(names, pattern)):
            where = " after preprocessing" if p.preprocess else ""
            raise ReleaseError(
                f"quantize.keep_float_nodes: pattern '{pattern}' matches no node name{where}."
                f"{did_you_mean(pattern, names)} Some node names: {', '.join(names[:6])}"
                f"{' ...' if len(names) > 6 else ''}")
        for h in hits:
            if h not in seen:
                seen.add(h)
                kept.append({"node": h, "op": ops[h], "why": f"keep_float_nodes '{pattern}'"})
    kept += [{"node": n.name, "op": n.op_type, "why": "keep_float_ops"} for n in graph.node
             if n.op_type in p.keep_float_ops and n.name not in seen]
    return kept


def _calibrate(ctx: StageContext, src, tmp, input_name: str, shape: list, op_types: list[str],
               samples: list | None = None):
    """Activation ranges over the calibration samples, computed chunk by chunk (bounded memory)."""
    import contextlib
    import io
    import itertools

    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator
    from tqdm import tqdm

    p: Params = ctx.params
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[p.calibration]
    if samples is None:
        samples = _calibration_samples(ctx, input_name, shape)
    ctx.log(f"quantize: calibrating ({p.calibration}) on {len(samples)} images")
    calibrator = create_calibrator(src, op_types, augmented_model_path=str(tmp / "augmented.onnx"),
                                   calibrate_method=method, extra_options=_calibration_options(p))
    stream = iter(samples)
    # ORT's histogram collector print()s on every chunk; keep the build log readable.
    with tqdm(total=len(samples), desc="calibrate", unit="img", disable=None if ctx.progress else True,
              leave=False) as bar, contextlib.redirect_stdout(io.StringIO()):
        while chunk := list(itertools.islice(stream, CALIBRATION_CHUNK)):
            calibrator.collect_data(_ChunkReader(input_name, chunk))
            bar.update(len(chunk))
        return calibrator.compute_data()


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


@hook
def needs_labels(params, split) -> bool:
    """Calibration reads images only; the max_map_drop search measures mAP on its tuning split."""
    get = _getter(params)
    tuning = get("tuning_split", "calibration")
    return get("max_map_drop") is not None and split == tuning


@hook
def describe(facts) -> Description:
    """How the model was quantized and what stayed in float, and why; the card adds the float nodes
    and the sensitivity search's curve."""
    return Description(summary=_summary(facts), title="Quantization", card=_card(facts), faster_as="INT8")


def _summary(q: dict) -> str:
    if q["mode"] == "dynamic":
        head = "INT8 dynamic (weights only, activations at run time)"
    else:
        cal = q.get("calibration", {})
        head = (f"INT8 static {q['format']}, {cal.get('method')} calibration on {cal.get('samples')} images"
                f"{' (ranges from the cache)' if cal.get('cached') else ''}, {q['activation_type']} activations")
    why: dict[str, list[str]] = {}
    for k in q.get("float_nodes", []):
        why.setdefault(k["why"].split(" (")[0].split(" rank")[0], []).append(k["node"])
    parts = [f"{len(nodes)} {reason}" + (f" ({', '.join(nodes[:3])}{' ...' if len(nodes) > 3 else ''})")
             for reason, nodes in why.items()]
    line = f"{head}; in float: {'; '.join(parts) if parts else 'nothing'}"
    tuned = q.get("sensitivity")
    if tuned:
        line += (f"; tuned on data.{tuned['split']}: mAP {tuned['chosen']['map']:.3f} vs float {tuned['fp32_map']:.3f} "
                 f"(max drop {tuned['max_map_drop']:g}, {'met' if tuned['met'] else 'NOT met'} after "
                 f"{len(tuned['curve']) - 1} trials)")
    return line


def _card(q: dict) -> str:
    lines = []
    if q.get("float_nodes"):
        lines += ["| node kept in float | op | why |", "|---|---|---|"]
        lines += [f"| `{k['node']}` | {k['op']} | {k['why']} |" for k in q["float_nodes"][:30]]
        if len(q["float_nodes"]) > 30:
            lines.append(f"| ... {len(q['float_nodes']) - 30} more | | |")
        lines.append("")
    tuned = q.get("sensitivity")
    if tuned:
        lines += [f"Sensitivity search on data.{tuned['split']} (float mAP {tuned['fp32_map']:.4f}):", "",
                  "| layer groups in float by sensitivity | nodes in float | mAP | bytes | latency ms (in-stage, 1 thread) |",
                  "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(_cell(c.get(k), f) for k, f in CURVE_CELLS) + " |" for c in tuned["curve"]]
        lines.append("")
    return "\n".join(lines) + "\n" if lines else ""


CURVE_CELLS = (("fallback_groups", ""), ("float_nodes", ""), ("map", ".4f"), ("bytes", ""), ("latency_ms", ".2f"))


def _cell(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)
