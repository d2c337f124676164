"""Installed use anywhere (issue 14, item 1): the tool built as a wheel, installed (not editable) into
a fresh virtual environment, and used in an empty folder that is not this checkout, for a user's own
detector (tests/acme_detector.py, copied there as acme/detector.py) and a YOLO-txt dataset.

The fresh environment reaches torch and the other big dependencies through one .pth line naming this
interpreter's site-packages (a path line: the .pth files in that folder, among them the editable
finder of this checkout's `release`, are not processed), so nothing big is installed again; the test
checks that `release` is imported from the new environment's own site-packages.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import REPO

pytestmark = pytest.mark.slow

NAMES = ["red", "blue"]
COLOURS = [(220, 40, 40), (40, 60, 220)]
SIZE = 64
VARIANTS = ("fp32", "int8")
BUDGETS = {"size_mb": 5, "latency_ms": 2000, "min_map": 0.1}  # the trained model scores ~0.33


# ---------------------------------------------------------------- the installed tool

def build_wheel(dest: Path) -> Path:
    """A wheel of this checkout's package, built from a copy (a build writes build/ and *.egg-info
    beside the sources, and nothing may be written into the checkout)."""
    src = dest / "src"
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "release", src / "release", ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "--no-build-isolation",
                           "-w", str(dest / "dist"), str(src)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (dest / "dist").glob("release-*.whl")
    return wheel


def make_venv(folder: Path, wheel: Path) -> Path:
    """A fresh venv with the wheel installed (not editable) and this interpreter's packages on its
    path; its bin/ holds `release` (the wheel's script) and `doit` (doit's own entry point, as pip
    writes it: doit comes through the .pth line, so no install made its script)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    (purelib / "machine-site-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: the editable `release` of this checkout is visible through the .pth line;
    # without it pip would call the wheel installed already. Nothing outside the venv is touched.
    done = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
                           "--disable-pip-version-check", str(wheel)], capture_output=True, text=True, check=False,
                          env=clean_env(folder))
    assert done.returncode == 0, done.stdout + done.stderr
    doit = folder / "bin" / "doit"
    doit.write_text(f"#!{python}\nimport sys\nfrom doit.__main__ import main\nsys.exit(main())\n")
    doit.chmod(0o755)
    return purelib


def clean_env(venv: Path) -> dict:
    """The user's shell: the venv's bin first, nothing pointing at this checkout or a tracking server."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MLFLOW_", "PYTHON", "VIRTUAL_ENV", "RELEASE_"))}
    return {**env, "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", "VIRTUAL_ENV": str(venv),
            "PYTHONDONTWRITEBYTECODE": "1"}


def snapshot(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple[int, int]]:
    """Every file under a folder with its size and mtime (skipping folders named in `skip`)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if d not in skip]
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            found[os.path.relpath(path, folder)] = (st.st_size, st.st_mtime_ns)
    return found


# ---------------------------------------------------------------- the user's project

