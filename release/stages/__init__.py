"""The stage registry: stage name -> module path, imported only when a manifest names the stage.

Adding a stage = one module that follows release/stages/base.py, one line here, and its tests.
`load` checks the module against the contract in base.py (as pluggy checks hook implementations
against their specs), so a misspelled hook or a wrong signature is an error when the stage loads.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from types import ModuleType
from typing import Any

from release.stages.base import HOOKS, Description, StageParams, StageSpec

REGISTRY: dict[str, str] = {
    "strip": "release.stages.strip",
    "export": "release.stages.export",
    "quantize": "release.stages.quantize",
    "fp16": "release.stages.fp16",
    "simplify": "release.stages.simplify",
    "prune": "release.stages.prune",
    "finetune": "release.stages.finetune",
    "distill": "release.stages.distill",
}


class ContractError(TypeError):
    """A stage module that does not follow release/stages/base.py (a bug in the stage, not user input)."""


class Stage:
    """A loaded, checked stage: SPEC, Params, run, and every optional hook with its default."""

    def __init__(self, module: ModuleType):
        self.module = module
        self.SPEC: StageSpec = module.SPEC
        self.Params: type[StageParams] = module.Params
        self.run = module.run
        self.file: str = module.__file__
        self._hooks = {name: getattr(module, name) for name in HOOKS if hasattr(module, name)}

    def has(self, hook: str) -> bool:
        return hook in self._hooks

    def reads(self, params) -> tuple[str, ...]:
        fn = self._hooks.get("reads")
        return tuple(fn(params)) if fn else self.SPEC.reads

    def needs_labels(self, params, split: str) -> bool:
        fn = self._hooks.get("needs_labels")
        return bool(fn(params, split)) if fn else True

    def code_refs(self, params) -> list[str]:
        fn = self._hooks.get("code_refs")
        return list(fn(params)) if fn else []

    def check(self, params, manifest, model) -> list[tuple[tuple, str]]:
        fn = self._hooks.get("check")
        return list(fn(params, manifest, model)) if fn else []

    def next_model(self, params, manifest, model) -> Any:
        fn = self._hooks.get("next_model")
        return fn(params, manifest, model) if fn else model

    def describe(self, facts: dict) -> Description | None:
        fn = self._hooks.get("describe")
        return fn(facts) if fn else None


def names() -> list[str]:
    return sorted(REGISTRY)


@functools.lru_cache(maxsize=None)
def load(name: str) -> Stage:
    """The checked stage. Raises KeyError for an unknown name, ContractError for a broken module."""
    module = importlib.import_module(REGISTRY[name])
    verify(module, name)
    return Stage(module)


def verify(module: ModuleType, name: str) -> None:
    """Raise ContractError naming what in `module` breaks the stage contract."""
    where = module.__name__
    spec = getattr(module, "SPEC", None)
    if not isinstance(spec, StageSpec) or spec.name != name:
        raise ContractError(f"{where}: SPEC must be a StageSpec named '{name}'")
    params = getattr(module, "Params", None)
    if not (isinstance(params, type) and issubclass(params, StageParams)):
        raise ContractError(f"{where}: Params must be a subclass of release.stages.base.StageParams")
    run = getattr(module, "run", None)
    if not callable(run) or len(inspect.signature(run).parameters) != 1:
        raise ContractError(f"{where}: run(ctx) must take exactly the StageContext")
    for attr, fn in vars(module).items():
        if not inspect.isfunction(fn) or fn.__module__ != where:
            continue
        marked = getattr(fn, "__stage_hook__", False)
        if attr in HOOKS and not marked:
            raise ContractError(f"{where}.{attr}: a hook of this name must be marked @hook "
                                f"(release.stages.base.hook)")
        if not marked:
            continue
        if attr not in HOOKS:
            from release.errors import did_you_mean

            raise ContractError(f"{where}.{attr} is marked @hook, but there is no such hook."
                                f"{did_you_mean(attr, list(HOOKS))} Hooks: {', '.join(HOOKS)}")
        want = HOOKS[attr][0]
        got = tuple(inspect.signature(fn).parameters)
        if got != want:
            raise ContractError(f"{where}.{attr}{_sig(got)}: the hook's signature is {attr}{_sig(want)}")


def _sig(params: tuple[str, ...]) -> str:
    return f"({', '.join(params)})"
