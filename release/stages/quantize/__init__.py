"""Quantize stage: owns fp32 ONNX -> INT8 ONNX with ONNX Runtime (dynamic, or static on calibration data).

This module is the stage's contract (SPEC, Params, hooks, run); run's steps call the package's helpers:
- calibration.py: the calibration samples, ORT's calibrator (chunked, with num_bins), the ranges cache;
- quantizer.py: ORT's pre-processing and its dynamic and static quantizers, with our params;
- keep_float.py: what a detector keeps in float: `keep_float: auto` keeps each output's decode tail,
  and the head convolutions of an output whose channels mix very different ranges (pixel
  coordinates beside scores: one INT8 scale rounds every score to zero); keep_float_ops/_nodes;
- search.py: with `max_map_drop`, the nodes whose quantization adds the most error (measured against
  the float model on calibration images) fall back to float, doubling then bisecting their number,
  until the mAP measured on a tuning split (never data.eval) holds, within `max_trials`;
- report.py: the describe hook's line and model card section.
The check of the output against the float model, the atomic write and the size facts are
release/onnxfile.py's, shared with the other ONNX stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from release.onnxfile import Failures
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
    # The package's helpers beside this file (the fingerprint hashes this file itself); report.py
    # only reads facts, so it is not here.
    code=("release.stages.quantize.calibration", "release.stages.quantize.quantizer",
          "release.stages.quantize.keep_float", "release.stages.quantize.search", "release.onnxfile",
          "release.measure.accuracy", "release.data"),
    tools=("onnx", "onnxruntime", "numpy", "pycocotools"),
)

QType = Literal["uint8", "int8"]
STATIC_ONLY = ("format", "activation_type", "calibration", "percentile", "num_bins", "max_samples",
               "max_map_drop", "max_trials", "tuning_split", "sensitivity_samples")


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
        "activation ranges computed on every inference; no data needed, but ConvInteger is slow on CPU."))
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
        "x86 CPUs in either format; int8/int8 suits ARM, GPU and TensorRT."))
    weight_type: QType = Field("int8", description="Weight integer type (int8 weights are symmetric).")
    calibration: Literal["minmax", "entropy", "percentile"] = Field("minmax", description=(
        "Static only: how activation ranges are chosen. minmax: observed extremes. entropy: "
        "KL-optimal clipping (slow, see num_bins). percentile: clip at a percentile of |x|."))
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


@dataclass
class Job:
    """What the steps of one run share: the model to quantize (preprocessed, every node named), where
    to write, and what stays in float so far ({"node", "op", "why"} each)."""

    ctx: StageContext
    tmp: Path                   # scratch folder, removed after the run
    out: Path                   # the quantized model, moved to ctx.output when the run succeeds
    src: Path
    graph: Any                  # src's onnx GraphProto
    input_name: str
    input_shape: list
    registry: dict              # op types ORT quantizes in this mode
    op_types: list[str]         # ... less keep_float_ops
    ops: dict[str, str]         # node name -> op type
    kept: list[dict]
    samples: list = field(default_factory=list)  # calibration inputs (static)


RUN_FAILED = ("quantize: ONNX Runtime cannot run the quantized model: {exc}\nTry other "
              "format/activation_type/weight_type, or keep the failing ops in float.")
FAILURES = Failures(load=RUN_FAILED, run=RUN_FAILED,
                    nonfinite="quantize: the quantized model's output '{output}' is not finite.")


def run(ctx: StageContext) -> dict:
    """Quantize ctx.input into ctx.output; return facts for the stage record."""
    from release import onnxfile

    p: Params = ctx.params
    clock = _Clock()
    facts = _settings(p)
    with onnxfile.replacing(ctx.output, ".quantize-") as (tmp, out):
        job = _prepare(ctx, tmp, out, facts)
        clock.lap("preprocess")
        if p.mode == "dynamic":
            _quantize_dynamic(job)
        else:
            _quantize_static(job, facts, clock)
        job.graph = None  # the float model's graph: not held while the output is checked
        facts["float_nodes"] = [k for k in job.kept if k["op"] in job.registry]  # not the ones never quantized anyway
        facts["nodes_kept_float"] = len(facts["float_nodes"])
        clock.lap("quantize")
        _check(job, facts)
        clock.lap("verify")
    facts.update(onnxfile.size_facts(ctx.input, ctx.output))
    clock.seconds["total"] = clock.total()
    facts["seconds"] = {k: round(v, 3) for k, v in clock.seconds.items()}
    _log_done(ctx, facts, clock.seconds["total"])
    return facts


class _Clock:
    """Seconds per step: `lap` ends the step begun at the last lap (or `restart`)."""

    def __init__(self) -> None:
        import time

        self._now = time.perf_counter
        self.start = self.mark = self._now()
        self.seconds: dict[str, float] = {}

    def restart(self) -> None:
        self.mark = self._now()

    def lap(self, step: str) -> None:
        now = self._now()
        self.seconds[step], self.mark = now - self.mark, now

    def total(self) -> float:
        return self._now() - self.start


def _settings(p: Params) -> dict:
    """The facts the params decide: what kind of INT8 this is."""
    static = p.mode == "static"
    return {"mode": p.mode, "format": p.format if static else "qoperator-integer",
            "per_channel": p.per_channel, "reduce_range": p.reduce_range, "weight_type": p.weight_type,
            "activation_type": p.activation_type if static else "uint8", "keep_float": p.keep_float}


def _prepare(ctx: StageContext, tmp: Path, out: Path, facts: dict) -> Job:
    """Refuse a quantized input, pre-process it, name every node (nodes stay float by name), and
    select what keep_float_ops and keep_float_nodes keep in float."""
    import onnx

    from release.stages.quantize import keep_float, quantizer

    p: Params = ctx.params
    src = Path(ctx.input)
    quantizer.refuse_quantized(onnx.load(str(src), load_external_data=False))
    if p.preprocess:
        ctx.log("quantize: preprocessing (shape inference + ORT basic optimizations)")
        facts["shape_inference"] = quantizer.preprocess(src, tmp / "preprocessed.onnx", ctx.log)
        src = tmp / "preprocessed.onnx"
    model = onnx.load(str(src))
    if keep_float.name_nodes(model):
        src = tmp / "named.onnx"
        onnx.save(model, str(src))
    input_name, input_shape = quantizer.single_input(model)
    registry = quantizer.registry(p.mode)
    return Job(ctx=ctx, tmp=tmp, out=out, src=src, graph=model.graph, input_name=input_name,
               input_shape=input_shape, registry=registry,
               op_types=sorted(set(registry) - set(p.keep_float_ops)),
               ops={n.name: n.op_type for n in model.graph.node},
               kept=keep_float.float_selection(model.graph, p))


def _quantize_dynamic(job: Job) -> None:
    from release.stages.quantize import keep_float, quantizer

    p: Params = job.ctx.params
    if p.keep_float == "auto":
        job.kept += keep_float.auto_float(job.graph, {}, job.kept)
    quantizer.quantize_dynamic(p, job.src, job.out, job.op_types, [k["node"] for k in job.kept])


def _quantize_static(job: Job, facts: dict, clock: _Clock) -> None:
    """Calibrate (or take the ranges from the cache), keep float what auto finds, quantize, and with
    max_map_drop search for the fallback that holds the mAP."""
    from release.stages.quantize import calibration, keep_float, quantizer, search

    ctx, p = job.ctx, job.ctx.params
    job.samples = calibration.samples(ctx, job.input_name, job.input_shape)
    ranges_file, facts["calibration"] = calibration.ranges(ctx, job.src, job.tmp, job.input_name, job.input_shape,
                                                           job.samples, sorted(job.registry))
    clock.lap("calibrate")
    if p.keep_float == "auto":
        facts["mixed_outputs"] = keep_float.mixed_outputs(job.src, job.input_name, job.samples[:8])
        job.kept += keep_float.auto_float(job.graph, facts["mixed_outputs"], job.kept)
    clock.restart()
    quantizer.quantize_static(p, job.src, job.out, ranges_file, job.op_types, [k["node"] for k in job.kept])
    if p.max_map_drop is not None:
        job.kept, facts["sensitivity"] = search.tune(job, ranges_file)


def _check(job: Job, facts: dict) -> None:
    """The output is one file, and ORT runs it close to the float model: on the first calibration
    image (static), or on a seeded random input (dynamic)."""
    from collections import Counter

    import onnx

    from release import onnxfile

    quantized = onnx.load(str(job.out), load_external_data=False)
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in quantized.graph.initializer):
        raise RuntimeError("quantize: ONNX Runtime wrote external data; expected a single-file model")
    facts["ops_after"] = dict(sorted(Counter(node.op_type for node in quantized.graph.node).items()))
    del quantized
    static = job.ctx.params.mode == "static"
    outputs = onnxfile.verify(job.out, job.ctx.input, [{job.input_name: job.samples[0]}] if static else None,
                              FAILURES, symbolic_batch=1)
    check = {"input": "calibration[0]" if static else "random N(0,1)", "loaded": True, "ran": outputs is not None}
    if outputs is not None:
        check["outputs_vs_fp32"] = outputs
    facts["check"] = check


def _log_done(ctx: StageContext, facts: dict, seconds: float) -> None:
    from collections import Counter

    why = Counter(k["why"].split(" (")[0] for k in facts["float_nodes"])
    ctx.log(f"quantize: {facts['size_bytes_before']:,} -> {facts['size_bytes_after']:,} bytes in {seconds:.1f} s; "
            "in float: "
            + (", ".join(f"{n} ({w})" for w, n in why.items()) or "nothing"))


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
    from release.stages.quantize import report

    return Description(summary=report.summary(facts), title="Quantization", card=report.card(facts),
                       faster_as="INT8")
