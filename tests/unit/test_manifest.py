import re
from pathlib import Path

import pytest
import yaml

from release import manifest
from release.errors import ManifestError
from tests.conftest import REPO, generated_at, placeholder_data, tiny_manifest_dict, write_manifest


def load_doc(tmp_path: Path, doc: dict):
    return manifest.load(write_manifest(tmp_path, doc), tmp_path)


def test_example_manifest_is_valid():
    m = manifest.load(REPO / "recipes" / "rpi_detector.yaml", REPO)
    assert m.name == "rpi_detector"
    assert {"fp32", "fp16", "int8_dynamic", "int8_qdq", "int8_qop"} <= set(m.pipelines)
    assert [s for s, _ in m.pipelines["int8_qop"]] == ["strip", "export", "quantize"]
    assert m.source.checkpoint == REPO / "artifacts/demo/train_last.ckpt"  # relative to the root


def test_every_problem_is_reported_with_its_line(tmp_path):
    text = yaml.safe_dump(tiny_manifest_dict(), sort_keys=False)
    text = text.replace("drop:", "trustd: true\n  drop:").replace("size_mb: 100.0", "size_mb: two")
    text = text.replace("- strip\n  - export\n  int8", "- strip\n  - exprot\n  int8")
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ManifestError) as err:
        manifest.load(path, tmp_path)
    message = str(err.value)
    lines = text.splitlines()
    assert str(path) in message and "3 problems" in message
    trustd_line = next(i for i, line in enumerate(lines, 1) if "trustd" in line)
    assert f"line {trustd_line}, source.trustd: unknown key 'trustd'. Did you mean 'trusted'?" in message
    assert "budget.size_mb: got 'two'" in message
    assert "variants.fp32[1]: unknown stage 'exprot'. Did you mean 'export'?" in message


def test_stage_params_are_validated_with_their_path(tmp_path):
    doc = tiny_manifest_dict(variants={"v": ["strip", {"export": {"opset": 5, "opst": 17}}]})
    with pytest.raises(ManifestError) as err:
        load_doc(tmp_path, doc)
    assert "variants.v[1].export.opset: got 5" in str(err.value)
    assert "variants.v[1].export.opst: unknown key 'opst'. Did you mean 'opset'?" in str(err.value)


@pytest.mark.parametrize("steps, expected", [
    (["export"], "takes weights but gets checkpoint"),
    (["strip"], "must end in an ONNX model"),
    (["strip", "export", "strip"], "takes checkpoint but gets onnx"),
    (["strip", {"export": {}, "fp16": {}}], "one-key mapping"),
])
def test_pipelines_are_type_checked(tmp_path, steps, expected):
    with pytest.raises(ManifestError, match=expected):
        load_doc(tmp_path, tiny_manifest_dict(variants={"v": steps}))


def test_a_stage_that_reads_missing_data_is_an_error(tmp_path):
    doc = tiny_manifest_dict()
    del doc["data"]["calibration"]
    with pytest.raises(ManifestError, match=r"reads data.calibration, which the manifest does not define"):
        load_doc(tmp_path, doc)


def test_a_split_is_generated_whole_or_not_at_all(tmp_path):
    doc = tiny_manifest_dict()
    doc["data"]["eval"]["images"] = "elsewhere/images"
    with pytest.raises(ManifestError, match=r"data.eval: data.eval.annotations is inside generate.data.out, but "
                                            r"data.eval.images is not"):
        load_doc(tmp_path, doc)


