"""Pruned, sparse and distilled variants through the real dodo.py: built, exported, quantized and
measured like any other variant; a bad pattern stops the build before anything trains; an
interrupted fine-tune resumes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import copy_project, executed, kill_build_when, run_doit, tiny_manifest_dict, write_manifest

pytestmark = pytest.mark.slow

VARIANTS = {
    "fp32": ["strip", "export"],
    "pruned_int8": ["strip", {"prune": {"method": "channel", "amount": 0.5, "round_to": 4}},
                    {"finetune": {"steps": 12, "batch_size": 8, "warmup_steps": 2}}, "export",
                    {"quantize": {"mode": "static", "format": "qdq"}}],
    "sparse": ["strip", {"prune": {"method": "magnitude", "amount": 0.6}}, "export"],
    "distilled": ["strip", {"distill": {"student": {"kwargs": {"num_classes": 3, "width": 0.25}}, "steps": 12,
                                        "batch_size": 8, "warmup_steps": 2, "init": "teacher"}}, "export"],
}


def _doc(**variants) -> dict:
    return tiny_manifest_dict(version="0.1.0", variants=variants or VARIANTS)  # a new release: other variants


@pytest.fixture(scope="module")
def compressed(tiny_built, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    root = copy_project(tiny_built, tmp_path_factory.mktemp("compress"))
    write_manifest(root, _doc())
    return root, run_doit(root, "release", "manifest=tiny.yaml")


def test_pruned_sparse_and_distilled_variants_are_built_and_measured(compressed):
    root, done = compressed
    assert done.returncode == 0, done.stdout + done.stderr
    ran = executed(done.stdout)
    assert "check:tiny" in ran and not any(t.startswith("generate:") for t in ran)  # the demo is reused
    for stage in ("prune", "finetune", "distill"):
        assert any(t.startswith(f"stage:{stage}@") for t in ran), ran
    rows = json.loads((root / "artifacts/tiny/report.json").read_text())["variants"]
    assert set(rows) == set(VARIANTS)
    for row in rows.values():
        assert row["macs"] > 0 and row["size_mb"] > 0 and row["latency_ms"] > 0 and 0 <= row["map"] <= 1
    assert rows["pruned_int8"]["macs"] < 0.6 * rows["fp32"]["macs"]
    assert rows["distilled"]["macs"] < 0.5 * rows["fp32"]["macs"]
    # Sparsity: recorded, the dense file is as big as fp32's, and the table says why.
    assert rows["sparse"]["sparsity"] > 0.5
    assert rows["sparse"]["bytes"] == pytest.approx(rows["fp32"]["bytes"], rel=0.01)
    assert rows["sparse"]["zipped_mb"] < 0.8 * rows["fp32"]["zipped_mb"]
    assert "a dense ONNX file does not shrink from sparsity alone" in done.stdout
    assert "MMACs" in done.stdout
    # Parameter count and MACs before and after, in each stage's record.
    facts = rows["pruned_int8"]["stage_facts"]
    assert facts["1.prune"]["before"]["macs"] > facts["1.prune"]["after"]["macs"] == facts["2.finetune"]["after"]["macs"]
    assert facts["2.finetune"]["loss_final"] > 0 and facts["2.finetune"]["steps"] == 12
    assert rows["distilled"]["stage_facts"]["1.distill"]["init"] == "teacher"
    again = run_doit(root, "release", "manifest=tiny.yaml")
    assert executed(again.stdout) == ["release"], again.stdout


def test_a_pattern_that_matches_no_layer_stops_the_build_before_training(tmp_path):
    doc = _doc(pruned=["strip", {"prune": {"method": "channel", "layers": {"donw32.*": 0.5}}}, "export"])
    path = write_manifest(tmp_path, doc)
    done = run_doit(tmp_path, "release", "manifest=tiny.yaml")
    text = done.stdout + done.stderr
    assert done.returncode != 0
    assert f"{path}: 1 problem" in text and "variants.pruned[1].prune.layers.donw32.*" in text
    assert "matches no prunable" in text and "Closest layers: down32" in text
    assert "generate:checkpoint" not in executed(done.stdout)
    assert not (tmp_path / "artifacts/demo/train_last.ckpt").exists()
    assert "Traceback" not in text


def test_a_student_whose_outputs_differ_is_a_manifest_error(tmp_path):
    doc = _doc(distilled=["strip", {"distill": {"student": {"kwargs": {"num_classes": 2, "width": 0.25}}}}, "export"])
    path = write_manifest(tmp_path, doc)
    done = subprocess.run([sys.executable, "-m", "release.cli", "check", str(path), "--root", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 3, done.stdout + done.stderr  # a mistake (docs/ci.md)
    assert "variants.distilled[1].distill.student" in done.stderr and "do not match the teacher's" in done.stderr
    assert "[1, 2, 16, 16]" in done.stderr and "[1, 3, 16, 16]" in done.stderr


def test_interrupted_finetune_resumes_from_its_checkpoint(tiny_built, tmp_path):
    root = copy_project(tiny_built, tmp_path)
    doc = _doc(tuned=["strip", {"finetune": {"steps": 400, "batch_size": 8, "checkpoint_every": 10}}, "export"])
    write_manifest(root, doc)
    stages = root / "artifacts/stages"
    # Killed a moment after the first resume checkpoint appears: mid-training, past step 10.
    caught = kill_build_when(root, lambda: bool(list(stages.glob("finetune/*.resume/state.pt"))), timeout=120,
                             poll=0.02, grace=0.3)
    assert caught, "the fine-tune was not caught mid-training"
    assert not list((root / "artifacts/stages/finetune").glob("*/weights.safetensors"))  # nothing half-done
    done = run_doit(root, "release", "manifest=tiny.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "finetune: resuming at step" in done.stdout
    facts = json.loads(next((root / "artifacts/stages/finetune").glob("*/stage.json")).read_text())["facts"]
    assert facts["resumed_from"] >= 10 and facts["steps"] == 400
    assert not list((root / "artifacts/stages/finetune").glob("*.resume"))  # removed once complete
