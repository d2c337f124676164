"""simplify: ONNX -> ONNX through onnxslim's graph simplification, checked against its input model.

onnxslim (pure Python on top of onnx) folds constants, removes dead, duplicate and identity-like
nodes, and fuses patterns (Conv+BatchNorm, Conv+Mul/Add, Pad+Conv, Gemm, GELU, ...). Removing nodes
changes nothing numerically; folding a BatchNorm or a Mul into a convolution's weights rounds
differently in float32, so the parity check allows a small tolerance relative to each output's
magnitude. The check runs both models in ONNX Runtime on eval images (release/onnxfile.py, as the
other ONNX stages verify against their float input).

What onnxslim 0.1.98 does that shapes this module:
- `slim(model)` without an output path returns the simplified ModelProto (None only with its own
  `model_check`, which runs random inputs; we check on real images instead).
- its optimization switches are class attributes that every `slim` call resets from
  `skip_optimizations`: process-wide, but never stale from an earlier call.
- it runs ONNX shape inference and keeps the result as value_info, so a graph it cannot shrink
  still grows by a few kilobytes.
- with constant_folding skipped, it can drop a node fed by unfolded constants (a Mul whose factor
  is Add(Constant, Constant) disappears): the parity check catches it (tests/unit/test_stage_simplify.py).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from release.onnxfile import Failures
from release.stages.base import Description, StageContext, StageParams, StageSpec, hook

SPEC = StageSpec(
    name="simplify",
    version=1,
    consumes="onnx",
    produces="onnx",
    summary="graph simplification with onnxslim (constant folding, dead and duplicate nodes, fusions), "
            "parity-checked against its input on eval images",
    verifies=("eval",),
    code=("release.onnxfile",),
    tools=("onnx", "onnxruntime", "onnxslim"),
)

Optimization = Literal["constant_folding", "graph_fusion", "dead_node_elimination", "subexpression_elimination",
                       "weight_tying"]
# Below this relative difference a mismatch is float32 rounding of folded weights, not another computation.
ROUNDING_REL = 1e-5


class Params(StageParams):
    skip: tuple[Optimization, ...] = Field((), description=(
        "onnxslim optimizations not run, e.g. [graph_fusion] to keep Conv+BatchNorm/Mul/Add as they are "
        "(the only ones that change arithmetic)."))
    parity_samples: int = Field(4, ge=1, le=64, description="eval images both models are run on for the check")
    tolerance: float = Field(1e-4, ge=0, description=(
        "largest |simplified - input| allowed for an output element, relative to the largest |value| of "
        "that output on the parity images (at least 1): folded weights round differently in float32; "
        "0 demands bit-identical outputs"))


FAILURES = Failures(
    load="simplify: ONNX Runtime cannot load the simplified model: {exc}\n"
         "Skip the onnxslim optimization that broke it (simplify.skip).",
    run="simplify: ONNX Runtime cannot run the simplified model: {exc}\n"
        "Skip the onnxslim optimization that broke it (simplify.skip).",
    nonfinite="simplify: the simplified model's output '{output}' is not finite on a parity image.",
)


def run(ctx: StageContext) -> dict:
    """Simplify ctx.input into ctx.output; return facts for the stage record."""
    import time
    from collections import Counter

    import onnx
    import onnxslim

    from release import onnxfile

    p: Params = ctx.params
    start = time.perf_counter()
    model = onnx.load(str(ctx.input))
    before = Counter(n.op_type for n in model.graph.node)
    feeds, source = _parity_feeds(ctx, model)
    slim = onnxslim.slim(model, skip_optimizations=list(p.skip))
    after = Counter(n.op_type for n in slim.graph.node)
    with onnxfile.replacing(ctx.output, ".simplify-") as (_, out):
        onnx.save_model(slim, str(out))  # over 2 GB this raises rather than writing external data
        del slim, model
        outputs = onnxfile.verify(out, ctx.input, feeds, FAILURES, symbolic_batch=1) or {}
        _within_tolerance(outputs, p, source)
    facts = {"tool": f"onnxslim {onnxslim.__version__}", "skipped": list(p.skip),
             "nodes_before": sum(before.values()), "nodes_after": sum(after.values()),
             "ops_removed": dict(sorted((before - after).items())), "ops_added": dict(sorted((after - before).items())),
             "check": {"input": source, "ran": bool(outputs), "tolerance": p.tolerance, "outputs_vs_input": outputs},
             "max_abs_diff": max((o["max_abs_diff"] for o in outputs.values()), default=None),
             **onnxfile.size_facts(ctx.input, ctx.output), "seconds": round(time.perf_counter() - start, 3)}
    ctx.log(f"simplify: {facts['nodes_before']} -> {facts['nodes_after']} nodes, {facts['size_bytes_before']:,} -> "
            f"{facts['size_bytes_after']:,} bytes, max |diff| {facts['max_abs_diff'] or 0:.1e} on {source}")
    return facts


def _parity_feeds(ctx: StageContext, model) -> tuple[list[dict] | None, str]:
    """Up to parity_samples eval images for the model's one input; None (a seeded random input)
    when the split yields none."""
    import itertools

    from release.errors import ReleaseError

    inits = {init.name for init in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ReleaseError(f"simplify: the parity check feeds images to one model input; found {inputs}")
    images = list(itertools.islice(ctx.samples("eval"), ctx.params.parity_samples))
    if not images:
        return None, "random N(0,1)"
    return [{inputs[0]: x} for x in images], f"{len(images)} eval image{'s' if len(images) > 1 else ''}"


def _within_tolerance(outputs: dict[str, dict], p: Params, source: str) -> None:
    """Raise a ReleaseError naming the first output beyond the tolerance, and what to try."""
    from release.errors import ReleaseError

    tolerance = p.tolerance
    for name, o in outputs.items():
        diff, peak = o["max_abs_diff"], o["ref_max_abs"]
        allowed = tolerance * max(peak, 1.0)
        if diff <= allowed:
            continue
        head = (f"simplify: output '{name}' of the simplified model differs from its input model by up to "
                f"{diff:.3g} on {source} (largest |value| {peak:.3g}); simplify.tolerance {tolerance:g} allows "
                f"{allowed:.3g} (tolerance x max(1, largest |value|)).")
        if diff <= ROUNDING_REL * max(peak, 1.0):
            raise ReleaseError(f"{head} That is float32 rounding (folded weights round differently): raise "
                               "simplify.tolerance, or skip graph_fusion to keep the arithmetic as it was.")
        if p.skip:
            raise ReleaseError(f"{head} That is not rounding: onnxslim changed what the graph computes with "
                               f"simplify.skip: [{', '.join(p.skip)}] (its other passes may rely on a skipped "
                               "one): skip less, or skip none.")
        raise ReleaseError(f"{head} That is not rounding: onnxslim changed what the graph computes. Skip its "
                           "optimizations one at a time (simplify.skip: [graph_fusion], [subexpression_elimination], "
                           "...) to find which.")


@hook
def describe(facts) -> Description:
    """One line: the simplifier, and how many nodes it took out."""
    tool = facts.get("tool", "onnxslim").split(" ")[0]
    return Description(summary=f"{tool}: {facts['nodes_before']} -> {facts['nodes_after']} nodes")
