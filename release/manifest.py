"""The release manifest: schema, variants and loading (YAML reading in manifest_yaml, located
problems in manifest_problems, path checks in manifest_paths).

Every problem is reported at once, each with the file, the line, the field path, the value received
and what was expected; unknown keys and stage names suggest the closest valid one. Paths in a
manifest are relative to the project root (the folder `doit` runs in), like DVC's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from release.errors import ManifestError
from release.manifest_code import _check_user_code
from release.manifest_generators import _check_generators
from release.manifest_paths import _absolute, _check_paths, _resolve_data
from release.manifest_variants import _check_data_needs, _parse_variants
from release.manifest_problems import _describe, _Problems, _short
from release.manifest_yaml import _line_index, _parse, _read
from release.recipes import resolve  # noqa: F401 - manifest.resolve(name, root) is where callers look
from release.targets import Profile
from release.usercode import IMPORT_PATH

SCHEMA_VERSION = 1
FOLDER_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # one safe path component: no '/', no leading '.'
FOLDER_NAME_RULE = ("one folder name of letters, digits, '_', '.' and '-', starting with a letter or digit "
                    "(no '/', no '..', not an absolute path)")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataRef(Strict):
    """One split of data, in the format users have it: COCO json, YOLO txt or Pascal VOC xml (the
    layouts: [datasets.md](datasets.md)). Image ids, class order and category ids are the format's
    (YOLO: images by file name, classes in `names` order); the report and the model card list the
    class names in the model's output order."""

    format: Literal["auto", "coco", "yolo", "voc"] = Field(
        "auto", description="auto detects: annotations a .json file -> coco, a folder of .xml -> voc, of .txt -> "
                            "yolo; no annotations: yolo when names is given and <image stem>.txt label files are "
                            "beside the images or in the sibling labels folder (images/<split> -> "
                            "labels/<split>), else images only")
    annotations: Path | None = Field(None, description="coco: the annotations json; voc: the folder of .xml files; "
                                                       "yolo: the labels folder (may be left out: found as auto "
                                                       "does); left out of a split only images are read from "
                                                       "(calibration, distill with labels: false)")
    images: Path = Field(description="folder holding the images (coco: the json's file names are relative to it; "
                                     "voc: JPEGImages)")
    names: list[str] | Path | None = Field(
        None, description="class names in index order, for yolo (required) and voc (else the sorted names "
                          "found): a list, or the path of a data.yaml (its names: list or index: name) or of a "
                          "classes.txt (one per line)")
    limit: int | None = Field(None, gt=0, description="use only the first N images by id")

    @field_validator("names", mode="before")
    @classmethod
    def _names_shape(cls, v):
        """One message for a value of the wrong kind (not one per member of the union)."""
        if v is None or isinstance(v, (str, Path)):
            return v
        if isinstance(v, list) and all(isinstance(n, (str, int)) and not isinstance(n, bool) for n in v):
            return [str(n) for n in v]
        raise ValueError("names is a list of class names in index order, or the path of a data.yaml or a "
                         "classes.txt")

    @field_validator("names")
    @classmethod
    def _distinct_names(cls, v):
        if isinstance(v, list):
            if not v or any(not n.strip() for n in v):
                raise ValueError("give at least one class name, none of them empty")
            repeated = sorted({n for n in v if v.count(n) > 1})
            if repeated:
                raise ValueError(f"class names must be distinct: {', '.join(repeated[:5])} repeated")
        return v

    @model_validator(mode="after")
    def _format_fields(self):
        if self.format in ("coco", "voc") and self.annotations is None:
            raise ValueError(f"format: {self.format} needs annotations: "
                             + ("the COCO json" if self.format == "coco" else "the folder of VOC .xml files"))
        if self.format == "yolo" and self.names is None:
            raise ValueError("format: yolo needs names: YOLO labels hold class indices only (a list, a data.yaml "
                             "or a classes.txt)")
        if self.format == "coco" and self.names is not None:
            raise ValueError("a COCO json names its categories itself: leave names out")
        return self

    @property
    def labelled(self) -> bool:
        """Whether boxes are read with the images: annotations given, or YOLO labels found beside them."""
        return self.annotations is not None or self.format == "yolo"


