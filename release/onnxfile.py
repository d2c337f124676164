"""ONNX files as the ONNX -> ONNX stages write and check them (quantize, fp16, simplify).

- `replacing`: a scratch folder beside the stage's output and the path to write the model at in it;
  the model takes its final name (os.replace) only when the block ends without an error, so a check
  that fails leaves no output, and the scratch files (preprocessed models, probes) never stay.
- `verify` / `compare`: the converted model against the float model it came from, run in ONNX
  Runtime on the same inputs (sample images, or a seeded random input of the model's shape). Each
  stage passes its own `Failures`, so every message says which stage and what to try.
- `size_facts`: bytes before and after, as every such stage records them.

Nothing heavy at import: onnxruntime and numpy load inside the functions. Nothing here imports the
stage layer (release.stages), so any code may use it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# ONNX Runtime's names of the float input types a random input is made for; others stay float32.
FLOAT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64"}


@dataclass(frozen=True)
class Failures:
    """What a stage says when its converted model fails the check: `load` and `run` get ONNX
    Runtime's error as {exc}, `nonfinite` the output's name as {output}."""

    load: str
    run: str
    nonfinite: str


@contextlib.contextmanager
def replacing(final: Path, prefix: str = ".onnx-") -> Iterator[tuple[Path, Path]]:
    """Yield (scratch folder, path to write the model at), both beside `final`; on success the model
    replaces `final` in one rename, and the scratch folder goes whatever happens."""
    final = Path(final)
    with tempfile.TemporaryDirectory(prefix=prefix, dir=final.parent) as tmp:
        out = Path(tmp) / final.name
        yield Path(tmp), out
        os.replace(out, final)


def size_facts(before: Path, after: Path) -> dict:
    """The input's and output's sizes in bytes, and their ratio."""
    size_in, size_out = Path(before).stat().st_size, Path(after).stat().st_size
    return {"size_bytes_before": size_in, "size_bytes_after": size_out, "size_ratio": round(size_out / size_in, 4)}


def session(path: Path, failure: str | None = None):
    """An ONNX Runtime CPU session; with `failure`, any error loading it is a ReleaseError saying that."""
    import onnxruntime as ort

    from release.errors import ReleaseError

    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - any ORT failure means the artifact is unusable
        if failure is None:
            raise
        raise ReleaseError(failure.format(exc=exc)) from exc


def random_feeds(inputs, symbolic_batch: int | None = None) -> dict | None:
    """A seeded N(0, 1) input for each of a session's inputs (float16 where it takes float16), or None
    when a dimension is symbolic: no input we could invent is surely valid. With `symbolic_batch`, a
    symbolic first dimension takes that size instead."""
    import numpy as np

    shapes = []
    for meta in inputs:
        shape = list(meta.shape)
        if symbolic_batch is not None and shape and not isinstance(shape[0], int):
            shape[0] = symbolic_batch
        if any(not isinstance(d, int) or d <= 0 for d in shape):
            return None
        shapes.append(shape)
    rng = np.random.default_rng(0)
    return {meta.name: rng.standard_normal(shape).astype(FLOAT_TYPES.get(meta.type, "float32"))
            for meta, shape in zip(inputs, shapes)}


def verify(path: Path, reference: Path, feeds: list[dict] | None, failures: Failures, *,
           symbolic_batch: int | None = None, dtypes: bool = False) -> dict[str, dict] | None:
    """Load the converted model at `path` and compare it with `reference` on `feeds` (None: one seeded
    random input, see random_feeds). Returns compare's per-output figures, or None when the model
    loaded but there was no input to run it on."""
    converted = session(path, failures.load)
    if feeds is None:
        feed = random_feeds(converted.get_inputs(), symbolic_batch)
        if feed is None:
            return None
        feeds = [feed]
    return compare(converted, session(reference), feeds, failures, dtypes=dtypes)


def compare(converted, reference, feeds: list[dict], failures: Failures, *, dtypes: bool = False) -> dict[str, dict]:
    """Run both sessions on every feed. Per output of the converted model: the largest |converted -
    reference| (in float32) and the reference's largest |value| over the feeds, and with `dtypes` the
    converted output's dtype. The reference gets each feed in the float type its inputs take (a
    float16 model is compared with its float32 source on the same values). Raises ReleaseError when
    the converted model cannot run or an output of it is not finite."""
    import numpy as np

    from release.errors import ReleaseError

    takes = {meta.name: FLOAT_TYPES.get(meta.type) for meta in reference.get_inputs()}
    names = [meta.name for meta in converted.get_outputs()]
    outputs: dict[str, dict] = {}
    for feed in feeds:
        try:
            got = converted.run(None, feed)
        except Exception as exc:  # noqa: BLE001
            raise ReleaseError(failures.run.format(exc=exc)) from exc
        expected = reference.run(None, {k: _as(v, takes.get(k)) for k, v in feed.items()})
        for name, a, b in zip(names, got, expected):
            if not np.all(np.isfinite(a)):
                raise ReleaseError(failures.nonfinite.format(output=name))
            diff = float(np.max(np.abs(a.astype(np.float32) - np.asarray(b, np.float32)), initial=0.0))
            peak = float(np.max(np.abs(b), initial=0.0))
            seen = outputs.get(name)
            figures = {"dtype": str(a.dtype)} if dtypes else {}
            figures.update(max_abs_diff=diff if seen is None else max(seen["max_abs_diff"], diff),
                           ref_max_abs=peak if seen is None else max(seen["ref_max_abs"], peak))
            outputs[name] = figures
    return outputs


def _as(value: Any, dtype: str | None):
    return value if dtype is None else value.astype(dtype)
