"""The manifest reference (docs/manifest.md), generated from the pydantic models that validate a
manifest: release.manifest.Manifest with its nested models, and every registered stage's Params.

    python -m release.docgen > docs/manifest.md

For each field: its YAML path, type (with bounds), default and description. Imports only what
validating a manifest imports (pydantic and the stage modules, which load nothing heavy).
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from pathlib import Path

from pydantic import BaseModel

HEADER = """# Manifest reference

Generated from the pydantic models in `release/` by `python -m release.docgen > docs/manifest.md`;
do not edit it by hand (`tests/unit/test_docs.py` fails when it is stale). Field descriptions live
in the code: change them there and regenerate.

A manifest is one YAML mapping. Paths are relative to the project root (the folder `doit` runs
in). Unknown keys are errors with a "did you mean"; `release check MANIFEST` reports every problem
at once, each with its line. `variants` maps a variant name to its pipeline, a list of steps; a
step is a stage name (`export`) or a one-key mapping `{stage: {param: value}}`, with the params
listed under [Stage params](#stage-params). `select` picks the release among the variants that meet
every budget: `best_map` (highest mAP, then lower latency, then smaller size), `smallest` or
`fastest`.

Editors can complete and check a manifest as you type: `release schema > manifest.schema.json`
writes its JSON Schema, made from the same models as this page, and a first line
`# yaml-language-server: $schema=../manifest.schema.json` (a path relative to the manifest) lets
VS Code's YAML extension, or any editor that runs yaml-language-server, use it. This repository's
copy is [manifest.schema.json](manifest.schema.json); see the README's
[Editor completion](../README.md#editor-completion).
"""

STAGES = """## Stage params

The YAML path of a stage param is `variants.<variant>[<step>].<stage>.<param>`; below it is
written `<stage>.<param>`. What each stage does, reads and records: [stages.md](stages.md).
"""


def manifest_reference() -> str:
    """The whole reference as markdown."""
    from release import stages
    from release.manifest import Manifest

    parts = [HEADER]
    parts += _sections(Manifest, "", "Top level", "##", {})
    parts.append(STAGES)
    for name in stages.names():
        module = stages.load(name)
        spec = module.SPEC
        summary = spec.summary.rstrip(".")
        intro = f"{summary[:1].upper()}{summary[1:]}. Takes {spec.consumes}, gives {spec.produces}."
        parts += _sections(module.Params, name, f"`{name}`", "###", {}, intro)
    return "\n".join(parts).rstrip() + "\n"


def _sections(model: type[BaseModel], path: str, title: str, level: str, seen: dict,
              intro: str | None = None) -> list[str]:
    """A table of `model`'s fields under `path`, then one section per nested model not seen yet."""
    seen[model] = path
    doc = model.__dict__.get("__doc__")
    lines = [f"{level} {title}", ""]
    if intro or doc:
        lines += [intro or inspect.cleandoc(doc), ""]
    lines += ["| YAML path | type | default | description |", "|---|---|---|---|"]
    children = []
    for name, field in model.model_fields.items():
        full = f"{path}.{name}" if path else name
        nested, keyed = _nested(field.annotation)
        described = field.description or ""
        if nested is not None:
            key_path = f"{full}.<name>" if keyed else full
            known = _known(nested, seen)
            if known is None:
                seen[nested] = key_path
                children.append((nested, key_path))
                described = _join(described, f"Fields: `{key_path}.*` below.")
            else:
                other, extra = known
                less = f", except {', '.join(f'`{e}`' for e in extra)}" if extra else ""
                described = _join(described, f"The fields of `{other}`{less}.")
        lines.append(f"| `{full}` | {_cell(_type(field.annotation) + _bounds(field.metadata))} | "
                     f"{_cell(_default(field))} | {_prose(described)} |")
    lines.append("")
    for nested, key_path in children:
        lines += _sections(nested, key_path, f"`{key_path}`", level, seen)
    return lines


def _nested(annotation) -> tuple[type[BaseModel] | None, bool]:
    """The model a field holds (directly, optionally, or as the values of a mapping), and whether
    it sits under a key of the user's choosing."""
    for arg in (annotation, *typing.get_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg, typing.get_origin(annotation) is dict
    return None, False


def _known(model: type[BaseModel], seen: dict) -> tuple[str, list[str]] | None:
    """Where this model's fields were listed already (it, or a subclass of it), and the fields that
    listing has beyond this model's."""
    for other, path in seen.items():
        if issubclass(other, model):
            return path, [f for f in other.model_fields if f not in model.model_fields]
    return None


def _type(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return _type(args[0]) + _bounds(args[1:])
    if origin is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type(a) for a in args)
    if origin is tuple and args and args[-1] is not Ellipsis and len(args) > 1:
        return f"list of {len(args)} {_type(args[0])}"
    if origin in (list, tuple):
        return f"list of {_type(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {_type(args[0])} to {_type(args[1])}"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "mapping"
    names = {type(None): "null", typing.Any: "any", Path: "path", str: "string", bool: "boolean"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("min_length", "at least"),
          ("max_length", "at most"))


def _bounds(metadata) -> str:
    """' (> 0, < 1)' from pydantic's constraint metadata (nested FieldInfo included)."""
    found = []
    for item in metadata:
        inner = getattr(item, "metadata", None)
        if isinstance(inner, list):
            found += [b for b in _bounds(inner).strip(" ()").split(", ") if b]
            continue
        found += [f"{sign} {getattr(item, key)}" for key, sign in BOUNDS if getattr(item, key, None) is not None]
    return f" ({', '.join(found)})" if found else ""


def _default(field) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "all defaults"
    return f"`{json.dumps(value, default=str)}`"


def _join(text: str, more: str) -> str:
    """A description and a sentence about where its fields are listed."""
    if text and not text.endswith((".", "!", ")")):
        text += "."
    return f"{text} {more}".strip()


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _prose(text: str) -> str:
    """A description as a table cell: '<' outside code spans escaped (markdown reads <name> as HTML)."""
    parts = _cell(text).split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;") for i, p in enumerate(parts))


if __name__ == "__main__":
    print(manifest_reference(), end="")
