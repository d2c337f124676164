"""Up to date means verified; releases are immutable; one build per folder; nothing not ours is
touched (issue 12, findings 1, 2, 4 and 5). Through the real dodo.py and doit, on the tiny demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from release import buildlock
from release.fingerprint import file_sha256
from tests.conftest import (DODO, copy_project, executed, generated_at, kill_build_when, run_doit, tiny_manifest_dict,
                            write_manifest)

pytestmark = pytest.mark.slow

BUNDLE = "artifacts/tiny/release/0.0.1"


@pytest.fixture()
def project(tiny_built, tmp_path) -> Path:
    return copy_project(tiny_built, tmp_path / "project")


def _report(root: Path) -> dict:
    return json.loads((root / "artifacts/tiny/report.json").read_text())


def test_sigkill_during_tracking_never_publishes_the_killed_runs_model(project):
    """Finding 1: change a quantize param, build, SIGKILL while it tracks, restore, build again."""
    first = _report(project)
    published = file_sha256(project / BUNDLE / "model.onnx")
    changed = tiny_manifest_dict(version="0.0.2")
    changed["variants"]["int8"][2]["quantize"]["per_channel"] = False
    write_manifest(project, changed)
    record = project / "artifacts/tiny/publish.json"

    def tracking_started() -> bool:
        try:
            return "0.0.2" in record.read_text()
        except OSError:
            return False

    assert kill_build_when(project, tracking_started, timeout=300), "the build ended before it was caught"
    killed = _report(project)
    assert killed["variants"]["int8"]["fingerprint"] != first["variants"]["int8"]["fingerprint"]

    write_manifest(project, tiny_manifest_dict())  # restore the param (and the version)
    done = run_doit(project, "release", "manifest=tiny.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    ran = executed(done.stdout)
    # doit's state of every task the killed run finished survived: no stage or measurement again.
    assert not [t for t in ran if t.startswith(("stage:", "measure:", "generate:"))], ran
    assert "gate:tiny" in ran  # the report on disk was the killed run's: not up to date
    again = _report(project)
    assert {n: v["fingerprint"] for n, v in again["variants"].items()} == \
        {n: v["fingerprint"] for n, v in first["variants"].items()}
    assert again["selected"] == first["selected"]
    assert file_sha256(project / BUNDLE / "model.onnx") == published  # the release never changed


def test_a_lost_doit_state_does_not_rebuild_committed_outputs(project):
    """A stage whose committed output for its fingerprint exists is not run again (doit's state gone)."""
    (project / "artifacts/.doit.db").unlink()
    done = run_doit(project, "release", "manifest=tiny.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    # Stages and measurements are up to date by their verified records (no doit state needed).
    assert not [t for t in executed(out) if t.startswith(("stage:", "measure:"))], out
    assert "generate.checkpoint: " in out and "already made for" in out  # verified by its mark
    assert "generate:data" not in executed(out)
    assert "generate.checkpoint: {" not in out and "quantize: calibration" not in out  # nothing heavy re-ran


def test_a_damaged_output_is_rebuilt_not_trusted(project):
    export = next((project / "artifacts/stages/export").iterdir()) / "model.onnx"
    export.write_bytes(export.read_bytes()[:100])  # truncated behind doit's back
    (project / "artifacts/.doit.db").unlink()
    done = run_doit(project, "release", "manifest=tiny.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert any(t.startswith("stage:export@") for t in executed(done.stdout))
    assert "export: output for" not in done.stdout  # not taken as committed
    assert file_sha256(export) == json.loads((export.parent / "stage.json").read_text())["output_sha256"]


def test_published_bundle_is_verified_and_repaired(project):
    """Finding 4: a deleted release folder, a truncated model.onnx in it."""
    bundle = project / BUNDLE
    original = {p.name: file_sha256(p) for p in bundle.iterdir()}
    import shutil

    shutil.rmtree(bundle)
    done = run_doit(project, "release", "manifest=tiny.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "publish:tiny" in executed(done.stdout)
    assert {p.name: file_sha256(p) for p in bundle.iterdir()} == original

    model = bundle / "model.onnx"
    model.write_bytes(model.read_bytes()[:1000])
    done = run_doit(project, "release", "manifest=tiny.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "does not match the hash in release.lock" in done.stdout and "re-published" in done.stdout
    assert {p.name: file_sha256(p) for p in bundle.iterdir()} == original


def test_a_published_version_never_changes(project):
    """Re-measuring latency under the same version must not rewrite metrics.json or the card."""
    bundle = project / BUNDLE
    original = {p.name: file_sha256(p) for p in bundle.iterdir()}
    write_manifest(project, tiny_manifest_dict(measure={"warmup": 3, "runs": 31}))
    done = run_doit(project, "release", "manifest=tiny.yaml")
    text = done.stdout + done.stderr
    assert done.returncode != 0
    assert "tiny 0.0.1 is already published and a published version never changes" in text
    assert "latency" in text and "Bump `version`" in text and "Traceback" not in text
    assert {p.name: file_sha256(p) for p in bundle.iterdir()} == original
    # A new version publishes beside it; the old one stays as it was.
    write_manifest(project, tiny_manifest_dict(version="0.0.2", measure={"warmup": 3, "runs": 31}))
    done = run_doit(project, "release", "manifest=tiny.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (project / "artifacts/tiny/release/0.0.2/model.onnx").is_file()
    assert {p.name: file_sha256(p) for p in bundle.iterdir()} == original


def test_doit_clean_never_deletes_a_release(project):
    done = run_doit(project, "clean", "manifest=tiny.yaml")
    assert done.returncode == 0, done.stderr
    assert (project / BUNDLE / "model.onnx").is_file()


def test_one_build_at_a_time(project):
    """Finding 5: a second build says who holds the folder; wait=SECONDS queues behind it."""
    artifacts = project / "artifacts"
    buildlock.acquire(artifacts)
    try:
        done = run_doit(project, "release", "manifest=tiny.yaml")
        assert done.returncode == 3
        assert "another build of this project is running" in done.stderr
        assert f"pid {os.getpid()}" in done.stderr and "Traceback" not in done.stderr
        listing = run_doit(project, "list", "manifest=tiny.yaml")  # read-only commands need no lock
        assert listing.returncode == 0, listing.stderr
        threading.Timer(1.5, buildlock.release, [artifacts]).start()
        started = time.monotonic()
        done = run_doit(project, "release", "manifest=tiny.yaml", "wait=60")
        assert done.returncode == 0, done.stdout + done.stderr
        assert time.monotonic() - started >= 1.4
    finally:
        buildlock.release(artifacts)


def test_concurrent_builds_do_not_crash_each_other(project):
    """Started together: one builds, the other waits (wait=) and then finds everything up to date."""
    write_manifest(project, tiny_manifest_dict(version="0.0.3", measure={"warmup": 2, "runs": 32}))
    cmd = [sys.executable, "-m", "doit", "-f", str(DODO), "-d", str(project), "release", "manifest=tiny.yaml",
           "wait=300"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for proc, (out, err) in zip(procs, outs):
        assert proc.returncode == 0, out + err
    ran = [executed(out) for out, _ in outs]
    assert sum(any(t.startswith("measure:latency") for t in r) for r in ran) == 1  # measured once


def test_a_generator_never_replaces_what_it_did_not_make(project):
    """Finding 2: generate.data.out at an existing folder, generate.checkpoint.out at an existing file."""
    theirs = project / "artifacts" / "theirs"
    theirs.mkdir()
    (theirs / "keep.txt").write_text("mine")
    doc = generated_at(tiny_manifest_dict(name="other"), data=str(theirs.relative_to(project)))
    write_manifest(project, doc, "other.yaml")
    done = run_doit(project, "release", "manifest=other.yaml")
    assert done.returncode != 0
    assert "was not made by this build, so it is never replaced or deleted" in done.stdout + done.stderr
    assert (theirs / "keep.txt").read_text() == "mine" and len(list(theirs.iterdir())) == 1

    ckpt = project / "artifacts" / "their.ckpt"
    ckpt.write_bytes(b"precious")
    doc = generated_at(tiny_manifest_dict(name="other2"), checkpoint="artifacts/their.ckpt")
    write_manifest(project, doc, "other2.yaml")
    done = run_doit(project, "release", "manifest=other2.yaml")
    assert done.returncode != 0
    assert "generate.checkpoint.out" in done.stdout + done.stderr and "never replaced" in done.stdout + done.stderr
    assert ckpt.read_bytes() == b"precious"
