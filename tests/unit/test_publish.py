"""Publishing a release bundle from a typed Report (release/publish.py), without a build: a real tiny
ONNX file committed with its stage.json as a stage would leave it, a real manifest, and the rules a
published version lives by (verified artifact, lock hashes and tools, immutability, repair only
with identical content)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from release import publish as pub
from release.errors import ReleaseError
from release.fingerprint import file_sha256
from release.report import LatencyFigure, PipelineStep, Report, VariantRow
from tests.conftest import placeholder_data, tiny_manifest_dict, write_manifest

FINGERPRINT = "e" * 64
TOOLS = {"torch": "2.13.0+cpu", "onnx": "1.19.0"}


def tiny_onnx(path: Path, scale: float = 2.0) -> Path:
    """y = x * scale: a valid single-file model of a few hundred bytes."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["input", "scale"], ["output"])], "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 4, 4])],
        [numpy_helper.from_array(np.array([scale], dtype=np.float32), "scale")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def commit_stage_output(root: Path, fingerprint: str = FINGERPRINT, scale: float = 2.0,
                        checkpoint_sha256: str | None = None) -> str:
    """model.onnx and the stage.json a stage writes beside it (release.actions.run_stage); one from
    before stages recorded their checkpoint's hash when it is not given."""
    out = root / "artifacts" / "stages" / "export" / fingerprint
    model = tiny_onnx(out / "model.onnx", scale)
    made_from = {"checkpoint_sha256": checkpoint_sha256} if checkpoint_sha256 else {}
    (out / "stage.json").write_text(json.dumps({
        "schema_version": 1, "stage": "export", "version": 1, "fingerprint": fingerprint, "input": "w",
        "params": {}, "produces": "onnx", "output_sha256": file_sha256(model), **made_from, "tools": TOOLS,
        "seconds": 0.1, "facts": {}}))
    return str(model.relative_to(root))


def report_for(root: Path, artifact: str, mAP: float = 0.5, fingerprint: str = FINGERPRINT,
               variant: str = "fp32") -> Report:
    lat = LatencyFigure(p50_ms=2.0, p90_ms=2.2, runs=30, cv=0.02, threads=1, runner="local", provenance="host",
                        onnxruntime="1.32.0", host_cpu="AMD EPYC", host_cores=2, notes=[], note="")
    row = VariantRow(fingerprint=fingerprint, artifact=artifact, size_mb=0.0004, bytes=400, latency_ms=2.0,
                     latency_p90_ms=2.2, latency=lat, map=mAP, map50=mAP + 0.2, parameters=1, macs=48,
                     stages=[PipelineStep(stage="strip", params={"dtype": "stored"}, fingerprint="1" * 64,
                                          tools={"safetensors": "0.8.0"}),
                             PipelineStep(stage="export", params={}, fingerprint=fingerprint, tools=TOOLS)],
                     passed=True)
    from release import gate

    row = gate.judged(row, {"size_mb": 1.0})
    return Report(key="k", name="tiny", version="0.0.1", target={"name": "tiny-host"}, budget={"size_mb": 1.0},
                  select="best_map", latency_provenance="latency: measured on this host", variants={variant: row},
                  selected=variant, passed=True)


@pytest.fixture
def project(tmp_path) -> tuple[Path, dict]:
    root = tmp_path
    doc = tiny_manifest_dict()
    doc.pop("generate")
    placeholder_data(root)
    checkpoint = root / "artifacts" / "demo" / "train_last.ckpt"
    checkpoint.write_bytes(b"not read by publish")
    manifest = write_manifest(root, doc)
    d = root / "artifacts" / "tiny"
    from release.manifest import Inputs, load

    inputs = Inputs.of(load(manifest, root)).model_dump(mode="json")  # as release/tasks.py gives it
    job = {"root": str(root), "manifest": str(manifest), "release_dir": str(d / "release" / "0.0.1"), "inputs": inputs,
           "out": str(d / "publish.json"), "report": str(d / "report.json"),
           "hash_cache": str(root / "artifacts" / ".cache" / "hashes.json")}
    return root, job


def publish_action(job: dict, report: Report) -> dict:
    """What the build does: report.json written, the publish action run, its record read back."""
    from release import actions

    report.write(Path(job["report"]))
    assert actions.publish(job) is None  # not a doit failure
    return json.loads(Path(job["out"]).read_text())


def test_a_bundle_is_published_with_its_lock(project):
    root, job = project
    artifact = commit_stage_output(root)
    report = report_for(root, artifact)
    logs: list[str] = []
    result = pub.publish(report, job, log=logs.append)
    dest = Path(job["release_dir"])
    assert result["published"] == "artifacts/tiny/release/0.0.1" and result["variant"] == "fp32"
    assert {p.name for p in dest.iterdir()} == {"model.onnx", "metrics.json", "MODEL_CARD.md", "release.lock"}
    lock = json.loads((dest / "release.lock").read_text())
    assert lock["files"] == {f: file_sha256(dest / f) for f in pub.BUNDLE_FILES}
    assert lock["model_sha256"] == file_sha256(root / artifact) == result["model_sha256"]
    assert (lock["name"], lock["version"], lock["variant"], lock["fingerprint"]) == ("tiny", "0.0.1", "fp32",
                                                                                     FINGERPRINT)
    # The tools of the variant's own stages, as they recorded them, and those the measurements use.
    assert {k: lock["tools"][k] for k in ("safetensors", "torch", "onnx")} == {**TOOLS, "safetensors": "0.8.0"}
    assert {"onnxruntime", "pycocotools", "release"} <= set(lock["tools"])
    assert set(lock["data"]) == {"train", "calibration", "eval"} and len(lock["manifest"]["sha256"]) == 64
    assert lock["source"]["checkpoint"] == "train_last.ckpt"
    metrics = json.loads((dest / "metrics.json").read_text())
    assert metrics["variant"] == "fp32" and metrics["map"] == 0.5 and metrics["checks"][0]["pass"] is True
    assert metrics["latency"] == report.release.latency.model_dump()
    card = (dest / "MODEL_CARD.md").read_text()
    assert card.startswith("# tiny 0.0.1 — model card\n\nVariant **fp32**, selected by `best_map` among 1 variants.")
    assert "Pipeline: `strip(dtype=stored) -> export`" in card and "| size | 0.000 MB (400 bytes) |" in card
    assert pub.verify(dest) == (lock, None)
    # The same report again: the bundle is left as it is.
    assert pub.publish(report, job, log=logs.append) == result
    assert logs == ["publish: artifacts/tiny/release/0.0.1 already holds exactly this release; left as it is"]


def test_the_lock_names_the_checkpoint_the_published_model_was_made_from(project):
    """A stage chain reused from a shared store may come from another night's generated checkpoint
    (same generator fingerprint, other bytes): release.lock and the card name the checkpoint its
    stage record names, not the file there tonight. A record from before stages recorded it: the
    file's hash, as before."""
    root, job = project
    made_from = "c" * 64
    report = report_for(root, commit_stage_output(root, checkpoint_sha256=made_from))
    pub.publish(report, job, log=lambda m: None)
    dest = Path(job["release_dir"])
    lock = json.loads((dest / "release.lock").read_text())
    tonight = file_sha256(root / "artifacts" / "demo" / "train_last.ckpt")
    assert lock["source"]["sha256"] == made_from != tonight
    assert f"sha256 `{made_from[:16]}…`" in (dest / "MODEL_CARD.md").read_text()

    older = report_for(root, commit_stage_output(root, fingerprint="f" * 64), fingerprint="f" * 64)
    job = {**job, "release_dir": str(dest.with_name("0.0.2"))}
    pub.publish(older.model_copy(update={"version": "0.0.2"}), job, log=lambda m: None)
    assert json.loads((dest.with_name("0.0.2") / "release.lock").read_text())["source"]["sha256"] == tonight


def test_the_action_records_the_report_it_published(project):
    root, job = project
    record = publish_action(job, report_for(root, commit_stage_output(root)))
    assert record["report_sha256"] == file_sha256(Path(job["report"])) and record["variant"] == "fp32"
    assert pub.is_current(job)
    Path(job["release_dir"], "metrics.json").write_text("{}")
    assert not pub.is_current(job)  # the bundle no longer verifies


def test_a_published_version_never_changes(project):
    root, job = project
    artifact = commit_stage_output(root)
    pub.publish(report_for(root, artifact), job, log=lambda _: None)
    before = {p.name: p.read_bytes() for p in Path(job["release_dir"]).iterdir()}
    with pytest.raises(ReleaseError, match=r"tiny 0.0.1 is already published.*same model, but its figures differ "
                                           r"\(map, map50\)\. Bump `version`"):
        pub.publish(report_for(root, artifact, mAP=0.4), job, log=lambda _: None)
    other = commit_stage_output(root, "d" * 64, scale=3.0)
    with pytest.raises(ReleaseError, match=r"it holds variant 'fp32' \(model sha256 [0-9a-f]{12}…\); this build "
                                           r"selected 'int8'"):
        pub.publish(report_for(root, other, fingerprint="d" * 64, variant="int8"), job, log=lambda _: None)
    assert {p.name: p.read_bytes() for p in Path(job["release_dir"]).iterdir()} == before


def test_a_damaged_bundle_is_repaired_only_with_identical_content(project):
    root, job = project
    artifact = commit_stage_output(root)
    report = report_for(root, artifact)
    publish_action(job, report)
    dest = Path(job["release_dir"])
    card = dest / "MODEL_CARD.md"
    original = card.read_bytes()
    card.write_text("edited")
    assert "does not match the hash in release.lock" in pub.verify(dest)[1]
    with pytest.raises(ReleaseError, match="the published release is damaged .*would not write the same content"):
        pub.publish(report_for(root, artifact, mAP=0.4), job, log=lambda _: None)
    assert card.read_text() == "edited"  # not replaced by other content
    logs: list[str] = []
    pub.publish(report, job, log=logs.append)
    assert card.read_bytes() == original and pub.verify(dest)[1] is None
    assert "re-published tiny 0.0.1 from verified artifacts (same content)" in logs[0]


def test_an_artifact_that_does_not_match_its_record_is_not_published(project):
    root, job = project
    artifact = commit_stage_output(root)
    tiny_onnx(root / artifact, scale=5.0)  # edited after its stage recorded its hash
    with pytest.raises(ReleaseError, match="does not match the hash its stage recorded.*it was not published"):
        pub.publish(report_for(root, artifact), job, log=lambda _: None)
    assert not Path(job["release_dir"]).exists()


def test_nothing_selected_publishes_nothing(project):
    root, job = project
    report = report_for(root, commit_stage_output(root)).model_copy(update={"selected": None, "passed": False})
    assert publish_action(job, report)["published"] is None
    assert not Path(job["release_dir"]).exists()
