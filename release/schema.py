"""The manifest's JSON Schema (draft 2020-12), for editors: completion, hover docs and checking
while a manifest is typed (`# yaml-language-server: $schema=manifest.schema.json` as its first line).

    release schema > manifest.schema.json      # for your own project
    python -m release.schema --write           # regenerate this checkout's two copies

Generated from the pydantic models that validate a manifest (release.manifest.Manifest, with
model_json_schema) and, for `variants:`, from the stage registry: a step is a bare stage name (the
stages whose params all have defaults) or a one-key mapping {stage: params} checked against that
stage's Params. A few field validators the models cannot express as schema (folder-name patterns,
the schema version, generator names) are added here; `version` is left a free string, since a
version template is not a folder name yet. The schema is what an editor can check; the
cross-field rules (leniency needs allow_missing, kinds chained checkpoint -> weights -> onnx, paths
that exist, ...) stay with `release check`, which is always the authority.

Output is deterministic (sorted keys, stage defs named `<Stage>Params`), so the committed copies
(docs/manifest.schema.json, and release/manifest.schema.json shipped in the package) can be
compared with a fresh one (tests/unit/test_schema.py). Imports only pydantic and the stage
modules, which load nothing heavy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

DRAFT = "https://json-schema.org/draft/2020-12/schema"
PACKAGE_COPY = Path(__file__).with_name("manifest.schema.json")
DOCS_COPY = Path(__file__).resolve().parents[1] / "docs" / "manifest.schema.json"
REGENERATE = "python -m release.schema --write"
DESCRIPTION = ("A release manifest: the checkpoint, model code, data, target device, budgets and the "
               "variants to build and measure. Reference: docs/manifest.md; `release check MANIFEST` "
               "checks everything this schema cannot (paths, model code, stage order).")


def schema() -> dict[str, Any]:
    """The manifest's JSON Schema as a dict."""
    from release.manifest import FOLDER_NAME, Manifest

    top = Manifest.model_json_schema(mode="validation", ref_template="#/$defs/{model}")
    defs = top.pop("$defs")
    _field_rules(top, defs)
    for name, definition in _stage_defs().items():
        if name in defs:
            raise RuntimeError(f"schema: a stage's def name {name} collides with a manifest model's")
        defs[name] = definition
    defs.update(_variant_defs())
    top["properties"]["variants"].update(
        additionalProperties={"$ref": "#/$defs/Pipeline"}, propertyNames={"pattern": FOLDER_NAME},
        description="variant name -> its pipeline; each variant is built, measured and gated, and "
                    "`select` picks the release among those within budget")
    whole = {"$schema": DRAFT, **top, "title": "release manifest", "description": DESCRIPTION, "$defs": defs}
    return _uniform_tuples(whole)


