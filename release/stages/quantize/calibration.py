"""Static quantization's activation ranges: the calibration samples, the calibrator, and the cache.

We call ORT's `create_calibrator` ourselves because `quantize_static` never forwards `num_bins`
(with ORT's default 128 bins the entropy search has a single candidate and returns the min/max
range), and pass the ranges to `quantize_static` as a calibration cache file (`save_tensors_data`).
`CalibMaxIntermediateOutputs` discards what it collected instead of merging it, so we call
`collect_data` once per chunk of samples, which does merge: memory stays bounded.

Ranges are cached by content (the model's bytes, the images, the method and its options, ORT's
version) in the stage store's `.cache/calibration/` (artifacts/.cache/calibration/ unless the
manifest's `store:` or RELEASE_STORE names another store), so a change of format or of float
fallback, which do not change ranges, does not recalibrate. Each entry is sealed with its hash
(release.ownership): one damaged or edited in the store, or restored from a CI cache unsealed, is
calibrated again, never used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from release.stages.base import StageContext

# Every calibrated activation of every sample in a chunk is held in memory until the chunk is merged.
CALIBRATION_CHUNK = 8
CALIBRATION_CACHE_VERSION = 1


class _ChunkReader:
    """A CalibrationDataReader over a list of arrays (ORT only calls get_next)."""

    def __init__(self, input_name: str, arrays: list):
        self._items = iter(arrays)
        self._name = input_name

    def get_next(self):
        x = next(self._items, None)
        return None if x is None else {self._name: x}


def method(p):
    """ORT's CalibrationMethod for the stage's `calibration` param."""
    from onnxruntime.quantization.calibrate import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[p.calibration]


def options(p) -> dict:
    """The create_calibrator extra_options that matter for the chosen method."""
    if p.calibration == "minmax":
        return {}
    return {"num_bins": p.num_bins, **({"percentile": p.percentile} if p.calibration == "percentile" else {})}


def samples(ctx: StageContext, input_name: str, shape: list) -> list:
    """At most max_samples calibration inputs, checked against the model's input shape."""
    import itertools

    import numpy as np

    from release.errors import ReleaseError

    p = ctx.params

    def checked(x):
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != len(shape) or any(d is not None and d != s for d, s in zip(shape, x.shape)):
            raise ReleaseError(f"quantize: a calibration sample has shape {x.shape}, but the model input "
                               f"'{input_name}' expects {['?' if d is None else d for d in shape]}.")
        return x

    found = [checked(x) for x in itertools.islice(ctx.samples("calibration"), p.max_samples)]
    if not found:
        raise ReleaseError("quantize: static quantization needs calibration images, but the "
                           "'calibration' split yielded none. Add images to it or use mode: dynamic.")
    return found


def calibrate(ctx: StageContext, src, tmp, input_name: str, shape: list, op_types: list[str],
              inputs: list | None = None):
    """Activation ranges over the calibration samples, computed chunk by chunk (bounded memory)."""
    import contextlib
    import io
    import itertools

    from onnxruntime.quantization.calibrate import create_calibrator
    from tqdm import tqdm

    p = ctx.params
    if inputs is None:
        inputs = samples(ctx, input_name, shape)
    ctx.log(f"quantize: calibrating ({p.calibration}) on {len(inputs)} images")
    calibrator = create_calibrator(src, op_types, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                   calibrate_method=method(p), extra_options=options(p))
    stream = iter(inputs)
    # ORT's histogram collector print()s on every chunk; keep the build log readable.
    with tqdm(total=len(inputs), desc="calibrate", unit="img", disable=None if ctx.progress else True,
              leave=False) as bar, contextlib.redirect_stdout(io.StringIO()):
        while chunk := list(itertools.islice(stream, CALIBRATION_CHUNK)):
            calibrator.collect_data(_ChunkReader(input_name, chunk))
            bar.update(len(chunk))
        return calibrator.compute_data()


def ranges(ctx: StageContext, src, tmp, input_name: str, shape: list, inputs: list, op_types: list[str]):
    """The calibration ranges file, from the cache when the same model, images and method were
    calibrated before (format and float fallback do not change ranges), else computed and cached.
    Returns the file and the facts that describe the calibration."""
    from onnxruntime.quantization.calibrate import load_tensors_data, save_tensors_data

    from release import ownership

    p = ctx.params
    digest = _cache_key(p, src, inputs, op_types)
    info = {"method": p.calibration, "samples": len(inputs), **options(p), "key": digest[:16]}
    cached = Path(ctx.cache_dir) / "calibration" / f"{digest}.json" if ctx.cache_dir else None
    # An entry not sealed for its key (edited, damaged, or being written by a parallel stage) is
    # calibrated again and written anew (atomically), never used.
    if cached is not None and ownership.is_sealed(str(cached), digest):
        try:
            load_tensors_data(cached)
            ctx.log(f"quantize: calibration ranges from the cache ({digest[:12]})")
            return cached, {**info, "cached": True}
        except Exception:  # noqa: BLE001 - unreadable for any reason: calibrate
            pass
    path = Path(tmp) / "calibration.json"
    save_tensors_data(calibrate(ctx, src, tmp, input_name, shape, op_types, inputs), path)
    if cached is not None:
        from release.atomic import atomic_file

        with atomic_file(cached) as handle:  # builds share the cache: never a half-written entry
            handle.write(path.read_bytes())
        ownership.seal_file(cached, digest)
    return path, {**info, "cached": False}


def _cache_key(p, src, inputs: list, op_types: list[str]) -> str:
    import hashlib

    import onnxruntime

    key = hashlib.sha256()
    key.update(f"v{CALIBRATION_CACHE_VERSION} ort {onnxruntime.__version__} {p.calibration} "
               f"{sorted(options(p).items())} {op_types} chunk {CALIBRATION_CHUNK}".encode())
    key.update(Path(src).read_bytes())
    for x in inputs:
        key.update(x.tobytes())
    return key.hexdigest()
