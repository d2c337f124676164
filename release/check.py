"""Checks of a manifest against its model, run before anything trains.

Some mistakes can only be seen with the model built: a prune pattern that matches no layer, a
student whose outputs do not fit the teacher's, an adapter without the loss a training stage needs,
an adapter whose preprocess or postprocess does not fit the model or the data. The `check` task (and
`release check`) builds the model once from its builder, with random weights (so a misspelled or
missing `model.kwargs` argument is a located error here, with did-you-mean against the builder's
signature, not a traceback in strip), runs the adapter and the model on one real image of each
split the build reads (release/check_images.py), and asks every stage that defines
`check(params, manifest, model)`. This runs after the generators that make the data it reads and
before any generator that trains the model (generate:, model_kwargs) and before any stage, so a
typo costs seconds, not a training run; it imports torch, so it is a task of its own, up to date
until the manifest, the model or adapter code, or the data it read changes.
"""

from __future__ import annotations

from release import stages
from release.manifest import Manifest, raise_problems


def run(manifest: Manifest) -> int:
    """Raise ManifestError listing every problem found (with manifest lines); else the steps checked."""
    from release import check_images
    from release.errors import ReleaseError

    found: list[tuple[tuple, str]] = []
    checked, seen = 0, set()
    found.extend(_checkpoint(manifest))
    base = _build(manifest)
    adapter = _adapter(manifest)  # every variant's mAP goes through it, whatever its stages
    found.extend(check_images.problems(manifest, base, adapter))  # on the fresh model, before any stage's check
    for variant, pipeline in manifest.pipelines.items():
        model = None  # what the current step receives: the manifest's model, or a student after distill
        for i, (name, params) in enumerate(pipeline):
            module = stages.load(name)
            if not module.has("check"):
                continue
            model = model if model is not None else base
            key = repr([(n, p.model_dump_json()) for n, p in pipeline[: i + 1]])
            loc = ("variants", variant, i, name)
            if key not in seen:  # a prefix shared by several variants is reported once
                seen.add(key)
                checked += 1
                found.extend(((*loc, *where), message) for where, message in module.check(params, manifest, model))
            try:
                model = module.next_model(params, manifest, model)  # a student after distill
            except ReleaseError:
                break  # reported by the stage's own check
    raise_problems(manifest, found)
    return checked


def _checkpoint(manifest: Manifest) -> list[tuple[tuple, str]]:
    """source.checkpoint, when no generator makes it, is a file: loading a manifest lets it be
    missing (a plan, `doit list` or `release check` may come before it), the build does not."""
    from release.generate import owner

    path = manifest.source.checkpoint
    if owner(path, {name: g.out for name, g in manifest.generate.items()}) is not None or path.is_file():
        return []
    return [(("source", "checkpoint"), f"no such file: {path}. Point it at the trained checkpoint to release "
                                       f"(relative to the project folder), or make it with a generator "
                                       f"(generate:).")]


def _build(manifest: Manifest):
    from release.errors import ReleaseError
    from release.usercode import build_model, import_object

    spec = manifest.model
    try:
        builder = import_object(spec.builder, "model.builder")
    except ReleaseError as exc:
        raise_problems(manifest, [(("model", "builder"), str(exc))])
    raise_problems(manifest, _kwargs_problems(builder, spec.builder, spec.kwargs))
    try:
        return build_model(spec)
    except ReleaseError as exc:
        raise_problems(manifest, [(("model", "builder"), str(exc))])
    except Exception as exc:  # noqa: BLE001 - the user's builder failed; say where
        raise_problems(manifest, [(("model", "kwargs"), f"model.builder({spec.kwargs}) failed: "
                                                        f"{type(exc).__name__}: {exc}")])


def _adapter(manifest: Manifest):
    """The adapter against its protocol (release/adapter.py) and model.adapter_kwargs, located."""
    from release.errors import ReleaseError
    from release.manifest_code import adapter_problem
    from release.usercode import load_adapter

    try:
        return load_adapter(manifest.model)
    except ReleaseError as exc:
        raise_problems(manifest, [adapter_problem(exc)])


def _kwargs_problems(builder, name: str, kwargs: dict) -> list[tuple[tuple, str]]:
    """model.kwargs against the builder's signature, each problem located at its argument."""
    from release.usercode import keyword_problems

    return [(("model", "kwargs", key) if key else ("model", "kwargs"), message)
            for key, message in keyword_problems(builder, name, kwargs, "model.kwargs")]
