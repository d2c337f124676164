"""Generators (release/generate.py, the manifest's `generate:` section): a tiny generator written
here, planned and run through the real dodo.py and doit; its fingerprint, its ownership marks, and
the manifest errors that name the field to fix."""

from __future__ import annotations

import json
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from release import generate, manifest
from release.errors import ManifestError, ReleaseError
from release.ownership import MARK
from tests.conftest import executed, placeholder_data, run_doit, tiny_manifest_dict, write_manifest

GENERATORS = '''
from pathlib import Path
from typing import Annotated

from pydantic import Field

from release.generate import generator


@generator(writes="file")
def words(out: Path, *, word: str, times: Annotated[int, Field(gt=0)] = 1) -> str:
    out.write_text(" ".join([word] * times))
    return f"{times} words"


@generator(writes="folder", paths=("source",))
def shout(out: Path, *, source: str, suffix: str = "!") -> str:
    (out / "loud").mkdir()
    (out / "loud" / "shout.txt").write_text(Path(source).read_text().upper() + suffix)
    return "shouted"


@generator(writes="folder")
def nothing(out: Path) -> str:
    return "wrote nothing"


@generator(writes="file")
def broken(out: Path) -> str:
    out.write_text("half")
    raise ValueError("a bug in the generator")


def plain(out: Path, word: str = "x") -> str:
    return "not marked"
'''


@dataclass
class Project:
    root: Path
    module: str  # the project's own generator module

    def doc(self, **changes) -> dict:
        """The tiny manifest with two generators of the project's: `words` writes a file, `shout` reads
        it (a path kwarg) into a folder; `changes` set fields under generate ("words.kwargs": {...})."""
        doc = tiny_manifest_dict()
        doc["generate"] = {
            "words": {"run": f"{self.module}:words", "kwargs": {"word": "hi", "times": 2},
                      "out": "artifacts/gen/words.txt"},
            "shout": {"run": f"{self.module}:shout", "kwargs": {"source": "artifacts/gen/words.txt"},
                      "out": "artifacts/gen/shout", "after": ["words"]},
        }
        for path, value in changes.items():
            *parents, key = path.split(".")
            at = doc["generate"]
            for part in parents:
                at = at[part]
            at[key] = value
        return doc

    def write(self, doc: dict) -> Path:
        return write_manifest(self.root, doc)


@pytest.fixture
def project(tmp_path, monkeypatch) -> Project:
    """A project folder with its own generator module (on sys.path, as doit runs in the folder) and
    the tiny manifest's data as placeholders (the generators here make none of it)."""
    module = f"gens_{tmp_path.name.replace('-', '_').replace('.', '_')}"  # imports are cached per process
    (tmp_path / f"{module}.py").write_text(GENERATORS)
    monkeypatch.syspath_prepend(str(tmp_path))
    placeholder_data(tmp_path)
    made = Project(tmp_path, module)
    made.write(made.doc())
    yield made
    sys.modules.pop(module, None)


def _load(root: Path, doc: dict):
    return manifest.load(write_manifest(root, doc), root)


def _problem(root: Path, doc: dict) -> str:
    with pytest.raises(ManifestError) as err:
        _load(root, doc)
    return str(err.value)


# ---------------------------------------------------------------- through doit

