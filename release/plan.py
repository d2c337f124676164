"""The build plan: fingerprinted generator, stage, measurement and gate nodes, as one record
written once.

release/planner.py makes a Plan from a manifest (parsing, validation, fingerprints); this module is
the plan itself, plain data with no pydantic, and its record `artifacts/<name>/plan.json`. The
record carries the stamps of everything planning read (the manifest's bytes, every source file
hashed, every data file and folder looked at, the folders Python imports from, the environment
that matters), so a later `doit` whose stamps still hold takes the recorded plan without parsing
the manifest or importing a stage: that is what keeps a no-op build close to doit's own no-op. A
stamp that moved (an edited manifest, a touched image, an installed package) means the plan is made
anew; it is never served stale.

Equal pipeline prefixes have equal fingerprints, so they are one node (and one task) however many
variants (or manifests) share them. Outputs live under <store>/stages/<stage>/<fingerprint>/ and
measurements under <store>/measure/<fingerprint>/, where the store is artifacts/ unless the
manifest's `store:` or RELEASE_STORE names another folder (docs/ci-nightly.md).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

RECORD_SCHEMA = 2  # 2: the generators of the manifest's generate section
OUTPUT_FILE: dict[str, str] = {"weights": "weights.safetensors", "onnx": "model.onnx"}
ENV_PREFIXES = ("RELEASE_", "MLFLOW_")  # environment variables planning may read


def relative(path: Path, root: Path) -> str:
    """A path as the project sees it: relative to the root when inside it (doit runs there), so a
    moved or copied project, or a CI cache restored elsewhere, is still up to date."""
    path = Path(path)
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def short(fp: str) -> str:
    return fp[:16]


@dataclass
class StageNode:
    stage: str
    params: dict          # every param, defaults included: what the fingerprint and records show
    params_set: dict      # only what the manifest wrote: what the stage re-validates at run time
    fingerprint: str
    input: Path
    out_dir: Path
    produces: str
    after: list[str] = field(default_factory=list)  # generators whose outputs it reads: it waits for them
    variants: list[str] = field(default_factory=list)

    @property
    def output(self) -> Path:
        return self.out_dir / OUTPUT_FILE[self.produces]

    @property
    def record(self) -> Path:
        return self.out_dir / "stage.json"

    @property
    def task_name(self) -> str:
        return f"{self.stage}@{self.fingerprint[:10]}"


@dataclass
class GeneratorNode:
    """One entry of the manifest's `generate:` section, planned (release/generate.py)."""

    name: str
    run: str                  # package.module:function
    kwargs: dict              # what it is called with beside `out` (path kwargs resolved) and model.kwargs
    out: Path
    writes: str               # "folder" or "file"
    fingerprint: str
    after: list[str]          # generators it waits for (their fingerprints are in its own)
    model_kwargs: bool        # it also takes model.kwargs (it trains the model), after the model check
    targets: list[Path] = field(default_factory=list)  # the files the manifest reads that it makes
    expects: dict[str, str] = field(default_factory=dict)  # field -> path inside a folder out it must write

    @property
    def task_name(self) -> str:
        return f"generate:{self.name}"


@dataclass
class Plan:
    name: str
    version: str
    manifest: Path                        # the manifest file the plan was made from
    root: Path
    # What actions need of the manifest, resolved (paths absolute), as JSON: release.manifest.Inputs
    # (model, data, source, manifest path), which they validate.
    inputs: dict
    target: dict                          # the resolved target profile, under one name
    measure: dict
    budget: dict
    select: str
    tracking: dict
    generators: dict[str, GeneratorNode]  # name -> node, in the manifest's order
    source_fp: str
    data_fp: dict[str, str]
    data_after: dict[str, list[str]]      # split -> the generators its files come from
    nodes: dict[str, StageNode]           # fingerprint -> node, in build order
    final: dict[str, str]                 # variant -> fingerprint of its last node
    chains: dict[str, list[str]]          # variant -> fingerprints in pipeline order
    checked: list[str]                    # fingerprints of the nodes the model check covers
    keys: dict                            # measurement keys: "size", and "map" / "latency" per fingerprint
    version_from: dict | None = None      # a version template and what it resolved to (release/versions.py)
    check_code: str = ""                  # the model's and the model check's code (release/planner.py)
    store: Path | None = None             # the stage store (manifest `store:` or RELEASE_STORE); None: artifacts/

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def store_dir(self) -> Path:
        """Where stage outputs, measurements and the calibration cache are kept (all named by content)."""
        return Path(self.store) if self.store is not None else self.artifacts

    @property
    def release_dir(self) -> Path:
        return self.artifacts / self.name

    @property
    def record_file(self) -> Path:
        return self.release_dir / "plan.json"

    @property
    def checkpoint(self) -> Path:
        return Path(self.inputs["source"]["checkpoint"])

    def final_node(self, variant: str) -> StageNode:
        return self.nodes[self.final[variant]]

    def measure_dir(self, node: StageNode) -> Path:
        return self.store_dir / "measure" / short(node.fingerprint)

    def size_file(self, node: StageNode) -> Path:
        return self.measure_dir(node) / f"size-{short(self.keys['size'])}.json"

    def map_file(self, node: StageNode) -> Path:
        return self.measure_dir(node) / f"map-{short(self.keys['map'][node.fingerprint])}.json"

    def latency_file(self, node: StageNode) -> Path:
        return self.measure_dir(node) / f"latency-{short(self.keys['latency'][node.fingerprint])}.json"

    # ------------------------------------------------------------ the record
    def to_record(self) -> dict:
        doc = asdict(self)
        doc["nodes"] = [asdict(n) for n in self.nodes.values()]
        return json.loads(json.dumps(doc, default=str))

    @classmethod
    def from_record(cls, doc: dict) -> Plan:
        nodes = {}
        for n in doc["nodes"]:
            n = {**n, "input": Path(n["input"]), "out_dir": Path(n["out_dir"])}
            nodes[n["fingerprint"]] = StageNode(**n)
        generators = {name: GeneratorNode(**{**g, "out": Path(g["out"]), "targets": [Path(t) for t in g["targets"]]})
                      for name, g in doc["generators"].items()}
        fields = {k: v for k, v in doc.items() if k not in ("nodes", "generators", "manifest", "root", "store")}
        store = Path(doc["store"]) if doc.get("store") else None
        return cls(**fields, nodes=nodes, generators=generators, manifest=Path(doc["manifest"]), root=Path(doc["root"]),
                   store=store)


