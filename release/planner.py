"""Making the plan: a loaded manifest -> release.plan.Plan, with every fingerprint and measurement key.

Runs only when the recorded plan's stamps no longer hold (release/plan.py). It imports the stage
registry and pydantic, never torch, onnxruntime or mlflow.
"""

from __future__ import annotations

from pathlib import Path

from release import fingerprint, stages
from release.fingerprint import HashCache, digest, source_hash, tool_versions
from release.generate import owner
from release.manifest import Inputs, Manifest
from release.manifest_paths import store_folder
from release.plan import GeneratorNode, Plan, StageNode, host, short
from release.usercode import module_file

# Code every stage runs through (the contract, building the user's model and adapter): a fix in any
# of these rebuilds everything. Code only some stages use (checkpoint reading, the weights format,
# data order, training) is named by those stages' SPEC.code, so a fix there rebuilds only them
# and what follows them.
FRAMEWORK_MODULES = ("release.stages.base", "release.params", "release.usercode")
MAP_CODE = ("release.measure.accuracy", "release.data", "release.usercode")
LATENCY_CODE = ("release.measure.latency", "release.measure.bench", "release.measure.ssh", "release.targets")


def code_hash(modules: tuple[str, ...]) -> str:
    return digest([source_hash(module_file(m)) for m in modules])


class _Generated:
    """What the manifest's generators make: the fingerprint of a path inside a generator's out, and
    the generator tasks that reading it waits for."""

    def __init__(self, generators: dict[str, GeneratorNode]):
        self.generators = generators
        self.outs = {name: g.out for name, g in generators.items()}

    def by(self, path: Path | None) -> str | None:
        return owner(path, self.outs)

    def fingerprint(self, path: Path) -> str:
        """The generator's fingerprint with where `path` lies inside its out."""
        g = self.generators[self.by(path)]
        return digest(g.fingerprint, self.relative(path))

    def relative(self, path: Path) -> str:
        name = self.by(path)
        return str(Path(path).resolve().relative_to(self.outs[name].resolve()))

    def after(self, paths) -> list[str]:
        return sorted({name for name in map(self.by, paths) if name is not None})


def _generator_nodes(manifest: Manifest, root: Path, hashes: HashCache) -> dict[str, GeneratorNode]:
    """One node per generator, in order. Its fingerprint: name, run, kwargs, model.kwargs when it takes
    them, its module's and declared code's source, its tools' versions, the fingerprints of the
    generators it comes after, and the content of any path kwarg no generator makes."""
    nodes: dict[str, GeneratorNode] = {}
    outs = {name: g.out for name, g in manifest.generate.items()}
    for name, g in manifest.generate.items():
        spec, kwargs = manifest.generators[name]
        resolved, read = dict(kwargs), {}
        for key in spec.paths:
            if isinstance(kwargs.get(key), str):
                path = root / kwargs[key]
                resolved[key] = str(path)
                if owner(path, outs) is None:  # the user's own file or folder: its content
                    fingerprint.READ.add(str(path))
                    read[key] = hashes.file(path) if path.is_file() else hashes.folder(path) if path.is_dir() \
                        else "missing"
        fp = digest("generate", name, g.run, kwargs, manifest.model.kwargs if spec.model_kwargs else None,
                    source_hash(module_file(g.run)), [source_hash(module_file(m)) for m in spec.code],
                    tool_versions(spec.tools), [nodes[a].fingerprint for a in g.after], read)
        nodes[name] = GeneratorNode(name=name, run=g.run, kwargs=resolved, out=g.out, writes=spec.writes,
                                    fingerprint=fp, after=list(g.after), model_kwargs=spec.model_kwargs)
    _what_the_manifest_reads(manifest, _Generated(nodes))
    return nodes


def _what_the_manifest_reads(manifest: Manifest, generated: _Generated) -> None:
    """Each generator's targets (the files the manifest reads that it makes, and a file out) and, for
    a folder out, the paths it must have written before its output is committed."""
    reads = [(f"data.{split}.{key}", getattr(ref, key)) for split in ("train", "calibration", "tuning", "eval")
             if (ref := getattr(manifest.data, split)) is not None for key in ("annotations", "images")
             if getattr(ref, key) is not None] + [("source.checkpoint", manifest.source.checkpoint)]
    for field, path in reads:
        name = generated.by(path)
        if name is None:
            continue
        node = generated.generators[name]
        if node.writes == "folder":
            node.expects[field] = generated.relative(path)
        # doit targets are files: not an images folder, nor a YOLO / VOC labels folder
        folder = field.endswith(".images") or (field.endswith(".annotations") and _labels_folder(manifest, field))
        if not folder and path not in node.targets:
            node.targets.append(path)
    for node in generated.generators.values():
        if node.writes == "file" and node.out not in node.targets:
            node.targets.append(node.out)


def _labels_folder(manifest: Manifest, field: str) -> bool:
    """Whether data.<split>.annotations is a folder of YOLO or VOC labels, not one file."""
    ref = getattr(manifest.data, field.split(".")[1])
    return ref.format in ("yolo", "voc") or (ref.format == "auto" and ref.annotations.suffix != ".json")


def _read_paths(ref) -> list[Path]:
    """The paths a split is read from: annotations, images, and a names file."""
    return [p for p in (ref.annotations, ref.images, ref.names) if isinstance(p, Path)]


