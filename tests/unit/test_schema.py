"""The manifest's JSON Schema (release/schema.py): the committed copies are the generated one, it
is a valid draft 2020-12 schema, and a real validator (jsonschema) agrees with `release check` on
real manifests and on broken ones, so the schema is neither looser nor stricter than the loader
where it speaks. `release schema` imports nothing heavy."""

from __future__ import annotations

import copy
import difflib
import json
import subprocess
import sys
import tomllib

import jsonschema
import pytest
import yaml

from release import schema, stages
from release.errors import ManifestError, ReleaseError
from tests.conftest import REPO, tiny_manifest_dict, write_manifest

COPIES = {"docs/manifest.schema.json": REPO / "docs" / "manifest.schema.json",
          "release/manifest.schema.json": REPO / "release" / "manifest.schema.json"}


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema.schema())


@pytest.mark.parametrize("name", sorted(COPIES))
def test_the_committed_copy_is_the_generated_schema(name):
    committed, generated = COPIES[name].read_text(), schema.render()
    if committed != generated:
        diff = "".join(list(difflib.unified_diff(committed.splitlines(True), generated.splitlines(True),
                                                 name, "release.schema"))[:60])
        pytest.fail(f"{name} is stale. Regenerate both copies with\n    {schema.REGENERATE}\n" + diff)


