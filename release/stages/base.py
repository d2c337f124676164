"""What a stage is: one input artifact + typed params -> one output artifact in a fresh folder.

A stage module defines
    SPEC   = StageSpec(name=..., version=..., consumes=..., produces=..., reads=(...))
    Params = a pydantic model (extra="forbid"); its fields, defaults and descriptions are the docs
    def run(ctx: StageContext) -> dict   # writes ctx.output, returns facts for stage.json
and may define
    def reads(params) -> tuple[str, ...]             # narrows SPEC.reads by the params
    def code_refs(params) -> list[str]               # import paths whose code joins the fingerprint
    def needs_labels(params[, split]) -> bool        # False: the split(s) it reads need no annotations
    def check(params, manifest, model) -> list[tuple[tuple, str]]
        # (field path under the step, message) for each problem found against a freshly built model
        # (pattern matching no layer, an adapter without a loss); run by the `check` task before
        # any training, and by the stage itself before it starts.
and imports nothing heavy at module level (torch, onnx, onnxruntime load inside `run`), because the
registry imports stage modules to validate a manifest on every `doit` invocation.

Artifact kinds:
    checkpoint  the user's source file (any format strip understands)
    weights     a safetensors state dict; its metadata names the builder and layer shapes when a
                stage changed them (pruning, distillation), see release.weights.save_weights
    onnx        a single-file ONNX model
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # numpy stays off the no-op path
    import numpy as np

Kind = Literal["checkpoint", "weights", "onnx"]
OUTPUT_FILE: dict[str, str] = {"weights": "weights.safetensors", "onnx": "model.onnx"}


class StageParams(BaseModel):
    """Base for every stage's params: unknown keys are errors, not warnings."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class StageSpec:
    name: str
    version: int
    consumes: Kind
    produces: Kind
    summary: str
    # Data splits the stage reads (e.g. "calibration"); their content hash joins the fingerprint.
    reads: tuple[str, ...] = ()
    # Data splits read only to check the output (e.g. export's parity check): they must exist before
    # the stage runs, but do not change what it writes, so they stay out of the fingerprint.
    verifies: tuple[str, ...] = ()
    # Whether the model builder's and adapter's code joins the fingerprint.
    uses_model: bool = False
    # Helper modules (beyond the stage's own) whose code decides what it writes, e.g. release.training.
    code: tuple[str, ...] = ()


@dataclass
class StageContext:
    """Everything a stage's `run` may use. Built by the task runner; tests may build it directly."""

    input: Path
    out_dir: Path
    params: Any
    fingerprint: str = ""
    manifest: Any = None  # release.manifest.Manifest, when run from a build
    # Where sample inputs come from: split name -> iterable of network-ready arrays (1, C, H, W).
    # A build reads them from the manifest's data through the adapter; a unit test may pass arrays.
    sample_source: Callable[[str], Iterable[np.ndarray]] | None = None
    log: Callable[[str], None] = print
    spec_produces: str = "onnx"  # the stage's SPEC.produces: names the output file
    # A file that survives an interrupted run of this stage instance (same fingerprint): training
    # stages checkpoint into it and resume from it. None: no resuming (e.g. a unit test's context).
    resume: Path | None = None
    progress: bool = False  # show progress bars (a terminal, or RELEASE_PROGRESS set)
    # A folder shared by all builds of the project (artifacts/.cache) for results keyed by content,
    # e.g. calibration ranges. None: nothing is cached.
    cache_dir: Path | None = None

    @property
    def output(self) -> Path:
        return self.out_dir / OUTPUT_FILE[self.spec_produces]

    def samples(self, split: str) -> Iterator[np.ndarray]:
        """Network-ready inputs (1, C, H, W) float32 from a data split, through the adapter."""
        if self.sample_source is not None:
            yield from self.sample_source(split)
            return
        if self.manifest is None:
            raise RuntimeError("StageContext.samples needs a manifest or a sample_source")
        from release.usercode import sample_inputs

        yield from sample_inputs(self.manifest, split)
