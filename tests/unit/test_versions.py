"""Version templates (release/versions.py): the placeholders, their located errors, and the stamps
that keep a recorded plan from reusing yesterday's version."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timezone

import pytest

from release import plan as plans
from release import tasks, versions
from release.errors import ManifestError
from release.manifest import load
from tests.conftest import placeholder_data, tiny_manifest_dict, write_manifest

NOW = datetime(2026, 12, 2, 18, 30, 5, tzinfo=timezone.utc)


def test_placeholders_resolve(monkeypatch, tmp_path):
    monkeypatch.setenv("BUILD_NUMBER", "42")
    monkeypatch.setenv("GITHUB_RUN_NUMBER", "7")
    assert versions.resolve("1.0.{date}", tmp_path, NOW).version == "1.0.20261202"
    assert versions.resolve("{date}.{env:GITHUB_RUN_NUMBER}", tmp_path, NOW).version == "20261202.7"
    made = versions.resolve("1.0.0+{date}.{env:BUILD_NUMBER}", tmp_path, NOW)
    assert made.version == "1.0.0+20261202.42"
    assert made.record() == {"template": "1.0.0+{date}.{env:BUILD_NUMBER}", "version": "1.0.0+20261202.42",
                             "values": {"date": "20261202", "env:BUILD_NUMBER": "42"}}
    assert versions.resolve("nightly-{datetime}", tmp_path, NOW).version == "nightly-20261202T183005Z"
    plain = versions.resolve("1.2.3", tmp_path, NOW)
    assert plain.version == "1.2.3" and plain.record() is None


def test_git_describe_in_the_project_root(tmp_path):
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    (tmp_path / "a.txt").write_text("a")
    subprocess.run(git + ["add", "a.txt"], check=True)
    subprocess.run(git + ["commit", "-qm", "one"], check=True)
    subprocess.run(git + ["tag", "v1.4.0"], check=True)
    assert versions.resolve("{git_describe}", tmp_path).version == "v1.4.0"
    (tmp_path / "a.txt").write_text("b")
    assert versions.resolve("{git_describe}", tmp_path).version == "v1.4.0-dirty"
    stamp = versions.stamp(versions.resolve("{git_describe}", tmp_path).record(), tmp_path)
    assert versions.holds(stamp)
    subprocess.run(git + ["commit", "-qam", "two"], check=True)
    assert not versions.holds(stamp)  # a new commit: a new version


@pytest.mark.parametrize("template, expected", [
    ("1.{env:NO_SUCH_VARIABLE_X}", "the environment variable NO_SUCH_VARIABLE_X is not set"),
    ("1.{dat}", "unknown placeholder {dat} in '1.{dat}'. Did you mean 'date'?"),
    ("1.{env:9x}", "'9x' is not an environment variable name"),
    ("1.{date", "unbalanced braces"),
])
def test_template_mistakes_are_located_manifest_errors(tmp_path, monkeypatch, template, expected):
    monkeypatch.delenv("NO_SUCH_VARIABLE_X", raising=False)
    placeholder_data(tmp_path)
    doc = tiny_manifest_dict(version=template)
    del doc["generate"]
    path = write_manifest(tmp_path, doc)
    with pytest.raises(ManifestError) as err:
        load(path, tmp_path)
    text = str(err.value)
    assert f"{path}: 1 problem" in text and "line 3, version: got" in text and expected in text, text


def test_not_a_git_repository_is_a_located_error(tmp_path):
    placeholder_data(tmp_path)
    doc = tiny_manifest_dict(version="{git_describe}")
    del doc["generate"]
    with pytest.raises(ManifestError, match=r"line 3, version: .*git describe --tags --always --dirty.* failed "
                                            r"in the project root"):
        load(write_manifest(tmp_path, doc), tmp_path)


def test_the_resolved_version_must_be_a_folder_name(tmp_path, monkeypatch):
    monkeypatch.setenv("BUILD_NUMBER", "../../x")
    placeholder_data(tmp_path)
    doc = tiny_manifest_dict(version="1.0.{env:BUILD_NUMBER}")
    del doc["generate"]
    with pytest.raises(ManifestError) as err:
        load(write_manifest(tmp_path, doc), tmp_path)
    assert "the template '1.0.{env:BUILD_NUMBER}' resolved to '1.0.../../x'" in str(err.value)


def test_a_semver_build_metadata_template_loads_and_keeps_its_template(tmp_path, monkeypatch):
    monkeypatch.setenv("BUILD_NUMBER", "7")
    placeholder_data(tmp_path)
    doc = tiny_manifest_dict(version="1.0.0+{date}.{env:BUILD_NUMBER}")
    del doc["generate"]
    manifest = load(write_manifest(tmp_path, doc), tmp_path)
    today = datetime.now(timezone.utc).strftime("%Y%m%d")
    assert manifest.version == f"1.0.0+{today}.7"
    assert manifest.version_from == {"template": "1.0.0+{date}.{env:BUILD_NUMBER}", "version": manifest.version,
                                     "values": {"date": today, "env:BUILD_NUMBER": "7"}}
    plain = tiny_manifest_dict()
    del plain["generate"]
    assert load(write_manifest(tmp_path, plain), tmp_path).version_from is None


@pytest.fixture
def project(tmp_path, monkeypatch):
    placeholder_data(tmp_path)
    (tmp_path / "mybuilder.py").write_text("from release.models.demo.detector import build  # noqa: F401\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("BUILD_NUMBER", "5")
    doc = tiny_manifest_dict(version="1.{date}.{env:BUILD_NUMBER}")
    del doc["generate"]
    doc["model"]["builder"] = "mybuilder:build"
    write_manifest(tmp_path, doc)
    return tmp_path


def _plan(root):
    return tasks.plan_for("tiny.yaml", root=root, lock=False)


def test_the_plan_records_the_template_and_its_stamps(project, monkeypatch):
    today = datetime.now(timezone.utc).strftime("%Y%m%d")
    made = _plan(project)
    assert made.version == f"1.{today}.5"
    doc = json.loads((project / "artifacts/tiny/plan.json").read_text())
    assert doc["plan"]["version_from"] == {"template": "1.{date}.{env:BUILD_NUMBER}", "version": made.version,
                                           "values": {"date": today, "env:BUILD_NUMBER": "5"}}
    assert doc["stamps"]["env"]["BUILD_NUMBER"] == "5" and doc["stamps"]["env_names"] == ["BUILD_NUMBER"]
    assert doc["stamps"]["version"]["date"] == today
    assert plans.recorded(project / "tiny.yaml", project).version == made.version  # the stamps hold

    monkeypatch.setenv("BUILD_NUMBER", "6")  # the next CI run
    assert plans.recorded(project / "tiny.yaml", project) is None
    assert _plan(project).version == f"1.{today}.6"


def test_a_new_day_makes_the_recorded_plan_stale(project):
    _plan(project)
    record = project / "artifacts/tiny/plan.json"
    assert plans.recorded(project / "tiny.yaml", project) is not None
    doc = json.loads(record.read_text())
    doc["stamps"]["version"]["date"] = "19700101"  # the plan as it was made yesterday
    record.write_text(json.dumps(doc))
    assert plans.recorded(project / "tiny.yaml", project) is None
