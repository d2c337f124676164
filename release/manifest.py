"""The release manifest: schema, loading with YAML line numbers, and errors a user can act on.

Every problem is reported at once, each with the file, the line, the field path, the value received
and what was expected; unknown keys and stage names suggest the closest valid one. Paths in a
manifest are relative to the project root (the folder `doit` runs in), like DVC's.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from release import stages
from release.errors import ManifestError, did_you_mean
from release.fingerprint import IMAGE_SUFFIXES
from release.targets import Profile

SCHEMA_VERSION = 1
IMPORT_PATH = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"
FOLDER_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"  # one safe path component: no '/', no leading '.'
FOLDER_NAME_RULE = ("one folder name of letters, digits, '_', '.' and '-', starting with a letter or digit "
                    "(no '/', no '..', not an absolute path)")
# Bounds on what a manifest may be: real ones are a few KB, a few levels deep, a few hundred nodes.
MAX_BYTES = 1_000_000
MAX_NODES = 20_000    # nodes of the document with every alias expanded (~10 us each to build)
MAX_DEPTH = 64
IMAGE_SCAN = 2000     # entries of an images folder looked at, breadth first, for one image file
PSEUDO_FS = (Path("/proc"), Path("/sys"), Path("/dev"))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataRef(Strict):
    annotations: Path | None = Field(None, description="COCO-format annotations json; may be left out of a "
                                                       "split only images are read from (calibration, "
                                                       "distill with labels: false)")
    images: Path = Field(description="folder holding the images the json names")
    limit: int | None = Field(None, gt=0, description="use only the first N images by id")


class Data(Strict):
    train: DataRef | None = Field(None, description="training split (fine-tuning, distillation)")
    calibration: DataRef | None = Field(None, description="calibration split for static quantization")
    tuning: DataRef | None = Field(None, description="labelled split on which quantize's max_map_drop search "
                                                     "measures mAP (quantize.tuning_split: tuning); never eval")
    eval: DataRef = Field(description="evaluation split: every variant's mAP is measured on it")

    @field_validator("eval")
    @classmethod
    def _labelled(cls, v: DataRef) -> DataRef:
        if v.annotations is None:
            raise ValueError("mAP needs labels: give data.eval its annotations")
        return v


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


class Demo(Strict):
    """Generate the bundled synthetic dataset and train the demo detector as part of the build."""

    data_dir: Path = Field(description="where the splits are generated: <data_dir>/<split>/annotations.json")
    seed: int = 0
    image_size: int = Field(128, ge=32)
    train_images: int = Field(3000, gt=0)
    calibration_images: int = Field(64, gt=0)
    eval_images: int = Field(300, gt=0)
    steps: int = Field(1600, gt=0)
    batch_size: int = Field(16, gt=0)
    lr: float = Field(0.012, gt=0)


class Manifest(Strict):
    schema_version: int = Field(description=f"manifest schema version; this release reads {SCHEMA_VERSION}")
    name: str = Field(description="release name (a folder name)")
    version: str = Field(description="release version: the folder artifacts/<name>/release/<version>/")
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
    demo: Demo | None = None

    _path: Path = PrivateAttr(default=None)
    _pipelines: dict[str, list[tuple[str, Any]]] = PrivateAttr(default_factory=dict)
    _device: dict = PrivateAttr(default_factory=dict)

    @field_validator("name", "version")
    @classmethod
    def _folder_name(cls, v: str) -> str:
        if len(v) > 128 or not re.match(FOLDER_NAME, v) or ".." in v:
            raise ValueError(f"it is a folder the build writes, so it must be {FOLDER_NAME_RULE}, "
                             f"at most 128 characters")
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
    def device(self) -> dict:
        """The target profile resolved: built-in or `targets:` profile plus target's overrides."""
        return self._device

    @property
    def pipelines(self) -> dict[str, list[tuple[str, Any]]]:
        """variant -> [(stage name, validated Params)], in pipeline order."""
        return self._pipelines


# ---------------------------------------------------------------- locating a manifest

def resolve(name: str | Path, root: Path) -> Path:
    """`manifest=NAME`: a path (relative to root), else a file under root/recipes/."""
    name = str(name)
    candidates = [root / name, root / "recipes" / name]
    if not name.endswith((".yaml", ".yml")):
        candidates += [root / f"{name}.yaml", root / "recipes" / f"{name}.yaml"]
    for path in candidates:
        if path.is_file():
            return path
    known = sorted(p.name for p in (root / "recipes").glob("*.y*ml")) if (root / "recipes").is_dir() else []
    hint = f" Recipes here: {', '.join(known)}." if known else ""
    raise ManifestError(
        f"manifest '{name}' not found (looked for {', '.join(str(c) for c in candidates[:2])})."
        f"{did_you_mean(name, known)}{hint} Pass manifest=PATH or a name under recipes/."
    )


