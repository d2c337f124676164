"""The stage contract (release/stages/base.py) is checked when a stage loads, and each stage's
fingerprint carries only its own tools' versions."""

from __future__ import annotations

import textwrap
import types

import pytest

from release import fingerprint, stages
from release.stages import ContractError
from tests.conftest import placeholder_data, tiny_manifest_dict, write_manifest


def _module(body: str, name: str = "demo_stage") -> types.ModuleType:
    module = types.ModuleType(f"tests.fake.{name}")
    code = textwrap.dedent('''
        from release.stages.base import StageParams, StageSpec, hook

        SPEC = StageSpec(name="NAME", version=1, consumes="onnx", produces="onnx", summary="test")


        class Params(StageParams):
            pass


        def run(ctx):
            return {}
    ''').replace("NAME", name) + textwrap.dedent(body)
    exec(compile(code, module.__name__, "exec"), module.__dict__)  # noqa: S102 - our own test source
    for value in vars(module).values():
        if isinstance(value, types.FunctionType):
            value.__module__ = module.__name__
    return module


def test_every_registered_stage_follows_the_contract():
    for name in stages.names():
        stage = stages.load(name)
        assert stage.SPEC.name == name and stage.SPEC.tools, name


def test_a_misspelled_hook_is_an_error_at_load():
    with pytest.raises(ContractError, match=r"need_labels is marked @hook, but there is no such hook.*needs_labels"):
        stages.verify(_module("@hook\ndef need_labels(params, split):\n    return False\n"), "demo_stage")


def test_a_hook_with_another_signature_is_an_error_at_load():
    with pytest.raises(ContractError, match=r"needs_labels\(params\): the hook's signature is needs_labels\(params, split\)"):
        stages.verify(_module("@hook\ndef needs_labels(params):\n    return False\n"), "demo_stage")


def test_an_unmarked_hook_is_an_error_not_a_function_that_never_runs():
    with pytest.raises(ContractError, match="must be marked @hook"):
        stages.verify(_module("def describe(facts):\n    return None\n"), "demo_stage")


def test_spec_params_and_run_are_checked():
    with pytest.raises(ContractError, match="SPEC must be a StageSpec named 'other'"):
        stages.verify(_module(""), "other")
    with pytest.raises(ContractError, match=r"run\(ctx\) must take exactly"):
        stages.verify(_module("def run(ctx, extra):\n    return {}\n"), "demo_stage")


def test_defaults_of_hooks_a_stage_does_not_define():
    fp16 = stages.load("fp16")
    assert fp16.reads(None) == () and fp16.needs_labels(None, "eval") is True
    assert fp16.code_refs(None) == [] and fp16.check(None, None, None) == [] and fp16.describe({}) is None
    assert fp16.next_model(None, None, "the model") == "the model"


def test_a_tool_joins_only_the_fingerprints_of_stages_that_call_it(tmp_path, monkeypatch):
    from release import manifest, planner as plan

    placeholder_data(tmp_path)
    doc = tiny_manifest_dict(variants={"half": ["strip", "export", "fp16"]})
    del doc["generate"]
    loaded = manifest.load(write_manifest(tmp_path, doc), tmp_path)
    before = {n.stage: n.fingerprint for n in plan.build(loaded, tmp_path).nodes.values()}
    real = fingerprint._version
    monkeypatch.setattr(fingerprint, "_version", lambda name: "9.9" if name == "onnxruntime" else real(name))
    after = {n.stage: n.fingerprint for n in plan.build(loaded, tmp_path).nodes.values()}
    assert before["strip"] == after["strip"]  # strip calls torch and safetensors only
    assert before["export"] != after["export"] and before["fp16"] != after["fp16"]


def test_an_edit_to_shared_code_rebuilds_only_the_stages_that_use_it(tmp_path, monkeypatch):
    """release.data decides what calibration and training read; strip, export and fp16 (which only
    verify against data) keep their outputs when it changes."""
    from release import manifest, planner
    from release.usercode import module_file

    placeholder_data(tmp_path)
    doc = tiny_manifest_dict(variants={"half": ["strip", "export", "fp16"],
                                       "int8": ["strip", "export", {"quantize": {"mode": "static"}}]})
    del doc["generate"]
    loaded = manifest.load(write_manifest(tmp_path, doc), tmp_path)
    before = {n.stage: n.fingerprint for n in planner.build(loaded, tmp_path).nodes.values()}
    edited, real = str(module_file("release.data")), planner.source_hash
    monkeypatch.setattr(planner, "source_hash", lambda path: "edited" if str(path) == edited else real(path))
    after = {n.stage: n.fingerprint for n in planner.build(loaded, tmp_path).nodes.values()}
    assert [s for s in before if before[s] != after[s]] == ["quantize"]