class Data(Strict):
    train: DataRef | None = Field(None, description="training split (fine-tuning, distillation)")
    calibration: DataRef | None = Field(None, description="calibration split for static quantization")
    tuning: DataRef | None = Field(None, description="labelled split on which quantize's max_map_drop search "
                                                     "measures mAP (quantize.tuning_split: tuning); never eval")
    # Whether data.eval is labelled is checked once its format is known (manifest_paths._resolve_data).
    eval: DataRef = Field(description="evaluation split: every variant's mAP is measured on it")


class Source(Strict):
    checkpoint: Path = Field(description="the trained checkpoint to release")
    format: Literal["auto", "state_dict", "lightning", "mmdet", "yolov5", "safetensors"] = Field(
        "auto", description="auto detects; yolov5 = pickled model objects (YOLOv5 / Ultralytics), needs trusted")
    weights: Literal["auto", "ema", "raw"] = Field(
        "auto", description="which copy to release when the checkpoint holds an EMA copy; auto prefers EMA")
    drop: list[str] = Field(default_factory=list, description="glob patterns of training-only parameters")
    trusted: bool = Field(False, description="allow full pickle loading (runs code from the file!)")
    strict: bool = Field(True, description="every model parameter must come from the checkpoint; false needs "
                                           "allow_missing")
    allow_missing: list[str] = Field(
        default_factory=list, description="with strict: false, glob patterns of model parameters that may be "
                                          "absent from the checkpoint and keep the builder's (seeded) "
                                          "initialisation, e.g. a new head; recorded in the model card")

    @model_validator(mode="after")
    def _explicit_leniency(self):
        if not self.strict and not self.allow_missing:
            raise ValueError("strict: false needs allow_missing: [patterns] naming what may be missing "
                             "(leniency is never implicit)")
        if self.strict and self.allow_missing:
            raise ValueError("allow_missing applies with strict: false only")
        return self


class ModelSpec(Strict):
    builder: str = Field(pattern=IMPORT_PATH, description="package.module:function returning an nn.Module")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    adapter: str = Field(pattern=IMPORT_PATH, description="package.module:Class with pre/post-processing and loss")
    adapter_kwargs: dict[str, Any] = Field(default_factory=dict)
    input_shape: tuple[int, int, int, int] = Field(description="N, C, H, W of the exported model's input")

    @field_validator("input_shape")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(d <= 0 for d in v):
            raise ValueError("every dimension must be a positive integer")
        return v


class Target(Profile):
    """A profile by name (built in, or under `targets:`), with any of its fields overridden here."""

    name: str = Field(description="device profile: rpi4, rpi5, jetson-orin-cpu, x86-avx2, host, or one "
                                  "defined under `targets:`")


class Budget(Strict):
    size_mb: float | None = Field(None, gt=0, description="max size of the deployable file(s), MB = 10^6 bytes")
    latency_ms: float | None = Field(None, gt=0, description="max median latency on the target")
    min_map: float | None = Field(None, ge=0, le=1, description="min COCO mAP@[.5:.95] of the ONNX artifact on data.eval")
    latency_from: Literal["any", "device"] = Field(
        "any", description="device: the latency budget passes only on a figure measured on the target "
                           "(ssh runner); a host figure or an estimate fails it")
    max_map_drop_vs_release: float | None = Field(
        None, ge=0, le=1, description="most mAP@[.5:.95] a variant may lose against the previously published "
                                      "release's (absolute, e.g. 0.005); passes with a note when nothing is "
                                      "published yet; not compared (noted) when data.eval differs from the "
                                      "release's")
    max_latency_increase_vs_release: float | None = Field(
        None, ge=0, description="most a variant's median latency may grow against the previously published "
                                "release's, as a fraction (0.10 = 10% slower)")
    max_size_increase_vs_release: float | None = Field(
        None, ge=0, description="most a variant's deployable size may grow against the previously published "
                                "release's, as a fraction (0.05 = 5% larger)")

    @model_validator(mode="after")
    def _latency_from_needs_a_budget(self):
        if self.latency_from == "device" and self.latency_ms is None:
            raise ValueError("latency_from: device applies to the latency budget: set latency_ms too")
        return self


class Measure(Strict):
    warmup: int = Field(10, ge=0, description="untimed runs before timing")
    runs: int = Field(50, ge=30, description="timed runs; the median and p90 are reported")
    max_cv: float = Field(0.1, gt=0, description="a round whose coefficient of variation is above this is "
                                                 "measured again; the figure is marked noisy if it stays above")
    rounds: int = Field(3, ge=1, le=10, description="most rounds of `runs` timings per measurement")