def test_schema_version_and_invalid_yaml(tmp_path):
    with pytest.raises(ManifestError, match="this release reads schema_version 1"):
        load_doc(tmp_path, tiny_manifest_dict(schema_version=7))
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: x\n  version: [1\n")
    with pytest.raises(ManifestError, match=r"broken.yaml: line \d+, column \d+: not valid YAML"):
        manifest.load(bad, tmp_path)


def test_resolve_by_name_under_recipes(tmp_path):
    (tmp_path / "recipes").mkdir()
    target = write_manifest(tmp_path / "recipes", tiny_manifest_dict(), "mine.yaml")
    assert manifest.resolve("mine", tmp_path) == target
    assert manifest.resolve("mine.yaml", tmp_path) == target
    with pytest.raises(ManifestError, match="Did you mean 'mine.yaml'"):
        manifest.resolve("mien.yaml", tmp_path)


def test_bad_variant_names_and_steps_are_reported_once_each(tmp_path):
    doc = tiny_manifest_dict(variants={1: ["strip", "export"], "v": ["strip", {"export": 5}], "w": ["strip", 7]})
    with pytest.raises(ManifestError) as err:
        load_doc(tmp_path, doc)
    message = str(err.value)
    assert "3 problems" in message, message
    assert "variant name 1: use a string" in message
    assert "variants.v[1].export: got 5; a stage's params are a mapping {param: value}." in message
    assert "variants.w[1]: a step is a stage name or a one-key mapping {stage: {param: value}}; got 7." in message


def test_a_misspelled_builder_fails_at_validation_not_after_training(tmp_path):
    doc = tiny_manifest_dict()
    doc["model"]["builder"] = "release.models.demo.detectr:build"
    with pytest.raises(ManifestError, match=r"model.builder: no module 'release.models.demo.detectr' can be imported"):
        load_doc(tmp_path, doc)


def test_target_profiles_resolve_with_overrides_and_your_own(tmp_path):
    m = load_doc(tmp_path, tiny_manifest_dict(target={"name": "rpi4"}))
    assert (m.device["threads"], m.device["arch"], m.device["runner"]) == (4, "aarch64", "local")
    m = load_doc(tmp_path, tiny_manifest_dict(target={"name": "rpi4", "threads": 2, "runner": "ssh://pi@pi4"}))
    assert (m.device["threads"], m.device["cores"], m.device["runner"]) == (2, 4, "ssh://pi@pi4")
    mine = {"arch": "aarch64", "cores": 8, "session_options": {"session.intra_op.allow_spinning": "0"}}
    m = load_doc(tmp_path, tiny_manifest_dict(target={"name": "orin-nx"}, targets={"orin-nx": mine}))
    assert m.device["threads"] == 8 and m.device["session_options"] == mine["session_options"]
    inline = load_doc(tmp_path, tiny_manifest_dict()).device  # no such profile, but threads given: its own
    assert (inline["name"], inline["threads"], inline["runner"], inline["arch"]) == ("tiny-host", 1, "local", None)


@pytest.mark.parametrize("target, expected", [
    ({"name": "rpi44"}, "target.name: no target profile 'rpi44'. Did you mean 'rpi4'?"),
    ({"name": "rpi4", "runner": "estimate"}, "runner: estimate needs target.speed_ratio"),
    ({"name": "rpi4", "runner": "scp://pi@pi4"}, "a runner is local, estimate or ssh://user@host[:port]"),
    ({"name": "rpi4", "runner": "ssh://pi@pi4:port"}, "a runner is local, estimate or ssh://user@host[:port]"),
])
def test_bad_targets_are_manifest_errors(tmp_path, target, expected):
    with pytest.raises(ManifestError, match=re.escape(expected)):
        load_doc(tmp_path, tiny_manifest_dict(target=target))


def test_latency_from_device_needs_a_latency_budget(tmp_path):
    with pytest.raises(ManifestError, match="latency_from: device applies to the latency budget: set latency_ms"):
        load_doc(tmp_path, tiny_manifest_dict(budget={"size_mb": 1.0, "latency_from": "device"}))


# ---------------------------------------------------------------- paths the build writes (issue 12, finding 2)

@pytest.mark.parametrize("version", ["../../../../victim", "/tmp/victim", "x/../../..", "..", ".", "../../../small.yaml",
                                     "1.0/rc1", "", "v" * 200])
def test_version_is_one_safe_folder_name(tmp_path, version):
    with pytest.raises(ManifestError) as err:
        load_doc(tmp_path, tiny_manifest_dict(version=version))
    assert "1 problem" in str(err.value) and "version: got" in str(err.value)
    assert "one folder name of letters, digits, '_', '.' and '-'" in str(err.value)


def test_ordinary_versions_still_load(tmp_path):
    for version in ("1.0.0", "2024.05-rc_1", "v3"):
        assert load_doc(tmp_path, tiny_manifest_dict(version=version)).version == version


def generated_doc(data_dir: str, checkpoint: str = "artifacts/demo/train_last.ckpt") -> dict:
    return generated_at(tiny_manifest_dict(), data_dir, checkpoint)


@pytest.mark.parametrize("data_dir", ["elsewhere", "../outside", "/tmp", "artifacts", "artifacts/stages/x",
                                      "artifacts/.cache", "artifacts/tiny/release", "link/data"])
def test_a_generated_folder_must_be_under_artifacts(tmp_path, data_dir):
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "link").symlink_to(tmp_path.parent)  # inside the project by name, outside once resolved
    with pytest.raises(ManifestError) as err:
        load_doc(tmp_path, generated_doc(data_dir))
    message = str(err.value)
    assert "generate.data.out:" in message and "generate.data writes here; point it" in message
    assert "artifacts/" in message


