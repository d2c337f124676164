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
    from release.model import build_model

    found: list[tuple[tuple, str]] = []
    checked, seen = 0, set()
    model = None
    for variant, pipeline in manifest.pipelines.items():
        for i, (name, params) in enumerate(pipeline):
            module = stages.load(name)
            if not hasattr(module, "preflight"):
                continue
            if model is None:
                try:
                    model = build_model(manifest.model)
                except ReleaseError as exc:
                    raise_problems(manifest, [(("model", "builder"), str(exc))])
                except Exception as exc:  # noqa: BLE001 - the user's builder failed; say where
                    raise_problems(manifest, [(("model", "kwargs"), f"model.builder({manifest.model.kwargs}) "
                                                                    f"failed: {type(exc).__name__}: {exc}")])
            key = (name, params.model_dump_json())
            if key in seen:  # a prefix shared by several variants: reported once
                continue
            seen.add(key)
            checked += 1
            for loc, message in module.preflight(params, manifest, model):
                found.append((("variants", variant, i, name, *loc), message))
    raise_problems(manifest, found)
    return checked
