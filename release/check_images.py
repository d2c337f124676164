"""The model check's run of the adapter on real data: one image of each split the build reads.

Evaluation, calibration and training all go image -> `preprocess` -> the network -> `postprocess`
(release/adapter.py). A wrong shape or dtype, rows of the wrong length, a class index the dataset
does not have or an exception in the user's code would otherwise show after strip and export had
run (or a training run), as a traceback. Here each is one problem located at the manifest field
(model.adapter, model.input_shape, model.builder), naming the split and the image, what was
received, what was expected, and the fix. The model has the checkpoint's weights when the check
could load them (release/check.py), else the builder's random ones: the row checks are about shapes
and types (an (N, 5) array is refused even when N is 0), and how many detections each image kept
is handed back, so that release/check.py warns when real weights find nothing anywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from release.manifest import Manifest

SPLITS = ("eval", "train", "calibration", "tuning")
ROWS = "one row per detection: x, y, w, h (original image pixels), score, class index"


def splits_read(manifest: Manifest) -> list[str]:
    """The splits the build reads (eval always, and what its stages read), but those a generator
    that trains the model makes: that generator runs after the check, so its data is not there."""
    from release import stages
    from release.generate import owner

    used = {"eval"} | {s for pipeline in manifest.pipelines.values() for name, params in pipeline
                       for s in stages.load(name).reads(params)}
    trained = trained_generators({n: (spec.model_kwargs, manifest.generate[n].after)
                                  for n, (spec, _) in manifest.generators.items()})
    outs = {name: g.out for name, g in manifest.generate.items() if name in trained}
    return [s for s in SPLITS if s in used and getattr(manifest.data, s) is not None
            and owner(getattr(manifest.data, s).images, outs) is None]


def trained_generators(generators: dict[str, tuple[bool, list[str]]]) -> set[str]:
    """Generators (name -> (takes model.kwargs, after)) that train the model or come after one that
    does: they run after the model check."""
    trained: set[str] = set()
    for name, (model_kwargs, after) in generators.items():  # `after` names generators defined above
        if model_kwargs or any(a in trained for a in after):
            trained.add(name)
    return trained


def problems(manifest: Manifest, model, adapter, looked: list | None = None) -> list[tuple[tuple, str]]:
    """The adapter and the model on the first image of each split read; the problems of the first
    split that has any (one fix is usually the fix for every split). `looked` gets (image, number
    of detections postprocess kept) for each image that passed."""
    shape = list(manifest.model.input_shape)
    if shape[0] != 1:
        return [(("model", "input_shape"), f"got batch {shape[0]} in {shape}; the build runs the model on one "
                                           f"image at a time (the batch dimension preprocess's x gets is 1): "
                                           f"set model.input_shape to [1, {shape[1]}, {shape[2]}, {shape[3]}].")]
    for split in splits_read(manifest):
        ref = getattr(manifest.data, split)
        # annotations: a COCO json, or a folder of YOLO txt / VOC xml labels
        if not ref.images.is_dir() or (ref.annotations is not None and not ref.annotations.exists()):
            continue  # made by a generator that has not run (`release check` before a build)
        found = _on_split(manifest, model, adapter, split, looked if looked is not None else [])
        if found:
            return found
    return []


def _on_split(manifest: Manifest, model, adapter, split: str, looked: list) -> list[tuple[tuple, str]]:
    from release.data import open_split

    data = open_split(getattr(manifest.data, split), split=split)  # a broken split says so itself
    if not data.images:
        return []
    record = data.images[0]
    context = f"on data.{split}'s first image {data.image_path(record)}"
    x, meta, found = _preprocess(manifest, adapter, data.read_image(record), context)
    if found:
        return found
    outputs, found = _forward(manifest, model, x, context)
    if found:
        return found
    found, kept = _postprocess(manifest, adapter, outputs, meta, context, len(data.categories), split)
    if not found:
        looked.append((f"data.{split}'s {data.image_path(record)}", kept))
    return found


def _preprocess(manifest: Manifest, adapter, image, context: str) -> tuple[Any, Any, list]:
    import numpy as np

    from release.usercode import describe, where

    name, loc = manifest.model.adapter, ("model", "adapter")
    try:
        result = adapter.preprocess(image)
    except Exception as exc:  # noqa: BLE001 - the user's preprocess failed; say where, no traceback
        return None, None, [(loc, f"{name}.preprocess(image) raised{where(exc)} {context} (an RGB uint8 array "
                                  f"{tuple(image.shape)}): {describe(exc)}. Fix preprocess there.")]
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        return None, None, [(loc, f"{name}.preprocess returned {_kind(result)} {context}; expected a pair "
                                  f"(x, meta): x the network input (C, H, W) float32, meta what postprocess "
                                  f"needs (a dict). Return both.")]
    x, meta = result
    if not isinstance(x, np.ndarray):
        return None, None, [(loc, f"{name}.preprocess returned x as {_kind(x)} {context}; expected a numpy "
                                  f"array (C, H, W) float32 (the build adds the batch dimension and casts "
                                  f"it for PyTorch and ONNX Runtime). Return a numpy array.")]
    found = []
    want = tuple(manifest.model.input_shape[1:])
    if tuple(x.shape) != want:
        hint = ("It has a batch dimension: return one image, (C, H, W); the build adds the batch. "
                if x.ndim == 4 and tuple(x.shape[1:]) == want else
                "It is channels last: transpose to (C, H, W), e.g. x.transpose(2, 0, 1). "
                if x.ndim == 3 and tuple(x.shape) == (want[1], want[2], want[0]) else "")
        found.append((loc, f"{name}.preprocess gave x of shape {tuple(x.shape)} {context}; model.input_shape "
                           f"{list(manifest.model.input_shape)} needs (C, H, W) = {want}. {hint}Make preprocess "
                           f"resize to H x W with C channels first, or fix model.input_shape."))
    if not np.issubdtype(x.dtype, np.floating):
        found.append((loc, f"{name}.preprocess gave x of dtype {x.dtype} {context}; expected a float array "
                           f"(float32: the build casts it to float32 for PyTorch and to the ONNX input's float "
                           f"type, so an integer image would reach the model unnormalized). Return "
                           f"x.astype(np.float32), scaled as the model was trained."))
    return x, meta, found


def _forward(manifest: Manifest, model, x, context: str) -> tuple[list | None, list]:
    import numpy as np
    import torch

    from release.usercode import describe, where

    spec = manifest.model
    try:
        with torch.no_grad():
            out = model(torch.from_numpy(np.ascontiguousarray(x[None], dtype=np.float32)))
    except Exception as exc:  # noqa: BLE001 - the user's forward() failed on a real input
        return None, [(("model", "builder"), f"the model from {spec.builder} failed{where(exc)} on "
                                             f"{spec.adapter}.preprocess's x {tuple(x.shape)} {context}: "
                                             f"{describe(exc)}. Fix forward() there, or preprocess.")]
    outs = out if isinstance(out, (tuple, list)) else (out,)
    if not all(isinstance(o, torch.Tensor) for o in outs):
        return None, [(("model", "builder"), f"the model from {spec.builder} returned {_kind(out)} {context}; "
                                             f"the build exports and post-processes a tensor or a tuple/list of "
                                             f"tensors (named by the adapter's output_names). Return those.")]
    return [o.numpy() for o in outs], []


def _postprocess(manifest: Manifest, adapter, outputs: list, meta, context: str, classes: int,
                 split: str) -> tuple[list[tuple[tuple, str]], int]:
    """(problems, the number of detections kept)."""
    import numpy as np

    from release.usercode import describe, where

    name, loc = manifest.model.adapter, ("model", "adapter")
    try:
        dets = adapter.postprocess(outputs, meta)
    except Exception as exc:  # noqa: BLE001 - the user's postprocess failed; say where, no traceback
        shapes = ", ".join(str(tuple(o.shape)) for o in outputs)
        return [(loc, f"{name}.postprocess(outputs, meta) raised{where(exc)} {context} (outputs of shapes "
                      f"{shapes}): {describe(exc)}. Fix postprocess there.")], 0
    try:
        rows = np.asarray(dets, dtype=np.float64)
    except (TypeError, ValueError):
        return [(loc, f"{name}.postprocess returned {_kind(dets)} {context}, not a numeric array; expected an "
                      f"(N, 6) float array, {ROWS}.")], 0
    if rows.size == 0 and rows.ndim < 2:
        return [], 0  # nothing kept (an empty list): fine
    if rows.ndim != 2 or rows.shape[1] != 6:
        hint = (f" Its rows have {rows.shape[1]} values: is the score or the class index missing?"
                if rows.ndim == 2 else "")
        return [(loc, f"{name}.postprocess returned an array of shape {rows.shape} {context}; expected (N, 6), "
                      f"{ROWS}.{hint} Make postprocess return np.array of such rows.")], 0
    bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
    if bad.size:
        return [(loc, f"{name}.postprocess returned NaN or inf {context} (row {bad[0]}: {rows[bad[0]].tolist()}); "
                      f"every value must be finite. Check the box decoding in postprocess.")], 0
    return _classes(name, rows[:, 5], classes, split, context), len(rows)


def _classes(name: str, cls, classes: int, split: str, context: str) -> list[tuple[tuple, str]]:
    import numpy as np

    loc = ("model", "adapter")
    odd = np.flatnonzero(cls != np.round(cls))
    if odd.size:
        return [(loc, f"{name}.postprocess returned class index {cls[odd[0]]:g} (row {odd[0]}) {context}; the "
                      f"last column is a class index, an integer. Return the argmax class, not a score.")]
    if not classes:
        return []  # a folder of images without annotations: no classes to compare with
    out = np.flatnonzero((cls < 0) | (cls >= classes))
    if out.size:
        return [(loc, f"{name}.postprocess returned class index {int(cls[out[0]])} (row {out[0]}) {context}; "
                      f"data.{split} has {classes} classes, indices 0..{classes - 1} in the order of its "
                      f"categories (sorted by id). Return that index, not a category id, and check that the "
                      f"model's number of classes (model.kwargs) matches the dataset.")]
    return []


def _kind(value: Any) -> str:
    from release.adapter import kind_of

    shape = getattr(value, "shape", None)
    return f"{kind_of(value)} of shape {tuple(shape)}" if shape is not None else kind_of(value)
