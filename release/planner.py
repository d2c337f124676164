"""Making the plan: a loaded manifest -> release.plan.Plan, with every fingerprint and measurement key.

Runs only when the recorded plan's stamps no longer hold (release/plan.py). It imports the stage
registry and pydantic, never torch, onnxruntime or mlflow.
"""

from __future__ import annotations

from pathlib import Path

from release import fingerprint, stages
from release.fingerprint import HashCache, digest, source_hash, tool_versions
from release.manifest import Inputs, Manifest
from release.plan import Plan, StageNode, short
from release.usercode import module_file

SPLITS = ("train", "calibration", "eval")
DEMO_MODULES = ("release.models.demo.shapes", "release.models.demo.detector", "release.models.demo.train",
                "release.optim")
# Code every stage runs through (the contract, building the user's model and adapter): a fix in any
# of these rebuilds everything. Code only some stages use (checkpoint reading, the weights format,
# data order, training) is named by those stages' SPEC.code, so a fix there rebuilds only them
# and what follows them.
FRAMEWORK_MODULES = ("release.stages.base", "release.params", "release.usercode")
MAP_CODE = ("release.measure.accuracy", "release.data", "release.usercode")
LATENCY_CODE = ("release.measure.latency", "release.measure.bench", "release.measure.ssh", "release.targets")


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


def _data_fingerprints(manifest: Manifest, hashes: HashCache, demo_fp: dict) -> dict[str, str]:
    """Only splits that something reads are hashed: eval (mAP) and what the stages declare."""
    used = {"eval"} | {s for pipeline in manifest.pipelines.values() for name, params in pipeline
                       for s in stages.load(name).reads(params)}
    data_fp = {}
    for split in sorted(used):
        ref = getattr(manifest.data, split)
        fingerprint.READ.update(str(p) for p in (ref.annotations, ref.images) if p is not None)
        if manifest.demo:
            data_fp[split] = digest(demo_fp["data"], split, ref.limit)
        elif ref.images.is_dir() and (ref.annotations is None or ref.annotations.is_file()):
            data_fp[split] = digest(hashes.split(ref.annotations, ref.images), ref.limit)
        else:
            data_fp[split] = "missing"  # the stage reading it reports the missing file, with the fix
    return data_fp


def _stage_nodes(manifest: Manifest, artifacts: Path, source_fp: str, data_fp: dict):
    framework = code_hash(FRAMEWORK_MODULES)
    spec, source = manifest.model, manifest.source
    model_code = digest(spec.builder, spec.kwargs, spec.input_shape, source_hash(module_file(spec.builder)),
                        spec.adapter, spec.adapter_kwargs, source_hash(module_file(spec.adapter)))
    source_cfg = digest(source.format, source.weights, sorted(source.drop), source.trusted, source.strict,
                        sorted(source.allow_missing))
    nodes: dict[str, StageNode] = {}
    chains: dict[str, list[str]] = {}
    for variant, pipeline in manifest.pipelines.items():
        fp, current, chain = source_fp, manifest.source.checkpoint, []
        for name, params in pipeline:
            stage = stages.load(name)
            sspec = stage.SPEC
            reads = stage.reads(params)
            params_dict = params.model_dump(mode="json")
            # Helper modules the stage names, and code its params point at (a distilled student's builder).
            refs = [source_hash(module_file(m)) for m in sspec.code] + \
                   [source_hash(module_file(r)) for r in stage.code_refs(params)]
            fp = digest(
                name, sspec.version, source_hash(stage.file), framework, params_dict, fp,
                tool_versions(sspec.tools), [data_fp.get(s) for s in reads],
                model_code if sspec.uses_model else None,
                source_cfg if sspec.consumes == "checkpoint" else None,
                *([refs] if refs else []),
            )
            if fp not in nodes:
                # Data a stage only verifies against joins file_dep just where the build generates it
                # (for ordering); editing it must not re-run the stage, whose output it cannot change.
                verified = sspec.verifies if manifest.demo else ()
                deps = sorted({getattr(manifest.data, s).annotations for s in reads + verified} - {None})
                nodes[fp] = StageNode(name, params_dict, params.model_dump(mode="json", exclude_unset=True), fp,
                                      current, artifacts / "stages" / name / short(fp), sspec.produces, deps)
            node = nodes[fp]
            node.variants.append(variant)
            current = node.output
            chain.append(fp)
        chains[variant] = chain
    return nodes, chains


def _measure_keys(manifest: Manifest, data_fp: dict, finals: list[str]) -> dict:
    spec = manifest.model
    adapter = (spec.adapter, spec.adapter_kwargs, source_hash(module_file(spec.adapter)))
    map_base = digest(data_fp["eval"], *adapter, tool_versions(("onnxruntime", "pycocotools")), code_hash(MAP_CODE))
    # The whole resolved profile (runner, threads, provider, options, ...) and the measure settings:
    # a change to any of them re-measures. A device's own onnxruntime is not known here; its
    # version is recorded in the figure.
    what = {k: v for k, v in manifest.device.items() if k not in ("description", "connect_timeout", "timeout")}
    latency_base = digest(what, manifest.measure.model_dump(mode="json"), tool_versions(("onnxruntime",)),
                          code_hash(LATENCY_CODE))
    return {"size": code_hash(("release.measure.size",)),
            "map": {fp: digest("map", fp, map_base) for fp in finals},
            "latency": {fp: digest("latency", fp, latency_base) for fp in finals}}


def build(manifest: Manifest, root: Path) -> Plan:
    root = Path(root)
    artifacts = root / "artifacts"
    hashes = HashCache(artifacts / ".cache" / "hashes.json")
    demo_fp = _demo_fingerprints(manifest) if manifest.demo else {}
    data_fp = _data_fingerprints(manifest, hashes, demo_fp)
    checkpoint = manifest.source.checkpoint
    fingerprint.READ.add(str(checkpoint))
    if manifest.demo:
        source_fp = demo_fp["train"]
    else:
        source_fp = hashes.file(checkpoint) if checkpoint.is_file() else "missing"
    hashes.save()
    nodes, chains = _stage_nodes(manifest, artifacts, source_fp, data_fp)
    final = {variant: chain[-1] for variant, chain in chains.items()}
    checked = [fp for fp, n in nodes.items() if stages.load(n.stage).has("check") or stages.load(n.stage).SPEC.uses_model]
    inputs = Inputs.of(manifest).model_dump(mode="json")
    return Plan(name=manifest.name, version=manifest.version, manifest=manifest.path, root=root, inputs=inputs,
                target=manifest.device, measure=manifest.measure.model_dump(mode="json"),
                budget=manifest.budget.model_dump(mode="json"), select=manifest.select,
                tracking=manifest.tracking.model_dump(mode="json"),
                demo=manifest.demo.model_dump(mode="json") if manifest.demo else None,
                source_fp=source_fp, data_fp=data_fp, nodes=nodes, final=final, chains=chains, demo_fp=demo_fp,
                checked=checked, keys=_measure_keys(manifest, data_fp, list(dict.fromkeys(final.values()))))
