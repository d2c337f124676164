"""strip: a training checkpoint -> slim safetensors weights that load strictly into the model.

Loads safely (weights_only unless `source.trusted`), picks the EMA or raw copy, removes wrapper
prefixes, drops optimizer/scheduler/counters and the manifest's training-only patterns, checks the
result against the builder's model, and writes safetensors.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import Field

from release.stages.base import Description, StageContext, StageParams, StageSpec, hook

SPEC = StageSpec(
    name="strip", version=2, consumes="checkpoint", produces="weights", uses_model=True,
    code=("release.checkpoint", "release.pickle_scan", "release.weights"),
    summary="drop optimizer state and training-only weights; write safetensors",
    tools=("torch", "safetensors"),
)


class Params(StageParams):
    dtype: Literal["stored", "float32", "float16"] = Field(
        "stored", description="storage dtype of floating-point weights: 'stored' (the default) keeps the "
                              "checkpoint's (an fp16 checkpoint strips to fp16; until strip version 2 the "
                              "default converted to float32); float16 halves a float32 file; export casts "
                              "back to float32")


def run(ctx: StageContext) -> dict:
    from release import checkpoint
    from release.errors import CheckpointError
    from release.usercode import build_model
    from release.weights import write_weights

    started = time.perf_counter()
    source = ctx.manifest.source
    fmt, obj = checkpoint.read(ctx.input, source.format, source.trusted)
    state, facts = checkpoint.extract(ctx.input, fmt, obj, source.weights)
    others = checkpoint.other_copies(ctx.input, fmt, obj, facts) if source.drop else {}
    del obj
    state, dropped = checkpoint.drop(state, source.drop, ctx.input, facts, others)
    del others

    import fnmatch

    import torch

    torch.manual_seed(0)  # what allow_missing leaves at initialisation is the same in every build
    expected = build_model(ctx.manifest.model).state_dict()
    from_builder = sorted(k for k in expected if k not in state
                          and any(fnmatch.fnmatchcase(k, pat) for pat in source.allow_missing))
    if from_builder:
        ctx.log(f"strip: {len(from_builder)} parameter(s) are not in the checkpoint and keep the builder's "
                f"initialisation (source.allow_missing): {', '.join(from_builder[:6])}"
                f"{' ...' if len(from_builder) > 6 else ''}")
        state = {**state, **{k: expected[k] for k in from_builder}}
    report = checkpoint.mismatch_report(state, expected, ctx.input)
    if report:
        if not source.strict:
            report += ("\n  (source.strict is false: what is still missing is not covered by source.allow_missing "
                       f"{source.allow_missing})")
        raise CheckpointError(report)
    bad = [k for k, v in state.items() if v.dtype != expected[k].dtype and not
           (v.is_floating_point() and expected[k].is_floating_point())]
    if bad:
        raise CheckpointError(f"{ctx.input}: {len(bad)} tensor(s) have the wrong dtype, e.g. {bad[0]}: "
                              f"{state[bad[0]].dtype}, model expects {expected[bad[0]].dtype}. A quantized or "
                              f"damaged file? Give the float checkpoint the model was trained as.")
    out = {}
    for key, ref in expected.items():  # floating point: as stored, or params.dtype; else the model's dtype
        tensor = state[key].detach()
        dtype = checkpoint.written_dtype(tensor, ctx.params.dtype) if tensor.is_floating_point() else ref.dtype
        out[key] = tensor.to(dtype).contiguous()
    write_weights(out, ctx.output, source_format=fmt)

    size_before, size_after = ctx.input.stat().st_size, ctx.output.stat().st_size
    params = sum(t.numel() for t in out.values() if t.is_floating_point())
    ctx.log(f"strip: {fmt}, {facts['copy']} weights, {len(dropped)} training-only tensors dropped, "
            f"{size_before / 1e6:.2f} MB -> {size_after / 1e6:.2f} MB")
    return {
        **facts, "dropped": dropped, "tensors": len(out), "parameters": params,
        "bytes_before": size_before, "bytes_after": size_after,
        "ratio": round(size_before / size_after, 3), "trusted": source.trusted, "from_builder": from_builder,
        "seconds": round(time.perf_counter() - started, 3),
    }


@hook
def describe(facts) -> Description | None:
    """Weights that did not come from the checkpoint (source.strict: false, allow_missing): a line
    in the model card's provenance list (the "Provenance" title puts it there) and the gate notes."""
    filled = facts.get("from_builder") or []
    if not filled:
        return None
    shown = ", ".join(filled[:6]) + (" ..." if len(filled) > 6 else "")
    return Description(
        summary=f"{len(filled)} parameter(s) are not from the checkpoint: they keep the builder's initialisation "
                f"(source.strict: false, allow_missing): {shown}",
        title="Provenance",
        card=f"- **Not from the checkpoint**: {len(filled)} parameter(s) kept the builder's initialisation "
             f"(`source.strict: false`, `allow_missing`): {', '.join(filled)}.\n")