@pytest.mark.parametrize("checkpoint", ["train_last.ckpt", "../victim.ckpt", "/tmp/victim.ckpt", "link/victim.ckpt",
                                        "artifacts/demo/data/train_last.ckpt"])
def test_a_generated_checkpoint_must_be_under_artifacts(tmp_path, checkpoint):
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "link").symlink_to(tmp_path.parent)
    with pytest.raises(ManifestError) as err:
        load_doc(tmp_path, generated_doc("artifacts/demo/data", checkpoint))
    assert "1 problem" in str(err.value) and "generate.checkpoint.out:" in str(err.value)


def test_generated_paths_under_artifacts_load_even_through_a_symlinked_artifacts(tmp_path):
    (tmp_path / "big-disk").mkdir()
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "artifacts").symlink_to(tmp_path / "big-disk")
    m = manifest.load(write_manifest(tmp_path / "project", generated_doc("artifacts/mydemo")), tmp_path / "project")
    assert m.generate["data"].out == tmp_path / "project" / "artifacts" / "mydemo"


def test_a_checkpoint_no_generator_makes_may_be_anywhere(tmp_path):
    from tests.unit.test_manifest_hostile import fake_data

    outside = tmp_path.parent / f"{tmp_path.name}-outside.ckpt"
    outside.write_bytes(b"x")
    doc = fake_data(tmp_path)
    doc["source"]["checkpoint"] = str(outside)
    assert load_doc(tmp_path, doc).source.checkpoint == outside


def test_without_generators_missing_data_is_named(tmp_path):
    doc = tiny_manifest_dict()
    doc.pop("generate")
    with pytest.raises(ManifestError) as err:
        load_doc(tmp_path, doc)
    message = str(err.value)
    assert "data.eval.annotations: no such file:" in message and "data.eval.images: no such folder:" in message


# ---------------------------------------------------------------- user code (issue 12, finding 6)

def test_builder_modules_are_found_in_the_project_folder(tmp_path, monkeypatch):
    (tmp_path / "mybuilder.py").write_text("from release.models.demo.detector import build\n")
    doc = tiny_manifest_dict()
    doc["model"]["builder"] = "mybuilder:build"
    monkeypatch.chdir(tmp_path.parent)
    assert load_doc(tmp_path, doc).model.builder == "mybuilder:build"
    (tmp_path / "mybuilder.py").unlink()
    with pytest.raises(ManifestError, match="no module 'mybuilder' can be imported"):
        load_doc(tmp_path, doc)


def test_a_misspelled_model_kwarg_is_located_by_the_model_check(tmp_path):
    from release import check

    doc = tiny_manifest_dict()  # strip, export, quantize: no stage has a check hook of its own
    doc["model"]["kwargs"] = {"num_classes": 3, "widht": 0.5}
    doc.pop("generate")  # a generator that takes model.kwargs refuses the typo as the manifest loads (below)
    placeholder_data(tmp_path)
    path = write_manifest(tmp_path, doc)
    m = manifest.load(path, tmp_path)
    with pytest.raises(ManifestError) as err:
        check.run(m)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "widht" in text)
    assert f"line {line}, model.kwargs.widht: release.models.demo.detector:build takes no argument 'widht'. " \
           f"Did you mean 'width'?" in str(err.value)


def test_a_misspelled_model_kwarg_is_located_when_a_generator_takes_model_kwargs(tmp_path):
    doc = tiny_manifest_dict()
    doc["model"]["kwargs"] = {"num_classes": 3, "widht": 0.5}
    path = write_manifest(tmp_path, doc)
    with pytest.raises(ManifestError) as err:
        manifest.load(path, tmp_path)
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "widht" in text)
    assert "1 problem" in str(err.value)
    assert f"line {line}, model.kwargs.widht: passed to generate.checkpoint " \
           f"(release.models.demo.generate:checkpoint), which takes model.kwargs: unknown key 'widht'. " \
           f"Did you mean 'width'?" in str(err.value)


def test_a_missing_model_kwarg_is_named(tmp_path, monkeypatch):
    from release import check

    (tmp_path / "needy_builder.py").write_text(
        "from release.models.demo.detector import build as demo\n\ndef build(num_classes, width):\n"
        "    return demo(num_classes, width)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    doc = tiny_manifest_dict()
    doc["model"]["builder"] = "needy_builder:build"
    doc["model"]["kwargs"] = {"width": 0.5}
    with pytest.raises(ManifestError, match=r"model.kwargs: needy_builder:build needs 'num_classes'"):
        check.run(load_doc(tmp_path, doc))
