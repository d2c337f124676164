"""finetune: weights -> weights trained further with the adapter's loss on data.train.

On CPU, deterministic for a seed, with a progress bar, and resumable: an interrupted run continues
from its last checkpoint (see release/training.py). Usable alone or after `prune`; the zeros of a
magnitude-pruned input stay zero. Records the loss curve and the parameter count and MACs before
and after.
"""

from __future__ import annotations

from release.stages.base import StageContext, StageSpec, hook
from release.training import TrainParams

SPEC = StageSpec(
    name="finetune", version=1, consumes="weights", produces="weights", uses_model=True, reads=("train",),
    code=("release.training", "release.optim", "release.data", "release.weights", "release.analysis"),
    summary="train further with the adapter's loss on data.train (after prune, or alone)",
    tools=("torch", "torch-pruning", "safetensors"),
)


class Params(TrainParams):
    pass


@hook
def check(params, manifest, model) -> list[tuple[tuple, str]]:
    from release.usercode import load_adapter

    adapter = load_adapter(manifest.model)
    if not callable(getattr(adapter, "loss", None)):
        return [((), f"model.adapter {manifest.model.adapter} has no loss(outputs, targets) method, and "
                      f"finetune trains with it. Add one (see release/adapter.py), or remove finetune.")]
    return []


def run(ctx: StageContext) -> dict:
    from release.errors import ManifestError
    from release.analysis import complexity, sparsity
    from release.usercode import load_adapter
    from release.weights import builder_of, load_weights, save_weights, weights_metadata
    from release.training import fit, load_train_set

    spec = ctx.manifest.model
    model = load_weights(spec, ctx.input)
    problems = check(ctx.params, ctx.manifest, model)
    if problems:
        raise ManifestError(f"{ctx.manifest.path}: " + "; ".join(m for _, m in problems))
    before = complexity(model, spec.input_shape)
    adapter = load_adapter(spec)
    data = load_train_set(ctx.manifest.data.train, adapter)

    def loss_fn(net, x, targets):
        return adapter.loss(net(x), targets)

    # A magnitude-pruned input says so in its metadata: its zeros are kept. Other exact zeros are
    # just weights (a builder may zero-initialise some) and train freely.
    sparse = bool(weights_metadata(ctx.input).get("sparse"))
    trained, facts = fit(model, data, ctx.params, loss_fn, resume=ctx.resume, key=ctx.fingerprint,
                         keep_zeros=sparse, label="finetune", progress=ctx.progress, log=ctx.log)
    builder, kwargs = builder_of(spec, ctx.input)
    save_weights(trained, ctx.output, builder=builder, kwargs=kwargs, **({"sparse": True} if sparse else {}))
    after = complexity(trained, spec.input_shape)
    ctx.log(f"finetune: {facts['steps']} steps, loss {facts['loss_start']:.3f} -> {facts['loss_final']:.3f}, "
            f"{facts['seconds_per_step']:.3f} s/step")
    return {**facts, "before": before, "after": after, "parameters": after["parameters"], "macs": after["macs"],
            **({"sparsity": sparsity(trained)["sparsity"]} if facts["kept_sparse"] else {})}