# ---------------------------------------------------------------- YAML with line numbers

class _Refused(yaml.MarkedYAMLError):
    """A document the loader will not build (too large, too deep, recursive): not a syntax error."""


try:  # libyaml's parser (C) makes the events; composing and constructing stay in Python, bounded below
    from yaml._yaml import CParser as _Parser

    _PARSER_BYTES = True  # its error positions count UTF-8 bytes
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Parser(Reader, Scanner, Parser):
        def __init__(self, stream):
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)

    _PARSER_BYTES = False


class _Loader(_Parser, yaml.composer.Composer, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
    """A safe loader that bounds what a document may expand to and records duplicate mapping keys.

    An alias is a reference, so composing stays linear; what a consumer walks, though, is the
    expanded tree (a 'billion laughs' document of 1 KB expands to 9^9 nodes). The expanded size of
    every node is known when it is composed (memoised by node), so each alias adds the size of what
    it names, and the document is refused once the total passes MAX_NODES. Nesting deeper than
    MAX_DEPTH is refused before the composer's recursion can reach Python's limit.
    """

    def __init__(self, stream):
        _Parser.__init__(self, stream)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self.sizes: dict[int, int] = {}
        self.expanded = 0
        self.depth = 0
        self.duplicates: list[tuple[int, Any, int, int]] = []  # (id of the mapping node, key, first line, line)

    def _grow(self, by: int, mark, alias: str | None) -> None:
        self.expanded += by
        if self.expanded > MAX_NODES:
            what = (f"with alias *{alias} the document expands to more than {MAX_NODES} nodes through aliases "
                    f"(an 'alias bomb'); a manifest needs a few hundred: write the values out or alias less"
                    if alias else f"the document has more than {MAX_NODES} values; a manifest needs a few hundred")
            raise _Refused(problem=what, problem_mark=mark)

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            node = self.anchors.get(event.anchor)
            if node is not None:
                size = self.sizes.get(id(node))
                if size is None:
                    raise _Refused(problem=f"alias *{event.anchor} refers to a node that contains it (a "
                                           f"recursive structure); a manifest is a tree",
                                   problem_mark=event.start_mark)
                self._grow(size, event.start_mark, event.anchor)
            return yaml.composer.Composer.compose_node(self, parent, index)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Refused(problem=f"nested more than {MAX_DEPTH} levels deep; a manifest needs a few",
                           problem_mark=event.start_mark)
        self._grow(1, event.start_mark, None)
        node = yaml.composer.Composer.compose_node(self, parent, index)
        self.depth -= 1
        if isinstance(node, yaml.MappingNode):
            size = 1 + sum(self.sizes[id(k)] + self.sizes[id(v)] for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self.sizes[id(v)] for v in node.value)
        else:
            size = 1
        self.sizes[id(node)] = size
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # merged keys may be overridden: that is what a merge is for
                key = self.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    continue  # the constructor reports an unhashable key itself
                line = key_node.start_mark.line + 1
                if key in first:
                    self.duplicates.append((id(node), key, first[key], line))
                else:
                    first[key] = line
        return super().construct_mapping(node, deep=deep)

    def get_single_node(self):  # the Python composer's (CParser has its own, unbounded, in C)
        return yaml.composer.Composer.get_single_node(self)

    def compose_document(self):
        return yaml.composer.Composer.compose_document(self)


def _parse(path: Path, text: str) -> tuple[Any, yaml.Node | None, _Loader]:
    """(the document, its node tree, the loader that read it) or a located ManifestError."""
    loader = None
    try:
        loader = _Loader(text)  # checks every character first
        node = loader.get_single_node()
        raw = loader.construct_document(node) if node is not None else None
    except _Refused as exc:
        mark = exc.problem_mark
        raise ManifestError(f"{path}: line {mark.line + 1}, column {mark.column + 1}: {exc.problem}.") from None
    except yaml.reader.ReaderError as exc:
        data = text.encode("utf-8", "surrogatepass") if _PARSER_BYTES else text
        newline = b"\n" if _PARSER_BYTES else "\n"
        before = data[:exc.position]
        line_start = before[before.rfind(newline) + 1:]
        column = len(line_start.decode("utf-8", "replace") if _PARSER_BYTES else line_start) + 1
        raise ManifestError(f"{path}: line {before.count(newline) + 1}, column {column}: "
                            f"not valid YAML ({exc.reason}; remove the character).") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ManifestError(f"{path}: {where}not valid YAML ({getattr(exc, 'problem', exc)}).") from None
    finally:
        if loader is not None:
            loader.dispose()
    return raw, node, loader


def _read(path: Path) -> str:
    """The manifest's text: a regular file, at most MAX_BYTES, UTF-8 (else one located line)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ManifestError(f"{path}: not a regular file ({_kind_name(st.st_mode)}); give the manifest's path.")
        if st.st_size > MAX_BYTES:
            raise ManifestError(f"{path}: {st.st_size} bytes, larger than a manifest may be ({MAX_BYTES}); "
                                f"is this the manifest?")
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ManifestError(f"{path}: cannot read the manifest ({reason}).") from None
    if len(data) > MAX_BYTES:
        raise ManifestError(f"{path}: larger than a manifest may be ({MAX_BYTES} bytes); is this the manifest?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ManifestError(f"{path}: line {line}, column {column}: byte {exc.start} (0x{data[exc.start]:02x}) "
                            f"is not UTF-8 ({exc.reason}); save the file as UTF-8.") from None


def _line_index(node: yaml.Node, nodes: dict[int, tuple] | None = None) -> dict[tuple, int]:
    """Map every field path in the YAML document to its 1-based line.

    Linear in the document's size: a subtree reached again through an alias is not walked again
    (its paths take the line of the first place it appears). `nodes`, when given, receives the
    first path of every mapping and sequence node (by id), for problems found per node.
    """
    out: dict[tuple, int] = {}
    seen: dict[int, tuple] = {} if nodes is None else nodes
    stack: list[tuple[yaml.Node, tuple]] = [(node, ())]
    while stack:
        current, path = stack.pop()
        out.setdefault(path, current.start_mark.line + 1)
        if not isinstance(current, (yaml.MappingNode, yaml.SequenceNode)) or id(current) in seen:
            continue
        seen[id(current)] = path
        if isinstance(current, yaml.MappingNode):
            children = []
            for key, value in current.value:
                k = key.value if isinstance(key, yaml.ScalarNode) else repr(key.value)[:40]
                out[path + (k,)] = key.start_mark.line + 1  # a duplicated key: the last one's line
                children.append((value, path + (k,)))
            stack.extend(reversed(children))
        else:
            for i, item in reversed(list(enumerate(current.value))):
                stack.append((item, path + (i,)))
    return out


def _line_for(lines: dict[tuple, int], loc: tuple) -> int | None:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def _short(value: Any, limit: int = 80) -> str:
    """repr of a value, cut to `limit` characters (a manifest may hold a megabyte string)."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else f"{text[:limit - 20]}...({len(text)} characters)"


def _dotted(loc: tuple) -> str:
    text = ""
    for part in (p if isinstance(p, int) else _short(str(p), 60) for p in loc):
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _fields_at(model: type[BaseModel] | None, loc: tuple) -> list[str]:
    """The valid keys of the pydantic model that sits at `loc` (for 'did you mean')."""
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return []
        ann = model.model_fields[part].annotation
        candidates = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = candidates[0] if candidates else None
    return list(model.model_fields) if model else []


class _Problems:
    SHOWN = 50  # problems listed; the rest are counted

    def __init__(self, path: Path, lines: dict[tuple, int]):
        self.path, self.lines, self.items, self.count = path, lines, [], 0

    def add(self, loc: tuple, message: str, line: int | None = None) -> None:
        self.count += 1
        if len(self.items) >= self.SHOWN:
            return
        line = line or _line_for(self.lines, loc)
        where = f"line {line}, " if line else ""
        self.items.append(f"  {where}{_dotted(loc)}: {message}")

    def raise_if_any(self) -> None:
        if self.items:
            n = self.count
            more = [f"  ... and {n - len(self.items)} more"] if n > len(self.items) else []
            raise ManifestError(f"{self.path}: {n} problem{'s' * (n != 1)}\n" + "\n".join(self.items + more))


def _describe(err: dict, model: type[BaseModel] | None, loc_prefix: tuple = ()) -> tuple[tuple, str]:
    loc = loc_prefix + tuple(err["loc"])
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        key = loc[-1]
        valid = _fields_at(model, tuple(err["loc"])[:-1])
        hint = did_you_mean(str(key)[:60], valid) or (f" Valid keys: {', '.join(valid)}." if valid else "")
        return loc, f"unknown key '{_short(str(key), 60)}'.{hint}"
    if err["type"] == "missing":
        return loc, "required field is missing."
    shown = _short(repr(value)) if not isinstance(value, dict) else "a mapping"
    return loc, f"got {shown}; {err['msg'][0].lower() + err['msg'][1:]}."


# ---------------------------------------------------------------- variants

KIND_HINT = {"checkpoint": "start the pipeline with `strip`", "weights": "add `strip` first",
             "onnx": "add `export` before it"}


def _parse_variants(raw: dict, problems: _Problems) -> dict[str, list[tuple[str, Any]]]:
    pipelines: dict[str, list[tuple[str, Any]]] = {}
    for variant, steps in raw.items():
        if not isinstance(variant, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", variant):
            problems.add(("variants", variant), f"variant name {_short(repr(variant))}: use a string of letters, digits, "
                                                "'_', '.', '-' (quote names YAML reads as numbers or booleans).")
            continue
        kind, pipeline = "checkpoint", []
        for i, step in enumerate(steps):
            loc = ("variants", variant, i)
            if isinstance(step, str):
                name, params = step, {}
            elif isinstance(step, dict) and len(step) == 1 and isinstance(next(iter(step.values())), (dict, type(None))):
                name, params = next(iter(step.items()))
                params = params or {}
            elif isinstance(step, dict) and len(step) == 1:
                name, params = next(iter(step.items()))
                problems.add(loc + (name,), f"got {_short(repr(params))}; a stage's params are a mapping "
                                            f"{{param: value}}.")
                break
            else:
                shown = f"keys {sorted(map(str, step))}" if isinstance(step, dict) else _short(repr(step))
                problems.add(loc, f"a step is a stage name or a one-key mapping {{stage: {{param: value}}}}; got {shown}.")
                break
            if name not in stages.REGISTRY:
                shown = _short(str(name), 60)
                problems.add(loc, f"unknown stage '{shown}'.{did_you_mean(str(name)[:60], stages.names())} "
                                  f"Stages: {', '.join(stages.names())}.")
                break
            module = stages.load(name)
            try:
                validated = module.Params.model_validate(params)
            except ValidationError as exc:
                for err in exc.errors():
                    problems.add(*_describe(err, module.Params, loc + (name,)))
                break
            spec = module.SPEC
            if spec.consumes != kind:
                problems.add(loc, f"stage '{name}' takes {spec.consumes} but gets {kind} here; "
                                  f"{KIND_HINT.get(spec.consumes, 'reorder the stages')}.")
                break
            kind = spec.produces
            pipeline.append((name, validated))
        else:
            if kind != "onnx":
                problems.add(("variants", variant), "the pipeline must end in an ONNX model "
                                                    "(add `export`): variants are measured on the file that ships.")
            pipelines[variant] = pipeline
    return pipelines


def _needs_labels(module, params, split: str) -> bool:
    """Whether a stage needs annotations on `split` (a stage's needs_labels may take the split)."""
    import inspect

    fn = getattr(module, "needs_labels", None)
    if fn is None:
        return True
    return fn(params, split) if len(inspect.signature(fn).parameters) > 1 else fn(params)


def _check_data_needs(manifest: Manifest, problems: _Problems) -> None:
    for variant, pipeline in manifest.pipelines.items():
        for i, (name, params) in enumerate(pipeline):
            module = stages.load(name)
            for split in stages.reads(module, params):
                ref = getattr(manifest.data, split)
                if ref is None:
                    problems.add(("variants", variant, i), f"stage '{name}' reads data.{split}, "
                                                           f"which the manifest does not define. Add data.{split}.")
                elif ref.annotations is None and _needs_labels(module, params, split):
                    problems.add(("variants", variant, i), f"stage '{name}' needs the labels of data.{split}, "
                                                           f"which has no annotations. Add data.{split}.annotations"
                                                           f"{' (or set labels: false)' if name == 'distill' else ''}.")
    demo = manifest.demo
    if demo is not None:
        for split in ("train", "calibration", "eval"):
            ref = getattr(manifest.data, split)
            want = (demo.data_dir / split / "annotations.json", demo.data_dir / split / "images")
            if ref is not None and (ref.annotations, ref.images) != want:
                problems.add(("data", split), f"with a demo section, this split is generated at "
                                              f"{want[0]} and {want[1]}; point annotations and images there.")


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

    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors():
            problems.add(*_describe(err, Manifest))
        # Stage params are checked even when other fields failed, so that one run shows everything.
        if isinstance(raw.get("variants"), dict):
            _parse_variants({k: v for k, v in raw["variants"].items() if isinstance(v, list)}, problems)
        problems.raise_if_any()
        raise  # unreachable: a ValidationError always has errors

    for field in ("builder", "adapter"):
        if _module_missing(getattr(manifest.model, field), root):
            module = getattr(manifest.model, field).partition(":")[0]
            problems.add(("model", field), f"no module '{module}' can be imported here or from the project "
                                           f"folder {root}. Check the spelling ('package.module:name') and "
                                           f"that the package is installed.")
    manifest = _absolute(manifest, root)
    manifest._path = path
    manifest._pipelines = _parse_variants(raw["variants"], problems)
    _check_data_needs(manifest, problems)
    from release import targets

    overrides = {k: getattr(manifest.target, k) for k in manifest.target.model_fields_set if k != "name"}
    manifest._device, problem = targets.resolve(manifest.target.name, overrides, manifest.targets)
    if problem:
        problems.add(("target", "name"), problem)
    problems.raise_if_any()
    return manifest


# ---------------------------------------------------------------- paths

def _kind_name(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISREG, "a regular file"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return name
    return "a special file"


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _pseudo(resolved: Path) -> Path | None:
    """The kernel pseudo-file system (/proc, /sys, /dev but /dev/shm) a path lies on, if any."""
    if resolved.is_relative_to("/dev/shm"):
        return None
    return next((p for p in PSEUDO_FS if resolved.is_relative_to(p)), None)


def _holds_images(folder: Path) -> bool:
    """Whether an image file is among the first IMAGE_SCAN entries of a folder, breadth first
    (COCO file names may name subfolders). Bounded: `/usr` is answered at once, never walked."""
    queue, seen = [folder], 0
    while queue:
        current = queue.pop(0)
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    seen += 1
                    if seen > IMAGE_SCAN:
                        return False
                    try:
                        if entry.name.lower().endswith(IMAGE_SUFFIXES) and entry.is_file():
                            return True
                        if entry.is_dir() and _pseudo(Path(entry.path)) is None:
                            queue.append(entry.path)
                    except OSError:
                        continue
        except OSError:
            continue
    return False


def _get(raw: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(raw, dict):
            return None
        raw = raw.get(key)
    return raw


def _check_kind(problems: _Problems, loc: tuple, value: Any, root: Path, want: str, required: bool,
                images: bool = False) -> None:
    """A path the build reads: when it exists (or always, when `required`), it must be a regular
    file / a folder (not a FIFO, socket, device or kernel pseudo-file, which would hang or fail
    the hashing), and an images folder must hold images."""
    if not isinstance(value, str):
        return  # a wrong type is reported by validation
    path = root / value
    shown = _short(value)
    noun = "file" if want == "file" else "folder"
    try:
        resolved = path.resolve()
        pseudo = _pseudo(resolved)
        if pseudo is not None:
            problems.add(loc, f"{shown} is on {pseudo}, a kernel pseudo-file system, not a data {noun}: "
                              f"point it at a {'regular file' if want == 'file' else 'folder'}.")
            return
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        if required:
            problems.add(loc, f"no such {noun}: {path}. Check the path (relative to the project folder {root}).")
        return
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL byte, a name too long
        problems.add(loc, f"{shown} cannot be used as a path ({_reason(exc)}).")
        return
    if want == "file" and not stat.S_ISREG(st.st_mode):
        problems.add(loc, f"{shown} is not a regular file ({_kind_name(st.st_mode)}): point it at the file itself.")
    elif want == "folder" and not stat.S_ISDIR(st.st_mode):
        problems.add(loc, f"{shown} is not a folder ({_kind_name(st.st_mode)}): point it at a folder.")
    elif images and not _holds_images(path):
        problems.add(loc, f"{shown} holds no image files ({', '.join(IMAGE_SUFFIXES)}) among its first "
                          f"{IMAGE_SCAN} entries: point it at the folder of the split's images.")


def _check_written(problems: _Problems, loc: tuple, value: Any, root: Path, raw: dict, example: str) -> Path | None:
    """A path the build writes (and may replace wholesale) must resolve inside <root>/artifacts/,
    outside the folders the build manages itself. Returns the resolved path when it is fine."""
    if not isinstance(value, str):
        return None
    artifacts = root / "artifacts"
    try:
        resolved, inside = (root / value).resolve(), artifacts.resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        problems.add(loc, f"{_short(value)} cannot be used as a path ({_reason(exc)}).")
        return None
    if resolved == inside or not resolved.is_relative_to(inside):
        problems.add(loc, f"{_short(value)} resolves to {_short(str(resolved))}, outside the build folder "
                          f"{artifacts}/: the demo writes here; point it under artifacts/ (e.g. {example}).")
        return None
    top = resolved.relative_to(inside).parts[0]
    name = raw.get("name") if isinstance(raw.get("name"), str) else None
    managed = top in ("stages", "measure", "mlflow") or top.startswith(".") or (
        top == name and resolved.relative_to(inside).parts[1:2] == ("release",))
    if managed:
        problems.add(loc, f"{_short(value)} is inside artifacts/{top}/, which the build manages itself: the demo "
                          f"writes here; point it at a place of its own under artifacts/ (e.g. {example}).")
        return None
    return resolved


def _check_paths(raw: dict, root: Path, problems: _Problems) -> None:
    """Paths the build writes stay inside artifacts/; paths it reads are a file / a folder."""
    demo = isinstance(raw.get("demo"), dict)
    checkpoint = _get(raw, "source", "checkpoint")
    if demo:
        data_dir = _check_written(problems, ("demo", "data_dir"), _get(raw, "demo", "data_dir"), root, raw,
                                  "artifacts/demo/data")
        ckpt = _check_written(problems, ("source", "checkpoint"), checkpoint, root, raw,
                              "artifacts/demo/train_last.ckpt")
        if data_dir is not None and ckpt is not None and (
                ckpt.is_relative_to(data_dir) or data_dir.is_relative_to(ckpt)):
            problems.add(("source", "checkpoint"), "the demo trains this checkpoint and regenerates demo.data_dir as "
                                                   "a whole: keep the checkpoint outside demo.data_dir.")
        _check_kind(problems, ("demo", "data_dir"), _get(raw, "demo", "data_dir"), root, "folder", required=False)
    _check_kind(problems, ("source", "checkpoint"), checkpoint, root, "file", required=False)
    for split in ("train", "calibration", "tuning", "eval"):
        ref = _get(raw, "data", split)
        if not isinstance(ref, dict):
            continue
        _check_kind(problems, ("data", split, "annotations"), ref.get("annotations"), root, "file",
                    required=not demo)
        _check_kind(problems, ("data", split, "images"), ref.get("images"), root, "folder", required=not demo,
                    images=not demo)


def raise_problems(manifest: Manifest, found: list[tuple[tuple, str]]) -> None:
    """Raise a ManifestError for problems found after loading (e.g. by the preflight check against
    the model), each with its line in the manifest file."""
    if not found:
        return
    _, node, _ = _parse(manifest.path, _read(manifest.path))
    problems = _Problems(manifest.path, _line_index(node) if node is not None else {})
    for loc, message in found:
        problems.add(loc, message)
    problems.raise_if_any()


def _module_missing(spec: str, root: Path) -> bool:
    """True when the module of 'package.module:name' can be found neither on sys.path nor in the
    project folder (found, not imported): `doit` runs there with it on sys.path, and so does
    `release validate --root`."""
    import importlib.util
    from importlib.machinery import PathFinder

    name = spec.partition(":")[0]
    try:
        if importlib.util.find_spec(name) is not None:
            return False
    except (ImportError, ValueError):
        pass
    parts, paths = name.split("."), [str(root)]
    for i, part in enumerate(parts):
        found = PathFinder.find_spec(part, paths)
        if found is None:
            return True
        paths = found.submodule_search_locations
        if paths is None:
            return i != len(parts) - 1
    return False


def _absolute(manifest: Manifest, root: Path) -> Manifest:
    """Resolve every relative path in the manifest against the project root."""

    def fix(model: BaseModel) -> BaseModel:
        updates = {}
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, Path) and not value.is_absolute():
                updates[name] = root / value
            elif isinstance(value, BaseModel):
                updates[name] = fix(value)
        return model.model_copy(update=updates) if updates else model

    return fix(manifest)
