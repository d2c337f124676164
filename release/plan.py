"""The build plan: a manifest -> fingerprinted stage, measurement and gate nodes, as doit tasks.

Equal pipeline prefixes have equal fingerprints, so they are one node (and one task) however many
variants (or manifests) share them. Outputs live under artifacts/stages/<stage>/<fingerprint>/.
Building the plan imports no torch, onnxruntime or mlflow: it must cost little on a no-op build.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from release import stages
from release.fingerprint import HashCache, digest, source_hash, tool_versions
from release.manifest import Manifest
from release.usercode import module_file
from release.stages.base import OUTPUT_FILE

SPLITS = ("train", "calibration", "eval")
DEMO_MODULES = ("release.models.demo.shapes", "release.models.demo.detector", "release.models.demo.train", "release.optim")
# Shared code that decides what a stage writes (checkpoint reading, model building, data order):
# a fix in any of these must rebuild, like a fix in the stage's own module.
FRAMEWORK_MODULES = ("release.checkpoint", "release.usercode", "release.weights", "release.analysis", "release.data",
                     "release.stages.base")


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
    data_deps: list[Path]
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
class Plan:
    manifest: Manifest
    root: Path
    artifacts: Path
    source_fp: str
    data_fp: dict[str, str]
    nodes: dict[str, StageNode]           # fingerprint -> node, in build order
    final: dict[str, StageNode]           # variant -> its last node
    chains: dict[str, list[str]]          # variant -> fingerprints in pipeline order
    demo_fp: dict[str, str]               # "data" / "train" -> fingerprint, when the manifest has a demo

    @property
    def release_dir(self) -> Path:
        return self.artifacts / self.manifest.name

    @property
    def checked(self) -> list[StageNode]:
        """Stage nodes checked against the model before anything trains: those whose stage has a
        check hook, and any that builds the model (model.kwargs are checked against the builder)."""
        return [n for n in self.nodes.values()
                if stages.load(n.stage).has("check") or stages.load(n.stage).SPEC.uses_model]

    def measure_dir(self, node: StageNode) -> Path:
        return self.artifacts / "measure" / short(node.fingerprint)

    def size_file(self, node: StageNode) -> Path:
        return self.measure_dir(node) / f"size-{short(code_hash(('release.measure.size',)))}.json"

    def map_file(self, node: StageNode) -> Path:
        return self.measure_dir(node) / f"map-{short(self.map_key(node))}.json"

    def latency_file(self, node: StageNode) -> Path:
        return self.measure_dir(node) / f"latency-{short(self.latency_key(node))}.json"

    def map_key(self, node: StageNode) -> str:
        spec = self.manifest.model
        return digest("map", node.fingerprint, self.data_fp["eval"], spec.adapter, spec.adapter_kwargs,
                      source_hash(module_file(spec.adapter)), tool_versions(("onnxruntime", "pycocotools")),
                      code_hash(("release.measure.accuracy", "release.data", "release.usercode")))

    def latency_key(self, node: StageNode) -> str:
        # The whole resolved profile (runner, threads, provider, options, ...) and the measure
        # settings: a change to any of them re-measures. A device's own onnxruntime is not known
        # here; its version is recorded in the figure.
        what = {k: v for k, v in self.manifest.device.items() if k not in ("description", "connect_timeout", "timeout")}
        return digest("latency", node.fingerprint, what, self.manifest.measure.model_dump(mode="json"),
                      tool_versions(("onnxruntime",)),
                      code_hash(("release.measure.latency", "release.measure.bench", "release.measure.ssh",
                                 "release.targets")))


def code_hash(modules: tuple[str, ...]) -> str:
    return digest([source_hash(module_file(m)) for m in modules])


def _demo_fingerprints(manifest: Manifest) -> dict[str, str]:
    demo = manifest.demo
    code = {m: source_hash(module_file(m)) for m in DEMO_MODULES}
    data = digest("demo-data", demo.seed, demo.image_size, demo.train_images, demo.calibration_images,
                  demo.eval_images, code["release.models.demo.shapes"])
    train = digest("demo-train", data, demo.steps, demo.batch_size, demo.lr, manifest.model.kwargs,
                   code, tool_versions(("torch",)))
    return {"data": data, "train": train}


def build(manifest: Manifest, root: Path) -> Plan:
    root = Path(root)
    artifacts = root / "artifacts"
    hashes = HashCache(artifacts / ".cache" / "hashes.json")
    demo_fp = _demo_fingerprints(manifest) if manifest.demo else {}
    # Only splits that something reads are hashed: eval (mAP) and what the stages declare.
    used = {"eval"} | {s for pipeline in manifest.pipelines.values() for name, params in pipeline
                       for s in stages.load(name).reads(params)}
    data_fp = {}
    for split in sorted(used):
        ref = getattr(manifest.data, split)
        if manifest.demo:
            data_fp[split] = digest(demo_fp["data"], split, ref.limit)
        elif ref.images.is_dir() and (ref.annotations is None or ref.annotations.is_file()):
            data_fp[split] = digest(hashes.split(ref.annotations, ref.images), ref.limit)
        else:
            data_fp[split] = "missing"  # the stage reading it reports the missing file, with the fix
    if manifest.demo:
        source_fp = demo_fp["train"]
    else:
        source_fp = hashes.file(manifest.source.checkpoint) if manifest.source.checkpoint.is_file() else "missing"
    hashes.save()
    framework = code_hash(FRAMEWORK_MODULES)

    spec = manifest.model
    model_code = digest(spec.builder, spec.kwargs, spec.input_shape, source_hash(module_file(spec.builder)),
                        spec.adapter, spec.adapter_kwargs, source_hash(module_file(spec.adapter)))
    source = manifest.source
    source_cfg = digest(source.format, source.weights, sorted(source.drop), source.trusted, source.strict,
                        sorted(source.allow_missing))

    nodes: dict[str, StageNode] = {}
    final: dict[str, StageNode] = {}
    chains: dict[str, list[str]] = {}
    for variant, pipeline in manifest.pipelines.items():
        fp, current, chain = source_fp, manifest.source.checkpoint, []
        for name, params in pipeline:
            module = stages.load(name)
            sspec = module.SPEC
            reads = module.reads(params)
            params_dict = params.model_dump(mode="json")
            # Helper modules the stage names, and code its params point at (a distilled student's builder).
            refs = [source_hash(module_file(m)) for m in sspec.code] + \
                   [source_hash(module_file(r)) for r in module.code_refs(params)]
            fp = digest(
                name, sspec.version, source_hash(module.file), framework, params_dict, fp,
                tool_versions(sspec.tools), [data_fp.get(s) for s in reads],
                model_code if sspec.uses_model else None,
                source_cfg if sspec.consumes == "checkpoint" else None,
                *([refs] if refs else []),
            )
            if fp not in nodes:
                # Data a stage only checks against joins file_dep just where the build generates it
                # (for ordering); editing it must not re-run the stage, whose output it cannot change.
                checked = sspec.verifies if manifest.demo else ()
                deps = sorted({getattr(manifest.data, s).annotations for s in reads + checked} - {None})
                nodes[fp] = StageNode(name, params_dict, params.model_dump(mode="json", exclude_unset=True), fp, current,
                                      artifacts / "stages" / name / short(fp), sspec.produces, deps)
            node = nodes[fp]
            node.variants.append(variant)
            current = node.output
            chain.append(fp)
        final[variant] = nodes[fp]
        chains[variant] = chain
    return Plan(manifest, root, artifacts, source_fp, data_fp, nodes, final, chains, demo_fp)
