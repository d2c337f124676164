"""The Adapter protocol is checked: load_adapter names the manifest field, the class and what is wrong.

The adapters below are written the way a user writes one, into a module of their own project
folder, and loaded by import path exactly as a manifest's `model.adapter` is.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid

import pytest

from release import adapter as protocol
from release import cli
from release.errors import ReleaseError
from release.manifest import ModelSpec
from release.usercode import load_adapter
from tests.conftest import tiny_manifest_dict, write_manifest

USER_CODE = textwrap.dedent('''
    import numpy as np


    class Good:
        """output_names and the methods' scale set in __init__; postprocess takes *args."""

        def __init__(self, input_shape, score_threshold=0.5):
            self.output_names = ["scores", "boxes"]
            self.size, self.score_threshold = tuple(input_shape[2:]), score_threshold

        def preprocess(self, image):
            return np.zeros((3, *self.size), np.float32), {"scale": 1.0}

        def postprocess(self, *outputs_and_meta):
            return np.zeros((0, 6), np.float32)

        def boxes_to_input(self, boxes, meta):
            return np.asarray(boxes, np.float32) * meta["scale"]

        def loss(self, outputs, targets):
            return {"loss": 0.0}


    class Delegating:
        """Methods taken from an inner adapter in __init__, as tests/models.py does."""

        def __init__(self, input_shape):
            inner = Good(input_shape)
            self.output_names = inner.output_names
            self.preprocess, self.postprocess = inner.preprocess, inner.postprocess
            self.boxes_to_input = inner.boxes_to_input


    class NoPostprocess:
        output_names = ["out"]

        def __init__(self, input_shape):
            pass

        def preprocess(self, image):
            return image, {}

        def boxes_to_input(self, boxes, meta):
            return boxes


    class Misspelled(NoPostprocess):
        def post_process(self, outputs, meta):
            return outputs


    class WrongArity(Good):
        def boxes_to_input(self, boxes):
            return boxes


    class NeverPassed(Good):
        def postprocess(self, outputs, meta, scale):
            return outputs


    class BadNames(Good):
        def __init__(self, input_shape):
            super().__init__(input_shape)
            self.output_names = "heatmap"


    class NoNames(NoPostprocess):
        output_names = None

        def postprocess(self, outputs, meta):
            return outputs


    class MisspelledDistill(Good):
        def distil_loss(self, student_outputs, teacher_outputs):
            return {"loss": 0.0}


    class StrictInit(Good):
        """Rejects an option at run time, as a user's validation does."""

        def __init__(self, input_shape, **options):
            if options:
                raise ValueError(f"unknown options {sorted(options)}")
            super().__init__(input_shape)


    class NoInputShape(Good):
        def __init__(self, score_threshold=0.5):
            super().__init__((1, 3, 8, 8), score_threshold)


    def make_adapter(input_shape):
        return Good(input_shape)
