"""What a stage is: one input artifact + typed params -> one output artifact in a fresh folder.

A stage module defines
    SPEC   = StageSpec(name=..., version=..., consumes=..., produces=..., tools=(...), reads=(...))
    Params = a StageParams subclass; its fields, defaults and descriptions are the docs
    def run(ctx: StageContext) -> dict   # writes ctx.output, returns facts for stage.json
and may implement any of the optional hooks in HOOKS, each marked with @hook and taking exactly the
parameters listed there. The registry checks this when it loads a stage (release.stages.load): a
hook with an unknown name, other parameters, or without the mark is an error at load, never a
function that silently does not run. A stage module imports nothing heavy at module level (torch,
onnx, onnxruntime load inside `run`), because the registry imports stage modules to check a
manifest on every `doit` invocation that plans; it never imports the manifest loader.

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

from release.params import StageParams
from release.plan import OUTPUT_FILE

if TYPE_CHECKING:  # numpy stays off the no-op path
    import numpy as np

__all__ = ["HOOKS", "OUTPUT_FILE", "Description", "Kind", "StageContext", "StageParams", "StageSpec", "hook"]

Kind = Literal["checkpoint", "weights", "onnx"]




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
    # The installed packages (distribution names) the stage calls: their versions join this stage's
    # fingerprint only, and the release.lock of a variant lists those of its stages.
    tools: tuple[str, ...] = ()
    # Appended to "Add data.<split>.annotations" when a stage needs labels it could do without.
    no_labels_hint: str = ""


# The optional hooks: name -> (its parameters in order, what it returns). One signature each.
HOOKS: dict[str, tuple[tuple[str, ...], str]] = {
    "reads": (("params",), "tuple[str, ...]: the data splits this configuration reads (default SPEC.reads)"),
    "needs_labels": (("params", "split"), "bool: whether it needs data.<split>'s annotations (default True)"),
    "code_refs": (("params",), "list[str]: import paths whose source joins the fingerprint (default none)"),
    "check": (("params", "manifest", "model"),
              "list[(field path under the step, message)]: problems found against a freshly built model, "
              "before anything trains"),
    "next_model": (("params", "manifest", "model"),
                   "the model the following steps receive, for their check (default: the same model)"),
    "describe": (("facts",), "Description | None: what the stage did, for the report and the model card"),
}


def hook(fn):
    """Mark a stage module's function as the implementation of the optional hook of its name."""
    fn.__stage_hook__ = True
    return fn


@dataclass(frozen=True)
class Description:
    """A stage's own account of its facts, shown by generic code (gate table, model card, tracking)."""

    summary: str                 # one line: the gate table's notes and the model card
    title: str = ""              # the model card's section heading for `card` (e.g. "Quantization")
    card: str = ""               # markdown for that section (may be empty)
    # What the stage makes of the model when it exists to make it faster (e.g. "INT8"): the gate
    # notes a variant that is then not faster than the float baseline (latency, not the format, decides).
    faster_as: str = ""


@dataclass
class StageContext:
    """Everything a stage's `run` may use. Built by the task runner; tests may build it directly."""

    input: Path
    out_dir: Path
    params: Any
    fingerprint: str = ""
    manifest: Any = None  # release.manifest.Inputs (model, data, source, path), when run from a build
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
