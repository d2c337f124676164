"""Shared fixtures: tiny manifests whose demo builds in seconds, and a doit runner."""

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
        "model": {"builder": "release.demo.detector:build", "kwargs": {"num_classes": 3, "width": 0.5},
                  "adapter": "release.demo.detector:Adapter", "input_shape": [1, 3, 64, 64]},
        "data": {s: {"annotations": f"{data}/{s}/annotations.json", "images": f"{data}/{s}/images"}
                 for s in ("train", "calibration", "eval")},
        "demo": {"data_dir": data, "seed": 0, "image_size": 64, "train_images": 48,
                 "calibration_images": 8, "eval_images": 16, "steps": 20, "batch_size": 8, "lr": 0.004},
        "target": {"name": "tiny-host", "threads": 1},
        "measure": {"warmup": 2, "runs": 30},
        "budget": {"size_mb": 100.0},
        "variants": {"fp32": ["strip", "export"],
                     "int8": ["strip", "export", {"quantize": {"mode": "static", "format": "qoperator"}}]},
    }
    for key, value in overrides.items():
        doc[key] = value
    return doc


def write_manifest(folder: Path, doc: dict, name: str = "tiny.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run_doit(folder: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the project's real dodo.py with `folder` as the project root."""
    cmd = [sys.executable, "-m", "doit", "-f", str(DODO), "-d", str(folder), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return tmp_path
