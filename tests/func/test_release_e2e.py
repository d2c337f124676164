"""End to end through the real dodo.py and doit, on a tiny demo manifest in a temporary folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DODO, copy_project, executed, kill_build_when, run_doit, tiny_manifest_dict, write_manifest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tiny_built, tmp_path_factory) -> Path:
    """This module's own copy of the session's tiny build: its tests change manifests."""
    return copy_project(tiny_built, tmp_path_factory.mktemp("e2e"))


def test_first_build_publishes_a_complete_release(built):
    out = (built / "first_run.txt").read_text()
    ran = executed(out)
    # Equal prefixes are shared: fp32 and int8 have one strip and one export task between them.
    assert sum(t.startswith("stage:strip@") for t in ran) == 1
    assert sum(t.startswith("stage:export@") for t in ran) == 1
    assert sum(t.startswith("stage:quantize@") for t in ran) == 1
    assert "generate:data" in ran and "generate:checkpoint" in ran and "gate:tiny" in ran
    report = json.loads((built / "artifacts/tiny/report.json").read_text())
    assert report["passed"] and report["selected"] in ("fp32", "int8")
    for row in report["variants"].values():
        assert row["size_mb"] > 0 and row["latency_ms"] > 0 and 0 <= row["map"] <= 1
        assert row["latency"]["runs"] == 30 and row["latency"]["threads"] == 1
    bundle = built / "artifacts/tiny/release/0.0.1"
    assert {p.name for p in bundle.iterdir()} == {"model.onnx", "metrics.json", "MODEL_CARD.md", "release.lock"}
    lock = json.loads((bundle / "release.lock").read_text())
    assert lock["schema_version"] == 1 and len(lock["source"]["sha256"]) == 64
    assert set(lock["tools"]) >= {"torch", "onnx", "onnxruntime", "release"}
    assert set(lock["data"]) == {"train", "calibration", "eval"}
    metrics = json.loads((bundle / "metrics.json").read_text())
    assert metrics["variant"] == report["selected"] and metrics["map"] == report["variants"][report["selected"]]["map"]
    assert "size MB" in out and "released" in out
    # The stripped weights are far smaller than the Lightning-style training checkpoint.
    strip = next((built / "artifacts/stages/strip").iterdir())
    facts = json.loads((strip / "stage.json").read_text())["facts"]
    assert facts["copy"] == "ema" and facts["bytes_before"] > 3 * facts["bytes_after"]
    assert any(k.startswith("aux_head.") for k in facts["dropped"])


def test_second_build_is_a_noop_without_heavy_imports(built):
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['doit', '-f', {str(DODO)!r}, '-d', {str(built)!r}, 'release', 'manifest=tiny.yaml']\n"
        "try:\n    runpy.run_module('doit', run_name='__main__')\nexcept SystemExit as exc:\n    code = exc.code\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnxruntime', 'mlflow'))\n"
        "print('HEAVY:', heavy)\nsys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert executed(done.stdout) == ["release"], done.stdout
    assert "HEAVY: []" in done.stdout


def test_param_change_rebuilds_only_what_depends_on_it(built):
    doc = tiny_manifest_dict(version="0.0.2")  # may select another variant: a published version never changes
    doc["variants"]["int8"][2]["quantize"]["per_channel"] = False
    write_manifest(built, doc)
    done = run_doit(built, "release", "manifest=tiny.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    ran = executed(done.stdout)
    assert sorted(t.split("@")[0] for t in ran if "@" in t) == ["measure:latency", "measure:map", "measure:size",
                                                                "stage:quantize"], ran
    assert not any(t.startswith(("generate:", "stage:strip", "stage:export")) for t in ran)
    write_manifest(built, tiny_manifest_dict())  # back to the original for the tests that follow


def test_missed_budget_exits_nonzero_with_the_table(built):
    doc = tiny_manifest_dict(name="tiny_strict", budget={"size_mb": 0.001, "min_map": 0.99})
    write_manifest(built, doc, "strict.yaml")
    done = run_doit(built, "release", "manifest=strict.yaml")
    assert done.returncode == 1
    text = done.stdout + done.stderr
    # Shared fingerprints: another manifest with the same pipelines reuses every stage.
    assert not any(t.startswith(("stage:", "measure:", "generate:")) for t in executed(done.stdout))
    assert "no variant of tiny_strict meets its budgets" in text
    assert "fp32: size" in text and "vs max 0.001" in text and "mAP" in text
    assert "Traceback" not in text
    assert not (built / "artifacts/tiny_strict/release").exists()


def test_bad_manifest_gives_a_located_error(built):
    doc = tiny_manifest_dict()
    doc["variants"]["int8"][2] = {"quantize": {"mdoe": "static"}}
    path = write_manifest(built, doc, "typo.yaml")
    done = run_doit(built, "release", "manifest=typo.yaml")
    assert done.returncode == 3
    assert f"{path}: 1 problem" in done.stderr
    assert "variants.int8[2].quantize.mdoe: unknown key 'mdoe'. Did you mean 'mode'?" in done.stderr
    assert "Traceback" not in done.stderr


def test_mismatched_checkpoint_gives_the_key_report(built):
    doc = tiny_manifest_dict(name="mismatch")
    del doc["generate"]  # use the checkpoint and data the first build made (width 0.5) ...
    doc["model"]["kwargs"]["width"] = 0.25  # ... with a model of another width
    write_manifest(built, doc, "mismatch.yaml")
    done = run_doit(built, "release", "manifest=mismatch.yaml")
    text = done.stdout + done.stderr
    assert done.returncode == 3, text  # an input mistake found by an action (docs/ci.md)
    assert "the weights do not fit model.builder" in text and "with a different shape" in text
    assert "checkpoint (" in text and "Traceback" not in text


def test_doit_list_clean_and_parallel(built):
    listing = run_doit(built, "list", "--all", "manifest=tiny.yaml")
    assert listing.returncode == 0 and "stage:strip@" in listing.stdout and "release" in listing.stdout
    target = built / "parallel"
    shutil.copytree(built / "artifacts" / "demo", target / "artifacts" / "demo")
    write_manifest(target, tiny_manifest_dict())
    done = run_doit(target, "-n", "2", "release", "manifest=tiny.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (target / "artifacts/tiny/release/0.0.1/model.onnx").is_file()
    cleaned = run_doit(target, "clean", "manifest=tiny.yaml")
    assert cleaned.returncode == 0, cleaned.stderr
    assert not list((target / "artifacts" / "stages").glob("*/*/model.onnx"))


def test_interrupted_build_resumes(tmp_path):
    doc = tiny_manifest_dict()
    doc["generate"]["data"]["kwargs"]["train_images"] = 600  # long enough to be caught mid-write
    write_manifest(tmp_path, doc)
    demo = tmp_path / "artifacts" / "demo"
    caught = kill_build_when(tmp_path, lambda: demo.is_dir() and any(".tmp-" in p.name for p in demo.iterdir()))
    assert caught, "the build was not caught mid-write"
    assert not (demo / "data" / "train" / "annotations.json").exists()  # nothing half-written in place
    done = run_doit(tmp_path, "release", "manifest=tiny.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "generate:data" in executed(done.stdout)
    assert (tmp_path / "artifacts/tiny/release/0.0.1/model.onnx").is_file()
    assert not [p for p in demo.iterdir() if ".tmp-" in p.name]  # leftovers cleared on resume
