"""`release init` (release/init.py, release/init_data.py), the packaged doit entry point
(release/dodo.py) and the default manifest (release/recipes.py). The installed, end-to-end use is
tests/func/test_installed.py."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import yaml

from release import manifest, recipes
from release.cli import main
from release.errors import ManifestError
from tests.conftest import REPO

MODEL = ["--builder", "release.models.demo.detector:build", "--adapter", "release.models.demo.detector:Adapter",
         "--input-shape", "1,3,64,64"]


@pytest.fixture(autouse=True)
def _keep_sys_path():
    saved = list(sys.path)
    yield
    sys.path[:] = saved


def coco_split(folder: Path) -> None:
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "0.png").write_bytes(b"\x89PNG")
    (folder / "annotations.json").write_text("{}")


def yolo_tree(root: Path, splits=("train", "val"), names_file: str | None = "data.yaml") -> Path:
    data = root / "data"
    for split in splits:
        (data / "images" / split).mkdir(parents=True)
        (data / "images" / split / "0.png").write_bytes(b"\x89PNG")
        (data / "labels" / split).mkdir(parents=True)
        (data / "labels" / split / "0.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    if names_file == "data.yaml":
        (data / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [a, b]\n")
    elif names_file == "classes.txt":
        (data / "classes.txt").write_text("a\nb\n")
    return data


def init(root: Path, *flags: str) -> int:
    return main(["init", "--root", str(root), *flags])


def written(root: Path, name: str = "acme") -> dict:
    return yaml.safe_load((root / "recipes" / f"{name}.yaml").read_text())


def test_init_writes_the_one_line_dodo_a_manifest_that_loads_and_a_gitignore(tmp_path, capsys):
    coco_split(tmp_path / "data" / "train")
    coco_split(tmp_path / "data" / "val")
    (tmp_path / "ckpt.pt").write_bytes(b"x")
    assert init(tmp_path, "--name", "acme", "--checkpoint", "ckpt.pt", *MODEL, "--data", "data", "--target", "rpi4",
                "--budget", "size_mb=2", "--budget", "min_map=0.4") == 0
    out = capsys.readouterr()
    assert "next: doit release manifest=acme" in out.out and "WARNING" not in out.err
    assert (tmp_path / "dodo.py").read_text() == "from release.dodo import *\n"
    assert (tmp_path / ".gitignore").read_text() == "artifacts/\n"
    text = (tmp_path / "recipes" / "acme.yaml").read_text()
    assert text.startswith("# ") and "# latency_ms:" in text  # commented, the budgets not given as hints
    loaded = manifest.load(tmp_path / "recipes" / "acme.yaml", tmp_path)
    assert loaded.data.eval.annotations == tmp_path / "data" / "val" / "annotations.json"
    assert loaded.data.calibration.images == tmp_path / "data" / "train" / "images"
    assert loaded.data.calibration.annotations is None
    assert loaded.budget.size_mb == 2 and loaded.budget.min_map == 0.4 and loaded.target.name == "rpi4"
    assert loaded.model.input_shape == (1, 3, 64, 64) and set(loaded.pipelines) == {"fp32", "int8"}


@pytest.mark.parametrize("existing", ["dodo.py", "recipes/acme.yaml"])
def test_init_refuses_to_overwrite_and_then_writes_nothing(tmp_path, capsys, existing):
    coco_split(tmp_path / "data")
    (tmp_path / existing).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / existing).write_text("mine\n")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert init(tmp_path, "--name", "acme", "--checkpoint", "c.pt", *MODEL, "--data", "data") == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / existing) in err and "wrote nothing" in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / existing).read_text() == "mine\n"


def test_an_existing_gitignore_is_kept_and_gets_the_line_once(tmp_path):
    (tmp_path / ".gitignore").write_text("*.pyc")
    assert init(tmp_path, "--template", "demo") == 0
    assert (tmp_path / ".gitignore").read_text() == "*.pyc\nartifacts/\n"
    (tmp_path / "dodo.py").unlink()
    assert init(tmp_path, "--template", "demo", "--name", "second") == 0
    assert (tmp_path / ".gitignore").read_text() == "*.pyc\nartifacts/\n"


def test_missing_inputs_are_a_warning_and_the_files_are_written(tmp_path, capsys):
    assert init(tmp_path, "--name", "acme", "--checkpoint", "later.ckpt", *MODEL,
                "--data", "eval=data/val.json,data/images") == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "later.ckpt" in err and "data/val.json" in err and "release check acme" in err
    assert written(tmp_path)["data"]["eval"] == {"annotations": "data/val.json", "images": "data/images"}


def test_a_wrong_builder_or_target_stops_init_before_it_writes(tmp_path, capsys):
    coco_split(tmp_path / "data")
    (tmp_path / "c.pt").write_bytes(b"x")
    assert init(tmp_path, "--name", "acme", "--checkpoint", "c.pt", "--builder", "nowhere.model:build",
                "--adapter", "release.models.demo.detector:Adapter", "--input-shape", "64,64",
                "--data", "data", "--target", "rpi9") == 3
    err = capsys.readouterr().err
    assert "model.builder: no module 'nowhere.model'" in err and "Did you mean 'rpi5'" in err
    assert str(tmp_path / "recipes" / "acme.yaml") in err and "Nothing was written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "data"]


@pytest.mark.parametrize("flags, message", [
    (["--name", "acme"], "needs --checkpoint, --builder, --adapter, --input-shape, --data"),
    (["--name", "../up", "--checkpoint", "c", *MODEL, "--data", "d"], "--name '../up'"),
    (["--name", "acme", "--checkpoint", "c", *MODEL[:4], "--input-shape", "1,3,0,64", "--data", "d"],
     "--input-shape '1,3,0,64'"),
    (["--template", "demo", "--checkpoint", "c"], "--template demo takes only --name"),
    (["--name", "acme", "--checkpoint", "c", *MODEL, "--data", "nowhere"], "--data nowhere: no such file"),
    (["--name", "acme", "--checkpoint", "c", *MODEL, "--data", "bogus=x.json"], "'bogus' is not a split"),
    (["--name", "acme", "--checkpoint", "c", *MODEL, "--data", "train=x.json"], "has no eval split"),
    (["--name", "acme", "--checkpoint", "c", *MODEL, "--data", "d", "--budget", "size"], "--budget 'size'"),
])
def test_flag_mistakes_are_one_message(tmp_path, capsys, flags, message):
    assert init(tmp_path, *flags) == 3
    err = capsys.readouterr().err
    assert message in err and err.startswith("ERROR: ") and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_yolo_data_yaml(tmp_path):
    yolo_tree(tmp_path)  # no checkpoint yet: written without loading (the YAML is what is checked here)
    init(tmp_path, "--name", "acme", "--checkpoint", "c.pt", *MODEL, "--data", "data/data.yaml")
    yolo = {"format": "yolo", "names": "data/data.yaml"}
    assert written(tmp_path)["data"] == {"train": {**yolo, "images": "data/images/train"},
                                         "calibration": {**yolo, "images": "data/images/train"},
                                         "eval": {**yolo, "images": "data/images/val"}}


def test_yolo_folder_with_split_subfolders_and_classes_txt(tmp_path):
    yolo_tree(tmp_path, splits=("train", "test", "val"), names_file="classes.txt")
    init(tmp_path, "--name", "acme", "--checkpoint", "c.pt", *MODEL, "--data", "data")
    data = written(tmp_path)["data"]
    assert data["eval"] == {"format": "yolo", "images": "data/images/val", "names": ["a", "b"]}  # val wins over test
    assert data["train"]["images"] == data["calibration"]["images"] == "data/images/train"


def test_yolo_flat_folder_is_the_eval_split_and_needs_names(tmp_path, capsys):
    data = tmp_path / "flat"
    (data / "images").mkdir(parents=True)
    (data / "images" / "0.png").write_bytes(b"\x89PNG")
    (data / "labels").mkdir()
    assert init(tmp_path, "--name", "acme", "--checkpoint", "c.pt", *MODEL, "--data", "flat") == 3
    assert "--names a,b,c" in capsys.readouterr().err
    assert init(tmp_path, "--name", "acme", "--checkpoint", "c.pt", *MODEL, "--data", "flat", "--names", "x, y") == 0
    entry = {"format": "yolo", "images": "flat/images", "names": ["x", "y"]}
    assert written(tmp_path)["data"] == {"calibration": entry, "eval": entry}


def test_split_paths_coco_json_with_its_images_beside_it_and_a_yolo_images_folder(tmp_path):
    coco_split(tmp_path / "coco")
    yolo_tree(tmp_path, splits=("train",), names_file="classes.txt")
    init(tmp_path, "--name", "acme", "--checkpoint", "c.pt", *MODEL,
         "--data", "val=coco/annotations.json", "--data", "train=data/images/train")
    data = written(tmp_path)["data"]
    assert data["eval"] == {"annotations": "coco/annotations.json", "images": "coco/images"}
    assert data["train"] == {"format": "yolo", "images": "data/images/train", "names": ["a", "b"]}


def test_template_demo_is_this_repositorys_demo_manifest_and_loads(tmp_path, capsys):
    from release.models.demo.recipe import MANIFEST

    # The recipe's first line points editors at this checkout's docs/manifest.schema.json, which a
    # user's folder does not have: the template is the rest of it, as it is.
    first, rest = (REPO / "recipes" / "rpi_detector.yaml").read_text().split("\n", 1)
    assert first.startswith("# yaml-language-server: $schema=")
    assert MANIFEST == rest, \
        "release/models/demo/recipe.py must hold recipes/rpi_detector.yaml (after its schema line) as it is: copy it there"
    assert init(tmp_path, "--template", "demo") == 0
    assert (tmp_path / "recipes" / "rpi_detector.yaml").read_text() == MANIFEST
    assert "next: doit release manifest=rpi_detector" in capsys.readouterr().out
    assert init(tmp_path / "recipes", "--template", "demo", "--name", "shapes") == 0  # another folder
    loaded = manifest.load(tmp_path / "recipes" / "rpi_detector.yaml", tmp_path)
    assert loaded.name == "rpi_detector" and loaded.generators
    assert written(tmp_path / "recipes", "shapes")["name"] == "shapes"


def test_without_manifest_the_only_recipe_is_built(tmp_path):
    with pytest.raises(ManifestError, match="none under .*release init"):
        recipes.resolve(None, tmp_path)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "a.yaml").write_text("x: 1\n")
    assert recipes.resolve(None, tmp_path) == tmp_path / "recipes" / "a.yaml"
    (tmp_path / "recipes" / "b.yml").write_text("x: 1\n")
    with pytest.raises(ManifestError, match=r"holds 2: a\.yaml, b\.yml\. Pass manifest=NAME"):
        recipes.resolve(None, tmp_path)


def test_a_projects_dodo_is_one_line_and_the_packaged_one_exports_every_task():
    assert (REPO / "dodo.py").read_text() == "from release.dodo import *\n"
    tree = ast.parse((REPO / "release" / "dodo.py").read_text())
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("task_")}
    exported = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                    and getattr(n.targets[0], "id", "") == "__all__")
    assert defined and set(exported) == defined | {"DOIT_CONFIG"}
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in ([ast.alias(n.module)] if isinstance(n, ast.ImportFrom) else n.names)}
    assert not imported & {"torch", "onnxruntime", "onnx", "mlflow", "pydantic"}
