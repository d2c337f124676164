"""max_map_drop: the nodes whose quantization adds the most error fall back to float until the mAP
measured on a tuning split (never data.eval) is within the drop of the float model's.

- `layer_groups`: the candidates as the quantizer sees them (a Conv with its Relu is one quantized
  output), so a fallback never splits what QDQ quantization fuses.
- `sensitivity`: per layer group, how much output error its quantization introduces, measured on
  calibration images against the float model (the error without it in float minus with it).
- `fallback_search`: how many of the ranked groups to keep in float: doubling, then bisecting,
  within max_trials quantizations, each scored by mAP on the tuning split.
- `tune`: the three above for one stage run, with the curve of every trial for the model card.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from release.stages.quantize.keep_float import ANCHORS

if TYPE_CHECKING:
    import numpy as np

    from release.stages.quantize import Job

FUSED = ("Relu", "Clip")  # ORT's QDQ quantizer folds these into the range of the op before them


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
    import numpy as np

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
    import numpy as np

    if axis is None:
        return np.array([[float(np.sum((q - f) ** 2))], [float(np.sum(f ** 2))]])
    f2, d2 = np.moveaxis(f, axis, 0), np.moveaxis(q - f, axis, 0)
    c = f2.shape[0]
    return np.stack([np.sum(d2.reshape(c, -1) ** 2, axis=1), np.sum(f2.reshape(c, -1) ** 2, axis=1)])


def tune(job: Job, ranges_file) -> tuple[list[dict], dict]:
    """max_map_drop: fall back the nodes whose quantization adds the most error, doubling then
    bisecting their number, until the tuning mAP holds or max_trials quantizations were tried.
    Leaves the chosen model at job.out; returns the float list and the search's record."""
    p = job.ctx.params
    ref = _tuning_split(job.ctx)
    trials = _Trials(job, ranges_file, ref)
    job.ctx.log(f"quantize: tuning to a max mAP drop of {p.max_map_drop} on data.{p.tuning_split}")
    trials.fp32 = trials.evaluate(job.ctx.input)
    trials.curve.append(trials.measured(job.out, 0))
    record = {"split": p.tuning_split, "max_map_drop": p.max_map_drop, "fp32_map": trials.fp32}
    if trials.holds(trials.curve[0]):
        return job.kept, {**record, "met": True, "chosen": trials.curve[0], "curve": trials.curve, "ranked": []}
    ranked = trials.rank()
    _, ok = fallback_search(len(trials.order), p.max_trials, trials.trial)
    chosen = trials.choose(ok)
    extra = chosen["fallback_groups"]
    kept = job.kept + [{"node": n, "op": job.ops[n], "why": f"sensitivity rank {i + 1} (adds error {r['added']:.3g})"}
                       for i, r in enumerate(ranked[:extra]) for n in r["nodes"]]
    met = trials.holds(chosen)
    job.ctx.log(f"quantize: tuning {'met' if met else 'did NOT meet'} the drop with {extra} layer group(s) more "
                f"in float after {len(trials.curve) - 1} trial(s): mAP {chosen['map']:.4f} vs float {trials.fp32:.4f}")
    return kept, {**record, "met": met, "chosen": chosen, "curve": trials.curve, "ranked": ranked[:20]}


def _tuning_split(ctx):
    """The manifest's data.<tuning_split>, which must exist and be labelled."""
    from release.errors import ReleaseError

    p = ctx.params
    ref = getattr(ctx.manifest.data, p.tuning_split, None) if ctx.manifest is not None else None
    if ref is None or not ref.labelled:
        raise ReleaseError(f"quantize.max_map_drop measures mAP on data.{p.tuning_split}, which "
                           f"{'is not defined' if ref is None else 'has no annotations'}: add "
                           f"data.{p.tuning_split}{'' if ref is None else '.annotations'} or set tuning_split.")
    return ref


class _Trials:
    """One search's quantizations: the ranked layer groups, and the curve of what each trial measured
    (trial k keeps the k most error-adding groups in float beyond the stage's own selection)."""

    def __init__(self, job: Job, ranges_file, ref):
        self.job, self.ranges_file, self.ref = job, ranges_file, ref
        self.p = job.ctx.params
        self.excluded = [k["node"] for k in job.kept]
        self.floats = sum(k["op"] in job.registry for k in job.kept)  # not the ones never quantized anyway
        self.order: list[list[str]] = []  # layer groups, most error-adding first (see rank)
        self.curve: list[dict] = []
        self.paths = {0: Path(job.tmp) / "trial-0.onnx"}
        self.fp32 = 0.0

    def evaluate(self, path) -> float:
        from release.measure import accuracy

        return accuracy.evaluate(path, self.job.ctx.manifest.model, self.ref, split=self.p.tuning_split)["map"]

    def measured(self, path, extra: int) -> dict:  # extra: layer groups in float by sensitivity
        """A point of the curve. Its latency is indicative, measured in-stage (1 thread, median of 20
        runs, one round); the variant's real figure comes from the latency runner."""
        from release.measure import bench

        latency = bench.bench(str(path), threads=1, warmup=3, runs=20, provider="CPUExecutionProvider",
                              options={}, max_cv=float("inf"), rounds=1)["p50_ms"]
        return {"float_nodes": self.floats + sum(len(g) for g in self.order[:extra]), "fallback_groups": extra,
                "map": self.evaluate(path), "bytes": Path(path).stat().st_size, "latency_ms": round(latency, 3)}

    def holds(self, point: dict) -> bool:
        return self.fp32 - point["map"] <= self.p.max_map_drop

    def quantize(self, path, extra: list[str]):
        from release.stages.quantize import quantizer

        job = self.job
        quantizer.quantize_static(self.p, job.src, path, self.ranges_file, job.op_types, self.excluded + extra)
        return path

    def rank(self) -> list[dict]:
        """The candidates (quantized nodes), as layer groups ranked by the error they add; fills order."""
        import shutil

        job = self.job
        taken = set(self.excluded)
        candidates = [n.name for n in job.graph.node if n.op_type in job.op_types and n.name not in taken]
        groups = layer_groups(job.graph, candidates)
        probe = Path(job.tmp) / "probe.onnx"
        job.ctx.log(f"quantize: ranking {len(groups)} layer groups by the output error their quantization adds")
        ranked = sensitivity(job.ctx.input, lambda extra: self.quantize(probe, extra), groups, job.input_name,
                             job.samples[: self.p.sensitivity_samples], log=job.ctx.log)
        for r in ranked:
            r["op"] = "+".join(job.ops[n] for n in r["nodes"])
        self.order[:] = [r["nodes"] for r in ranked]
        shutil.copyfile(job.out, self.paths[0])
        return ranked

    def trial(self, k: int) -> bool:
        self.paths[k] = Path(self.job.tmp) / f"trial-{k}.onnx"
        self.quantize(self.paths[k], [n for g in self.order[:k] for n in g])
        self.curve.append(self.measured(self.paths[k], k))
        return self.holds(self.curve[-1])

    def choose(self, ok: int | None) -> dict:
        """The fewest fallbacks that hold; when none holds, the best mAP tried. Its model goes to job.out."""
        import shutil

        chosen = (next(c for c in self.curve if c["fallback_groups"] == ok) if ok is not None
                  else max(self.curve, key=lambda c: (c["map"], -c["fallback_groups"])))
        shutil.copyfile(self.paths[chosen["fallback_groups"]], self.job.out)
        return chosen
