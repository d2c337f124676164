"""The example nightly workflows (docs/ci/*.yml, issue 14 item 4): they run on a schedule, every
command they run is the documented one (docs/ci-nightly.md), every variable they set is read by the
tool or by what they run, and the release command, run in a temporary project with the workflow's
own environment, works and leaves every path the workflow caches and uploads."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

GITHUB, GITLAB = REPO / "docs/ci/github-actions.yml", REPO / "docs/ci/gitlab-ci.yml"
DOC = REPO / "docs/ci-nightly.md"
TOOL_PREFIXES = ("RELEASE_", "MLFLOW_")  # variables the tool itself reads (release/plan.py ENV_PREFIXES)
OTHER_TOOLS = ("PIP_",)                  # read by a program the workflow runs (pip), not by the tool


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _lines(text: str) -> list[str]:
    return [line.strip() for line in str(text).splitlines() if line.strip() and not line.strip().startswith("#")]


def _github_steps() -> list[dict]:
    return [step for job in _load(GITHUB)["jobs"].values() for step in job["steps"]]


def _gitlab_jobs() -> dict:
    return {name: job for name, job in _load(GITLAB).items() if isinstance(job, dict) and "script" in job}


def commands(path: Path) -> list[str]:
    """The shell commands a workflow runs: GitHub's `run:` steps, GitLab's script lines."""
    if path == GITHUB:
        return [line for step in _github_steps() if "run" in step for line in _lines(step["run"])]
    return [line for job in _gitlab_jobs().values() for key in ("before_script", "script", "after_script")
            for entry in job.get(key, []) for line in _lines(entry)]


def variables(path: Path) -> dict[str, str]:
    """Every variable the workflow sets (workflow, job and step level)."""
    if path == GITHUB:
        doc = _load(GITHUB)
        found = dict(doc.get("env", {}))
        for job in doc["jobs"].values():
            found.update(job.get("env", {}))
            for step in job["steps"]:
                found.update(step.get("env", {}))
        return {k: str(v) for k, v in found.items()}
    found = dict(_load(GITLAB).get("variables", {}))
    for job in _gitlab_jobs().values():
        found.update(job.get("variables", {}))
    return {k: str(v) for k, v in found.items()}


def documented_commands() -> set[str]:
    return {line.strip() for block in re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.S)
            for line in block.splitlines() if line.strip()}


@pytest.mark.parametrize("path", [GITHUB, GITLAB], ids=["github", "gitlab"])
def test_every_command_a_workflow_runs_is_documented(path):
    run = commands(path)
    assert any(c.startswith("doit release manifest=") for c in run), run
    missing = [c for c in run if c not in documented_commands()]
    assert not missing, f"{path.name} runs commands docs/ci-nightly.md does not list: {missing}"


@pytest.mark.parametrize("path", [GITHUB, GITLAB], ids=["github", "gitlab"])
def test_every_variable_is_read_by_the_tool_or_by_what_the_workflow_runs(path):
    code = "\n".join(p.read_text() for p in (REPO / "release").rglob("*.py"))
    text, doc = path.read_text(), DOC.read_text()
    for name in variables(path):
        assert f"| `{name}` |" in doc, f"{name} is not in docs/ci-nightly.md's table of variables"
        if name.startswith(TOOL_PREFIXES):
            assert f'"{name}"' in code, f"{path.name} sets {name}, which the tool never reads"
        elif not name.startswith(OTHER_TOOLS):
            # The workflow's own: used by it (and never with the tool's prefix, which plans record).
            uses = re.findall(rf"(?:\$\{{?|env\.){name}\b", text)
            assert uses, f"{path.name} sets {name} but never uses it"
    # And every variable it uses is one it sets or one the CI service sets.
    used = set(re.findall(r"env\.(\w+)", text)) | set(re.findall(r"\$\{?([A-Z_][A-Z0-9_]*)", text))
    unknown = {n for n in used - set(variables(path)) if not n.startswith(("CI_", "GITHUB_"))}
    assert not unknown, f"{path.name} uses variables it does not set: {unknown}"


def test_github_runs_nightly_restores_the_store_and_reports_always():
    doc = _load(GITHUB)
    on = doc.get("on", doc.get(True))  # YAML 1.1 reads the key `on` as true
    assert on["schedule"][0]["cron"] and "workflow_dispatch" in on
    steps = {step.get("uses", "").split("@")[0]: step for step in _github_steps()
             if "uses" in step and "latest.json" not in str(step.get("with", {}).get("path"))}
    last = [s for s in _github_steps() if "latest.json" in str(s.get("with", {}).get("path"))]
    # the last release's figures (for *_vs_release budgets) are restored and saved after a publish only
    assert [s["uses"].split("@")[0] for s in last] == ["actions/cache/restore", "actions/cache/save"]
    assert last[1]["if"] == "success()" and last[1]["with"]["path"] == last[0]["with"]["path"] \
        == "artifacts/${{ env.MODEL_NAME }}/release/latest.json"
    assert {"actions/checkout", "actions/setup-python", "actions/cache/restore", "actions/cache/save",
            "mikepenz/action-junit-report", "actions/upload-artifact"} <= set(steps)
    restore, save = steps["actions/cache/restore"], steps["actions/cache/save"]
    assert restore["with"]["path"] == save["with"]["path"] == "${{ env.RELEASE_STORE }}"
    key, fallbacks = restore["with"]["key"], _lines(restore["with"]["restore-keys"])
    assert "hashFiles('recipes/**'" in key and "*.lock" in key and "github.run_id" in key
    assert all(key.startswith(f) for f in fallbacks) and len(fallbacks) == 2  # a partial restore helps
    assert save["with"]["key"] == "${{ steps.store.outputs.cache-primary-key }}" and save["if"] == "always()"
    assert steps["mikepenz/action-junit-report"]["if"] == "always()"
    uploads = [s for s in _github_steps() if s.get("uses", "").startswith("actions/upload-artifact")]
    reports = next(s for s in uploads if "report.xml" in s["with"]["path"])
    assert reports["if"] == "always()"
    order = [s.get("uses", s.get("run", "")).split("@")[0] for s in _github_steps()]
    assert order.index("actions/cache/restore") < order.index('doit release manifest="$MANIFEST"') < \
        order.index("actions/cache/save")


def test_gitlab_runs_on_its_schedule_caches_the_store_and_reports_junit():
    (job,) = _gitlab_jobs().values()
    assert {"if": '$CI_PIPELINE_SOURCE == "schedule"'} in job["rules"]
    cache, last = job["cache"]
    assert last["paths"] == ["artifacts/$MODEL_NAME/release/latest.json"] and last["when"] == "on_success"
    assert cache["when"] == "always" and [p.rstrip("/") for p in cache["paths"]] == [variables(GITLAB)["RELEASE_STORE"]]
    assert job["artifacts"]["when"] == "always" and job["artifacts"]["reports"]["junit"] == "artifacts/$MODEL_NAME/report.xml"
    assert "artifacts/$MODEL_NAME/release/" in job["artifacts"]["paths"]


# ---------------------------------------------------------------- the commands, run

def _expand(text: str, env: dict, workspace: Path) -> str:
    text = re.sub(r"\$\{\{\s*github\.workspace\s*\}\}", str(workspace), str(text))
    text = re.sub(r"\$\{\{\s*env\.(\w+)\s*\}\}", lambda m: env[m.group(1)], text)
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), m.group(0)), text)


def _paths(path: Path, env: dict, root: Path) -> dict[str, list[Path]]:
    """What the workflow caches, and what it uploads (the release bundle, the JUnit report)."""
    if path == GITHUB:
        steps = {s.get("uses", "").split("@")[0]: s for s in _github_steps() if "uses" in s}
        uploads = [line for s in _github_steps() if s.get("uses", "").startswith("actions/upload-artifact")
                   for line in _lines(s["with"]["path"])]
        cached = _lines(next(s for s in _github_steps() if s.get("uses", "").startswith("actions/cache/restore")
                             and "RELEASE_STORE" in s["with"]["path"])["with"]["path"])
        junit = _lines(steps["mikepenz/action-junit-report"]["with"]["report_paths"])
    else:
        (job,) = _gitlab_jobs().values()
        cached, uploads = job["cache"][0]["paths"], job["artifacts"]["paths"]
        junit = [job["artifacts"]["reports"]["junit"]]
    resolve = lambda items: [root / _expand(p, env, root) for p in items]  # noqa: E731 - absolute stays absolute
    return {"cached": resolve(cached), "uploaded": resolve(uploads), "junit": resolve(junit)}


@pytest.fixture(scope="module")
def user_project(tmp_path_factory) -> Path:
    """A project as a team's repository holds it: its data and checkpoint, the tiny manifest, and
    the one-line dodo.py that `release init` writes."""
    from tests.func.test_stage_store_e2e import store_project

    root = store_project(tmp_path_factory.mktemp("ci") / "project")
    (root / "dodo.py").write_text("from release.dodo import *\n")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("path", [GITHUB, GITLAB], ids=["github", "gitlab"])
def test_the_release_commands_work_with_the_workflows_environment(path, user_project, tmp_path):
    root = tmp_path / "checkout" / "project"
    shutil.copytree(user_project, root)
    workflow_env = variables(path)
    workflow_env.update(MANIFEST="tiny.yaml", MODEL_NAME="tiny")  # the tiny manifest, not the 10-variant one
    workflow_env = {k: _expand(v, workflow_env, root) for k, v in workflow_env.items()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(TOOL_PREFIXES)}
    env.update({k: v for k, v in workflow_env.items() if not k.startswith(OTHER_TOOLS)})
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # this doit, this Python
    for command in commands(path):
        if not command.startswith("doit "):
            continue  # the install: the tool is installed here already
        done = subprocess.run(["bash", "-c", command], cwd=root, env=env, capture_output=True, text=True,
                              timeout=900, check=False)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    paths = _paths(path, workflow_env, root)
    (store,) = paths["cached"]
    assert store.is_dir() and list(store.glob("stages/*/*/stage.json")), store  # the store the cache saves
    assert not (root / "artifacts" / "stages").exists()  # everything content-keyed went to the store
    bundle = next(p for p in paths["uploaded"] if p.name == "release")
    assert (bundle / "0.0.1" / "model.onnx").is_file() and (bundle / "0.0.1" / "release.lock").is_file()
    assert all(p.exists() for p in paths["uploaded"] if p.suffix in (".md", ".json")), paths["uploaded"]
    # the JUnit report the workflows publish (release/junit.py)
    assert all(p.is_file() for p in paths["junit"]), paths["junit"]
