"""export: safetensors weights -> a single-file ONNX model, checked and parity-tested.

Uses the TorchScript-based exporter (`dynamo=False`): on this torch it exports a small CNN in a
fraction of a second and writes one file, where the dynamo exporter took ~5 s and split the weights
into an external .data file; a device wants one file. After export: onnx.checker, an output parity
check against PyTorch on sample inputs, and ONNX Runtime's hardware-independent graph optimizations
saved offline, so that the device does not redo them at every start.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import Field

from release.stages.base import StageContext, StageParams, StageSpec

SPEC = StageSpec(
    name="export", version=1, consumes="weights", produces="onnx", uses_model=True, checks=("eval",),
    summary="torch -> ONNX with checker, parity check and offline ORT optimization",
)


class Params(StageParams):
    opset: int = Field(17, ge=17, le=23, description="ONNX opset version")
    optimize: Literal["none", "basic"] = Field(
        "basic", description="ONNX Runtime graph optimization saved into the file. 'basic' folds "
                             "constants and fuses Conv+BN and stays portable across execution providers")
    parity_samples: int = Field(4, ge=1, le=64, description="eval images used for the parity check")
    parity_atol: float = Field(1e-3, gt=0, description="max absolute output difference ONNX vs PyTorch")


def run(ctx: StageContext) -> dict:
    import itertools
    import tempfile
    from pathlib import Path

    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    from release.errors import ReleaseError
    from release.model import complexity, load_adapter, load_weights, sparsity

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
    worst = 0.0
    for x in samples:
        with torch.no_grad():
            expected = model(torch.from_numpy(x))
        expected = expected if isinstance(expected, (tuple, list)) else (expected,)
        got = session.run(None, {session.get_inputs()[0].name: x})
        for e, g in zip(expected, got, strict=True):
            worst = max(worst, float(np.max(np.abs(e.numpy() - g))))
    if worst > ctx.params.parity_atol:
        raise ReleaseError(f"export: ONNX outputs differ from PyTorch by up to {worst:.2e} "
                           f"(export.parity_atol is {ctx.params.parity_atol:g}). The exported graph does not "
                           f"compute what the model does; check for data-dependent control flow in forward().")
    model_proto = onnx.load(str(ctx.output), load_external_data=False)
    counted = complexity(model, spec.input_shape)
    ctx.log(f"export: opset {ctx.params.opset}, {len(model_proto.graph.node)} nodes, "
            f"parity max |diff| {worst:.1e} on {len(samples)} images")
    return {
        "opset": ctx.params.opset, "nodes": len(model_proto.graph.node), "parity_max_abs_diff": worst,
        "parity_samples": len(samples), "outputs": [o.name for o in model_proto.graph.output],
        "parameters": counted["parameters"], "macs": counted["macs"], "sparsity": sparsity(model)["sparsity"],
        "bytes": ctx.output.stat().st_size, "seconds": round(time.perf_counter() - started, 3),
    }
