"""The stage store (issue 14, item 4): where it is (manifest store.path, RELEASE_STORE, default
artifacts/), which folders it may be, and how what it holds is verified before it is reused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from release import manifest, ownership, planner, tasks
from release.errors import ManifestError
from tests.conftest import tiny_manifest_dict, write_manifest


@pytest.fixture(autouse=True)
def no_ambient_store(monkeypatch):
    monkeypatch.delenv("RELEASE_STORE", raising=False)


def _plan(root: Path, doc: dict):
    return planner.build(manifest.load(write_manifest(root, doc), root), root)


def _problem(root: Path, doc: dict) -> str:
    with pytest.raises(ManifestError) as err:
        manifest.load(write_manifest(root, doc), root)
    return str(err.value)


def test_the_default_store_is_artifacts_with_the_layout_unchanged(tmp_path):
    plan = _plan(tmp_path, tiny_manifest_dict())
    assert plan.store is None and plan.store_dir == tmp_path / "artifacts"
    for node in plan.nodes.values():
        assert node.out_dir.parent.parent == tmp_path / "artifacts" / "stages"
    final = plan.final_node("fp32")
    assert plan.size_file(final).parent == tmp_path / "artifacts" / "measure" / final.fingerprint[:16]
    job = next(tasks.stage_tasks(plan))["actions"][0][1][0]
    assert job["cache_dir"] == str(tmp_path / "artifacts" / ".cache")  # calibration: artifacts/.cache/calibration
    # store: {path: artifacts} is the default, said explicitly
    assert _plan(tmp_path, tiny_manifest_dict(store={"path": "artifacts"})).store is None


def test_a_store_outside_the_project_holds_stages_measurements_and_the_calibration_cache(tmp_path):
    root, store = tmp_path / "project", tmp_path / "store"
    root.mkdir()
    plan = _plan(root, tiny_manifest_dict(store={"path": "../store"}))
    assert plan.store == store and plan.store_dir == store
    assert all(n.out_dir.parent.parent == store / "stages" for n in plan.nodes.values())
    final = plan.final_node("int8")
    assert plan.map_file(final).parent == store / "measure" / final.fingerprint[:16]
    stage = next(t for t in tasks.stage_tasks(plan) if t["name"] == final.task_name)
    assert stage["actions"][0][1][0]["cache_dir"] == str(store / ".cache")
    assert all(Path(t).is_absolute() for t in stage["targets"])  # outside the root: absolute targets
    # The record keeps it: a no-op build takes the recorded plan.
    from release.plan import Plan

    again = Plan.from_record(json.loads(json.dumps(plan.to_record())))
    assert again.store == store and again.measure_dir(final) == plan.measure_dir(final)


def test_the_environment_wins_over_the_manifest_and_changes_no_fingerprint(tmp_path, monkeypatch):
    root = tmp_path / "project"
    root.mkdir()
    doc = tiny_manifest_dict(store={"path": "../from-manifest"})
    by_manifest = _plan(root, doc)
    monkeypatch.setenv("RELEASE_STORE", str(tmp_path / "from-env"))
    by_env = _plan(root, doc)
    assert by_env.store == tmp_path / "from-env"
    assert list(by_env.nodes) == list(by_manifest.nodes)  # the store is where, never what
    monkeypatch.setenv("RELEASE_STORE", "../relative")  # relative to the project root
    assert _plan(root, doc).store == tmp_path / "relative"
    # RELEASE_* is among the plan's stamps: changing it makes the plan anew, never a stale one.
    from release.plan import _env

    assert _env()["RELEASE_STORE"] == "../relative"


def test_the_stage_and_measurement_tasks_need_no_doit_state(tmp_path):
    plan = _plan(tmp_path, tiny_manifest_dict())
    stages = {t["name"]: t for t in tasks.stage_tasks(plan)}
    for name, task in stages.items():
        assert "file_dep" not in task and task["uptodate"][0][0] is ownership.output_verified
    quantize = plan.final_node("int8")
    export = plan.nodes[plan.chains["int8"][1]]
    assert f"stage:{export.task_name}" in stages[quantize.task_name]["task_dep"]  # it runs after its input
    for task in tasks.measure_tasks(plan):
        assert "file_dep" not in task and task["uptodate"][0][0] is ownership.is_sealed
        assert any(d.startswith("stage:") for d in task["task_dep"])


@pytest.mark.parametrize("value, said", [
    ("artifacts/stages", "inside artifacts/stages/, which the build manages itself"),
    ("artifacts/.cache", "inside artifacts/.cache/"),
    ("artifacts/tiny", "inside artifacts/tiny/"),
    ("mystore", "inside the project folder but not under artifacts/"),
    (".", "holds the project folder"),
    ("..", "holds the project folder"),
    ("../data/eval/images/store", "inside data.eval.images"),
    ("../data", "around data.train.annotations"),
    ("artifacts/demo", "around source.checkpoint"),
    ("../afile", "exists and is not a folder"),
    ("/proc/store", "kernel pseudo-file system"),
])
def test_a_store_the_build_cannot_use_is_one_located_problem(tmp_path, value, said):
    root = tmp_path / "project"
    root.mkdir()
    (tmp_path / "afile").write_text("")
    doc = tiny_manifest_dict(store={"path": value})
    doc["generate"]["data"]["out"] = "artifacts/demo/data"
    doc["data"] = {s: {"annotations": f"../data/{s}/annotations.json", "images": f"../data/{s}/images"}
                   for s in ("train", "calibration", "eval")}
    for split in doc["data"]:
        (tmp_path / "data" / split / "images").mkdir(parents=True)
        (tmp_path / "data" / split / "images" / "0.png").write_bytes(b"\x89PNG")
        (tmp_path / "data" / split / "annotations.json").write_text("{}")
    message = _problem(root, doc)
    assert "1 problem" in message and "store.path:" in message and said in message, message
    assert "point it at artifacts/ (the default), or at a folder of its own outside the project" in message
    assert "Traceback" not in message


def test_a_bad_release_store_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("RELEASE_STORE", "artifacts/stages")
    message = _problem(tmp_path, tiny_manifest_dict())
    assert "1 problem" in message and "RELEASE_STORE (environment variable" in message
    assert "inside artifacts/stages/" in message and "unset RELEASE_STORE" in message
    monkeypatch.setenv("RELEASE_STORE", "")  # empty: unset
    assert manifest.load(tmp_path / "tiny.yaml", tmp_path).name == "tiny"


def test_a_store_under_artifacts_or_outside_the_project_loads(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    for value in ("artifacts/shared-store", "../store", str(tmp_path / "abs-store")):
        assert manifest.load(write_manifest(root, tiny_manifest_dict(store={"path": value})), root).store is not None


# ---------------------------------------------------------------- verifying what the store holds

def _committed(out_dir: Path, fingerprint: str, payload: bytes = b"onnx bytes") -> Path:
    from release.fingerprint import file_sha256

    out_dir.mkdir(parents=True)
    (out_dir / "model.onnx").write_bytes(payload)
    (out_dir / "stage.json").write_text(json.dumps({"fingerprint": fingerprint, "produces": "onnx",
                                                    "output_sha256": file_sha256(out_dir / "model.onnx")}))
    return out_dir / "model.onnx"


def test_a_stage_output_is_verified_once_then_by_stamp_and_a_changed_byte_is_seen(tmp_path):
    out, stamps = tmp_path / "store" / "stages" / "export" / "f", tmp_path / "artifacts" / ".cache" / "verified"
    model = _committed(out, "f" * 64)
    assert ownership.output_verified(str(out), "f" * 64, str(stamps))
    assert len(list(stamps.iterdir())) == 1  # hashed once; the next check is by stat
    assert ownership.output_verified(str(out), "f" * 64, str(stamps))
    assert not ownership.output_verified(str(out), "e" * 64, str(stamps))  # another fingerprint's
    st = model.stat()
    model.write_bytes(b"onnx BYTES")  # same size ...
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and mtime: the ctime still moved
    assert not ownership.output_verified(str(out), "f" * 64, str(stamps))
    (out / "stage.json").write_text("{not json")
    assert not ownership.output_verified(str(out), "f" * 64, str(stamps))
    assert not ownership.output_verified(str(tmp_path / "absent"), "f" * 64, str(stamps))


def test_a_measurement_is_served_only_as_sealed(tmp_path):
    out = tmp_path / "measure" / "size-x.json"
    out.parent.mkdir()
    out.write_text('{"bytes": 10}')
    assert not ownership.is_sealed(str(out), "key")  # unsealed (a killed run, or restored without it)
    ownership.seal_file(out, "key")
    assert ownership.is_sealed(str(out), "key") and not ownership.is_sealed(str(out), "other")
    ownership.drop_unsealed(str(out), "key")
    assert out.is_file()  # sealed: kept
    out.write_text('{"bytes": 1}')
    assert not ownership.is_sealed(str(out), "key")
    ownership.drop_unsealed(str(out), "key")
    assert not out.exists() and not (out.parent / (out.name + ownership.MARK)).exists()


def test_a_bad_release_store_stops_the_build_before_anything_runs(tmp_path):
    from tests.conftest import run_doit

    write_manifest(tmp_path, tiny_manifest_dict())
    done = run_doit(tmp_path, "release", "manifest=tiny.yaml", env={"RELEASE_STORE": str(tmp_path)})
    assert done.returncode == 3, done.stdout + done.stderr
    assert "RELEASE_STORE (environment variable" in done.stderr and "holds the project folder" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "stages").exists()


def _run_stage(plan, node) -> dict:
    """A stage task's action, as doit runs it; its stage.json."""
    from release import actions

    (task,) = [t for t in tasks.stage_tasks(plan) if t["name"] == node.task_name]
    assert actions.run_stage(task["actions"][0][1][0]) is None  # not a doit failure
    return json.loads(node.record.read_text())


