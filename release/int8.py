"""What INT8 must leave in float in a detector, found from the ONNX graph and from measurements.

- `decode_tail`: the nodes between the last convolution/matmul feeding each output and the output
  (sigmoids, box decoding, reshapes, concatenations). One INT8 scale for a tensor that holds both
  pixel coordinates and [0, 1] scores rounds every score to zero; these nodes stay float.
- `mixed_outputs`: outputs whose channels span very different ranges, measured on real inputs
  (coordinates beside scores). For those, the head convolutions that feed them stay float too.
- `sensitivity`: per layer group (a Conv with its Relu, or one node), how much output error its
  quantization introduces, measured on calibration images against the float model, for the greedy
  fallback to float in the quantize stage.

onnx and numpy only (onnxruntime where a model is run); nothing here imports torch.
"""

from __future__ import annotations

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


def fallback_search(n: int, max_trials: int, holds) -> tuple[list[int], int | None]:
    """How many of `n` ranked groups to keep in float: try 1, 2, 4, ... until `holds(k)`, then bisect
    between the last failure and that success, in at most `max_trials` calls. Returns the k tried,
    in order, and the fewest that held (None when none did)."""
    tried: list[int] = []
    bad, ok = 0, None
    while len(tried) < max_trials and n > 0:
        k = min(max(1, 2 * bad), n) if ok is None else (bad + ok) // 2
        if k <= bad or (ok is not None and k >= ok):
            break
        tried.append(k)
        if holds(k):
            ok = k
        else:
            bad = k
            if ok is None and k == n:
                break  # every group is float and it still does not hold
    return tried, ok


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


FUSED = ("Relu", "Clip")  # ORT's QDQ quantizer folds these into the range of the op before them


def layer_groups(graph, candidates: list[str]) -> list[list[str]]:
    """Candidates as layer groups: a Relu/Clip with its Conv/MatMul/Gemm (which QDQ quantization
    fuses into one quantized output) is one group; any other node is a group of its own."""
    producer = {out: node for node in graph.node for out in node.output}
    users: dict[str, int] = {}
    for node in graph.node:
        for t in node.input:
            users[t] = users.get(t, 0) + 1
    by_name = {n.name: n for n in graph.node}
    wanted, grouped, groups = set(candidates), set(), []
    for name in candidates:
        node = by_name[name]
        before = producer.get(node.input[0]) if node.op_type in FUSED and node.input else None
        if before is not None and before.op_type in ANCHORS and before.name in wanted and users[node.input[0]] == 1:
            groups.append([before.name, name])
            grouped |= {before.name, name}
    groups += [[n] for n in candidates if n not in grouped]
    return groups


def output_error(expected: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> float:
    """How far quantized outputs are from float ones, over samples: per output, the relative error
    per channel averaged over channels (so destroyed scores beside coordinates count, however small
    their share of the norm), and the worst output."""
    worst = 0.0
    for i in range(len(expected[0])):
        sums: dict = {}
        for e, g in zip(expected, got):
            f, q = np.asarray(e[i], np.float64), np.asarray(g[i], np.float64)
            if f.shape != q.shape or f.size == 0:
                continue  # a per-image shape (in-graph NMS): not comparable element by element
            for axis in sorted({min(1, f.ndim - 1), f.ndim - 1}) if f.ndim else [None]:
                pair = _channel_sums(f, q, axis)
                key = (axis, pair.shape)
                sums[key] = pair if key not in sums else sums[key] + pair
        for d, n in sums.values():
            live = n > n.max() * 1e-12
            if live.any():
                worst = max(worst, float(np.mean(np.sqrt(d[live] / n[live]))))
    return worst


def sensitivity(float_path, quantize_with, groups: list[list[str]], input_name: str,
                samples: list[np.ndarray], log=lambda message: None) -> list[dict]:
    """Rank layer groups by the error their quantization introduces at the model's outputs: for
    each group, the output error of the quantized model minus that of the same model with only
    this group in float, on `samples` against the float model. `quantize_with(extra_float_nodes)`
    returns the path of a model quantized with those nodes also in float."""
    import onnxruntime as ort

    def outputs(path) -> list[list[np.ndarray]]:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return [session.run(None, {input_name: x}) for x in samples]

    reference = outputs(float_path)
    base = output_error(reference, outputs(quantize_with([])))
    ranked = []
    for i, group in enumerate(groups):
        error = output_error(reference, outputs(quantize_with(group)))
        ranked.append({"nodes": group, "node": group[-1], "error_without": round(error, 6),
                       "added": round(base - error, 6)})
        if (i + 1) % 10 == 0:
            log(f"quantize: sensitivity {i + 1}/{len(groups)} layer groups")
    ranked.sort(key=lambda r: (-r["added"], r["node"]))
    return ranked


def _channel_sums(f: np.ndarray, q: np.ndarray, axis) -> np.ndarray:
    """Per channel along `axis`: [sum of squared error, sum of squared value] (2, C)."""
    if axis is None:
        return np.array([[float(np.sum((q - f) ** 2))], [float(np.sum(f ** 2))]])
    f2, d2 = np.moveaxis(f, axis, 0), np.moveaxis(q - f, axis, 0)
    c = f2.shape[0]
    return np.stack([np.sum(d2.reshape(c, -1) ** 2, axis=1), np.sum(f2.reshape(c, -1) ** 2, axis=1)])
