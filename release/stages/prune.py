"""prune: weights -> weights with channels removed (structured) or weights zeroed (unstructured).

`method: channel` removes whole output channels with torch-pruning, which groups every layer that
must shrink together (a conv, its BN, the next convs' inputs, both sides of a concatenation), so the
network stays valid and the exported ONNX file is smaller and faster. The last Conv/Linear before
each model output (a detector's head outputs) is found from the autograd graph and never loses an
output channel. `round_to` keeps channel counts at multiples of e.g. 8 for SIMD kernels.

`method: magnitude` zeroes the smallest weights (torch.nn.utils.prune), globally or per layer. A
dense ONNX file is not smaller for it: the stage records the sparsity reached, and the size
measurement records the compressed (zip) size, which is what sparsity buys.

Both record the parameter count and MACs before and after.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Annotated, Literal

from pydantic import Field, model_validator

from release.stages.base import Description, StageContext, StageParams, StageSpec, hook
from release.surgery import prunable

SPEC = StageSpec(
    name="prune", version=1, consumes="weights", produces="weights", uses_model=True,
    code=("release.surgery", "release.weights", "release.analysis"),
    summary="structured channel pruning (torch-pruning) or unstructured magnitude sparsity",
    tools=("torch", "torch-pruning", "safetensors"),
)

Amount = Annotated[float, Field(gt=0, lt=1)]
DENSE_NOTE = ("sparsity alone does not shrink a dense ONNX file or speed up dense kernels: the zeros are "
              "stored and multiplied like any other weight; the zipped size shows what it saves")


class Params(StageParams):
    method: Literal["channel", "magnitude"] = Field(
        description="channel: remove whole channels (smaller, faster network); magnitude: zero single weights")
    amount: Amount | None = Field(None, description="fraction removed from every prunable layer, in (0, 1)")
    layers: dict[str, Amount] = Field(
        default_factory=dict, description="layer-name glob -> fraction, overriding `amount` for the layers it "
                                          "matches (e.g. {'down32.*': 0.5})")
    keep: list[str] = Field(default_factory=list, description="layer-name globs never pruned (the head "
                                                              "output layers are kept automatically)")
    scope: Literal["layer", "global"] | None = Field(
        None, description="layer: each layer loses `amount`; global: one ranking across layers. Default: "
                          "layer for channel (a global ranking may take most of a layer's channels and skip "
                          "others), global for magnitude")
    importance: Literal["l1", "l2", "bn_scale"] | None = Field(
        None, description="channel only: how channels are ranked (default l2: the group's weight norm)")
    round_to: int | None = Field(None, ge=2, le=64, description="channel only: keep channel counts at "
                                                                "multiples of this (8 suits SIMD kernels)")

    @model_validator(mode="after")
    def _coherent(self):
        if self.amount is None and not self.layers:
            raise ValueError("set `amount` (every layer) or `layers` (per layer-name pattern), or both")
        if self.method == "magnitude":
            wrong = [f for f in ("importance", "round_to") if f in self.model_fields_set]
            if wrong:
                raise ValueError(f"{' and '.join(wrong)} appl{'y' if len(wrong) > 1 else 'ies'} to method "
                                 f"'channel' only")
        return self

    @property
    def resolved_scope(self) -> str:
        return self.scope or ("layer" if self.method == "channel" else "global")


@hook
def check(params, manifest, model) -> list[tuple[tuple, str]]:
    from release.errors import closest

    names = list(prunable(model))
    problems = []
    for field, patterns in (("layers", list(params.layers)), ("keep", params.keep)):
        for pattern in patterns:
            if not any(fnmatchcase(n, pattern) for n in names):
                near = closest(pattern, names, n=3, cutoff=0.3)
                hint = f" Closest layers: {', '.join(near)}." if near else ""
                problems.append(((field, pattern), f"pattern '{pattern}' matches no prunable (Conv/Linear) layer "
                                                   f"of the model.{hint} Layer names are module paths, e.g. "
                                                   f"'{names[0] if names else 'backbone.0'}'; globs like 'backbone.*'."))
    if params.layers:
        from release.analysis import output_layers

        kept = set(output_layers(model, manifest.model.input_shape))
        kept |= {n for n in names if any(fnmatchcase(n, k) for k in params.keep)}
        for pattern in params.layers:
            matched = [n for n in names if fnmatchcase(n, pattern)]
            if matched and all(n in kept for n in matched):
                problems.append((("layers", pattern), f"pattern '{pattern}' matches only layers that are kept whole "
                                                      f"({', '.join(matched)}: head outputs or prune.keep), so it "
                                                      f"prunes nothing. Point it at other layers, or drop it."))
    return problems


def _amounts(params, names: list[str], kept: set[str]) -> dict[str, float]:
    """Layer -> fraction to remove; the last matching `layers` pattern wins over `amount`."""
    out = {}
    for name in names:
        if name in kept:
            continue
        amount = params.amount
        for pattern, value in params.layers.items():
            if fnmatchcase(name, pattern):
                amount = value
        if amount:
            out[name] = amount
    return out


def _channel(model, params, amounts: dict, kept: list[str], input_shape) -> dict:
    import torch
    import torch_pruning as tp

    modules = prunable(model)
    importance = {"l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
                  "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
                  "bn_scale": lambda: tp.importance.BNScaleImportance()}[params.importance or "l2"]()
    before = {n: m.weight.shape[0] for n, m in modules.items()}
    # Layers without an amount are left alone: ignored as roots (their inputs may still shrink when
    # the layer feeding them is pruned, which keeps the network consistent).
    ignored = [modules[n] for n in modules if n not in amounts]
    glob = params.resolved_scope == "global"
    # Global: one ranking prunes `amount` overall; layers matched by a `layers` pattern keep their own.
    ratios = {modules[n]: a for n, a in amounts.items()
              if not glob or any(fnmatchcase(n, pattern) for pattern in params.layers)}
    pruner = tp.pruner.MetaPruner(
        model, torch.zeros(tuple(input_shape)), importance=importance,
        pruning_ratio=(params.amount or 0.0) if glob else 0.0, pruning_ratio_dict=ratios or None,
        global_pruning=glob, ignored_layers=ignored,
        round_to=params.round_to)
    pruner.step()
    after = {n: m.weight.shape[0] for n, m in modules.items()}
    # torch-pruning skips a group it cannot prune (it would empty a layer, or holds an ignored one):
    # say which requested layers kept every channel instead of letting it pass unnoticed.
    return {"channels": {n: [before[n], after[n]] for n in modules if before[n] != after[n]},
            "not_narrowed": sorted(n for n in amounts if before[n] == after[n]), "kept": kept}


def _magnitude(model, params, amounts: dict, kept: list[str]) -> dict:
    import torch.nn.utils.prune as tprune

    from release.analysis import sparsity


    modules = prunable(model)
    if params.resolved_scope == "global":
        # One threshold across layers. Per-pattern amounts make no sense with one threshold, so
        # `layers` entries prune those layers on their own and the rest share the global ranking.
        own = {n: a for n, a in amounts.items() if any(fnmatchcase(n, p) for p in params.layers)}
        shared = [(modules[n], "weight") for n in amounts if n not in own]
        if shared and params.amount:
            tprune.global_unstructured(shared, pruning_method=tprune.L1Unstructured, amount=params.amount)
        for n, a in own.items():
            tprune.l1_unstructured(modules[n], "weight", amount=a)
    else:
        for n, a in amounts.items():
            tprune.l1_unstructured(modules[n], "weight", amount=a)
    for n in amounts:
        tprune.remove(modules[n], "weight")  # bake the mask in: a plain tensor with zeros
    per_layer = {n: round(float((modules[n].weight == 0).float().mean()), 4) for n in amounts}
    return {**sparsity(model), "layers_sparsity": per_layer, "kept": kept, "note": DENSE_NOTE}


def run(ctx: StageContext) -> dict:
    from release.errors import ManifestError, ReleaseError
    from release.analysis import complexity, output_layers, output_shapes
    from release.weights import builder_of, load_weights, save_weights

    spec, p = ctx.manifest.model, ctx.params
    model = load_weights(spec, ctx.input)
    problems = check(p, ctx.manifest, model)
    if problems:
        raise ManifestError(f"{ctx.manifest.path}: prune: " + "; ".join(m for _, m in problems))
    before = complexity(model, spec.input_shape)
    outputs = output_layers(model, spec.input_shape)
    if not outputs and not p.keep:
        raise ReleaseError("prune: found no Conv/Linear layer before the model's outputs, so the head output "
                           "layers cannot be kept whole automatically; name them in prune.keep")
    shapes_before = output_shapes(model, spec.input_shape)
    names = list(prunable(model))
    kept = [n for n in names if n in outputs or any(fnmatchcase(n, k) for k in p.keep)]
    amounts = _amounts(p, names, set(kept))
    if p.method == "channel":
        facts = _channel(model, p, amounts, kept, spec.input_shape)
    else:
        facts = _magnitude(model, p, amounts, kept)
    after = complexity(model, spec.input_shape)
    shapes_after = output_shapes(model, spec.input_shape)
    if shapes_after != shapes_before:
        raise ReleaseError(f"prune: the model's output shapes changed ({shapes_before} -> {shapes_after}); "
                           f"add the layers that produce the outputs to prune.keep")
    builder, kwargs = builder_of(spec, ctx.input)
    # `sparse` tells finetune to keep these zeros; a channel-pruned network is dense.
    save_weights(model, ctx.output, builder=builder, kwargs=kwargs,
                 **({"sparse": True} if p.method == "magnitude" else {}))
    fewer = 1 - after["macs"] / before["macs"] if before["macs"] else 0.0
    if p.method == "channel":
        ctx.log(f"prune: {len(facts['channels'])} layers narrowed, parameters {before['parameters']:,} -> "
                f"{after['parameters']:,}, MACs {before['macs'] / 1e6:.1f} M -> {after['macs'] / 1e6:.1f} M "
                f"({fewer:.0%} fewer); kept whole: {', '.join(kept)}")
    else:
        ctx.log(f"prune: {facts['sparsity']:.1%} of conv/linear weights are zero; {DENSE_NOTE}")
    return {"method": p.method, "scope": p.resolved_scope, **facts, "before": before, "after": after,
            "parameters": after["parameters"], "macs": after["macs"], "macs_reduction": round(fewer, 4)}


@hook
def describe(facts) -> Description:
    """What was pruned and what it saved; the card lists the layers. The note that zeros do not
    shrink a dense file is the gate's, for any variant with sparse weights (a sparse checkpoint
    needs no prune stage)."""
    kept = f"; kept whole: {', '.join(facts['kept'])}" if facts.get("kept") else ""
    if facts["method"] == "channel":
        before, after = facts["before"], facts["after"]
        skipped = facts.get("not_narrowed") or []
        summary = (f"channel pruning ({facts['scope']} scope): {len(facts['channels'])} layer(s) narrowed, "
                   f"parameters {before['parameters']:,} -> {after['parameters']:,}, MACs {before['macs'] / 1e6:.1f} M "
                   f"-> {after['macs'] / 1e6:.1f} M ({facts['macs_reduction']:.0%} fewer){kept}"
                   + (f"; asked but not narrowed: {', '.join(skipped)}" if skipped else ""))
        rows = [f"| `{n}` | {b} | {a} |" for n, (b, a) in facts["channels"].items()]
        head = ["| layer | output channels before | after |", "|---|---|---|"]
    else:
        layers = facts.get("layers_sparsity", {})
        summary = (f"magnitude pruning ({facts['scope']} scope): {facts['sparsity']:.1%} of conv/linear weights "
                   f"zeroed across {len(layers)} layer(s){kept}")
        rows = [f"| `{n}` | {z:.1%} |" for n, z in layers.items()]
        head = ["| layer | zero weights |", "|---|---|"]
    if len(rows) > 30:
        rows = rows[:30] + [f"| ... {len(rows) - 30} more |" + " |" * (head[0].count("|") - 2)]
    return Description(summary=summary, title="Pruning", card="\n".join(head + rows) + "\n\n" if rows else "")