def write_yolo_dataset(root: Path, counts: dict[str, int], seed: int = 0) -> dict[str, list]:
    """data/images/<split>/*.png, data/labels/<split>/*.txt (class cx cy w h, normalised) and
    data/data.yaml: coloured rectangles on noise. Returns each split's [(image, [(cls, x, y, w, h)])]."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    data, made = root / "data", {}
    for split, count in counts.items():
        (data / "images" / split).mkdir(parents=True)
        (data / "labels" / split).mkdir(parents=True)
        made[split] = []
        for i in range(count):
            image = Image.fromarray(rng.integers(90, 140, (SIZE, SIZE, 3), dtype=np.uint8))
            draw, objects = ImageDraw.Draw(image), []
            for _ in range(int(rng.integers(1, 3))):
                cls = int(rng.integers(0, len(NAMES)))
                w, h = (int(v) for v in rng.integers(10, 30, 2))
                x, y = int(rng.integers(0, SIZE - w)), int(rng.integers(0, SIZE - h))
                draw.rectangle([x, y, x + w - 1, y + h - 1], fill=COLOURS[cls])
                objects.append((cls, x, y, w, h))
            image.save(data / "images" / split / f"{i:04d}.png")
            (data / "labels" / split / f"{i:04d}.txt").write_text("".join(
                f"{c} {(x + w / 2) / SIZE:.6f} {(y + h / 2) / SIZE:.6f} {w / SIZE:.6f} {h / SIZE:.6f}\n"
                for c, x, y, w, h in objects))
            made[split].append((np.asarray(image), objects))
    (data / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images/train", "val": "images/val",
                                                    "names": NAMES}, sort_keys=False))
    return made


def train_checkpoint(samples: list, path: Path, steps: int = 100) -> None:
    """A few steps of training (the user's own loop, with their adapter's loss), saved as a plain
    state_dict."""
    import torch

    from tests.acme_detector import Adapter, build

    model, adapter = build(len(NAMES)), Adapter((1, 3, SIZE, SIZE))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    rng = np.random.default_rng(1)
    model.train()
    for _ in range(steps):
        batch = [samples[i] for i in rng.integers(0, len(samples), 16)]
        x = torch.from_numpy(np.stack([adapter.preprocess(img)[0] for img, _ in batch]))
        targets = [{"boxes": np.array([o[1:] for o in objs], np.float32), "labels": np.array([o[0] for o in objs])}
                   for _, objs in batch]
        loss = adapter.loss(model(x), targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.eval().state_dict(), path)


def user_project(root: Path) -> None:
    (root / "acme").mkdir(parents=True)
    (root / "acme" / "__init__.py").write_text("")
    shutil.copy2(REPO / "tests" / "acme_detector.py", root / "acme" / "detector.py")
    made = write_yolo_dataset(root, {"train": 48, "val": 16})
    train_checkpoint(made["train"], root / "weights" / "acme.pt")


# ---------------------------------------------------------------- the test

def run(cmd: list, cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    return done


def test_a_wheel_installed_in_a_fresh_venv_releases_a_users_own_detector_in_their_own_folder(tmp_path):
    checkout_before = snapshot(REPO, skip=(".git", "__pycache__", ".pytest_cache"))
    venv = tmp_path / "venv"
    purelib = make_venv(venv, build_wheel(tmp_path / "wheel"))
    env, bin_ = clean_env(venv), venv / "bin"
    project = tmp_path / "project"
    project.mkdir()
    where = run([bin_ / "python", "-c", "import release; print(release.__file__)"], project, env)
    assert Path(where.stdout.strip()).is_relative_to(purelib), where.stdout + where.stderr
    package_before = snapshot(purelib / "release")
    user_project(project)

    budget_flags = [a for key, value in BUDGETS.items() for a in ("--budget", f"{key}={value}")]
    init = run([bin_ / "release", "init", "--name", "acme", "--checkpoint", "weights/acme.pt",
                "--builder", "acme.detector:build", "--adapter", "acme.detector:Adapter",
                "--input-shape", f"1,3,{SIZE},{SIZE}", "--data", "data/data.yaml", "--target", "host",
                *budget_flags], project, env)
    assert init.returncode == 0, init.stdout + init.stderr
    assert "doit release manifest=acme" in init.stdout
    assert (project / "dodo.py").read_text() == "from release.dodo import *\n"
    assert "artifacts/" in (project / ".gitignore").read_text().splitlines()
    doc = yaml.safe_load((project / "recipes" / "acme.yaml").read_text())
    yolo = {"format": "yolo", "names": "data/data.yaml"}
    assert doc["data"] == {"train": {**yolo, "images": "data/images/train"},
                           "calibration": {**yolo, "images": "data/images/train"},
                           "eval": {**yolo, "images": "data/images/val"}}
    assert doc["model"]["builder"] == "acme.detector:build" and doc["budget"] == BUDGETS
    assert tuple(doc["variants"]) == VARIANTS

    built = run([bin_ / "doit", "-n", "2", "release", "manifest=acme"], project, env)
    assert built.returncode == 0, built.stdout + built.stderr[-4000:]
    release = project / "artifacts" / "acme" / "release" / "0.1.0"
    assert {"model.onnx", "metrics.json", "MODEL_CARD.md", "release.lock"} <= {p.name for p in release.iterdir()}
    assert (project / "artifacts" / "mlflow" / "mlflow.db").is_file()  # the user's tracking store
    assert json.loads((project / "artifacts" / "acme" / "report.json").read_text())

    cases = ET.parse(project / "artifacts" / "acme" / "report.xml").getroot().iter("testcase")
    labels = [f"{c.get('classname', '')} {c.get('name', '')}" for c in cases]
    assert len(labels) == len(VARIANTS) * len(BUDGETS), labels
    for variant in VARIANTS:
        for budget in BUDGETS:
            assert any(variant in label and budget in label for label in labels), (variant, budget, labels)

    listed = run([bin_ / "doit", "list", "--all", "manifest=acme"], project, env)
    assert listed.returncode == 0 and "release" in listed.stdout, listed.stdout + listed.stderr
    assert "stage:" in listed.stdout
    forgot = run([bin_ / "doit", "forget", "manifest=acme"], project, env)
    assert forgot.returncode == 0, forgot.stdout + forgot.stderr
    cleaned = run([bin_ / "doit", "clean", "manifest=acme"], project, env)
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    assert not list((project / "artifacts" / "stages").glob("*/*/model.onnx"))  # stage outputs removed
    assert (release / "model.onnx").is_file()  # a published release stays

    assert snapshot(purelib / "release") == package_before, "the build wrote into the installed package"
    assert snapshot(REPO, skip=(".git", "__pycache__", ".pytest_cache")) == checkout_before, \
        "the build wrote into this checkout"