def _data_fingerprints(manifest: Manifest, hashes: HashCache, generated: _Generated) -> dict[str, str]:
    """Only splits that something reads are hashed: eval (mAP) and what the stages declare. A split a
    generator makes takes its fingerprint from the generator (its files do not exist yet)."""
    used = {"eval"} | {s for pipeline in manifest.pipelines.values() for name, params in pipeline
                       for s in stages.load(name).reads(params)}
    data_fp = {}
    for split in sorted(used):
        ref = getattr(manifest.data, split)
        paths = _read_paths(ref)
        fingerprint.READ.update(str(p) for p in paths)
        if generated.after(paths):  # a split partly generated is refused when the manifest loads
            data_fp[split] = digest([generated.fingerprint(p) for p in paths if generated.by(p)], ref.limit,
                                    *([ref.format, ref.names] if ref.format in ("yolo", "voc") or ref.names else []))
        elif ref.images.is_dir() and (ref.annotations is None or ref.annotations.exists()):
            data_fp[split] = digest(hashes.split(ref.annotations, ref.images, ref.format, ref.names), ref.limit)
        else:
            data_fp[split] = "missing"  # the stage reading it reports the missing file, with the fix
    return data_fp


def _data_after(manifest: Manifest, generated: _Generated) -> dict[str, list[str]]:
    """split -> the generators its files come from (the tasks that read it wait for them)."""
    return {split: generated.after(_read_paths(ref))
            for split in ("train", "calibration", "tuning", "eval") if (ref := getattr(manifest.data, split))}


def _model_code(spec) -> str:
    """The model section and the source of the builder's and the adapter's modules."""
    return digest(spec.builder, spec.kwargs, spec.input_shape, source_hash(module_file(spec.builder)),
                  spec.adapter, spec.adapter_kwargs, source_hash(module_file(spec.adapter)))


# What the model check runs: a change of these, or of the model's code, runs it again. The checkpoint
# it loads is in its key through the checked stages' fingerprints (strip's covers its bytes, or its
# generator's fingerprint, and how it is read).
CHECK_MODULES = ("release.check", "release.check_images", "release.adapter", "release.checkpoint",
                 "release.pickle_scan")


def _latency_host(device: dict):
    """A local runner's figure (local, and estimate, which scales one) is this host's: the CPU
    model, its cores and the thread setting name it, so two build hosts sharing a stage store
    never take each other's. An ssh runner's key names the device (its runner address) instead."""
    if str(device.get("runner", "local")).startswith("ssh://"):
        return None
    return {**host(), "threads": device.get("threads")}


def _stage_nodes(manifest: Manifest, store: Path, source_fp: str, data_fp: dict, data_after: dict,
                 source_after: list[str]):
    framework = code_hash(FRAMEWORK_MODULES)
    spec, source = manifest.model, manifest.source
    model_code = _model_code(spec)
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
                # The data a stage reads is in its fingerprint; when a generator makes it (or the data
                # it only verifies against), the stage waits for that generator's task.
                after = sorted({g for s in reads + sspec.verifies for g in data_after.get(s, [])} |
                               set(source_after if current == manifest.source.checkpoint else []))
                nodes[fp] = StageNode(name, params_dict, params.model_dump(mode="json", exclude_unset=True), fp,
                                      current, store / "stages" / name / short(fp), sspec.produces,
                                      after=after)
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
    # A local runner's figure is this host's, so the key names the host; an ssh runner's names the
    # device (its address is in the profile), and keeps the key it had.
    here = _latency_host(manifest.device)
    latency_base = digest(what, manifest.measure.model_dump(mode="json"), tool_versions(("onnxruntime",)),
                          code_hash(LATENCY_CODE), *([here] if here else []))
    return {"size": code_hash(("release.measure.size",)),
            "map": {fp: digest("map", fp, map_base) for fp in finals},
            "latency": {fp: digest("latency", fp, latency_base) for fp in finals}}


def build(manifest: Manifest, root: Path) -> Plan:
    root = Path(root)
    artifacts = root / "artifacts"
    hashes = HashCache(artifacts / ".cache" / "hashes.json")
    generators = _generator_nodes(manifest, root, hashes)
    generated = _Generated(generators)
    data_fp = _data_fingerprints(manifest, hashes, generated)
    data_after = _data_after(manifest, generated)
    checkpoint = manifest.source.checkpoint
    fingerprint.READ.add(str(checkpoint))
    source_after = generated.after([checkpoint])
    if source_after:
        source_fp = generated.fingerprint(checkpoint)
    else:
        source_fp = hashes.file(checkpoint) if checkpoint.is_file() else "missing"
    hashes.save()
    # The stage store (release/manifest_paths.py): stage outputs and measurements live there, named
    # by fingerprint; None is artifacts/ itself.
    store = store_folder(manifest.store.path if manifest.store else None, root)
    nodes, chains = _stage_nodes(manifest, store or artifacts, source_fp, data_fp, data_after, source_after)
    final = {variant: chain[-1] for variant, chain in chains.items()}
    checked = [fp for fp, n in nodes.items() if stages.load(n.stage).has("check") or stages.load(n.stage).SPEC.uses_model]
    inputs = Inputs.of(manifest).model_dump(mode="json")
    return Plan(name=manifest.name, version=manifest.version, manifest=manifest.path, root=root, inputs=inputs,
                target=manifest.device, measure=manifest.measure.model_dump(mode="json"),
                budget=manifest.budget.model_dump(mode="json"), select=manifest.select,
                tracking=manifest.tracking.model_dump(mode="json"), generators=generators,
                source_fp=source_fp, data_fp=data_fp, data_after=data_after, nodes=nodes, final=final,
                chains=chains, checked=checked,
                check_code=digest(_model_code(manifest.model), code_hash(CHECK_MODULES)),
                keys=_measure_keys(manifest, data_fp, list(dict.fromkeys(final.values()))),
                version_from=manifest.version_from, store=store)