''')


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """The adapters above as a module of the project folder tmp_path, under a name of its own
    (so no test sees another's cached import)."""
    import importlib

    name = f"useradapters_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield name
    sys.modules.pop(name, None)


def _spec(adapter: str, **adapter_kwargs) -> ModelSpec:
    return ModelSpec(builder="release.models.demo.detector:build", adapter=adapter, adapter_kwargs=adapter_kwargs,
                     input_shape=(1, 3, 32, 32))


def _error(adapter: str, **adapter_kwargs) -> str:
    with pytest.raises(ReleaseError) as err:
        load_adapter(_spec(adapter, **adapter_kwargs))
    return str(err.value)


def test_the_protocol_is_declared_once():
    assert protocol.REQUIRED == {"preprocess": ("image",), "postprocess": ("outputs", "meta"),
                                 "boxes_to_input": ("boxes", "meta")}
    assert protocol.OPTIONAL == {"loss": ("outputs", "targets"),
                                 "distill_loss": ("student_outputs", "teacher_outputs")}
    assert protocol.ATTRIBUTES == ("output_names",)


def test_the_protocol_imports_nothing_heavy():
    code = "import sys, release.adapter; assert 'numpy' not in sys.modules and 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("name", ["Good", "Delegating"])
def test_a_complete_adapter_loads(user_module, name):
    adapter = load_adapter(_spec(f"{user_module}:{name}"))
    assert adapter.output_names == ["scores", "boxes"] and protocol.problems(adapter) == []


@pytest.mark.parametrize("path", ["release.models.demo.detector:Adapter", "release.models.torchvision:Adapter",
                                  "tests.models:NoLossAdapter", "tests.models:YoloStyleAdapter"])
def test_the_shipped_adapters_pass(path):
    adapter = load_adapter(_spec(path))
    assert protocol.problems(type(adapter)) == [] and protocol.problems(adapter) == []


def test_a_missing_method_is_named_with_the_fix(user_module):
    text = _error(f"{user_module}:NoPostprocess")
    assert text == (f"model.adapter {user_module}:NoPostprocess has no method postprocess(outputs, meta); "
                    f"{protocol.NEEDS}.")
    assert "an adapter needs preprocess, postprocess, boxes_to_input and output_names" in text
    assert "see release/adapter.py" in text


def test_a_misspelled_method_gets_a_did_you_mean(user_module):
    text = _error(f"{user_module}:Misspelled")
    assert text.startswith(f"model.adapter {user_module}:Misspelled has no method postprocess(outputs, meta) "
                           f"(did you mean post_process?); an adapter needs")


def test_too_few_parameters_is_reported_before_init_runs(user_module):
    text = _error(f"{user_module}:WrongArity")
    assert (f"model.adapter {user_module}:WrongArity has boxes_to_input(boxes), which takes 1 argument, "
            f"but the build calls boxes_to_input(boxes, meta)") in text


def test_a_parameter_the_build_never_passes_is_reported(user_module):
    text = _error(f"{user_module}:NeverPassed")
    assert ("has postprocess(outputs, meta, scale), but the build calls postprocess(outputs, meta) and never "
            "passes scale: give it a default, or take it in __init__ from model.adapter_kwargs") in text


def test_output_names_are_checked_on_the_instance(user_module):
    assert "has output_names = 'heatmap' (a str), not a non-empty list of distinct str" in \
        _error(f"{user_module}:BadNames")
    assert "has no output_names (a list of str naming the ONNX outputs" in _error(f"{user_module}:NoNames")


def test_a_misspelled_optional_method_is_not_silently_skipped(user_module):
    text = _error(f"{user_module}:MisspelledDistill")
    assert "has distil_loss but no distill_loss(student_outputs, teacher_outputs) (a misspelling?" in text


def test_an_unknown_kwarg_names_adapter_kwargs_with_did_you_mean(user_module):
    text = _error(f"{user_module}:Good", score_treshold=0.3)
    assert text == (f"model.adapter_kwargs: {user_module}:Good takes no argument 'score_treshold'. "
                    f"Did you mean 'score_threshold'? It takes: input_shape, score_threshold.")


def test_an_init_that_rejects_a_kwarg_is_a_message_not_a_traceback(user_module):
    text = _error(f"{user_module}:StrictInit", threshold=0.3)
    assert text.startswith(f"model.adapter_kwargs: {user_module}:StrictInit(input_shape=(1, 3, 32, 32), "
                           f"threshold=0.3) failed: ValueError: unknown options ['threshold'].")


def test_an_init_without_input_shape_is_told(user_module):
    assert _error(f"{user_module}:NoInputShape").startswith(
        f"model.adapter {user_module}:NoInputShape: __init__ takes no input_shape, which the build always passes")


def test_a_function_is_not_a_class(user_module):
    text = _error(f"{user_module}:make_adapter")
    assert text.startswith(f"model.adapter {user_module}:make_adapter is a function, not a class: "
                           f"name the adapter class")


def test_release_check_reports_a_broken_adapter(tmp_path, user_module, capsys):
    """Through the real CLI: the model check loads the adapter, and its message reaches the user
    located at its manifest line, on stderr with exit status 3 (a mistake, docs/ci.md)."""
    doc = tiny_manifest_dict()
    doc["model"]["adapter"] = f"{user_module}:Misspelled"
    doc["variants"] = {"tuned": ["strip", {"finetune": {"steps": 1}}, "export"]}
    path = write_manifest(tmp_path, doc)
    assert cli.main(["check", str(path), "--root", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert (f"model.adapter: {user_module}:Misspelled has no method postprocess(outputs, meta) "
            f"(did you mean post_process?)") in err and "ERROR: " in err
    assert "Traceback" not in err
