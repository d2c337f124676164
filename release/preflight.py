"""Checks of a manifest against its model, run before anything trains.

Some mistakes can only be seen with the model built: a prune pattern that matches no layer, a
student whose outputs do not fit the teacher's, an adapter without the loss a training stage needs.
The `check` task (and `release validate`) builds the model once from its builder, with random
weights, and asks every stage that defines `preflight(params, manifest, model)`. This runs before
the demo training and before any stage, so a typo costs seconds, not a training run; it imports
torch, so it is a task of its own, up to date until the manifest or the code changes.
"""

from __future__ import annotations

from release import stages
from release.manifest import Manifest, raise_problems


def check(manifest: Manifest) -> int:
    """Raise ManifestError listing every problem found (with manifest lines); else the steps checked."""
    from release.errors import ReleaseError

    found: list[tuple[tuple, str]] = []
    checked, seen = 0, set()
    base = None
    for variant, pipeline in manifest.pipelines.items():
        model = None  # what the current step receives: the manifest's model, or a student after distill
        for i, (name, params) in enumerate(pipeline):
            module = stages.load(name)
            if not hasattr(module, "preflight"):
                continue
            if base is None:
                base = _build(manifest)
            model = model if model is not None else base
            key = repr([(n, p.model_dump_json()) for n, p in pipeline[: i + 1]])
            loc = ("variants", variant, i, name)
            if key not in seen:  # a prefix shared by several variants is reported once
                seen.add(key)
                checked += 1
                found.extend(((*loc, *where), message) for where, message in module.preflight(params, manifest, model))
            if name == "distill":
                try:
                    model = module.build_student(params, manifest)
                except ReleaseError:
                    break  # reported by distill's own preflight
    raise_problems(manifest, found)
    return checked


def _build(manifest: Manifest):
    from release.errors import ReleaseError
    from release.model import build_model

    try:
        return build_model(manifest.model)
    except ReleaseError as exc:
        raise_problems(manifest, [(("model", "builder"), str(exc))])
    except Exception as exc:  # noqa: BLE001 - the user's builder failed; say where
        raise_problems(manifest, [(("model", "kwargs"), f"model.builder({manifest.model.kwargs}) failed: "
                                                        f"{type(exc).__name__}: {exc}")])