class Tracking(Strict):
    uri: str | None = Field(None, description="MLflow tracking URI; MLFLOW_TRACKING_URI overrides it; "
                                              "unset: the embedded store under artifacts/mlflow/")
    required: bool = Field(False, description="an unreachable tracking server fails the build "
                                              "(default: warn, queue, upload at the next build)")
    alias: str = Field("candidate", pattern=r"^[A-Za-z][\w-]*$",
                       description="Model Registry alias given to the released version")


class Store(Strict):
    """Where stage outputs, measurements and the calibration cache are kept, laid out as under
    artifacts/ (stages/, measure/, .cache/calibration/), so that CI can restore them from its cache.
    Everything in it is named by content and verified before it is reused. RELEASE_STORE, when set,
    wins over it. [ci-nightly.md](ci-nightly.md#the-stage-store)."""

    path: Path = Field(description="the store folder: artifacts/ (the default), a folder under it, or a folder "
                                   "outside the project (the one place outside artifacts/ the build writes); "
                                   "never inside or around data or a checkpoint the build reads")


GENERATOR_NAME = r"^[A-Za-z][A-Za-z0-9_-]*$"  # it names the doit task generate:<name>


class Generator(Strict):
    """A task that makes one of the build's inputs (a dataset, a trained checkpoint) before anything
    reads it: the function `run` names writes `out`, which the build commits atomically and marks as
    its own. A data split or `source.checkpoint` inside `out` takes its fingerprint from the
    generator, and the tasks that read it wait for it. How to write one:
    [extending.md](extending.md#a-new-generator)."""

    run: str = Field(pattern=IMPORT_PATH, description="package.module:function marked `@generator` "
                                                      "(release.generate), called as `fn(out, **kwargs)`")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="passed to the function, checked against "
                                                                     "its signature; the paths it declares are "
                                                                     "relative to the project root")
    out: Path = Field(description="the folder or file it writes, inside artifacts/; replaced as a whole when "
                                  "its fingerprint changes")
    after: list[str] = Field(default_factory=list, description="generators defined above whose outputs it reads: "
                                                               "they run first and their fingerprints join its own")


class Inputs(Strict):
    """The slice of a manifest that stages, measurements and publishing read (from the plan record,
    resolved, never by parsing the YAML again): the model code, the data and the source."""

    model: ModelSpec
    data: Data
    source: Source
    path: Path = Field(description="the manifest file the plan was made from")

    @classmethod
    def of(cls, manifest: Manifest) -> Inputs:
        return cls(model=manifest.model, data=manifest.data, source=manifest.source, path=manifest.path)

    @classmethod
    def from_job(cls, job: dict) -> Inputs:
        """The slice an action's job carries (release/tasks.py puts it there from the plan)."""
        return cls.model_validate(job["inputs"])


