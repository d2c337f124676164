"""FP16 stage: owns fp32 ONNX -> float16 ONNX (fp32 inputs/outputs kept) with ONNX Runtime's converter.

The converter is `onnxruntime.transformers.float16.convert_float_to_float16`, shipped inside the
onnxruntime wheel (numpy + onnx + packaging only; no extra dependency such as onnxconverter-common).
What onnxruntime 1.32 does that shapes this module:
- importing any `onnxruntime.transformers` module appends that folder to `sys.path` (its modules use
  top-level imports such as `from fusion_utils import ...`); harmless once, but it is process-wide.
- the Cast nodes it adds for fp32 inputs/outputs and blocked ops are appended at the end of the graph,
  so its output fails `onnx.checker` ("Nodes in a graph must be topologically sorted"). ORT sorts on
  load, other consumers may not, so we sort before saving.
"""

from __future__ import annotations

from collections import Counter

from pydantic import Field, field_validator, model_validator

from release.onnxfile import Failures
from release.stages.base import StageContext, StageParams, StageSpec

SPEC = StageSpec(
    name="fp16",
    version=1,
    consumes="onnx",
    produces="onnx",
    summary="float16 weights and compute, float32 inputs/outputs, with ONNX Runtime's converter",
    code=("release.onnxfile",),  # the check against the float input and the atomic write
    tools=("onnx", "onnxruntime"),
)

FP16_SMALLEST_SUBNORMAL = 5.96e-08
FP16_MAX = 65504.0


class Params(StageParams):
    keep_io_types: bool = Field(True, description=(
        "Keep the model's float32 inputs and outputs (Cast nodes at the boundary), so callers feed and "
        "read float32 exactly as with the fp32 model."))
    op_block_list: tuple[str, ...] | None = Field(None, description=(
        "Op types kept in float32, e.g. [Resize, TopK]. null: ORT's DEFAULT_OP_BLOCK_LIST (ML ops, "
        "NonMaxSuppression, TopK, RoiAlign, Range, CumSum, Min, Max, Upsample, ...). A list replaces it."))
    min_positive_val: float = Field(FP16_SMALLEST_SUBNORMAL, ge=FP16_SMALLEST_SUBNORMAL, description=(
        "Weights with 0 < |w| < this become ±this instead of flushing towards zero (absolute value; "
        "the default, the smallest fp16 subnormal, changes nothing)."))
    max_finite_val: float = Field(FP16_MAX, gt=0.0, le=FP16_MAX, description=(
        "Weights with |w| > this are clamped to ±this instead of overflowing to inf (absolute value; "
        "at most 65504, the largest finite fp16)."))

    @field_validator("op_block_list")
    @classmethod
    def _no_blank(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is not None and any(not item.strip() for item in value):
            raise ValueError("entries must be non-empty op type names")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Params:
        if self.min_positive_val >= self.max_finite_val:
            raise ValueError(f"min_positive_val ({self.min_positive_val}) must be below max_finite_val "
                             f"({self.max_finite_val})")
        return self


def run(ctx: StageContext) -> dict:
    """Convert ctx.input to float16 into ctx.output; return facts for the stage record."""
    import time
    from pathlib import Path

    import onnx

    from release import onnxfile

    p: Params = ctx.params
    start = time.perf_counter()
    model = onnx.load(str(ctx.input))
    block = _block_list(model, p)
    in_graph = Counter(n.op_type for n in model.graph.node)
    blocked = {op: in_graph[op] for op in block if in_graph[op]}
    fp32_inits = sum(t.data_type == onnx.TensorProto.FLOAT for t in model.graph.initializer)
    ctx.log(f"fp16: converting {fp32_inits} float32 initializers; kept in float32: {blocked or 'none'}")
    half = _convert(model, p, block)
    del model
    facts = {
        "keep_io_types": p.keep_io_types,
        "op_block_list": block,
        "op_block_list_source": "onnxruntime default" if p.op_block_list is None else "params",
        "nodes_kept_float32": blocked,
        "initializers_float16": sum(t.data_type == onnx.TensorProto.FLOAT16 for t in half.graph.initializer),
        "initializers_float32": sum(t.data_type == onnx.TensorProto.FLOAT for t in half.graph.initializer),
        "cast_nodes_added": sum(n.op_type == "Cast" for n in half.graph.node) - in_graph["Cast"],
    }
    with onnxfile.replacing(ctx.output, ".fp16-") as (_, out):
        onnx.save_model(half, str(out))  # over 2 GB this raises rather than writing external data
        del half
        facts["check"] = _verify(out, Path(ctx.input), p.keep_io_types)
    facts.update(onnxfile.size_facts(ctx.input, ctx.output))
    seconds = time.perf_counter() - start
    facts["seconds"] = round(seconds, 3)
    ctx.log(f"fp16: {facts['size_bytes_before']:,} -> {facts['size_bytes_after']:,} bytes in {seconds:.1f} s")
    return facts


def _block_list(model, p: Params) -> list[str]:
    """The op types kept in float32: ORT's default list, or the params' (each a real op type). The
    input must have float32 weights to convert."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST

    from release.errors import ReleaseError, did_you_mean

    if not any(t.data_type == onnx.TensorProto.FLOAT for t in model.graph.initializer):
        raise ReleaseError("fp16: the input model has no float32 weights to convert (is it already "
                           "float16 or quantized?); convert an fp32 model instead.")
    block = list(DEFAULT_OP_BLOCK_LIST if p.op_block_list is None else p.op_block_list)
    if p.op_block_list is not None:
        known = {s.name for s in onnx.defs.get_all_schemas()}
        unknown = [op for op in block if op not in known]
        if unknown:
            raise ReleaseError(f"fp16.op_block_list: '{unknown[0]}' is not an ONNX op type."
                               f"{did_you_mean(unknown[0], known)}")
    return block


def _convert(model, p: Params, block: list[str]):
    """ORT's float16 converter, then the topological order onnx.checker wants."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(model, min_positive_val=p.min_positive_val,
                                    max_finite_val=p.max_finite_val, keep_io_types=p.keep_io_types,
                                    op_block_list=block)
    _sort_topologically(half.graph)
    return half