def render() -> str:
    """The schema as the committed files hold it."""
    return json.dumps(schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _stage_defs() -> dict[str, dict]:
    """`<Stage>Params` for every registered stage, its nested models as `<Stage><Model>`."""
    from release import stages

    defs: dict[str, dict] = {}
    for name in stages.names():
        stage = stages.load(name)
        prefix = _def_name(name)
        one = stage.Params.model_json_schema(mode="validation", ref_template="#/$defs/{model}")
        nested = one.pop("$defs", {})
        renamed = {f"#/$defs/{n}": f"#/$defs/{prefix}{n}" for n in nested}
        for n, definition in nested.items():
            defs[f"{prefix}{n}"] = _retarget(definition, renamed)
        one = _retarget(one, renamed)
        one["title"] = f"{name} params"
        one["description"] = (f"{stage.SPEC.summary} Takes {stage.SPEC.consumes}, gives {stage.SPEC.produces}. "
                              f"YAML path: variants.<variant>[<step>].{name}")
        defs[f"{prefix}Params"] = one
    return defs


def _variant_defs() -> dict[str, dict]:
    """Pipeline (a list of steps), Step, BareStep (a stage name) and StageStep ({stage: params})."""
    from release import stages

    bare, params = [], {}
    for name in stages.names():
        stage = stages.load(name)
        ref = {"$ref": f"#/$defs/{_def_name(name)}Params"}
        if _all_default(stage.Params):
            bare.append(name)
            params[name] = {"anyOf": [ref, {"type": "null"}]}  # `- export:` with nothing after it
        else:
            params[name] = dict(ref)
        params[name]["description"] = stage.SPEC.summary
    return {
        "Pipeline": {"type": "array", "items": {"$ref": "#/$defs/Step"}, "minItems": 1,
                     "description": "the variant's steps in order, from the checkpoint to the ONNX "
                                    "file that ships, e.g. [strip, export, {quantize: {mode: dynamic}}]"},
        "Step": {"anyOf": [{"$ref": "#/$defs/BareStep"}, {"$ref": "#/$defs/StageStep"}],
                 "description": "a stage name, or a one-key mapping {stage: {param: value}}"},
        "BareStep": {"type": "string", "enum": bare,
                     "description": "a stage with all its params at their defaults (the others need "
                                    "params: write them as {stage: {param: value}})"},
        "StageStep": {"type": "object", "properties": params, "additionalProperties": False,
                      "minProperties": 1, "maxProperties": 1,
                      "description": "one stage with its params: {stage: {param: value}}"},
    }


def _field_rules(top: dict, defs: dict) -> None:
    """Field validators of release.manifest that a schema can say (the loader's messages stay the
    authority; these only let an editor flag the same mistakes)."""
    from release.manifest import FOLDER_NAME, GENERATOR_NAME, SCHEMA_VERSION

    props = top["properties"]
    props["schema_version"]["const"] = SCHEMA_VERSION
    props["name"].update(pattern=FOLDER_NAME, maxLength=128, **{"not": {"pattern": r"\.\."}})
    defs["ModelSpec"]["properties"]["input_shape"]["prefixItems"] = [{"type": "integer", "exclusiveMinimum": 0}] * 4
    props["generate"]["propertyNames"] = {"pattern": GENERATOR_NAME, "maxLength": 64}
    eval_ = defs["Data"]["properties"]["eval"]
    labelled = {"required": ["annotations"], "properties": {"annotations": {"type": "string"}}}
    defs["Data"]["properties"]["eval"] = {"allOf": [{"$ref": eval_.pop("$ref")}, labelled], **eval_}
    for profile in ("Profile", "Target"):  # ssh_options may be one string, split like a shell would
        field = defs[profile]["properties"]["ssh_options"]
        items = {key: field.pop(key) for key in ("type", "items")}
        field["anyOf"] = [items, {"type": "string"}]


def _uniform_tuples(node: Any) -> Any:
    """`node` with each fixed-length tuple of one item type written as `items` plus its length
    (the same rule): editors whose validator is still draft-07, like VS Code's YAML extension,
    ignore 2020-12's `prefixItems` but check `items`."""
    if isinstance(node, list):
        return [_uniform_tuples(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: _uniform_tuples(v) for k, v in node.items()}
    prefix = node.get("prefixItems")
    if prefix and all(p == prefix[0] for p in prefix) and node.get("minItems") == node.get("maxItems") == len(prefix) \
            and node.get("items", False) is False:
        node.pop("prefixItems")
        node["items"] = prefix[0]
    return node


def _all_default(params) -> bool:
    """Whether a stage's params validate with none given: it may then be a bare name."""
    from pydantic import ValidationError

    try:
        params.model_validate({})
    except ValidationError:
        return False
    return True


def _def_name(stage: str) -> str:
    return "".join(part.capitalize() for part in stage.replace("-", "_").split("_"))


def _retarget(node: Any, names: dict[str, str]) -> Any:
    """`node` with every $ref in `names` renamed."""
    if isinstance(node, dict):
        return {k: names.get(v, v) if k == "$ref" else _retarget(v, names) for k, v in node.items()}
    if isinstance(node, list):
        return [_retarget(v, names) for v in node]
    return node


def write(docs: Path = DOCS_COPY, package: Path = PACKAGE_COPY) -> list[Path]:
    """Regenerate a source checkout's copies (the docs one and the package's); the paths written."""
    from release.atomic import write_text
    from release.errors import ReleaseError

    if not (docs.parent.is_dir() and (docs.parent.parent / "pyproject.toml").is_file()):
        raise ReleaseError(f"--write regenerates the copies in a source checkout, and {docs.parent.parent} is "
                           f"not one; to get the schema, run: release schema > manifest.schema.json")
    text = render()
    for path in (docs, package):
        write_text(path, text)
    return [docs, package]


def main(argv: list[str] | None = None) -> int:
    from release.errors import ReleaseError

    argv = sys.argv[1:] if argv is None else argv
    if argv not in ([], ["--write"]):
        print("usage: python -m release.schema [--write]", file=sys.stderr)
        return 2
    if not argv:
        sys.stdout.write(render())
        return 0
    try:
        for path in write():
            print(f"wrote {path}", file=sys.stderr)
    except ReleaseError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