class Manifest(Strict):
    schema_version: int = Field(description=f"manifest schema version; this release reads {SCHEMA_VERSION}")
    name: str = Field(description="release name (a folder name)")
    version: str = Field(description="release version: the folder artifacts/<name>/release/<version>/; may be "
                                     "a template resolved when the plan is made: {date} (UTC YYYYMMDD), "
                                     "{datetime}, {env:NAME}, {git_describe} (release/versions.py)")
    source: Source
    model: ModelSpec
    data: Data
    target: Target
    targets: dict[str, Profile] = Field(default_factory=dict, description="your own device profiles, by name")
    budget: Budget = Budget()
    measure: Measure = Measure()
    # Steps are checked by _parse_variants, which knows the stages and reports each problem once.
    variants: dict[Any, list[Any]] = Field(min_length=1)
    select: Literal["best_map", "smallest", "fastest"] = "best_map"
    tracking: Tracking = Tracking()
    generate: dict[str, Generator] = Field(default_factory=dict, description="tasks that make the build's inputs "
                                                                             "before anything reads them (doit "
                                                                             "task generate:<name>), in order")
    store: Store | None = Field(None, description="the stage store (stage outputs, measurements, calibration "
                                                  "ranges); unset: artifacts/. RELEASE_STORE overrides it")

    _path: Path = PrivateAttr(default=None)
    _pipelines: dict[str, list[tuple[str, Any]]] = PrivateAttr(default_factory=dict)
    _device: dict = PrivateAttr(default_factory=dict)
    _generators: dict[str, tuple[Any, dict]] = PrivateAttr(default_factory=dict)
    _version_from: dict | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _folder_name(cls, v: str) -> str:
        if len(v) > 128 or not re.match(FOLDER_NAME, v) or ".." in v:
            raise ValueError(f"it is a folder the build writes, so it must be {FOLDER_NAME_RULE}, "
                             f"at most 128 characters")
        return v

    @field_validator("version")
    @classmethod
    def _version(cls, v: str, info: ValidationInfo) -> str:
        from release import versions  # a template is resolved here, once: load() keeps what it resolved to

        return versions.validated(v, info.context)

    @field_validator("generate")
    @classmethod
    def _generator_names(cls, v: dict) -> dict:
        for name in v:
            if not re.match(GENERATOR_NAME, name) or len(name) > 64:
                raise ValueError(f"generator name {_short(repr(name), 60)}: it names the task generate:<name>, so "
                                 f"use letters, digits, '_' and '-', starting with a letter (at most 64)")
        return v

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"this release reads schema_version {SCHEMA_VERSION}")
        return v

    @property
    def path(self) -> Path:
        return self._path

    @property
    def version_from(self) -> dict | None:
        """The version template and what it resolved to ({template, version, values}), or None
        when `version` is a plain version (release/versions.py)."""
        return self._version_from

    @property
    def device(self) -> dict:
        """The target profile resolved: built-in or `targets:` profile plus target's overrides."""
        return self._device

    @property
    def generators(self) -> dict[str, tuple[Any, dict]]:
        """generator name -> (its release.generate.GeneratorSpec, its kwargs validated against the
        function's signature, as JSON: what it is called with, path kwargs as written)."""
        return self._generators

    @property
    def pipelines(self) -> dict[str, list[tuple[str, Any]]]:
        """variant -> [(stage name, validated Params)], in pipeline order."""
        return self._pipelines


# ---------------------------------------------------------------- loading

def load(path: Path, root: Path | None = None) -> Manifest:
    """Read, validate and resolve a manifest. Raises ManifestError listing every problem."""
    path = Path(path)
    root = Path(root) if root is not None else Path.cwd()
    text = _read(path)
    raw, node, loader = _parse(path, text)
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: a manifest is a YAML mapping (name, version, source, model, data, ...).")
    nodes: dict[int, tuple] = {}
    problems = _Problems(path, _line_index(node, nodes) if node is not None else {})
    for mapping, key, first, line in loader.duplicates:
        problems.add(nodes.get(mapping, ()) + (key,), f"duplicate key '{_short(str(key), 60)}' (first on line "
                                                      f"{first}); YAML would silently keep only the last one: "
                                                      f"remove one.", line=line)
    _check_paths(raw, root, problems)

    context = {"root": root}  # the version template's git describe runs in the project root
    try:
        manifest = Manifest.model_validate(raw, context=context)
    except ValidationError as exc:
        for err in exc.errors():
            problems.add(*_describe(err, Manifest))
        # Stage params are checked even when other fields failed, so that one run shows everything.
        if isinstance(raw.get("variants"), dict):
            _parse_variants({k: v for k, v in raw["variants"].items() if isinstance(v, list)}, problems)
        problems.raise_if_any()
        raise  # unreachable: a ValidationError always has errors

    _check_user_code(manifest.model, root, problems)
    manifest = _resolve_data(_absolute(manifest, root), problems)
    manifest._path = path
    manifest._version_from = context["version"].record() if "version" in context else None
    manifest._pipelines = _parse_variants(raw["variants"], problems)
    _check_data_needs(manifest, problems)
    manifest._generators = _check_generators(manifest, root, problems)
    from release import targets

    overrides = {k: getattr(manifest.target, k) for k in manifest.target.model_fields_set if k != "name"}
    manifest._device, problem = targets.resolve(manifest.target.name, overrides, manifest.targets)
    if problem:
        problems.add(("target", "name"), problem)
    problems.raise_if_any()
    return manifest


def raise_problems(manifest: Manifest, found: list[tuple[tuple, str]]) -> None:
    """Raise a ManifestError for problems found after loading (e.g. by the model check against
    the model), each with its line in the manifest file."""
    if not found:
        return
    _, node, _ = _parse(manifest.path, _read(manifest.path))
    problems = _Problems(manifest.path, _line_index(node) if node is not None else {})
    for loc, message in found:
        problems.add(loc, message)
    problems.raise_if_any()