def test_it_is_a_draft_2020_12_schema_and_deterministic():
    generated = schema.schema()
    assert generated["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert generated["title"] and generated["description"]
    jsonschema.Draft202012Validator.check_schema(generated)
    assert schema.render() == schema.render()
    assert list(json.loads(schema.render())) == sorted(generated)


def test_it_says_nothing_a_draft_07_editor_would_skip_where_it_need_not():
    # VS Code's YAML extension validates with draft-07 rules: a 2020-12 `prefixItems` would go unchecked.
    assert "prefixItems" not in schema.render(), "a tuple of mixed item types: say it so draft-07 editors check it"


def test_every_stage_param_is_there_with_its_description():
    defs = schema.schema()["$defs"]
    for name in stages.names():
        params = stages.load(name).Params
        props = defs[f"{schema._def_name(name)}Params"]["properties"]
        assert set(props) == set(params.model_fields), name
        for field, info in params.model_fields.items():
            assert props[field].get("description") == info.description, f"{name}.{field}"


def test_the_package_ships_its_copy():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "manifest.schema.json" in config["tool"]["setuptools"]["package-data"]["release"]
    assert schema.PACKAGE_COPY == REPO / "release" / "manifest.schema.json"


def test_the_recipe_names_the_schema_on_its_first_line():
    first = (REPO / "recipes" / "rpi_detector.yaml").read_text().splitlines()[0]
    assert first == "# yaml-language-server: $schema=../docs/manifest.schema.json"
    assert (REPO / "recipes" / "../docs/manifest.schema.json").resolve() == COPIES["docs/manifest.schema.json"]


def test_release_schema_prints_it_and_imports_nothing_heavy():
    code = ("import sys; from release import cli; rc = cli.main(['schema']); "
            "sys.stderr.write(repr([m for m in ('torch', 'onnx', 'onnxruntime', 'mlflow', 'numpy') "
            "if m in sys.modules])); sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "[]"
    assert done.stdout == schema.render()


def _steps(doc, variant, steps):
    doc["variants"][variant] = steps
    return doc


def _nested(doc, path, value):
    *parents, last = path
    node = doc
    for key in parents:
        node = node[key]
    node[last] = value
    return doc


VALID = {
    "tiny": lambda d: d,
    "ssh_options as one string": lambda d: _nested(d, ("target", "ssh_options"), "-i key"),
    "a bare stage with default params": lambda d: _steps(d, "tuned", ["strip", "finetune", "export"]),
    "a stage with null params": lambda d: _steps(d, "fp32", ["strip", {"export": None}]),
    "a stage with params needed": lambda d: _steps(d, "pruned", ["strip", {"prune": {"method": "channel", "amount": 0.3}},
                                                              "export"]),
}
BROKEN = {
    "unknown top-level key": lambda d: _nested(d, ("selcet",), "fastest"),
    "unknown nested key": lambda d: _nested(d, ("source", "dorp"), ["aux_head.*"]),
    "missing required section": lambda d: d.pop("model") and d,
    "wrong type": lambda d: _nested(d, ("budget", "size_mb"), "1 MB"),
    "unknown stage name": lambda d: _steps(d, "int8", ["strip", "export", {"quantise": {"mode": "dynamic"}}]),
    "unknown bare stage name": lambda d: _steps(d, "fp32", ["strip", "exprt"]),
    "wrong stage param type": lambda d: _steps(d, "tuned", ["strip", {"finetune": {"steps": "many"}}, "export"]),
    "stage param not in its enum": lambda d: _steps(d, "int8", ["strip", "export", {"quantize": {"mode": "int4"}}]),
    "stage param out of bounds": lambda d: _steps(d, "tuned", ["strip", {"finetune": {"lr": 2.0}}, "export"]),
    "unknown stage param": lambda d: _steps(d, "int8", ["strip", "export", {"quantize": {"fromat": "qdq"}}]),
    "bare stage that needs params": lambda d: _steps(d, "pruned", ["strip", "prune", "export"]),
    "two stages in one step": lambda d: _steps(d, "fp32", [{"strip": {}, "export": {}}]),
    "nested stage param model": lambda d: _steps(d, "small", ["strip", {"distill": {"student": {"kwarg": {}}}},
                                                              "export"]),
    "input shape with a zero": lambda d: _nested(d, ("model", "input_shape"), [1, 3, 0, 64]),
    "input shape of three": lambda d: _nested(d, ("model", "input_shape"), [1, 3, 64]),
    "bad variant name": lambda d: _steps(d, "-fp32", ["strip", "export"]),
    "no variants": lambda d: _nested(d, ("variants",), {}),
    "eval without labels": lambda d: d["data"]["eval"].pop("annotations") and d,
    "another schema version": lambda d: _nested(d, ("schema_version",), 2),
    "name not a folder name": lambda d: _nested(d, ("name",), "a/b"),
    "generator name not a task name": lambda d: _nested(d, ("generate",), {"1data": d["generate"]["data"]}),
}


def _loader_accepts(doc: dict, tmp_path) -> bool:
    from release import manifest

    try:
        manifest.load(write_manifest(tmp_path, doc), tmp_path)
    except ManifestError:
        return False
    return True


def test_the_recipe_is_valid(validator):
    doc = yaml.safe_load((REPO / "recipes" / "rpi_detector.yaml").read_text())
    assert list(validator.iter_errors(doc)) == []


@pytest.mark.parametrize("case", sorted(VALID))
def test_valid_manifests_pass_the_schema_and_the_loader(case, validator, tmp_path):
    doc = VALID[case](copy.deepcopy(tiny_manifest_dict()))
    assert [e.message for e in validator.iter_errors(doc)] == []
    assert _loader_accepts(doc, tmp_path)


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_manifests_fail_the_schema_and_the_loader(case, validator, tmp_path):
    doc = BROKEN[case](copy.deepcopy(tiny_manifest_dict()))
    assert not validator.is_valid(doc), case
    assert not _loader_accepts(doc, tmp_path), case


def test_write_regenerates_both_copies_in_a_checkout_only(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "pkg").mkdir()
    docs, package = tmp_path / "docs" / "manifest.schema.json", tmp_path / "pkg" / "manifest.schema.json"
    with pytest.raises(ReleaseError, match=r"source checkout.*release schema > manifest.schema.json"):
        schema.write(docs, package)
    assert not docs.exists() and not package.exists()
    (tmp_path / "pyproject.toml").write_text("")
    docs.write_text("stale")
    assert schema.write(docs, package) == [docs, package]
    assert docs.read_text() == package.read_text() == schema.render()
