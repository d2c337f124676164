"""The stage store end to end (issue 14, item 4): a build with RELEASE_STORE outside the project,
then a fresh runner (artifacts/ deleted, doit's state with it) that restores only the store and
rebuilds nothing heavy; what the store holds is verified, so a changed byte is rebuilt, never served.
Through the real dodo.py and doit, on the tiny demo with its data and checkpoint in the project (as
a team's repository has them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from release.fingerprint import file_sha256
from tests.conftest import executed, run_doit, tiny_manifest_dict, write_manifest

pytestmark = pytest.mark.slow


def store_project(root: Path) -> Path:
    """A project with its own data and checkpoint (made once by the demo's generators, outside
    artifacts/), and the tiny manifest reading them."""
    from release.models.demo import generate

    root.mkdir(parents=True, exist_ok=True)
    generate.data(root / "data", seed=0, image_size=64, train_images=48, calibration_images=8, eval_images=16)
    generate.checkpoint(root / "train_last.ckpt", data=str(root / "data"), image_size=64, steps=20, batch_size=8,
                        lr=0.004, seed=0, num_classes=3, width=0.5)
    doc = tiny_manifest_dict()
    del doc["generate"]
    doc["source"]["checkpoint"] = "train_last.ckpt"
    doc["data"] = {s: {"annotations": f"data/{s}/annotations.json", "images": f"data/{s}/images"}
                   for s in ("train", "calibration", "eval")}
    write_manifest(root, doc)
    return root


def calibration_entries(store: Path) -> list[Path]:
    return [p for p in store.glob(".cache/calibration/*.json") if not p.name.endswith(".release-owner.json")]


def bundle(root: Path) -> dict[str, str]:
    """The release bundle by content: every file's hash, release.lock's but for the time it was
    published (a fresh runner publishes again, later; everything else must be the same bytes)."""
    folder = root / "artifacts/tiny/release/0.0.1"
    out = {p.name: file_sha256(p) for p in sorted(folder.iterdir()) if p.name != "release.lock"}
    lock = json.loads((folder / "release.lock").read_text())
    assert lock.pop("published_at")
    out["release.lock"] = lock
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(project, store, env, the first build's output): built once with the store outside the project."""
    base = tmp_path_factory.mktemp("store")
    root, store = store_project(base / "project"), base / "store"
    env = {"RELEASE_STORE": str(store)}
    first = run_doit(root, "release", "manifest=tiny.yaml", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    return root, store, env, first.stdout


def test_the_store_holds_stage_outputs_measurements_and_calibration(built):
    root, store, _, out = built
    assert sum(t.startswith("stage:") for t in executed(out)) == 3  # strip, export, quantize
    assert len(list(store.glob("stages/*/*/stage.json"))) == 3
    assert len(list(store.glob("measure/*/*.json.release-owner.json"))) == 6  # 2 variants x size, map, latency
    assert len(calibration_entries(store)) == 1
    assert not (root / "artifacts/stages").exists() and not (root / "artifacts/measure").exists()
    report = json.loads((root / "artifacts/tiny/report.json").read_text())
    assert all(row["artifact"].startswith(str(store)) for row in report["variants"].values())


def test_a_fresh_runner_with_only_the_store_rebuilds_nothing_heavy(built, tmp_path):
    root, store, env, _ = built
    published = bundle(root)
    runner = tmp_path / "runner"  # another checkout, at another path, on a "fresh runner"
    shutil.copytree(root, runner, ignore=shutil.ignore_patterns("artifacts"))
    assert not (runner / "artifacts").exists()
    done = run_doit(runner, "release", "manifest=tiny.yaml", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    ran = executed(done.stdout)
    assert not [t for t in ran if t.startswith(("stage:", "measure:"))], ran  # up to date by the store's records
    assert "check:tiny" in ran and "gate:tiny" in ran and "publish:tiny" in ran  # cheap ones run again
    assert "already committed" not in done.stdout and "calibrating" not in done.stdout
    assert bundle(runner) == published  # the published result is identical
    again = run_doit(runner, "release", "manifest=tiny.yaml", env=env)
    assert again.returncode == 0 and executed(again.stdout) == ["release"], again.stdout  # and then a no-op


def test_a_changed_byte_in_the_store_is_rebuilt_never_served(built, tmp_path):
    root, store, env, _ = built
    published = bundle(root)
    export = next(store.glob("stages/export/*/model.onnx"))
    record = json.loads((export.parent / "stage.json").read_text())
    data = bytearray(export.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte, same size
    export.write_bytes(bytes(data))
    size = next(store.glob("measure/*/size-*.json"))
    size.write_text(size.read_text().replace('"bytes": ', '"bytes": 1'))  # a figure edited in the store
    runner = tmp_path / "runner"
    shutil.copytree(root, runner, ignore=shutil.ignore_patterns("artifacts"))
    done = run_doit(runner, "release", "manifest=tiny.yaml", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    ran = executed(done.stdout)
    assert [t.split("@")[0] for t in ran if t.startswith("stage:")] == ["stage:export"], ran
    assert sum(t.startswith("measure:size@") for t in ran) == 1, ran
    assert file_sha256(export) == record["output_sha256"]  # rebuilt: the same bytes as first built
    assert bundle(runner) == published


def test_a_changed_calibration_entry_is_calibrated_again(built, tmp_path):
    root, store, env, _ = built
    entry = calibration_entries(store)[0]
    entry.write_text(entry.read_text().replace("0", "1", 1))
    quantize = next(store.glob("stages/quantize/*/"))
    output = quantize / "model.onnx"
    before = file_sha256(output)
    shutil.rmtree(quantize)
    done = run_doit(root, "release", "manifest=tiny.yaml", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "quantize: calibrating" in done.stdout and "ranges from the cache" not in done.stdout
    assert file_sha256(output) == before  # the ranges were computed again, not taken from the edited entry


NIGHTLY = '''\
import os
from pathlib import Path

from release.generate import generator


@generator(writes="file", tools=("torch",), model_kwargs=True)
def checkpoint(out: Path, *, num_classes: int = 3, width: float = 1.0) -> dict:
    """A training run: other bytes every night, whatever its fingerprint."""
    import torch

    from release.models.demo.detector import build

    torch.manual_seed(int.from_bytes(os.urandom(4), "little"))
    state = build(num_classes, width, aux_head=True).state_dict()
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, out)
    return {"written": out.name}
'''


def test_a_generated_checkpoint_reused_through_the_store_is_the_one_the_lock_names(tmp_path):
    """Tonight's runner generates its checkpoint again (other bytes, the same generator fingerprint)
    and takes last night's stage outputs from the store: release.lock names the checkpoint those
    stages were made from, as their stage.json records it, not the file this runner made."""
    store, first, second = tmp_path / "store", tmp_path / "night1", tmp_path / "night2"
    first.mkdir()
    (first / "nightly.py").write_text(NIGHTLY)
    doc = tiny_manifest_dict()
    doc["generate"]["data"]["kwargs"].update(train_images=8, calibration_images=4, eval_images=4)
    doc["generate"]["checkpoint"] = {"run": "nightly:checkpoint", "out": "artifacts/demo/train_last.ckpt"}
    doc["variants"] = {"fp32": ["strip", "export"]}
    write_manifest(first, doc)
    env = {"RELEASE_STORE": str(store)}
    done = run_doit(first, "release", "manifest=tiny.yaml", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    shutil.copytree(first, second, ignore=shutil.ignore_patterns("artifacts"))
    done = run_doit(second, "release", "manifest=tiny.yaml", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    ran = executed(done.stdout)
    assert "generate:checkpoint" in ran and not [t for t in ran if t.startswith("stage:")], ran

    (strip,) = store.glob("stages/strip/*/stage.json")
    made_from = json.loads(strip.read_text())["checkpoint_sha256"]
    (export,) = store.glob("stages/export/*/stage.json")
    assert json.loads(export.read_text())["checkpoint_sha256"] == made_from
    locks = [json.loads((p / "artifacts/tiny/release/0.0.1/release.lock").read_text()) for p in (first, second)]
    assert locks[0]["source"]["sha256"] == locks[1]["source"]["sha256"] == made_from
    assert made_from == file_sha256(first / "artifacts/demo/train_last.ckpt")
    assert made_from != file_sha256(second / "artifacts/demo/train_last.ckpt")  # tonight's other bytes
