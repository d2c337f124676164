"""The stage registry: stage name -> module path, imported only when a manifest names the stage.

Adding a stage = one module that follows release/stages/base.py, one line here, and its tests.
"""

from __future__ import annotations

import importlib
from types import ModuleType

REGISTRY: dict[str, str] = {
    "strip": "release.stages.strip",
    "export": "release.stages.export",
    "quantize": "release.stages.quantize",
    "fp16": "release.stages.fp16",
    "prune": "release.stages.prune",
    "finetune": "release.stages.finetune",
    "distill": "release.stages.distill",
}


def names() -> list[str]:
    return sorted(REGISTRY)


def load(name: str) -> ModuleType:
    """The stage module (SPEC, Params, run). Raises KeyError for an unknown name."""
    return importlib.import_module(REGISTRY[name])


def reads(module: ModuleType, params) -> tuple[str, ...]:
    """The data splits a stage instance reads (a stage may narrow SPEC.reads by its params)."""
    fn = getattr(module, "reads", None)
    return tuple(fn(params)) if fn else module.SPEC.reads
