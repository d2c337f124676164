"""Nightly builds end to end (real doit runs on the tiny demo): a build gated against the release
published before it, and versions from a template, each night a new version beside the old ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import copy_project, executed, run_doit, tiny_manifest_dict, write_manifest

pytestmark = pytest.mark.slow

FP32 = ["strip", "export"]
WRECKED = ["strip", {"prune": {"method": "magnitude", "amount": 0.95}}, "export"]  # no finetune: mAP collapses
BUDGET = {"size_mb": 100.0, "max_map_drop_vs_release": 0.001, "max_latency_increase_vs_release": 100.0}


def _doc(version: str, variants: dict, budget: dict = BUDGET) -> dict:
    doc = tiny_manifest_dict(version=version, variants=variants, budget=budget)
    doc["generate"]["checkpoint"]["kwargs"]["steps"] = 150  # enough for an mAP above 0 on the tiny data
    return doc


def _release(root: Path) -> Path:
    return root / "artifacts" / "tiny" / "release"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Path:
    """0.0.1 published (fp32 only) with budgets relative to a previous release there is none of."""
    root = tmp_path_factory.mktemp("shipped")
    write_manifest(root, _doc("0.0.1", {"fp32": FP32}))
    done = run_doit(root, "release", "manifest=tiny.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pass (no previous release)" in done.stdout and "no previous release of tiny is published" in done.stdout
    metrics = json.loads((_release(root) / "0.0.1" / "metrics.json").read_text())
    assert metrics["map"] > 0.002, "the tiny model must have an mAP a drop can be seen from"
    return root


def test_a_worse_build_fails_against_the_release_and_passes_within_the_allowed_drop(shipped, tmp_path):
    root = copy_project(shipped, tmp_path / "p")
    before = _snapshot(_release(root) / "0.0.1")
    shipped_map = json.loads((_release(root) / "0.0.1" / "metrics.json").read_text())["map"]
    write_manifest(root, _doc("0.0.2", {"wrecked": WRECKED}))
    done = run_doit(root, "release", "manifest=tiny.yaml")
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads((root / "artifacts/tiny/report.json").read_text())
    tonight = report["variants"]["wrecked"]["map"]
    assert tonight < shipped_map - 0.001 and report["previous"]["version"] == "0.0.1"
    header = done.stdout.splitlines()[[i for i, line in enumerate(done.stdout.splitlines())
                                       if line.startswith("variant ")][0]]
    assert "mAP vs 0.0.1 (drop <= 0.001)" in header and "latency vs 0.0.1 (<= +10000%)" in header
    line = next(line for line in done.stdout.splitlines() if line.startswith("wrecked"))
    assert f"FAIL {tonight:.3f} vs {shipped_map:.3f}" in line, done.stdout
    assert f"[release 0.0.1: {shipped_map:.3f}]" in done.stdout + done.stderr
    assert not (_release(root) / "0.0.2").exists() and "Traceback" not in done.stdout + done.stderr

    # The same build with a drop it may have: only the gate runs again, and 0.0.2 is published.
    write_manifest(root, _doc("0.0.2", {"wrecked": WRECKED}, {**BUDGET, "max_map_drop_vs_release": 1.0}))
    done = run_doit(root, "release", "manifest=tiny.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    ran = executed(done.stdout)
    assert "gate:tiny" in ran and not any(t.startswith(("stage:", "measure:", "generate:")) for t in ran)
    line = next(line for line in done.stdout.splitlines() if line.startswith("wrecked"))
    assert f"pass {tonight:.3f} vs {shipped_map:.3f}" in line
    lock = json.loads((_release(root) / "0.0.2" / "release.lock").read_text())
    assert lock["previous"]["version"] == "0.0.1"
    latest = json.loads((_release(root) / "latest.json").read_text())
    assert latest["latest"]["version"] == "0.0.2" and latest["latest"]["figures"]["map"] == tonight
    assert _snapshot(_release(root) / "0.0.1") == before

    # Publishing it did not make the gate stale: the next build is a no-op.
    done = run_doit(root, "release", "manifest=tiny.yaml")
    assert done.returncode == 0 and executed(done.stdout) == ["release"], done.stdout


def test_nightly_versions_from_a_build_number(shipped, tmp_path):
    root = copy_project(shipped, tmp_path / "p")
    template = "0.1.{env:BUILD_NUMBER}"
    path = write_manifest(root, _doc(template, {"fp32": FP32}, {"size_mb": 100.0}))
    done = run_doit(root, "release", "manifest=tiny.yaml", env={"BUILD_NUMBER": ""})
    assert done.returncode == 3 and f"{path}: 1 problem" in done.stderr
    assert "line 3, version: got '0.1.{env:BUILD_NUMBER}'" in done.stderr and "BUILD_NUMBER is not set" in done.stderr

    first = run_doit(root, "release", "manifest=tiny.yaml", env={"BUILD_NUMBER": "1"})
    assert first.returncode == 0, first.stdout + first.stderr
    assert not any(t.startswith(("stage:", "measure:")) for t in executed(first.stdout))
    night1 = _snapshot(_release(root) / "0.1.1")
    plan = json.loads((root / "artifacts/tiny/plan.json").read_text())
    assert plan["plan"]["version"] == "0.1.1" and plan["plan"]["version_from"]["template"] == template
    assert plan["stamps"]["env"]["BUILD_NUMBER"] == "1"
    lock = json.loads(night1["release.lock"])
    assert lock["version_from"] == {"template": template, "version": "0.1.1", "values": {"env:BUILD_NUMBER": "1"}}
    assert "Version `0.1.1` from the template `0.1.{env:BUILD_NUMBER}` ({env:BUILD_NUMBER} = 1)." in \
        night1["MODEL_CARD.md"].decode()

    second = run_doit(root, "release", "manifest=tiny.yaml", env={"BUILD_NUMBER": "2"})
    assert second.returncode == 0, second.stdout + second.stderr
    assert "released fp32 -> artifacts/tiny/release/0.1.2" in second.stdout
    assert _snapshot(_release(root) / "0.1.1") == night1  # the first night's release, byte for byte
    assert sorted(p.name for p in _release(root).iterdir()) == ["0.0.1", "0.1.1", "0.1.2", "latest.json"]

    # The first night's version built again with other content is refused, and stays as it was.
    write_manifest(root, _doc(template, {"fp32": FP32}, {"size_mb": 99.0}))
    again = run_doit(root, "release", "manifest=tiny.yaml", env={"BUILD_NUMBER": "1"})
    assert again.returncode != 0 and "0.1.1 is already published and a published version never changes" in \
        again.stdout + again.stderr, again.stdout + again.stderr
    assert _snapshot(_release(root) / "0.1.1") == night1