def _sort_topologically(graph) -> None:
    """Reorder graph.node so every node follows the producers of its inputs (Kahn, stable)."""
    from collections import deque

    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    producer = {out: idx for idx, node in enumerate(graph.node) for out in node.output}
    nodes = list(graph.node)
    # Subgraph bodies (If/Loop) may read outer tensors; count those as inputs of the outer node too.
    needs = []
    for node in nodes:
        names = set(node.input)
        subgraphs = [a.g for a in node.attribute if a.HasField("g")]
        subgraphs += [g for a in node.attribute for g in a.graphs]
        for sub in subgraphs:
            names |= {i for n in sub.node for i in n.input}
        needs.append({producer[n] for n in names if n not in available and n in producer})
    users: dict[int, list[int]] = {}
    for idx, deps in enumerate(needs):
        for dep in deps:
            users.setdefault(dep, []).append(idx)
    pending = [len(deps) for deps in needs]
    ready = deque(idx for idx, count in enumerate(pending) if count == 0)
    order = []
    while ready:
        idx = ready.popleft()
        order.append(idx)
        for user in users.get(idx, []):
            pending[user] -= 1
            if pending[user] == 0:
                ready.append(user)
    if len(order) != len(nodes):
        raise RuntimeError("fp16: the converted graph has a cycle; cannot sort it")
    sorted_nodes = [nodes[idx] for idx in order]
    copies = [type(n)() for n in sorted_nodes]
    for copy, node in zip(copies, sorted_nodes):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


FAILURES = Failures(
    load="fp16: ONNX Runtime cannot load the float16 model: {exc}\nAdd the failing op type to op_block_list.",
    run="fp16: ONNX Runtime cannot run the float16 model: {exc}",
    nonfinite=("fp16: output '{output}' is not finite in float16 (overflow?); keep the overflowing ops in "
               "float32 with op_block_list."),
)


def _verify(path, reference, keep_io_types: bool) -> dict:
    """Load the output in ORT, check its io types, and compare with fp32 on a seeded random input."""
    from release import onnxfile

    session = onnxfile.session(path, FAILURES.load)
    reference_session = onnxfile.session(reference)
    if keep_io_types:
        changed = [f"{a.name}: {a.type} -> {b.type}" for a, b in zip(
            reference_session.get_inputs() + reference_session.get_outputs(),
            session.get_inputs() + session.get_outputs()) if a.type != b.type]
        if changed:
            raise RuntimeError(f"fp16: keep_io_types is set but io types changed: {changed}")
    feeds = onnxfile.random_feeds(session.get_inputs())
    if feeds is None:
        return {"loaded": True, "ran": False}  # symbolic dims: no input we could invent is surely valid
    outputs = onnxfile.compare(session, reference_session, [feeds], FAILURES, dtypes=True)
    return {"loaded": True, "ran": True, "input": "random N(0,1)", "outputs_vs_fp32": outputs}
