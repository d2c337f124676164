"""The plan is made once and recorded (artifacts/<name>/plan.json); a later run takes the record
while every stamp holds, and never a stale one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from release import plan as plans
from release import tasks
from tests.conftest import DODO, placeholder_data, tiny_manifest_dict, write_manifest


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A manifest without generators whose builder is the project's own module (as doit imports it)."""
    placeholder_data(tmp_path)
    (tmp_path / "mybuilder.py").write_text("from release.models.demo.detector import build  # noqa: F401\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    write_manifest(tmp_path, _doc())
    return tmp_path


def _doc() -> dict:
    doc = tiny_manifest_dict()
    del doc["generate"]
    doc["model"]["builder"] = "mybuilder:build"
    return doc


def _plan(project):
    return tasks.plan_for("tiny.yaml", root=project, lock=False)


def _made_anew(project, monkeypatch) -> list[str]:
    """Plan, and say whether the plan was made (not taken from the record)."""
    made = []
    real = tasks.make_plan
    monkeypatch.setattr(tasks, "make_plan", lambda path, root: made.append(path) or real(path, root))
    _plan(project)
    return made


def test_the_plan_round_trips_through_its_record(project):
    made = _plan(project)
    doc = json.loads((project / "artifacts/tiny/plan.json").read_text())
    again = plans.Plan.from_record(doc["plan"])
    assert again.to_record() == made.to_record()
    assert again.final_node("int8").stage == "quantize" and again.chains["int8"][:2] == again.chains["fp32"]
    assert again.target["name"] == "tiny-host" and again.target["threads"] == 1
    assert again.map_file(again.final_node("fp32")) == made.map_file(made.final_node("fp32"))
    # The stamps name what planning read: the manifest, the data it hashed, the stage code.
    paths = doc["stamps"]["paths"]
    assert str(project / "artifacts/demo/data/eval/annotations.json") in paths
    assert any(p.endswith(os.path.join("release", "stages", "quantize.py")) or "stages/quantize/" in p for p in paths)


def test_the_record_is_used_while_its_stamps_hold(project, monkeypatch):
    _plan(project)
    assert _made_anew(project, monkeypatch) == []


@pytest.mark.parametrize("change", ["manifest", "data", "code", "env", "record"])
def test_a_changed_input_is_never_served_a_stale_plan(project, monkeypatch, change):
    first = _plan(project)
    if change == "manifest":
        doc = _doc()
        doc["variants"]["int8"][2]["quantize"]["per_channel"] = False
        write_manifest(project, doc)
    elif change == "data":
        (project / "artifacts/demo/data/eval/annotations.json").write_text('{"images": []}')
    elif change == "code":  # the user's builder edited
        (project / "mybuilder.py").write_text((project / "mybuilder.py").read_text() + "# tuned\n")
    elif change == "env":
        monkeypatch.setenv("RELEASE_PROGRESS", "1")
    else:
        (project / "artifacts/tiny/plan.json").write_text("{")  # a damaged record is not trusted
    assert _made_anew(project, monkeypatch) != []
    if change == "manifest":
        assert _plan(project).final["int8"] != first.final["int8"]
    if change == "data":
        assert _plan(project).data_fp["eval"] != first.data_fp["eval"]


def test_a_noop_with_a_recorded_plan_parses_nothing(project):
    """`doit list` twice: the second takes the record and imports no pydantic and no stage."""
    probe = (
        "import runpy, sys\n"
        f"sys.argv = ['doit', '-f', {str(DODO)!r}, '-d', {str(project)!r}, 'list', 'manifest=tiny.yaml']\n"
        "try:\n    runpy.run_module('doit', run_name='__main__')\nexcept SystemExit as exc:\n    code = exc.code\n"
        "print('LOADED:', sorted(m for m in sys.modules if m.split('.')[0] == 'pydantic' or m.startswith('release.stages')"
        " or m == 'yaml'))\n"
    )
    runs = [subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
            for _ in range(2)]
    assert "pydantic" in runs[0].stdout  # the first run made the plan
    assert "LOADED: []" in runs[1].stdout, runs[1].stdout + runs[1].stderr


def _check_key(plan) -> str:
    (task,) = tasks.check_tasks(plan)
    return task["actions"][0][1][0]["key"]


def test_the_model_check_runs_again_when_its_code_or_the_model_code_changes(project):
    """The check runs the adapter and the model on real images: the model's code and the check's own
    (a newer release of this package finds more) are part of its key, whatever stages it covers."""
    import dataclasses

    first = _plan(project)
    assert first.check_code
    newer_check = dataclasses.replace(first, check_code="a newer release.check")
    assert _check_key(newer_check) != _check_key(first)
    (project / "mybuilder.py").write_text("from release.models.demo.detector import build  # noqa: F401\n# edited\n")
    again = _plan(project)
    assert again.check_code != first.check_code and _check_key(again) != _check_key(first)


def _latency_keys(project, monkeypatch, cpu: str, cores: int = 2) -> dict:
    """The plan's latency keys as a build host with this CPU and core count makes them."""
    from release import planner

    here = {"cpu": cpu, "cores": cores}
    monkeypatch.setattr(plans, "host", lambda: here)  # what the recorded plan's stamps compare
    monkeypatch.setattr(planner, "host", lambda: here)
    return _plan(project).keys


def test_a_local_runner_latency_key_names_the_build_host(project, monkeypatch):
    """Two build hosts sharing a stage store: a local runner's latency is this host's (CPU model,
    cores, threads), so another host never takes it; a plan recorded on one is made anew on the
    other. mAP does not depend on the host."""
    amd = _latency_keys(project, monkeypatch, "AMD EPYC 7B13")
    assert _made_anew(project, monkeypatch) == []  # the same host: the record holds
    intel = _latency_keys(project, monkeypatch, "Intel(R) Xeon(R) Platinum 8375C")
    more_cores = _latency_keys(project, monkeypatch, "AMD EPYC 7B13", cores=8)
    assert amd["latency"].keys() == intel["latency"].keys()
    for fp in amd["latency"]:
        assert len({amd["latency"][fp], intel["latency"][fp], more_cores["latency"][fp]}) == 3
    assert amd["map"] == intel["map"] == more_cores["map"] and amd["size"] == intel["size"]
    doc = _doc()
    doc["target"] = {"name": "tiny-host", "threads": 2}  # the thread setting: another figure
    write_manifest(project, doc)
    two = _latency_keys(project, monkeypatch, "AMD EPYC 7B13")
    assert set(two["latency"].values()).isdisjoint(amd["latency"].values())


def test_an_ssh_runner_latency_key_names_the_device_not_the_build_host(project, monkeypatch):
    doc = _doc()
    doc["target"] = {"name": "pi", "runner": "ssh://pi@192.0.2.7", "threads": 4}
    write_manifest(project, doc)
    amd = _latency_keys(project, monkeypatch, "AMD EPYC 7B13")
    intel = _latency_keys(project, monkeypatch, "Intel(R) Xeon(R) Platinum 8375C", cores=8)
    assert amd == intel


def test_the_host_is_read_once_and_names_this_cpu():
    plans.host.cache_clear()
    first = plans.host()
    assert plans.host() is first and plans.host.cache_info().misses == 1
    assert first["cores"] == (os.cpu_count() or 1) and first["cpu"]
    from release.measure import bench

    assert first["cpu"] == bench.cpu_model()