def test_a_generator_runs_once_and_again_only_when_its_kwargs_change(project):
    root = project.root
    words, shout = root / "artifacts/gen/words.txt", root / "artifacts/gen/shout/loud/shout.txt"
    done = run_doit(root, "generate", "manifest=tiny.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert executed(done.stdout) == ["generate:words", "generate:shout"]
    assert "generate.words: 2 words" in done.stdout and "generate.shout: shouted" in done.stdout
    assert words.read_text() == "hi hi" and shout.read_text() == "HI HI!"
    # Marked as the build's: a sidecar for the file, a mark inside the folder.
    assert json.loads((words.parent / f"words.txt{MARK}").read_text())["sha256"]
    assert (root / "artifacts/gen/shout" / MARK).is_file()
    stamps = (words.stat().st_mtime_ns, shout.stat().st_mtime_ns)

    again = run_doit(root, "generate", "manifest=tiny.yaml")
    assert again.returncode == 0, again.stdout + again.stderr
    assert executed(again.stdout) == []
    assert (words.stat().st_mtime_ns, shout.stat().st_mtime_ns) == stamps

    project.write(project.doc(**{"words.kwargs": {"word": "hi", "times": 3}}))
    changed = run_doit(root, "generate", "manifest=tiny.yaml")
    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert executed(changed.stdout) == ["generate:words", "generate:shout"]  # and what comes after it
    assert words.read_text() == "hi hi hi" and shout.read_text() == "HI HI HI!"

    project.write(project.doc(**{"words.kwargs": {"word": "hi", "times": 3}, "shout.kwargs.suffix": "?"}))
    only = run_doit(root, "generate", "manifest=tiny.yaml")
    assert only.returncode == 0, only.stdout + only.stderr
    assert executed(only.stdout) == ["generate:shout"]  # what it comes after is not made again
    assert shout.read_text() == "HI HI HI?"

    cleaned = run_doit(root, "clean", "generate", "manifest=tiny.yaml")
    assert cleaned.returncode == 0, cleaned.stderr
    assert not words.exists() and not shout.exists()


def test_a_generator_that_does_not_write_what_the_manifest_reads_fails_with_the_field(project):
    doc = project.doc()
    doc["generate"] = {"data": {"run": f"{project.module}:nothing", "out": "artifacts/gen/data"}}
    doc["data"]["eval"] = {"annotations": "artifacts/gen/data/eval.json", "images": "artifacts/gen/data/images"}
    project.write(doc)
    done = run_doit(project.root, "generate", "manifest=tiny.yaml")
    text = done.stdout + done.stderr
    assert done.returncode != 0
    assert "generate.data" in text and "did not write what the manifest reads" in text
    assert "data.eval.annotations" in text and "data.eval.images" in text and "Traceback" not in text
    assert not (project.root / "artifacts/gen/data").exists()  # nothing half-made is committed


# ---------------------------------------------------------------- the plan

def test_generated_data_and_checkpoint_take_their_fingerprints_from_the_generators(tmp_path):
    from release import planner, tasks

    def plan(doc):
        return planner.build(_load(tmp_path, doc), tmp_path)

    first = plan(tiny_manifest_dict())
    data, ckpt = first.generators["data"], first.generators["checkpoint"]
    assert data.writes == "folder" and ckpt.writes == "file" and ckpt.after == ["data"] and ckpt.model_kwargs
    assert ckpt.kwargs["data"] == str(tmp_path / "artifacts/demo/data")  # a path kwarg, resolved
    assert first.data_after == {"train": ["data"], "calibration": ["data"], "eval": ["data"]}
    strip = first.nodes[first.chains["fp32"][0]]
    export = first.nodes[first.chains["fp32"][1]]
    assert strip.after == ["checkpoint"] and export.after == ["data"]  # export verifies on data.eval
    listed = {t["name"]: t for t in tasks.generate_tasks(first)}
    assert listed["checkpoint"]["task_dep"] == ["generate:data", "check:tiny"]  # it trains the model
    assert listed["checkpoint"]["file_dep"] == [f"artifacts/demo/data/{s}/annotations.json"
                                                for s in ("train", "calibration", "eval")]
    measured = {t["name"].split("@")[0]: t for t in tasks.measure_tasks(first)}
    assert measured["map"]["task_dep"][1:] == ["generate:data"]  # after the stage that makes its model

    doc = tiny_manifest_dict()
    doc["generate"]["data"]["kwargs"]["eval_images"] = 17
    second = plan(doc)
    assert second.generators["data"].fingerprint != data.fingerprint
    assert second.generators["checkpoint"].fingerprint != ckpt.fingerprint  # it comes after data
    assert second.data_fp["eval"] != first.data_fp["eval"] and second.source_fp != first.source_fp
    assert second.final["fp32"] != first.final["fp32"]

    doc = tiny_manifest_dict()
    doc["model"]["kwargs"]["width"] = 0.25  # the checkpoint generator takes model.kwargs
    third = plan(doc)
    assert third.generators["data"].fingerprint == data.fingerprint
    assert third.generators["checkpoint"].fingerprint != ckpt.fingerprint


def test_a_path_kwarg_no_generator_makes_joins_the_fingerprint_by_content(project):
    from release import planner

    root = project.root
    (root / "mine.txt").write_text("mine")
    doc = project.doc(**{"shout.kwargs.source": "mine.txt", "shout.after": []})
    first = planner.build(_load(root, doc), root).generators["shout"]
    assert first.kwargs["source"] == str(root / "mine.txt")
    (root / "mine.txt").write_text("changed")
    assert planner.build(_load(root, doc), root).generators["shout"].fingerprint != first.fingerprint


# ---------------------------------------------------------------- manifest errors

def test_an_unmarked_function_is_a_located_manifest_error(project):
    message = _problem(project.root, project.doc(**{"words.run": f"{project.module}:plain", "words.kwargs": {}}))
    assert "1 problem" in message
    assert f"generate.words.run: {project.module}:plain is not marked as a generator" in message
    assert "@generator" in message and "release.generate" in message
    text = (project.root / "tiny.yaml").read_text()
    line = next(i for i, row in enumerate(text.splitlines(), 1) if ":plain" in row)
    assert f"line {line}, generate.words.run" in message


def test_a_missing_module_or_function_is_a_located_manifest_error(project):
    assert "generate.words.run: cannot import module 'no_such_gens'" in _problem(
        project.root, project.doc(**{"words.run": "no_such_gens:words"}))
    message = _problem(project.root, project.doc(**{"words.run": f"{project.module}:wrds"}))
    assert f"generate.words.run: module '{project.module}' has no 'wrds'. Did you mean 'words'?" in message


@pytest.mark.parametrize("out", ["../elsewhere/words.txt", "/tmp/words.txt", "words.txt", "artifacts",
                                 "artifacts/stages/words.txt", "artifacts/.cache/words.txt"])
def test_an_out_outside_artifacts_is_a_located_manifest_error(project, out):
    message = _problem(project.root, project.doc(**{"words.out": out, "shout.kwargs.source": out}))
    assert "1 problem" in message, message
    assert "generate.words.out:" in message and "generate.words writes here; point it" in message
    assert "artifacts/" in message


def test_outs_may_not_overlap(project):
    message = _problem(project.root, project.doc(**{"shout.out": "artifacts/gen"}))
    assert "1 problem" in message and "generate.shout.out: artifacts/gen overlaps generate.words.out" in message


def test_kwargs_are_checked_against_the_signature(project):
    message = _problem(project.root, project.doc(**{"words.kwargs": {"word": "hi", "tims": 2}}))
    assert "generate.words.kwargs.tims: unknown key 'tims'. Did you mean 'times'?" in message
    message = _problem(project.root, project.doc(**{"words.kwargs": {"word": "hi", "times": 0}}))
    assert "generate.words.kwargs.times: got 0; input should be greater than 0." in message
    message = _problem(project.root, project.doc(**{"words.kwargs": {"times": 2}}))
    assert "generate.words.kwargs.word: required field is missing." in message
    message = _problem(project.root, project.doc(**{"words.kwargs": {"word": "hi", "out": "x"}}))
    assert "generate.words.kwargs.out: out is passed from generate.words.out" in message


def test_a_generator_that_takes_model_kwargs_is_checked_with_them(tmp_path):
    doc = tiny_manifest_dict()
    doc["generate"]["checkpoint"]["kwargs"]["width"] = 0.5
    message = _problem(tmp_path, doc)
    assert "1 problem" in message
    assert "generate.checkpoint.kwargs.width: release.models.demo.generate:checkpoint also takes model.kwargs, " \
           "which set width already: remove it here." in message
    doc = tiny_manifest_dict()
    doc["model"]["kwargs"]["width"] = -1.0
    message = _problem(tmp_path, doc)
    assert "model.kwargs.width: passed to generate.checkpoint (release.models.demo.generate:checkpoint), which " \
           "takes model.kwargs: got -1.0; input should be greater than 0." in message


def test_after_names_generators_defined_above(project):
    message = _problem(project.root, project.doc(**{"shout.after": ["wrds"]}))
    assert "generate.shout.after[0]: 'wrds' is not a generator defined above 'shout'. Did you mean 'words'?" \
        in message
    doc = project.doc()
    doc["generate"] = dict(reversed(list(doc["generate"].items())))  # shout first: words is not above it
    assert "generate.shout.after[0]: 'words' is not a generator defined above 'shout'" in _problem(project.root, doc)


def test_a_path_kwarg_inside_another_generators_out_needs_after(project):
    message = _problem(project.root, project.doc(**{"shout.after": []}))
    assert "generate.shout.kwargs.source: artifacts/gen/words.txt is inside generate.words.out: add words to " \
           "generate.shout.after" in message
    message = _problem(project.root, project.doc(**{"shout.kwargs.source": "nowhere.txt", "shout.after": []}))
    assert "generate.shout.kwargs.source: no such file or folder" in message


# ---------------------------------------------------------------- the action

def _job(project: Project, name: str, out: str, writes: str, **extra) -> dict:
    root = project.root
    return {"manifest": str(root / "tiny.yaml"), "root": str(root), "name": name, "run": f"{project.module}:{name}",
            "kwargs": {}, "model_kwargs": {}, "out": str(root / out), "writes": writes, "fingerprint": "f" * 64,
            "expects": {}, **extra}


def test_what_the_build_did_not_make_is_never_replaced(project):
    theirs = project.root / "artifacts/theirs.txt"
    theirs.parent.mkdir(exist_ok=True)
    theirs.write_text("precious")
    with pytest.raises(ReleaseError, match="generate.words.out: .* was not made by this build, so it is never "
                                           "replaced or deleted"):
        generate.make(_job(project, "words", "artifacts/theirs.txt", "file", kwargs={"word": "x"}), log=print)
    assert theirs.read_text() == "precious"


def test_a_crashing_generator_leaves_nothing_in_place(project):
    with pytest.raises(RuntimeError, match=r"generate.broken .* crashed; partial output was discarded"):
        generate.make(_job(project, "broken", "artifacts/gen/broken.txt", "file"), log=print)
    assert not (project.root / "artifacts/gen/broken.txt").exists()
    assert not [p for p in (project.root / "artifacts/gen").iterdir() if ".tmp-" in p.name]


def test_a_made_output_is_not_made_again(project):
    said = []
    job = _job(project, "words", "artifacts/gen/words.txt", "file", kwargs={"word": "x", "times": 1})
    generate.make(job, log=said.append)
    generate.make(job, log=said.append)
    assert said[0] == "generate.words: 1 words" and "already made for ffffffffffffffff; not made again" in said[1]


def test_the_mark_is_checked_when_the_module_is_written_wrong(project):
    (project.root / "badgens.py").write_text(textwrap.dedent('''
        from release.generate import generator

        @generator(writes="file")
        def first_is_not_out(path, word="x"):
            return None
    '''))
    with pytest.raises(ReleaseError, match=r"generate.x.run: badgens:first_is_not_out must take the path it writes "
                                           r"as its first parameter, named `out`"):
        generate.load("badgens:first_is_not_out", "generate.x.run")
    with pytest.raises(ValueError, match="writes="):
        generate.generator(writes="files")
    sys.modules.pop("badgens", None)


def test_the_generator_example_in_extending_md_runs(tmp_path):
    import re

    import yaml

    from tests.conftest import REPO

    text = (REPO / "docs" / "extending.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "@generator(" in b)
    section = next(b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "mypkg.labels:label_map" in b)
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "labels.py").write_text(code)
    (tmp_path / "classes.txt").write_text("cat dog\n")
    placeholder_data(tmp_path)
    doc = tiny_manifest_dict()
    doc["generate"] = yaml.safe_load(section)["generate"]
    write_manifest(tmp_path, doc)
    done = run_doit(tmp_path, "generate", "manifest=tiny.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "generate.labels: 2 labels" in done.stdout
    assert json.loads((tmp_path / "artifacts/labels.json").read_text()) == {"cat": 1, "dog": 2}
