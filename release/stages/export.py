"""export: safetensors weights -> a single-file ONNX model, checked and parity-tested.

Uses the TorchScript-based exporter (`dynamo=False`): on this torch it exports a small CNN in a
fraction of a second and writes one file, where the dynamo exporter took ~5 s and split the weights
into an external .data file; a device wants one file. After export: onnx.checker, an output parity
check against PyTorch on sample inputs, and ONNX Runtime's hardware-independent graph optimizations
saved offline, so that the device does not redo them at every start.

Parity is numpy.allclose's rule per output element, |onnx - torch| <= parity_atol + parity_rtol *
|torch|: float32 rounding is relative to the magnitude, so outputs in pixels differ by more, in
absolute terms, than scores in [0, 1]. A failure says which output, where, the two values, and what
kind of difference it looks like (rounding, a traced branch or shape, NaN).
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import Field

from release.stages.base import StageContext, StageParams, StageSpec

SPEC = StageSpec(
    name="export", version=1, consumes="weights", produces="onnx", uses_model=True, verifies=("eval",),
    code=("release.weights", "release.analysis"),
    summary="torch -> ONNX with checker, parity check and offline ORT optimization",
    tools=("torch", "torch-pruning", "onnx", "onnxruntime"),
)


class Params(StageParams):
    opset: int = Field(17, ge=17, le=23, description="ONNX opset version")
    optimize: Literal["none", "basic"] = Field(
        "basic", description="ONNX Runtime graph optimization saved into the file. 'basic' folds "
                             "constants and fuses Conv+BN and stays portable across execution providers")
    parity_samples: int = Field(4, ge=1, le=64, description="eval images used for the parity check")
    parity_atol: float = Field(1e-3, gt=0, description="parity: allowed |ONNX - PyTorch| of an output "
                                                       "element is parity_atol + parity_rtol * |PyTorch|")
    parity_rtol: float = Field(1e-3, ge=0, description="parity: relative part of the allowed difference "
                                                       "(float32 rounding grows with the magnitude, e.g. of "
                                                       "pixel coordinates); 0 checks parity_atol alone")


def run(ctx: StageContext) -> dict:
    import itertools
    import tempfile
    from pathlib import Path

    import onnx
    import onnxruntime as ort
    import torch

    from release.errors import ReleaseError
    from release.analysis import complexity, sparsity
    from release.usercode import load_adapter
    from release.weights import load_weights

    started = time.perf_counter()
    spec = ctx.manifest.model
    model = load_weights(spec, ctx.input)
    adapter = load_adapter(spec)
    output_names = list(getattr(adapter, "output_names", []))
    dummy = torch.zeros(spec.input_shape)
    with tempfile.TemporaryDirectory(dir=ctx.out_dir) as tmp:
        raw = Path(tmp) / "raw.onnx"
        with torch.no_grad():
            torch.onnx.export(model, (dummy,), str(raw), dynamo=False, opset_version=ctx.params.opset,
                              input_names=["input"], output_names=output_names or None,
                              do_constant_folding=True)
        onnx.checker.check_model(str(raw), full_check=True)
        if ctx.params.optimize == "basic":
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
            options.optimized_model_filepath = str(ctx.output)
            ort.InferenceSession(str(raw), options, providers=["CPUExecutionProvider"])
        else:
            raw.replace(ctx.output)

    session = ort.InferenceSession(str(ctx.output), providers=["CPUExecutionProvider"])
    samples = list(itertools.islice(ctx.samples("eval"), ctx.params.parity_samples))
    names = [o.name for o in session.get_outputs()]
    check = Parity(names, ctx.params.parity_atol, ctx.params.parity_rtol)
    for x in samples:
        with torch.no_grad():
            expected = model(torch.from_numpy(x))
        expected = expected if isinstance(expected, (tuple, list)) else (expected,)
        check.add([e.numpy() for e in expected], session.run(None, {session.get_inputs()[0].name: x}))
    problem = check.problem(len(samples))
    if problem:
        raise ReleaseError(problem)
    model_proto = onnx.load(str(ctx.output), load_external_data=False)
    counted = complexity(model, spec.input_shape)
    ctx.log(f"export: opset {ctx.params.opset}, {len(model_proto.graph.node)} nodes, "
            f"parity max |diff| {check.max_abs:.1e} (relative {check.max_rel:.1e}) on {len(samples)} images")
    return {
        "opset": ctx.params.opset, "nodes": len(model_proto.graph.node), "parity_max_abs_diff": check.max_abs,
        "parity_max_rel_diff": check.max_rel, "parity_samples": len(samples),
        "outputs": [o.name for o in model_proto.graph.output],
        "parameters": counted["parameters"], "macs": counted["macs"], "sparsity": sparsity(model)["sparsity"],
        "bytes": ctx.output.stat().st_size, "seconds": round(time.perf_counter() - started, 3),
    }


# A relative difference above this is not float32 rounding (eps 1.2e-7; long accumulations reach
# ~1e-5) but a different computation; below it, a failure means the tolerance is too tight.
ROUNDING_REL = 1e-3
CONTROL_FLOW = ("Look for data-dependent control flow in forward(): tracing runs it once on a zeros "
                "dummy input and records only the branch, loop count or Python number (.item(), int(), "
                "len()) that input gave; torch.onnx.export's TracerWarnings name the lines. Compute it "
                "with tensor ops (torch.where, masks) instead.")


class Parity:
    """ONNX vs PyTorch outputs over the parity samples: worst differences and the first problem.

    max_abs is the largest |onnx - torch|; max_rel the largest |onnx - torch| / max(|torch|, atol)
    (relative, without blowing up where PyTorch's value is ~0)."""

    def __init__(self, names: list[str], atol: float, rtol: float) -> None:
        self.names, self.atol, self.rtol = names, atol, rtol
        self.samples = 0
        self.max_abs = self.max_rel = 0.0
        self.worst: dict | None = None      # the element furthest beyond (or nearest to) its tolerance
        self.failing: dict[str, int] = {}   # output -> elements beyond tolerance
        self.elements: dict[str, int] = {}
        self.broken: str | None = None      # a count, shape or NaN problem: reported as is

    def _name(self, i: int) -> str:
        return self.names[i] if i < len(self.names) else f"output {i}"

    def add(self, expected: list, got: list) -> None:
        import numpy as np

        sample = self.samples
        self.samples += 1
        if self.broken:
            return
        if len(expected) != len(got):
            self.broken = (f"export: the ONNX model has {len(got)} outputs, PyTorch returned {len(expected)} "
                           f"(parity image {sample + 1}). The traced graph does not compute what forward() "
                           f"returns. {CONTROL_FLOW}")
            return
        for i, (e, g) in enumerate(zip(expected, got)):
            name = self._name(i)
            e, g = np.asarray(e, np.float64), np.asarray(g, np.float64)
            if e.shape != g.shape:
                self.broken = (f"export: output '{name}' has shape {tuple(g.shape)} in ONNX but "
                               f"{tuple(e.shape)} in PyTorch (parity image {sample + 1}). The traced graph "
                               f"fixed a shape that depends on the input. {CONTROL_FLOW}")
                return
            finite = np.isfinite(e) & np.isfinite(g)
            odd = ~finite & ~(e == g)  # NaN anywhere, or inf on one side only; equal infs agree
            if odd.any():
                self.broken = self._nonfinite(name, sample, e, g, odd)
                return
            diff = np.where(finite, np.abs(e - g), 0.0)
            tol = self.atol + self.rtol * np.abs(e)
            rel = diff / np.maximum(np.abs(e), self.atol)
            self.max_abs = max(self.max_abs, float(diff.max(initial=0.0)))
            self.max_rel = max(self.max_rel, float(rel.max(initial=0.0)))
            self.elements[name] = self.elements.get(name, 0) + e.size
            beyond = int((diff > tol).sum())
            if beyond:
                self.failing[name] = self.failing.get(name, 0) + beyond
            if e.size:
                k = int(np.argmax(diff / tol))
                ratio = float(diff.flat[k] / tol.flat[k])
                if self.worst is None or ratio > self.worst["ratio"]:
                    self.worst = {"ratio": ratio, "name": name, "sample": sample,
                                  "index": tuple(int(v) for v in np.unravel_index(k, e.shape)),
                                  "onnx": float(g.flat[k]), "torch": float(e.flat[k]), "diff": float(diff.flat[k]),
                                  "rel": float(rel.flat[k]), "tol": float(tol.flat[k]),
                                  "needed": max(float(diff.flat[k]) - self.atol, 0.0) / max(abs(float(e.flat[k])), 1e-30)}

    def _nonfinite(self, name: str, sample: int, e, g, odd) -> str:
        import numpy as np

        k = int(np.flatnonzero(odd)[0])
        at = tuple(int(v) for v in np.unravel_index(k, e.shape))
        where = (f"output '{name}' on parity image {sample + 1} has NaN/inf at {int(odd.sum())} of {e.size} "
                 f"elements (first at {at}: ONNX {g.flat[k]:g}, PyTorch {e.flat[k]:g})")
        if not np.isfinite(e[odd]).all():
            return (f"export: {where}. The PyTorch model itself outputs NaN/inf on this eval image, so "
                    f"this is not an export problem: check the weights (a diverged training run, a "
                    f"broken checkpoint) and the adapter's preprocessing.")
        return (f"export: {where}; PyTorch's values there are finite. That is not a traced branch: an operator is "
                f"undefined or overflows in the exported graph (exp/pow overflow, log or sqrt of a "
                f"negative, division by zero after a reordered computation). Re-export with "
                f"export.optimize: none to see whether ONNX Runtime's graph optimization causes it, and "
                f"compare that operator's inputs.")

    def problem(self, samples: int) -> str | None:
        """The failure message, or None when every output is within tolerance."""
        if self.broken:
            return self.broken
        if not self.failing or self.worst is None:
            return None
        w = self.worst
        others = [n for n in self.failing if n != w["name"]]
        count = (f"{self.failing[w['name']]} of {self.elements[w['name']]} elements over {samples} "
                 f"image{'s' if samples > 1 else ''}" + (f"; also beyond it: {', '.join(others)}" if others else ""))
        head = (f"export: ONNX output '{w['name']}' differs from PyTorch beyond the parity tolerance at "
                f"{count}. Worst: parity image {w['sample'] + 1}, index {w['index']}: ONNX {w['onnx']:.7g} vs "
                f"PyTorch {w['torch']:.7g}, |diff| {w['diff']:.3g} (relative {w['rel']:.2g}); allowed "
                f"parity_atol {self.atol:g} + parity_rtol {self.rtol:g} * |PyTorch| = {w['tol']:.3g}.")
        if w["rel"] <= ROUNDING_REL:
            suggest = float(f"{max(2 * w['needed'], 1e-7):.0e}")
            return (f"{head} A relative difference of {w['rel']:.1g} is float32 rounding (it grows with "
                    f"the magnitude of the output), not a different computation: raise export.parity_rtol "
                    f"to {suggest:g} or more.")
        tail = ("A relative difference this large is not float32 rounding: the exported graph computes "
                f"something else for these inputs. {CONTROL_FLOW}")
        if w["diff"] <= 10 * self.atol:
            tail += (" (The absolute difference is small: if the expected value is near zero because "
                     "large terms cancel, it may still be rounding; then raise export.parity_atol.)")
        return f"{head} {tail}"
