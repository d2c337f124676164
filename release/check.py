"""Checks of a manifest against its model, run before anything trains.

Some mistakes can only be seen with the model built: a prune pattern that matches no layer, a
student whose outputs do not fit the teacher's, an adapter without the loss a training stage needs,
an adapter whose preprocess or postprocess does not fit the model or the data. The `check` task (and
`release check`) builds the model once from its builder (so a misspelled or missing `model.kwargs`
argument is a located error here, with did-you-mean against the builder's signature, not a
traceback in strip), loads source.checkpoint into it as strip does (safely: weights_only unless
`source.trusted`; a checkpoint that does not fit is a located problem at source.checkpoint), runs
the adapter and the model on one real image of each split the build reads
(release/check_images.py), and asks every stage that defines `check(params, manifest, model)`.
This runs after the generators that make the data it reads and before any generator that trains
the model (generate:, model_kwargs) and before any stage, so a typo costs seconds, not a training
run; a checkpoint such a generator makes is not there yet, so the model keeps the builder's random
weights and the check says so. With real weights, a postprocess that keeps no detection on any
image checked is a warning (a real model can find nothing on one image), naming the images and the
adapter's score threshold. It imports torch, so it is a task of its own, up to date until the
manifest, the model or adapter code, the checkpoint, or the data it read changes.
"""

from __future__ import annotations

import fnmatch

from release import stages
from release.manifest import Manifest, raise_problems


def run(manifest: Manifest, log=None) -> int:
    """Raise ManifestError listing every problem found (with manifest lines); else the steps checked.
    `log` (print by default) gets what the check says besides problems: weights not loaded, and a
    warning when the real weights detect nothing on every image checked."""
    from release import check_images
    from release.errors import ReleaseError

    log = log or _print
    found: list[tuple[tuple, str]] = []
    checked, seen = 0, set()
    found.extend(_checkpoint(manifest))
    base = _build(manifest)
    loaded = False
    if not found:
        problem, loaded = load_checkpoint(manifest, base, log)
        found.extend(problem)
    adapter = _adapter(manifest)  # every variant's mAP goes through it, whatever its stages
    looked: list[tuple[str, int]] = []
    found.extend(check_images.problems(manifest, base, adapter, looked))  # before any stage's check
    if loaded and not found:
        _no_detections(manifest, adapter, looked, log)
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


def _print(message: str) -> None:
    print(message, flush=True)


def load_checkpoint(manifest: Manifest, model, log) -> tuple[list[tuple[tuple, str]], bool]:
    """source.checkpoint into the checked model as strip reads it (release/stages/strip.py): never
    unpickled unless `source.trusted` (release.checkpoint.read), the EMA or raw copy, source.drop
    removed, source.allow_missing kept at the builder's initialisation, the rest strictly.
    (problems, loaded); not loaded, and said, when a generator that runs after the check makes it."""
    from release import checkpoint
    from release.check_images import trained_generators
    from release.errors import CheckpointError
    from release.generate import owner

    source, path = manifest.source, manifest.source.checkpoint
    maker = owner(path, {name: g.out for name, g in manifest.generate.items()})
    trained = trained_generators({n: (spec.model_kwargs, manifest.generate[n].after)
                                  for n, (spec, _) in manifest.generators.items()})
    if maker in trained or not path.is_file():
        log(f"check: source.checkpoint {path} is made by generate.{maker}, which runs after this check: the model "
            f"is checked with the builder's random weights, not the checkpoint's (detections are not judged)"
            if maker in trained else f"check: source.checkpoint {path} is not there yet (generate.{maker} makes "
            f"it): the model is checked with the builder's random weights (detections are not judged)")
        return [], False
    try:
        fmt, obj = checkpoint.read(path, source.format, source.trusted)
        state, facts = checkpoint.extract(path, fmt, obj, source.weights)
        others = checkpoint.other_copies(path, fmt, obj, facts) if source.drop else {}
        del obj
        state, _ = checkpoint.drop(state, source.drop, path, facts, others)
        expected = model.state_dict()
        state = {**state, **{k: v for k, v in expected.items() if k not in state
                             and any(fnmatch.fnmatchcase(k, pat) for pat in source.allow_missing)}}
        report = checkpoint.mismatch_report(state, expected, path)
        if report:
            raise CheckpointError(report)
        model.load_state_dict(state, strict=True)
    except CheckpointError as exc:
        return [(("source", "checkpoint"), str(exc))], False
    log(f"check: the model is checked with the weights of {path} ({fmt}, {facts['copy']} copy)")
    return [], True


# Attributes adapters commonly keep their score cut-off in (the demo's: score_threshold).
THRESHOLDS = ("score_threshold", "score_thresh", "conf_threshold", "conf_thres", "confidence_threshold",
              "threshold")


def _no_detections(manifest: Manifest, adapter, looked: list[tuple[str, int]], log) -> None:
    """A warning (not a problem: a real model can find nothing on one image) when postprocess kept
    no detection on every image checked, with the checkpoint's weights."""
    if not looked or any(n for _, n in looked):
        return
    threshold = next(((a, v) for a in THRESHOLDS if isinstance(v := getattr(adapter, a, None), (int, float))
                      and not isinstance(v, bool)), None)
    cut = ""
    if threshold:
        name, value = threshold
        cut = f"; the adapter's score threshold: {name}={value:g}" + \
            (" (model.adapter_kwargs)" if name in manifest.model.adapter_kwargs else "")
    images = ", ".join(image for image, _ in looked)
    log(f"check: warning: {manifest.model.adapter}.postprocess kept no detection on {images} with the weights "
        f"of {manifest.source.checkpoint}{cut}. If the model should find objects there, check the score "
        f"threshold, preprocess's normalisation and the checkpoint (the EMA or raw copy: source.weights).")


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
