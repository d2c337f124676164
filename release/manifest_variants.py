"""A manifest's `variants:` parsed step by step against the stage registry (each step's params
validated by its stage, the kinds chained checkpoint -> weights -> onnx), and the data each
stage reads checked against `data:`; every problem located."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from release import stages
from release.errors import did_you_mean
from release.manifest_problems import _describe, _Problems, _short

if TYPE_CHECKING:
    from release.manifest import Manifest

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


def _check_data_needs(manifest: Manifest, problems: _Problems) -> None:
    for variant, pipeline in manifest.pipelines.items():
        for i, (name, params) in enumerate(pipeline):
            module = stages.load(name)
            for split in module.reads(params):
                ref = getattr(manifest.data, split)
                if ref is None:
                    problems.add(("variants", variant, i), f"stage '{name}' reads data.{split}, "
                                                           f"which the manifest does not define. Add data.{split}.")
                elif not ref.labelled and module.needs_labels(params, split):
                    problems.add(("variants", variant, i), f"stage '{name}' needs the labels of data.{split}, "
                                                           f"which has no annotations. Add data.{split}.annotations"
                                                           f", or data.{split}.names to read its YOLO labels"
                                                           f"{module.SPEC.no_labels_hint}.")
