"""The user's code a manifest names, checked when it loads (release/manifest_code.py), and the parts
of the model check's run on real images that need no data (release/check_images.py)."""

from __future__ import annotations

import uuid

import pytest

from release import check_images, manifest
from release.errors import ManifestError
from tests.conftest import tiny_manifest_dict, write_manifest


def _load_with(root, module_code: str, **model):
    name = f"user_{uuid.uuid4().hex[:8]}"  # imports are cached per process: a name of its own
    (root / f"{name}.py").write_text(module_code)
    doc = tiny_manifest_dict()
    doc["model"].update({k: v.format(m=name) for k, v in model.items()})
    path = write_manifest(root, doc)
    with pytest.raises(ManifestError) as err:
        manifest.load(path, root)
    return name, path, str(err.value)


def _line(path, text: str) -> int:
    return next(i for i, row in enumerate(path.read_text().splitlines(), 1) if text in row)


def test_an_exception_while_the_users_module_imports_is_one_located_line(tmp_path):
    code = "import os\n\nSIZES = {'small': 1}\nDEFAULT = SIZES['tiny']\n\ndef build():\n    pass\n"
    name, path, text = _load_with(tmp_path, code, builder="{m}:build")
    assert "1 problem" in text and "Traceback" not in text
    assert (f"line {_line(path, name)}, model.builder: importing module '{name}' failed at "
            f"{tmp_path / (name + '.py')}:4: KeyError: 'tiny'.") in text


def test_a_syntax_error_names_its_file_and_line(tmp_path):
    name, path, text = _load_with(tmp_path, "def build(:\n    pass\n", builder="{m}:build")
    assert f"model.builder: importing module '{name}' failed at {tmp_path / (name + '.py')}:1: SyntaxError" in text


def test_an_import_failing_inside_the_module_is_not_called_a_missing_module(tmp_path):
    name, path, text = _load_with(tmp_path, "import no_such_dependency_xyz\n", adapter="{m}:Adapter")
    assert f"model.adapter: importing module '{name}' failed at {tmp_path / (name + '.py')}:1: " \
           f"ModuleNotFoundError: No module named 'no_such_dependency_xyz'" in text


def test_a_builder_that_is_not_callable_is_named(tmp_path):
    name, path, text = _load_with(tmp_path, "build = 3\n", builder="{m}:build")
    assert f"model.builder: {name}:build is an int, not callable" in text


def test_an_adapter_kwarg_its_init_does_not_take_is_located_at_adapter_kwargs(tmp_path):
    doc = tiny_manifest_dict()
    doc["model"]["adapter_kwargs"] = {"score_treshold": 0.1}
    path = write_manifest(tmp_path, doc)
    with pytest.raises(ManifestError) as err:
        manifest.load(path, tmp_path)
    assert f"line {_line(path, 'adapter_kwargs:')}, model.adapter_kwargs: " in str(err.value)
    assert "Did you mean 'score_threshold'?" in str(err.value)


def test_a_module_cached_from_another_project_is_not_used(tmp_path):
    """Two project folders with a module of the same name: each manifest is checked against its own."""
    name = f"samename_{uuid.uuid4().hex[:8]}"
    first, second = tmp_path / "a", tmp_path / "b"
    for folder, builder in ((first, "build"), (second, "make")):
        folder.mkdir()
        (folder / f"{name}.py").write_text(f"from release.models.demo.detector import build as {builder}\n")
    doc = tiny_manifest_dict()
    doc["model"]["builder"] = f"{name}:build"
    assert manifest.load(write_manifest(first, doc), first).model.builder == f"{name}:build"
    with pytest.raises(ManifestError, match=f"model.builder: module '{name}' has no 'build'\\."):
        manifest.load(write_manifest(second, doc), second)


def test_the_batch_of_model_input_shape_is_one(tmp_path):
    doc = tiny_manifest_dict()
    doc["model"]["input_shape"] = [2, 3, 64, 64]
    m = manifest.load(write_manifest(tmp_path, doc), tmp_path)
    [(loc, message)] = check_images.problems(m, None, None)
    assert loc == ("model", "input_shape") and "set model.input_shape to [1, 3, 64, 64]" in message


def test_splits_a_training_generator_makes_are_not_read_by_the_check(tmp_path):
    assert check_images.trained_generators({"data": (False, []), "ckpt": (True, ["data"]),
                                            "labels": (False, ["ckpt"]), "other": (False, ["data"])}) == \
        {"ckpt", "labels"}
    m = manifest.load(write_manifest(tmp_path, tiny_manifest_dict()), tmp_path)
    assert check_images.splits_read(m) == ["eval", "calibration"]  # int8 quantizes statically