# ---------------------------------------------------------------- stamps

@functools.lru_cache(maxsize=1)
def host() -> dict:
    """This host as a local latency figure depends on it: its CPU model (/proc/cpuinfo, read once
    and only up to the first name; else what platform says) and its core count. The same reading
    as release.measure.bench.cpu_model, which is not imported here: importing it sets thread
    variables in this process."""
    cpu = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, sep, value = line.partition(":")
                if sep and key.strip() in ("model name", "Model", "Hardware", "cpu model") and value.strip():
                    cpu = value.strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu or platform.processor() or platform.machine(), "cores": os.cpu_count() or 1}


def _stat(path: str) -> list | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns] if not os.path.isdir(path) else [-1, st.st_mtime_ns]


def stamps(manifest: Path, read: set[str], version_from: dict | None = None, root: Path | None = None) -> dict:
    """What the plan depends on, as it is now: the manifest's bytes, each path planning read (size
    and mtime; a folder's mtime), the folders imports come from, this host (a local runner's
    latency key names it: a plan restored on another machine is made anew), the environment that matters
    (with the variables a version template read); a version template's date or git describe too."""
    from release import versions

    paths = sorted(set(read) | {p for p in sys.path if p and os.path.isdir(p)})
    names = versions.env_names(version_from)
    found = {"manifest": str(manifest), "manifest_sha256": hashlib.sha256(Path(manifest).read_bytes()).hexdigest(),
             "python": sys.executable, "host": host(), "env": _env(names), "paths": {p: _stat(p) for p in paths}}
    if names:
        found["env_names"] = names
    version = versions.stamp(version_from, root if root is not None else Path(manifest).parent)
    if version:
        found["version"] = version
    return found


def _env(names=()) -> dict:
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES) or k in names}


def holds(recorded: dict, manifest: Path) -> bool:
    """Whether every stamp recorded with a plan still holds (cheap: stats and one small read; a
    version template's git describe runs git again)."""
    try:
        if recorded["manifest"] != str(manifest) or recorded["python"] != sys.executable \
                or recorded.get("host") != host() or recorded["env"] != _env(recorded.get("env_names", ())):
            return False
        if any(_stat(p) != st for p, st in recorded["paths"].items()):
            return False
        if recorded["manifest_sha256"] != hashlib.sha256(Path(manifest).read_bytes()).hexdigest():
            return False
        if "version" in recorded:
            from release import versions

            return versions.holds(recorded["version"])
        return True
    except (OSError, KeyError, TypeError):
        return False


def _pointer(root: Path, manifest: Path) -> Path:
    """Where the name of the plan made from this manifest file is remembered (the manifest's name
    is inside the YAML, which a no-op build does not parse)."""
    key = hashlib.sha256(str(manifest).encode()).hexdigest()[:16]
    return root / "artifacts" / ".plans" / f"{key}.json"


def recorded(manifest: Path, root: Path) -> Plan | None:
    """The recorded plan for this manifest file when its stamps hold, else None."""
    try:
        name = json.loads(_pointer(root, manifest).read_text())["name"]
        doc = json.loads((root / "artifacts" / name / "plan.json").read_text())
        if doc.get("schema_version") != RECORD_SCHEMA or not holds(doc["stamps"], manifest):
            return None
        return Plan.from_record(doc["plan"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def record(plan: Plan, read: set[str]) -> None:
    """Write the plan and its stamps beside the build, atomically, and remember where it is."""
    from release.atomic import write_json

    write_json(plan.record_file, {"schema_version": RECORD_SCHEMA,
                                  "stamps": stamps(plan.manifest, read, plan.version_from, plan.root),
                                  "plan": plan.to_record()})
    write_json(_pointer(plan.root, plan.manifest), {"name": plan.name, "manifest": str(plan.manifest)})
