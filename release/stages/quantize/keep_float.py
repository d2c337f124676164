"""What INT8 must leave in float in a detector, found from the ONNX graph and from measurements.

- `decode_tail`: the nodes between the last convolution/matmul feeding each output and the output
  (sigmoids, box decoding, reshapes, concatenations). One INT8 scale for a tensor that holds both
  pixel coordinates and [0, 1] scores rounds every score to zero; these nodes stay float.
- `mixed_outputs`: outputs whose channels span very different ranges, measured on real inputs
  (coordinates beside scores). For those, the head convolutions that feed them stay float too.
- `auto_float`: the two above as the stage's `keep_float: auto`; `float_selection`: what the
  keep_float_ops and keep_float_nodes params name, with a located error for a typo.

Each kept node is recorded as {"node", "op", "why"}: the stage's facts, its log line and the model
card say why a node stayed float. onnx and numpy only (onnxruntime where a model is run).
"""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

ANCHORS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# One scale per tensor: a channel whose range is 32x smaller than the largest gets under 8 of the
# 256 INT8 levels (under 3 bits). Beyond that the small channels (scores) are noise.
MIXED_RATIO = 32.0
# ... when its largest channel goes beyond what probabilities and scores reach.
MIXED_FLOOR = 2.0


def name_nodes(model) -> int:
    """Give every unnamed node, and every node whose name an earlier node has, a unique name
    (quantization keeps nodes in float by name); returns how many were (re)named."""
    taken = {n.name for n in model.graph.node if n.name}
    seen: set[str] = set()
    named = 0
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            name = f"{node.name or node.op_type}_{i}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
            named += 1
        seen.add(node.name)
    return named


def decode_tail(graph) -> dict[str, dict]:
    """Per graph output: {'tail': node names from the output back to (not including) the last
    Conv/ConvTranspose/MatMul/Gemm on every path, 'heads': those last anchor nodes}."""
    producer = {out: node for node in graph.node for out in node.output}
    found = {}
    for output in graph.output:
        tail, heads, seen, stack = [], [], set(), [output.name]
        while stack:
            node = producer.get(stack.pop())
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type in ANCHORS:
                heads.append(node.name)
                continue
            tail.append(node.name)
            stack.extend(i for i in node.input if i)
        found[output.name] = {"tail": tail, "heads": heads}
    return found


def channel_spread(arrays: list[np.ndarray]) -> tuple[float, int | None]:
    """The largest ratio between channel ranges (max |x| per channel) along axis 1 or the last axis
    of an output, over samples, and the axis it was found on."""
    import numpy as np

    arrays = [np.asarray(a, np.float64) for a in arrays]
    if not arrays or any(a.shape != arrays[0].shape or a.size == 0 for a in arrays) or arrays[0].ndim < 2:
        return 1.0, None  # shapes that vary per image (in-graph NMS) or carry no channels
    stacked = np.stack(arrays)
    axis = 2 if arrays[0].ndim == 4 else stacked.ndim - 1  # NCHW: the channels; (N, A, K): the last
    n = stacked.shape[axis]
    if not 2 <= n <= 4096:
        return 1.0, None
    peak = np.max(np.abs(np.moveaxis(stacked, axis, 0)).reshape(n, -1), axis=1)
    if peak.max() <= MIXED_FLOOR:
        return 1.0, None  # probabilities only: a class that rarely fires is not a mixed range
    live = peak[peak > peak.max() * 1e-6]  # a channel that is always zero carries no range
    return float(peak.max() / live.min()), axis - 1


def mixed_outputs(model_path, input_name: str, samples: list[np.ndarray]) -> dict[str, dict]:
    """Outputs of the float model whose channel ranges differ by more than MIXED_RATIO on `samples`."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    runs = [session.run(None, {input_name: x}) for x in samples]
    found = {}
    for i, name in enumerate(names):
        ratio, axis = channel_spread([r[i] for r in runs])
        if ratio > MIXED_RATIO:
            found[name] = {"ratio": round(ratio, 1), "axis": axis}
    return found


def auto_float(graph, mixed: dict, already: list[dict]) -> list[dict]:
    """keep_float: auto: every output's decode tail, and the heads of mixed-range outputs."""
    ops = {n.name: n.op_type for n in graph.node}
    seen = {k["node"] for k in already}
    found = []
    for output, part in decode_tail(graph).items():
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


def float_selection(graph, p) -> list[dict]:
    """Nodes kept in float by keep_float_nodes and keep_float_ops (of the stage's Params `p`), with
    why; typos raise."""
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
