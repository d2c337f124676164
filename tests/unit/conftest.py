"""Fixtures for the training stages: a tiny shapes project with a trained, stripped teacher."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import tiny_manifest_dict, write_manifest


@dataclass
class TinyProject:
    root: Path
    manifest: object       # release.manifest.Manifest
    teacher: Path          # stripped weights (safetensors) of a briefly trained demo detector
    train_summary: dict


# The teacher: the demo detector at width 0.5 on 64-pixel images, trained long enough to find the
# shapes (mAP ~0.14 on the tiny eval split) in ~30 s on 2 cores.
TEACHER_STEPS = 600


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> TinyProject:
    from release import manifest as manifests
    from release.models.demo import shapes
    from release.models.demo.train import train
    from release.stages import strip
    from release.stages.base import StageContext

    root = tmp_path_factory.mktemp("tiny-project")
    data = root / "artifacts" / "demo" / "data"
    shapes.generate(data, seed=0, splits={"train": 160, "calibration": 8, "eval": 32}, image_size=64, workers=1)
    ckpt = root / "artifacts" / "demo" / "train_last.ckpt"
    summary = train(data, ckpt, num_classes=3, width=0.5, image_size=64, steps=TEACHER_STEPS, batch_size=16,
                    lr=1.2e-2, seed=0, progress=False)
    doc = tiny_manifest_dict()
    doc.pop("generate")
    path = write_manifest(root, doc)
    manifest = manifests.load(path, root)
    out = root / "teacher"
    out.mkdir()
    ctx = StageContext(input=ckpt, out_dir=out, params=strip.Params(), manifest=manifest, log=lambda m: None,
                       spec_produces="weights")
    strip.run(ctx)
    return TinyProject(root, manifest, ctx.output, summary)
