"""Shared fixtures: tiny manifests whose generated demo builds in seconds, and a doit runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DODO = REPO / "dodo.py"


def tiny_manifest_dict(**overrides) -> dict:
    """A complete manifest for the demo detector at test size (seconds to build)."""
    data = "artifacts/demo/data"
    doc = {
        "schema_version": 1, "name": "tiny", "version": "0.0.1",
        "source": {"checkpoint": "artifacts/demo/train_last.ckpt", "drop": ["aux_head.*"]},
        "model": {"builder": "release.models.demo.detector:build", "kwargs": {"num_classes": 3, "width": 0.5},
                  "adapter": "release.models.demo.detector:Adapter", "input_shape": [1, 3, 64, 64]},
        "data": {s: {"annotations": f"{data}/{s}/annotations.json", "images": f"{data}/{s}/images"}
                 for s in ("train", "calibration", "eval")},
        "generate": {
            "data": {"run": "release.models.demo.generate:data", "out": data,
                     "kwargs": {"seed": 0, "image_size": 64, "train_images": 48, "calibration_images": 8,
                                "eval_images": 16}},
            "checkpoint": {"run": "release.models.demo.generate:checkpoint", "out": "artifacts/demo/train_last.ckpt",
                           "kwargs": {"data": data, "image_size": 64, "steps": 20, "batch_size": 8, "lr": 0.004,
                                      "seed": 0},
                           "after": ["data"]},
        },
        "target": {"name": "tiny-host", "threads": 1},
        "measure": {"warmup": 2, "runs": 30},
        "budget": {"size_mb": 100.0},
        "variants": {"fp32": ["strip", "export"],
                     "int8": ["strip", "export", {"quantize": {"mode": "static", "format": "qoperator"}}]},
    }
    for key, value in overrides.items():
        doc[key] = value
    return doc


def generated_at(doc: dict, data: str | None = None, checkpoint: str | None = None) -> dict:
    """The tiny manifest with its generated data (and the splits read from it) at `data`, and its
    generated checkpoint (source.checkpoint with it) at `checkpoint`."""
    gen = doc["generate"]
    if data is not None:
        gen["data"]["out"] = gen["checkpoint"]["kwargs"]["data"] = data
        doc["data"] = {s: {"annotations": f"{data}/{s}/annotations.json", "images": f"{data}/{s}/images"}
                       for s in ("train", "calibration", "eval")}
    if checkpoint is not None:
        gen["checkpoint"]["out"] = doc["source"]["checkpoint"] = checkpoint
    return doc


def placeholder_data(root: Path) -> None:
    """The tiny manifest's splits as paths on disk under `root` (a stand-in json and one image
    each), for tests that drop the generate section and never read the data: a manifest whose
    data no generator makes must name data that exists."""
    for split in ("train", "calibration", "eval"):
        folder = Path(root) / "artifacts" / "demo" / "data" / split
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "images" / "0.png").write_bytes(b"\x89PNG")
        (folder / "annotations.json").write_text("{}")


def write_manifest(folder: Path, doc: dict, name: str = "tiny.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_doit(folder: Path, *args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the project's real dodo.py with `folder` as the project root (ambient MLFLOW_* removed)."""
    cmd = [sys.executable, "-m", "doit", "-f", str(DODO), "-d", str(folder), *args]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)


@pytest.fixture(scope="session")
def tiny_built(tmp_path_factory) -> Path:
    """One tiny project, built once per session. Tests that change it work on a `copy_project`."""
    root = tmp_path_factory.mktemp("tiny-built")
    write_manifest(root, tiny_manifest_dict())
    first = run_doit(root, "release", "manifest=tiny.yaml")
    assert first.returncode == 0, first.stdout + first.stderr
    (root / "first_run.txt").write_text(first.stdout + first.stderr)
    return root


def kill_build_when(folder: Path, ready, timeout: float = 60, poll: float = 0.005, grace: float = 0.0) -> bool:
    """Start `doit release manifest=tiny.yaml` in `folder` and SIGKILL its whole process group as soon
    as `ready()` is true (after `grace` seconds more). False when the build ended first."""
    import signal
    import time

    cmd = [sys.executable, "-m", "doit", "-f", str(DODO), "-d", str(folder), "release", "manifest=tiny.yaml"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline, caught = time.monotonic() + timeout, False
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            time.sleep(grace)
            os.killpg(proc.pid, signal.SIGKILL)
            caught = True
            break
        time.sleep(poll)
    proc.wait()
    return caught


def copy_project(src: Path, dst: Path) -> Path:
    """A copy of a built project: task paths are root-relative, so everything stays up to date."""
    import shutil

    shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
    return dst


def executed(output: str) -> list[str]:
    """Task names doit ran (it prints '.  name' for a run and '-- name' for an up-to-date one)."""
    return [line.split(None, 1)[1].strip() for line in output.splitlines() if line.startswith(".  ")]


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real OpenSSH server on a free loopback port (see tests/sshd.py)."""
    from tests.sshd import SSHD, running_sshd

    if not Path(SSHD).exists():
        pytest.skip("Debian's openssh-server is not installed (apt-get install openssh-server; .ci/run does)")
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server