def test_every_stage_records_the_checkpoint_its_output_comes_from(tmp_path):
    """stage.json names the checkpoint's hash: the reading stage hashes the file it read, each later
    one copies its input's record. A generated checkpoint is fingerprinted by its generator, not its
    bytes, so a stage output shared through the store may come from another night's checkpoint:
    the chain's record (what release.lock takes) says which, whatever the file holds now."""
    import torch

    from release.fingerprint import file_sha256
    from release.models.demo import shapes
    from release.models.demo.detector import build

    shapes.generate(tmp_path / "artifacts/demo/data", seed=0, image_size=64, workers=1,
                    splits={"train": 2, "calibration": 2, "eval": 2})  # export checks parity on eval
    ckpt = tmp_path / "artifacts/demo/train_last.ckpt"
    torch.manual_seed(0)
    torch.save({"state_dict": {f"model.{k}": v for k, v in build(3, 0.5, aux_head=True).state_dict().items()}}, ckpt)
    doc = tiny_manifest_dict()
    doc.pop("generate")
    doc["variants"] = {"fp32": ["strip", "export"]}
    plan = _plan(tmp_path, doc)
    strip, export = (plan.nodes[fp] for fp in plan.chains["fp32"])
    made_from = file_sha256(ckpt)
    assert _run_stage(plan, strip)["checkpoint_sha256"] == made_from
    ckpt.write_bytes(b"tonight's checkpoint, with the same generator fingerprint")
    assert _run_stage(plan, export)["checkpoint_sha256"] == made_from  # the chain's, not the file's now
